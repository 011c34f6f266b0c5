#!/usr/bin/env bash
# Installs cdn-push into ./.venv (idempotent).
#
#   ./install.sh                 make .venv and install requirements.txt into it
#   ./install.sh --systemd       also install the cdn-push watch service (as root)
#   ./install.sh --print-unit    print the systemd unit for this folder and exit
#
# Needs python3 with venv (Debian/Ubuntu: apt-get install python3-venv; done for you as root).
set -euo pipefail
cd "$(dirname "$0")"
INSTALL_DIR=$(pwd)
PYTHON=${PYTHON:-python3}
SERVICE_USER=${CDN_PUSH_USER:-cdn-push}
CONFIG=${CDN_PUSH_SYSTEM_CONFIG:-/etc/cdn-push/config.yaml}
LEDGER_DIR=/var/lib/cdn-push

render_unit() {
    sed -e "s|@INSTALL_DIR@|$INSTALL_DIR|g" -e "s|@CONFIG@|$CONFIG|g" \
        -e "s|@USER@|$SERVICE_USER|g" -e "s|@LEDGER_DIR@|$LEDGER_DIR|g" cdn-push.service
}

make_venv() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "install.sh: $PYTHON not found; install Python 3.9 or newer" >&2
        exit 2
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! "$PYTHON" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
                version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
                apt-get update -qq && { apt-get install -y -qq "python${version}-venv" >/dev/null \
                    || apt-get install -y -qq python3-venv >/dev/null; }
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
    install -d -m 0755 /etc/cdn-push
    if [ ! -e "$CONFIG" ]; then
        sed -e "s|^ledger: null|ledger: $LEDGER_DIR/ledger.sqlite3|" config.example.yaml > "$CONFIG"
        chown "root:$SERVICE_USER" "$CONFIG"
        chmod 0640 "$CONFIG"
        echo "wrote $CONFIG: set folder, api.login and origin.base_url"
    fi
    if [ ! -e /etc/cdn-push/env ]; then
        umask 077
        printf '# Read by cdn-push.service. Keep this file mode 0600.\nCDN_PUSH_API_PASSWORD=\n#CDN_PUSH_ORIGIN_PASSWORD=\n' \
            > /etc/cdn-push/env
        echo "wrote /etc/cdn-push/env: put the API password there"
    fi
    render_unit > /etc/systemd/system/cdn-push.service
    echo "installed /etc/systemd/system/cdn-push.service"
    if command -v systemd-analyze >/dev/null 2>&1; then
        systemd-analyze verify /etc/systemd/system/cdn-push.service || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        echo "next: edit $CONFIG and /etc/cdn-push/env, then: systemctl enable --now cdn-push"
    else
        echo "systemd is not running here; the unit is installed for when it is"
    fi
}

case "${1:-}" in
    --print-unit) render_unit; exit 0 ;;
    --systemd) make_venv; install_service ;;
    "") make_venv ;;
    *) echo "usage: ./install.sh [--systemd | --print-unit]" >&2; exit 2 ;;
esac
echo "cdn-push installed in $INSTALL_DIR/.venv: run .venv/bin/python cdn_push.py --help"
