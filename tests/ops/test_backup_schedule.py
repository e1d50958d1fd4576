"""The hub's own backup schedule (app/ops/backup_schedule.py), which replaced the root cron daemon."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.core import health
from app.core.settings import Settings
from app.ops.backup_schedule import JOBS, SCRIPT, BackupScheduler
from app.ops.backup_status import ATTEMPT
from pylib import threads
from tests.support import wait_for


def fake_script(folder: Path, status: int) -> Path:
    script = folder / "backup_db.sh"
    script.write_text(f'#!/bin/sh\necho "ran $* as $(id -u), log $BACKUP_LOG"\nexit {status}\n')
    script.chmod(0o755)
    return script


def test_a_job_runs_the_backup_script_and_appends_to_the_log(tmp_path: Path, make_settings) -> None:
    settings: Settings = make_settings(BACKUP_S3_BUCKET="a-bucket", TABLESPACE_PATH=str(tmp_path / "hub.db"))
    scheduler = BackupScheduler(settings, script=fake_script(tmp_path, 0))
    scheduler.untrack()
    assert scheduler.log_path == tmp_path / "backup.log"  # beside the backup status file
    assert scheduler.run_job("backup") == 0
    assert scheduler.run_job("date") == 0
    lines = (tmp_path / "backup.log").read_text().splitlines()
    assert lines == [
        f"ran {kind} as {os.getuid()}, log {tmp_path / 'backup.log'}" for kind in ("backup", "date")
    ]
    assert health.components()["backup_schedule"]["state"] == "ok"
    assert "backup.failed" not in health.counters()


def test_a_failed_job_is_counted_and_shown(tmp_path: Path, make_settings) -> None:
    settings: Settings = make_settings(BACKUP_S3_BUCKET="a-bucket", TABLESPACE_PATH=str(tmp_path / "hub.db"))
    scheduler = BackupScheduler(settings, script=fake_script(tmp_path, 1))
    scheduler.untrack()
    assert scheduler.run_job("verify") == 1
    missing = BackupScheduler(settings, script=tmp_path / "gone.sh")
    missing.untrack()
    assert missing.run_job("backup") == -1
    assert health.counters()["backup.failed"] == 2
    state = health.components()["backup_schedule"]
    assert state["state"] == "failed" and "backup exited -1" in state["detail"]


def test_the_schedule_is_the_old_crontabs_and_the_thread_stops_with_the_hub(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    assert SCRIPT.name == "backup_db.sh" and SCRIPT.is_file()
    settings = make_settings(BACKUP_S3_BUCKET="a-bucket", TABLESPACE_PATH=str(tmp_path / "hub.db"))
    scheduler = BackupScheduler(settings, script=fake_script(tmp_path, 0))
    now = datetime(2026, 3, 1, 0, 1, tzinfo=UTC)
    fire = {job.id: job.trigger.get_next_fire_time(None, now) for job in scheduler.scheduler.get_jobs()}
    assert [kind for kind, _ in JOBS] == ["backup", "date", "verify"]
    assert fire == {
        "backup": datetime(2026, 3, 1, 0, 1, tzinfo=UTC),  # every minute, taken when due
        "date": datetime(2026, 3, 1, 0, 7, tzinfo=UTC),
        "verify": datetime(2026, 3, 1, 3, 37, tzinfo=UTC),
    }
    scheduler.start()
    wait_for(lambda: health.components().get("backup_schedule", {}).get("state") == "scheduled")
    assert scheduler.scheduler.running
    threads.shutting_down.set()
    scheduler.join(timeout=10)
    assert not scheduler.is_alive() and not scheduler.scheduler.running


def test_the_latest_copy_runs_only_when_due(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(BACKUP_S3_BUCKET="a-bucket", TABLESPACE_PATH=str(tmp_path / "hub.db"))
    scheduler = BackupScheduler(settings, script=fake_script(tmp_path, 0))
    scheduler.untrack()
    assert scheduler.run_if_due() == 0  # no attempt recorded yet: due
    just_now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    Path(settings.backup_status_path).write_text(json.dumps({ATTEMPT: {"time": just_now, "ok": True}}))
    assert scheduler.run_if_due() is None  # BACKUP_LATEST_MINUTES (5) not over: nothing run
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    Path(settings.backup_status_path).write_text(json.dumps({ATTEMPT: {"time": an_hour_ago, "ok": True}}))
    assert scheduler.run_if_due() == 0
    assert (tmp_path / "backup.log").read_text().count("ran backup") == 2
