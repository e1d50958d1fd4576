"""The scheduled S3 backups, started by the hub itself as its own user (no cron daemon running as root)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from app.core import health
from app.core.settings import Settings
from app.ops.backup import backup_due
from pylib import threads

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parents[2] / "backup_db.sh"
# backup_db.sh's commands and their times (UTC; the dated copy's name is the UTC date): the latest copy
# asked for every minute and taken when due (BACKUP_LATEST_MINUTES since the last attempt, as
# `backup --if-due` decides, but without a process a minute), a dated copy (with the retention sweep)
# once a day, and the restore drill.
JOBS = (
    ("backup", {"minute": "*"}),
    ("date", {"hour": 0, "minute": 7}),
    ("verify", {"hour": 3, "minute": 37}),
)
# A backup of a large database over a slow uplink; a hung upload must not hold the next ones forever.
JOB_TIMEOUT_SECONDS = 3600
LOG_MAX_BYTES = 1024 * 1024
# A job more than this late (the Pi was suspended, the previous job still running) is skipped.
MISFIRE_GRACE_SECONDS = 600


class BackupScheduler(threads.AppThread):
    """Runs backup_db.sh on JOBS' schedule, one at a time, its output appended to backup.log beside the
    backup status file; a failed run is counted (backup.failed) and /api/health shows the last result."""

    def __init__(self, settings: Settings, script: Path = SCRIPT, log_path: Path | None = None) -> None:
        super().__init__("BackupScheduler")
        self.script = script
        self.log_path = log_path or Path(settings.backup_status_path).parent / "backup.log"
        self.scheduler = BackgroundScheduler(
            timezone="UTC",
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
        )
        self.settings = settings
        for kind, when in JOBS:
            job = self.run_if_due if kind == "backup" else self.run_job
            self.scheduler.add_job(job, CronTrigger(timezone="UTC", **when), args=[kind], id=kind)

    def work(self) -> None:
        self.scheduler.start()
        health.set_state("backup_schedule", "scheduled", f"log {self.log_path}")
        try:
            while not threads.sleep(60):
                pass
        finally:
            self.scheduler.shutdown(wait=False)

    def run_if_due(self, kind: str = "backup") -> int | None:
        """The latest copy when it is due; None when not (nothing run, nothing logged)."""
        return self.run_job(kind) if backup_due(self.settings) else None

    def run_job(self, kind: str) -> int:
        """Run `backup_db.sh KIND` now and return its exit status (-1: it could not run or timed out)."""
        status = -1
        try:
            # One old generation of about 1 MB, as backup_db.sh keeps; rotated here, before the log is
            # opened, or this run's output would follow the renamed file.
            if self.log_path.exists() and self.log_path.stat().st_size > LOG_MAX_BYTES:
                os.replace(self.log_path, f"{self.log_path}.1")
            with open(self.log_path, "ab") as out:
                status = subprocess.run(
                    [str(self.script), kind],
                    env={**os.environ, "BACKUP_LOG": str(self.log_path)},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=JOB_TIMEOUT_SECONDS,
                    check=False,
                ).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("backup job %s did not run to the end: %s", kind, exc)
        if status == 0:
            health.set_state("backup_schedule", "ok", f"{kind} succeeded")
        else:
            health.count("backup.failed")
            health.set_state("backup_schedule", "failed", f"{kind} exited {status}, see {self.log_path}")
            log.error("backup job %s failed (exit %s); see %s", kind, status, self.log_path)
        return status
