#!/bin/sh
# The container's entrypoint (ENTRYPOINT ["/opt/app/config/docker-entrypoint.sh"]).
#
# As root it only prepares, then execs tini as the app user, and tini runs the command (the hub), so
# nothing runs as root once the hub starts and the hub gets the signals `docker stop` sends:
#   1. the data directory exists and the app user owns it (and the hub's own files in it);
#   2. for the hub with backups on (BACKUP_S3_BUCKET set, here or in 1Password): restore the database from S3 when it is
#      missing or empty (as the app user); the hub schedules the backups itself (app/ops/backup_schedule.py);
#   3. exec tini -g -- the command, as the app user.
# Started as another user (docker run --user ...), it skips 1-2 and execs tini (or the command) directly.
#
# Overridable, mostly for the tests:
#   DATA_DIR        the data volume                                   (default /data)
#   RUN_AS_USER     the account the command runs as                   (default app)
#   RUN_AS_GROUP    its group                                         (default: RUN_AS_USER)
#   TINI            the init that becomes PID 1; skipped when missing  (default /usr/bin/tini)
set -eu

DATA_DIR=${DATA_DIR:-/data}
RUN_AS_USER=${RUN_AS_USER:-app}
RUN_AS_GROUP=${RUN_AS_GROUP:-$RUN_AS_USER}
TINI=${TINI:-/usr/bin/tini}

log() {
    printf 'entrypoint: %s\n' "$*" >&2
}

if [ "$#" -eq 0 ]; then
    log "no command given"
    exit 64
fi

# tini as PID 1 reaps orphans and passes signals to the whole process group (-g), so a backup job the
# hub started stops with it.
if [ -x "$TINI" ]; then
    set -- "$TINI" -g -- "$@"
fi

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

# The hub itself (the image's CMD), as opposed to a one-off command such as `python -m app.ops.backup verify`
# or a shell: only the hub gets the automatic restore.
is_hub() {
    if [ "$1" = "$TINI" ]; then
        shift 3
    fi
    case "$*" in
        "python -m app" | "python3 -m app" | */python\ -m\ app | */python3\ -m\ app | event-processor) return 0 ;;
    esac
    return 1
}

run_as() {
    setpriv --reuid="$RUN_AS_USER" --regid="$RUN_AS_GROUP" --init-groups -- "$@"
}

# A restart policy starts the container again at once: wait BAD_SETTING_EXIT_DELAY_SECONDS (the image
# sets 30) before exiting with a failure that a restart will not cure soon, rather than loop.
exit_later() {
    exit_code=$1
    delay=${BAD_SETTING_EXIT_DELAY_SECONDS:-0}
    case $delay in
        '' | *[!0-9]*) delay=0 ;;
    esac
    if [ "$delay" -gt 0 ]; then
        # the sleep in the background, so that `docker stop` (SIGTERM to this PID 1 shell) ends the wait at
        # once; the trap first, as the line below tells a watcher it may stop us
        sleeper=
        trap 'kill $sleeper 2>/dev/null || true; exit "$exit_code"' TERM INT
        log "exiting $exit_code in $delay s (BAD_SETTING_EXIT_DELAY_SECONDS)"
        sleep "$delay" &
        sleeper=$!
        wait "$sleeper" || true
    fi
    exit "$exit_code"
}

prepare_data_dir() {
    mkdir -p "$DATA_DIR"
    # A root shell (task connect AS=root) can write anyway; handing /data to root would lock the hub out.
    if [ "$(id -u "$RUN_AS_USER")" = 0 ]; then
        return 0
    fi
    # Only the directory and the hub's own files: a bind mount may hold other files that stay as they are.
    db=${TABLESPACE_PATH:-$DATA_DIR/event_processor.db}
    for path in "$DATA_DIR" "$db" "$db-wal" "$db-shm" "$db-journal" \
        "$DATA_DIR/backup.log" "$DATA_DIR/backup_status.json" "${BACKUP_STATUS_PATH:-}"; do
        if [ -n "$path" ] && [ -e "$path" ]; then
            chown -h "$RUN_AS_USER:$RUN_AS_GROUP" "$path" || log "warning: cannot change the owner of $path"
        fi
    done
    # shellcheck disable=SC2016  # $1 expands in the inner sh, as intended
    if ! run_as sh -c 'test -w "$1" && test -x "$1"' sh "$DATA_DIR"; then
        log "$DATA_DIR is not writable by $RUN_AS_USER; on the host: task user (or chown 10001:10001 ./data)"
        exit 73
    fi
}

prepare_data_dir

home=$(getent passwd "$RUN_AS_USER" | cut -d: -f6) || home=
export HOME="${home:-/}" USER="$RUN_AS_USER" LOGNAME="$RUN_AS_USER"

# Backups are on when BACKUP_S3_BUCKET is set; with 1Password the bucket may be kept in the vault rather
# than the environment, so then the hub's own settings loader answers (exit 0 on, 3 off).
backups_on() {
    [ -n "${BACKUP_S3_BUCKET:-}" ] && return 0
    [ -n "${OP_CONNECT_SERVER:-}" ] || return 1
    status=0
    run_as python -m app.ops.backup enabled >/dev/null || status=$?
    case $status in
        0) return 0 ;;
        3) return 1 ;;
    esac
    # The settings did not load (1Password unreachable, a bad value). Taking that for "backups off" could
    # start the hub on a fresh database that the next backup would upload over the good copy: stop, and
    # let the restart policy try again.
    log "could not tell whether backups are on (python -m app.ops.backup enabled exited $status)"
    exit_later "$status"
}

if is_hub "$@" && backups_on; then
    # Restore before the hub starts, and only when the database is missing or empty (a first start with
    # no backup yet is fine: the hub creates a new database). If this fails (S3 or the network down, a
    # bad object), the container stops here with its exit status and Docker's restart policy tries again
    # later: starting the hub on a fresh, empty database instead would let the next scheduled backup
    # overwrite the good copy in S3.
    log "restoring the database from S3 if it is missing (bucket ${BACKUP_S3_BUCKET:-from 1Password})"
    run_as python -m app.ops.backup restore --if-missing || exit_later $?
fi

exec setpriv --reuid="$RUN_AS_USER" --regid="$RUN_AS_GROUP" --init-groups -- "$@"
