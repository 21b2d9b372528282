"""The screen beside the case: `install.sh --display` and systemd/kiosk-display.service.

One staged machine (install.sh --root, so that this machine is left alone) gets the screen with a config whose
captions port is not the default; the unit installed there is checked by systemd's own parser, and then run for
real: cage headless (no screen here) with exactly the unit's ExecStart= command line, as a user who is not root, the
page's address swapped for a small server's on loopback. The server starts listening only after Chromium is up, as
when the speaker is still starting or restarting: the screen must find the page by itself.

Restart=always is systemd's business; only that the unit asks for it is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import web
from test_unit_file import parse_unit

from kiosk.config import Config

REPO = Path(__file__).parent.parent
INSTALL = REPO / "install.sh"
UNIT = REPO / "systemd" / "kiosk-display.service"
UNIT_PATH = "etc/systemd/system/kiosk-display.service"
DROPIN_PATH = "etc/systemd/system/kiosk-display.service.d/captions-url.conf"

API_PORT = 18080
CAPTIONS_PORT = 18181
# The captions pages have a server of their own (captions:) when the program has that section, else the API's.
HAS_CAPTIONS_SERVER = "captions" in Config.__dataclass_fields__
EXPECTED_URL = f"http://127.0.0.1:{CAPTIONS_PORT if HAS_CAPTIONS_SERVER else API_PORT}/captions"

WAIT = 60.0  # every wait in the real run is bounded by this

# install.sh builds the program's virtualenv with pip, as in tests/test_install.py.
pytestmark = pytest.mark.timeout(900)


def install(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
    if Path("/usr/bin/python3").exists():
        env["PYTHON"] = "/usr/bin/python3"
    return subprocess.run([str(INSTALL), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def would_run(result: subprocess.CompletedProcess) -> list[str]:
    return [line.removeprefix("would run: ") for line in result.stdout.splitlines() if line.startswith("would run: ")]


SECTIONS = parse_unit(UNIT.read_text())


def values(key: str, section: str = "Service", sections: dict | None = None) -> list[str]:
    return [v for k, v in (sections or SECTIONS).get(section, []) if k == key]


def one(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"[{section}] {key}= should be set once, found {found}"
    return found[0]


def on_ci_or_skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} on CI (install.sh --dev --test installs it)")
    pytest.skip(reason)


def staged_config() -> str:
    """The example config with the API (and the captions server, where there is one) on ports not the default."""
    text = (REPO / "config" / "kiosk.yaml").read_text()
    text, count = re.subn(r"^(api:\n(?:[ #].*\n|\n)*?  port:) 8080$", rf"\g<1> {API_PORT}", text, flags=re.M)
    assert count == 1, "the example config's api.port moved: update this test"
    if HAS_CAPTIONS_SERVER:
        if re.search(r"^captions:", text, flags=re.M):
            text, count = re.subn(
                r"^(captions:\n(?:[ #].*\n|\n)*?  port:) \d+$", rf"\g<1> {CAPTIONS_PORT}", text, flags=re.M
            )
            assert count == 1, "the example config's captions.port moved: update this test"
        else:
            text += f"\ncaptions:\n  port: {CAPTIONS_PORT}\n"
    return text


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    """A staged machine with the speaker and its screen installed, then uninstalled, then purged (in copies)."""
    root = tmp_path_factory.mktemp("machine")
    (root / "etc/kiosk").mkdir(parents=True)
    (root / "etc/kiosk/kiosk.yaml").write_text(staged_config())
    first = ok(install("--display", "--root", str(root)))
    unit = (root / UNIT_PATH).read_bytes()
    dropin = (root / DROPIN_PATH).read_text()
    again = ok(install("--display", "--root", str(root)))
    # systemctl edit's own drop-in, which uninstall keeps (without --purge).
    (root / "etc/systemd/system/kiosk-display.service.d/override.conf").write_text("[Service]\n")
    kept = root.parent / f"{root.name}-uninstalled"
    shutil.copytree(root, kept, symlinks=True)
    uninstall = ok(install("--uninstall", "--root", str(kept)))
    purge = ok(install("--uninstall", "--purge", "--root", str(root)))
    return {
        "root": root,
        "first": first,
        "again": again,
        "unit": unit,
        "dropin": dropin,
        "kept": kept,
        "uninstall": uninstall,
        "purge": purge,
    }


@pytest.fixture(scope="module")
def installed(machine, tmp_path_factory):
    """The installed unit and drop-in as they were before the uninstalls, in a unit directory of their own."""
    units = tmp_path_factory.mktemp("units")
    (units / "kiosk-display.service").write_bytes(machine["unit"])
    (units / "kiosk-display.service.d").mkdir()
    (units / "kiosk-display.service.d/captions-url.conf").write_text(machine["dropin"])
    for path in (units / "kiosk-display.service", units / "kiosk-display.service.d/captions-url.conf"):
        path.chmod(0o644)  # systemd warns about executable or world-writable unit files
    return units


# --- install.sh ----------------------------------------------------------------------------------------------------


def test_display_installs_the_unit_and_the_url_at_the_configured_port(machine):
    assert machine["unit"] == UNIT.read_bytes()
    dropin = parse_unit(machine["dropin"])
    assert values("Environment", sections=dropin) == [f"KIOSK_DISPLAY_URL={EXPECTED_URL}"]
    assert EXPECTED_URL in machine["first"].stdout


def test_display_enables_the_unit_and_makes_its_user(machine):
    lines = would_run(machine["first"])
    assert "systemctl enable --now kiosk-display" in lines
    assert lines.index("systemctl daemon-reload") < lines.index("systemctl enable --now kiosk-display")
    assert "adduser --system --group --home /var/lib/kiosk-display --no-create-home kiosk-display" in lines
    for group in ("video", "render", "input"):
        assert f"usermod -a -G {group} kiosk-display" in lines
    apt = [line for line in lines if "apt-get install" in line]
    assert len(apt) == 1, "all packages in one apt call"
    assert {"cage", "chromium", "xwayland"} <= set(apt[0].split())


def test_second_run_changes_nothing(machine):
    out = machine["again"].stdout
    assert f"{machine['root']}/{UNIT_PATH}: unchanged" in out
    assert f"{machine['root']}/{DROPIN_PATH}: unchanged" in out


def test_uninstall_removes_the_screen_and_purge_its_user(machine):
    kept, root = machine["kept"], machine["root"]
    assert "systemctl disable --now kiosk-display" in would_run(machine["uninstall"])
    assert not (kept / UNIT_PATH).exists()
    assert not (kept / DROPIN_PATH).exists()
    assert (kept / "etc/systemd/system/kiosk-display.service.d/override.conf").exists(), "the staff's own drop-in"
    assert not (root / UNIT_PATH).exists()
    assert not (root / "etc/systemd/system/kiosk-display.service.d").exists()
    assert "deluser --system kiosk-display" in would_run(machine["purge"])


def test_without_display_nothing_of_the_screen_is_planned(tmp_path):
    result = ok(install("--dry-run", "--root", str(tmp_path / "machine"), timeout=60))
    assert "kiosk-display" not in result.stdout
    apt = [line for line in would_run(result) if "apt-get install" in line]
    assert "cage" not in apt[0].split()


def test_display_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "machine"
    result = ok(install("--display", "--dry-run", "--root", str(root), timeout=60))
    assert not root.exists()
    lines = would_run(result)
    assert f"install -D -m 0644 {UNIT} {root}/{UNIT_PATH}" in lines
    assert any(line.startswith(f"cat > {root}/{DROPIN_PATH}") for line in lines)
    assert "systemctl enable --now kiosk-display" in lines


@pytest.mark.parametrize("args", [["--display", "--dev"], ["--display", "--uninstall"]])
def test_display_goes_with_installing_the_service(args):
    result = install(*args, timeout=30)
    assert result.returncode == 2
    assert "--display" in result.stderr


def test_help_explains_display():
    result = ok(install("--help", timeout=30))
    assert "--display" in result.stdout
    assert "kiosk-display" in result.stdout


def test_test_tools_include_cage_and_xwayland():
    # .ci/run installs with --dev --test; the real run below needs both.
    text = INSTALL.read_text()
    test_packages = text[text.index('if [ "$with_test" -eq 1 ]; then') :]
    test_packages = test_packages[: test_packages.index("\n    fi\n")]
    assert re.search(r"pkgs\+=\(.*\bcage\b.*\)", test_packages)
    assert re.search(r"pkgs\+=\(.*\bxwayland\b.*\)", test_packages)


def display_url(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """install.sh's own snippet that reads the captions URL from a config, run by this checkout's interpreter."""
    snippet = re.search(r"^DISPLAY_URL_PY='\n(.*?)^'$", INSTALL.read_text(), flags=re.M | re.S)
    assert snippet, "DISPLAY_URL_PY moved in install.sh: update this test"
    config = tmp_path / "kiosk.yaml"
    config.write_text(config_text)
    return subprocess.run(
        [sys.executable, "-I", "-c", snippet.group(1), str(config)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not HAS_CAPTIONS_SERVER, reason="the captions pages have no server of their own here")
@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:9001/captions"),
        ("127.0.0.1", "http://127.0.0.1:9001/captions"),
        ("::", "http://127.0.0.1:9001/captions"),
        ("192.168.1.20", "http://192.168.1.20:9001/captions"),
        ("::1", "http://[::1]:9001/captions"),
    ],
)
def test_the_screen_reaches_the_captions_server_where_it_listens(bind, url, tmp_path):
    text = re.sub(r"(?m)^captions:\n(?:[ #].*\n|\n)*", "", (REPO / "config" / "kiosk.yaml").read_text())
    result = display_url(text + f"\ncaptions:\n  bind: '{bind}'\n  port: 9001\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == url


def test_a_port_the_screen_cannot_know_is_refused_in_one_line(tmp_path):
    section = "captions" if HAS_CAPTIONS_SERVER else "api"
    text = staged_config()
    text = re.sub(rf"(?m)^({section}:\n(?:[ #].*\n|\n)*?  port:) \d+$", r"\g<1> 0", text)
    result = display_url(text, tmp_path)
    assert result.returncode != 0
    assert f"{section}.port is 0" in result.stderr
    assert "Traceback" not in result.stderr
    result = display_url("api:\n  port: many\n", tmp_path)
    assert result.returncode != 0
    assert "api.port" in result.stderr and "Traceback" not in result.stderr


# --- the unit -----------------------------------------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        on_ci_or_skip("systemd-analyze is not installed")
    for program in ("/usr/bin/cage", "/usr/bin/chromium"):
        if not Path(program).exists():
            on_ci_or_skip(f"{program} is not installed (apt install cage chromium): verify checks it exists")
    return path


def verify(unit: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on the unit file (an absolute path, so that its drop-ins beside it are read too);
    it exits 0 even when it warns, so read its output."""
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        cwd=unit.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


