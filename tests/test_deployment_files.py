"""The container and operations files: Dockerfile, docker-compose.template.yml, Taskfile.yml, .env.example,
the ngrok and Mosquitto configs, and the entrypoint script (run for real, as root and as another user).

No Docker engine runs here, so the files are checked by what they reference and by running the parts
that run without one.
"""

from __future__ import annotations

import configparser
import grp
import http.server
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from dotenv import dotenv_values

from app.core import file_modes
from app.core import settings as settings_module
from tests.mosquitto import MOSQUITTO, port_open
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.template.yml"
TASKFILE = ROOT / "Taskfile.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
ENTRYPOINT = ROOT / "config" / "docker-entrypoint.sh"
NGROK_CONFIG = ROOT / "config" / "ngrok_frontend.yml"
MOSQUITTO_CONFIG = ROOT / "config" / "mosquitto.conf"
MOSQUITTO_START = ROOT / "config" / "mosquitto-start.sh"
SHELL_SCRIPTS = (ENTRYPOINT, ROOT / "backup_db.sh", MOSQUITTO_START)
APP_DIR_IN_IMAGE = "/opt/app/"
OPTIONAL_SERVICES = ("rabbitmq", "mosquitto", "influxdb", "ngrok")

# Variables that docker-compose.template.yml (or the container) reads and the hub does not, each with why.
COMPOSE_ONLY = {
    "COMPOSE_PROFILES": "Compose itself: which optional services start",
    "DOCKER_IMAGE": "the image name `docker compose build` tags",
    "APP_HTTP_PUBLISH": "the host side of the dashboard's port",
    "TZ": "the container's time zone (local times in logs)",
    "NGROK_AUTHTOKEN": "the ngrok agent's token (ngrok profile)",
    "NGROK_INSPECT_PUBLISH": "where the host publishes the ngrok inspector",
    "DOCKER_INFLUXDB_INIT_USERNAME": "the influxdb profile's first-start admin user",
    "DOCKER_INFLUXDB_INIT_PASSWORD": "the influxdb profile's first-start admin password",
}
# Read by the hub from its process environment only (before the settings load); the image sets it.
PROCESS_ONLY = {"BAD_SETTING_EXIT_DELAY_SECONDS": "the wait before exit 2 on a bad setting (the image: 30)"}
# Host paths the compose file mounts that exist only once the hub has run (or `task user` made them).
RUNTIME_PATHS = {"./data": "the database volume: created by `task user`, or by Docker at the first start"}
# Paths that Taskfile commands write or read at run time rather than find in the repository.
TASKFILE_RUNTIME_FILES = {"docker-compose.yml", ".env.new", "data/backup.log"}
# Task's own template variables.
TASK_SPECIAL_VARS = {
    "CLI_ARGS",
    "TASK",
    "ROOT_DIR",
    "TASKFILE_DIR",
    "USER_WORKING_DIR",
    "CHECKSUM",
    "TIMESTAMP",
}
# Keys Task v3 accepts at the top level and in a task (the property lists of its JSON schema).
TASKFILE_KEYS = {
    "version",
    "output",
    "method",
    "includes",
    "vars",
    "env",
    "tasks",
    "silent",
    "set",
    "shopt",
    "dotenv",
    "run",
    "interval",
}
TASK_KEYS = {
    "cmds",
    "cmd",
    "deps",
    "label",
    "desc",
    "prompt",
    "summary",
    "aliases",
    "sources",
    "generates",
    "status",
    "preconditions",
    "dir",
    "set",
    "shopt",
    "vars",
    "env",
    "dotenv",
    "silent",
    "interactive",
    "internal",
    "method",
    "prefix",
    "ignore_error",
    "run",
    "platforms",
    "requires",
    "watch",
}
FILE_SUFFIX = r"\.(?:ya?ml|sh|example|conf|log|new|lock|toml)$"
COMPOSE_OPTIONS_WITH_VALUE = {"-e", "--user", "--status", "--tail", "--entrypoint"}
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def setting_names() -> set[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "config" / "app.conf")
    return {name for section in parser.sections() for name in parser[section]}


def env_example_names() -> tuple[set[str], set[str]]:
    """(names set in .env.example, names only shown in a commented `#NAME=...` line)."""
    text = ENV_EXAMPLE.read_text()
    active = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", text, re.M))
    commented = set(re.findall(r"^#([A-Za-z_][A-Za-z0-9_]*)=", text, re.M))
    return active, commented - active


def strings_in(node: Any) -> Iterator[str]:
    """Every string (keys too) in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def taskfile() -> dict[str, Any]:
    return yaml.safe_load(TASKFILE.read_text())


def dockerfile_stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions (comments left out), one list per FROM."""
    parser = DockerfileParser(path=str(DOCKERFILE), env_replace=False)
    stages: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if instruction["instruction"] != "COMMENT" and stages:
            stages[-1].append(instruction)
    return stages


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def repo_path(path_in_image: str) -> Path:
    assert path_in_image.startswith(APP_DIR_IN_IMAGE), path_in_image
    return ROOT / path_in_image[len(APP_DIR_IN_IMAGE) :]


