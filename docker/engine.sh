#!/usr/bin/env bash
# Make a Docker engine answer and the base image exist, for the image build and the
# container tests. Idempotent: an engine that already answers (Docker Desktop, a
# systemd docker.service) is used as it is, and an existing base image is kept.
#
# Where no engine runs and we are root on Debian (CI machines, sandboxes), it installs
# Debian's docker.io and starts dockerd with the vfs storage driver and no bridge or
# iptables: these need nothing from the kernel that such machines lack. Containers then
# use the host's network (`--network host`).
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

start_engine() {
    command -v dockerd >/dev/null || apt_install docker.io
    client=$(pick_client)
    mkdir -p "$state_dir"
    log "starting dockerd (vfs, host network only); log: $state_dir/dockerd.log"
    # setsid: the engine outlives the make or pytest process that started it.
    setsid dockerd --storage-driver=vfs --iptables=false --ip-masq=false --bridge=none \
        --pidfile "$state_dir/dockerd.pid" >>"$state_dir/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 120); do
        engine_answers && return
        sleep 0.5
    done
    log "dockerd did not answer within 60 s; the end of its log:"
    tail -n 20 "$state_dir/dockerd.log" >&2
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

client=$(pick_client)
engine_answers || start_engine
mkdir -p "$state_dir"
make_base_image
echo "DOCKER=$client"
