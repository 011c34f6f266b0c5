#!/usr/bin/env bash
# Installs cdn-push into ./.venv (idempotent: to upgrade, git pull && ./install.sh).
#
# Needs python3 with venv (Debian/Ubuntu: apt-get install python3-venv; done for you as root).
# Offline, from a folder of wheels of requirements.txt and setuptools (the build backend):
#   PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels ./install.sh
# (pip reads its PIP_* variables itself). PYTHON=/usr/bin/python3 picks the Python for the venv.
set -euo pipefail
cd "$(dirname "$0")"
INSTALL_DIR=$(pwd)
PYTHON=${PYTHON:-python3}
SERVICE_USER=${CDN_PUSH_USER:-cdn-push}
CONFIG=${CDN_PUSH_SYSTEM_CONFIG:-/etc/cdn-push/config.yaml}
CONFIG_DIR=/etc/cdn-push
LEDGER_DIR=/var/lib/cdn-push
UNIT_DIR=/etc/systemd/system
UNIT_FILE=$UNIT_DIR/cdn-push.service
TEMPLATE_FILE=$UNIT_DIR/cdn-push@.service
# pyproject.toml's build-system.requires (tests/test_install.py keeps them in step).
BUILD_REQUIREMENT="setuptools>=70.1"
# pip's advice to use a venv (we do) or to upgrade itself is noise here.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

usage() {
    cat <<'EOF'
usage: ./install.sh [--dev] [--systemd [NAME]]
       ./install.sh --uninstall [--purge]
       ./install.sh --print-unit [NAME]

  (no option)      make .venv, install the runtime (requirements.txt) and cdn-push into it, and
                   link the cdn-push command: /usr/local/bin/cdn-push as root, else
                   ~/.local/bin/cdn-push. Run it again after git pull to upgrade.
  --dev            the same with the test tools (requirements-dev.txt) and cdn-push installed
                   editable (.venv runs this folder's cdn_push.py as you edit it); no link:
                   use .venv/bin/cdn-push (./install.sh adds the link)
  --systemd        also install the watch service cdn-push.service (as root)
  --systemd NAME   also install instance NAME of cdn-push@.service, one per drop folder
                   (/etc/cdn-push/NAME.yaml, NAME.env, ledger in /var/lib/cdn-push/NAME/)
  --uninstall      stop and remove the services, their user and the cdn-push link; keeps
                   /etc/cdn-push, /var/lib/cdn-push (the ledgers) and .venv
  --purge          with --uninstall: remove those too
  --print-unit     print the unit --systemd [NAME] would install, and exit
  -h, --help       show this help
EOF
}

bad_usage() {
    echo "install.sh: $1" >&2
    usage >&2
    exit 2
}

DEV=0 SYSTEMD=0 NAME="" UNINSTALL=0 PURGE=0 PRINT_UNIT=0 HELP=0
ARGC=$#
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) HELP=1 ;;
        --dev) DEV=1 ;;
        --systemd|--print-unit)
            if [ "$1" = --systemd ]; then SYSTEMD=1; else PRINT_UNIT=1; fi
            if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then
                NAME=$2
                shift
            fi ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        *) bad_usage "unknown option '$1'" ;;
    esac
    shift
done
if [ "$HELP" = 1 ]; then
    usage
    exit 0
fi
if [ "$PRINT_UNIT" = 1 ] && [[ $ARGC -gt 2 || ( $ARGC = 2 && -z "$NAME" ) ]]; then
    bad_usage "--print-unit takes no other option"
fi
if [ "$UNINSTALL" = 1 ] && [ $((DEV + SYSTEMD + PRINT_UNIT)) != 0 ]; then
    bad_usage "--uninstall takes no other option than --purge"
fi
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
    bad_usage "--purge goes with --uninstall"
fi
if [ -n "$NAME" ]; then
    # It becomes a unit instance and file names: no escaping, no dots, no clash with config.yaml.
    if ! [[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]] || [ "$NAME" = config ]; then
        bad_usage "NAME must be letters, digits, '-' and '_' (not 'config'): '$NAME'"
    fi
fi

render() {
    sed -e "s|@INSTALL_DIR@|$INSTALL_DIR|g" -e "s|@CONFIG@|$CONFIG|g" \
        -e "s|@USER@|$SERVICE_USER|g" -e "s|@LEDGER_DIR@|$LEDGER_DIR|g" "$1"
}

