#!/bin/sh
# Starts Mosquitto for the `mosquitto` compose profile with a login and no anonymous access.
#
# The broker's one user is the hub's own MQTT_USERNAME / MQTT_PASSWORD (from .env, which `task setup`
# can write from 1Password); the devices log in with the same. The password file is made afresh from
# them at every start, so changing the password in .env and `docker compose up -d` is all it takes.
#
# Overridable, mostly for the tests:
#   MOSQUITTO_PASSWD   the password file the config names          (default /mosquitto/data/passwd)
#   MOSQUITTO_CONF     the configuration                           (default /mosquitto/config/mosquitto.conf)
#   MOSQUITTO_BIN      the broker                                  (default /usr/sbin/mosquitto)
set -eu

MOSQUITTO_PASSWD=${MOSQUITTO_PASSWD:-/mosquitto/data/passwd}
MOSQUITTO_CONF=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
MOSQUITTO_BIN=${MOSQUITTO_BIN:-/usr/sbin/mosquitto}

if [ -z "${MQTT_USERNAME:-}" ] || [ -z "${MQTT_PASSWORD:-}" ]; then
    echo "mosquitto: set MQTT_USERNAME and MQTT_PASSWORD in .env (or in 1Password): anonymous MQTT is off" >&2
    exit 78
fi
case $MQTT_USERNAME in
    *:*)
        echo "mosquitto: MQTT_USERNAME may not contain ':'" >&2
        exit 78
        ;;
esac

umask 077
tmp="$MOSQUITTO_PASSWD.new"
rm -f "$tmp"
: >"$tmp"
# Only the hash is written; the file is readable by the broker's user alone.
mosquitto_passwd -b "$tmp" "$MQTT_USERNAME" "$MQTT_PASSWORD"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$tmp"
fi
mv -f "$tmp" "$MOSQUITTO_PASSWD"
unset MQTT_PASSWORD
exec "$MOSQUITTO_BIN" -c "$MOSQUITTO_CONF"
