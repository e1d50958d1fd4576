"""The hub looking after itself: backups, metrics and logs, CloudWatch, badges, public URL, standby keeper."""
