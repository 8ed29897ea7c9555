# Shared by the scripts that install Debian packages (docker.sh, install-browser.sh, systemd.sh);
# sourced, not run. The caller sets LOG_NAME (its prefix in messages) before calling.
#
#   as_root CMD...                 runs CMD as root (directly, or through sudo when available)
#   apt_install PACKAGE...         installs the packages: refreshes the package lists first only
#                                  when apt cannot resolve them yet, and once more (then retries)
#                                  when lists that were present turn out stale; waits for another
#                                  installer's dpkg lock rather than failing

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "$LOG_NAME: need root to run: $*" >&2
        echo "$LOG_NAME: re-run as root, or install the packages yourself" >&2
        exit 1
    fi
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    local lock=(-o DPkg::Lock::Timeout=600)
    local updated=no
    if ! apt-cache show "$@" >/dev/null 2>&1; then
        echo "$LOG_NAME: refreshing package lists (apt-get update)"
        as_root apt-get update -qq "${lock[@]}"
        updated=yes
    fi
    echo "$LOG_NAME: installing $*"
    if as_root apt-get install -y -qq --no-install-recommends "${lock[@]}" "$@"; then
        return 0
    fi
    # Lists that are present but stale name package versions the mirror no longer has.
    if [ "$updated" = yes ]; then
        echo "$LOG_NAME: apt-get install failed" >&2
        exit 1
    fi
    echo "$LOG_NAME: install failed; refreshing package lists and retrying"
    as_root apt-get update -qq "${lock[@]}"
    as_root apt-get install -y -qq --no-install-recommends "${lock[@]}" "$@"
}
