#!/usr/bin/env bash
# Installs Debian's `pebble` package (Let's Encrypt's ACME test server, with
# `pebble-challtestsrv`, its DNS and challenge test server), for the host router's ACME tests:
# the test harness (flotilla_testkit::pebble) starts both on loopback ports of its own.
#
# Idempotent: when /usr/bin/pebble and /usr/bin/pebble-challtestsrv are present it installs
# nothing. `apt-get update` runs only when the package lists do not yet know the package. Needs
# root (CI runs as root); otherwise it uses sudo when available.
#
# Exit codes: 0 installed (or already present); 1 installation failed.
set -euo pipefail

LOG_NAME=pebble
# shellcheck source=lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

if [ ! -x /usr/bin/pebble ] || [ ! -x /usr/bin/pebble-challtestsrv ]; then
    apt_install pebble
fi
echo "$LOG_NAME: $(dpkg-query -W -f='${Package} ${Version}' pebble)"
