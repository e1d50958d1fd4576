"""Entry point: `python -m app` loads the settings, starts the hub and waits for a signal."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app.core import file_modes, health
from app.core import settings as settings_module
from app.core.settings import sqlite_file
from app.core.settings_defaults import SettingsError
from app.store import admin_password, early_migration
from pylib import threads

log = logging.getLogger("app")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas, as MALLOC_ARENA_MAX would.

    Every thread that allocates gets its own arena by default, and a dozen mostly idle threads then
    hold tens of MB they never give back; on a Raspberry Pi that memory matters more than the little
    lock contention fewer arenas cost. Must run before the threads start; a no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


# The main thread looks this often whether the hub has gone quiet after a burst (MallocTrim).
TRIM_CHECK_SECONDS = 2.0
# ... and gives memory back once at least this many counted events happened since it last did.
TRIM_AFTER_EVENTS = 1000


class MallocTrim:
    """malloc_trim(0) once the hub goes quiet after a burst of events.

    A burst leaves glibc's heaps with free memory it keeps (pika's frames, ZeroMQ's queued messages,
    SQLite's pages, Python's larger objects came and went): 2-3 MB after 20,000 activations, which
    malloc_trim gives back in under a millisecond (docs/performance.md, session 5). Only when nothing
    was counted for a whole check (health's counters, which every event moves), so no event waits on
    it, and only after TRIM_AFTER_EVENTS, so a quiet house does not trim for every heartbeat.
    """

    def __init__(
        self,
        activity: Callable[[], int],
        trim: Callable[[], object] | None = None,
        after_events: int = TRIM_AFTER_EVENTS,
    ) -> None:
        self._activity = activity
        self._trim = trim if trim is not None else _malloc_trim()
        self._after = after_events
        self._last = activity()
        self._trimmed_at = self._last

    def tick(self) -> bool:
        """Called every TRIM_CHECK_SECONDS; True when it trimmed."""
        now = self._activity()
        quiet = now == self._last
        self._last = now
        if self._trim is None or not quiet or now - self._trimmed_at < self._after:
            return False
        self._trimmed_at = now
        self._trim()
        return True


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0); None off glibc (musl has none)."""
    try:
        trim: Callable[[int], object] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


def counted_events() -> int:
    return sum(health.counters().values())


# Generation 0 is collected after this many new container objects (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """After start-up: freeze what start-up built, collect the young generation less often, enable.

    Start-up leaves about 100,000 objects that live as long as the process (SQLAlchemy's mappers,
    Flask's app and templates, the imported modules); gc.freeze() moves them out of the collector's
    generations, so a full collection no longer walks them all while an event waits.
    The hot path makes little cyclic garbage (reference counting frees the rest), so a larger
    generation-0 threshold means fewer collections for the same memory.
    main() runs start-up with the collector off and freezes the imported modules as soon as they are
    loaded, so the collection here walks only what the hub's start built (~3-5 ms, not ~65 ms: it
    runs while the first GET /api/health waits for the GIL).
    """
    gc.collect()  # garbage made during start-up is freed, not frozen
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    gc.enable()


class Stoppable(Protocol):
    """What run() supervises: a started hub (an on_fatal() of its own is called on a thread death)."""

    def stop(self) -> None: ...


def run(hub: Stoppable, nanny_interval: float = 0.5, trimmer: MallocTrim | None = None) -> int:
    """Supervise a started hub until a signal or a thread death; returns the exit code.

    Meanwhile the main thread, idle otherwise, gives memory back after bursts (trimmer).
    """
    exit_code = 0
    died = threading.Event()

    def on_death(names: list[str]) -> None:
        log.critical("thread(s) died unexpectedly: %s; shutting down", ", ".join(names))
        died.set()
        threads.shutting_down.set()
        on_fatal = getattr(hub, "on_fatal", None)
        if on_fatal is not None:
            on_fatal()

    threads.Nanny(on_death, nanny_interval).start()
    while not threads.shutting_down.wait(TRIM_CHECK_SECONDS):
        if trimmer is not None:
            trimmer.tick()
    if died.is_set():
        exit_code = 1
    log.info("shutting down")
    hub.stop()
    return exit_code


def wait_before_failing(code: int) -> int:
    """Sleep BAD_SETTING_EXIT_DELAY_SECONDS (the container image sets 30) before exiting with code.

    A container's restart policy starts the hub again at once, and a bad setting does not heal: without
    the wait it restarts many times a second. SIGTERM (docker stop) ends the wait at once.
    """
    raw = os.environ.get("BAD_SETTING_EXIT_DELAY_SECONDS", "").strip()
    try:
        delay = min(max(float(raw or 0), 0.0), 3600.0)
    except ValueError:
        delay = 0.0
    if delay:

        def stop(_signum: int, _frame: object) -> None:
            raise SystemExit(code)

        # before the line below, which tells a watcher that it may stop the process now
        signal.signal(signal.SIGTERM, stop)
        print(
            f"event-processor: exiting {code} in {delay:g} s (BAD_SETTING_EXIT_DELAY_SECONDS)",
            file=sys.stderr,
        )
        time.sleep(delay)
    return code


def main() -> int:
    # No cyclic collections during start-up (tune_gc() enables them once the hub is ready): the
    # imports alone ran ~230 of them, ~65 ms on a 2-core box (the last ones walk ~90,000 live
    # objects); all they freed is the imports' own cyclic garbage, which the freeze below keeps.
    gc.disable()
    # Before anything creates a file: the database, its WAL, the signing key are the hub user's alone.
    file_modes.private_umask()
    try:
        settings = settings_module.load()
    except SettingsError as exc:
        print(f"event-processor: {exc}", file=sys.stderr)
        return wait_before_failing(2)
    database_file = sqlite_file(settings.database_url)
    if not settings.admin_password_hash and database_file is not None and not Path(database_file).exists():
        # A new database gets an admin user with a generated password: hashed beside the imports.
        admin_password.prepare()
    # The migration child (if the schema is not current) runs while this process imports the rest.
    migration = early_migration.start(settings.database_url)
    from app.ops import observability  # heavy (SQLAlchemy): after the child has started

    # text or JSON lines, with every configured secret redacted from every record
    observability.configure_logging(settings)
    observability.init_sentry(settings)
    limit_malloc_arenas()
    # An event crosses four threads; with the default 5 ms GIL switch interval each hop can wait
    # that long behind a busy neighbour. 1 ms keeps the end-to-end latency tail short.
    sys.setswitchinterval(0.001)
    from app.hub import Hub  # imported late so a bad setting fails fast, before heavy imports

    # The imported modules live as long as the process: frozen now, no collection walks them
    # again. Frozen with them, never freed: the imports' cyclic garbage, ~700 objects (~150 KB).
    gc.freeze()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        threads.shutting_down.set()

    def on_hangup(_signum: int, _frame: object) -> None:
        # As the original service: SIGHUP flips between INFO and DEBUG without a restart.
        observability.toggle_debug()

    signal.signal(signal.SIGHUP, on_hangup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("starting %s (%s)", settings.app_name, settings_module.describe(settings))
    hub = Hub(settings, migration=migration)
    try:
        hub.start()
    except Exception:
        log.exception("start-up failed")
        hub.stop()
        return 1
    tune_gc()
    return run(hub, trimmer=MallocTrim(counted_events))


if __name__ == "__main__":
    sys.exit(main())
