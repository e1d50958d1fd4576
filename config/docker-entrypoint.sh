#!/bin/sh
# The container's entrypoint, run by tini (ENTRYPOINT ["/usr/bin/tini", "-g", "--", <this>]).
#
# As root it only prepares, then runs the command as the app user with exec, so the command (the hub)
# is tini's direct child and gets the signals `docker stop` sends:
#   1. the data directory exists and the app user owns it (and the hub's own files in it);
#   2. the container's environment is written for cron jobs, which do not inherit it;
#   3. for the hub with backups on (BACKUP_S3_BUCKET set, here or in 1Password): restore the database from S3 when it is
#      missing or empty, then start cron for the scheduled backups;
#   4. exec the command as the app user.
# Started as another user (docker run --user ...), it skips 1-3 and execs the command directly.
#
# Overridable, mostly for the tests:
#   DATA_DIR        the data volume                                   (default /data)
#   CRON_ENV_FILE   where cron jobs read the environment              (default /run/event-processor/cron.env)
#   RUN_AS_USER     the account the command runs as                   (default app)
#   RUN_AS_GROUP    its group                                         (default: RUN_AS_USER)
#   START_CRON      auto: when backups are on; false: never           (default auto)
#   APP_CONF        the settings file whose names go to cron.env      (default: app.conf beside this script)
set -eu

DATA_DIR=${DATA_DIR:-/data}
CRON_ENV_FILE=${CRON_ENV_FILE:-/run/event-processor/cron.env}
RUN_AS_USER=${RUN_AS_USER:-app}
RUN_AS_GROUP=${RUN_AS_GROUP:-$RUN_AS_USER}
START_CRON=${START_CRON:-auto}
APP_CONF=${APP_CONF:-$(dirname "$0")/app.conf}

log() {
    printf 'entrypoint: %s\n' "$*" >&2
}

if [ "$#" -eq 0 ]; then
    log "no command given"
    exit 64
fi

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

# The hub itself (the image's CMD), as opposed to a one-off command such as `python -m app.backup verify`
# or a shell: only the hub gets the automatic restore and cron.
is_hub() {
    case "$*" in
        "python -m app" | "python3 -m app" | */python\ -m\ app | */python3\ -m\ app | event-processor) return 0 ;;
    esac
    return 1
}

run_as() {
    setpriv --reuid="$RUN_AS_USER" --regid="$RUN_AS_GROUP" --init-groups -- "$@"
}

# Print $1 single-quoted for sh: every ' becomes '\'' and nothing else is special inside '...'.
quote() {
    rest=$1
    out=
    while :; do
        case $rest in
            *\'*)
                out="$out${rest%%\'*}'\\''"
                rest=${rest#*\'}
                ;;
            *) break ;;
        esac
    done
    printf "'%s%s'" "$out" "$rest"
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
        log "$DATA_DIR is not writable by $RUN_AS_USER; on the host: chown 999:999 ./data (or: task user)"
        exit 73
    fi
}

# Cron starts its jobs with an almost empty environment, so the backup job sources this file
# (backup_db.sh reads CRON_ENV_FILE). Only the hub's settings (the names in app.conf), AWS_*, OP_* and a
# few process basics go in, each as `export NAME='value'`, readable by the app user alone.
write_cron_env() {
    names=" $(sed -n 's/^\([A-Z][A-Z0-9_]*\)[[:space:]]*=.*/\1/p' "$APP_CONF" | tr '\n' ' ') "
    dir=$(dirname "$CRON_ENV_FILE")
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        chmod 0755 "$dir"
    fi
    tmp="$CRON_ENV_FILE.tmp.$$"
    old_umask=$(umask)
    umask 077
    : >"$tmp"
    umask "$old_umask"
    # Candidate names from `env`; a value with a newline can add a bogus line, so each name is checked.
    for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' | sort -u); do
        case $names in
            *" $name "*) ;;
            *)
                case $name in
                    AWS_* | OP_* | OUTPUT_TYPE_* | PATH | TZ | LANG | LC_ALL) ;;
                    *) continue ;;
                esac
                ;;
        esac
        isset=
        value=
        eval "isset=\${$name+set}"
        [ "$isset" = set ] || continue
        eval "value=\$$name"
        printf 'export %s=%s\n' "$name" "$(quote "$value")" >>"$tmp"
    done
    chown "$RUN_AS_USER:$RUN_AS_GROUP" "$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$CRON_ENV_FILE"
}

prepare_data_dir
write_cron_env

home=$(getent passwd "$RUN_AS_USER" | cut -d: -f6) || home=
export HOME="${home:-/}" USER="$RUN_AS_USER" LOGNAME="$RUN_AS_USER"

# Backups are on when BACKUP_S3_BUCKET is set; with 1Password the bucket may be kept in the vault rather
# than the environment, so then the hub's own settings loader answers (exit 0 on, 3 off).
backups_on() {
    [ -n "${BACKUP_S3_BUCKET:-}" ] && return 0
    [ -n "${OP_CONNECT_SERVER:-}" ] || return 1
    status=0
    run_as python -m app.backup enabled >/dev/null || status=$?
    case $status in
        0) return 0 ;;
        3) return 1 ;;
    esac
    # The settings did not load (1Password unreachable, a bad value). Taking that for "backups off" could
    # start the hub on a fresh database that the next backup would upload over the good copy: stop, and
    # let the restart policy try again.
    log "could not tell whether backups are on (python -m app.backup enabled exited $status)"
    exit "$status"
}

if is_hub "$@" && backups_on; then
    # Restore before the hub starts, and only when the database is missing or empty (a first start with
    # no backup yet is fine: the hub creates a new database). If this fails (S3 or the network down, a
    # bad object), the container stops here with its exit status and Docker's restart policy tries again
    # later: starting the hub on a fresh, empty database instead would let the next scheduled backup
    # overwrite the good copy in S3.
    log "restoring the database from S3 if it is missing (bucket ${BACKUP_S3_BUCKET:-from 1Password})"
    run_as python -m app.backup restore --if-missing
    case $START_CRON in
        false | no | 0) log "cron not started (START_CRON=$START_CRON)" ;;
        *) cron ;;
    esac
fi

exec setpriv --reuid="$RUN_AS_USER" --regid="$RUN_AS_GROUP" --init-groups -- "$@"
