"""Entry point: `python -m app` loads the settings, starts the hub and waits for a signal."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from app import settings as settings_module
from app.settings import SettingsError
from pylib import threads

log = logging.getLogger("app")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    # pika and waitress narrate every connection step at INFO; the hub logs the state changes itself.
    for noisy in ("pika", "waitress", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(hub: object, nanny_interval: float = 0.5) -> int:
    """Supervise a started hub until a signal or a thread death; returns the exit code."""
    exit_code = 0
    died = threading.Event()

    def on_death(names: list[str]) -> None:
        log.critical("thread(s) died unexpectedly: %s; shutting down", ", ".join(names))
        died.set()
        threads.shutting_down.set()

    threads.Nanny(on_death, nanny_interval).start()
    threads.shutting_down.wait()
    if died.is_set():
        exit_code = 1
    log.info("shutting down")
    hub.stop()  # type: ignore[attr-defined]
    return exit_code


def main() -> int:
    try:
        settings = settings_module.load()
    except SettingsError as exc:
        print(f"event-processor: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from app.hub import Hub  # imported late so a bad setting fails fast, before heavy imports

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        threads.shutting_down.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("starting %s (%s)", settings.app_name, settings_module.describe(settings))
    hub = Hub(settings)
    try:
        hub.start()
    except Exception:
        log.exception("start-up failed")
        hub.stop()
        return 1
    return run(hub)


if __name__ == "__main__":
    sys.exit(main())
