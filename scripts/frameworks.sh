#!/usr/bin/env bash
# Creates the project-local virtualenvs the real-framework tests run their apps from:
#   .venv/pulse      pulse-framework, from examples/pulse-counter/requirements.txt, on Python 3.12+
#                    ($PULSE_PYTHON, else python3.13 or python3.12 on PATH, else pyenv's)
#   .venv/streamlit  streamlit, from examples/streamlit-counter/requirements.txt
# Idempotent: a venv whose recorded requirements match the file is left alone (well under a
# second); a changed file rebuilds that venv from scratch (about 20 s each on a 2-core machine,
# downloads included; pip keeps no download cache here).
#
# Usage: scripts/frameworks.sh            install (or confirm) both
#        scripts/frameworks.sh pulse      only one of them
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.11+ (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

# A Python of at least 3.12 for Pulse, or nothing.
python312() {
    local candidate
    for candidate in "${PULSE_PYTHON:-}" python3.13 python3.12 \
        "$(pyenv root 2>/dev/null)"/versions/3.1[2-9]*/bin/python3; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
}

# install NAME REQUIREMENTS PYTHON: .venv/NAME with exactly what REQUIREMENTS lists.
install() {
    local name="$1" requirements="$2" python="$3"
    local venv="$root/.venv/$name" stamp="$root/.venv/$name/.flotilla-requirements"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
        echo "$name: .venv/$name is up to date"
        return
    fi
    local started=$SECONDS
    echo "$name: creating .venv/$name from ${requirements#"$root"/}" >&2
    rm -rf "$venv"
    mkdir -p "$root/.venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    cp "$requirements" "$stamp"
    echo "$name: ready in $((SECONDS - started)) s"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(pulse streamlit)
for target in "${targets[@]}"; do
    case "$target" in
        pulse)
            pulse_python="$(python312)"
            if [ -z "$pulse_python" ]; then
                echo "error: pulse-framework needs Python 3.12 or later; install one and name it in PULSE_PYTHON" >&2
                exit 1
            fi
            install pulse "$root/examples/pulse-counter/requirements.txt" "$pulse_python"
            ;;
        streamlit) install streamlit "$root/examples/streamlit-counter/requirements.txt" "$python" ;;
        *) echo "error: unknown framework $target (pulse or streamlit)" >&2; exit 2 ;;
    esac
done