# ---- the official schemas -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "schema"),
    [(COMPOSE_FILE, "vendor.compose-spec"), (TASKFILE, "vendor.taskfile")],
    ids=["compose-spec", "taskfile"],
)
def test_file_validates_against_its_official_schema(path: Path, schema: str) -> None:
    # check-jsonschema carries copies of the Compose spec and Task's schema, so this runs offline.
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_every_runtime_dependency_has_a_wheel_for_the_pi_and_for_amd64(tmp_path: Path, arch: str) -> None:
    # What the Dockerfile's builder installs (--only-binary: nothing compiled), resolved for each
    # architecture from the package index without installing anything.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = tmp_path / "runtime.txt"
    runtime.write_text("\n".join(project["dependencies"]) + "\n")
    report = tmp_path / "report.json"
    platforms = [f"--platform=manylinux{v}_{arch}" for v in ("2014", "_2_17", "_2_28")]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--only-binary=:all:", *platforms]
        + ["--python-version=3.11", "--implementation=cp", f"--target={tmp_path / 'target'}"]
        + ["-c", str(ROOT / "requirements.lock"), "-r", str(runtime), f"--report={report}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"pika", "pyzmq", "psycopg-binary", "sqlalchemy", "flask"} <= names
    assert not names & {"pytest", "ruff", "moto", "playwright"}  # no dev packages in the image


# ---- docker-compose.template.yml -------------------------------------------------------------------


def test_compose_app_service():
    services = compose()["services"]
    app = services["app"]
    assert app["build"] == "."
    assert app["image"] == "${DOCKER_IMAGE:-event-processor:latest}"
    # exit 1 (a dead thread) or 2 (a bad setting) restarts the container; the original stayed down on exit 0
    assert app["restart"] == "unless-stopped"
    assert app["init"] is False  # tini is the image's entrypoint
    assert app["hostname"] == "${DEVICE_NAME:-event-processor}"
    assert app["env_file"] == ".env"
    assert "./data:/data" in app["volumes"]
    assert app["ports"] == ["${APP_HTTP_PUBLISH:-8080}:8080"]
    # the container side matches EXPOSE, the health check's default and the ngrok upstream
    assert app["environment"]["APP_FLASK_HTTP_PORT"] == "8080"
    assert "/tmp" in app["tmpfs"]
    assert "healthcheck" not in app, "the health check comes from the image"
    assert "profiles" not in app, "the hub always starts"
    assert app["logging"]["driver"] == "json-file"
    assert app["logging"]["options"]["max-size"]


def test_compose_optional_services_are_in_profiles():
    services = compose()["services"]
    assert set(services) == {"app", *OPTIONAL_SERVICES}
    for name in OPTIONAL_SERVICES:
        assert services[name]["profiles"] == [name], name
        assert services[name]["logging"]["driver"] == "json-file", name
    assert services["rabbitmq"]["image"] == "rabbitmq:3-management"
    assert services["rabbitmq"]["hostname"] == "rabbitmq"  # the node name, and so its data, stays the same
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["influxdb"]["image"] == "influxdb:2"
    assert services["ngrok"]["image"].startswith("ngrok/ngrok:")
    assert services["ngrok"]["command"] == ["start", "--all", "--config", "/etc/ngrok.yml"]
    assert services["ngrok"]["environment"]["NGROK_AUTHTOKEN"] == "${NGROK_AUTHTOKEN:-}"


def test_compose_mounts_exist():
    document = compose()
    named = set(document.get("volumes") or {})
    assert (ROOT / document["services"]["app"]["build"] / "Dockerfile").is_file()
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                if source in RUNTIME_PATHS:
                    continue
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in named, f"{name} uses volume {source}, not declared under volumes:"


def test_compose_variables_are_known_and_documented():
    settings = setting_names()
    active, commented = env_example_names()
    documented = active | commented
    assert set(COMPOSE_ONLY).isdisjoint(settings)
    seen = set()
    for text in strings_in(compose()):
        for match in COMPOSE_VARIABLE.finditer(text.replace("$$", "")):
            name = match.group(1) or match.group(3)
            seen.add(name)
            assert name in settings or name in COMPOSE_ONLY, f"${{{name}}} is neither a setting nor listed"
            assert name in documented, f"${{{name}}} is not in .env.example"
            # a default for each: a variable missing from .env never stops `docker compose` (the
            # whole file is interpolated, profiles or not)
            assert (match.group(2) or "").startswith((":-", "-")), f"${{{name}}} has no default"
    assert seen >= {"DOCKER_IMAGE", "DEVICE_NAME", "APP_HTTP_PUBLISH", "NGROK_AUTHTOKEN"}
    assert not set(COMPOSE_ONLY) - seen - {"COMPOSE_PROFILES", "TZ"}, "a listed variable is no longer used"


# ---- config/ngrok_frontend.yml and config/mosquitto.conf -------------------------------------------------


def test_ngrok_config_forwards_to_the_app():
    config = yaml.safe_load(NGROK_CONFIG.read_text())
    assert config["version"] == 3
    assert config["agent"]["web_addr"] == "0.0.0.0:4040"
    assert "authtoken" not in config["agent"], "the token comes from NGROK_AUTHTOKEN, never from git"
    (endpoint,) = config["endpoints"]
    assert endpoint["name"] == "frontend"
    assert endpoint["url"] == "https://"  # https only
    app_port = compose()["services"]["app"]["ports"][0].rsplit(":", 1)[1]
    assert endpoint["upstream"]["url"] == f"http://app:{app_port}"
    ngrok = compose()["services"]["ngrok"]
    assert "./config/ngrok_frontend.yml:/etc/ngrok.yml:ro" in ngrok["volumes"]
    assert ngrok["ports"] == ["${NGROK_INSPECT_PUBLISH:-127.0.0.1:4040}:4040"]


def _mqtt_connect(port: int, username: str | None = None, password: str | None = None) -> int:
    """The CONNACK reason code a real paho client gets (0: accepted)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    answers: list[int] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(reason.value)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_for(lambda: answers, timeout=10, what="CONNACK")
    finally:
        client.loop_stop()
        client.disconnect()
    return answers[0]


def _start_mosquitto(tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """config/mosquitto-start.sh for real, with Debian's Mosquitto 2 and the profile's config."""
    port = free_port()
    text = MOSQUITTO_CONFIG.read_text()
    assert re.search(r"^listener 1883$", text, re.M)
    assert re.search(r"^persistence_location /mosquitto/data/$", text, re.M)
    text = text.replace("listener 1883", f"listener {port} 127.0.0.1")
    text = text.replace("/mosquitto/data/", f"{tmp_path}/")
    if os.geteuid() == 0:
        text = "user root\n" + text
    config = tmp_path / "mosquitto.conf"
    config.write_text(text)
    variables = {
        "PATH": os.environ["PATH"],
        "MOSQUITTO_CONF": str(config),
        "MOSQUITTO_PASSWD": str(tmp_path / "passwd"),
        "MOSQUITTO_BIN": MOSQUITTO,
        **env,
    }
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115  (closed with the process below)
    proc = subprocess.Popen(["sh", str(MOSQUITTO_START)], stdout=log, stderr=log, env=variables)
    proc.port = port  # type: ignore[attr-defined]
    log.close()
    return proc


def test_mosquitto_config_runs_with_a_login_and_refuses_anonymous_clients(tmp_path):
    """Debian's Mosquitto 2 (the tests' broker) starts with the profile's start script and config."""
    text = MOSQUITTO_CONFIG.read_text()
    assert re.search(r"^allow_anonymous false$", text, re.M)
    assert not re.search(r"^allow_anonymous true", text, re.M)
    proc = _start_mosquitto(tmp_path, MQTT_USERNAME="hub", MQTT_PASSWORD="s3cret pass")
    port = proc.port  # type: ignore[attr-defined]
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, timeout=10, what="mosquitto")
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        assert _mqtt_connect(port) != 0  # anonymous: refused
        assert _mqtt_connect(port, "hub", "wrong") != 0
        assert _mqtt_connect(port, "hub", "s3cret pass") == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    passwd = tmp_path / "passwd"
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    assert "s3cret" not in passwd.read_text()  # only the hash
    assert "s3cret" not in (tmp_path / "mosquitto.log").read_text()
    mosquitto = compose()["services"]["mosquitto"]
    assert "./config/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mosquitto["volumes"]
    assert "./config/mosquitto-start.sh:/mosquitto/config/mosquitto-start.sh:ro" in mosquitto["volumes"]
    assert mosquitto["command"] == ["sh", "/mosquitto/config/mosquitto-start.sh"]
    assert mosquitto["environment"] == {
        "MQTT_USERNAME": "${MQTT_USERNAME:-}",
        "MQTT_PASSWORD": "${MQTT_PASSWORD:-}",
    }


