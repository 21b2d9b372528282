"""install.sh installing the service, staged under --root so that this machine is left alone.

One staged machine goes through a staff member's life with it: install, edit the config, install again (an update),
uninstall, uninstall --purge. The program's virtualenv is really built by pip with the local voice, its dependencies
coming from pip's cache or package index as on a Pi, so the first install takes a while; everything else is quick.
"""

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).parent.parent
INSTALL = REPO / "install.sh"
EXAMPLE = REPO / "config" / "kiosk.yaml"
UNIT = REPO / "systemd" / "kiosk.service"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

KEY = "sk-install-test-6f1d0c2a9b8e4f7d"
OTHER_KEY = "sk-install-test-other-3e5a7c9b1d2f"
STAFF_LINE = "# edited by staff: the quartz line is new\n"

# pip builds the whole virtualenv on the first install.
pytestmark = pytest.mark.timeout(900)


def venv_python() -> str:
    """Debian's python3 as on the Pi; else the interpreter behind this test run."""
    debian = "/usr/bin/python3"
    if Path(debian).exists():
        probe = subprocess.run([debian, "-c", "import venv, ensurepip"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return debian
    return getattr(sys, "_base_executable", sys.executable)


PYTHON = venv_python()


def install(*args: str, key: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
    env["PYTHON"] = PYTHON
    if key is not None:
        env["OPENAI_API_KEY"] = key
    return subprocess.run([str(INSTALL), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def would_run(result: subprocess.CompletedProcess) -> list[str]:
    return [line.removeprefix("would run: ") for line in result.stdout.splitlines() if line.startswith("would run: ")]


def snapshot(root: Path) -> dict:
    """Every path under root with its type and mode; file contents too, except in the virtualenv (size and mtime)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if path.is_symlink():
            tree[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            tree[rel] = ("dir", mode)
        elif rel.startswith("opt/kiosk/"):
            tree[rel] = ("file", mode, st.st_size, st.st_mtime_ns)
        else:
            tree[rel] = ("file", mode, path.read_bytes())
    return tree


def package_files(package: Path) -> set[str]:
    """The files of the kiosk package (modules and data such as templates), without compiled bytecode."""
    return {
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def without_venv(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if not k.startswith("opt/kiosk/")}


def kiosk_user_exists() -> bool:
    try:
        pwd.getpwnam("kiosk")
    except KeyError:
        return False
    return True


def plant_old_layout(root: Path) -> None:
    """What an install from before releases left: a virtualenv at /opt/kiosk itself, and the command linked to it."""
    opt = root / "opt/kiosk"
    (opt / "bin").mkdir()
    (opt / "bin/kiosk").write_text("#!/bin/sh\n")
    (opt / "lib/python3.11/site-packages").mkdir(parents=True)
    (opt / "pyvenv.cfg").write_text("home = /usr/bin\n")
    link = root / "usr/local/bin/kiosk"
    link.unlink()
    link.symlink_to("/opt/kiosk/bin/kiosk")


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    """Runs the whole life of one staged machine and records what each step left behind."""
    root = tmp_path_factory.mktemp("machine")
    rec = SimpleNamespace(root=root, user_before=kiosk_user_exists())
    checkout_before = {p.name for p in REPO.iterdir()}

    rec.first = ok(install("--root", str(root), key=KEY))
    rec.after_first = snapshot(root)
    rec.config_first = (root / "etc/kiosk/kiosk.yaml").read_text()
    rec.key_first = (root / "var/lib/kiosk/openai.key").read_text()
    rec.key_mode = stat.S_IMODE((root / "var/lib/kiosk/openai.key").stat().st_mode)
    rec.key_uid = (root / "var/lib/kiosk/openai.key").stat().st_uid
    rec.version = subprocess.run(
        [str(root / "opt/kiosk/current/bin/kiosk"), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rec.module = subprocess.run(
        [str(root / "opt/kiosk/current/bin/python"), "-I", "-c", "import kiosk; print(kiosk.__file__)"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rec.checkout_new = {p.name for p in REPO.iterdir()} - checkout_before
    installed_package = Path(rec.module.stdout.strip()).parent
    rec.installed_files = package_files(installed_package) if rec.module.returncode == 0 else None

    # Staff edit the config; a phrase is cached. Then an update, with a different key in the environment.
    with (root / "etc/kiosk/kiosk.yaml").open("a") as f:
        f.write(STAFF_LINE)
    (root / "var/cache/kiosk/0123abcd.pcm").write_bytes(b"cached line")
    rec.before_second = snapshot(root)
    plant_old_layout(root)
    rec.second = ok(install("--root", str(root), key=OTHER_KEY))
    rec.after_second = snapshot(root)
    rec.version_second = subprocess.run(
        [str(root / "opt/kiosk/current/bin/kiosk"), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    rec.uninstall_dry = ok(install("--uninstall", "--purge", "--dry-run", "--root", str(root)))
    rec.after_uninstall_dry = snapshot(root)

    rec.uninstall = ok(install("--uninstall", "--root", str(root)))
    rec.after_uninstall = snapshot(root)
    rec.uninstall_again = ok(install("--uninstall", "--root", str(root)))

    rec.purge = ok(install("--uninstall", "--purge", "--root", str(root)))
    rec.after_purge = snapshot(root)
    rec.user_after = kiosk_user_exists()
    return rec


def test_first_install_puts_everything_in_place(life):
    tree = life.after_first
    assert tree["etc/systemd/system/kiosk.service"] == ("file", 0o644, UNIT.read_bytes())
    assert tree["etc/kiosk"] == ("dir", 0o750)
    assert tree["etc/kiosk/kiosk.yaml"][1] == 0o640
    assert tree["usr/local/bin/kiosk"] == ("link", "/opt/kiosk/current/bin/kiosk")
    # The program is a release of its own, named by the link the service runs and kiosk update switches.
    assert tree["opt/kiosk/current"] == ("link", f"releases/{VERSION}")
    assert "opt/kiosk/previous" not in tree
    for name in ("kiosk-update.path", "kiosk-update.service"):
        assert tree[f"etc/systemd/system/{name}"] == ("file", 0o644, (REPO / "systemd" / name).read_bytes())
    assert tree["var/cache/kiosk"][0] == "dir"
    assert tree["var/lib/kiosk"][0] == "dir"
    assert "installed:" in life.first.stdout


def test_config_is_the_example_naming_the_key_file(life):
    example = EXAMPLE.read_text()
    assert "  api_key_file:\n" in example
    assert life.config_first == example.replace("  api_key_file:\n", "  api_key_file: /var/lib/kiosk/openai.key\n")


def test_key_file_is_private_and_holds_the_key(life):
    assert life.key_mode == 0o600
    assert life.key_first.strip() == KEY
    # chown to kiosk is printed, not run: the file stays with whoever ran the test.
    assert life.key_uid == os.getuid()
    assert f"chown kiosk:kiosk {life.root}/var/lib/kiosk/openai.key" in would_run(life.first)


def test_key_never_appears_in_the_output(life):
    for result in (life.first, life.second, life.uninstall, life.purge):
        for text in (result.stdout, result.stderr):
            assert KEY not in text
            assert OTHER_KEY not in text


def test_commands_that_change_this_machine_are_only_printed(life):
    lines = would_run(life.first)
    assert "systemctl daemon-reload" in lines
    assert "systemctl enable --now kiosk" in lines
    assert "systemctl enable --now kiosk-update.path" in lines
    assert "adduser --system --group --home /var/lib/kiosk --no-create-home kiosk" in lines
    assert "usermod -a -G audio kiosk" in lines
    assert "usermod -a -G gpio kiosk" in lines
    apt = [line for line in lines if "apt-get install" in line]
    assert len(apt) == 1
    for pkg in ("python3-venv", "python3-dev", "gcc", "libasound2-dev", "alsa-utils"):
        assert pkg in apt[0].split()
    if not life.user_before:
        assert not life.user_after, "install.sh created the user kiosk on this machine"


def test_program_is_installed_and_runs(life):
    assert life.version.returncode == 0, life.version.stderr
    assert life.version.stdout.strip() == f"kiosk {VERSION}"
    # A real copy inside /opt/kiosk, not a link back to the checkout.
    # (run as current/bin/python, whose link names releases/<version>, checked above)
    assert life.module.stdout.strip().startswith(f"{life.root}/opt/kiosk/current/lib/")
    # Built from a copy: nothing (build/, *.egg-info) was written into the checkout.
    assert not life.checkout_new


def test_installed_package_has_every_file_of_the_source(life):
    # A wheel leaves out files that are not Python unless the packaging names them (templates, voices, ...): the
    # development checkout, installed editable, would never notice.
    assert life.installed_files is not None, life.module.stderr
    missing = package_files(REPO / "kiosk") - life.installed_files
    assert not missing, f"not installed into /opt/kiosk: {sorted(missing)}"


def test_second_run_keeps_staff_config_and_key(life):
    out = life.second.stdout
    assert f"kept {life.root}/etc/kiosk/kiosk.yaml" in out
    assert f"kept {life.root}/var/lib/kiosk/openai.key" in out
    assert "OPENAI_API_KEY differs" in out
    assert life.after_second["etc/kiosk/kiosk.yaml"][2].decode().endswith(STAFF_LINE)
    assert life.after_second["var/lib/kiosk/openai.key"][2].decode().strip() == KEY
    assert "unchanged" in out


def test_second_run_gives_the_same_result(life):
    assert without_venv(life.after_second) == without_venv(life.before_second)
    # The program was reinstalled, not duplicated or lost.
    assert life.version_second.stdout.strip() == f"kiosk {VERSION}"
    first_bin = {k for k in life.after_first if k.startswith(f"opt/kiosk/releases/{VERSION}/bin/")}
    second_bin = {k for k in life.after_second if k.startswith(f"opt/kiosk/releases/{VERSION}/bin/")}
    assert first_bin and first_bin == second_bin
    assert life.after_second["opt/kiosk/current"] == ("link", f"releases/{VERSION}")
    assert "opt/kiosk/previous" not in life.after_second


def test_an_install_from_before_releases_is_moved_to_one(life):
    # plant_old_layout put a virtualenv at /opt/kiosk itself before the second run: it is gone, the command follows
    # the current release, and the second run's tree is the first's (checked above).
    assert "removing the program's old layout" in life.second.stdout
    for part in ("bin", "lib", "pyvenv.cfg"):
        assert f"opt/kiosk/{part}" not in life.after_second
    assert life.after_second["usr/local/bin/kiosk"] == ("link", "/opt/kiosk/current/bin/kiosk")


def test_dry_run_uninstall_changes_nothing(life):
    assert life.after_uninstall_dry == life.after_second
    lines = would_run(life.uninstall_dry)
    assert f"rm -rf -- {life.root}/opt/kiosk" in lines
    assert f"rm -rf -- {life.root}/etc/kiosk" in lines


def test_uninstall_removes_program_and_unit_keeps_config_and_cache(life):
    tree = life.after_uninstall
    assert not any(k == "opt/kiosk" or k.startswith("opt/kiosk/") for k in tree)
    assert "etc/systemd/system/kiosk.service" not in tree
    assert "etc/systemd/system/kiosk-update.path" not in tree
    assert "etc/systemd/system/kiosk-update.service" not in tree
    assert "usr/local/bin/kiosk" not in tree
    assert tree["etc/kiosk/kiosk.yaml"][2].decode().endswith(STAFF_LINE)
    assert tree["var/lib/kiosk/openai.key"][2].decode().strip() == KEY
    assert tree["var/cache/kiosk/0123abcd.pcm"][2] == b"cached line"
    assert "var/lib/kiosk" in tree
    assert "systemctl disable --now kiosk-update.path kiosk" in would_run(life.uninstall)
    assert "--purge" in life.uninstall.stdout
    assert "nothing to remove" in life.uninstall_again.stdout


def test_purge_removes_config_cache_and_user(life):
    tree = life.after_purge
    for gone in ("etc/kiosk", "var/cache/kiosk", "var/lib/kiosk", "opt/kiosk", "etc/systemd/system/kiosk.service"):
        assert gone not in tree
    assert "deluser --system kiosk" in would_run(life.purge)


def test_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "machine"
    result = ok(install("--dry-run", "--root", str(root), key=KEY, timeout=60))
    assert not root.exists()
    lines = would_run(result)
    release = f"{root}/opt/kiosk/releases/{VERSION}"
    assert f"{PYTHON} -m venv --clear --system-site-packages {release}" in lines
    assert any(line.startswith(f"{release}/bin/python -m pip install") for line in lines)
    assert f"mv -T {root}/opt/kiosk/.current.new {root}/opt/kiosk/current" in lines
    assert f"install -m 0640 {EXAMPLE} {root}/etc/kiosk/kiosk.yaml" in lines
    assert f"install -D -m 0644 {UNIT} {root}/etc/systemd/system/kiosk.service" in lines
    assert "systemctl enable --now kiosk" in lines
    assert any("OPENAI_API_KEY" in line and f"{root}/var/lib/kiosk/openai.key" in line for line in lines)
    assert KEY not in result.stdout + result.stderr


def test_dry_run_without_key_still_names_the_key_file(tmp_path):
    """The staff page can enter a key later: the installed config always names where it goes."""
    root = tmp_path / "machine"
    result = ok(install("--dry-run", "--root", str(root), timeout=60))
    assert not root.exists()
    assert any("api_key_file: /var/lib/kiosk/openai.key" in line for line in would_run(result))
    assert "no OpenAI key" in result.stdout


def test_help_lists_every_mode_and_option():
    result = ok(install("--help", timeout=30))
    for word in ("--dev", "--test", "--uninstall", "--purge", "--root DIR", "--dry-run", "--help", "OPENAI_API_KEY"):
        assert word in result.stdout, word


@pytest.mark.parametrize(
    "args",
    [
        ["--frobnicate"],
        ["--test"],
        ["--purge"],
        ["--root"],
        ["--dev", "--root", "/tmp/x"],
        ["--dev", "--uninstall"],
    ],
)
def test_bad_arguments_exit_2_with_usage(args):
    result = install(*args, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "install.sh: " in result.stderr
    assert "--uninstall" in result.stderr and "--root DIR" in result.stderr  # the usage text


def test_as_a_user_with_sudo_all_apt_work_is_one_sudo_call(tmp_path):
    """Run as `nobody` (not root), the plan asks sudo once, for apt update and install together; nothing else the
    plan runs goes through sudo."""
    if os.getuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root to run the installer as another user (runuser)")
    probe = subprocess.run(["runuser", "-u", "nobody", "--", "test", "-r", str(INSTALL)], timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot read {INSTALL}")
    root = tmp_path / "machine"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": PYTHON, "HOME": "/nonexistent"}
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(INSTALL), "--dry-run", "--root", str(root)],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ok(result)
    lines = would_run(result)
    with_sudo = [line for line in lines if line.split()[0] == "sudo"]
    assert len(with_sudo) == 1, lines
    words = with_sudo[0].split()
    assert words[:3] == ["sudo", "sh", "-c"]
    assert "apt-get update -qq &&" in with_sudo[0] and "apt-get install -y" in with_sudo[0]
    for pkg in ("python3-venv", "python3-dev", "gcc", "libasound2-dev", "alsa-utils"):
        assert pkg in words
    assert not any("apt-get" in line for line in lines if line not in with_sudo)
    assert not root.exists()
