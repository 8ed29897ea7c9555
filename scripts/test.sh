#!/usr/bin/env bash
# Runs flotilla's whole test suite from a fresh clone, installing first what the tests need:
#   - moto (the AWS emulator) into .venv/moto            (scripts/moto.sh)
#   - cfn-lint and checkov into .venv/cfn-lint, .venv/checkov (scripts/cfn-tools.sh)
#   - Debian's chromium and chromium-driver                (scripts/install-browser.sh; needs root)
#   - Debian's systemd, for `systemd-analyze verify` of the host service unit (scripts/systemd.sh)
#   - Debian's pebble and pebble-challtestsrv, the ACME test server of the HTTPS tests
#     (scripts/pebble.sh; root)
#   - Debian's docker.io, docker-registry, debootstrap and busybox-static (scripts/docker.sh; root),
#     and the cached Debian base images without CA certificates (scripts/base-images.sh)
#   - cargo-lambda into .venv/cargo-lambda, whose Lambda Runtime API emulator the reaper's zip
#     runs against                                       (scripts/lambda-emulator.sh)
#   - Streamlit into .venv/streamlit and pulse-framework into .venv/pulse (Python 3.12+), the real
#     frameworks the browser tests deploy                  (scripts/frameworks.sh)
#   - zig and cargo-zigbuild into .venv/zig, and the static x86_64 agent built with them
#     (scripts/build-static.sh, profile static-test, into target/static-test/)
# Then every test of every crate: unit, property, simulator fault sweeps, host end-to-end with real
# processes, AWS against moto, and the browser tests in headless Chromium.
#
# Usage: scripts/test.sh [extra arguments for the test runner, e.g. a filter]
# Exit code: the test runner's (0 when every test passed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/moto.sh
scripts/cfn-tools.sh
scripts/install-browser.sh
scripts/systemd.sh
scripts/pebble.sh
scripts/docker.sh
scripts/lambda-emulator.sh
# Built once and cached under .cache/images/ (minutes the first time): the tests that run task
# definitions in Docker import them.
scripts/base-images.sh bookworm bullseye
# The static (musl) agent the Docker tests deliver into tasks, built unoptimised for speed.
FLOTILLA_STATIC_PROFILE=static-test scripts/build-static.sh x86_64

# The real frameworks the host browser tests deploy (about 40 s to 1.5 min the first time; kept
# while their requirements files are unchanged).
scripts/frameworks.sh

# Build the binaries the end-to-end tests drive before the tests start, so no test times out
# while cargo builds.
cargo build --workspace --bins

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
    # nextest does not run doctests.
    cargo test --workspace --doc --quiet
else
    echo "cargo-nextest not found; using cargo test"
    cargo test --workspace --no-fail-fast "$@"
fi
