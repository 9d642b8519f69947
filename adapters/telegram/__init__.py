"""Telegram: python-telegram-bot 22 translating between the Bot API and the core."""
