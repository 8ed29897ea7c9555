#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver from Debian's packages for the browser tests.
#
# Idempotent: when /usr/bin/chromium and /usr/bin/chromedriver are both present it installs
# nothing. `apt-get update` runs only when the package lists do not yet know the packages.
# Needs root (CI runs as root); otherwise it uses sudo when available.
#
# Exit codes: 0 installed (or already present) and both binaries report a version;
#             1 installation failed or a binary does not run.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

LOG_NAME=install-browser
# shellcheck source=lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

if [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
    apt_install chromium chromium-driver
fi

for bin in "$CHROMIUM" "$CHROMEDRIVER"; do
    if [ ! -x "$bin" ]; then
        echo "install-browser: $bin is missing after installation" >&2
        exit 1
    fi
done

# Both binaries must actually run; a broken install shows up here rather than in a test timeout.
# The tests start Debian's real binary behind the /usr/bin/chromium shell wrapper (whose start-up
# checks print noise on some machines), so that is the one asked for its version.
real_chromium=/usr/lib/chromium/chromium
[ -x "$real_chromium" ] || real_chromium="$CHROMIUM"
"$real_chromium" --headless --no-sandbox --version
"$CHROMEDRIVER" --version
