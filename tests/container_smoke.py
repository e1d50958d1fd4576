"""The container smoke test (make image-test): build the image and use it as its owner would, with podman.

Builds the unchanged Dockerfile on a local stand-in for python:3.11-slim-bookworm
(tests/container/setup.sh, no registry), then runs the hub against this machine's RabbitMQ and a
Mosquitto, with .env.example plus the compose template's environment, and checks: healthy; the dashboard
login with the generated password from the container log; a heartbeat registers devices, an input armed
through the API fires its output's control message; unhealthy while MQTT is down past the grace and
healthy again when it returns; nothing runs as root; `podman stop` exits 0 within 5 s; the data and the
admin password survive a new container on the same volume; an empty volume with S3 configured (moto's
server) restores the latest backup at start; a bad setting waits before exiting 2; the compose template
brings the hub up with docker-compose against podman's Docker API. Prints the image size and the timings.

    python -m tests.container_smoke [--arch arm64]   (--arch arm64: build and start under qemu only)

Containers, volumes, the podman API service and moto's server it started are removed at the end (and
leftovers of an interrupted run at the start); the base image and podman's layer cache are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/event-processor:smoke"
LABEL = "event-processor-smoke"
SOCKET = Path("/run/podman/podman.sock")
SIZE_TARGET_MB = 200
STOP_LIMIT_SECONDS = 5.0
FRONT = "Front Door Motion (Hallway)"
HEARTBEAT = {
    "device_info": {
        "inputs": [
            {
                "name": "Front Door",
                "type": "Motion",
                "location": "Hallway",
                "device_key": FRONT,
                "device_label": "Front Door Motion",
            }
        ],
        "outputs": [{"type": "Buzzer", "location": "Hallway", "device_key": "Hallway Buzzer"}],
    }
}
timings: dict[str, float] = {}
LOAD_EXTENSIONS = """
import importlib, pathlib, sysconfig
root = pathlib.Path(sysconfig.get_path("purelib"))
loaded = 0
for so in sorted(root.rglob("*.so")):
    parts = list(so.relative_to(root).parts)
    if parts[0].endswith(".libs"):
        continue  # vendored C libraries, not modules
    parts[-1] = parts[-1].split(".")[0]
    importlib.import_module(".".join(parts))
    loaded += 1
print(loaded)
"""


def say(message: str) -> None:
    print(f"image-test: {message}", flush=True)


def run(*args: str, check: bool = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def wait(what: str, probe: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, AssertionError, urllib.error.URLError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    timings[name] = time.monotonic() - start
    say(f"{name}: {timings[name]:.1f} s")


# ---- podman ------------------------------------------------------------------------------------------


def cleanup() -> None:
    """Every container and volume an earlier or this run left (by label)."""
    if shutil.which("podman") is None:
        return  # a machine without podman yet (setup.sh installs it) has nothing of ours to remove
    ids = run("podman", "ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if ids:
        run("podman", "rm", "-f", "-t", "0", *ids, check=False)
    vols = run("podman", "volume", "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
    # and those an interrupted compose test left (named after its project)
    vols += [
        v for v in run("podman", "volume", "ls", "-q", check=False).stdout.split() if v.startswith("epsmoke")
    ]
    if vols:
        run("podman", "volume", "rm", "-f", *vols, check=False)


def volume(name: str) -> str:
    run("podman", "volume", "create", "--label", LABEL, name)
    return name


def start(name: str, env_file: Path, vol: str, *extra: str, image: str = IMAGE) -> str:
    run(
        "podman", "run", "-d", "--name", name, "--label", LABEL, "--network", "host",
        "--env-file", str(env_file), "-v", f"{vol}:/data", "--tmpfs", "/tmp", "--stop-timeout", "20",
        *extra, image,
    )  # fmt: skip
    return name


def healthy(name: str) -> bool:
    # No systemd here, so podman runs no health timers: run the image's HEALTHCHECK the way they would.
    return run("podman", "healthcheck", "run", name, check=False).returncode == 0


def wait_healthy(name: str, timeout: float = 90.0) -> None:
    def probe() -> bool:
        state = json.loads(run("podman", "inspect", name).stdout)[0]["State"]
        assert state["Running"], f"{name} stopped (exit {state['ExitCode']}):\n{logs(name)[-3000:]}"
        return healthy(name)

    wait(f"{name} healthy", probe, timeout)


def logs(name: str) -> str:
    done = run("podman", "logs", name, check=False)
    return done.stdout + done.stderr


def stop(name: str) -> tuple[float, int]:
    began = time.monotonic()
    run("podman", "stop", "-t", "20", name)
    took = time.monotonic() - began
    code = json.loads(run("podman", "inspect", name).stdout)[0]["State"]["ExitCode"]
    return took, code


def processes(name: str) -> list[tuple[str, str]]:
    """(user, command) of every process in the container."""
    out = run("podman", "top", name, "user", "args").stdout.splitlines()[1:]
    return [(line.split(None, 1)[0], line.split(None, 1)[1] if " " in line.strip() else "") for line in out]


# ---- the environment: .env.example, the compose template's, and this machine's brokers ---------------


def env_file_values(path: Path) -> dict[str, str]:
    """An env file as `docker run --env-file` and `podman run --env-file` read it: values taken literally."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not NAME=value"
        values[name] = value
    return values


