# syntax=docker/dockerfile:1
# The event-processor hub. Builds on arm64 (Raspberry Pi OS 64-bit) and amd64 alike: the base image is
# multi-arch and every runtime dependency has a manylinux wheel for both, so nothing is compiled.
#
#   /opt/app/.venv       the runtime dependencies (requirements.lock as constraints; no dev packages)
#   /opt/app/{app,pylib,config,templates,static}
#                        the hub's source; it runs from here (the web app and the settings find
#                        templates/, static/ and config/app.conf relative to the source tree)
#   /opt/app/backup_db.sh, /etc/cron.d/backup_db
#                        the scheduled S3 backup (cron runs only when BACKUP_S3_BUCKET is set)
#   /data                the volume: SQLite database, backup status and log
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /build
# Only the dependency list and the lock: a change to the source does not reinstall the dependencies.
COPY pyproject.toml requirements.lock ./
# The runtime dependencies of pyproject.toml, pinned by requirements.lock used as a constraints file
# (the lock also pins the dev tools; as constraints they are not installed). The venv gets no pip of its
# own; the base image's pip installs into it. Wheels only: a missing wheel fails here, loudly.
# /opt/app on sys.path (a .pth file) lets the venv's python find the hub's source from any directory
# (cron jobs, docker exec), with no PYTHONPATH to keep in step.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.runtime.txt \
    && python -m venv --without-pip /opt/app/.venv \
    && python -m pip --python /opt/app/.venv/bin/python install --only-binary=:all: \
        -c requirements.lock -r requirements.runtime.txt \
    && purelib="$(/opt/app/.venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")" \
    && echo /opt/app > "$purelib/event_processor.pth"
# The dashboard serves only Bootstrap 5's bootstrap.min.css/js and Font Awesome's all.min.css with its
# webfonts (app/web/assets.py, templates/layout.html); the rest of those packages (~100 MB: Bootswatch
# themes, Bootstrap 4, SVGs, JS packages, metadata, source maps) stays out of the image. The `test -f`
# lines fail the build if a file the dashboard uses went missing.
RUN purelib="$(/opt/app/.venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")" \
    && fa="$purelib/fontawesomefree/static/fontawesomefree" \
    && bs="$purelib/flask_bootstrap/static" \
    && rm -rf "$fa/js-packages" "$fa/metadata" "$fa/svgs" "$fa/js" "$fa/sprites" "$fa/otfs" "$fa/less" \
        "$fa/scss" "$fa/assetTemplates" "$bs/bootstrap4" "$bs/bootstrap5/css/bootswatch" \
    && find "$bs" -name '*.map' -delete \
    && test -f "$fa/css/all.min.css" \
    && test -f "$fa/webfonts/fa-solid-900.woff2" \
    && test -f "$bs/bootstrap5/css/bootstrap.min.css" \
    && test -f "$bs/bootstrap5/js/bootstrap.min.js"

FROM ${PYTHON_IMAGE}
# cron for the scheduled backups, tini as PID 1, sqlite3 for the operator; ca-certificates and tzdata
# are in the base image already and named so that they stay.
# Cron in a container: pam_loginuid cannot write /proc/self/loginuid without CAP_AUDIT_CONTROL, and with
# "required" every job then fails ("Cannot make/remove an entry for the specified session"), so it is
# made optional. The daily jobs of other packages (apt, dpkg) have no business here.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cron tini sqlite3 ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && sed -i 's/^session\([[:space:]]\+\)required\([[:space:]]\+pam_loginuid\.so\)/session\1optional\2/' /etc/pam.d/cron \
    && grep -Eq '^session[[:space:]]+optional[[:space:]]+pam_loginuid\.so' /etc/pam.d/cron \
    && rm -f /etc/cron.daily/* \
    && groupadd --system --gid 999 app \
    && useradd --system --uid 999 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0755 /data

COPY --from=builder /opt/app/.venv /opt/app/.venv
WORKDIR /opt/app
COPY app ./app
COPY pylib ./pylib
COPY config ./config
COPY templates ./templates
COPY static ./static
COPY backup_db.sh ./backup_db.sh
COPY config/cron/backup_db /etc/cron.d/backup_db
# cron ignores a cron.d file that is group- or world-writable or not owned by root.
RUN chmod 0755 /opt/app/backup_db.sh /opt/app/config/docker-entrypoint.sh \
    && chown root:root /etc/cron.d/backup_db \
    && chmod 0644 /etc/cron.d/backup_db \
    && /opt/app/.venv/bin/python -m compileall -q app pylib

# The hub runs as app (uid 999): the entrypoint starts as root only to prepare /data, the environment
# for cron and cron itself, then drops to app with setpriv (so no USER line here).
ENV VIRTUAL_ENV=/opt/app/.venv \
    PATH=/opt/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data \
    TABLESPACE_PATH=/data/event_processor.db

VOLUME /data
EXPOSE 8080

# /api/health needs no login; it answers 200 once the hub is ready, 503 otherwise. The check reads the
# port from the container's environment (APP_FLASK_HTTP_PORT, 8080 by default).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/app/.venv/bin/python", "-c", "import os, sys, urllib.request\ntry:\n    r = urllib.request.urlopen('http://127.0.0.1:%s/api/health' % (os.environ.get('APP_FLASK_HTTP_PORT') or '8080'), timeout=4)\nexcept Exception as exc:\n    sys.exit('unhealthy: %s' % exc)\nsys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/app/config/docker-entrypoint.sh"]
CMD ["python", "-m", "app"]
