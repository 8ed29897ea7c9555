#!/usr/bin/env bash
# Creates the project-local virtualenv `.venv/moto` with moto's server (`moto_server`), the AWS
# emulator the flotilla-aws tests run against. Idempotent: an existing venv with the pinned version
# is left alone. The tests start `moto_server` themselves on a free loopback port (see
# crates/flotilla-testkit/src/moto.rs); this script only installs it.
#
# Usage: scripts/moto.sh          install (or confirm) .venv/moto
#        scripts/moto.sh --path   print the path of moto_server after installing
set -euo pipefail

MOTO_VERSION="5.2.5"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
venv="$root/.venv/moto"
server="$venv/bin/moto_server"

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true
}

if [ -x "$server" ] && [ "$(installed_version)" = "$MOTO_VERSION" ]; then
    [ "${1:-}" = "--path" ] && echo "$server" || echo "moto $MOTO_VERSION already in .venv/moto"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.9+ (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

echo "creating .venv/moto with moto[server]==$MOTO_VERSION" >&2
rm -rf "$venv"
mkdir -p "$root/.venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
if [ "${1:-}" = "--path" ]; then
    echo "$server"
else
    echo "ok: $server is ready"
fi
