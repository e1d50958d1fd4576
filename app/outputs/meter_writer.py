"""MeterWriter: writes the processor's MeterPoints to InfluxDB, buffering them (bounded) while it is away.

The lines themselves (the hub's measurement and the original's layout) are made in meter_lines.
"""

# Why the synchronous write API in batches of our own, not influxdb-client's batching WriteApi
# (checked against influxdb-client 1.50):
# - Its retries sleep inside its one write worker, and a batch that outlives the retry budget
#   (max_retries, max_retry_time) is dropped, so a long InfluxDB outage loses whole batches.
#   A larger budget only moves the problem: meanwhile new points pile up in its Rx operators
#   with no bound on memory.
# - It cannot drop the oldest points first, count what it drops, or say how much it holds.
# - close() waits for pending retries (up to max_close_wait), which would hold up shutdown.
# So the buffer is ours: a deque bounded by INFLUXDB_BUFFER_SIZE, written front first by one
# sender thread; a batch leaves the buffer only once InfluxDB has accepted it (or refused its
# data outright), so points keep their order across outages. The receiving thread never
# touches the network, so the processor's pushes are drained even while a write hangs.

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque

import zmq
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from app.core import channels, health
from app.core.settings import Settings
from app.outputs.meter_lines import OriginalLayout
from app.outputs.meter_lines import to_line as to_line
from pylib import inproc, threads
from pylib.threads import AppThread, Backoff

log = logging.getLogger(__name__)

COMPONENT = "influxdb"
BATCH_SIZE = 500
FLUSH_INTERVAL = 1.0  # seconds a lone point waits for company before it is written anyway
WRITE_TIMEOUT_MS = 5_000
RETRY_INITIAL = 1.0
RETRY_MAX = 30.0
RECV_WAIT_MS = 200  # how quickly the receiving loop notices shutdown while idle
FINAL_FLUSH_SECONDS = 1.5
STOP_WAIT = 2.0
DROP_LOG_INTERVAL = 60.0
UNREACHABLE_LOG_INTERVAL = 600.0  # a reminder while an outage lasts; the state is on /api/health anyway
# InfluxDB refuses these for the data itself; retrying the same batch would hold up every later point.
REJECTED_STATUSES = frozenset({400, 413, 422})
HINTS = {
    401: "check INFLUXDB_TOKEN",
    403: "check INFLUXDB_TOKEN",
    404: "check INFLUXDB_ORG and INFLUXDB_BUCKET",
}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        text = f"HTTP {exc.status} {exc.reason or ''}".strip()
        hint = HINTS.get(exc.status or 0)
        return f"{text} ({hint})" if hint else text
    text = str(exc) or type(exc).__name__
    # urllib3 puts "<HTTPConnection object at 0x...>: " in front of the useful part
    return text.split(">: ", 1)[-1][:300]


class _Buffer:
    """FIFO of (sequence number, line), bounded: adding to a full buffer drops the oldest line."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.closed = threading.Event()
        self._items: deque[tuple[int, str]] = deque()
        self._cond = threading.Condition()
        self._seq = itertools.count()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, line: str) -> bool:
        """Add a line; True when the oldest line had to go to make room."""
        with self._cond:
            dropped = len(self._items) >= self.capacity
            if dropped:
                self._items.popleft()
            self._items.append((next(self._seq), line))
            self._cond.notify_all()
            return dropped

    def peek(self, n: int) -> list[tuple[int, str]]:
        with self._cond:
            return list(itertools.islice(self._items, n))

    def next_batch(self, size: int, gather: float, idle: float) -> list[tuple[int, str]]:
        """Wait up to idle for a first line, then up to gather for a full batch; the front lines."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self.closed.is_set(), timeout=idle)
            if self._items and len(self._items) < size:
                self._cond.wait_for(lambda: len(self._items) >= size or self.closed.is_set(), timeout=gather)
            return list(itertools.islice(self._items, size))

    def confirm(self, last_seq: int) -> None:
        """Remove the lines up to last_seq (some may already have been dropped while in flight)."""
        with self._cond:
            while self._items and self._items[0][0] <= last_seq:
                self._items.popleft()

    def close(self) -> None:
        with self._cond:
            self.closed.set()
            self._cond.notify_all()


