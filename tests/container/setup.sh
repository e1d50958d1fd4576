#!/usr/bin/env bash
# What the container tests need on a Debian bookworm machine with no Docker engine and no registry:
# podman (runc, cgroupfs), Debian's docker-compose, and a local stand-in for python:3.11-slim-bookworm
# made with mmdebstrap from the machine's own Debian archive. Idempotent: packages, the podman
# configuration and a base image whose recipe has not changed are kept.
#   tests/container/setup.sh [amd64|arm64]      (default: the machine's architecture)
# Prints the base image's name on its last line.
set -eu

arch=${1:-$(dpkg --print-architecture)}
base=localhost/event-processor-base:bookworm-python3.11-$arch

log() {
    printf 'setup: %s\n' "$*" >&2
}

need=
command -v podman >/dev/null 2>&1 || need="$need podman"
command -v runc >/dev/null 2>&1 || need="$need runc"
command -v mmdebstrap >/dev/null 2>&1 || need="$need mmdebstrap"
command -v docker-compose >/dev/null 2>&1 || need="$need docker-compose"
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
    command -v qemu-aarch64-static >/dev/null 2>&1 || need="$need qemu-user-static binfmt-support arch-test"
fi
if [ -n "$need" ]; then
    log "installing$need"
    apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# Root here lacks CAP_SYS_RESOURCE and the cgroups are hybrid: crun and systemd cgroups fail, so runc,
# cgroupfs and the hard nofile limit as the containers' default. No default sysctls: the compose test
# joins the host's network namespace, where runc may not set net.ipv4.ping_group_range. A file of
# someone else's is left alone.
conf=/etc/containers/containers.conf
header="# Written by event-processor's tests/container/setup.sh"
nofile=$(ulimit -Hn)
wanted="$header for a root without CAP_SYS_RESOURCE and hybrid cgroups.
[containers]
default_sysctls = []
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=32768:32768\"]
[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\""
if [ ! -f "$conf" ] || { head -n 1 "$conf" | grep -qF "$header" && [ "$(cat "$conf")" != "$wanted" ]; }; then
    log "writing $conf"
    mkdir -p /etc/containers
    printf '%s\n' "$wanted" >"$conf"
fi

if [ "$arch" != "$(dpkg --print-architecture)" ]; then
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    arch-test "$arch" >/dev/null || {
        log "cannot run $arch binaries (qemu-user-static, binfmt_misc)"
        exit 1
    }
fi

# The recipe's hash (this file from the marker below to its end) is the image's label: a changed recipe
# makes a new base, an unchanged one is reused.
recipe=$(sed -n '/^# ---- recipe/,$p' "$0" | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{ index .Labels "recipe" }}' "$base" 2>/dev/null || true)" = "$recipe" ]; then
    log "base $base is up to date"
    echo "$base"
    exit 0
fi

# ---- recipe
# The machine's own Debian mirror (it may be a snapshot), bookworm with its updates and security suites.
mirror=$(sed -n 's/^URIs:[[:space:]]*\(.*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
security=$(sed -n 's/^URIs:[[:space:]]*\(.*\/debian-security\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
security=${security:-http://deb.debian.org/debian-security}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "making $base with mmdebstrap (about 30 s for amd64, 4 min for arm64 under qemu)"
# No python-is-python3 and no apt cache cleaning: the Dockerfile must name python3 and clean up itself,
# as it must on any Debian-based Python image. The machine's extra CA certificates go in because
# pip in the build reaches PyPI through this machine's proxy: this base is for tests only.
# shellcheck disable=SC2016  # $1 and $f in the hook are the hook's own
mmdebstrap --quiet --variant=minbase --architectures="$arch" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-pip,python3-venv,ca-certificates,tzdata,netbase \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='for f in /usr/local/share/ca-certificates/*.crt; do [ -f "$f" ] && cp "$f" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null' \
    bookworm "$work/rootfs.tar" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main"
podman rmi -f "$base" >/dev/null 2>&1 || true
podman import --quiet --arch "$arch" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL recipe=$recipe" \
    "$work/rootfs.tar" "$base" >/dev/null
log "made $base"
echo "$base"
