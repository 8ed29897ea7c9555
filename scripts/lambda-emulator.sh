#!/usr/bin/env bash
# Creates the project-local virtualenv `.venv/cargo-lambda` with cargo-lambda (PyPI
# `cargo-lambda`), whose `cargo lambda watch --only-lambda-apis` is the Lambda Runtime API
# emulator the reaper test runs the reaper's `bootstrap` against (see
# crates/flotilla-testkit/src/lambda.rs). Installed without its dependencies: the wheel pulls in
# zig for building functions, which the emulator does not use. Idempotent: an existing venv with
# the pinned version is left alone.
#
# Usage: scripts/lambda-emulator.sh          install (or confirm) .venv/cargo-lambda
#        scripts/lambda-emulator.sh --path   print the path of cargo-lambda after installing
set -euo pipefail

CARGO_LAMBDA_VERSION="1.9.2"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
venv="$root/.venv/cargo-lambda"
binary="$venv/bin/cargo-lambda"

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("cargo-lambda"))' 2>/dev/null || true
}

if [ -x "$binary" ] && [ "$(installed_version)" = "$CARGO_LAMBDA_VERSION" ]; then
    [ "${1:-}" = "--path" ] && echo "$binary" || echo "cargo-lambda $CARGO_LAMBDA_VERSION already in .venv/cargo-lambda"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.9+ (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

echo "creating .venv/cargo-lambda with cargo-lambda==$CARGO_LAMBDA_VERSION" >&2
rm -rf "$venv"
mkdir -p "$root/.venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    "cargo-lambda==$CARGO_LAMBDA_VERSION" >&2
if [ "${1:-}" = "--path" ]; then
    echo "$binary"
else
    echo "ok: $binary"
fi
