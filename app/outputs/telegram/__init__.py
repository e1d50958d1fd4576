"""Telegram: the bot thread (polling, commands) and the notifier that delivers alerts to the chat room."""
