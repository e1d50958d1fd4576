"""Deciding: the EventProcessor, pure rules, meters, device registry, presence, config changes, schedules."""
