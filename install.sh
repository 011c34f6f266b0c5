#!/usr/bin/env bash
# Installs cdn-push into ./.venv (idempotent: run it again after an update).
#
#   ./install.sh                 make .venv and install the runtime (requirements.txt) into it
#   ./install.sh --dev           also the test tools (requirements-dev.txt)
#   ./install.sh --systemd       also install the cdn-push watch service (as root)
#   ./install.sh --print-unit    print the systemd unit for this folder and exit
#
# Needs python3 with venv (Debian/Ubuntu: apt-get install python3-venv; done for you as root).
# Offline, from a folder of wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels ./install.sh
# (pip reads its PIP_* variables itself). PYTHON=/usr/bin/python3 picks the Python for the venv.
set -euo pipefail
cd "$(dirname "$0")"
INSTALL_DIR=$(pwd)
PYTHON=${PYTHON:-python3}
SERVICE_USER=${CDN_PUSH_USER:-cdn-push}
CONFIG=${CDN_PUSH_SYSTEM_CONFIG:-/etc/cdn-push/config.yaml}
LEDGER_DIR=/var/lib/cdn-push
UNIT_FILE=/etc/systemd/system/cdn-push.service
# pip's advice to use a venv (we do) or to upgrade itself is noise here.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

usage() {
    echo "usage: ./install.sh [--dev] [--systemd] | --print-unit" >&2
    exit 2
}

DEV=0 SYSTEMD=0
for arg in "$@"; do
    case "$arg" in
        --print-unit) [ $# = 1 ] || usage ;;
        --dev) DEV=1 ;;
        --systemd) SYSTEMD=1 ;;
        *) usage ;;
    esac
done

render_unit() {
    sed -e "s|@INSTALL_DIR@|$INSTALL_DIR|g" -e "s|@CONFIG@|$CONFIG|g" \
        -e "s|@USER@|$SERVICE_USER|g" -e "s|@LEDGER_DIR@|$LEDGER_DIR|g" cdn-push.service
}

# Runs a command with its output kept aside; shows it only when the command fails.
quietly() {
    local out status=0
    out=$(mktemp)
    "$@" >"$out" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
        cat "$out" >&2
    fi
    rm -f "$out"
    return "$status"
}

make_venv() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "install.sh: $PYTHON not found; install Python 3.11 or newer" >&2
        exit 2
    fi
    # 3.11 is what CI tests; older Pythons are not claimed.
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "install.sh: $PYTHON is $("$PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null);" \
             "cdn-push needs Python 3.11 or newer (PYTHON=/path/to/python3.11 ./install.sh picks another)" >&2
        exit 2
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! "$PYTHON" -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
                version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
                echo "installing python${version}-venv (Debian package)"
                export DEBIAN_FRONTEND=noninteractive
                quietly apt-get update -qq
                quietly apt-get install -y -qq "python${version}-venv" \
                    || quietly apt-get install -y -qq python3-venv
                "$PYTHON" -m venv .venv
            else
                echo "install.sh: '$PYTHON -m venv' failed; install the venv module" \
                     "(Debian/Ubuntu: sudo apt-get install python3-venv) and run again" >&2
                exit 2
            fi
        fi
    fi
    # A newer pip where one can be had; offline (PIP_NO_INDEX) the bundled one does.
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    local requirements=requirements.txt
    if [ "$DEV" = 1 ]; then
        requirements=requirements-dev.txt
    fi
    quietly .venv/bin/python -m pip install --quiet -r "$requirements"
}

