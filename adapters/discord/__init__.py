"""Discord: discord.py 2.7 translating between the gateway/REST API and the core."""
