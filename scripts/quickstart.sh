#!/usr/bin/env bash
# Builds flotilla and the example app (release) and deploys the app on this machine with the host
# provider. Run it again to deploy a new version next to the old one. Extra arguments go to
# `flotilla deploy` (e.g. --json).
#
# Then: curl http://127.0.0.1:8080/          (the newest version)
#       open http://127.0.0.1:8081/          (status page)
#       examples/hello: ../../target/release/flotilla status | logs | host stop
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# The host provider alone: without the `aws` feature the AWS SDK is not compiled, which keeps the
# first build short (`cargo install --path crates/flotilla-cli` builds the whole tool).
cargo build --release --no-default-features -p flotilla-cli -p flotilla-example-hello
cd examples/hello
exec "$root/target/release/flotilla" deploy "$@"
