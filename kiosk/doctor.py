"""`kiosk doctor`: check everything a speaker needs, one line each, with what to do about a problem.

Run by a user who cannot read the config or key file it says in one line to run it with sudo; ALSA's own
"ALSA lib ... cannot find card" lines (written by alsa-lib in C to file descriptor 2) are kept off the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiosk.alsa_output import AlsaOutput, mixer_report
from kiosk.build import build_engine
from kiosk.buttons import pin_factory_report
from kiosk.clock import NOT_SET, system_synchronized
from kiosk.config import Config, resolve_api_key
from kiosk.errors import KioskError

LOW_DISK_BYTES = 200_000_000
BROKER_TIMEOUT_S = 5.0


@dataclass
class Finding:
    level: str  # "ok", "warn", "fail"
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.level.upper():4}  {self.what}: {self.detail}"


def run_checks(cfg: Config, config_path: str) -> list[Finding]:
    checks: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("config", lambda: ("ok", f"{config_path}: {len(cfg.phrases)} lines, {len(cfg.buttons)} buttons")),
        ("audio device", lambda: _device(cfg)),
        ("mixer", lambda: _mixer(cfg)),
        ("GPIO", lambda: _gpio(cfg)),
        ("clock", lambda: _clock(cfg)),
        ("API key", lambda: _api_key(cfg)),
        ("speech engine", lambda: _engine(cfg)),
        ("cache", lambda: _cache_writable(cfg)),
        ("disk", lambda: _disk(cfg)),
    ]
    if cfg.mqtt.enabled:
        checks.append(("MQTT broker", lambda: broker(cfg)))
    findings = []
    for what, check in checks:
        try:
            level, detail = check()
        except KioskError as exc:
            level, detail = "fail", str(exc)
        findings.append(Finding(level, what, detail))
    return findings


def needs_sudo(paths: list[Path | None]) -> str | None:
    """One line saying to use sudo, when one of `paths` exists but this user may not read it; else None."""
    for path in paths:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except PermissionError:
            user = getpass.getuser()
            return f"kiosk doctor: {path} cannot be read as {user}: run it with sudo (sudo kiosk doctor)"
        except OSError:
            continue  # missing or otherwise unusable: the checks say so
    return None


@contextlib.contextmanager
def alsa_quiet() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while: alsa-lib prints its own errors there from C."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _device(cfg: Config) -> tuple[str, str]:
    engine = build_engine(cfg)
    with alsa_quiet():
        out = AlsaOutput(cfg.audio.device, engine.fmt, cfg.audio.period_ms, cfg.audio.buffer_periods)
        out.close()
    return "ok", f"'{cfg.audio.device}' opens at {engine.fmt.rate} Hz ({engine.fmt.describe()})"


def _mixer(cfg: Config) -> tuple[str, str]:
    with alsa_quiet():
        ok, detail = mixer_report(cfg.audio.device)
    return ("ok" if ok else "fail"), detail


def _gpio(cfg: Config) -> tuple[str, str]:
    name, detail = pin_factory_report()
    if not cfg.buttons:
        return "ok", f"no buttons configured ({detail})"
    return ("ok" if name not in (None, "mock") else "warn" if name == "mock" else "fail"), detail


def _clock(cfg: Config) -> tuple[str, str]:
    if not cfg.clock.check:
        return "ok", "trusted as it is (clock.check: false)"
    if system_synchronized():
        return "ok", "synchronized"
    fallback = "always open" if cfg.clock.untrusted_hours == "open" else "closed"
    return "warn", f"{NOT_SET}: not synchronized yet; no announcements, and {fallback} until it is"


def _api_key(cfg: Config) -> tuple[str, str]:
    key = resolve_api_key(cfg.openai)
    if key is None:
        return "warn", "no OpenAI key (OPENAI_API_KEY or openai.api_key_file); uncached lines use the local voice"
    source = "OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else str(cfg.openai.api_key_file)
    return "ok", f"set ({len(key)} characters, from {source})"


def _engine(cfg: Config) -> tuple[str, str]:
    engine = build_engine(cfg)

    async def probe() -> None:
        try:
            await engine.probe()
        finally:
            await engine.aclose()

    asyncio.run(probe())
    return "ok", f"{engine.name} reachable"


def _cache_writable(cfg: Config) -> tuple[str, str]:
    root = cfg.cache.dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
    except OSError as exc:
        return "fail", f"{root} is not writable ({exc.strerror or exc}): new lines will not be cached"
    entries = sum(1 for _ in root.glob("*.pcm"))
    return "ok", f"{root} writable, {entries} entries"


def broker(cfg: Config) -> tuple[str, str]:
    """Log in to the MQTT broker as the speaker does (credentials, TLS), within a few seconds."""
    from kiosk.fleet.mqtt import probe  # the MQTT client, only when a broker is configured

    where = f"{cfg.mqtt.host.strip()}:{cfg.mqtt.port}"
    problem = asyncio.run(probe(cfg.mqtt, timeout=BROKER_TIMEOUT_S))
    if problem:
        return "fail", f"cannot reach the broker at {where}: {problem}"
    tls = "TLS" if cfg.mqtt.tls_ca_file else "no TLS"
    login = f"as {cfg.mqtt.username}" if cfg.mqtt.username else "anonymously"
    return "ok", f"{where} accepts this speaker ({login}, {tls})"


def _disk(cfg: Config) -> tuple[str, str]:
    usage = shutil.disk_usage(cfg.cache.dir if cfg.cache.dir.exists() else cfg.cache.dir.parent)
    detail = f"{usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB"
    return ("warn" if usage.free < LOW_DISK_BYTES else "ok"), detail
