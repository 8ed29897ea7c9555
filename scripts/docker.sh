#!/usr/bin/env bash
# Installs what the container tests need, from Debian's packages only (Docker Hub is never used):
#   - docker.io        dockerd, containerd, runc and the docker CLI (/usr/bin/docker)
#   - docker-registry  the image registry (/usr/bin/docker-registry)
#   - debootstrap      builds the Debian base images (scripts/base-images.sh)
#   - busybox-static   a static userland copied into FROM scratch test images
#
# It starts nothing: the tests start their own dockerd and registry on private sockets and ports
# (crates/flotilla-testkit/src/docker.rs), the way they start moto.
#
# Idempotent: when every binary is present it installs nothing. `apt-get update` runs only when the
# package lists do not yet know the packages (or an install from stale lists fails).
# Needs root (CI runs as root); otherwise it uses sudo when available.
#
# Exit codes: 0 installed (or already present) and the binaries report a version;
#             1 installation failed or a binary does not run.
set -euo pipefail

PACKAGES=(docker.io docker-registry debootstrap busybox-static)
BINARIES=(/usr/sbin/dockerd /usr/bin/docker /usr/bin/docker-registry /usr/sbin/debootstrap /bin/busybox)

LOG_NAME=docker.sh
# shellcheck source=lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

missing() {
    for bin in "${BINARIES[@]}"; do
        [ -x "$bin" ] || return 0
    done
    # busybox (the dynamic package) also installs /bin/busybox; the tests need the static one.
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || return 0
    return 1
}

if missing; then
    apt_install "${PACKAGES[@]}"
fi

for bin in "${BINARIES[@]}"; do
    if [ ! -x "$bin" ]; then
        echo "docker.sh: $bin is missing after installation" >&2
        exit 1
    fi
done

# Each binary must run; a broken install shows up here rather than in a test timeout.
/usr/sbin/dockerd --version
/usr/bin/docker --version
/usr/bin/docker-registry --version
/bin/busybox true || { echo "docker.sh: /bin/busybox does not run" >&2; exit 1; }
echo "docker.sh: ok"
