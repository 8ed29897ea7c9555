#!/usr/bin/env bash
# Creates the project-local virtualenvs that lint the baseline CloudFormation template:
#   .venv/cfn-lint  (cfn-lint)
#   .venv/checkov   (checkov; its own venv because it pins an old boto3 that moto and others dislike)
# Idempotent: a venv whose tool already reports the pinned version is left alone.
# Both tools then run offline (checkov with --skip-download).
set -euo pipefail

CFN_LINT_VERSION="1.58.0"
CHECKOV_VERSION="3.3.30"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.9+ (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

# make_venv DIR PACKAGE VERSION PROBE...: creates DIR and installs PACKAGE==VERSION unless PROBE
# already prints VERSION.
make_venv() {
    local dir="$1" package="$2" version="$3"
    shift 3
    if [ -x "$dir/bin/python" ] && "$@" 2>/dev/null | grep -q "$version"; then
        echo "$package $version already in ${dir#"$root"/}"
        return
    fi
    echo "creating ${dir#"$root"/} with $package==$version"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$package==$version"
}

mkdir -p "$root/.venv"
make_venv "$root/.venv/cfn-lint" cfn-lint "$CFN_LINT_VERSION" "$root/.venv/cfn-lint/bin/cfn-lint" --version
make_venv "$root/.venv/checkov" checkov "$CHECKOV_VERSION" "$root/.venv/checkov/bin/checkov" --version
echo "ok: .venv/cfn-lint/bin/cfn-lint and .venv/checkov/bin/checkov are ready"