# The unit source of this folder for an installed unit file.
unit_source() {
    if [ "$1" = "$TEMPLATE_FILE" ]; then echo cdn-push@.service; else echo cdn-push.service; fi
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

systemd_runs() {
    [ -d /run/systemd/system ]
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
    install_project
}

# cdn-push itself, as a package with the cdn-push console script (pyproject.toml). The build
# backend goes into the venv and is used from there: a re-run needs no index, and an offline
# install needs its wheel only once.
install_project() {
    local pip=(.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation --force-reinstall)
    # What is installed, and how: a re-run with nothing changed leaves it as it is (editable, only
    # pyproject.toml matters).
    local stamp sources=(pyproject.toml README.md cdn_push.py cdn_emulator.py)
    [ "$DEV" = 0 ] || sources=(pyproject.toml)
    stamp="dev=$DEV $(cat "${sources[@]}" | sha256sum)"
    if [ -x .venv/bin/cdn-push ] && [ "$(cat .venv/.cdn-push-installed 2>/dev/null)" = "$stamp" ]; then
        return
    fi
    if ! quietly .venv/bin/python -m pip install --quiet "$BUILD_REQUIREMENT"; then
        echo "install.sh: could not install $BUILD_REQUIREMENT (the build backend) into .venv;" \
             "offline, put its wheel beside the others" >&2
        exit 2
    fi
    if [ "$DEV" = 1 ]; then
        # Editable: the venv imports this folder's cdn_push.py, so it never runs a stale copy.
        quietly "${pip[@]}" --editable .
    else
        # A copy, built from a scratch folder (setuptools leaves build/ and *.egg-info behind);
        # git pull && ./install.sh replaces it.
        local source status=0
        source=$(mktemp -d)
        cp pyproject.toml README.md cdn_push.py cdn_emulator.py "$source"/
        quietly "${pip[@]}" "$source" || status=$?
        rm -rf "$source"
        [ "$status" = 0 ] || exit "$status"
    fi
    # Byte code now, for users who cannot write it (the service) and for a quick first start.
    local site module files=(cdn_push.py cdn_emulator.py)
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for module in cdn_push.py cdn_emulator.py; do
        [ ! -f "$site/$module" ] || files+=("$site/$module")     # not there when editable
    done
    quietly .venv/bin/python -m compileall -q "${files[@]}"
    printf '%s\n' "$stamp" > .venv/.cdn-push-installed
    PROJECT_CHANGED=1
}

# /usr/local/bin/cdn-push (root) or ~/.local/bin/cdn-push -> .venv/bin/cdn-push. Sets LINK.
LINK="" ON_PATH=1 RESTART_HINTED="" PROJECT_CHANGED=0
link_command() {
    local bin_dir target=$INSTALL_DIR/.venv/bin/cdn-push
    if [ "$(id -u)" = 0 ]; then
        bin_dir=/usr/local/bin
    elif [ -n "${HOME:-}" ]; then
        bin_dir=$HOME/.local/bin
    else
        return
    fi
    if [ -e "$bin_dir/cdn-push" ] && [ ! -L "$bin_dir/cdn-push" ]; then
        echo "warning: $bin_dir/cdn-push is not a link made by install.sh; left alone (use $target)" >&2
        return
    fi
    mkdir -p "$bin_dir"
    ln -sfn "$target" "$bin_dir/cdn-push"
    LINK=$bin_dir/cdn-push
    case ":$PATH:" in
        *":$bin_dir:"* | *":$bin_dir/:"*) ;;
        *) echo "note: $bin_dir is not on your PATH: add it (PATH=\"$bin_dir:\$PATH\" in ~/.profile)"
           ON_PATH=0 ;;
    esac
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