class MeterWriter(AppThread):
    """Thread that takes MeterPoints from the processor and writes them to InfluxDB in order."""

    def __init__(self, settings: Settings, layout: str = "new") -> None:
        super().__init__("MeterWriter")
        self.settings = settings
        if layout not in ("original", "new", "both"):
            raise ValueError(f"unknown InfluxDB layout {layout!r}")
        self.layout = layout
        self._original = (
            OriginalLayout(settings.app_name, settings.device_name)
            if layout in ("original", "both")
            else None
        )
        self._pull = inproc.bind_pull(channels.METER_WRITER)
        self._buffer = _Buffer(settings.influxdb_buffer_size)
        # The client sets the whole "urllib3" logger to WARNING as it starts, which would change
        # logging for every other HTTP user in the process; put the level back.
        urllib3_logger = logging.getLogger("urllib3")
        urllib3_level = urllib3_logger.level
        self._client = InfluxDBClient(
            url=settings.influxdb_url,
            token=settings.influxdb_token,
            org=settings.influxdb_org,
            timeout=WRITE_TIMEOUT_MS,
            debug=False,  # debug mode would log request headers, token included
        )
        urllib3_logger.setLevel(urllib3_level)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._sender = threading.Thread(target=self._send_loop, name="MeterWriter.send", daemon=True)
        self._unreachable: str | None = None  # the reason, while InfluxDB is failing
        self._dropped_unlogged = 0
        self._last_drop_log: float | None = None
        self._dropped_total = 0
        self._dropped_while_down = 0
        self._last_unreachable_log = 0.0

    def buffered(self) -> int:
        """Points received and not yet accepted by InfluxDB."""
        return len(self._buffer)

    # --- receiving side: never touches the network -------------------------------------------

    def work(self) -> None:
        log.info(
            "MeterWriter writing to %s, org %s, bucket %s (buffer %d points, %s layout)",
            self.settings.influxdb_url,
            self.settings.influxdb_org,
            self.settings.influxdb_bucket,
            self._buffer.capacity,
            self.layout,
        )
        health.set_state(COMPONENT, "starting", "no write yet")
        self._sender.start()
        try:
            while not threads.shutting_down.is_set():
                self._receive(RECV_WAIT_MS)
                if not self._sender.is_alive():
                    raise RuntimeError("the MeterWriter sender thread stopped")
            # what the processor pushed just before shutdown still gets its chance in the final flush
            self._receive(0)
        finally:
            self._pull.close(linger=0)
            self._buffer.close()
            self._sender.join(timeout=STOP_WAIT)
            left = self.buffered()
            if left:
                log.warning("MeterWriter stopped with %d points not written to InfluxDB", left)
            health.set_state(COMPONENT, "down", f"stopped, {left} points not written")

    def _receive(self, timeout_ms: int) -> None:
        """Take one message (waiting up to timeout_ms), then everything already queued."""
        wait = timeout_ms
        while True:
            try:
                msg = inproc.recv(self._pull, timeout_ms=wait)
            except inproc.MessageError as exc:
                log.warning("MeterWriter ignored an undecodable message: %s", exc)
                health.count("influxdb.malformed")
                wait = 0
                continue
            except zmq.ZMQError:
                if threads.shutting_down.is_set():
                    return
                raise
            if msg is None:
                return
            wait = 0
            self._accept(msg)

    def _accept(self, msg: object) -> None:
        if not isinstance(msg, channels.MeterPoint):
            log.warning("MeterWriter ignored a %s; it takes MeterPoints", type(msg).__name__)
            health.count("influxdb.malformed")
            return
        lines: list[str] = []
        try:
            if self.layout in ("new", "both") and (line := to_line(msg)) is not None:
                lines.append(line)
            if self._original is not None:
                refused = self._original.refused
                lines.extend(self._original.lines(msg))
                if self._original.refused > refused:
                    health.count("influxdb.original_meters_refused")
        except Exception as exc:  # a strange value in one point must not stop the writer
            log.warning("MeterWriter skipped a point for %r: %s", msg.device_key, exc)
            lines = []
        if not lines:
            # The original's layout writes a meter at most every 5 minutes: a quiet point is expected.
            if self.layout != "original":
                health.count("influxdb.skipped")
            return
        for line in lines:
            if self._buffer.put(line):
                self._note_drop()

    def _note_drop(self) -> None:
        health.count("influxdb.dropped")
        self._dropped_unlogged += 1
        self._dropped_total += 1
        self._dropped_while_down += 1
        now = time.monotonic()
        if self._last_drop_log is None or now - self._last_drop_log >= DROP_LOG_INTERVAL:
            log.warning(
                "InfluxDB buffer of %d points (INFLUXDB_BUFFER_SIZE) is full, dropping the oldest: "
                "%d since the last warning, %d in all",
                self._buffer.capacity,
                self._dropped_unlogged,
                self._dropped_total,
            )
            self._last_drop_log = now
            self._dropped_unlogged = 0

    # --- sending side ----------------------------------------------------------------------

    def _send_loop(self) -> None:
        backoff = Backoff(initial=RETRY_INITIAL, maximum=RETRY_MAX)
        try:
            while not self._buffer.closed.is_set():
                batch = self._buffer.next_batch(BATCH_SIZE, gather=FLUSH_INTERVAL, idle=0.5)
                if not batch:
                    continue
                if self._write(batch):
                    backoff.reset()
                elif backoff.pause(self._buffer.closed):  # closing ends the wait: the final flush follows
                    break
            self._final_flush()
        finally:
            self._client.close()

    def _final_flush(self) -> None:
        if self._unreachable is not None:
            return  # InfluxDB is away: a flush could only wait for timeouts
        deadline = time.monotonic() + FINAL_FLUSH_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            batch = self._buffer.peek(BATCH_SIZE)
            if not batch or not self._write(batch, timeout_ms=max(100, int(remaining * 1000))):
                return

    def _write(self, batch: list[tuple[int, str]], timeout_ms: int | None = None) -> bool:
        """Write one batch; True when the batch has left the buffer (written, or refused for its data)."""
        lines = [line for _, line in batch]
        extra = {"_request_timeout": timeout_ms} if timeout_ms is not None else {}
        try:
            self._post(lines, **extra)
        except ApiException as exc:
            health.count("influxdb.failed_batches")
            if exc.status in REJECTED_STATUSES:
                self._buffer.confirm(batch[-1][0])
                health.count("influxdb.rejected", len(lines))
                body = (
                    (exc.body or b"").decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
                )
                log.error(
                    "InfluxDB refused %d points: %s %s", len(lines), _describe(exc), str(body or "")[:300]
                )
                return True
            self._failed(_describe(exc))
            return False
        except Exception as exc:  # connection refused, timeouts, anything else the client raises
            health.count("influxdb.failed_batches")
            self._failed(_describe(exc))
            return False
        self._buffer.confirm(batch[-1][0])
        health.count("influxdb.written", len(lines))
        self._succeeded()
        return True

    def _post(self, lines: list[str], **kwargs: object) -> None:
        self._write_api.write(
            bucket=self.settings.influxdb_bucket,
            org=self.settings.influxdb_org,
            record=lines,
            # WritePrecision.MS is the str "ms", which write() takes, though its hint names the class.
            write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            **kwargs,
        )

    def _failed(self, reason: str) -> None:
        now = time.monotonic()
        if self._unreachable is None:
            log.warning("InfluxDB write failed: %s; %d points buffered, retrying", reason, self.buffered())
            self._dropped_while_down = 0
            self._last_unreachable_log = now
        elif now - self._last_unreachable_log >= UNREACHABLE_LOG_INTERVAL:
            log.warning("InfluxDB still failing: %s; %d points buffered", reason, self.buffered())
            self._last_unreachable_log = now
        else:
            log.debug("InfluxDB write failed again: %s", reason)
        self._unreachable = reason
        health.set_state(COMPONENT, "unreachable", reason)

    def _succeeded(self) -> None:
        if self._unreachable is not None:
            dropped = (
                f", {self._dropped_while_down} points dropped meanwhile" if self._dropped_while_down else ""
            )
            log.info("InfluxDB writes work again%s; %d points still buffered", dropped, self.buffered())
            self._unreachable = None
        health.set_state(COMPONENT, "ok", f"{self.buffered()} points buffered")