def test_systemd_analyze_verify_is_silent(installed):
    result = verify(installed / "kiosk-display.service")
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_reads_the_unit_and_its_drop_in(installed, tmp_path):
    units = tmp_path / "units"
    shutil.copytree(installed, units)
    unit = units / "kiosk-display.service"
    unit.write_text(unit.read_text().replace("RestartSec=2s", "RestartSecs=2s"))
    with (units / "kiosk-display.service.d/captions-url.conf").open("a") as f:
        f.write("EnvironmentFiles=/nowhere\n")
    output = verify(unit)
    assert "RestartSecs" in output.stdout + output.stderr
    assert "EnvironmentFiles" in output.stdout + output.stderr


def test_restarts_always_and_follows_the_speaker():
    assert one("Restart") == "always"
    restart_sec = one("RestartSec")
    assert re.fullmatch(r"\d+s", restart_sec) and 0 < int(restart_sec[:-1]) <= 5
    assert one("StartLimitIntervalSec", "Unit") == "0"
    assert "kiosk.service" in " ".join(values("After", "Unit")).split()
    assert "kiosk.service" in " ".join(values("Wants", "Unit")).split()
    assert not values("Requires", "Unit") and not values("BindsTo", "Unit"), "the screen outlives a speaker restart"
    assert one("WantedBy", "Install") == "multi-user.target"


