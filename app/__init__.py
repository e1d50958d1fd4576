"""event-processor: the home-automation event hub (run it with `python -m app`)."""
