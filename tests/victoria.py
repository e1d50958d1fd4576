"""A throwaway victoria-metrics server (Debian package victoria-metrics) standing in for InfluxDB in tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

BINARY = "victoria-metrics"


class VictoriaMetrics:
    """One victoria-metrics process on a fixed port and data directory, so it can be stopped and restarted.

    It takes InfluxDB line protocol on /api/v2/write; field f of measurement m becomes metric m_f
    with the tags as labels.
    """

    def __init__(self, port: int, data_dir: Path) -> None:
        if shutil.which(BINARY) is None:
            pytest.fail(f"{BINARY} is not installed (apt-get install victoria-metrics)")
        self.port = port
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = data_dir.parent / f"victoria-metrics-{port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        assert self._proc is None, "already running"
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [
                    BINARY,
                    f"-storageDataPath={self.data_dir}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-retentionPeriod=100y",
                    # just-written samples are visible at once (with /internal/force_flush below)
                    "-search.latencyOffset=0s",
                    "-search.disableCache",
                    "-loggerLevel=WARN",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"victoria-metrics exited with {self._proc.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        pytest.fail(f"victoria-metrics did not come up on port {self.port}")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def export(self, metric_regex: str = "meter_.*") -> dict[tuple[str, frozenset[tuple[str, str]]], list]:
        """{(metric name, labels): [(timestamp ms, value), ...]} for every series whose name matches."""
        requests.get(f"{self.url}/internal/force_flush", timeout=5).raise_for_status()
        resp = requests.post(
            f"{self.url}/api/v1/export",
            data={"match[]": f'{{__name__=~"{metric_regex}"}}', "start": "0"},
            timeout=5,
        )
        resp.raise_for_status()
        out: dict[tuple[str, frozenset[tuple[str, str]]], list] = {}
        for line in resp.text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            labels = dict(row["metric"])
            name = labels.pop("__name__")
            key = (name, frozenset(labels.items()))
            out.setdefault(key, []).extend(zip(row["timestamps"], row["values"], strict=True))
        for samples in out.values():
            samples.sort()
        return out

    def samples(self, metric: str, **labels: str) -> list[tuple[int, float]]:
        """The (timestamp ms, value) samples of one series, [] when there is none (yet)."""
        return self.export(metric).get((metric, frozenset(labels.items())), [])
