#!/usr/bin/env bash
# Builds the static (musl) AWS agent and reaper for x86_64 and/or arm64, stripped, and checks
# each artefact's ELF headers: the right machine, statically linked (no PT_INTERP program header,
# no DT_NEEDED entry).
#
# Installs what it needs, idempotently:
#   - the rustup targets x86_64-unknown-linux-musl and aarch64-unknown-linux-musl;
#   - zig (PyPI `ziglang`) and cargo-zigbuild (PyPI `cargo-zigbuild`) into .venv/zig: zig is the
#     C cross compiler and linker for aws-lc (the SDK's TLS crypto) on both architectures.
#
# Artefacts (stable paths, also printed with their sizes):
#   target/static/flotilla-aws-agent-<arch>    the agent delivered into tasks
#   target/static/flotilla-aws-reaper-<arch>   the reaper Lambda's bootstrap; `flotilla baseline
#                                              up` run from target/<profile>/flotilla finds it here
# where <arch> is x86_64 or arm64.
#
# Usage: scripts/build-static.sh [x86_64|arm64|all]   (default: all)
#        (CARGO_TARGET_DIR is honoured for the build; the artefacts still go to target/static/)
#        scripts/build-static.sh --install-only        only install the toolchain
set -euo pipefail

ZIGLANG_VERSION="0.15.2"
CARGO_ZIGBUILD_VERSION="0.24.1"
# FLOTILLA_STATIC_PROFILE=static-test builds the same binaries unoptimised (minutes instead of a
# release build's tens of minutes) into target/static-test/: what scripts/test.sh uses, so a
# test build never stands where `baseline up` looks for a release one.
PROFILE="${FLOTILLA_STATIC_PROFILE:-static}"
BINS=(flotilla-aws-agent flotilla-aws-reaper)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv="$root/.venv/zig"

want="${1:-all}"
case "$want" in
    x86_64) arches=(x86_64) ;;
    arm64 | aarch64) arches=(arm64) ;;
    all) arches=(x86_64 arm64) ;;
    --install-only) arches=() ;;
    *)
        echo "usage: scripts/build-static.sh [x86_64|arm64|all|--install-only]" >&2
        exit 2
        ;;
esac

triple_of() {
    case "$1" in
        x86_64) echo x86_64-unknown-linux-musl ;;
        arm64) echo aarch64-unknown-linux-musl ;;
    esac
}

# The ELF machine `readelf -h` names for each architecture.
machine_of() {
    case "$1" in
        x86_64) echo "Advanced Micro Devices X86-64" ;;
        arm64) echo "AArch64" ;;
    esac
}

install_tools() {
    local installed
    installed="$(rustup target list --installed)"
    for triple in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
        if ! grep -qx "$triple" <<<"$installed"; then
            echo "adding rustup target $triple" >&2
            rustup target add "$triple" >&2
        fi
    done
    local have_zig have_zigbuild
    have_zig="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("ziglang"))' 2>/dev/null || true)"
    have_zigbuild="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("cargo-zigbuild"))' 2>/dev/null || true)"
    if [ "$have_zig" != "$ZIGLANG_VERSION" ] || [ "$have_zigbuild" != "$CARGO_ZIGBUILD_VERSION" ]; then
        if ! command -v "$python" >/dev/null 2>&1; then
            echo "error: $python not found; install Python 3.9+ (Debian: apt-get install python3 python3-venv)" >&2
            exit 1
        fi
        echo "creating .venv/zig with ziglang==$ZIGLANG_VERSION and cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" >&2
        rm -rf "$venv"
        mkdir -p "$root/.venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" >&2
    fi
    if ! command -v readelf >/dev/null 2>&1; then
        echo "error: readelf not found; install binutils (Debian: apt-get install binutils)" >&2
        exit 1
    fi
}

# Fails unless $1 is a static ELF executable for architecture $2.
check_elf() {
    local file="$1" arch="$2" header program dynamic
    header="$(readelf -h "$file")"
    if ! grep -q "Machine: *$(machine_of "$arch")\$" <<<"$header"; then
        echo "error: $file is not built for $arch:" >&2
        grep "Machine:" <<<"$header" >&2
        exit 1
    fi
    program="$(readelf -lW "$file")"
    if grep -q "INTERP" <<<"$program"; then
        echo "error: $file asks for a program interpreter (dynamic loader); it must be static" >&2
        exit 1
    fi
    dynamic="$(readelf -dW "$file")"
    if grep -q "(NEEDED)" <<<"$dynamic"; then
        echo "error: $file needs shared libraries; it must be static:" >&2
        grep "(NEEDED)" <<<"$dynamic" >&2
        exit 1
    fi
}

install_tools
[ "${#arches[@]}" -eq 0 ] && {
    echo "ok: rustup musl targets and .venv/zig are ready"
    exit 0
}

# cargo-zigbuild runs `python3 -m ziglang` when no `zig` is on PATH: the venv's python has it.
export PATH="$venv/bin:$PATH"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$root/target/$PROFILE"
mkdir -p "$out"
bin_args=()
for bin in "${BINS[@]}"; do bin_args+=(--bin "$bin"); done

for arch in "${arches[@]}"; do
    triple="$(triple_of "$arch")"
    echo "building ${BINS[*]} for $triple (profile $PROFILE)" >&2
    cargo zigbuild --locked --profile "$PROFILE" --target "$triple" \
        -p flotilla-aws --no-default-features "${bin_args[@]}" >&2
    for bin in "${BINS[@]}"; do
        built="$target_dir/$triple/$PROFILE/$bin"
        check_elf "$built" "$arch"
        dest="$out/$bin-$arch"
        cp "$built" "$dest.tmp"
        mv "$dest.tmp" "$dest"
        size="$(wc -c <"$dest" | tr -d " ")"
        awk -v f="$dest" -v s="$size" -v a="$arch" -v p="$PROFILE" \
            'BEGIN { printf "%s\t%d bytes (%.1f MiB)\tstatic, stripped, %s, profile %s\n", f, s, s / 1048576, a, p }'
    done
done
