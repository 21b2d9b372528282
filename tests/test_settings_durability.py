"""The staff settings file survives a kill (or power cut) mid-write: the config always loads, old or new."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from settings_writer import VERSIONS

from kiosk.config import load_config

KILLS = 50


def test_settings_file_is_never_torn(tmp_path):
    settings = tmp_path / "staff-settings.yaml"
    operator = tmp_path / "kiosk.yaml"
    operator.write_text(f"staff:\n  settings_file: {settings}\n")
    writer = Path(__file__).with_name("settings_writer.py")
    rng = random.Random(7)
    seen = set()
    for kill in range(KILLS):
        proc = subprocess.Popen([sys.executable, str(writer), str(settings)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        proc.stdout.close()
        if not settings.exists():
            continue
        phrases = load_config(operator).phrases  # never a half-written file
        assert phrases in (VERSIONS[0]["phrases"], VERSIONS[1]["phrases"]), f"torn settings after kill {kill}"
        seen.add(phrases["line-0"][:9])
        backup = settings.with_name(settings.name + ".bak")
        if backup.exists():
            assert backup.read_text().startswith("# Written by the kiosk staff page")
    assert seen == {"Version A", "Version B"}, "the kills should land at different moments"