def test_runs_as_its_own_user_in_a_login_session_on_the_console():
    assert one("User") == "kiosk-display"
    assert one("PAMName") == "login"
    assert one("TTYPath") == "/dev/tty1"
    assert "getty@tty1.service" in one("Conflicts", "Unit").split()
    assert one("StateDirectory") == "kiosk-display"


def test_chromium_is_a_kiosk():
    words = shlex.split(one("ExecStart"))
    assert words[:3] == ["/usr/bin/cage", "--", "/usr/bin/chromium"]
    assert words[-1] == "${KIOSK_DISPLAY_URL}"
    flags = set(words[3:-1])
    for flag in (
        "--kiosk",
        "--no-first-run",
        "--noerrdialogs",
        "--disable-infobars",
        "--disable-pinch",
        "--disable-session-crashed-bubble",
        "--incognito",
        "--user-data-dir=%S/kiosk-display/chromium",
    ):
        assert flag in flags, flag
    assert any(f.startswith("--disable-features=") and "Translate" in f for f in flags)
    interval = next(f for f in flags if f.startswith("--check-for-update-interval="))
    assert int(interval.partition("=")[2]) >= 86400 * 30


def test_hardening_that_chromium_survives():
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelModules", "ProtectControlGroups"):
        assert one(key) == "yes", key
    # Chromium's sandbox, JIT and GPU: these would break it.
    for key in ("RestrictNamespaces", "MemoryDenyWriteExecute", "PrivateDevices", "DevicePolicy", "ProtectClock"):
        assert not values(key), key


# --- a real run ---------------------------------------------------------------------------------------------------

PAGE = """<!doctype html>
<title>captions</title>
<p>Captions</p>
<script>fetch("/seen?page=" + encodeURIComponent(location.pathname));</script>
"""


