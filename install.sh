#!/usr/bin/env bash
# Exhibit speaker installer.
#
#   ./install.sh                  install or update the service, as root, on Raspberry Pi OS Bookworm / Debian 12:
#                                 Debian packages, the system user kiosk, the program as the release
#                                 /opt/kiosk/releases/<version> (a virtualenv with kiosk and the local voice) with
#                                 the link /opt/kiosk/current to it, /etc/kiosk/kiosk.yaml (only if absent),
#                                 /var/lib/kiosk/openai.key (from OPENAI_API_KEY, only if absent), the command
#                                 /usr/local/bin/kiosk, the systemd unit kiosk.service, enabled and (re)started, and
#                                 kiosk-update.path/.service, which install updates from the staff page or the fleet.
#   ./install.sh --display        the same, and a screen beside the case: the live captions full screen on the HDMI
#                                 output (Raspberry Pi OS Lite, no desktop). Adds the Debian packages cage, chromium
#                                 and xwayland, the system user kiosk-display (groups video, render, input) and the
#                                 unit kiosk-display.service, enabled and (re)started, with the drop-in
#                                 kiosk-display.service.d/captions-url.conf naming the captions page at the port in
#                                 /etc/kiosk/kiosk.yaml (rewritten on every run: run again after changing the port).
#   ./install.sh --uninstall [--purge]
#                                 stop and remove the service, its unit and /opt/kiosk, and the screen's unit if
#                                 installed. /etc/kiosk, the phrase cache /var/cache/kiosk, /var/lib/kiosk, the users
#                                 kiosk and kiosk-display (and its /var/lib/kiosk-display) are kept; --purge removes
#                                 them.
#   ./install.sh --dev [--test]   set up a development checkout: system packages, ./.venv with the product installed
#                                 editable; --test adds the test tools (pytest, PulseAudio, Chromium, cage,
#                                 Xwayland, systemd-analyze). Run as a user with sudo, all apt work is one sudo call.
#
# Options for install (with or without --display) and --uninstall:
#   --root DIR    work on the tree under DIR (DIR/opt/kiosk, DIR/etc/kiosk, DIR/etc/systemd/system, DIR/var/...)
#                 instead of /, to inspect or test what would be installed. Files get their final content (the
#                 unit and config name /opt/kiosk and /etc/kiosk); the virtualenv is really built, so it runs
#                 from DIR/opt/kiosk only. Commands that would change this machine (apt-get, adduser, addgroup,
#                 usermod, chown to kiosk, systemctl) are printed as "would run: ..." instead.
#   --dry-run     print every action as "would run: ..." and change nothing.
#   -h, --help    this text.
#
# Environment:
#   OPENAI_API_KEY  written to /var/lib/kiosk/openai.key (mode 0600, owner kiosk) if that file does not exist yet, and
#                   never printed: read -rs OPENAI_API_KEY && export OPENAI_API_KEY &&
#                   sudo --preserve-env=OPENAI_API_KEY ./install.sh
#   PYTHON          the interpreter for the virtualenv (default: /usr/bin/python3 for the service, python3 for
#                   --dev). The service runs with /home and /root hidden, so its interpreter must live elsewhere.
#   PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX
#                   read by pip as usual, e.g. to install from a folder of wheels without internet.
#
# Safe to run again: every step checks before it changes anything, and the config and key file are never
# overwritten (it says when it kept them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
args=("$@")
mode=install
modes=0
with_test=0
with_display=0
purge=0
dry_run=0
root_dir=""

# The key is kept in a shell variable only, so that no command this script runs (pip, apt-get, ...) inherits it.
openai_key=${OPENAI_API_KEY:-}
unset OPENAI_API_KEY

usage() {
    # The comment block at the top of this file, without its "# ".
    local out=1
    [ "${1:-0}" -eq 0 ] || out=2
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&"$out"
    exit "${1:-0}"
}

bad_usage() {
    echo "install.sh: $*" >&2
    usage 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dev) mode=dev; modes=$((modes + 1)) ;;
        --uninstall) mode=uninstall; modes=$((modes + 1)) ;;
        --test) with_test=1 ;;
        --display) with_display=1 ;;
        --purge) purge=1 ;;
        --dry-run) dry_run=1 ;;
        --root)
            if [ $# -lt 2 ] || [ -z "$2" ]; then bad_usage "--root needs a directory"; fi
            root_dir=$2
            shift
            ;;
        --root=*)
            root_dir=${1#--root=}
            [ -n "$root_dir" ] || bad_usage "--root needs a directory"
            ;;
        -h|--help) usage 0 ;;
        *) bad_usage "unknown option $1" ;;
    esac
    shift