def hub_env(port: int, exchange: str, mqtt_port: int, **extra: str) -> dict[str, str]:
    env = env_file_values(ROOT / ".env.example")
    app = yaml.safe_load((ROOT / "docker-compose.template.yml").read_text())["services"]["app"]
    env.update({k: str(v) for k, v in (app.get("environment") or {}).items()})
    # The container shares the host's network here (no registry for the broker images, no bridge
    # needed): the brokers are this machine's, the port a free one instead of the template's 8080.
    env.update(
        RABBITMQ_SERVER_ADDRESS="127.0.0.1",
        RABBITMQ_USER="guest",
        RABBITMQ_PASSWORD="guest",
        RABBITMQ_EXCHANGE=exchange,
        MQTT_SERVER_ADDRESS=f"127.0.0.1:{mqtt_port}",
        MQTT_USERNAME="",
        MQTT_PASSWORD="",
        APP_FLASK_HTTP_PORT=str(port),
        APP_FLASK_BIND_ADDRESS="127.0.0.1",
        HEALTH_DOWN_GRACE_SECONDS="3",
    )
    env.update(extra)
    return env


def write_env(path: Path, env: dict[str, str]) -> Path:
    for name, value in env.items():
        assert "\n" not in value and not value.startswith(("'", '"')), name
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    path.chmod(0o600)
    return path


# ---- a user at the dashboard --------------------------------------------------------------------------


