#!/usr/bin/env bash
# Builds a Debian root filesystem tarball for the container tests, without Docker Hub: debootstrap
# --variant=minbase from the Debian mirror this machine's apt already uses. The tarball is what
# `docker import` turns into a base image (crates/flotilla-testkit/src/docker.rs calls this script
# when the tarball is missing).
#
# The image has NO ca-certificates (minbase does not pull it in, and it is excluded anyway): the
# tests need a base like debian:bookworm-slim, where an agent that relies on the system CA bundle
# fails. The script checks that /etc/ssl/certs holds no certificate.
#
# Cached per suite in .cache/images/debian-<suite>-minbase.tar (gitignored), so CI builds each once
# per run and developers once. A lock makes concurrent callers (several test binaries) wait for one
# build instead of racing. debootstrap takes minutes; the script prints how long it took.
#
# Usage: scripts/base-images.sh <suite>...       e.g. bookworm bullseye
#        scripts/base-images.sh --path <suite>    build if missing, print the tarball's path only
# Environment: FLOTILLA_DEBIAN_MIRROR overrides the mirror (default: the first Debian URI in
#              /etc/apt/sources.list*, else http://deb.debian.org/debian).
#              FLOTILLA_IMAGE_CACHE overrides the cache directory.
# Exit codes: 0 every tarball present; 1 a build failed (debootstrap's log is printed), 2 usage.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${FLOTILLA_IMAGE_CACHE:-$root/.cache/images}"

print_path=no
if [ "${1:-}" = "--path" ]; then
    print_path=yes
    shift
fi
if [ "$#" -eq 0 ]; then
    echo "usage: scripts/base-images.sh [--path] <suite>...   (e.g. bookworm bullseye)" >&2
    exit 2
fi

log() { echo "base-images: $*" >&2; }

# The Debian archive this machine installs from (the one apt is known to reach), so no new host is
# contacted. Deb822 `URIs:` lines first, then one-line `deb` entries; security mirrors are skipped.
mirror() {
    if [ -n "${FLOTILLA_DEBIAN_MIRROR:-}" ]; then
        echo "$FLOTILLA_DEBIAN_MIRROR"
        return
    fi
    local found
    found="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' |
        grep -E '/debian/?$' | grep -v security | head -n1 || true)"
    if [ -z "$found" ]; then
        found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' |
            grep -E '/debian/?$' | grep -v security | head -n1 || true)"
    fi
    echo "${found:-http://deb.debian.org/debian}"
}

# A subshell, so the EXIT trap removes the build directory whatever happens. `set -e` does not
# apply inside a function called from `if`, hence the explicit `|| exit 1`s.
build() (
    local suite="$1" out="$cache/debian-$suite-minbase.tar"
    if [ -s "$out" ]; then
        [ "$print_path" = yes ] || log "$out already built"
        exit 0
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "debootstrap not found; run scripts/docker.sh (installs Debian's debootstrap) as root"
        exit 1
    fi
    local url start tmp
    url="$(mirror)"
    start=$(date +%s)
    tmp="$(mktemp -d "$cache/build-$suite.XXXXXX")" || exit 1
    log "building $out: debootstrap --variant=minbase $suite from $url (takes minutes)"
    trap 'rm -rf "$tmp"' EXIT
    if ! debootstrap --variant=minbase --exclude=ca-certificates "$suite" "$tmp/rootfs" "$url" \
        >"$tmp/debootstrap.log" 2>&1; then
        log "debootstrap $suite failed; its log:"
        tail -n 40 "$tmp/debootstrap.log" >&2
        [ -f "$tmp/rootfs/debootstrap/debootstrap.log" ] && tail -n 40 "$tmp/rootfs/debootstrap/debootstrap.log" >&2
        log "check that $url serves $suite (curl $url/dists/$suite/Release), or set FLOTILLA_DEBIAN_MIRROR"
        exit 1
    fi
    local rootfs="$tmp/rootfs"
    # What an image needs no copy of: downloaded packages, package lists, logs of the build, and,
    # as in debian:*-slim, documentation and translations. Docker's vfs driver copies the whole
    # root filesystem for every container, so size is start-up time.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/debootstrap \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    if [ -d "$rootfs/etc/ssl/certs" ] && [ -n "$(ls -A "$rootfs/etc/ssl/certs")" ]; then
        log "$suite has certificates in /etc/ssl/certs, but the image must have no CA bundle:"
        ls -A "$rootfs/etc/ssl/certs" | head >&2
        exit 1
    fi
    tar -C "$rootfs" --numeric-owner -cf "$tmp/image.tar" . || exit 1
    mv "$tmp/image.tar" "$out" || exit 1
    log "built $out ($(du -h "$out" | cut -f1)) in $(($(date +%s) - start)) s"
)

mkdir -p "$cache"
status=0
for suite in "$@"; do
    # One build per suite at a time; a second caller waits, then finds the tarball.
    exec 9>"$cache/debian-$suite.lock"
    flock 9
    if ! build "$suite"; then
        status=1
    elif [ "$print_path" = yes ]; then
        echo "$cache/debian-$suite-minbase.tar"
    fi
    exec 9>&-
done
exit "$status"