@pytest.mark.parametrize("env", [{}, {"MQTT_USERNAME": "hub"}, {"MQTT_PASSWORD": "x"}])
def test_mosquitto_will_not_start_without_a_login(tmp_path, env):
    proc = _start_mosquitto(tmp_path, **env)
    assert proc.wait(timeout=10) == 78
    assert "set MQTT_USERNAME and MQTT_PASSWORD" in (tmp_path / "mosquitto.log").read_text()


@pytest.mark.parametrize(
    ("user", "password", "starts"),
    [
        ("", "", False),
        ("guest", "guest", False),
        ("guest", "long password", False),
        ("hub", "guest", False),
        ("hub", "", False),
        ("hub", "a real password", True),
    ],
)
def test_rabbitmq_profile_refuses_guest_and_missing_credentials(tmp_path, user, password, starts):
    service = compose()["services"]["rabbitmq"]
    assert service["environment"]["RABBITMQ_DEFAULT_USER"] == "${RABBITMQ_USER:-}"
    assert service["environment"]["RABBITMQ_DEFAULT_PASS"] == "${RABBITMQ_PASSWORD:-}"
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c")
    # What the container runs once Compose has turned $$ into $; the broker start is a stand-in here.
    script = script.replace("$$", "$")
    assert script.endswith("exec docker-entrypoint.sh rabbitmq-server")
    script = script.replace("exec docker-entrypoint.sh rabbitmq-server", "echo started")
    env = {"PATH": os.environ["PATH"], "RABBITMQ_DEFAULT_USER": user, "RABBITMQ_DEFAULT_PASS": password}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    if starts:
        assert (done.returncode, done.stdout) == (0, "started\n")
    else:
        assert done.returncode == 78 and "not guest" in done.stderr


# ---- Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    parser = DockerfileParser(path=str(DOCKERFILE), env_replace=False)
    args = dict(a.split("=", 1) for a in (i["value"] for i in parser.structure if i["instruction"] == "ARG"))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert instructions(stages[0], "FROM") == ["${PYTHON_IMAGE} AS builder"]
    assert instructions(stages[-1], "FROM") == ["${PYTHON_IMAGE}"]


