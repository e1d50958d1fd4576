"""Child processes of the bench: free ports, RSS and CPU from /proc, stopping, and the private mosquitto."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from bench.clients import connect
from bench.config import BROKER_FAILURES, MOSQUITTO, MQTT_HOST, REPO, STOP_TIMEOUT, BenchError


def compile_bytecode() -> None:
    """Compile app/, pylib/ and the venv at -OO, as the container image does at build time (Dockerfile).

    The hub runs as `python -OO` (HUB_PYTHON_ENV) and reads .opt-2.pyc files. A hub started from a
    checkout writes them on its first start and reads them afterwards; where PYTHONDONTWRITEBYTECODE is
    set (this machine sets it), every start would instead compile each imported module from source, which
    costs each measured start-up CPU and its RSS the compiler's leftovers, which no deployed hub carries.
    The first run compiles the whole venv (~20 s); later runs find it done (~3 s). The standard library's
    are the Python installation's own (the image makes them; pyenv's Python has them).
    """
    purelib = sysconfig.get_path("purelib")
    subprocess.run(
        [sys.executable, "-OO", "-m", "compileall", "-q", "-j0", "app", "pylib", purelib],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int, field_name: str = "VmRSS") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (all its threads); None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    """SIGTERM, wait; SIGKILL after STOP_TIMEOUT. Returns (exit code, seconds taken)."""
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        code = None  # did not stop by itself
    return code, time.perf_counter() - start


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((MQTT_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class MqttBroker:
    """The bench's own mosquitto on a free port: no other client on it, no queue limit, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> float:
        """Start mosquitto; returns seconds until its port accepts connections."""
        if not os.access(MOSQUITTO, os.X_OK):
            raise BenchError(f"{MOSQUITTO} is not installed (the MQTT legs need it)")
        # max_queued_messages 0: no limit, so no QoS 1 message is dropped for a slow subscriber (the
        # figures would otherwise count drops as missing); as root, mosquitto would switch users.
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            ("user root\n" if os.geteuid() == 0 else "") + f"listener {self.port} {MQTT_HOST}\n"
            "allow_anonymous true\n"
            "max_queued_messages 0\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        start = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=log)
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise BenchError(f"mosquitto exited with code {self.proc.returncode}: {self.log_tail()}")
            if time.perf_counter() - start > timeout:
                self.stop()
                raise BenchError(f"mosquitto did not open port {self.port} within {timeout:.0f} s")
            time.sleep(0.02)
        return time.perf_counter() - start

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)
        self.proc = None

    def log_tail(self, lines: int = 10) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def delete_exchanges(*exchanges: str) -> None:
    """Remove this run's exchanges (and their _control twins) from the broker; best effort."""
    with contextlib.suppress(*BROKER_FAILURES):
        conn = connect()
        channel = conn.channel()
        for exchange in exchanges:
            for name in (exchange, f"{exchange}_control"):
                channel.exchange_delete(name)
        conn.close()