done
[ "$modes" -le 1 ] || bad_usage "choose one of --dev and --uninstall"
[ "$with_test" -eq 0 ] || [ "$mode" = dev ] || bad_usage "--test goes with --dev"
[ "$purge" -eq 0 ] || [ "$mode" = uninstall ] || bad_usage "--purge goes with --uninstall"
[ "$with_display" -eq 0 ] || [ "$mode" = install ] \
    || bad_usage "--display goes with installing the service (--uninstall removes the screen too)"
if [ "$mode" = dev ] && { [ -n "$root_dir" ] || [ "$dry_run" -eq 1 ]; }; then
    bad_usage "--root and --dry-run are for installing the service, not with --dev"
fi

if [ "$mode" = dev ]; then
    python=${PYTHON:-python3}
else
    python=${PYTHON:-/usr/bin/python3}
fi

say() { printf 'install.sh: %s\n' "$*"; }

# All apt work of a run is one command: as root, apt-get itself; otherwise a single sudo call (one password prompt
# at most) that runs update and install together.
# Runs (or, with a first argument "print", prints as "would run:") the apt work for the packages given.
apt_run() {
    local mode=$1
    shift
    if [ "$(id -u)" -eq 0 ]; then
        if [ "$mode" = print ]; then
            would apt-get update -qq
            would env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
        else
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
        fi
        return 0
    fi
    local script='apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null'
    if [ "$mode" = print ]; then
        would sudo sh -c "$script" sh "$@"
    elif ! command -v sudo >/dev/null; then
        say "please install these Debian packages first (as root; sudo is not installed): $*"
        exit 1
    else
        say "installing $* (with sudo)"
        sudo sh -c "$script" sh "$@"
    fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -ne 0 ] || say "installing ${missing[*]}"
    apt_run run "${missing[@]}"
}

system_packages() {
    # libasound2-dev and gcc build pyalsaaudio (and pyebur128 where no wheel exists, as on 32-bit Raspberry Pi OS);
    # alsa-utils gives aplay -L for finding devices.
    local pkgs=(libasound2 libasound2-dev alsa-utils gcc)
    "$python" -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
    "$python" -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
        2>/dev/null || pkgs+=(python3-dev)
    if [ "$with_test" -eq 1 ]; then
        # A PulseAudio null sink behind ALSA's pulse plugin is the clocked audio device of the tests and the
        # benchmark (pacat, from pulseaudio-utils, keeps it rendering in small blocks); Chromium
        # runs the staff page's browser tests (driven by Playwright); systemd-analyze checks the unit file;
        # mosquitto is the MQTT broker of the fleet tests (mosquitto-clients: mosquitto_sub for debugging them);
        # cage and xwayland run the screen's unit (install.sh --display) headless in tests/test_display.py;
        # rsvg-convert and zbarimg read the captions label's QR code back, as a phone would (tests/test_transcript.py).
        pkgs+=(pulseaudio pulseaudio-utils libasound2-plugins chromium systemd mosquitto mosquitto-clients)
        pkgs+=(cage xwayland librsvg2-bin zbar-tools)
    fi
    apt_install "${pkgs[@]}"
}

python_env() {
    local venv=$1 spec=$2
    if [ ! -x "$venv/bin/python" ]; then
        say "creating virtualenv $venv"
        "$python" -m venv "$venv"
    fi
    say "installing kiosk into $venv"
    quietly "$venv/bin/python" -m pip install -q --upgrade pip
    quietly "$venv/bin/python" -m pip install -q -e "$spec"
}

quietly() {
    # pip and the build backend are chatty; show their output only when something fails.
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        say "failed: $*"
        exit 1
    fi
    rm -f "$log"
}

dev_install() {
    system_packages
    # The local Piper voice lets a checkout with no key and no network speak; the test extra includes it.
    local extras="[piper]"
    [ "$with_test" -eq 1 ] && extras="[test]"
    python_env "$here/.venv" "$here$extras"
    say "ready: $here/.venv/bin/kiosk"
}

# ---------------------------------------------------------------------------------------------------------------
# The service: install and uninstall.
#
# Every change goes through one of two functions:
#   host CMD...   changes this machine outside the target tree (packages, users, ownership, systemd): run only
#                 for a real install, printed as "would run: ..." with --root or --dry-run;
#   run CMD...    changes files in the target tree: printed instead of run with --dry-run.

