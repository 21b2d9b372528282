#!/usr/bin/env bash
# Exhibit speaker installer.
#
#   ./install.sh --dev [--test]   set up a development checkout: system packages (when root), ./.venv with the
#                                 product installed editable; --test adds the test tools (pytest, PulseAudio).
#
# Safe to run again: every step checks before it changes anything.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mode=""
with_test=0
python=${PYTHON:-python3}

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dev) mode=dev ;;
        --test) with_test=1 ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done
[ -n "$mode" ] || usage 2

say() { printf 'install.sh: %s\n' "$*"; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        say "please install these Debian packages first (as root): ${missing[*]}"
        exit 1
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

system_packages() {
    # libasound2-dev and gcc build pyalsaaudio; alsa-utils gives aplay -L for finding devices.
    local pkgs=(libasound2 libasound2-dev alsa-utils gcc)
    "$python" -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
    "$python" -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
        2>/dev/null || pkgs+=(python3-dev)
    if [ "$with_test" -eq 1 ]; then
        # A PulseAudio null sink behind ALSA's pulse plugin is the test suite's clocked audio device.
        pkgs+=(pulseaudio libasound2-plugins)
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

case "$mode" in
    dev) dev_install ;;
esac
