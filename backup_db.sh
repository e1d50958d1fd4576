#!/bin/sh
# The scheduled backups' way into app.ops.backup (/opt/app/backup_db.sh in the container; the hub runs it on
# schedule, app/ops/backup_schedule.py, and `task backup` by hand):
#   backup_db.sh                  latest copy (same as: backup_db.sh backup)
#   backup_db.sh date | time      latest copy plus a dated one (UTC YYMMDD or YYMMDDhhmmss)
#   backup_db.sh verify           the restore drill
#   backup_db.sh restore [--if-missing] [--from KEY] [--force]
# Exit codes: 0 ok, 1 failed, 2 bad usage or settings.
set -eu

cd "$(dirname "$0")"

# The scheduled jobs append to this log for years: keep one old generation of about 1 MB.
log_file="${BACKUP_LOG:-/data/backup.log}"
if [ -f "$log_file" ] && [ "$(wc -c <"$log_file")" -gt 1048576 ]; then
    mv -f "$log_file" "$log_file.1"
fi

# A checkout's venv when there is one; in the container the venv's python3 is first on PATH.
if [ -z "${PYTHON:-}" ]; then
    if [ -x ./.venv/bin/python ]; then
        PYTHON=./.venv/bin/python
    else
        PYTHON=python3
    fi
fi

[ $# -gt 0 ] || set -- backup
case "$1" in
    date | time) set -- backup "$@" ;;
esac
exec "$PYTHON" -m app.ops.backup "$@"
