# syntax=docker/dockerfile:1
# The event-processor hub. Builds on arm64 (Raspberry Pi OS 64-bit) and amd64 alike: the base image is
# multi-arch and every runtime dependency has a manylinux wheel for both, so nothing is compiled.
#
#   /opt/app/.venv       the runtime dependencies (requirements.lock as constraints; no dev packages)
#   /opt/app/{app,pylib,config,templates,static}
#                        the hub's source; it runs from here (the web app and the settings find
#                        templates/, static/ and config/app.conf relative to the source tree)
#   /opt/app/backup_db.sh
#                        the S3 backup, which the hub itself runs on schedule (app/ops/backup_schedule.py)
#   /data                the volume: SQLite database, backup status and log
#
# What it needs of its base (PYTHON_IMAGE): a Debian (bookworm or later) with python3 3.11+, its venv
# module and pip 22.3+ (`pip --python`), apt-get and util-linux's setpriv. python:3.11-slim-bookworm has
# them all; so does Debian's own python3 + python3-venv + python3-pip. It assumes nothing else: not a
# `python` command, not the base's PATH, not its apt cache settings, not a free uid.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# binutils (strip, readelf) in this stage only.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
# Only the dependency list and the lock: a change to the source does not reinstall the dependencies.
COPY pyproject.toml requirements.lock ./
# The runtime dependencies of pyproject.toml, pinned by requirements.lock used as a constraints file
# (the lock also pins the dev tools; as constraints they are not installed). The venv gets no pip of its
# own; the base image's pip installs into it. Wheels only: a missing wheel fails here, loudly.
# /opt/app on sys.path (a .pth file) lets the venv's python find the hub's source from any directory
# (docker exec, the backup script), with no PYTHONPATH to keep in step. psycopg (PostgreSQL, when
# DATABASE_URL names one) uses Debian's libpq5 from the final stage rather than psycopg-binary's own
# copies of libpq, OpenSSL, Kerberos and LDAP (10 MB; the base has OpenSSL already).
RUN python3 -c "import sys; assert sys.version_info >= (3, 11), 'the base needs Python 3.11+, has ' + sys.version" \
    && python3 -c "import pip, sys; v = tuple(int(x) for x in pip.__version__.split('.')[:2]); sys.exit(0 if v >= (22, 3) else 'the base needs pip 22.3+ (pip --python), has ' + pip.__version__)" \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.runtime.txt \
    && sed -i 's/^psycopg\[binary\]/psycopg/' requirements.runtime.txt \
    && python3 -m venv --without-pip /opt/app/.venv \
    && python3 -m pip --python /opt/app/.venv/bin/python install --only-binary=:all: --no-compile \
        -c requirements.lock -r requirements.runtime.txt \
    && purelib="$(/opt/app/.venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")" \
    && echo /opt/app > "$purelib/event_processor.pth"
# Build-only and unused files stay out of the final stage. The dashboard serves only Bootstrap 5's
# bootstrap.min.css/js (app/web/assets.py; the icons are static/icons.svg), so the rest of that package
# (Bootswatch themes, Bootstrap 4, Bootstrap Icons, Popper, source maps) goes. botocore keeps the API
# models of the services the hub calls (aws.client's callers: S3, SQS, SNS, CloudWatch; STS for role
# credentials; a test keeps this list in step) and drops the other ~400 (28 MB); boto3's resource models
# (the hub makes clients only, never boto3.resource) keep the same services'. SQLAlchemy keeps the
# dialects of the databases the hub supports (SQLite, PostgreSQL). The test suites and testing helpers
# some packages ship, type stubs, C sources and headers, gettext sources (.po; WTForms keeps its
# compiled .mo) and the dist-info RECORD files (pip's uninstall lists; the venv has no pip) go too.
# The compiled extension modules lose their debugging symbols (strip: SQLAlchemy's and msgpack's
# shrink ~90%); a library whose run path auditwheel rewrote (RPATH/RUNPATH,
# e.g. pyzmq's) is left alone, as strip can break those. No byte code here (see the final stage). The
# `test -f`/`test -d` lines fail the build if a file the hub uses went missing.
RUN purelib="$(/opt/app/.venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")" \
    && bs="$purelib/flask_bootstrap/static" \
    && rm -rf "$bs/bootstrap4" \
    && find "$bs/bootstrap5" -type f ! -path '*/css/bootstrap.min.css' ! -path '*/js/bootstrap.min.js' -delete \
    && data="$purelib/botocore/data" \
    && boto3data="$purelib/boto3/data" \
    && find "$data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sqs ! -name sns ! -name sts ! -name cloudwatch -exec rm -rf {} + \
    && rm -rf "$purelib/sqlalchemy/testing" "$purelib/alembic/testing" "$purelib/sqlalchemy/dialects/mysql" \
        "$purelib/sqlalchemy/dialects/mssql" "$purelib/sqlalchemy/dialects/oracle" \
    && find "$boto3data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sqs ! -name sns ! -name cloudwatch -exec rm -rf {} + \
    && rm -rf "$purelib/mako/testing" "$purelib/reactivex/testing" \
    && find "$purelib" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
    && find "$purelib" \( -name '*.pyi' -o -name '*.c' -o -name '*.h' -o -name '*.pxd' -o -name '*.pyx' -o -name '*.po' \) -delete \
    && find "$purelib" -path '*.dist-info/RECORD' -delete \
    && find "$purelib" -name '*.so' ! -path '*.libs/*' | while read -r so; do \
        readelf -d "$so" | grep -Eq 'RPATH|RUNPATH' || strip --strip-unneeded "$so"; done \
    && test -f "$bs/bootstrap5/css/bootstrap.min.css" \
    && test -f "$bs/bootstrap5/js/bootstrap.min.js" \
    && test -f "$data/endpoints.json" && test -d "$data/s3" && test -d "$data/sqs" && test -d "$data/sns" \
    && test -d "$data/cloudwatch"

