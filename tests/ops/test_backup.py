"""Backups to S3, restore and the restore drill, against moto's S3 server with the real boto3."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.core import health
from app.core.settings import Settings
from app.engine.presence import Presence
from app.ops import backup, backup_crypto, backup_files, backup_status
from app.store import db
from app.store.schema_head import HEAD_REVISION
from app.web import create_app
from tests.moto_server import aws_env, moto_server
from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
LATEST = "event_processor.db.gz"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated hub database, made once (Alembic is slow) and copied into each test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()  # the last connection checkpoints: one self-contained file to copy
    return path


@dataclasses.dataclass
class Rig:
    settings: Settings
    env: dict[str, str]  # the environment behind settings, for the CLI in a subprocess
    s3: Any
    bucket: str
    db: Path
    tmp: Path

    def run(self, *args: str) -> int:
        """The CLI in this process (faster), where only the outcome matters."""
        return backup.run(list(args), self.settings)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.ops.backup", *args],
            env={"PATH": os.environ["PATH"], "HOME": str(self.tmp), **self.env, **env},
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def object_keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", []))

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def fetch(self, key: str = LATEST) -> tuple[Path, dict[str, str]]:
        """Download and gunzip an object into a file of its own; returns it and the object's metadata."""
        response = self.s3.get_object(Bucket=self.bucket, Key=key)
        out = self.tmp / f"fetched-{uuid.uuid4().hex[:6]}.db"
        out.write_bytes(gzip.decompress(response["Body"].read()))
        return out, response["Metadata"]

    def status(self) -> dict[str, Any]:
        return json.loads(Path(self.settings.backup_status_path).read_text())


@pytest.fixture
def rig(
    moto_url: str, template_db: Path, tmp_path: Path, make_settings: Callable[..., Settings]
) -> Iterator[Rig]:
    bucket = f"ep-backup-{uuid.uuid4().hex[:10]}"
    path = tmp_path / "event_processor.db"
    env = {**aws_env(moto_url), "BACKUP_S3_BUCKET": bucket, "TABLESPACE_PATH": str(path)}
    settings = make_settings(**env)
    shutil.copy(template_db, path)
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    yield Rig(settings, env, s3, bucket, path, tmp_path)


def seed(path: Path, inputs: int = 25, prefix: str = "door") -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO input_config (device_key, device_type, device_label) VALUES (?, 'Contact', ?)",
            [(f"{prefix}-{i}", f"Door {i}") for i in range(inputs)],
        )
        conn.execute("INSERT INTO output_config (device_key, device_type) VALUES (?, 'Buzzer')", (prefix,))
    conn.close()


def contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a person configures, in a fixed order."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            for table in ("input_config", "output_config", "heartbeat")
        }
    finally:
        conn.close()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def corrupt(path: Path) -> None:
    """Break a b-tree page's cell pointers in a table big enough to have many pages: the backup API
    still copies it, integrity_check reports it."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE junk (x TEXT)")
        conn.executemany("INSERT INTO junk VALUES (?)", [("x" * 200,) for _ in range(2000)])
    conn.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    page = 4096
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek((size // page - 10) * page + 8)  # a junk leaf page, past its 8-byte header
        f.write(b"\x7f\x01" * 4)
    assert integrity(path) != "ok"


def write_status(path: str, **entries: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps({"version": 1, **entries}))


def entry(hours_ago: float, ok: bool = True, **extra: Any) -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(hours=hours_ago)
    return {"time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "ok": ok, "key": LATEST, "bytes": 10, **extra}


# ---- backup ---------------------------------------------------------------------------------


def test_backup_uploads_a_checked_gzip_equal_to_the_source(rig: Rig) -> None:
    seed(rig.db)
    done = rig.cli("backup")
    assert done.returncode == 0, done.stderr
    assert "backup uploaded" in done.stderr and "testing" not in done.stderr
    assert rig.object_keys() == [LATEST]
    copy, metadata = rig.fetch()
    assert integrity(copy) == "ok"
    assert contents(copy) == contents(rig.db)
    assert len(contents(copy)["input_config"]) == 25
    assert metadata["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert metadata["schema-revision"] == HEAD_REVISION
    head = rig.s3.head_object(Bucket=rig.bucket, Key=LATEST)
    assert head["ContentType"] == "application/gzip"
    status = rig.status()
    assert status["last_good_backup"] == status["last_backup_attempt"]
    good = status["last_good_backup"]
    assert good["ok"] is True and good["key"] == LATEST and good["error"] is None
    assert good["bytes"] == head["ContentLength"] and good["revision"] == HEAD_REVISION
    summary = backup_status.read_status(rig.settings)
    assert summary.state == "ok" and summary.last_good_key == LATEST
    assert summary.age_seconds is not None and summary.age_seconds < 60


def test_backup_while_another_thread_keeps_writing_is_consistent(rig: Rig) -> None:
    stop = threading.Event()
    written = [0]
    errors: list[BaseException] = []

    def writer() -> None:
        # Like the hub: WAL, a busy timeout, and one input and one output per transaction, so any
        # consistent snapshot holds as many of each.
        conn = sqlite3.connect(rig.db, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        try:
            while not stop.is_set():
                n = written[0]
                with conn:
                    conn.execute(
                        "INSERT INTO input_config (device_key, device_type) VALUES (?, 'Contact')",
                        (f"w-{n}",),
                    )
                    conn.execute(
                        "INSERT INTO output_config (device_key, device_type) VALUES (?, 'Buzzer')",
                        (f"w-{n}",),
                    )
                written[0] = n + 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=writer, name="TestWriter")
    thread.start()
    try:
        wait_for(lambda: written[0] > 50)
        seen = []
        for _ in range(3):
            before = written[0]
            assert rig.run("backup") == 0
            copy, _ = rig.fetch()
            assert integrity(copy) == "ok"
            rows = contents(copy)
            inputs = [r for r in rows["input_config"] if r[1].startswith("w-")]
            outputs = [r for r in rows["output_config"] if r[1].startswith("w-")]
            assert len(inputs) == len(outputs) >= before
            seen.append(len(inputs))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors, errors
    assert seen[-1] > seen[0]  # the writer went on while the backups ran


def test_date_and_time_keep_dated_copies(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup", "date") == 0
    assert rig.run("backup", "time") == 0
    today = datetime.now(UTC).strftime("%y%m%d")
    keys = rig.object_keys()
    assert LATEST in keys and f"event_processor_{today}.db.gz" in keys
    [timed] = [k for k in keys if re.fullmatch(rf"event_processor_{today}\d{{6}}\.db\.gz", k)]
    assert len(keys) == 3
    for key in keys:
        copy, metadata = rig.fetch(key)
        assert contents(copy) == contents(rig.db) and metadata["sha256"]
    assert rig.status()["last_good_backup"]["dated_key"] == timed


def test_retention_deletes_only_old_dated_copies(rig: Rig) -> None:
    today = datetime.now(UTC).date()

    def day(days_ago: int) -> str:
        return (today - timedelta(days=days_ago)).strftime("%y%m%d")

    old = [
        f"event_processor_{day(31)}.db.gz",
        f"event_processor_{day(400)}.db.gz",
        f"event_processor_{day(45)}235959.db.gz",
    ]
    kept = [
        f"event_processor_{day(30)}.db.gz",  # exactly BACKUP_RETENTION_DAYS old: kept
        f"event_processor_{day(2)}.db.gz",
        f"event_processor_{day(40)}.db.gz.bak",
        f"event_processor_{day(40)}_manual.db.gz",
        "event_processor_991399.db.gz",  # not a date
        f"other_app_{day(40)}.db.gz",
        f"notes/event_processor_{day(40)}.db.gz",
        "README.txt",
    ]
    for key in old + kept:
        rig.put(key, b"old")
    seed(rig.db)
    assert rig.run("backup") == 0
    assert rig.object_keys() == sorted([LATEST, *kept])
    assert sorted(rig.status()["last_good_backup"]["deleted"]) == sorted(old)


def test_a_corrupt_database_is_never_uploaded(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    good = rig.s3.head_object(Bucket=rig.bucket, Key=LATEST)
    corrupt(rig.db)
    done = rig.cli("backup", "date")
    assert done.returncode == 1
    assert "integrity_check failed" in done.stderr and "left as it was" in done.stderr
    after = rig.s3.head_object(Bucket=rig.bucket, Key=LATEST)
    assert after["ETag"] == good["ETag"] and after["Metadata"] == good["Metadata"]
    assert rig.object_keys() == [LATEST]  # no dated copy of the corrupt file either
    status = rig.status()
    assert status["last_backup_attempt"]["ok"] is False
    assert "integrity_check" in status["last_backup_attempt"]["error"]
    assert status["last_good_backup"]["ok"] is True
    assert backup_status.read_status(rig.settings).state == "failed"
    assert not list(rig.db.parent.glob(f".*{backup_files.TEMP_SUFFIX}"))  # temp files cleaned up


def test_postgresql_url_is_refused_with_the_pg_dump_route(rig: Rig) -> None:
    done = rig.cli("backup", DATABASE_URL="postgresql://hub:s3cr3t-pw@127.0.0.1/hub")
    assert done.returncode == 2
    assert "pg_dump" in done.stderr and "s3cr3t-pw" not in done.stderr
    assert rig.object_keys() == []
    # the restore the container runs at every start must not stop a PostgreSQL deployment
    done = rig.cli("restore", "--if-missing", DATABASE_URL="postgresql://hub:s3cr3t-pw@127.0.0.1/hub")
    assert done.returncode == 0, done.stderr
    assert "pg_dump" in done.stderr and "s3cr3t-pw" not in done.stderr


def test_enabled_tells_the_entrypoint_whether_backups_are_on(rig: Rig) -> None:
    done = rig.cli("enabled")
    assert done.returncode == 0 and f"s3://{rig.bucket}" in done.stdout
    assert rig.cli("enabled", BACKUP_S3_BUCKET="").returncode == backup.EXIT_OFF
    pg = rig.cli("enabled", DATABASE_URL="postgresql://hub@127.0.0.1/hub")
    assert pg.returncode == backup.EXIT_OFF and "off" in pg.stdout


def test_bad_settings_and_usage_exit_2(rig: Rig) -> None:
    done = rig.cli("backup", BACKUP_RETENTION_DAYS="soon")
    assert done.returncode == 2 and "backup: setting BACKUP_RETENTION_DAYS:" in done.stderr
    assert rig.cli("bogus").returncode == 2
    assert rig.cli("backup", "weekly").returncode == 2


# ---- restore --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_restore_if_missing_brings_the_database_back(rig: Rig, how: str) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    before = contents(rig.db)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{rig.db}{suffix}").unlink(missing_ok=True)
    if how == "empty":
        rig.db.touch()
        # a stale WAL from another life would be applied to the restored file
        Path(f"{rig.db}-wal").write_bytes(b"stale")
    done = rig.cli("restore", "--if-missing")
    assert done.returncode == 0, done.stderr
    assert contents(rig.db) == before and integrity(rig.db) == "ok"
    assert not Path(f"{rig.db}-wal").exists()
    assert not list(rig.tmp.glob("*.before-restore-*"))  # nothing worth keeping was replaced
    restored = rig.status()["last_restore"]
    assert restored["ok"] is True and restored["key"] == LATEST and restored["previous"] is None


def test_restore_if_missing_leaves_an_existing_database_alone(rig: Rig) -> None:
    assert rig.run("backup") == 0
    seed(rig.db, prefix="newer")
    before = rig.db.read_bytes()
    done = rig.cli("restore", "--if-missing")
    assert done.returncode == 0
    assert "nothing restored" in done.stderr
    assert rig.db.read_bytes() == before
    assert "last_restore" not in rig.status()


def test_restore_keeps_a_copy_of_the_replaced_file(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    backed_up = contents(rig.db)
    seed(rig.db, inputs=3, prefix="later")
    replaced = contents(rig.db)
    done = rig.cli("restore")
    assert done.returncode == 0, done.stderr
    assert contents(rig.db) == backed_up
    [kept] = rig.tmp.glob("event_processor.db.before-restore-*")
    assert re.fullmatch(r"event_processor\.db\.before-restore-\d{8}T\d{6}Z", kept.name)
    assert contents(kept) == replaced
    assert rig.status()["last_restore"]["previous"] == str(kept)
    # a second restore within the same second keeps its own copy
    assert rig.run("restore") == 0 and rig.run("restore") == 0
    copies = [p for p in rig.tmp.iterdir() if re.search(r"before-restore-\d{8}T\d{6}Z(-\d+)?$", p.name)]
    assert len(copies) == 3


def test_restore_from_a_dated_copy(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup", "date") == 0
    dated = next(k for k in rig.object_keys() if k != LATEST)
    expected = contents(rig.db)
    seed(rig.db, prefix="later")
    assert rig.run("backup") == 0
    assert rig.run("restore", "--from", dated) == 0
    assert contents(rig.db) == expected
    assert rig.status()["last_restore"]["key"] == dated


def _gzip_of_text() -> bytes:
    return gzip.compress(b"this is not a database\n" * 200)


def _truncated_gzip(rig: Rig) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        f.write(rig.db.read_bytes())
    data = buffer.getvalue()
    return data[: len(data) // 2]


def _gzip_of_another_sqlite(rig: Rig) -> bytes:
    other = rig.tmp / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (x)")
    conn.close()
    return gzip.compress(other.read_bytes())


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (lambda rig: os.urandom(4096), "not a complete gzip"),
        (_truncated_gzip, "not a complete gzip"),
        (lambda rig: _gzip_of_text(), "not a usable SQLite database"),
        (_gzip_of_another_sqlite, "not an event-processor database"),
    ],
    ids=["garbage", "truncated-gzip", "gzip-of-text", "gzip-of-other-sqlite"],
)
def test_a_corrupt_download_is_refused_and_the_database_untouched(
    rig: Rig, payload: Callable[[Rig], bytes], why: str
) -> None:
    seed(rig.db)
    rig.put(LATEST, payload(rig))
    before = rig.db.read_bytes()
    done = rig.cli("restore", "--force")
    assert done.returncode == 1
    assert why in done.stderr
    assert rig.db.read_bytes() == before
    assert not list(rig.tmp.glob("*.before-restore-*"))
    assert not list(rig.tmp.glob(f".*{backup_files.TEMP_SUFFIX}"))
    assert rig.status()["last_restore"]["ok"] is False
    # at container start too: a missing database stays missing rather than becoming garbage
    rig.db.unlink()
    assert rig.run("restore", "--if-missing") == 1
    assert not rig.db.exists()


def test_a_download_not_matching_its_sha256_or_from_a_newer_schema_is_refused(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    copy, metadata = rig.fetch()
    tampered = {**metadata, "sha256": "0" * 64}
    rig.s3.put_object(Bucket=rig.bucket, Key=LATEST, Body=gzip.compress(copy.read_bytes()), Metadata=tampered)
    before = rig.db.read_bytes()
    assert rig.run("restore", "--force") == 1
    assert "sha256" in rig.status()["last_restore"]["error"]
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.close()
    rig.put(LATEST, gzip.compress(copy.read_bytes()))
    assert rig.run("restore", "--force") == 1
    assert "newer than this code knows" in rig.status()["last_restore"]["error"]
    assert rig.db.read_bytes() == before


def test_restore_is_refused_while_the_hub_heartbeat_is_fresh(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    with sqlite3.connect(rig.db) as conn:
        conn.execute("INSERT INTO heartbeat (id, dt, ts) VALUES (1, NULL, ?)", (time.time(),))
    conn.close()
    before = rig.db.read_bytes()
    done = rig.cli("restore")
    assert done.returncode == 1
    assert "the hub looks alive" in done.stderr and "--force" in done.stderr
    assert rig.db.read_bytes() == before
    done = rig.cli("restore", "--force")
    assert done.returncode == 0, done.stderr
    assert "restart the hub now" in done.stderr
    # an old heartbeat (the hub stopped long ago) does not block a restore
    with sqlite3.connect(rig.db) as conn:
        conn.execute("INSERT INTO heartbeat (id, dt, ts) VALUES (1, NULL, ?)", (time.time() - 3600,))
    conn.close()
    assert rig.run("restore") == 0


def test_restore_if_missing_with_no_backup_yet_starts_fresh(rig: Rig) -> None:
    rig.db.unlink()
    done = rig.cli("restore", "--if-missing")
    assert done.returncode == 0, done.stderr
    assert "fresh database" in done.stderr
    assert not rig.db.exists()
    # on demand, no backup is a failure
    rig.db.touch()
    assert rig.cli("restore").returncode == 1


def test_restore_with_s3_unreachable_fails_clearly(rig: Rig) -> None:
    rig.db.unlink()
    dead = f"http://127.0.0.1:{free_port()}"
    done = rig.cli("restore", "--if-missing", AWS_ENDPOINT_URL=dead)
    assert done.returncode == 1
    assert f"cannot reach S3 at {dead}" in done.stderr and "not touched" in done.stderr
    assert "testing" not in done.stderr  # the secret key
    assert not rig.db.exists()


def test_backups_off_is_not_an_error_for_cron_or_container_start(rig: Rig) -> None:
    assert rig.cli("backup", BACKUP_S3_BUCKET="").returncode == 0
    assert rig.cli("restore", "--if-missing", BACKUP_S3_BUCKET="").returncode == 0
    done = rig.cli("restore", BACKUP_S3_BUCKET="")
    assert done.returncode == 2 and "BACKUP_S3_BUCKET" in done.stderr


# ---- verify (the restore drill) -------------------------------------------------------------


def test_verify_drill_records_its_result(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    done = rig.cli("verify")
    assert done.returncode == 0, done.stderr
    assert "restore drill ok" in done.stderr
    drill = rig.status()["last_verify"]
    assert drill["ok"] is True and drill["revision"] == HEAD_REVISION and drill["note"] is None
    assert drill["rows"]["input_config"] == 25 and drill["rows"]["alembic_version"] == 1
    summary = backup_status.read_status(rig.settings)
    assert summary.state == "ok" and summary.last_verify_ok is True
    # a known older schema passes, and says so
    copy, metadata = rig.fetch()
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0004_offline_alerts'")
    conn.close()
    metadata["sha256"] = hashlib.sha256(copy.read_bytes()).hexdigest()
    rig.s3.put_object(Bucket=rig.bucket, Key=LATEST, Body=gzip.compress(copy.read_bytes()), Metadata=metadata)
    assert rig.run("verify") == 0
    assert "older schema 0004_offline_alerts" in rig.status()["last_verify"]["note"]


def test_verify_of_a_corrupt_latest_fails_and_is_recorded(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    rig.put(LATEST, gzip.compress(b"garbage" * 100))
    done = rig.cli("verify")
    assert done.returncode == 1
    assert "corrupt download refused" in done.stderr
    drill = rig.status()["last_verify"]
    assert drill["ok"] is False and "corrupt" in drill["error"]
    summary = backup_status.read_status(rig.settings)
    assert summary.state == "failed" and summary.error is not None and "restore drill" in summary.error


# ---- the status summary ---------------------------------------------------------------------


def test_read_status_states(rig: Rig, make_settings: Callable[..., Settings]) -> None:
    path = rig.settings.backup_status_path
    assert backup_status.read_status(make_settings()).state == "not configured"
    assert backup_status.read_status(rig.settings).state == "never"
    write_status(path, last_backup_attempt=entry(1), last_good_backup=entry(1))
    assert backup_status.read_status(rig.settings).state == "ok"
    write_status(path, last_backup_attempt=entry(30), last_good_backup=entry(30))
    stale = backup_status.read_status(rig.settings)
    assert stale.state == "stale" and backup_status.summary_text(stale) == "stale, 30 h ago"
    write_status(path, last_backup_attempt=entry(0, ok=False, error="boom"), last_good_backup=entry(3))
    failed = backup_status.read_status(rig.settings)
    assert failed.state == "failed" and backup_status.summary_text(failed) == "failed, last good 3 h ago"
    write_status(path, last_backup_attempt=entry(0, ok=False, error="boom"))
    assert backup_status.read_status(rig.settings).state == "failed"
    Path(path).write_text("{not json")
    assert backup_status.read_status(rig.settings).state == "never"


# ---- the backup script, as the hub's schedule runs it ----------------------------------------------


def test_backup_db_sh_runs_from_the_hubs_schedule_with_the_hubs_environment(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ops.backup_schedule import BackupScheduler

    seed(rig.db)
    for name, value in {**rig.env, "RABBITMQ_EXCHANGE": "x"}.items():
        monkeypatch.setenv(name, value)  # the hub's process environment, which the job inherits
    log_file = rig.tmp / "backup.log"
    log_file.write_bytes(b"old line\n" * 120_000)  # over 1 MB: rotated before this run
    scheduler = BackupScheduler(rig.settings, log_path=log_file)
    scheduler.untrack()

    assert scheduler.run_job("date") == 0, log_file.read_text()[-2000:]
    today = datetime.now(UTC).strftime("%y%m%d")
    assert rig.object_keys() == [LATEST, f"event_processor_{today}.db.gz"]
    assert Path(f"{log_file}.1").stat().st_size > 1_000_000 and log_file.stat().st_size < 100_000
    assert scheduler.run_job("backup") == 0
    assert scheduler.run_job("verify") == 0
    assert rig.status()["last_verify"]["ok"] is True
    script = REPO / "backup_db.sh"
    assert script.is_file() and os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/bin/sh\n") and "set -eu" in script.read_text()


def test_latest_copy_every_five_minutes_by_default_and_configurable(rig: Rig) -> None:
    seed(rig.db)
    done = rig.cli("backup", "--if-due")
    assert done.returncode == 0, done.stderr
    assert rig.object_keys() == [LATEST] and "backup uploaded" in done.stderr
    first = rig.status()["last_backup_attempt"]["time"]
    # a minute later the hub's schedule asks again: not due, and nothing is said (the log stays quiet)
    again = rig.cli("backup", "--if-due")
    assert again.returncode == 0 and again.stderr == ""
    assert rig.status()["last_backup_attempt"]["time"] == first
    stamp = datetime.strptime(first, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert rig.settings.backup_latest_minutes == 5
    assert not backup.backup_due(rig.settings, stamp + timedelta(minutes=4))
    assert backup.backup_due(rig.settings, stamp + timedelta(minutes=4, seconds=31))  # a job's jitter
    assert backup.backup_due(rig.settings, stamp - timedelta(minutes=1))  # the clock went back
    hourly = dataclasses.replace(rig.settings, backup_latest_minutes=60)
    assert not backup.backup_due(hourly, stamp + timedelta(minutes=30))
    assert backup.backup_due(hourly, stamp + timedelta(minutes=60))
    # when due, the next run uploads again
    write_status(rig.settings.backup_status_path, last_backup_attempt=entry(1))
    assert rig.cli("backup", "--if-due").stderr.count("backup uploaded") == 1
    assert rig.status()["last_backup_attempt"]["time"] >= first  # the hour-old record was replaced


# ---- what the hub shows ---------------------------------------------------------------------


@pytest.fixture
def web(rig: Rig) -> Iterator[Any]:
    engine = db.make_engine(rig.settings.database_url)
    sessions = db.session_factory(engine)
    app = create_app(rig.settings, sessions, Presence())
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True, TESTING=True)
    yield app.test_client()
    engine.dispose()


def test_health_shows_the_backup_and_stays_200_when_stale(rig: Rig, web: Any) -> None:
    health.mark_ready()
    body = web.get("/api/health").get_json()
    assert body["backup"]["state"] == "never" and body["backup"]["last_good_backup"] is None
    assert rig.run("backup") == 0 and rig.run("verify") == 0
    response = web.get("/api/health")
    assert response.status_code == 200
    shown = response.get_json()["backup"]
    assert shown["state"] == "ok" and shown["last_good_backup"]["key"] == LATEST
    assert shown["last_good_backup"]["time"] == rig.status()["last_good_backup"]["time"]
    assert shown["last_verify"]["ok"] is True and shown["age_seconds"] < 60
    write_status(rig.settings.backup_status_path, last_backup_attempt=entry(50), last_good_backup=entry(50))
    response = web.get("/api/health")
    assert response.status_code == 200 and response.get_json()["backup"]["state"] == "stale"
    metrics = web.get("/metrics").get_data(as_text=True)
    age = re.search(r"^event_processor_backup_age_seconds (\S+)$", metrics, re.MULTILINE)
    assert age is not None and 49 * 3600 < float(age.group(1)) < 51 * 3600
    assert re.search(r"^event_processor_backup_ok 0\.0$", metrics, re.MULTILINE)


def badge(html: str, name: str) -> tuple[str, str]:
    match = re.search(
        rf'<span class="badge text-bg-(\w+)" data-component="{name}">{name}: ([^<]*)</span>', html
    )
    assert match is not None, name
    return match.group(1), match.group(2)


def test_dashboard_shows_the_last_backup_and_telegram_state(rig: Rig, web: Any) -> None:
    assert badge(web.get("/").get_data(as_text=True), "Last backup") == ("warning", "never")
    assert rig.run("backup") == 0
    page = web.get("/").get_data(as_text=True)
    assert badge(page, "Last backup") == ("success", "ok, just now")
    assert badge(page, "Telegram") == ("secondary", "off")
    write_status(rig.settings.backup_status_path, last_backup_attempt=entry(49), last_good_backup=entry(49))
    assert badge(web.get("/").get_data(as_text=True), "Last backup") == ("warning", "stale, 2 d ago")
    write_status(
        rig.settings.backup_status_path,
        last_backup_attempt=entry(0, ok=False, error="x"),
        last_good_backup=entry(5),
    )
    assert badge(web.get("/").get_data(as_text=True), "Last backup") == (
        "danger",
        "failed, last good 5 h ago",
    )
    # a failed restore drill turns the badge red too, even when the backups themselves succeed
    write_status(
        rig.settings.backup_status_path,
        last_backup_attempt=entry(1),
        last_good_backup=entry(1),
        last_verify=entry(2, ok=False, error="integrity_check failed"),
    )
    page = web.get("/").get_data(as_text=True)
    assert badge(page, "Last backup") == ("danger", "drill failed, last good 1 h ago")
    for state, colour in (("ok", "success"), ("retrying", "warning"), ("down", "danger")):
        health.set_state("telegram", state)
        assert badge(web.get("/").get_data(as_text=True), "Telegram") == (colour, state)
    # SQS control appears only once its listener reports (it is off unless SNS_CONTROL_ENABLED)
    assert 'data-component="SQS control"' not in web.get("/").get_data(as_text=True)
    health.set_state("sqs_control", "connected", "automation-control")
    assert badge(web.get("/").get_data(as_text=True), "SQS control") == ("success", "ok")
    health.set_state("sqs_control", "down", "queue 'x' does not exist (SQS_QUEUE)")
    assert badge(web.get("/").get_data(as_text=True), "SQS control") == ("danger", "down")


def test_telegram_status_shows_the_last_backup_and_drill(rig: Rig) -> None:
    from tests.outputs.telegram.test_telegram_commands import ALICE, TOKEN, BotThread
    from tests.telegram_standin import TelegramStandIn

    seed(rig.db)
    assert rig.run("backup") == 0 and rig.run("verify") == 0
    engine = db.make_engine(rig.settings.database_url)
    settings = dataclasses.replace(rig.settings, telegram_users=(ALICE,))
    standin = TelegramStandIn(TOKEN).start()
    bot = BotThread(standin, settings, db.session_factory(engine), 120.0).start()
    try:

        def ask() -> str:
            before = len(standin.calls("sendMessage"))
            standin.message_update("/status", ALICE)
            calls = wait_for(lambda: len(c := standin.calls("sendMessage")) > before and c)
            return calls[-1].text or ""

        text = ask()
        assert "Last backup: ok, just now" in text and "Restore drill: ok, just now" in text
        write_status(
            rig.settings.backup_status_path,
            last_backup_attempt=entry(0, ok=False, error="S3 error <AccessDenied>"),
            last_good_backup=entry(3),
        )
        text = ask()
        assert "Last backup: failed, last good 3 h ago (backup: S3 error &lt;AccessDenied&gt;)" in text
        assert "Restore drill: never run" in text
    finally:
        bot.stop()
        standin.stop()
        engine.dispose()


# ---- encryption and file modes ----------------------------------------------------------------


def encrypted_rig(rig: Rig, key: str) -> Rig:
    env = {**rig.env, "BACKUP_ENCRYPTION_KEY": key}
    settings = dataclasses.replace(rig.settings, backup_encryption_key=key)
    return dataclasses.replace(rig, settings=settings, env=env)


def test_genkey_prints_a_fernet_key(rig: Rig) -> None:
    done = rig.cli("genkey", BACKUP_ENCRYPTION_KEY="")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert rig.cli("genkey").stdout.strip() != key  # a new one each time


def test_an_encrypted_backup_holds_no_plaintext_and_restores(rig: Rig) -> None:
    key = backup_crypto.generate_key()
    sealed = encrypted_rig(rig, key)
    seed(rig.db, prefix="secret-door")
    before = contents(rig.db)
    done = sealed.cli("backup")
    assert done.returncode == 0, done.stderr
    assert key not in done.stderr
    body = rig.s3.get_object(Bucket=rig.bucket, Key=LATEST)["Body"].read()
    head = rig.s3.head_object(Bucket=rig.bucket, Key=LATEST)
    assert body.startswith(backup_crypto.MAGIC)
    assert head["ContentType"] == "application/octet-stream"
    assert head["Metadata"]["encryption"] == "fernet-chunked-1"
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(body)
    assert b"secret-door" not in body and b"SQLite format 3" not in body
    # Restore with the key: the same rows; the drill reads it too.
    seed(rig.db, prefix="later")
    done = sealed.cli("restore")
    assert done.returncode == 0, done.stderr
    assert contents(rig.db) == before
    assert sealed.run("verify") == 0


def test_restore_reads_plain_backups_with_a_key_set_and_refuses_encrypted_ones_without(rig: Rig) -> None:
    key = backup_crypto.generate_key()
    sealed = encrypted_rig(rig, key)
    seed(rig.db)
    assert rig.run("backup") == 0  # plain, made before the key was configured
    plain = contents(rig.db)
    seed(rig.db, prefix="later")
    assert sealed.run("restore") == 0
    assert contents(rig.db) == plain
    assert sealed.run("backup") == 0  # now encrypted
    before = rig.db.read_bytes()
    done = rig.cli("restore")  # no key
    assert done.returncode == 1
    assert "encrypted: set BACKUP_ENCRYPTION_KEY" in done.stderr
    wrong = encrypted_rig(rig, backup_crypto.generate_key()).cli("restore")
    assert wrong.returncode == 1
    assert "not the key it was made with" in wrong.stderr
    assert rig.db.read_bytes() == before  # refused: the database was not touched


def test_a_tampered_encrypted_backup_is_refused(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup_crypto, "CHUNK", 512)  # several chunks from a small database
    key = backup_crypto.generate_key()
    sealed = encrypted_rig(rig, key)
    seed(rig.db, inputs=200)
    assert sealed.run("backup") == 0
    body = rig.s3.get_object(Bucket=rig.bucket, Key=LATEST)["Body"].read()
    records = []
    rest = body[len(backup_crypto.MAGIC) :]
    while rest:
        length = int.from_bytes(rest[:4], "big")
        records.append(rest[: 4 + length])
        rest = rest[4 + length :]
    assert len(records) >= 3
    before = rig.db.read_bytes()
    for damaged, why in (
        (records[:-1], "cut off"),
        (records[:1] + records[2:], "damaged"),
        ([records[1], records[0], *records[2:]], "damaged"),
        (records + records[-1:], "after its last chunk"),
    ):
        rig.put(LATEST, backup_crypto.MAGIC + b"".join(damaged))
        done = sealed.cli("restore")
        assert done.returncode == 1 and why in done.stderr, done.stderr
    assert rig.db.read_bytes() == before


def test_restore_writes_the_database_and_kept_copy_0600(rig: Rig) -> None:
    seed(rig.db)
    assert rig.run("backup") == 0
    rig.db.chmod(0o644)  # as an older version's restore left it
    done = rig.cli("restore")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(rig.db.stat().st_mode) == 0o600
    [kept] = rig.tmp.glob("event_processor.db.before-restore-*")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    status = Path(rig.settings.backup_status_path)
    assert stat.S_IMODE(status.stat().st_mode) == 0o600
