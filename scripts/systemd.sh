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

LOG_NAME=systemd
# shellcheck source=lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

if [ ! -x "$ANALYZE" ]; then
    apt_install systemd
fi
"$ANALYZE" --version | head -1
