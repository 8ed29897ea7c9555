#!/usr/bin/env bash
# Installs `systemd-analyze` from Debian's `systemd` package, for the tests that check the unit of
# `flotilla host install` with `systemd-analyze verify`. Nothing is started: the tests only verify
# unit files.
#
# Idempotent: when /usr/bin/systemd-analyze is present it installs nothing. `apt-get update` runs
# only when the package lists do not yet know the package. Needs root (CI runs as root); otherwise
# it uses sudo when available.
#
# Exit codes: 0 installed (or already present) and it reports a version; 1 installation failed.
set -euo pipefail

ANALYZE=/usr/bin/systemd-analyze

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "systemd: need root to run: $*" >&2
        echo "systemd: re-run as root, or install Debian's systemd package yourself" >&2
        exit 1
    fi
}

if [ ! -x "$ANALYZE" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show systemd >/dev/null 2>&1; then
        echo "systemd: refreshing package lists (apt-get update)"
        as_root apt-get update -qq
    fi
    echo "systemd: installing systemd (for systemd-analyze)"
    as_root apt-get install -y -qq --no-install-recommends systemd
fi
"$ANALYZE" --version | head -1
