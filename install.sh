#!/usr/bin/env bash
# Installs cdn-push into ./.venv (idempotent).  Usage: ./install.sh
# Needs python3 with venv (Debian/Ubuntu: apt-get install python3-venv).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found; install Python 3.9 or newer" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt-get update -qq && apt-get install -y -qq "python${version}-venv" >/dev/null \
                || apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv .venv
        else
            echo "install.sh: '$PYTHON -m venv' failed; install the venv module" \
                 "(Debian/Ubuntu: sudo apt-get install python3-venv) and run again" >&2
            exit 2
        fi
    fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
echo "cdn-push installed in $(pwd)/.venv: run .venv/bin/python cdn_push.py --help"
