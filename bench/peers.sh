#!/bin/sh
# The real peers the benchmark measures kiosk against, in their own venv so their pins never touch the product's:
# the openai SDK's LocalAudioPlayer (numpy + sounddevice) and RealtimeTTS with its OpenAI engine (PyAudio).
# Both play through PortAudio, which needs the system library (apt install libportaudio2 portaudio19-dev; the
# headers build PyAudio) and reaches the benchmark's PulseAudio null sink through ALSA's `pulse` plugin
# (libasound2-plugins).
#
#     bench/peers.sh            # creates bench/.peers-venv (about 390 MB: numba and llvmlite come with resampy)
# Pinned to the versions bench/README.md's figures were measured with.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
VENV="$HERE/.peers-venv"
PYTHON=${PYTHON:-python3.11}
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet \
    "openai==3.63.0" "numpy==2.4.6" "sounddevice==0.5.6" \
    "realtimetts[openai]==0.8.10" "pyaudio==0.2.14"
echo "peers venv ready: $VENV"
