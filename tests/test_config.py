import logging
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from kiosk.config import Config, load_config, parse_config, resolve_api_key, staff_settings_problem
from kiosk.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "kiosk.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


def test_example_config_is_valid_and_has_lines():
    cfg = load_config(EXAMPLE)
    assert cfg.phrases["welcome"] == "Welcome to the hall of minerals."
    assert len(cfg.phrases) >= 3
    assert cfg.openai.model and cfg.audio.preroll_ms == 120


def test_empty_file_gives_defaults():
    assert parse_config("") == Config()


def test_every_problem_is_reported_at_once_with_its_path():
    found = problems(
        "audio:\n  devise: hw:0\n  preroll_ms: -1\n"
        "speech:\n  engine: espeak\n"
        "openai:\n  speed: fast\n  retries: 1.5\n"
        "cache:\n  max_mb: true\n"
        "phrases:\n  Bad Id: hi\n  empty: ''\n  number: 7\n"
        "extra: 1\n"
    )
    assert found == [
        "audio.devise: unknown key (did you mean 'device'?)",
        "audio.preroll_ms: -1 is out of range (0 to 2000)",
        "speech.engine: 'espeak' is not one of auto, openai, piper",
        "openai.speed: must be a number, not a string",
        "openai.retries: must be a whole number, not a number",
        "cache.max_mb: must be a number, not true/false",
        "phrases.Bad Id: id must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit",
        "phrases.empty: text is empty",
        "phrases.number: text must be a string, not a whole number",
        "extra: unknown key (known keys: audio, speech, openai, piper, cache, api, staff, history, mqtt, osc, "
        "buttons, quiet_hours, opening_hours, closed_phrase, schedule, attract, clock, presence, knob, captions, "
        "hostnames, languages, phrases)",
    ]


def test_wrong_shapes_and_bad_yaml():
    assert problems("- a\n- b\n") == ["<config>: the top level must be a mapping of sections, not a list"]
    assert problems("audio: 5\n") == ["audio: must be a mapping of keys, not a whole number"]
    assert problems("audio: [1\n")[0].startswith("<config>: not valid YAML at line")


def test_unsafe_yaml_tags_are_refused():
    found = problems("phrases:\n  x: !!python/object/apply:os.system ['echo hacked']\n")
    assert "not valid YAML" in found[0]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_win():
    cfg = parse_config("audio:\n  device: hw:0\ncache:\n  dir: /x\n").with_overrides(device="null", cache_dir="/y")
    assert cfg.audio.device == "null" and str(cfg.cache.dir) == "/y"


