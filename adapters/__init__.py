"""Translation between platforms (Discord, Telegram, the terminal) and the core's types."""