# Where things go on the target machine, and where this run writes them (the same unless --root).
OPT=/opt/kiosk
ETC=/etc/kiosk
UNIT=/etc/systemd/system/kiosk.service
CACHE=/var/cache/kiosk
STATE=/var/lib/kiosk
LINK=/usr/local/bin/kiosk
USER_NAME=kiosk
# The screen beside the case (--display).
DISPLAY_UNIT=/etc/systemd/system/kiosk-display.service
DISPLAY_DROPIN=captions-url.conf
DISPLAY_STATE=/var/lib/kiosk-display
DISPLAY_USER=kiosk-display

staged() { [ -n "$root_dir" ] || [ "$dry_run" -eq 1 ]; }

# Says what is being done, except in a dry run, where the "would run:" lines say it.
tell() { [ "$dry_run" -eq 1 ] || say "$@"; }

would() {
    # The command as it could be pasted into a shell: words with special characters in single quotes.
    local line="" word
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            line+=" $word"
        else
            line+=" '${word//\'/\'\\\'\'}'"
        fi
    done
    printf 'would run:%s\n' "$line"
}

host() {
    if staged; then
        would "$@"
    else
        "$@"
    fi
}

run() {
    if [ "$dry_run" -eq 1 ]; then
        would "$@"
    else
        "$@"
    fi
}