def test_api_key_from_env_then_file_and_never_shown(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    cfg = parse_config(f"openai:\n  api_key_file: {key_file}\n").openai
    assert resolve_api_key(cfg, {"OPENAI_API_KEY": "sk-env"}) == "sk-env"
    key = resolve_api_key(cfg, {})
    assert key == "sk-from-file"
    assert "sk-from-file" not in repr(key) and "sk-from-file" not in repr([key])
    assert resolve_api_key(parse_config("").openai, {}) is None


def test_missing_unreadable_or_empty_key_file(tmp_path):
    cfg = parse_config(f"openai:\n  api_key_file: {tmp_path / 'missing'}\n").openai
    assert resolve_api_key(cfg, {}) is None  # not written yet: the staff page may set it later
    cfg = parse_config(f"openai:\n  api_key_file: {tmp_path}\n").openai  # a directory cannot be read as a key
    with pytest.raises(ConfigError, match=r"openai\.api_key_file: cannot read"):
        resolve_api_key(cfg, {})
    (tmp_path / "empty").write_text("\n")
    cfg = parse_config(f"openai:\n  api_key_file: {tmp_path / 'empty'}\n").openai
    with pytest.raises(ConfigError, match="is empty"):
        resolve_api_key(cfg, {})


def test_staff_settings_are_laid_over_the_operators_file(tmp_path):
    settings = tmp_path / "staff.yaml"
    operator = tmp_path / "kiosk.yaml"
    operator.write_text(
        f"# operator comment\nstaff:\n  settings_file: {settings}\nopenai:\n  voice: coral\n  model: m1\n"
        "buttons:\n  - pin: 17\n    phrase: a\n  - pin: 22\n    action: stop\nphrases:\n  a: Line A.\n"
    )
    settings.write_text(
        "phrases:\n  a: Line A.\n  b: Line B.\nopenai:\n  voice: sage\naudio:\n  volume: 40\n"
        "button_phrases:\n  17: b\nquiet_hours:\n  - start: '22:00'\n    end: '07:00'\n"
    )
    cfg = load_config(operator)
    assert cfg.phrases == {"a": "Line A.", "b": "Line B."}
    assert (cfg.openai.voice, cfg.openai.model, cfg.audio.volume) == ("sage", "m1", 40)
    assert cfg.buttons[0].phrase == "b" and cfg.buttons[1].action == "stop"
    assert cfg.quiet_volume(datetime(2026, 12, 1, 23, 15)) == 0
    assert operator.read_text().startswith("# operator comment")


def test_staff_settings_cannot_reach_operator_keys(tmp_path):
    settings = tmp_path / "staff.yaml"
    operator = tmp_path / "kiosk.yaml"
    operator.write_text(
        f"staff:\n  settings_file: {settings}\nbuttons:\n  - pin: 17\n    phrase: a\nphrases:\n  a: A.\n"
    )
    settings.write_text("api:\n  bind: 0.0.0.0\nopenai:\n  base_url: http://evil\nbutton_phrases:\n  5: a\n")
    with pytest.raises(ConfigError) as info:  # as the staff page checks settings before it saves them
        load_config(operator, staff_settings=yaml.safe_load(settings.read_text()))
    assert info.value.problems == [
        f"{settings}: api: cannot be set from the staff page",
        f"{settings}: openai.base_url: cannot be set from the staff page",
        f"{settings}: button_phrases.5: no button on GPIO 5 in the config",
    ]
    cfg = load_config(operator)  # at a start: the operator's config alone, the staff's file kept for a human
    assert cfg.api.bind == "127.0.0.1" and cfg.openai.base_url is None and not settings.exists()
    assert [p.name.startswith("staff.yaml.corrupt-") for p in tmp_path.iterdir() if p != operator] == [True]
    assert "could not be used" in staff_settings_problem(settings)


def test_quiet_hours_on_weekdays_overnight_and_never_empty():
    cfg = parse_config("quiet_hours:\n  - {start: '22:00', end: '06:00', days: [fri], volume: 0}\n")
    friday_night, saturday_early = datetime(2026, 12, 4, 23, 0), datetime(2026, 12, 5, 5, 59)
    assert cfg.quiet_volume(friday_night) == 0 and cfg.quiet_volume(saturday_early) == 0
    assert cfg.quiet_volume(datetime(2026, 12, 5, 6, 0)) is None  # the end is not included
    assert cfg.quiet_volume(datetime(2026, 12, 5, 23, 0)) is None  # Saturday night is not Friday's
    assert cfg.quiet_volume(datetime(2026, 12, 3, 23, 0)) is None  # nor Thursday's
    assert cfg.quiet_hours[0].overnight
    daily = parse_config("quiet_hours:\n  - {start: '12:00', end: '13:00', volume: 40}\n")
    assert daily.quiet_volume(datetime(2026, 12, 6, 12, 30)) == 40 and not daily.quiet_hours[0].overnight
    assert problems("quiet_hours:\n  - {start: '09:00', end: '09:00'}\n") == [
        "quiet_hours[0].end: the same as the start (09:00), so it would never apply"
    ]
    assert problems("quiet_hours:\n  - {start: '09:00', end: '10:00', days: [funday]}\n") == [
        "quiet_hours[0].days[0]: 'funday' is not one of mon, tue, wed, thu, fri, sat, sun"
    ]
    assert problems("quiet_hours:\n  - {start: '', end: '10:00'}\n") == [
        "quiet_hours[0].start: must be set (a time like 22:00)"
    ]


def test_staff_settings_a_later_version_saved_are_ignored_after_a_rollback(tmp_path, caplog):
    # A later release added settings, then was switched back: this version ignores what it does not know at all,
    # keeps the rest in force and the file in place. An uploaded file is still held to every name (strict).
    settings = tmp_path / "staff.yaml"
    operator = tmp_path / "kiosk.yaml"
    operator.write_text(f"staff:\n  settings_file: {settings}\nphrases:\n  a: A.\n")
    later = {"openai": {"voice": "sage", "pace_planner": "on"}, "captions_theme": {"dark": True}}
    settings.write_text(yaml.safe_dump(later))
    with caplog.at_level(logging.WARNING, logger="kiosk.config"):
        cfg = load_config(operator)
    assert cfg.openai.voice == "sage" and settings.exists()
    assert "captions_theme is not known to this version" in caplog.text
    assert "openai.pace_planner is not known to this version of kiosk" in caplog.text
    with pytest.raises(ConfigError) as info:
        load_config(operator, later, uploaded=True)
    assert "the uploaded file: captions_theme: cannot be set from the staff page" in info.value.problems


def test_a_line_on_a_button_that_says_none_is_ignored_when_saved_and_refused_when_uploaded(tmp_path):
    settings = tmp_path / "staff.yaml"
    operator = tmp_path / "kiosk.yaml"
    operator.write_text(
        f"staff:\n  settings_file: {settings}\nphrases:\n  a: A.\n  b: B.\n"
        "languages:\n  - code: en\n  - code: de\n"
        "buttons:\n  - {pin: 17, phrase: a}\n  - {pin: 5, action: language}\n"
    )
    saved = {"button_phrases": {"17": "b", "5": "a"}}  # an older form put a line on the Language button
    settings.write_text(yaml.safe_dump(saved))
    cfg = load_config(operator)
    assert [(b.pin, b.phrase) for b in cfg.buttons] == [(17, "b"), (5, None)] and settings.exists()
    with pytest.raises(ConfigError) as info:
        load_config(operator, saved, uploaded=True)
    assert info.value.problems == ["the uploaded file: button_phrases.5: the button on GPIO 5 says no line of its own"]