def test_dockerfile_final_stage():
    final = dockerfile_stages()[-1]
    runs = " ".join(instructions(final, "RUN"))
    # no compilers in the final image, only what the brief names
    for tool in ("gcc", "g++", "build-essential", "make ", "-dev ", "curl", "wget"):
        assert tool not in runs, tool
    assert "apt-get install -y --no-install-recommends tini sqlite3 libpq5 ca-certificates tzdata" in runs
    # no cron daemon (the hub schedules its backups), and no other package's cron jobs
    assert " cron " not in runs and "/etc/cron.d " in runs and "/etc/cron.daily " in runs
    # apt's lists and downloads are removed in the layer that made them, whatever the base's apt settings
    assert "apt-get clean" in runs and "rm -rf /var/lib/apt/lists/* /var/cache/apt/*" in runs
    # user and group app with ids above the host's system and login ranges, refused if the base has them
    args = dict(a.split("=", 1) for a in instructions(final, "ARG"))
    assert args == {"APP_UID": "10001", "APP_GID": "10001"}
    assert '! getent passwd "$APP_UID"' in runs and '! getent group "$APP_GID"' in runs
    assert (
        'groupadd --gid "$APP_GID" app' in runs and 'useradd --no-log-init --uid "$APP_UID" --gid app' in runs
    )
    assert instructions(final, "USER") == []
    assert "RUN_AS_USER=${RUN_AS_USER:-app}" in ENTRYPOINT.read_text()
    assert "exec setpriv --reuid=" in ENTRYPOINT.read_text()
    assert instructions(final, "VOLUME") == ["/data"]
    assert instructions(final, "EXPOSE") == ["8080"]
    env = " ".join(instructions(final, "ENV"))
    assert "TABLESPACE_PATH=/data/event_processor.db" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "BAD_SETTING_EXIT_DELAY_SECONDS=30" in env
    # the whole PATH, not the base's ($PATH): a base may set none or another
    assert "PATH=/opt/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in env
    (entrypoint,) = instructions(final, "ENTRYPOINT")
    entrypoint_argv = json.loads(entrypoint)
    assert len(entrypoint_argv) == 1 and repo_path(entrypoint_argv[0]) == ENTRYPOINT  # it runs tini itself
    assert json.loads(instructions(final, "CMD")[0]) == ["python", "-m", "app"]


def test_dockerfile_keeps_the_botocore_models_of_every_aws_service_the_hub_calls():
    called = set()
    for source in (ROOT / "app").rglob("*.py"):
        called |= set(re.findall(r"aws\.client\(\s*[\w.]+,\s*\"([a-z0-9-]+)\"", source.read_text()))
    assert {"s3", "sqs", "sns"} <= called
    runs = " ".join(instructions(dockerfile_stages()[0], "RUN"))
    kept = set(re.findall(r"! -name ([a-z0-9-]+)", runs.split("botocore/data")[1].split("-exec rm")[0]))
    assert called <= kept, f"the image drops botocore's model of {called - kept}"


def test_dockerfile_names_python3_and_its_own_path():
    # `python` is a command of the official images only; Debian's has python3 alone.
    for stage in dockerfile_stages():
        runs = " ".join(instructions(stage, "RUN"))
        assert not re.search(r"(^|[\s;&|(])python\s", runs), "python where python3 is meant"
        assert "$PATH" not in " ".join(instructions(stage, "ENV"))
    builder = " ".join(instructions(dockerfile_stages()[0], "RUN"))
    assert "python3 -m venv --without-pip" in builder and "python3 -m pip --python" in builder
    assert "pip 22.3+" in builder  # the base's pip is checked, with a message


def test_dockerfile_copies_files_that_exist():
    copied = []
    for stage in dockerfile_stages():
        for value in instructions(stage, "COPY"):
            words = [w for w in value.split() if not w.startswith("--")]
            if "--from=" in value:
                continue
            *sources, _dest = words
            copied += sources
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # the backups (scheduled by the hub, app/ops/backup_schedule.py)
    assert "backup_db.sh ./backup_db.sh" in instructions(dockerfile_stages()[-1], "COPY")
    # what the hub needs at run time, beside the venv
    for needed in ("app", "pylib", "config", "templates", "static"):
        assert needed in copied, needed


def test_dockerfile_holds_no_secret():
    parser = DockerfileParser(path=str(DOCKERFILE), env_replace=False)
    secret_names = settings_module.SECRET_NAMES | {"NGROK_AUTHTOKEN", "OP_CONNECT_TOKEN"}
    for instruction in parser.structure:
        if instruction["instruction"] in ("ARG", "ENV"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + instruction["value"])
            assert names, instruction
            for name in names:
                assert name not in secret_names, name
                assert not re.search(r"TOKEN|PASSWORD|SECRET|KEY", name), name


def test_dockerfile_runtime_dependencies_come_from_pyproject(tmp_path):
    """The builder's one-liner lists pyproject's dependencies; the lock pins each of them (as constraints)."""
    (first_run,) = [
        run for run in instructions(dockerfile_stages()[0], "RUN") if "requirements.runtime.txt" in run
    ]
    extract = re.split(r"\s+>\s+requirements\.runtime\.txt", first_run)[0]
    extract = extract.replace("python3 -c", f"{sys.executable} -c")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    listed = subprocess.run(
        ["sh", "-c", extract], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [line for line in listed if line] == project["dependencies"]
    assert "-c requirements.lock -r requirements.runtime.txt" in first_run
    pinned = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in project["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()
        assert name in pinned, f"{name} is not pinned in requirements.lock (make lock)"


def test_dockerfile_healthcheck_hits_api_health():
    (healthcheck,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    options, command = healthcheck.split(" CMD ", 1)
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options, option
    argv = json.loads(command)
    assert argv[0] == "/opt/app/.venv/bin/python"
    assert "/api/health" in argv[2]
    # /api/health needs no login, or the check could never pass
    from app.web import auth

    assert "api.get_health" in auth.PUBLIC_ENDPOINTS

    status = {"code": 200}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status["code"] if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"PATH": os.environ["PATH"], "APP_FLASK_HTTP_PORT": str(server.server_address[1])}
    try:

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True)

        assert check().returncode == 0
        status["code"] = 503
        failed = check()
        assert failed.returncode == 1 and "unhealthy" in failed.stderr
        server.shutdown()
        assert check().returncode == 1  # nothing listening
    finally:
        server.server_close()


def dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: * and ? stay within one path element, ** spans any."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex + r"\Z")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or a folder above it, decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = dockerignore_pattern(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_out_and_sources_in():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept_out_paths = (
        ".env .venv data data/event_processor.db .git tests/artifacts app/web/__pycache__/x.pyc"
        " config/mosquitto.passwd"
    )
    for kept_out in (*kept_out_paths.split(), ".pytest_cache", ".ruff_cache"):
        assert dockerignore_excludes(kept_out, patterns), kept_out
    assert not dockerignore_excludes(".env.example", patterns)
    assert not dockerignore_excludes("config/app.conf", patterns)
    copied = ["pyproject.toml", "requirements.lock"]
    for stage in dockerfile_stages():
        for value in instructions(stage, "COPY"):
            if "--from=" not in value:
                copied += value.split()[:-1]
    for source in copied:
        assert not dockerignore_excludes(source, patterns), f"{source} is copied but .dockerignore drops it"