# A port for an instance's status page that no config in /etc/cdn-push names (8765 is the
# plain service's default).
free_monitor_port() {
    local used port=8766
    used=$(cat "$CONFIG_DIR"/*.yaml 2>/dev/null | grep -oE '^[[:space:]]*listen:[^#]*:[0-9]+' \
           | grep -oE '[0-9]+$' || true)
    while printf '%s\n' 8765 $used | grep -qx "$port"; do
        port=$((port + 1))
    done
    echo "$port"
}

# The monitor.listen of a config ("" when unset).
monitor_listen() {
    awk '/^monitor:/ { inside = 1; next } /^[^ #]/ { inside = 0 }
         inside && /^[ ]+listen:/ { print $2; exit }' "$1" 2>/dev/null || true
}

# A config starting from config.example.yaml, with the ledger (and the status page port) set.
write_config() {
    local file=$1 ledger=$2 port=${3:-}
    local text
    text=$(sed -e "s|^ledger: null\$|ledger: $ledger|" config.example.yaml)
    if [ -n "$port" ]; then
        text=$(printf '%s\n' "$text" | sed -e "s|^  # listen: 127.0.0.1:8765\$|  listen: 127.0.0.1:$port|")
    fi
    if ! printf '%s\n' "$text" | grep -qx "ledger: $ledger" \
        || { [ -n "$port" ] && ! printf '%s\n' "$text" | grep -qx "  listen: 127.0.0.1:$port"; }; then
        echo "install.sh: config.example.yaml no longer has the lines install.sh fills in" \
             "(ledger: null, # listen: 127.0.0.1:8765); $file not written" >&2
        exit 70
    fi
    printf '%s\n' "$text" > "$file"
    chown "root:$SERVICE_USER" "$file"
    chmod 0640 "$file"
}

write_env_file() {
    local file=$1 unit=$2
    (   # only this file is private; the unit must stay world-readable
        umask 077
        printf '# Read by %s. Keep this file mode 0600.\nCDN_PUSH_API_PASSWORD=\n#CDN_PUSH_ORIGIN_PASSWORD=\n' \
            "$unit" > "$file"
    )
    echo "wrote $file: put the API password there"
}

# Installs `source` as `dest` (0644, root). Prints "installed dest" when it changed or `always`.
install_unit() {
    local source=$1 dest=$2 always=${3:-} unit
    unit=$(mktemp)
    render "$source" > "$unit"
    if [ -n "$always" ] || ! cmp -s "$unit" "$dest"; then
        install -m 0644 -o root -g root "$unit" "$dest"    # also repairs a 0600 one from before
        echo "installed $dest"
    fi
    rm -f "$unit"
}

install_service() {
    local unit config env_file unit_file source ledger port=""
    if [ -n "$NAME" ]; then
        unit=cdn-push@$NAME config=$CONFIG_DIR/$NAME.yaml env_file=$CONFIG_DIR/$NAME.env
        unit_file=$TEMPLATE_FILE source=cdn-push@.service ledger=$LEDGER_DIR/$NAME/ledger.sqlite3
    else
        unit=cdn-push config=$CONFIG env_file=$CONFIG_DIR/env
        unit_file=$UNIT_FILE source=cdn-push.service ledger=$LEDGER_DIR/ledger.sqlite3
    fi
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --home-dir "$LEDGER_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
        echo "created system user $SERVICE_USER"
    fi
    if ! runuser -u "$SERVICE_USER" -- test -r "$INSTALL_DIR/cdn_push.py" 2>/dev/null; then
        echo "warning: $SERVICE_USER cannot read $INSTALL_DIR; install under /opt/cdn-push instead" >&2
    fi
    ensure_venv_runs_as_service_user
    install -d -m 0755 "$CONFIG_DIR"
    if [ ! -e "$config" ]; then
        [ -z "$NAME" ] || port=$(free_monitor_port)
        write_config "$config" "$ledger" "$port"
        echo "wrote $config: set folder, api.login and origin.base_url${port:+ (its status page: port $port)}"
    elif [ "$(stat -c %G "$config")" = UNKNOWN ]; then
        chgrp "$SERVICE_USER" "$config"     # kept by --uninstall, whose user (and group) went
    fi
    if [ ! -e "$env_file" ]; then
        write_env_file "$env_file" "$unit.service"
    fi
    install_unit "$source" "$unit_file" always
    if command -v systemd-analyze >/dev/null 2>&1 && systemd_runs; then
        # Quiet when the unit is fine; its complaints are worth reading when it is not.
        # An instance is verified through a link named after it, away from this folder: verify
        # looks for units in the current folder too, where the unrendered template is.
        local verify=$unit_file scratch problems
        scratch=$(mktemp -d)
        if [ -n "$NAME" ]; then
            verify=$scratch/$unit.service
            ln -s "$unit_file" "$verify"
        fi
        if ! problems=$(cd "$scratch" && systemd-analyze verify "$verify" 2>&1) || [ -n "$problems" ]; then
            echo "warning: systemd-analyze verify $verify says:" >&2
            printf '%s\n' "$problems" >&2
        fi
        rm -rf "$scratch"
    fi
    if systemd_runs; then
        systemctl daemon-reload
        if systemctl is-active --quiet "$unit"; then
            echo "next: systemctl restart $unit (to run the new version)"
            RESTART_HINTED=$unit.service
        else
            echo "next: edit $config and $env_file, then: systemctl enable --now $unit"
        fi
    else
        echo "systemd is not running here; the unit is installed for when it is"
    fi
    local listen
    listen=$(monitor_listen "$config")
    listen=${listen:-127.0.0.1:8765}
    echo "status page of the running service: http://$listen/ on this machine" \
         "(from elsewhere: ssh -L ${listen##*:}:$listen this-host); journalctl -u $unit for its log"
}

# The User= of an installed unit file ("" if none).
unit_user() {
    [ -f "$1" ] || return 0          # no unit (only the command, or instances): no user to name
    sed -n 's/^User=//p' "$1" 2>/dev/null | head -n 1
}

# After git pull && ./install.sh as root: the unit files this folder installed are brought up
# to date (keeping the user and config they name), and the services still running the old
# version named.
update_installed_units() {
    local file changed=0 running config user
    for file in "$UNIT_FILE" "$TEMPLATE_FILE"; do
        if [ -f "$file" ] && grep -qF -e "ExecStart=$INSTALL_DIR/.venv/bin/cdn-push " \
                -e "ExecStart=$INSTALL_DIR/.venv/bin/python $INSTALL_DIR/cdn_push.py" "$file"; then   # now, and before 0.4
            config=$(sed -n 's/^ExecStart=.* --config //p' "$file" | head -n 1)
            user=$(unit_user "$file")
            if [ -n "$(CONFIG=${config:-$CONFIG} SERVICE_USER=${user:-$SERVICE_USER} \
                       install_unit "$(unit_source "$file")" "$file")" ]; then
                echo "updated $file"
                changed=1
            fi
        fi
    done
    if systemd_runs; then
        [ "$changed" = 0 ] || systemctl daemon-reload
        [ "$changed" = 1 ] || [ "$PROJECT_CHANGED" = 1 ] || return 0
        running=$(systemctl list-units --plain --no-legend --state=active 'cdn-push.service' 'cdn-push@*.service' \
                  2>/dev/null | unit_names | grep -vxF "${RESTART_HINTED:-none}" | tr '\n' ' ' || true)
        if [ -n "$running" ]; then
            echo "next: systemctl restart ${running% } (to run the new version)"
        fi
    fi
}

# The unit names in systemctl list-units output.
unit_names() {
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /\.service$/) { print $i; break } }'
}

# Every cdn-push unit systemd knows of or that is enabled: cdn-push.service, cdn-push@NAME.service.
cdn_push_units() {
    {
        if systemd_runs; then
            systemctl list-units --all --plain --no-legend 'cdn-push.service' 'cdn-push@*.service' 2>/dev/null \
                | unit_names
        fi
        for file in "$UNIT_DIR"/*.wants/cdn-push.service "$UNIT_DIR"/*.wants/cdn-push@*.service; do
            [ -e "$file" ] || [ -L "$file" ] && basename "$file"
        done
        [ -e "$UNIT_FILE" ] && echo cdn-push.service
    } | grep -E '^cdn-push(@[^.]+)?\.service$' | sort -u || true
}

uninstall() {
    local kept=() removed=() link target=$INSTALL_DIR/.venv/bin/cdn-push units user=""
    if [ "$(id -u)" = 0 ]; then
        link=/usr/local/bin/cdn-push
        user=$(unit_user "$UNIT_FILE")
        user=${user:-$(unit_user "$TEMPLATE_FILE")}
        user=${user:-$SERVICE_USER}
        units=$(cdn_push_units)
        if [ -n "$units" ]; then
            if systemd_runs; then
                # shellcheck disable=SC2086
                systemctl disable --now --quiet $units 2>/dev/null || systemctl stop $units || true
            fi
            removed+=("the services $(echo $units | sed 's/ /, /g')")
        fi
        rm -f "$UNIT_DIR"/*.wants/cdn-push.service "$UNIT_DIR"/*.wants/cdn-push@*.service
        rm -f "$UNIT_FILE" "$TEMPLATE_FILE"
        rm -rf "$UNIT_DIR"/cdn-push.service.d "$UNIT_DIR"/cdn-push@.service.d "$UNIT_DIR"/cdn-push@*.service.d
        if systemd_runs; then
            systemctl daemon-reload
            # shellcheck disable=SC2086
            [ -z "$units" ] || systemctl reset-failed $units >/dev/null 2>&1 || true
        fi
        # The user install.sh made: a system user whose home is the ledger folder. Any other
        # (an existing user named by CDN_PUSH_USER) stays.
        if [ -n "$user" ] && [ "$(getent passwd "$user" | cut -d: -f6)" = "$LEDGER_DIR" ]; then
            if ! userdel "$user"; then
                echo "install.sh --uninstall: could not remove the user $user; processes still" \
                     "running as it: pgrep -au $user. Stop them and run again" >&2
                exit 1
            fi
            removed+=("the user $user")
            if getent group "$user" >/dev/null 2>&1; then
                groupdel "$user" 2>/dev/null || true
            fi
        elif [ -n "$user" ] && id "$user" >/dev/null 2>&1; then
            kept+=("the user $user (not made by install.sh)")
        fi
    else
        link=$HOME/.local/bin/cdn-push
        if [ -e "$UNIT_FILE" ] || [ -e "$TEMPLATE_FILE" ]; then
            echo "note: the cdn-push services are installed: sudo ./install.sh --uninstall removes them"
        fi
    fi
    if [ -L "$link" ]; then
        if [ "$(readlink "$link")" = "$target" ]; then
            rm -f "$link"
            removed+=("$link")
        else
            echo "note: $link leads to $(readlink "$link"), another copy: left alone"
        fi
    fi
    local folder
    if [ "$(id -u)" = 0 ]; then
        for folder in "$CONFIG_DIR" "$LEDGER_DIR"; do
            [ -e "$folder" ] || continue
            if [ "$PURGE" = 1 ]; then
                rm -rf "$folder"
                removed+=("$folder")
            elif [ "$folder" = "$CONFIG_DIR" ]; then
                kept+=("$folder (the configuration)")
            else
                kept+=("$folder (the ledgers: what was imported; without them every file is sent again)")
            fi
        done
    fi
    if [ -e .venv ]; then
        if [ "$PURGE" = 1 ]; then
            rm -rf .venv
            removed+=("$INSTALL_DIR/.venv")
        else
            kept+=("$INSTALL_DIR/.venv")
        fi
    fi
    if [ ${#removed[@]} != 0 ]; then
        printf 'removed %s\n' "${removed[@]}"
    else
        echo "nothing of cdn-push was installed here"
    fi
    if [ ${#kept[@]} != 0 ]; then
        printf 'kept %s\n' "${kept[@]}"
        echo "(./install.sh --uninstall --purge removes what was kept)"
    fi
    if [ "$PURGE" = 1 ]; then
        echo "this folder, $INSTALL_DIR, is yours to delete"
    fi
}

if [ "$PRINT_UNIT" = 1 ]; then
    if [ -n "$NAME" ]; then render cdn-push@.service; else render cdn-push.service; fi
    exit 0
fi
if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi
if [ "$SYSTEMD" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh --systemd: run as root (it writes /etc/cdn-push and /etc/systemd/system)" >&2
    exit 2
fi
make_venv
if [ "$SYSTEMD" = 1 ]; then
    install_service
fi
if [ "$(id -u)" = 0 ]; then
    update_installed_units
fi
if [ "$DEV" = 1 ]; then
    echo "cdn-push installed in $INSTALL_DIR/.venv (editable, with the test tools):" \
         "run .venv/bin/cdn-push --help, or .venv/bin/python -m pytest"
else
    link_command
    if [ -n "$LINK" ]; then
        echo "cdn-push installed in $INSTALL_DIR/.venv, linked as $LINK:" \
             "run $([ "$ON_PATH" = 1 ] && echo cdn-push || echo "$LINK") --help"
    else
        echo "cdn-push installed in $INSTALL_DIR/.venv: run .venv/bin/cdn-push --help"
    fi
fi
