"""Staff account and settings: change the password, download the staff settings, restore them from a file.

Plain functions over the password file and the settings file, so the rules are tested without HTTP; the staff
page's handlers only carry their answers to the browser.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kiosk.config import load_config, read_staff_settings, yaml_mapping_of
from kiosk.errors import ConfigError
from kiosk.fileio import write_atomically
from kiosk.staff.auth import PasswordFile, password_problem

SETTINGS_HEADER = b"# Written by the kiosk staff page. The operator's settings stay in kiosk.yaml.\n"


def password_change_errors(passwords: PasswordFile, current: str, new: str, repeat: str) -> dict[str, str]:
    """Why the password cannot be changed, by form field ({} when it may). Checks the current one (slow)."""
    if not passwords.check(current):
        return {"current": "this is not the current password"}
    problem = password_problem(new)
    if problem:
        return {"new": problem}
    if new != repeat:
        return {"repeat": "the two new passwords differ"}
    return {}


def settings_file_bytes(settings_path: Path) -> bytes:
    """The staff settings as a file to keep (a valid, empty one when staff have changed nothing yet, or when the
    file could not be read: it is then set aside, see read_staff_settings)."""
    settings = read_staff_settings(settings_path)
    return SETTINGS_HEADER + yaml.safe_dump(settings, allow_unicode=True, sort_keys=False).encode()


def restore_settings(config_path: Path, settings_path: Path, upload: bytes) -> None:
    """Replace the staff settings with `upload` once it passes every rule of the config file together with the
    operator's kiosk.yaml; the settings it replaces are kept as `<file>.bak`. Raises ConfigError listing every
    problem, and then nothing has changed."""
    settings = yaml_mapping_of(upload, "the uploaded file")
    load_config(config_path, settings, uploaded=True)  # raises ConfigError with every problem
    write_settings(settings_path, settings)


def write_settings(path: Path, settings: dict) -> None:
    """Save the staff settings atomically, the previous ones kept as `<file>.bak`. A previous file that cannot be
    read is set aside first: as the .bak alone it would be lost at the save after this one."""
    read_staff_settings(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = yaml.safe_dump(settings, allow_unicode=True, sort_keys=False).encode()  # lines keep their order
        write_atomically(path, SETTINGS_HEADER, body, mode=0o640, backup=True)
    except OSError as exc:
        raise ConfigError([f"could not save: {exc.strerror or exc}"]) from exc