setup_paths() {
    if [ -n "$root_dir" ]; then
        root_dir=$(realpath -m -- "$root_dir")
        [ "$root_dir" != / ] || root_dir=""
    fi
    opt=$root_dir$OPT
    etc=$root_dir$ETC
    unit=$root_dir$UNIT
    cache=$root_dir$CACHE
    state=$root_dir$STATE
    link=$root_dir$LINK
    display_unit=$root_dir$DISPLAY_UNIT
    display_state=$root_dir$DISPLAY_STATE
    if ! staged; then
        if [ "$(id -u)" -ne 0 ]; then
            say "installing the service needs root: sudo $0${args[*]:+ ${args[*]}}"
            say "(--dry-run shows what it would do; --dev sets up a development checkout)"
            exit 1
        fi
        if ! command -v apt-get >/dev/null || ! command -v systemctl >/dev/null; then
            say "this installs on Debian 12 / Raspberry Pi OS Bookworm with systemd (apt-get or systemctl not found)"
            exit 1
        fi
    fi
    # Root's umask may be strict (027, 077): the service user must be able to read the program and its config.
    umask 022
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

service_packages() {
    # python3-dev, gcc and libasound2-dev build pyalsaaudio; alsa-utils gives aplay -L and amixer.
    local pkgs=(python3 python3-venv python3-dev gcc libasound2 libasound2-dev alsa-utils) missing=() pkg
    # Apt's package lists are empty on a fresh image; without them python3-lgpio below would not be found.
    if ! staged && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update -qq
    fi
    # gpiozero drives the GPIO pins through lgpio on Bookworm. Raspberry Pi OS packages it for its python3, and the
    # virtualenv is made with --system-site-packages to see it (pip's lgpio would need the C library and swig).
    # Elsewhere there is no such package and no GPIO to drive.
    if installed python3-lgpio || apt-cache show python3-lgpio >/dev/null 2>&1; then
        pkgs+=(python3-lgpio)
    fi
    # The screen: cage (a Wayland compositor showing one program full screen), Chromium, and Xwayland, which
    # Debian's cage is built to offer and expects to find.
    [ "$with_display" -eq 0 ] || pkgs+=(cage chromium xwayland)
    if [ -n "$root_dir" ]; then
        missing=("${pkgs[@]}")
    else
        for pkg in "${pkgs[@]}"; do
            installed "$pkg" || missing+=("$pkg")
        done
    fi
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages: all present"
        return 0
    fi
    staged || say "installing ${missing[*]}"
    if staged; then
        apt_run print "${missing[@]}"
    else
        apt_run run "${missing[@]}"
    fi
}

service_user() {
    # A system user with no login; its home is the state directory (made here, owned by kiosk in service_dirs).
    [ -d "$state" ] || run mkdir -p "$state"
    if [ -n "$root_dir" ] || ! getent passwd "$USER_NAME" >/dev/null; then
        host adduser --system --group --home "$STATE" --no-create-home "$USER_NAME"
    else
        say "user $USER_NAME: exists"
    fi
    # The unit's SupplementaryGroups=audio gpio must exist or systemd refuses to start it. Every Debian has audio;
    # Raspberry Pi OS has gpio (udev gives it /dev/gpiochip*), elsewhere it is created, harmless without GPIO.
    if [ -n "$root_dir" ] || ! getent group gpio >/dev/null; then
        host addgroup --system gpio
    fi
    local group
    for group in audio gpio; do
        if [ -n "$root_dir" ] || ! id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
            host usermod -a -G "$group" "$USER_NAME"
        fi
    done
}

check_python() {
    local real
    if ! real=$("$python" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))' 2>/dev/null); then
        if [ "$dry_run" -eq 1 ]; then
            say "$python: not found (the Debian packages above provide /usr/bin/python3)"
            return 0
        fi
        say "$python does not run; set PYTHON to a Python 3.11 or later interpreter"
        exit 1
    fi
    case "$real" in
        /home/*|/root/*|/run/user/*)
            # ProtectHome=yes in the unit hides these: the service would fail to start.
            if staged; then
                say "warning: $real is under /home, /root or /run/user, which the service cannot see"
            else
                say "$python is $real, under /home, /root or /run/user, which the service cannot see; use PYTHON=/usr/bin/python3"
                exit 1
            fi
            ;;
    esac
}

# The version of the checkout being installed (pyproject.toml's), which names its release directory.
checkout_version() {
    sed -n 's/^version = "\([^"]*\)"$/\1/p' "$here/pyproject.toml" | head -n 1
}

service_program() {
    check_python
    local version release
    version=$(checkout_version)
    [ -n "$version" ] || { say "no version in $here/pyproject.toml"; exit 1; }
    # Each release is a virtualenv of its own in $OPT/releases/<version>; the link $OPT/current names the one that
    # runs (kiosk update installs the next one beside it and can switch back). Running this script again with the
    # same version updates that release in place.
    release=$opt/releases/$version
    if [ -x "$release/bin/python" ] && "$release/bin/python" -c '' 2>/dev/null; then
        say "updating $release"
    else
        # --clear: a virtualenv left broken (its Python replaced) is rebuilt. --system-site-packages: see the
        # Debian-packaged lgpio (see above).
        tell "creating virtualenv $release"
        run mkdir -p "$opt/releases"
        run "$python" -m venv --clear --system-site-packages "$release"
    fi
    if [ "$dry_run" -eq 1 ]; then
        would "$release/bin/python" -m pip install -q "${here}[piper]"
    else
        # Built from a clean copy of the source, so that nothing is written into the checkout and no stale build/
        # files can end up in the installed program.
        src=$(mktemp -d)
        trap 'rm -rf "$src"' EXIT
        cp -R "$here/kiosk" "$src/"
        find "$here" -maxdepth 1 -type f \( -name pyproject.toml -o -name 'setup.*' -o -name 'README*' \
            -o -name 'LICENSE*' -o -name 'COPYING*' -o -name MANIFEST.in \) -exec cp {} "$src/" \;
        find "$src" -name __pycache__ -prune -exec rm -rf {} +
        say "installing kiosk $version and the local voice into $release"
        quietly "$release/bin/python" -m pip install -q "${src}[piper]"
        rm -rf "$src"
    fi
    switch_release "$version"
    # `kiosk doctor`, `kiosk say` and `kiosk cache ...` for staff, on the PATH, whichever release is current.
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$OPT/current/bin/kiosk" ]; then
        :
    elif [ -e "$link" ] && ! [ -L "$link" ]; then
        say "kept $link (not a link); the program is $OPT/current/bin/kiosk"
    elif [ -L "$link" ] && [ "$(readlink "$link")" != "$OPT/bin/kiosk" ]; then
        say "kept $link (a link to $(readlink "$link")); the program is $OPT/current/bin/kiosk"
    else
        tell "linking $link to $OPT/current/bin/kiosk"
        run mkdir -p "$(dirname "$link")"
        run ln -sfn "$OPT/current/bin/kiosk" "$link"
    fi
}

# Makes releases/<version> current (the one it replaces becomes previous), each link replaced in one rename.
switch_release() {
    local version=$1 now=""
    [ -L "$opt/current" ] && now=$(basename "$(readlink "$opt/current")")
    [ "$now" != "$version" ] || return 0
    if [ -n "$now" ]; then
        run ln -sfn "releases/$now" "$opt/.previous.new"
        run mv -T "$opt/.previous.new" "$opt/previous"
    fi
    tell "release $version is current${now:+ (was $now)}"
    run ln -sfn "releases/$version" "$opt/.current.new"
    run mv -T "$opt/.current.new" "$opt/current"
}

# A program installed before releases (a virtualenv at $OPT itself) is removed once the service runs the release.
remove_old_layout() {
    [ -e "$opt/pyvenv.cfg" ] || return 0
    tell "removing the program's old layout in $opt (bin, lib, ...; it now runs from $OPT/current)"
    local part
    for part in bin include lib lib64 share pyvenv.cfg; do
        if [ -e "$opt/$part" ] || [ -L "$opt/$part" ]; then
            run rm -rf -- "${opt:?}/$part"
        fi
    done
}

service_dirs() {
    # /etc/kiosk: root writes it, the service reads it (group kiosk), nobody else. The phrase cache and state belong
    # to kiosk; systemd would create them at the first start, but `kiosk cache list` works before that.
    if [ -d "$etc" ]; then
        say "$etc: exists"
        # Made before this script by hand, perhaps 0755: the unit's ConfigurationDirectoryMode wants 0750.
        run chmod 0750 "$etc"
    else
        tell "creating $etc"
        run mkdir -p "$etc"
        run chmod 0750 "$etc"
    fi
    host chown "root:$USER_NAME" "$etc"
    local dir
    for dir in "$cache" "$state"; do
        [ -d "$dir" ] || run mkdir -p "$dir"
        host chown "$USER_NAME:$USER_NAME" "$dir"
    done
}

service_key() {
    local key_file=$state/openai.key
    if [ -e "$key_file" ]; then
        say "kept $key_file"
        if [ -n "$openai_key" ] && [ "$(cat "$key_file" 2>/dev/null)" != "$openai_key" ]; then
            say "OPENAI_API_KEY differs from the key in $key_file and was not used; to replace it, remove the file and run again"
        fi
        return 0
    fi
    if [ -z "$openai_key" ]; then
        say "no OpenAI key: lines not cached yet are spoken by the local voice. To use OpenAI, run again with"
        say "OPENAI_API_KEY set (sudo --preserve-env=OPENAI_API_KEY $0), enter it on the staff page, or write it to"
        say "$STATE/openai.key (owner $USER_NAME, mode 0600)"
        return 0
    fi
    if [ "$dry_run" -eq 1 ]; then
        # shellcheck disable=SC2016 # the variable's name, never its value
        printf 'would run: printf "%%s\\n" "$OPENAI_API_KEY" > %s  # mode 0600\n' "$key_file"
    else
        # Written under a temporary name with mode 0600 from the start, then renamed: never readable by others,
        # never half written. printf is a shell builtin, so the key is not on any command line.
        local tmp
        tmp=$(mktemp "$state/.openai.key.XXXXXX")
        printf '%s\n' "$openai_key" >"$tmp"
        chmod 0600 "$tmp"
        mv -f "$tmp" "$key_file"
        say "wrote $key_file from OPENAI_API_KEY (mode 0600)"
    fi
    host chown "$USER_NAME:$USER_NAME" "$key_file"
}

service_config() {
    local config=$etc/kiosk.yaml
    if [ -e "$config" ]; then
        say "kept $config (never overwritten; the current example is $here/config/kiosk.yaml)"
        # Written by hand before the install (root:root 0640): the service reads it as group kiosk.
        host chgrp "$USER_NAME" "$config"
        run chmod g+r "$config"
    else
        tell "writing $config from the example $here/config/kiosk.yaml"
        run install -m 0640 "$here/config/kiosk.yaml" "$config"
        # The example leaves openai.api_key_file empty; the installed config names the key file, which lives in
        # the state directory so that the staff page can replace the key (the service cannot write /etc).
        run sed -i "s|^  api_key_file:[[:space:]]*\$|  api_key_file: $STATE/openai.key|" "$config"
        host chown "root:$USER_NAME" "$config"
    fi
    if [ "$dry_run" -eq 0 ] && [ -e "$config" ] \
        && ! grep -Eq "^[[:space:]]*api_key_file:[[:space:]]*['\"]?$STATE/openai.key" "$config"; then
        say "note: $config does not name $STATE/openai.key; the service uses that key only with"
        say "      openai.api_key_file: $STATE/openai.key"
    fi
}

# The service's unit, and the pair that installs updates left by the staff page or the fleet (kiosk-update.path
# starts kiosk-update.service, which runs as root).
UPDATE_UNITS=(kiosk-update.path kiosk-update.service)

service_unit() {
    local name target
    for name in kiosk.service "${UPDATE_UNITS[@]}"; do
        target=$(dirname "$unit")/$name
        if cmp -s "$here/systemd/$name" "$target"; then
            say "$target: unchanged"
        else
            tell "installing $target"
            run install -D -m 0644 "$here/systemd/$name" "$target"
        fi
    done
}

service_start() {
    if staged && [ -n "$root_dir" ]; then
        host systemctl daemon-reload
        host systemctl enable --now kiosk
        host systemctl enable --now kiosk-update.path
        say "(on a machine where it is already running: systemctl restart kiosk, so that the new version runs)"
        return 0
    fi
    if [ ! -d /run/systemd/system ]; then
        # An image being prepared in a chroot, a container: enable for the next boot, start nothing.
        host systemctl enable kiosk kiosk-update.path
        tell "systemd is not running here: kiosk is enabled and starts at the next boot"
        return 0
    fi
    host systemctl daemon-reload
    local action=(enable --now kiosk)
    if systemctl is-active --quiet kiosk; then
        host systemctl enable kiosk
        action=(restart kiosk)
    fi
    host systemctl enable --now kiosk-update.path
    if ! host systemctl "${action[@]}"; then
        journalctl -u kiosk -n 20 --no-pager >&2 || true
        say "kiosk did not start (log above); systemd keeps retrying. Check with: $LINK doctor"
        exit 1
    fi
    [ "$dry_run" -eq 1 ] || say "kiosk is $(systemctl is-active kiosk): journalctl -u kiosk -f for its log, $LINK doctor to check it"
}

# ---------------------------------------------------------------------------------------------------------------
# The screen beside the case (--display): kiosk-display.service runs cage with Chromium showing the captions page.

display_user() {
    # A system user with no login of its own (the unit opens its session); its home is the unit's StateDirectory,
    # where Chromium keeps its profile. video, render and input: the DRM, GPU and input devices, besides the access
    # logind grants the session; groups this system lacks (no GPU, no udev) are skipped.
    if [ -n "$root_dir" ] || ! getent passwd "$DISPLAY_USER" >/dev/null; then
        host adduser --system --group --home "$DISPLAY_STATE" --no-create-home "$DISPLAY_USER"
    else
        say "user $DISPLAY_USER: exists"
    fi
    local group
    for group in video render input; do
        if [ -n "$root_dir" ]; then
            host usermod -a -G "$group" "$DISPLAY_USER"
        elif ! getent group "$group" >/dev/null; then
            say "no group $group here: $DISPLAY_USER is not added to it"
        elif ! id -nG "$DISPLAY_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
            host usermod -a -G "$group" "$DISPLAY_USER"
        fi
    done
}

# Prints the captions page's URL from a config file, read by the installed program's own config loader (the port
# is validated there; this machine's screen reaches the server on loopback unless it listens on one address only).
# shellcheck disable=SC2016 # Python, not shell
DISPLAY_URL_PY='
import sys
from pathlib import Path
from kiosk.config import parse_config
path = Path(sys.argv[1])
try:
    cfg = parse_config(path.read_text(encoding="utf-8"), str(path))
except Exception as exc:  # ConfigError lists every problem; OSError, UnicodeError: one line, no traceback
    sys.exit(str(exc))
# The captions pages have a server of their own (captions:); a kiosk without that section serves them on its API.
server = getattr(cfg, "captions", None) or cfg.api
section = "captions" if server is not cfg.api else "api"
if not getattr(server, "enabled", True):
    print(f"note: {section}.enabled is false in {path}: the screen shows an error page until it is true", file=sys.stderr)
if server.port == 0:
    sys.exit(f"{section}.port is 0 (any free port) in {path}: the screen cannot know it; set a port")
host = server.bind
if host in ("", "0.0.0.0", "::", "localhost") or host.startswith("127."):
    host = "127.0.0.1"
elif ":" in host:
    host = f"[{host}]"
print(f"http://{host}:{server.port}/captions")
'

display_unit() {
    if cmp -s "$here/systemd/kiosk-display.service" "$display_unit"; then
        say "$display_unit: unchanged"
    else
        tell "installing $display_unit"
        run install -D -m 0644 "$here/systemd/kiosk-display.service" "$display_unit"
    fi
    # The captions URL, in a drop-in of its own: systemctl edit's override.conf sorts after it and wins.
    local dropin=$display_unit.d/$DISPLAY_DROPIN config=$etc/kiosk.yaml url
    if [ "$dry_run" -eq 1 ] && { [ ! -e "$config" ] || ! "$opt/current/bin/python" -c '' 2>/dev/null; }; then
        printf 'would run: cat > %s  # [Service] Environment=KIOSK_DISPLAY_URL=<the captions page, port from %s>\n' \
            "$dropin" "$ETC/kiosk.yaml"
        return 0
    fi
    if ! url=$("$opt/current/bin/python" -I -c "$DISPLAY_URL_PY" "$config"); then
        say "could not read the captions port from $config (above): $dropin is left as it was (without it, the"
        say "screen shows $(sed -n 's/^Environment=KIOSK_DISPLAY_URL=//p' "$here/systemd/kiosk-display.service"));"
        say "fix the config and run install.sh --display again"
        return 0
    fi
    local text
    text=$(printf '%s\n' \
        "# Written by install.sh --display from $ETC/kiosk.yaml, and again on every run: do not edit. To show" \
        "# another page: systemctl edit kiosk-display (its override.conf comes after this file and wins)." \
        "[Service]" \
        "Environment=KIOSK_DISPLAY_URL=${url//%/%%}")
    if [ -e "$dropin" ] && [ "$(cat "$dropin")" = "$text" ]; then
        say "$dropin: unchanged ($url)"
    elif [ "$dry_run" -eq 1 ]; then
        printf 'would run: cat > %s  # [Service] Environment=KIOSK_DISPLAY_URL=%s\n' "$dropin" "$url"
    else
        say "the screen shows $url ($dropin)"
        mkdir -p "$display_unit.d"
        printf '%s\n' "$text" >"$dropin.tmp"
        chmod 0644 "$dropin.tmp"
        mv -f "$dropin.tmp" "$dropin"
    fi
}

display_start() {
    if [ -n "$root_dir" ]; then
        host systemctl enable --now kiosk-display
        return 0
    fi
    if [ ! -d /run/systemd/system ]; then
        host systemctl enable kiosk-display
        tell "systemd is not running here: kiosk-display is enabled and starts at the next boot"
        return 0
    fi
    # The screen takes tty1 from its getty (Conflicts=getty@tty1.service): started now, it would end the login this
    # installer runs in when that login is on the Pi's own console.
    if [ "$(ps -o tty= -p $$ 2>/dev/null | tr -d ' ')" = tty1 ] && ! systemctl is-active --quiet kiosk-display; then
        host systemctl enable kiosk-display
        tell "kiosk-display is enabled and starts at the next boot (not now: it would take this console, tty1)"
        return 0
    fi
    local action=(enable --now kiosk-display)
    if systemctl is-active --quiet kiosk-display; then
        host systemctl enable kiosk-display
        action=(restart kiosk-display)
    fi
    if ! host systemctl "${action[@]}"; then
        journalctl -u kiosk-display -n 20 --no-pager >&2 || true
        say "kiosk-display did not start (log above); systemd keeps retrying"
        exit 1
    fi
    [ "$dry_run" -eq 1 ] || say "kiosk-display is $(systemctl is-active kiosk-display): journalctl -u kiosk-display -f for its log"
}

# The staff password, asked at the end of an install when someone is at the terminal (never a default one). Enter
# skips it: then the speaker says a setup code when its setup button is held, and the staff page asks for that.
staff_password() {
    [ "$dry_run" -eq 0 ] && [ -z "$root_dir" ] && [ -t 0 ] || return 0
    local first second
    while true; do
        read -rs -p "install.sh: staff password for the settings page (Enter to skip): " first || first=""
        echo
        [ -n "$first" ] || { say "no staff password set: hold the setup button 5 s, the speaker says a setup code"; return 0; }
        read -rs -p "install.sh: the same again: " second || second=""
        echo
        if [ "$first" != "$second" ]; then
            say "the two entries differ; try again"
            continue
        fi
        if printf '%s\n' "$first" | "$OPT/current/bin/kiosk" passwd --stdin; then
            return 0
        fi
    done
}

service_install() {
    setup_paths
    [ "$dry_run" -eq 0 ] || say "dry run: nothing is changed"
    [ -z "$root_dir" ] || say "installing under $root_dir; commands that would change this machine are only printed"
    service_packages
    service_user
    service_dirs
    service_program
    service_key
    service_config
    service_unit
    [ "$with_display" -eq 0 ] || { display_user; display_unit; }
    service_start
    remove_old_layout
    if [ "$with_display" -eq 1 ]; then
        display_start
        tell "installed: $opt/current/bin/kiosk, $etc/kiosk.yaml, $unit, $display_unit"
    else
        tell "installed: $opt/current/bin/kiosk, $etc/kiosk.yaml, $unit"
    fi
    staff_password
}

removed=0

remove() {
    # rm for what exists, so that a second uninstall has nothing to do and says so.
    local path
    for path in "$@"; do
        if [ -e "$path" ] || [ -L "$path" ]; then
            removed=$((removed + 1))
            tell "removing $path"
            run rm -rf -- "$path"
        fi
    done
}

display_uninstall() {
    # The screen goes with the service. systemctl edit's override.conf (the staff's own) is kept unless --purge.
    if [ -e "$display_unit" ] || { [ -z "$root_dir" ] && systemctl cat kiosk-display >/dev/null 2>&1; }; then
        if [ -z "$root_dir" ] && [ -d /run/systemd/system ]; then
            host systemctl disable --now kiosk-display || true
            # The text login on the screen again (the screen had taken tty1 from it).
            host systemctl start getty@tty1.service || true
        elif [ -z "$root_dir" ]; then
            host systemctl disable kiosk-display || true
        else
            host systemctl disable --now kiosk-display
        fi
    fi
    remove "$display_unit" "$display_unit.d/$DISPLAY_DROPIN"
    if [ "$purge" -eq 1 ]; then
        remove "$display_unit.d" "$display_state"
    elif [ -d "$display_unit.d" ] && [ "$dry_run" -eq 0 ]; then
        rmdir --ignore-fail-on-non-empty "$display_unit.d"
    fi
}

service_uninstall() {
    setup_paths
    [ "$dry_run" -eq 0 ] || say "dry run: nothing is changed"
    display_uninstall
    if [ -n "$root_dir" ]; then
        host systemctl disable --now kiosk-update.path kiosk
    elif [ -e "$unit" ] || systemctl cat kiosk >/dev/null 2>&1; then
        if [ -d /run/systemd/system ]; then
            host systemctl disable --now kiosk-update.path kiosk || true
        else
            host systemctl disable kiosk-update.path kiosk || true
        fi
    fi
    local name
    remove "$unit"
    for name in "${UPDATE_UNITS[@]}"; do
        remove "$(dirname "$unit")/$name"
    done
    if [ -n "$root_dir" ] || [ -d /run/systemd/system ]; then
        host systemctl daemon-reload
    fi
    remove "$opt"
    if [ -L "$link" ] && { [ "$(readlink "$link")" = "$OPT/current/bin/kiosk" ] \
        || [ "$(readlink "$link")" = "$OPT/bin/kiosk" ]; }; then
        remove "$link"
    fi
    if [ "$purge" -eq 1 ]; then
        remove "$etc" "$cache" "$state" "$unit.d"
        if [ -n "$root_dir" ] || getent passwd "$USER_NAME" >/dev/null; then
            host deluser --system "$USER_NAME"
        fi
        if [ -n "$root_dir" ] || getent group "$USER_NAME" >/dev/null; then
            host delgroup --system --only-if-empty "$USER_NAME"
        fi
        if [ -n "$root_dir" ] || getent passwd "$DISPLAY_USER" >/dev/null; then
            host deluser --system "$DISPLAY_USER"
        fi
        if [ -n "$root_dir" ] || getent group "$DISPLAY_USER" >/dev/null; then
            host delgroup --system --only-if-empty "$DISPLAY_USER"
        fi
        say "removed the service, its program, config, key, phrase cache, users $USER_NAME and $DISPLAY_USER"
    else
        if [ "$removed" -eq 0 ]; then
            say "the service is not installed${root_dir:+ under $root_dir}: nothing to remove"
        else
            say "removed the service and its program"
        fi
        say "kept $etc (config, key), $cache (phrase cache), $state and user $USER_NAME; --purge removes them"
        if [ -d "$display_state" ] || { [ -z "$root_dir" ] && getent passwd "$DISPLAY_USER" >/dev/null; }; then
            say "kept user $DISPLAY_USER and $display_state (the screen's browser profile); --purge removes them"
        fi
    fi
}

case "$mode" in
    dev) dev_install ;;
    install) service_install ;;
    uninstall) service_uninstall ;;
esac
