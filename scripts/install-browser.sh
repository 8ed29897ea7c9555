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

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-browser: need root to run: $*" >&2
        echo "install-browser: re-run as root, or install chromium and chromium-driver yourself" >&2
        exit 1
    fi
}

install_packages() {
    as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver
}

if [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Only refresh the package lists when apt cannot yet resolve the packages.
    updated=no
    if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
        echo "install-browser: refreshing package lists (apt-get update)"
        as_root apt-get update -qq
        updated=yes
    fi
    echo "install-browser: installing chromium and chromium-driver"
    if ! install_packages; then
        # Lists that are present but stale name package versions the mirror no longer has.
        if [ "$updated" = yes ]; then
            echo "install-browser: apt-get install failed" >&2
            exit 1
        fi
        echo "install-browser: install failed; refreshing package lists and retrying"
        as_root apt-get update -qq
        install_packages
    fi
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
