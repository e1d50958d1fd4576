"""Messages out: control publisher, meter writer, offline alerts, the Telegram bot and notifier."""
