"""bench.memory's reading of /proc/<pid>/smaps: the kinds add up to the process's RSS."""

from __future__ import annotations

import os
from pathlib import Path

from bench.memory import smaps_mb


def _vm_rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_the_kinds_of_mapping_add_up_to_the_rss_the_kernel_reports() -> None:
    before = _vm_rss_mb()
    mb = smaps_mb(os.getpid())
    after = _vm_rss_mb()
    assert set(mb) == {"anon", "heap", "files", "other", "total"}
    assert abs(mb["anon"] + mb["heap"] + mb["files"] + mb["other"] - mb["total"]) <= 0.3  # rounding
    assert min(before, after) - 1 <= mb["total"] <= max(before, after) + 1
    assert mb["files"] > 1 and mb["anon"] + mb["heap"] > 5  # the interpreter's libraries; pytest's objects
