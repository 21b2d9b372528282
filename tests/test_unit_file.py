"""systemd/kiosk.service: systemd's own parser accepts every line, and the settings the service relies on are there."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parent.parent
UNIT = REPO / "systemd" / "kiosk.service"
PROGRAM = "/opt/kiosk/current/bin/kiosk"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections → (key, value) pairs in order; keys may repeat (DeviceAllow=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continued lines make this check blind: {line}"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"setting outside a section: {line}"
        current.append((key.strip(), value.strip()))
    return sections


UNIT_TEXT = UNIT.read_text()
SECTIONS = parse_unit(UNIT_TEXT)


def values(section: str, key: str) -> list[str]:
    return [v for k, v in SECTIONS.get(section, []) if k == key]


def one(section: str, key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"[{section}] {key}= should be set once, found {found}"
    return found[0]


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing on CI (Debian package systemd)")
        pytest.skip("systemd-analyze is not installed")
    return path


def verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on `text` as kiosk.service; it exits 0 even when it warns, so read its output."""
    unit = tmp_path / "kiosk.service"
    unit.write_text(text)
    unit.chmod(0o644)  # systemd warns about executable or world-writable unit files
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


def runnable_copy() -> str:
    """The unit with its program (not installed here) swapped for an existing program; nothing else changes.

    verify checks that every Exec*= program exists and is executable; it does not look up User=, Group= or
    SupplementaryGroups=, so the user kiosk need not exist.
    """
    true = shutil.which("true")
    assert true
    text, count = re.subn(rf"^ExecStart={re.escape(PROGRAM)} ", f"ExecStart={true} ", UNIT_TEXT, flags=re.M)
    assert count == 1
    return text


def test_systemd_analyze_verify_is_silent(tmp_path):
    result = verify(tmp_path, runnable_copy())
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_is_not_blind(tmp_path):
    # The check above means something only if verify reads this file and reports what it dislikes.
    broken = (
        runnable_copy()
        .replace("WatchdogSec=20s", "WatchdogSecs=20s")
        .replace("DeviceAllow=char-alsa rw", "DeviceAllow=char-alsa rwz")
    )
    result = verify(tmp_path, broken)
    output = result.stdout + result.stderr
    assert "WatchdogSecs" in output
    assert "rwz" in output


def test_only_the_program_is_missing_here(tmp_path):
    if Path(PROGRAM).exists():
        pytest.skip(f"{PROGRAM} is installed on this machine")
    result = verify(tmp_path, UNIT_TEXT)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines, "verify should miss the program"
    assert all(PROGRAM in line for line in lines), lines


def test_notify_watchdog_and_restart():
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert one("Service", "WatchdogSec") == "20s"
    assert one("Service", "Restart") == "always"
    assert one("Service", "RestartSec") == "2s"
    # A start limit that never gives up: in [Unit], where systemd reads it.
    assert one("Unit", "StartLimitIntervalSec") == "0"
    assert not values("Service", "StartLimitIntervalSec") and not values("Service", "StartLimitInterval")
    # The service exits within 2 s of SIGTERM; the stop timeout is short but above that.
    stop = one("Service", "TimeoutStopSec")
    assert re.fullmatch(r"\d+s", stop) and 2 < int(stop[:-1]) <= 10


def test_program_config_and_reload():
    assert one("Service", "ExecStart") == f"{PROGRAM} run --config /etc/kiosk/kiosk.yaml"
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert "PYTHONUNBUFFERED=1" in values("Service", "Environment")


def test_user_groups_and_directories():
    assert one("Service", "User") == "kiosk"
    assert one("Service", "Group") == "kiosk"
    assert set(one("Service", "SupplementaryGroups").split()) == {"audio", "gpio"}
    for key in ("CacheDirectory", "StateDirectory", "ConfigurationDirectory"):
        assert one("Service", key) == "kiosk"
    # The config directory holds the API key: not readable by others.
    assert int(one("Service", "ConfigurationDirectoryMode"), 8) & 0o007 == 0
    # lgpio writes its notification pipes into the working directory: it must be the writable state directory.
    assert one("Service", "WorkingDirectory") == "/var/lib/kiosk"


def test_example_config_uses_the_cache_directory_systemd_makes():
    config = yaml.safe_load((REPO / "config" / "kiosk.yaml").read_text())
    assert config["cache"]["dir"] == "/var/cache/" + one("Service", "CacheDirectory")


def test_hardening_leaves_sound_and_gpio_reachable():
    # PrivateDevices= would hide /dev/snd and /dev/gpiochip*; PrivateUsers= would unmap the audio and gpio groups.
    assert not values("Service", "PrivateDevices")
    assert not values("Service", "PrivateUsers")
    assert one("Service", "DevicePolicy") == "closed"
    assert set(values("Service", "DeviceAllow")) == {"char-alsa rw", "char-gpiochip rw"}
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert one("Service", key) == value, key
    families = set(one("Service", "RestrictAddressFamilies").split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


def test_ordering_and_install():
    assert {"network-online.target", "sound.target"} <= set(one("Unit", "After").split())
    assert one("Unit", "Wants") == "network-online.target"
    assert not values("Unit", "Requires"), "the service must start without a network"
    assert one("Install", "WantedBy") == "multi-user.target"


def test_update_units_pass_systemd_analyze_verify(tmp_path):
    # The pair that installs updates left by the staff page or the fleet: the path unit starts the root oneshot.
    true = shutil.which("true")
    service = (REPO / "systemd/kiosk-update.service").read_text()
    assert f"ExecStart={PROGRAM} update --spool --config /etc/kiosk/kiosk.yaml" in service
    (tmp_path / "kiosk-update.service").write_text(service.replace(f"ExecStart={PROGRAM} ", f"ExecStart={true} "))
    (tmp_path / "kiosk-update.path").write_text((REPO / "systemd/kiosk-update.path").read_text())
    for name in ("kiosk-update.service", "kiosk-update.path"):
        (tmp_path / name).chmod(0o644)
    result = subprocess.run(
        [systemd_analyze(), "verify", str(tmp_path / "kiosk-update.path"), str(tmp_path / "kiosk-update.service")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    path = parse_unit((REPO / "systemd/kiosk-update.path").read_text())
    assert path["Path"] == [("PathExists", "/var/lib/kiosk/updates/incoming.tar"), ("Unit", "kiosk-update.service")]
