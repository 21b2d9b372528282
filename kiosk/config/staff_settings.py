"""The staff page's settings, laid over the operator's file (which is never written): what staff may set, where
the settings file is, and what becomes of one that cannot be used (set aside, and told on the status).
Reading the file is kiosk.config.loader's (`read_staff_settings`), with the same bounds as the config file."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

from kiosk.config.fields import _INVALID, _kind, _scalar, _show, _str
from kiosk.config.web import StaffConfig

log = logging.getLogger("kiosk.config")  # the name the config's log lines have always had
#: Staff settings that cannot be used are renamed `<file>.corrupt-<time>`: kept for a human, out of the way of saves.
SET_ASIDE = ".corrupt-"


#: What the staff page may set, laid over the operator's file: section → keys (None: the whole section).
STAFF_SETTABLE: dict[str, set[str] | None] = {
    "phrases": None,
    "quiet_hours": None,
    "schedule": None,
    "speech": {"engine"},
    "openai": {"model", "voice", "instructions", "speed"},
    "piper": {"voice"},
    "audio": {"volume"},
    "button_phrases": None,
}


def overlay_staff_settings(base: dict, staff: dict, source: str, problems: list[str], *, strict: bool = False) -> dict:
    """The operator's config with the staff settings laid over it (the operator's file itself is never written).

    `button_phrases` ({pin: phrase id}) re-assigns the lines of buttons the operator's file defines.
    """
    merged = dict(base)
    for section, value in staff.items():
        keys = STAFF_SETTABLE.get(section, set())
        if section not in STAFF_SETTABLE and not strict and _later_setting(section):
            log.warning("staff settings %s: %s is not known to this version of kiosk; ignored", source, _show(section))
        elif section not in STAFF_SETTABLE and (home := _section_of(section)):
            problems.append(f"{source}: {_show(section)}: belongs under {home}: (as {home}: {{{section}: …}})")
        elif section not in STAFF_SETTABLE:
            problems.append(f"{source}: {_show(section)}: cannot be set from the staff page")
        elif section == "button_phrases":
            merged["buttons"] = _assign_buttons(base.get("buttons"), value, source, problems, strict)
        elif keys is None:
            merged[section] = value
        elif isinstance(value, dict):
            for key in set(value) - keys:
                if not strict and _later_setting(section, key):
                    shown = f"{section}.{_show(key)}"
                    log.warning("staff settings %s: %s is not known to this version of kiosk; ignored", source, shown)
                else:
                    problems.append(f"{source}: {section}.{_show(key)}: cannot be set from the staff page")
            section_base = base.get(section) if isinstance(base.get(section), dict) else {}
            merged[section] = {**section_base, **{k: v for k, v in value.items() if k in keys}}
        else:
            problems.append(f"{source}: {section}: must be a mapping of keys, not {_kind(value)}")
    return merged


def _section_of(key: object) -> str | None:
    """The section a staff setting written at the top level belongs in ("volume" → "audio")."""
    return next((section for section, keys in STAFF_SETTABLE.items() if keys and key in keys), None)


def _later_setting(section: object, key: object = None) -> bool:
    """Whether a setting is unknown to this version's config altogether: one a later version saved before an update
    was rolled back. Ignored, so that the staff's other settings stay in force; a setting this version knows but
    staff may not change (api, openai.base_url) is still refused."""
    from kiosk.config.model import Config  # the model imports this module's neighbours; read when needed

    fields = {f.name: f for f in dataclasses.fields(Config)}
    if section not in fields:
        return True
    if key is None:
        return False
    section_type = typing.get_type_hints(Config).get(section)
    return dataclasses.is_dataclass(section_type) and key not in {f.name for f in dataclasses.fields(section_type)}


def _assign_buttons(buttons: Any, assignment: Any, source: str, problems: list[str], strict: bool = False) -> Any:
    """The operator's buttons with the staff's lines on them. Only a button that speaks (action: speak, the default)
    takes a line: one given to a language, stop or volume button is refused in an uploaded file, and ignored in the
    saved one (an older version's form allowed it; refusing it there would set the staff's settings aside)."""
    if not isinstance(assignment, dict) or not isinstance(buttons, list):
        if assignment:
            problems.append(f"{source}: button_phrases: needs buttons in the config and a mapping of pin: line")
        return buttons
    assignment = {_str(pin): phrase for pin, phrase in assignment.items()}
    pins = {_str(b.get("pin")) for b in buttons if isinstance(b, dict)}
    for pin in sorted(set(assignment) - pins):
        problems.append(f"{source}: button_phrases.{_show(pin)}: no button on GPIO {_show(pin)} in the config")
    speaking = {_str(b.get("pin")) for b in buttons if isinstance(b, dict) and b.get("action", "speak") == "speak"}
    for pin in sorted((set(assignment) & pins) - speaking) if strict else ():
        where = f"{source}: button_phrases.{_show(pin)}"
        problems.append(f"{where}: the button on GPIO {_show(pin)} says no line of its own")
    return [
        {**b, "phrase": assignment[_str(b.get("pin"))]}
        if isinstance(b, dict) and _str(b.get("pin")) in assignment.keys() & speaking
        else b
        for b in buttons
    ]


def staff_settings_path(operator_data: dict) -> Path:
    """Where the staff settings are kept: the operator's staff.settings_file when it is a usable path (a bad one
    is reported by validation), else the default."""
    staff = operator_data.get("staff") if isinstance(operator_data.get("staff"), dict) else {}
    raw = staff.get("settings_file")
    path = _INVALID if raw is None else _scalar(Path, raw, "", {}, [])
    return StaffConfig.settings_file if path is _INVALID else path


def set_aside_staff_settings(path: Path, reason: str) -> Path | None:
    """Rename staff settings that cannot be used to `<file>.corrupt-<time>` (kept whole for a human to recover);
    the new name, or None when `path` is no regular file (a directory is the operator's to fix: never moved) or
    cannot be renamed. Logged either way."""
    shown = _show(path, 1000)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            log.error("staff settings %s cannot be used (%s); it is not a file, and is left as it is", shown, reason)
            return None
        aside = _aside_name(path)
        os.rename(path, aside)
    except (OSError, ValueError) as exc:
        log.error("staff settings %s cannot be used (%s) nor set aside (%s)", shown, reason, exc)
        return None
    log.error("staff settings %s cannot be used (%s); kept as %s, the config file is used alone", shown, reason, aside)
    return aside


def _aside_name(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}{SET_ASIDE}{stamp}"), 1
    while aside.exists():  # one set aside earlier in the same second is never written over
        n += 1
        aside = path.with_name(f"{path.name}{SET_ASIDE}{stamp}-{n}")
    return aside


def staff_settings_problem(path: Path) -> str | None:
    """For the status, in plain words: staff settings set aside next to `path` (the newest named) and not yet dealt
    with, or a settings path that is no file; None when there is nothing to say."""
    try:
        if path.exists() and not path.is_file():
            return f"The staff's settings file {_show(path, 200)} is not a file: staff changes cannot be saved"
        kept = sorted(name for name in os.listdir(path.parent) if name.startswith(f"{path.name}{SET_ASIDE}"))
    except (OSError, ValueError):
        return None
    if not kept:
        return None
    return (
        f"The staff's saved settings could not be used, so the speaker runs on its config file alone; they were "
        f"kept as {_show(path.parent / kept[-1], 200)} for someone to recover (remove that file once done)"
    )