# The service user must be able to run the venv's Python. A venv made from a Python under
# /root (pyenv) or a home folder is not runnable by it: rebuild it from a system Python.
ensure_venv_runs_as_service_user() {
    if runuser -u "$SERVICE_USER" -- "$INSTALL_DIR/.venv/bin/python" -c pass >/dev/null 2>&1; then
        return
    fi
    local broken candidate system_python=""
    broken=$(readlink -f .venv/bin/python || echo .venv/bin/python)
    for candidate in /usr/bin/python3 /usr/local/bin/python3; do
        if [ -x "$candidate" ] && runuser -u "$SERVICE_USER" -- "$candidate" -c pass >/dev/null 2>&1; then
            system_python=$candidate
            break
        fi
    done
    if [ -z "$system_python" ]; then
        echo "install.sh --systemd: $SERVICE_USER cannot run $broken, and no system Python it can run" \
             "was found; install python3 (apt-get install python3 python3-venv) and run again" >&2
        exit 2
    fi
    echo "$SERVICE_USER cannot run the venv's Python ($broken): rebuilding .venv from $system_python"
    rm -rf .venv
    PYTHON=$system_python make_venv
    if ! runuser -u "$SERVICE_USER" -- "$INSTALL_DIR/.venv/bin/python" -c 'import yaml, requests' >/dev/null 2>&1; then
        echo "install.sh --systemd: $SERVICE_USER still cannot run $INSTALL_DIR/.venv/bin/python;" \
             "check the permissions of $INSTALL_DIR and its parent folders" >&2
        exit 2
    fi
}

install_service() {
    if [ "$(id -u)" != 0 ]; then
        echo "install.sh --systemd: run as root (it writes /etc/cdn-push and /etc/systemd/system)" >&2
        exit 2
    fi
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --home-dir "$LEDGER_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
        echo "created system user $SERVICE_USER"
    fi
    if ! runuser -u "$SERVICE_USER" -- test -r "$INSTALL_DIR/cdn_push.py" 2>/dev/null; then
        echo "warning: $SERVICE_USER cannot read $INSTALL_DIR; install under /opt/cdn-push instead" >&2
    fi
    ensure_venv_runs_as_service_user
    install -d -m 0755 /etc/cdn-push
    if [ ! -e "$CONFIG" ]; then
        sed -e "s|^ledger: null|ledger: $LEDGER_DIR/ledger.sqlite3|" config.example.yaml > "$CONFIG"
        chown "root:$SERVICE_USER" "$CONFIG"
        chmod 0640 "$CONFIG"
        echo "wrote $CONFIG: set folder, api.login and origin.base_url"
    fi
    if [ ! -e /etc/cdn-push/env ]; then
        (   # only this file is private; the unit below must stay world-readable
            umask 077
            printf '# Read by cdn-push.service. Keep this file mode 0600.\nCDN_PUSH_API_PASSWORD=\n#CDN_PUSH_ORIGIN_PASSWORD=\n' \
                > /etc/cdn-push/env
        )
        echo "wrote /etc/cdn-push/env: put the API password there"
    fi
    local unit
    unit=$(mktemp)
    render_unit > "$unit"
    install -m 0644 -o root -g root "$unit" "$UNIT_FILE"    # also repairs a 0600 one from before
    rm -f "$unit"
    echo "installed $UNIT_FILE"
    if command -v systemd-analyze >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        # Quiet when the unit is fine; its complaints are worth reading when it is not.
        if ! problems=$(systemd-analyze verify "$UNIT_FILE" 2>&1) || [ -n "$problems" ]; then
            echo "warning: systemd-analyze verify $UNIT_FILE says:" >&2
            printf '%s\n' "$problems" >&2
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        if systemctl is-active --quiet cdn-push; then
            echo "next: systemctl restart cdn-push (to run the new version)"
        else
            echo "next: edit $CONFIG and /etc/cdn-push/env, then: systemctl enable --now cdn-push"
        fi
    else
        echo "systemd is not running here; the unit is installed for when it is"
    fi
    echo "status page of the running service: http://127.0.0.1:8765/ on this machine" \
         "(from elsewhere: ssh -L 8765:127.0.0.1:8765 this-host); journalctl -u cdn-push for its log"
}

if [ "${1:-}" = --print-unit ]; then
    render_unit
    exit 0
fi
make_venv
if [ "$SYSTEMD" = 1 ]; then
    install_service
fi
echo "cdn-push installed in $INSTALL_DIR/.venv: run .venv/bin/python cdn_push.py --help"