# ---- .env.example and .gitignore ------------------------------------------------------------------------


def test_env_example_loads(tmp_path):
    values = dotenv_values(ENV_EXAMPLE)
    assert values["TABLESPACE_PATH"] == "/data/event_processor.db"
    assert values["BACKUP_S3_BUCKET"] == ""
    assert values["MQTT_PUB_TOPIC_CSV"] == "meter/electricity/#,sensor/#"
    # /data is the container's volume: point it at a temporary folder here
    mapped = ENV_EXAMPLE.read_text().replace("=/data/", f"={tmp_path}/")
    copy = tmp_path / "env"
    copy.write_text(mapped)
    loaded = settings_module.load(env={}, dotenv_path=copy)
    assert loaded.database_url == f"sqlite:///{tmp_path}/event_processor.db"
    assert loaded.device_name == values["DEVICE_NAME"]
    assert not loaded.backup_enabled
    assert loaded.onepassword_source == "", "1Password stays commented out"


def env_file_literal(text: str) -> dict[str, str]:
    """`docker run --env-file` and `podman run --env-file`: a line starting with # is a comment, the
    rest is NAME=value with the value taken literally (quotes, spaces and # included)."""
    values = {}
    for line in text.splitlines():
        line = line.lstrip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def env_file_compose_v2(text: str, environ: dict[str, str]) -> dict[str, str]:
    """Compose v2's env_file rules (compose-go's dotenv) for unquoted values: spaces trimmed, a # after a
    space starts a comment, $NAME and ${NAME} expanded from the variables before it and the environment."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        lookup = {**environ, **values}
        value = re.sub(
            r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
            lambda m, known=lookup: known.get(m.group(1) or m.group(2), ""),
            value,
        )
        values[name.strip()] = value
    return values


def test_env_example_reads_the_same_under_compose_docker_run_and_podman_run():
    text = ENV_EXAMPLE.read_text()
    literal = env_file_literal(text)
    assert literal["MQTT_PUB_TOPIC_CSV"] == "meter/electricity/#,sensor/#"
    # Compose v1 and the hub's own `make run` read it with python-dotenv (with and without expansion)
    assert dotenv_values(ENV_EXAMPLE, interpolate=False) == literal
    assert dotenv_values(ENV_EXAMPLE, interpolate=True) == literal
    assert env_file_compose_v2(text, {"HOME": "/root"}) == literal
    for name, value in literal.items():
        assert not value.startswith(("'", '"')) and not value.endswith(("'", '"')), f"{name} is quoted"
        assert value == value.strip() and "$" not in value, name
    # a commented example is written the same way, so that uncommenting it keeps these rules
    for line in re.findall(r"^#([A-Z][A-Z0-9_]*=.*)$", text, re.M):
        assert not re.search(r"=['\"]", line), line


def test_env_example_names_every_setting_and_nothing_else():
    settings = setting_names()
    active, commented = env_example_names()
    assert not (active | commented) - settings - set(COMPOSE_ONLY) - set(PROCESS_ONLY), "unknown names"
    assert not settings - active - commented, "settings missing from .env.example"
    # the compose-only names are there for the reader, commented
    assert set(COMPOSE_ONLY) <= commented
    assert {"OP_CONNECT_SERVER", "OP_CONNECT_TOKEN", "OP_VAULT"} <= commented
    assert {"DEVICE_NAME", "TABLESPACE_PATH", "BACKUP_S3_BUCKET"} <= active


def test_gitignore():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert ignored(".env")
    assert ignored("docker-compose.yml")
    assert ignored(".env.new")
    assert not ignored(".env.example")
    assert not ignored("docker-compose.template.yml")


# ---- Taskfile.yml ------------------------------------------------------------------------------------


def test_taskfile_shape():
    document = taskfile()
    assert document["version"] == "3"
    assert document["dotenv"] == [".env"]
    assert document["vars"]["APP"] == "event_processor"
    assert set(document) <= TASKFILE_KEYS
    tasks = document["tasks"]
    for name, task in tasks.items():
        assert set(task) <= TASK_KEYS, (name, set(task) - TASK_KEYS)
        assert task.get("desc"), f"{name} has no desc (task --list)"
    expected = {
        "default",
        "user",
        "setup",
        "build",
        "run",
        "rund",
        "connect",
        "backup",
        "restore",
        "verify",
        "logs",
    }
    assert expected <= set(tasks)
    assert tasks["default"]["cmds"] == [{"task": "rund"}]


def test_taskfile_references():
    document = taskfile()
    tasks = document["tasks"]
    global_vars = set(document["vars"])
    for name, task in tasks.items():
        known_vars = global_vars | set(task.get("vars") or {}) | TASK_SPECIAL_VARS
        for dep in task.get("deps", []):
            target = dep if isinstance(dep, str) else dep["task"]
            assert target in tasks, f"{name} depends on unknown task {target}"
        for cmd in task.get("cmds", []):
            if isinstance(cmd, dict) and "task" in cmd:
                assert cmd["task"] in tasks, f"{name} calls unknown task {cmd['task']}"
                continue
            text = cmd if isinstance(cmd, str) else cmd.get("cmd") or cmd.get("defer")
            assert isinstance(text, str), (name, cmd)
            for var in re.findall(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*)", text):
                assert var in known_vars, f"{name} uses {{{{.{var}}}}}, which is not defined"
            for token in re.split(r"[\s'\"();|&<>]+", text):
                if "$" in token or "{{" in token or not re.search(FILE_SUFFIX, token):
                    continue
                if token.startswith(APP_DIR_IN_IMAGE):
                    assert repo_path(token).is_file(), f"{name}: {token} is not in the image's sources"
                elif token not in TASKFILE_RUNTIME_FILES:
                    assert (ROOT / token).is_file(), f"{name}: {token} is not in the repository"
            for target in re.findall(r"\bmake (\w+)", text):
                assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), target


def test_taskfile_commands_match_the_deployment():
    tasks = taskfile()["tasks"]
    flat = {name: json.dumps(task) for name, task in tasks.items()}
    assert "/opt/app/backup_db.sh {{.CLI_ARGS}}" in flat["backup"]
    assert "python -m app.ops.backup restore" in flat["restore"] and "stop app" in flat["restore"]
    assert "python -m app.ops.backup verify" in flat["verify"]
    assert "python -m app.core.onepassword dotenv" in flat["env-file"]
    assert "cp .env.example .env" in flat["env-file"]
    assert "cp docker-compose.template.yml docker-compose.yml" in flat["compose-file"]
    assert "{{.APP_UID}}" in flat["user"] and "{{.APP_GID}}" in flat["user"] and "g+rws" not in flat["user"]
    args = dict(a.split("=", 1) for a in instructions(dockerfile_stages()[-1], "ARG"))
    assert (
        taskfile()["vars"]["APP_UID"] == args["APP_UID"] and taskfile()["vars"]["APP_GID"] == args["APP_GID"]
    )
    assert "backup.log" in flat["logs"]
    services = set(compose()["services"])
    for name, service in compose_services_named(tasks):
        assert service in services, f"{name} names service {service}"


def compose_services_named(tasks: dict[str, Any]) -> list[tuple[str, str]]:
    """(task, service) for every `{{.COMPOSE}} <command> [options] <service>` in the Taskfile."""
    found = []
    for name, task in tasks.items():
        for cmd in task.get("cmds", []):
            text = cmd if isinstance(cmd, str) else cmd.get("cmd") or cmd.get("defer") or ""
            for line in text.replace("\\\n", " ").splitlines():
                for segment in line.split("{{.COMPOSE}}")[1:]:
                    plain = re.sub(r"[\"')]", " ", segment.split(";")[0].split(">")[0])
                    words = plain.split()
                    if not words:
                        continue  # the command printed (compose-cmd), not run
                    command, rest = words[0], iter(words[1:])
                    for word in rest:
                        if word in COMPOSE_OPTIONS_WITH_VALUE:
                            next(rest)
                        elif not word.startswith("-"):
                            found.append((name, word))
                            break
                    else:
                        assert command in ("build", "up", "down"), (name, line)
    assert found
    return found


# ---- shell scripts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses_and_passes_shellcheck(script):
    assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"
    assert script.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(script)], check=True)
    # Debian's shellcheck (installed by .ci/run)
    result = subprocess.run(["shellcheck", "--shell=sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_container_test_setup_passes_shellcheck():
    script = ROOT / "tests" / "container" / "setup.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# ---- config/docker-entrypoint.sh, run for real ------------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A folder another user can reach (pytest's own tmp_path sits under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="entrypoint-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unprivileged() -> tuple[str, str, int, int]:
    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid)
    return user.pw_name, group.gr_name, user.pw_uid, user.pw_gid


def fake_bin(sandbox: Path, restore_status: int = 0, enabled_status: int = 0) -> tuple[Path, Path]:
    """`python` and `tini` stand-ins that log `uid|args`; python exits (restore with restore_status,
    `app.ops.backup enabled` with enabled_status), tini execs the command after its `-g --`."""
    bin_dir = sandbox / "bin"
    bin_dir.mkdir()
    calls = sandbox / "calls"
    calls.touch()
    calls.chmod(0o666)
    for name in ("python", "tini"):
        script = bin_dir / name
        script.write_text(
            "#!/bin/sh\n"
            f'printf \'%s|%s\\n\' "$(id -u)" "{name} $*" >> {shlex.quote(str(calls))}\n'
            + ('shift 2; exec "$@"\n' if name == "tini" else "")
            + f'case "$*" in *"app.ops.backup restore"*) exit {restore_status} ;; esac\n'
            f'case "$*" in *"app.ops.backup enabled"*) exit {enabled_status} ;; esac\n'
            "exit 0\n"
        )
        script.chmod(0o755)
    return bin_dir, calls


def entrypoint_env(sandbox: Path, **extra: str) -> dict[str, str]:
    user, group, _uid, _gid = unprivileged()
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "DATA_DIR": str(sandbox / "data"),
        "TINI": str(sandbox / "no-tini"),
        "RUN_AS_USER": user,
        "RUN_AS_GROUP": group,
        "BACKUP_S3_BUCKET": "",
        **extra,
    }


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint's root steps need root")


@needs_root
def test_entrypoint_prepares_and_execs_as_the_app_user(sandbox):
    _user, _group, uid, gid = unprivileged()
    data = sandbox / "data"
    data.mkdir()
    (data / "event_processor.db").write_text("x")  # the hub's file, made by root: handed to the app user
    (data / "operator-notes.txt").write_text("x")  # anything else in a bind mount stays as it was
    env = entrypoint_env(sandbox, TABLESPACE_PATH=str(data / "event_processor.db"))
    result = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", 'id -u; id -g; echo "$HOME"; exit 7'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 7, result.stderr  # the command's exit status passes through
    lines = result.stdout.splitlines()
    assert lines[:2] == [str(uid), str(gid)]
    assert lines[2] == pwd.getpwuid(uid).pw_dir
    assert (data.stat().st_uid, data.stat().st_gid) == (uid, gid)
    assert (data / "event_processor.db").stat().st_uid == uid
    assert (data / "operator-notes.txt").stat().st_uid == 0
    assert not (sandbox / "run").exists()  # no environment file for a cron: there is no cron


@needs_root
def test_entrypoint_execs_tini_as_the_app_user_so_nothing_stays_root(sandbox):
    bin_dir, calls = fake_bin(sandbox)
    _user, _group, uid, _gid = unprivileged()
    env = entrypoint_env(sandbox, PATH=f"{bin_dir}:/usr/bin:/bin", TINI=str(bin_dir / "tini"))
    result = subprocess.run([str(ENTRYPOINT), "python", "-m", "app"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [f"{uid}|tini -g -- python -m app", f"{uid}|python -m app"]


@needs_root
def test_entrypoint_waits_before_a_failure_a_restart_will_not_cure_and_sigterm_ends_the_wait(sandbox):
    bin_dir, _calls = fake_bin(sandbox, restore_status=1)
    env = entrypoint_env(
        sandbox,
        PATH=f"{bin_dir}:/usr/bin:/bin",
        BACKUP_S3_BUCKET="a-bucket",
        BAD_SETTING_EXIT_DELAY_SECONDS="3600",
    )
    proc = subprocess.Popen(
        [str(ENTRYPOINT), "python", "-m", "app"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline(), proc.stderr.readline()]
        assert "exiting 1 in 3600 s" in lines[1], lines
        proc.terminate()
        assert proc.wait(timeout=20) == 1
    finally:
        proc.kill()
        proc.wait()


@needs_root
def test_entrypoint_restores_then_starts_the_hub(sandbox):
    bin_dir, calls = fake_bin(sandbox)
    _user, _group, uid, _gid = unprivileged()
    env = entrypoint_env(sandbox, PATH=f"{bin_dir}:/usr/bin:/bin", BACKUP_S3_BUCKET="a-bucket")
    result = subprocess.run([str(ENTRYPOINT), "python", "-m", "app"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        f"{uid}|python -m app.ops.backup restore --if-missing",
        f"{uid}|python -m app",
    ]


@needs_root
@pytest.mark.parametrize("on", [True, False])
def test_entrypoint_asks_the_hub_when_the_bucket_may_be_in_1password(sandbox, on):
    bin_dir, calls = fake_bin(sandbox, enabled_status=0 if on else 3)
    _user, _group, uid, _gid = unprivileged()
    env = entrypoint_env(sandbox, PATH=f"{bin_dir}:/usr/bin:/bin", OP_CONNECT_SERVER="http://op:8080")
    result = subprocess.run([str(ENTRYPOINT), "python", "-m", "app"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    asked, hub = f"{uid}|python -m app.ops.backup enabled", f"{uid}|python -m app"
    restore = f"{uid}|python -m app.ops.backup restore --if-missing"
    expected = [asked, restore, hub] if on else [asked, hub]
    assert calls.read_text().splitlines() == expected


@needs_root
def test_entrypoint_stops_when_it_cannot_tell_whether_backups_are_on(sandbox):
    # e.g. 1Password unreachable: "off" would let a fresh database overwrite the good backup later
    bin_dir, calls = fake_bin(sandbox, enabled_status=2)
    _user, _group, uid, _gid = unprivileged()
    env = entrypoint_env(sandbox, PATH=f"{bin_dir}:/usr/bin:/bin", OP_CONNECT_SERVER="http://op:8080")
    result = subprocess.run([str(ENTRYPOINT), "python", "-m", "app"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "could not tell whether backups are on" in result.stderr
    assert calls.read_text().splitlines() == [f"{uid}|python -m app.ops.backup enabled"]


@needs_root
def test_a_root_shell_leaves_the_data_folder_to_the_app_user(sandbox):
    _user, _group, uid, gid = unprivileged()
    data = sandbox / "data"
    data.mkdir()
    os.chown(data, uid, gid)
    env = entrypoint_env(sandbox, RUN_AS_USER="root", RUN_AS_GROUP="root")
    result = subprocess.run([str(ENTRYPOINT), "sh", "-c", "id -u"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    assert (data.stat().st_uid, data.stat().st_gid) == (uid, gid)


@needs_root
def test_entrypoint_stops_when_the_restore_fails(sandbox):
    bin_dir, calls = fake_bin(sandbox, restore_status=1)
    _user, _group, uid, _gid = unprivileged()
    env = entrypoint_env(sandbox, PATH=f"{bin_dir}:/usr/bin:/bin", BACKUP_S3_BUCKET="a-bucket")
    result = subprocess.run([str(ENTRYPOINT), "python", "-m", "app"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert calls.read_text().splitlines() == [f"{uid}|python -m app.ops.backup restore --if-missing"]


@needs_root
def test_entrypoint_one_off_commands_and_no_bucket_skip_the_restore(sandbox):
    bin_dir, calls = fake_bin(sandbox)
    _user, _group, uid, _gid = unprivileged()
    path = f"{bin_dir}:/usr/bin:/bin"
    # a one-off command with backups on: no restore
    env = entrypoint_env(sandbox, PATH=path, BACKUP_S3_BUCKET="a-bucket")
    subprocess.run([str(ENTRYPOINT), "python", "-m", "app.ops.backup", "verify"], env=env, check=True)
    # the hub with backups off
    subprocess.run(
        [str(ENTRYPOINT), "python", "-m", "app"], env=entrypoint_env(sandbox, PATH=path), check=True
    )
    assert calls.read_text().splitlines() == [
        f"{uid}|python -m app.ops.backup verify",
        f"{uid}|python -m app",
    ]


@needs_root
def test_entrypoint_started_as_another_user_execs_directly(sandbox):
    user, group, uid, _gid = unprivileged()
    script = sandbox / "entrypoint.sh"
    shutil.copy(ENTRYPOINT, script)
    env = entrypoint_env(sandbox)
    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={user}",
            f"--regid={group}",
            "--clear-groups",
            str(script),
            "sh",
            "-c",
            "id -u; exit 5",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 5, result.stderr
    assert result.stdout.split() == [str(uid)]
    assert not (sandbox / "run").exists() and not (sandbox / "data").exists()


# ---- .ci/run's rule: the browser tests never skip in CI --------------------------------------------------


@pytest.mark.parametrize("ci", ["true", ""])
def test_browser_tests_fail_in_ci_and_say_what_to_install_elsewhere_when_the_browser_is_missing(
    ci: str,
) -> None:
    env = {**os.environ, "CI": ci, "TEST_CHROMIUM": "/nonexistent/chromium"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/web/test_browser.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = "the browser tests need Debian's chromium: apt-get install chromium"
    if ci:
        assert done.returncode != 0 and f"CI is set, so this does not skip: {line}" in done.stdout
    else:
        assert done.returncode == 0, done.stdout[-2000:]
        assert line in done.stdout and re.search(r"\n\d+ skipped in ", done.stdout), done.stdout[-2000:]


def run_task_user(tmp_path: Path, uid: int, gid: int) -> subprocess.CompletedProcess[str]:
    """The `task user` script as Task would run it (its variables filled in), in tmp_path."""
    (cmd,) = taskfile()["tasks"]["user"]["cmds"]
    script = cmd.replace("{{.APP_UID}}", str(uid)).replace("{{.APP_GID}}", str(gid))
    assert "{{" not in script
    return subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("clash", ["uid", "gid"])
def test_task_user_refuses_ids_that_belong_to_another_account(tmp_path: Path, clash: str) -> None:
    taken_uid = pwd.getpwnam("nobody").pw_uid
    taken_gid = grp.getgrnam("nogroup").gr_gid
    free = 10001
    while True:
        try:
            pwd.getpwuid(free)
            free += 1
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(free)
            free += 1
        except KeyError:
            break
    uid, gid = (taken_uid, free) if clash == "uid" else (free, taken_gid)
    done = run_task_user(tmp_path, uid, gid)
    assert done.returncode == 1
    expected = (
        f"uid {taken_uid} belongs to user nobody"
        if clash == "uid"
        else f"gid {taken_gid} belongs to group nogroup"
    )
    assert expected in done.stderr
    assert not (tmp_path / "data").exists()  # nothing made, no permissions widened


def test_make_run_makes_a_private_data_directory(tmp_path: Path, make_settings: Any, caplog: Any) -> None:
    """The quick start's first start must not warn that the data directory it just made is readable."""
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    mkdir = next(line.strip() for line in recipe.group(1).splitlines() if "mkdir" in line)
    subprocess.run(mkdir, shell=True, cwd=tmp_path, check=True)
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    settings = make_settings(DATABASE_URL=f"sqlite:///{data / 'event_processor.db'}")
    with caplog.at_level("WARNING", logger="app.core.file_modes"):
        assert file_modes.secure_data(settings) == []
    assert caplog.records == []


