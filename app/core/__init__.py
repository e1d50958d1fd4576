"""What every layer shares: settings and secrets, health, the inproc channels and their messages, caps."""