class Browser:
    """Cookies, CSRF tokens from the forms, and the API with a token made on the tokens page."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.token = ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, str, str]:
        _status, page = self.get(path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, f"no CSRF token on {path}"
        data = urllib.parse.urlencode({**fields, "csrf_token": match.group(1)}).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=10) as resp:
                return resp.status, resp.geturl(), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, path, err.read().decode()

    def login(self, password: str) -> bool:
        _status, url, page = self.post_form("/login", {"username": "admin", "password": password})
        return not url.rstrip("/").endswith("/login") and "Log out" in page

    def make_token(self) -> None:
        _status, _url, page = self.post_form("/settings/tokens", {"name": "image-test", "role": "admin"})
        match = re.search(r'id="new-token"[^>]*value="([^"]+)"', page)
        assert match, "no new token on the tokens page"
        self.token = match.group(1)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.base + path, data=None if body is None else json.dumps(body).encode(), method=method
        )
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def device(self, kind: str, key: str) -> dict[str, Any]:
        for found in self.api("GET", "/api/devices")[kind]:
            if found["device_key"] == key:
                return found
        raise KeyError(f"no {kind} {key!r}")


def generated_password(log: str, browser: Browser) -> str:
    """The first admin password from the container log, however the hub words that line: the
    password-like words of the lines that mention a password (a line that also says "generated" or
    "admin" first), tried at the login form until one works."""
    lines = [line for line in log.splitlines() if "password" in line.lower() and len(line) < 400]
    lines.sort(key=lambda line: not re.search(r"(?i)generated|admin", line))
    candidates: list[str] = []
    for line in lines:
        for word in re.findall(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{12,64}(?![A-Za-z0-9_-])", line):
            mixed = re.search(r"[a-z]", word) and re.search(r"[A-Z0-9]", word)
            if mixed and word not in candidates:
                candidates.append(word)
    assert candidates, "no generated password in the container log"
    for word in candidates[:4]:  # stays below the login lockout
        if browser.login(word):
            return word
    raise AssertionError(f"none of {len(candidates)} password-like words in the log logs in")


# ---- the checks ---------------------------------------------------------------------------------------


def build(base: str, arch: str) -> str:
    tag = IMAGE if arch == host_arch() else f"{IMAGE}-{arch}"
    with timed(f"build ({arch})"):
        run(
            "podman", "build", "--format", "docker", "--network", "host", "--platform", f"linux/{arch}",
            "--build-arg", f"PYTHON_IMAGE={base}", "-t", tag, str(ROOT), timeout=3000,
        )  # fmt: skip
        # The builder stage tagged too (all from the cache, a second), so that pruning the untagged images
        # of earlier builds keeps this build's layers for the next run.
        run(
            "podman", "build", "--format", "docker", "--network", "host", "--platform", f"linux/{arch}",
            "--build-arg", f"PYTHON_IMAGE={base}", "--target", "builder", "-t", f"{tag}-builder", str(ROOT),
            timeout=3000,
        )  # fmt: skip
    run("podman", "image", "prune", "-f", timeout=300)
    size, base_size = (
        int(run("podman", "image", "inspect", "--format", "{{.Size}}", image).stdout.strip()) / 1e6
        for image in (tag, base)
    )
    venv = run("podman", "run", "--rm", "--entrypoint", "du", tag, "-sm", "/opt/app/.venv").stdout.split()[0]
    say(
        f"image {tag}: {size:.0f} MB, {size - base_size:.0f} MB above its base ({base_size:.0f} MB),"
        f" venv {venv} MB (target: {SIZE_TARGET_MB} MB on python:3.11-slim-bookworm)"
    )
    timings["image MB"] = size
    return tag


def host_arch() -> str:
    return run("dpkg", "--print-architecture").stdout.strip()


def setup(arch: str) -> str:
    with timed(f"base ({arch})"):
        done = run(str(ROOT / "tests" / "container" / "setup.sh"), arch, timeout=1800)
    sys.stderr.write(done.stderr)
    return done.stdout.strip().splitlines()[-1]


def check_image_contents(tag: str) -> None:
    script = (
        "set -e; test ! -e /etc/cron.d; test ! -e /etc/cron.daily; ! command -v cron; "
        'test -z "$(ls -A /var/lib/apt/lists 2>/dev/null)"; '
        'test -z "$(ls /var/cache/apt/archives/*.deb 2>/dev/null)"; '
        'id -u app; id -g app; echo "$PATH"'
    )
    out = run("podman", "run", "--rm", "--entrypoint", "sh", tag, "-c", script).stdout.split()
    assert out[:2] == ["10001", "10001"], out
    assert out[2].startswith("/opt/app/.venv/bin:") and "/usr/bin" in out[2], out
    # psycopg on Debian's libpq5 (no psycopg-binary in the image) reaches this machine's PostgreSQL
    # every extension module (stripped in the build) loads, also those the hub imports only when a
    # feature is configured (cryptography for encrypted backups, say)
    done = run("podman", "run", "--rm", "--user", "app", "--entrypoint", "python", tag, "-c", LOAD_EXTENSIONS)
    assert int(done.stdout.split()[-1]) >= 10, done.stdout
    dsn = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    query = f"import psycopg; print(psycopg.connect({dsn!r}).execute('select 41 + 1').fetchone()[0])"
    done = run(
        "podman",
        "run",
        "--rm",
        "--network",
        "host",
        "--user",
        "app",
        "--entrypoint",
        "python",
        tag,
        "-c",
        query,
    )
    assert done.stdout.strip() == "42", done.stdout


def smoke(workdir: Path, base: str) -> None:
    from app.core import settings as settings_module
    from tests.hubtools import ControlConsumer, Device
    from tests.mosquitto import Mosquitto
    from tests.moto_server import TEST_KEYS, moto_server
    from tests.support import free_port

    tag = build(base, host_arch())
    check_image_contents(tag)
    run_id = uuid.uuid4().hex[:8]
    exchange = f"image_test_{run_id}"
    mqtt = Mosquitto(workdir).start()
    port = free_port()
    env = hub_env(port, exchange, mqtt.port)
    base_url = f"http://127.0.0.1:{port}"
    settings = settings_module.load(env={**env, "TABLESPACE_PATH": str(workdir / "unused.db")})
    data = volume(f"ep-smoke-data-{run_id}")
    try:
        # 1. first start on an empty volume
        with timed("first start to healthy"):
            first = start(f"ep-smoke-a-{run_id}", write_env(workdir / "a.env", env), data)
            wait_healthy(first)
        procs = processes(first)
        say(f"processes: {procs}")
        assert procs and all(user == "app" for user, _ in procs), procs
        assert any("tini" in cmd for _, cmd in procs) and any("-m app" in cmd for _, cmd in procs), procs

        browser = Browser(base_url)
        password = generated_password(logs(first), browser)
        status, page = browser.get("/")
        assert status == 200 and "Home Security" in page and "icons.svg#fa-" in page, status
        assert browser.get("/static/icons.svg")[0] == 200
        browser.make_token()

        device, consumer = Device(settings), ControlConsumer(settings)
        try:
            device.publish("event.heartbeat.ioboard.smoke", HEARTBEAT)
            wait("the heartbeat's devices", lambda: browser.device("inputs", FRONT))
            front = browser.device("inputs", FRONT)
            buzzer = browser.device("outputs", "Hallway Buzzer")
            browser.api("PATCH", f"/api/inputs/{front['id']}", {"device_enabled": True})
            browser.api("PUT", f"/api/inputs/{front['id']}/outputs", {"output_ids": [buzzer["id"]]})
            active = {
                "device_key": FRONT,
                "device_label": "Front Door Motion",
                "sample_value": 97,
                "name": "Front",
            }
            device.publish("event.notify.ioboard.smoke", {"samples": {FRONT: 97}, "active_devices": [active]})
            routing_key, _props, body = consumer.wait(1, timeout=20)[0]
            assert routing_key == "event.control.ioboard" and body["data"] == ["Hallway Buzzer", None], body
        finally:
            device.close()
            consumer.close()
        say("heartbeat registered, armed through the API, activation sent its control message")

        # 2. a broker down past the grace: unhealthy, naming it; healthy again when it returns
        mqtt.stop()
        wait("unhealthy with MQTT down", lambda: not healthy(first), timeout=30)
        status, body = browser.get("/api/health")
        assert status == 503 and "mqtt" in json.loads(body)["unhealthy"], body
        mqtt.start()
        wait("healthy with MQTT back", lambda: healthy(first), timeout=60)
        say("unhealthy while MQTT was down past the grace, healthy again once it was back")

        # 3. podman stop
        took, code = stop(first)
        say(f"podman stop: {took:.2f} s, exit {code}")
        assert code == 0 and took < STOP_LIMIT_SECONDS, (took, code)

        # 4. a new container on the same volume, backups to moto's S3 on
        with moto_server() as s3_url:
            import boto3

            bucket = f"image-test-{run_id}"
            boto3.client(
                "s3", endpoint_url=s3_url, region_name="eu-west-1", **aws_keys(TEST_KEYS)
            ).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
            s3_env = {**env, "BACKUP_S3_BUCKET": bucket, "AWS_ENDPOINT_URL": s3_url}
            s3_env.update(AWS_DEFAULT_REGION="eu-west-1", **TEST_KEYS)
            second = start(f"ep-smoke-b-{run_id}", write_env(workdir / "b.env", s3_env), data)
            wait_healthy(second)
            assert "password" not in logs(second).lower() or password not in logs(second)
            again = Browser(base_url)
            assert again.login(password), "the admin password did not survive a new container"
            again.token = browser.token
            assert again.device("inputs", FRONT)["device_enabled"] is True
            # what `task backup` runs, as the app user
            run("podman", "exec", "--user", "app", second, "/opt/app/backup_db.sh", "backup")
            took, code = stop(second)
            assert code == 0 and took < STOP_LIMIT_SECONDS, (took, code)
            say("data and admin password kept on the same volume; backup made")

            # 5. an empty volume with S3 configured: restored at start
            empty = volume(f"ep-smoke-empty-{run_id}")
            third = start(f"ep-smoke-c-{run_id}", workdir / "b.env", empty)
            wait_healthy(third)
            assert "restoring the database from S3" in logs(third), logs(third)[-2000:]
            restored = Browser(base_url)
            assert restored.login(password), "the restored database has another admin password"
            restored.token = browser.token
            assert restored.device("inputs", FRONT)["device_enabled"] is True
            took, code = stop(third)
            assert code == 0 and took < STOP_LIMIT_SECONDS, (took, code)
            say("an empty volume with S3 configured restored the latest backup")

        # 6. a bad setting: the line naming it, then a wait before exit 2 (no tight restart loop)
        bad = start(
            f"ep-smoke-bad-{run_id}", write_env(workdir / "bad.env", {**env, "USER_TZ": "Mars/Olympus"}), data
        )
        wait("the bad setting's line", lambda: "USER_TZ" in logs(bad), timeout=30)
        time.sleep(2)
        state = json.loads(run("podman", "inspect", bad).stdout)[0]["State"]
        assert state["Running"], "the hub exited at once on a bad setting"
        took, code = stop(bad)
        assert code == 2 and took < STOP_LIMIT_SECONDS, (took, code)
        say(f"bad setting: {logs(bad).strip().splitlines()[0]!r}; waited, stopped with exit 2")

        task_rund(workdir, env, base, run_id)
    finally:
        mqtt.stop()
        cleanup()


def aws_keys(keys: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": keys["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"],
    }


@contextlib.contextmanager
def podman_api() -> Iterator[None]:
    """podman's Docker-compatible API on /run/podman/podman.sock, where the Taskfile's Compose looks."""
    service = None
    if run("podman", "--url", f"unix://{SOCKET}", "version", check=False, timeout=30).returncode != 0:
        SOCKET.parent.mkdir(parents=True, exist_ok=True)
        SOCKET.unlink(missing_ok=True)  # a stale socket of an interrupted run answers nothing
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{SOCKET}"], stderr=subprocess.DEVNULL
        )
        wait(
            "podman's API",
            lambda: (
                SOCKET.exists()
                and run("podman", "--url", f"unix://{SOCKET}", "version", check=False).returncode == 0
            ),
        )
    try:
        yield
    finally:
        if service is not None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()


def project_copy(dest: Path) -> Path:
    """A checkout of this tree as the owner's clone on the Pi: the files git knows (committed or not)."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def task(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real Task (go-task, from the dev extra's go-task-bin) on the project's Taskfile."""
    binary = shutil.which(
        "task", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    assert binary, "no task binary: install the dev extra (go-task-bin)"
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    return run(binary, *args, cwd=project, env=env, timeout=timeout)


def task_rund(workdir: Path, env: dict[str, str], base: str, run_id: str) -> None:
    """The owner's path with the real Task: `task rund` (setup, the compose build, up -d) in a clone, the
    hub healthy and its dashboard login working, then `task down`, with the Compose the Taskfile picks."""
    from tests.support import free_port

    project = project_copy(workdir / f"epsmoke{run_id}")
    name = f"epsmoke{run_id}"
    tag = f"localhost/event-processor:task-{run_id}"
    # .env as the owner edits it after `task setup` (which keeps an existing .env); the project name
    # keeps this run's containers apart from anything else on the machine.
    compose_env = {
        **env,
        "DOCKER_IMAGE": tag,
        "DEVICE_NAME": f"ep-smoke-{run_id}",
        "COMPOSE_PROJECT_NAME": name,
    }
    compose_env["APP_HTTP_PUBLISH"] = f"127.0.0.1:{free_port()}"
    write_env(project / ".env", compose_env)
    # The local changes the template's header suggests (docker-compose.override.yml): the stand-in base
    # instead of the registry's python image (with the host's network for pip, as the smoke build), and the
    # host's network, as the brokers are this machine's (RabbitMQ lets guest in from localhost only).
    # `network_mode: host` cannot be combined with the template's `ports` in docker-compose 1.29, so the
    # container joins this process's network namespace (the host's) by path, which podman accepts with
    # the ports left as they are. In the host's network the template's fixed container port (8080) may
    # be taken: a free one instead.
    app = {
        "build": {"context": ".", "args": {"PYTHON_IMAGE": base}, "network": "host"},
        "network_mode": f"ns:/proc/{os.getpid()}/ns/net",
        "environment": {
            "APP_FLASK_HTTP_PORT": env["APP_FLASK_HTTP_PORT"],
            "APP_FLASK_BIND_ADDRESS": "127.0.0.1",
        },
        "labels": {LABEL: "1"},
    }
    (project / "docker-compose.override.yml").write_text(yaml.safe_dump({"services": {"app": app}}))
    version = task(project, "--version").stdout.strip()
    say(f"{version}; the Taskfile's Compose here: {task(project, 'compose-cmd').stdout.strip()}")

    def containers() -> list[str]:
        return run(
            "podman", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"
        ).stdout.split()

    with podman_api():
        try:
            with timed("task rund to healthy"):
                task(project, "rund", timeout=900)
                assert (project / "docker-compose.yml").read_text() == (
                    ROOT / "docker-compose.template.yml"
                ).read_text(), "task setup did not copy the template"
                found = containers()
                assert len(found) == 1, found
                wait_healthy(found[0])
            base_url = f"http://127.0.0.1:{env['APP_FLASK_HTTP_PORT']}"
            with urllib.request.urlopen(f"{base_url}/api/health", timeout=10) as resp:
                body = json.loads(resp.read())
            assert resp.status == 200 and body["ready"] and not body["unhealthy"], body
            browser = Browser(base_url)
            generated_password(logs(found[0]), browser)
            status, page = browser.get("/")
            assert status == 200 and "Home Security" in page, status
            with timed("task down"):
                task(project, "down", timeout=120)
            assert not containers(), "task down left containers"
        finally:
            if containers():
                run("sh", "-c", f"{task(project, 'compose-cmd').stdout.strip()} down -v -t 20", cwd=project,
                    check=False, timeout=120)  # fmt: skip
            run("podman", "rmi", tag, check=False)
            # the builder stage the compose build left untagged (the smoke build's are tagged and kept)
            run("podman", "image", "prune", "-f", check=False, timeout=300)
    say("task rund: built with the Taskfile's Compose, healthy, /api/health ready, logged in; task down")


def arm64(base: str) -> None:
    """The arm64 image under qemu: it builds, the hub starts and /api/health answers."""
    from tests.mosquitto import Mosquitto
    from tests.support import free_port

    tag = build(base, "arm64")
    workdir = Path(tempfile.mkdtemp(prefix="image-test-"))
    mqtt = Mosquitto(workdir).start()
    port = free_port()
    data = volume(f"ep-smoke-arm64-{uuid.uuid4().hex[:8]}")
    try:
        env = hub_env(port, f"image_test_{uuid.uuid4().hex[:8]}", mqtt.port)
        with timed("arm64 start to healthy"):
            name = start("ep-smoke-arm64", write_env(workdir / "arm64.env", env), data, image=tag)
            wait_healthy(name, timeout=300)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as resp:
            body = json.loads(resp.read())
        assert resp.status == 200 and body["ready"] and not body["unhealthy"], body
        arch = run("podman", "exec", name, "uname", "-m").stdout.strip()
        assert arch == "aarch64", arch
        took, code = stop(name)
        say(f"arm64: healthy, /api/health 200 on {arch}; podman stop {took:.2f} s exit {code}")
        assert code == 0
    finally:
        mqtt.stop()
        cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="arm64: build and start the arm64 image under qemu")
    args = parser.parse_args(argv)
    began = time.monotonic()
    cleanup()
    arch = args.arch or host_arch()
    base = setup(arch)
    if arch != host_arch():
        arm64(base)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="image-test-"))
        try:
            smoke(workdir, base)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    timings["total"] = time.monotonic() - began
    say("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    say("passed")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