def test_the_hub_runs_as_python_oo_wherever_it_is_started() -> None:
    """The image, `make run` and the bench all run the hub with -OO (no docstrings: ~5 MB less memory),
    and the image makes the -OO byte code at build time (nobody can write it at run time)."""
    from bench.config import HUB_PYTHON_ENV
    from tests.test_process import make_run_command

    final = dockerfile_stages()[-1]
    assert "PYTHONOPTIMIZE=2" in " ".join(instructions(final, "ENV"))
    runs = " ".join(instructions(final, "RUN"))
    assert re.search(r"python -OO -m compileall .*\"\$stdlib\" /opt/app/\.venv/lib app pylib", runs), runs
    assert make_run_command()[0] == HUB_PYTHON_ENV == {"PYTHONOPTIMIZE": "2"}
    for module in ("app.ops.backup", "app.store.accounts", "app.core.onepassword"):  # --help under -OO too
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=ROOT,
            env={**os.environ, **HUB_PYTHON_ENV},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and len(done.stdout.split("\n\n")[1]) > 40, (module, done.stdout)


def test_command_line_help_texts_are_the_docstrings_they_stand_in_for() -> None:
    from app.core import onepassword
    from app.ops import backup
    from app.store import accounts

    assert backup.__doc__ == backup.DESCRIPTION
    assert accounts.__doc__ == accounts.DESCRIPTION
    assert onepassword.main.__doc__ == onepassword.DESCRIPTION