def exec_start(installed: Path, state_root: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart= as systemd would run it (unit and drop-in read in order, the last Environment= of a
    name wins): the words, with the specifiers and ${VAR} this unit uses expanded; and the unit's environment."""
    sections = parse_unit((installed / "kiosk-display.service").read_text())
    dropin = parse_unit((installed / "kiosk-display.service.d/captions-url.conf").read_text())
    environment: dict[str, str] = {}
    for assignment in values("Environment", sections=sections) + values("Environment", sections=dropin):
        for word in shlex.split(assignment):
            name, _, value = word.partition("=")
            environment[name] = value

    def specifiers(text: str) -> str:
        def one_specifier(m: re.Match) -> str:
            known = {"%": "%", "S": str(state_root)}
            assert m.group(1) in known, f"a specifier this test does not know: %{m.group(1)}"
            return known[m.group(1)]

        return re.sub(r"%(.)", one_specifier, text)

    environment = {k: specifiers(v) for k, v in environment.items()}
    line = values("ExecStart", sections=sections)
    assert len(line) == 1
    words = []
    for word in shlex.split(specifiers(line[0])):
        word = re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], word)
        assert "$" not in word, f"an expansion this test does not do: {word}"
        words.append(word)
    return words, environment


def display_user() -> tuple[int, int] | None:
    """The user the screen runs as here: nobody when the tests run as root (cage refuses root), else oneself."""
    if os.getuid() != 0:
        return None
    user = pwd.getpwnam("nobody")
    return user.pw_uid, user.pw_gid


def own(path: Path, user: tuple[int, int] | None) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    if user is not None:
        os.chown(path, *user)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen) -> None:
    """Ends cage, Chromium and everything they started (one process group), within a bound."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if not group_alive(proc.pid):
                return
            time.sleep(0.1)
    proc.wait(timeout=5)


async def wait_for(condition, what: str, proc: subprocess.Popen, log: Path, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"cage exited ({proc.returncode}) before {what}:\n{log.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")
        await asyncio.sleep(0.2)


def chromium_running(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) == pgid and "chrom" in (proc / "comm").read_text():
                return True
        except (OSError, ProcessLookupError):
            continue
    return False


async def test_cage_shows_the_page_even_when_the_server_starts_later(installed):
    for program in ("cage", "Xwayland", "chromium"):
        if shutil.which(program) is None:
            on_ci_or_skip(f"{program} is not installed (apt install cage xwayland chromium): no real run")
    user = display_user()
    if user is not None and shutil.which("setpriv") is None:
        on_ci_or_skip("setpriv (util-linux) is not installed: cannot run cage as a user other than root")

    seen: list[str] = []

    async def captions(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text=PAGE, content_type="text/html")

    async def seen_handler(request: web.Request) -> web.Response:
        seen.append(f"/seen from {request.query.get('page')}")
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes([web.get("/captions", captions), web.get("/seen", seen_handler)])

    # The port is taken but nobody listens yet: Chromium's first load is refused, as before the speaker is up.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/captions"

    # /tmp, not pytest's tmp_path: the other user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="kiosk-display-"))
    base.chmod(0o755)
    runtime, state_root = base / "run", base / "state"
    own(runtime, user)
    state_root.mkdir()
    own(state_root / "kiosk-display", user)  # what StateDirectory= makes

    words, environment = exec_start(installed, state_root)
    assert words.count(EXPECTED_URL) == 1, words
    words[words.index(EXPECTED_URL)] = url
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        **environment,
        # What the login session gives on the Pi, and a screen that is not there.
        "XDG_RUNTIME_DIR": str(runtime),
        "WLR_BACKENDS": "headless",
        "WLR_RENDERER": "pixman",
    }
    argv = words
    if user is not None:
        # NoNewPrivileges=yes as in the unit: Chromium's sandbox must still work.
        uid, gid = user
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs", "--", *words]

    log = base / "cage.log"
    runner = web.AppRunner(app)
    await runner.setup()
    proc = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=str(state_root / "kiosk-display"), stdout=out, stderr=out, start_new_session=True
            )
        await wait_for(lambda: any(runtime.glob("wayland-*")), "Wayland socket from cage", proc, log)
        await wait_for(lambda: chromium_running(proc.pid), "Chromium process", proc, log)
        await asyncio.sleep(3)  # Chromium's first load finds nobody listening
        assert not seen
        site = web.SockSite(runner, sock)
        await site.start()
        await wait_for(lambda: "/captions" in seen, "GET /captions (Chromium reloading by itself)", proc, log)
        await wait_for(lambda: "/seen from /captions" in seen, "GET /seen from the page's script", proc, log)
        assert proc.poll() is None, "cage exited"
    finally:
        if proc is not None:
            stop_group(proc)
        await runner.cleanup()
        sock.close()
        shutil.rmtree(base, ignore_errors=True)
    assert not group_alive(proc.pid)