FROM ${PYTHON_IMAGE}
# The app user's uid and gid: above the host's system and login ranges, so that ./data owned by them on
# the Pi matches no host account (`task user` makes the same user there, and refuses a clash).
ARG APP_UID=10001
ARG APP_GID=10001
ENV PATH=/opt/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONOPTIMIZE=2 \
    DATA_DIR=/data \
    BAD_SETTING_EXIT_DELAY_SECONDS=30 \
    TABLESPACE_PATH=/data/event_processor.db
# tini as PID 1 (run as the app user, see the entrypoint), sqlite3 for the operator, libpq5 for psycopg
# (see the builder); ca-certificates and tzdata are usually in the base already and named so that they
# stay. The ids must be free in the base: the build stops rather than share them. The apt lists, the downloaded
# packages and apt's logs go in this same layer (whatever the base's apt configuration), and so do the
# cron jobs of base packages (e2fsprogs' e2scrub_all, apt's and dpkg's daily jobs): there is no cron
# daemon here, the hub schedules its own backups.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini sqlite3 libpq5 ca-certificates tzdata \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
        /etc/cron.d /etc/cron.daily /etc/cron.hourly /etc/cron.weekly /etc/cron.monthly /etc/crontab \
    && command -v setpriv >/dev/null \
    && ! getent group "$APP_GID" >/dev/null \
    && ! getent passwd "$APP_UID" >/dev/null \
    && groupadd --gid "$APP_GID" app \
    && useradd --no-log-init --uid "$APP_UID" --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0755 /data

COPY --from=builder /opt/app/.venv /opt/app/.venv
WORKDIR /opt/app
COPY app ./app
COPY pylib ./pylib
COPY config ./config
COPY templates ./templates
COPY static ./static
COPY backup_db.sh ./backup_db.sh
# Every python here runs as `python -OO` (PYTHONOPTIMIZE=2 above; `make run` does the same): without the
# docstrings of SQLAlchemy & co. the hub needs ~5 MB less memory (docs/performance.md, session 5). Its
# byte code is made here, for the hub's source, the venv and the base's standard library (its tests and
# GUI modules aside): nobody can write it at run time (the app user, PYTHONDONTWRITEBYTECODE), and
# without it every start would compile each imported module from source again, which costs the hub
# seconds of CPU on a Pi and memory it keeps. ~37 MB of .opt-2.pyc files (27 the venv's, 10 the
# standard library's).
RUN chmod 0755 /opt/app/backup_db.sh /opt/app/config/docker-entrypoint.sh \
    && stdlib="$(/opt/app/.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
    && /opt/app/.venv/bin/python -OO -m compileall -q -j0 \
        -x '/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip|pydoc_data)/' \
        "$stdlib" /opt/app/.venv/lib app pylib

VOLUME /data
EXPOSE 8080

# /api/health needs no login; it answers 200 once the hub is ready and 503 before that, or when RabbitMQ
# or MQTT has been down longer than HEALTH_DOWN_GRACE_SECONDS. The check reads the port from the
# container's environment (APP_FLASK_HTTP_PORT, 8080 by default).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/app/.venv/bin/python", "-c", "import os, sys, urllib.request\ntry:\n    r = urllib.request.urlopen('http://127.0.0.1:%s/api/health' % (os.environ.get('APP_FLASK_HTTP_PORT') or '8080'), timeout=4)\nexcept Exception as exc:\n    sys.exit('unhealthy: %s' % exc)\nsys.exit(0 if r.status == 200 else 1)"]

# The entrypoint starts as root only to hand /data to the app user and restore the database from S3 when
# it is missing; then it execs tini, as the app user, which runs the hub (so no USER line here, and
# nothing runs as root once the hub starts).
ENTRYPOINT ["/opt/app/config/docker-entrypoint.sh"]
CMD ["python", "-m", "app"]
