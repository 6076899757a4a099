#!/usr/bin/env bash
# Make a Docker engine answer and the base image exist, for the image build and the
# container tests. Idempotent: an engine that already answers (Docker Desktop, a
# systemd docker.service, one this script started before) is used as it is, and an
# existing base image is kept.
#
# Where no engine runs and we are root on Debian (CI machines, sandboxes), it installs
# Debian's docker.io and starts dockerd with no bridge or iptables (containers use the
# host's network, `--network host`), on the first storage driver of
# GPUFLOW_DOCKER_STORAGE_DRIVERS (default "overlay2 fuse-overlayfs vfs") that starts:
# overlay2 mounts an image's layers where vfs copies all of them for every container
# and every build step. Each driver keeps its own data root,
# $GPUFLOW_DOCKER_DATA_ROOT/<driver>, so an engine never finds another driver's layers.
# DOCKER_HOST (unix://PATH), with a GPUFLOW_DOCKER_STATE and GPUFLOW_DOCKER_DATA_ROOT of
# its own, starts one on a socket of its own, beside an engine other work uses.
#
# The base image (GPUFLOW_BASE_IMAGE, default debian:bookworm-slim) is pulled when a
# registry answers; otherwise it is made from the Debian package mirror with
# debootstrap (minbase variant, the same package set as the slim image) and imported
# under that name.
#
# Prints the client to use (DOCKER=...) on its last line; BuildKit builds need that
# client (Debian's, where we installed the engine), not a newer CLI without buildx.
set -euo pipefail

base_image="${GPUFLOW_BASE_IMAGE:-debian:bookworm-slim}"
suite="${GPUFLOW_BASE_SUITE:-bookworm}"
state_dir="${GPUFLOW_DOCKER_STATE:-/var/tmp/gpuflow-docker}"
data_root="${GPUFLOW_DOCKER_DATA_ROOT:-/var/lib/gpuflow-docker}"
read -r -a storage_drivers <<<"${GPUFLOW_DOCKER_STORAGE_DRIVERS:-overlay2 fuse-overlayfs vfs}"
log() { printf 'docker/engine.sh: %s\n' "$*" >&2; }

pick_client() {
    # Debian's client matches Debian's engine and speaks BuildKit without buildx.
    if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; return; fi
    command -v docker || true
}

engine_answers() { [[ -n "$client" ]] && "$client" info >/dev/null 2>&1; }

apt_install() {
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        log "cannot install $* (not root on Debian): install it, or start a Docker engine"
        exit 3
    fi
    log "installing $* from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "$@" >&2; }
}

# Where dockerd listens: the default socket, or DOCKER_HOST's with the engine's runtime
# state (and its containerd) in a directory of its own.
listen_options=()
case "${DOCKER_HOST:-}" in
    "") ;;
    unix://*) listen_options=("--host=$DOCKER_HOST" "--exec-root=$state_dir/exec-root") ;;
    *) listen_options=(unstartable) ;;
esac

# What a driver needs beside the kernel, installed where it is missing.
driver_prerequisites() {
    case "$1" in
        fuse-overlayfs)
            [[ -e /dev/fuse ]] || return 1
            command -v fuse-overlayfs >/dev/null || apt_install fuse-overlayfs ;;
    esac
}

# dockerd on one storage driver: 0 once it answers, 1 when it exits (the driver does not
# work here), exit 4 when it neither answers nor exits within 60 s.
start_dockerd() {
    local driver="$1" pid
    mkdir -p "$data_root/$driver"
    log "starting dockerd ($driver, host network only); log: $state_dir/dockerd.log"
    # setsid: the engine outlives the make or pytest process that started it; it does not
    # keep this script's lock (fd 9).
    setsid dockerd --storage-driver="$driver" --data-root="$data_root/$driver" \
        --iptables=false --ip-masq=false --bridge=none "${listen_options[@]}" \
        --pidfile "$state_dir/dockerd.pid" >>"$state_dir/dockerd.log" 2>&1 < /dev/null 9>&- &
    pid=$!
    for _ in $(seq 1 120); do
        engine_answers && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    log "dockerd did not answer within 60 s; the end of its log:"
    tail -n 20 "$state_dir/dockerd.log" >&2
    exit 4
}

start_engine() {
    if [[ "${listen_options[*]}" == unstartable ]]; then
        log "DOCKER_HOST=$DOCKER_HOST does not answer, and only a unix:// socket can be started here"
        exit 3
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    client=$(pick_client)
    mkdir -p "$state_dir"
    local driver
    : >"$state_dir/failed-drivers"
    for driver in "${storage_drivers[@]}"; do
        driver_prerequisites "$driver" || { log "$driver: no /dev/fuse"; continue; }
        start_dockerd "$driver" && return
        echo "$driver" >>"$state_dir/failed-drivers"
        log "dockerd exited on the $driver storage driver; the end of its log:"
        tail -n 3 "$state_dir/dockerd.log" >&2
    done
    log "dockerd started on none of the storage drivers ${storage_drivers[*]}"
    exit 4
}

make_base_image() {
    if "$client" image inspect "$base_image" >/dev/null 2>&1; then return; fi
    if timeout 30 "$client" pull --quiet "$base_image" >/dev/null 2>&1; then return; fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    local mirror rootfs
    mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
        /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/gpuflow-rootfs.XXXXXX")
    # mktemp makes the directory 0700, and tar records it as the image's `/`: a non-root
    # user in a container could then run nothing.
    chmod 0755 "$rootfs"
    trap 'rm -rf "$rootfs"' RETURN
    log "no registry answers: making $base_image with debootstrap $suite from $mirror"
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$state_dir/debootstrap.log" 2>&1 \
        || { log "debootstrap failed; see $state_dir/debootstrap.log"; exit 5; }
    # What the slim image leaves out and nothing in a container needs.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$client" import \
        --change 'CMD ["bash"]' \
        --change 'LABEL org.opencontainers.image.description="Debian '"$suite"' minbase, made by debootstrap from the Debian mirror"' \
        - "$base_image" >/dev/null
}

# An engine this script started earlier on a later driver of the list (an older version
# of it started vfs only) keeps running for the work that uses it; stopping it when none
# does lets the next run start the first driver that works.
note_slower_driver() {
    local driver pid
    driver=$("$client" info --format '{{.Driver}}' 2>/dev/null || true)
    pid=$(cat "$state_dir/dockerd.pid" 2>/dev/null || true)
    [[ -n "$pid" && "$driver" != "${storage_drivers[0]}" ]] && kill -0 "$pid" 2>/dev/null || return 0
    if ! grep -qx "${storage_drivers[0]}" "$state_dir/failed-drivers" 2>/dev/null; then
        log "the running engine (dockerd $pid, started by this script) uses $driver, not" \
            "${storage_drivers[0]}: once no work uses it, 'kill $pid' and run this again"
    fi
}

mkdir -p "$state_dir"
# One run at a time: the test workers of one session all call this at once, and two
# engines started together, or two base images imported one after the other, break
# them (a build cached on the first base image misses the cache once it is retagged).
exec 9>"$state_dir/engine.lock"
flock 9
client=$(pick_client)
if engine_answers; then note_slower_driver; else start_engine; fi
make_base_image
echo "DOCKER=$client"
