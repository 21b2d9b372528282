"""From a mapping (read from YAML) to a `Config`: each section built field by field through its dataclass's
metadata (kiosk.config.fields), then the rules that span sections (buttons name existing lines, no pin is used
twice, an open API has a token...). Every problem is collected and reported at once."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from typing import Any

from kiosk.config.fields import _INVALID, _kind, _scalar, _show, _suggest
from kiosk.config.fleet import _TOPIC_LEVEL
from kiosk.config.model import Config
from kiosk.config.phrases import LanguageConfig, _phrases, _split_translations
from kiosk.config.secrets import _private_file_problem
from kiosk.errors import ConfigError


def validate(data: dict, problems: list[str] | None = None) -> Config:
    problems = list(problems or [])
    if not isinstance(data, dict):
        raise ConfigError([*problems, f"the top level must be a mapping of sections, not {_kind(data)}"])
    cfg = _build(Config, _split_translations(data, problems), "", problems)
    if not problems:
        problems += _cross_check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _build(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in data.items():  # in file order, so problems read top to bottom
        if key in fields:
            values[key] = _value(hints[key], raw, f"{prefix}{key}", fields[key].metadata, problems)
        else:
            problems.append(f"{prefix}{_show(key)}: unknown key{_suggest(_show(key), fields)}")
    for name, f in fields.items():
        if f.metadata.get("required") and name not in data:
            problems.append(f"{prefix}{name}: must be set")
    return cls(**{k: v for k, v in values.items() if v is not _INVALID})


def _value(hint: Any, raw: Any, where: str, meta: Any, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(hint):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a mapping of keys, not {_kind(raw)}")
            return _INVALID
        return _build(hint, raw, f"{where}.", problems)
    if hint == dict[str, str]:
        return _phrases(raw, where, problems)
    if hint == dict[str, dict[str, str]]:
        return raw  # checked by _split_translations
    if typing.get_origin(hint) is tuple:
        return _items(typing.get_args(hint)[0], raw, where, meta, problems)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if raw is None:
        if optional:
            return None
        problems.append(f"{where}: must be set")
        return _INVALID
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    return _scalar(base, raw, where, meta, problems)


def _items(item_cls: type, raw: Any, where: str, meta: Any, problems: list[str]) -> Any:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list, not {_kind(raw)}")
        return _INVALID
    if not dataclasses.is_dataclass(item_cls):
        values = [_scalar(item_cls, item, f"{where}[{i}]", meta, problems) for i, item in enumerate(raw)]
        return tuple(v for v in values if v is not _INVALID)
    items = []
    for i, item in enumerate(raw):
        if item_cls is LanguageConfig and isinstance(item, str):
            item = {"code": item}  # a language may be given by its code alone
        if not isinstance(item, dict):
            problems.append(f"{where}[{i}]: must be a mapping of keys, not {_kind(item)}")
            continue
        items.append(_build(item_cls, item, f"{where}[{i}].", problems))
    return tuple(items)


def _cross_check(cfg: Config) -> list[str]:
    """Rules that span keys: buttons name existing lines, no pin is used twice, an open API has a token."""
    problems = []
    if not _is_loopback(cfg.api.bind) and cfg.api.token_file is None:
        problems.append(f"api.token_file: required when api.bind ({_show(cfg.api.bind)}) is not a loopback address")
    audio = cfg.audio
    if audio.visitor_volume_min > audio.visitor_volume_max:
        problems.append(
            f"audio.visitor_volume_min: must not be above audio.visitor_volume_max "
            f"({audio.visitor_volume_min} > {audio.visitor_volume_max})"
        )
    for i, quiet in enumerate(cfg.quiet_hours):
        if quiet.start == quiet.end:
            problems.append(f"quiet_hours[{i}].end: the same as the start ({quiet.start}), so it would never apply")
    for i, hours in enumerate(cfg.opening_hours):
        if hours.close <= hours.open:
            problems.append(f"opening_hours[{i}].close: must be after the opening time ({hours.open})")
    named = [("closed_phrase", cfg.closed_phrase)] if cfg.closed_phrase else []
    named += [(f"schedule[{i}].phrase", a.phrase) for i, a in enumerate(cfg.schedule)]
    named += [(f"attract.phrases[{i}]", pid) for i, pid in enumerate(cfg.attract.phrases)]
    named += [("presence.invite", cfg.presence.invite)] if cfg.presence.invite is not None else []
    for where, pid in named:
        if pid not in cfg.phrases:
            problems.append(f"{where}: no line '{_show(pid)}' in phrases{_suggest(pid, cfg.phrases)}")
    if cfg.attract.idle_minutes and not cfg.attract.phrases:
        problems.append("attract.phrases: name at least one line to invite visitors with (or set idle_minutes: 0)")
    problems += _language_problems(cfg)
    used: dict[int, str] = {}
    for i, b in enumerate(cfg.buttons):
        where = f"buttons[{i}]"
        if b.action == "speak" and b.phrase is None:
            problems.append(f"{where}.phrase: must be set for a speak button (or set action: stop)")
        elif b.phrase is not None and b.phrase not in cfg.phrases:
            problems.append(f"{where}.phrase: no line '{_show(b.phrase)}' in phrases{_suggest(b.phrase, cfg.phrases)}")
        for role, pin in (("pin", b.pin), ("led", b.led)):
            if pin is None:
                continue
            if pin in used:
                problems.append(f"{where}.{role}: GPIO {pin} is already used by {used[pin]}")
            used[pin] = f"{where}.{role}"
    for where, pin in (("presence.pin", cfg.presence.pin), ("knob.a", cfg.knob.a), ("knob.b", cfg.knob.b)):
        if pin is None:
            continue
        if pin in used:
            problems.append(f"{where}: GPIO {pin} is already used by {used[pin]}")
        used[pin] = where
    pins = [b.pin for b in cfg.buttons]
    if cfg.staff.setup_button is not None and cfg.staff.setup_button not in pins:
        named = ", ".join(str(p) for p in pins) or "none configured"
        problems.append(f"staff.setup_button: GPIO {cfg.staff.setup_button} is no button's pin (buttons: {named})")
    if (cfg.knob.a is None) != (cfg.knob.b is None):
        problems.append("knob: set both pins, a and b (or neither: no knob)")
    return problems + _fleet_problems(cfg)


def _language_problems(cfg: Config) -> list[str]:
    problems = []
    codes = [lang.code for lang in cfg.languages]
    for i, code in enumerate(codes):
        if code in codes[:i]:
            problems.append(f"languages[{i}].code: {code} is offered twice")
    for i, b in enumerate(cfg.buttons):
        where = f"buttons[{i}]"
        if b.language is not None and b.language not in codes:
            offer = ", ".join(codes) or "none: add languages:"
            problems.append(f"{where}.language: {_show(b.language)} is not an offered language ({offer})")
        if b.action == "language" and len(codes) < 2:
            problems.append(f"{where}.action: a language button needs two or more languages: in the config")
    return problems


def _fleet_problems(cfg: Config) -> list[str]:
    """MQTT and OSC: a device id that is a topic level, credentials no one else can read, addresses."""
    problems = []
    mqtt = cfg.mqtt
    if mqtt.device_id and not _TOPIC_LEVEL["pattern"].fullmatch(mqtt.device_id):
        problems.append(f"mqtt.device_id: {_show(repr(mqtt.device_id))} is not {_TOPIC_LEVEL['pattern_help']}")
    elif mqtt.device() in ("all", "group"):
        problems.append(f"mqtt.device_id: '{mqtt.device()}' is a reserved topic level; choose another name")
    if mqtt.host and any(c.isspace() or c in "/#+" for c in mqtt.host.strip()):
        problems.append(f"mqtt.host: {_show(repr(mqtt.host))} is not a host name or address")
    if mqtt.password_file is not None and not mqtt.username:
        problems.append("mqtt.username: must be set when mqtt.password_file is")
    if mqtt.enabled and mqtt.password_file is not None:
        problem = _private_file_problem(mqtt.password_file)
        if problem:
            problems.append(f"mqtt.password_file: {problem}")
    if mqtt.enabled and mqtt.tls_ca_file is not None and not os.access(mqtt.tls_ca_file, os.R_OK):
        problems.append(f"mqtt.tls_ca_file: cannot read {_show(mqtt.tls_ca_file, 200)}")
    if not _is_ip(cfg.osc.bind) and cfg.osc.bind != "localhost":
        problems.append(f"osc.bind: {_show(repr(cfg.osc.bind))} is not an IP address")
    for i, address in enumerate(cfg.osc.allow_from):
        if not _is_ip(address):
            problems.append(f"osc.allow_from[{i}]: {_show(repr(address))} is not an IP address")
    return problems


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
