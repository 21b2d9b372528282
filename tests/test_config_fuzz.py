"""The config loader refuses every bad value with one clear line, never a traceback.

Regression tests for values that once got through (NaN, lone surrogates) or crashed the loader (huge, deep or
self-multiplying YAML, invalid UTF-8, 5,000-digit numbers, odd keys), then property-based tests that feed it
arbitrary text, bytes and values. KIOSK_FUZZ_EXAMPLES=5000 runs the properties longer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiosk import cli, config
from kiosk.config import (
    MAX_CONFIG_BYTES,
    STAFF_SETTABLE,
    Config,
    load_config,
    parse_config,
    read_staff_settings,
    staff_settings_problem,
    text_problem,
    unencodable_at,
    validate,
)
from kiosk.errors import ConfigError

FUZZ = settings(
    max_examples=int(os.environ.get("KIOSK_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BILLION_LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


def file_problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value.problems


def assert_one_line_each(problems: list[str]) -> None:
    """What cli.main prints, the journal keeps and the staff page sends: lines that are lines, in UTF-8."""
    assert problems
    for problem in problems:
        assert isinstance(problem, str) and "\n" not in problem and "\r" not in problem
        problem.encode("utf-8")


# --- 1. non-finite floats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["cache.max_mb", "staff.session_hours", "openai.speed", "openai.connect_timeout_s"])
@pytest.mark.parametrize(("written", "shown"), [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), (".NaN", "nan")])
def test_non_finite_numbers_are_refused(key, written, shown):
    section, name = key.split(".")
    assert problems_of(f"{section}:\n  {name}: {written}\n") == [f"{key}: must be a finite number, not {shown}"]


# --- 2. strings UTF-8 cannot encode -----------------------------------------------------------------------------


def test_lone_surrogates_are_refused_in_texts_values_paths_and_keys():
    found = problems_of(
        'phrases:\n  welcome: "Hello \\ud800 there"\n'
        'audio:\n  device: "hw\\udc80"\n'
        'cache:\n  dir: "/var/cache/\\ud83d"\n'
        'openai:\n  "vo\\ud800ice": x\n'
    )
    assert found[:3] == [
        "phrases.welcome: text contains characters that cannot be encoded (a lone surrogate at position 6)",
        "audio.device: contains characters that cannot be encoded (a lone surrogate at position 2)",
        "cache.dir: contains characters that cannot be encoded (a lone surrogate at position 11)",
    ]
    assert found[3].startswith("openai.vo\\ud800ice: unknown key")
    assert problems_of('phrases:\n  "we\\udc00lcome": hi\n')[0].startswith("phrases.we\\udc00lcome: id must be")
    assert_one_line_each(found)
    assert unencodable_at("abc\udfffd") == 3 and unencodable_at("café 👋") is None
    assert (
        text_problem("Hi \ud800") == "text contains characters that cannot be encoded (a lone surrogate at position 3)"
    )


def test_a_nul_in_a_path_or_value_is_refused():
    found = problems_of('cache:\n  dir: "/var/cache/k\\0iosk"\naudio:\n  device: "hw\\0"\n')
    assert found == [
        "cache.dir: contains a NUL character (at position 12)",
        "audio.device: contains a NUL character (at position 2)",
    ]


# --- 3. the YAML reader is bounded ------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_without_being_parsed(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(30_000_000)  # sparse: 30 MB the loader must not read
    started = time.monotonic()
    assert file_problems(big) == [f"{big}: config file is too large (30000000 bytes; the limit is {MAX_CONFIG_BYTES})"]
    assert time.monotonic() - started < 1
    just_right = tmp_path / "ok.yaml"
    just_right.write_bytes(b"audio:\n  volume: 50\n" + b"#" * (MAX_CONFIG_BYTES - 30) + b"\n")
    assert load_config(just_right, staff_settings={}).audio.volume == 50


@pytest.mark.parametrize(
    "text",
    ["[" * 10_000, "{a: " * 10_000, "".join("  " * i + "a:\n" for i in range(2_000)), "- " * 5_000 + "x\n"],
    ids=["flow-lists", "flow-mappings", "block-mappings", "block-lists"],
)
def test_deep_nesting_is_a_config_error_not_a_recursion_error(text):
    found = problems_of(text)
    assert len(found) == 1 and "nested deeper than 32 levels" in found[0]


def test_nesting_made_deep_by_aliases_is_refused_before_construction():
    text = "a0: &a0 {k: 1}\n" + "".join(f"a{i}: &a{i} {{k: *a{i - 1}}}\n" for i in range(1, 3_000))
    assert "nested deeper than 32 levels" in problems_of(text)[0]


def test_billion_laughs_is_refused():
    started = time.monotonic()
    found = problems_of(BILLION_LAUGHS)
    assert found == [
        "<config>: not valid YAML at line 5, column 5: too many aliases or nodes (over 100000 with aliases expanded)"
    ]
    assert time.monotonic() - started < 1


def test_a_node_that_contains_itself_is_refused():
    for text in ("buttons: &a [*a]\n", "phrases: &p {x: *p}\n"):
        assert problems_of(text)[0].endswith("an alias refers to a node that contains it")


def test_invalid_utf8_is_named_by_byte(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("phrases:\n  x: café\n".encode("latin-1"))
    assert file_problems(bad) == [f"{bad}: not valid UTF-8 at byte 17 (line 2)"]


def test_a_5000_digit_number_is_a_problem_not_a_value_error():
    assert problems_of("api:\n  port: " + "9" * 5_000 + "\n") == [
        "<config>: not valid YAML at line 2, column 9: a number with more than 4300 digits"
    ]
    hex_digits = problems_of("api:\n  port: 0x" + "f" * 5_000 + "\n")  # hex is not limited: the message must cope
    assert hex_digits == ["api.port: <a number with more than 4300 digits> is out of range (0 to 65535)"]
    assert problems_of("cache:\n  max_mb: " + "9" * 400 + "\n")[0].endswith("is out of range (1 to 1000000)")


def test_values_python_cannot_make_and_unexpected_loader_errors_are_one_line(monkeypatch):
    assert problems_of("phrases:\n  x: 2001-02-30\n") == [
        "<config>: not valid YAML at line 2, column 6: 2001-02-30 is not a valid timestamp (day is out of range "
        "for month)"
    ]
    assert problems_of("x: \0\n") == ["<config>: not valid YAML at line 1, column 4: character #x0000 is not allowed"]

    def broken(self, node):
        raise KeyError("surprise")

    monkeypatch.setitem(config._SafeLoaderWithoutDuplicates.yaml_constructors, "tag:yaml.org,2002:str", broken)
    assert problems_of("a: b\n") == ["<config>: cannot read YAML: 'surprise'"]


# --- 4. the staff settings file has the same bounds -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"#" * (MAX_CONFIG_BYTES + 1), "config file is too large"),
        (b"phrases:\n  x: caf\xe9\n", "not valid UTF-8 at byte 17 (line 2)"),
        (b"[" * 10_000, "nested deeper than 32 levels"),
        (BILLION_LAUGHS.encode(), "too many aliases or nodes"),
        (b"phrases:\n  x: .nan\n", "phrases.x: text must be a string, not a number"),
        (b'phrases:\n  x: "\\ud800"\n', "phrases.x: text contains characters that cannot be encoded"),
    ],
    ids=["big", "utf8", "deep", "laughs", "nan", "surrogate"],
)
def test_staff_settings_file_is_read_with_the_same_bounds(tmp_path, content, fragment, caplog):
    settings_file = tmp_path / "staff-settings.yaml"
    settings_file.write_bytes(content)
    config = tmp_path / "kiosk.yaml"
    config.write_text(f"staff:\n  settings_file: {settings_file}\n")
    with caplog.at_level(logging.ERROR, logger="kiosk.config"):
        assert load_config(config).phrases == {}  # the speaker starts on its config file alone
    assert any(fragment in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert "could not be used" in staff_settings_problem(settings_file)  # set aside, and staff are told
    assert read_staff_settings(tmp_path / "none-yet.yaml") == {}


# --- 5. phrase ids that are not strings -------------------------------------------------------------------------


def test_odd_phrase_ids_give_a_clear_problem():
    assert parse_config("phrases:\n  5: Hall five\n").phrases == {"5": "Hall five"}
    assert problems_of("phrases:\n  true: x\n  ~: y\n  1.5: z\n") == [
        f"phrases.{key}: id must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        for key in ("True", "None", "1.5")
    ]
    assert problems_of("phrases:\n  ? [a]\n  : x\n") == [
        "<config>: not valid YAML at line 2, column 5: a list cannot be a key"
    ]
    assert problems_of("phrases:\n  ? {a: 1}\n  : x\n")[0].endswith("a mapping cannot be a key")
    assert problems_of("phrases:\n  5: a\n  '5': b\n") == ["phrases.5: id is given twice (once quoted, once not)"]
    assert problems_of('phrases:\n  "welcome\\n": hi\n')[0].startswith("phrases.welcome\\n: id must be")


# --- the command line: one line per problem, exit 2 -------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"cache:\n  max_mb: .nan\n",
        b'phrases:\n  x: "\\ud800"\n',
        b"#" * (MAX_CONFIG_BYTES + 1),
        b"[" * 10_000,
        BILLION_LAUGHS.encode(),
        b"\xff\xfe\x00p\x00h",
        b"api:\n  port: " + b"9" * 5_000,
        b"phrases:\n  ? [a]\n  : x\n",
        b"cache:\n  dir: ~nosuchuser-kiosk/x\n",
    ],
    ids=["nan", "surrogate", "big", "deep", "laughs", "utf16", "digits", "list-key", "tilde"],
)
def test_cli_prints_config_problems_and_exits_2(tmp_path, capsys, content):
    bad = tmp_path / "BAD.yaml"
    bad.write_bytes(content)
    assert cli.main(["say", "--config", str(bad), "--phrase", "x"]) == 2
    err = capsys.readouterr().err
    assert err and "Traceback" not in err
    assert all(line.startswith("kiosk: config: ") for line in err.splitlines())


# --- properties -------------------------------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included
NAMES = [f.name for f in dataclasses.fields(Config)]
TRICKY_STRINGS = [
    *("", " ", "22:00", "7:5", "24:00", "welcome", "x" * 30_000, "~", "~nosuchuser-kiosk/x", "/tmp/k", "a\0b"),
    *("\ud800", "hi \udfff", "auto", "openai", "piper", "none", "stop", "queue", "127.0.0.1", "0.0.0.0", "::1"),
]
TEXTS = st.text(ANY_CHAR, max_size=30) | st.sampled_from(TRICKY_STRINGS)
# Built by .map: hypothesis shows a strategy's elements, and a 5,000-digit int has no repr.
HUGE_INTS = st.tuples(st.sampled_from([30, 309, 400, 5_000]), st.sampled_from([1, -1])).map(lambda t: t[1] * 10 ** t[0])
KEYS = st.none() | st.booleans() | st.integers() | HUGE_INTS | st.floats() | TEXTS | st.sampled_from(NAMES)
SCALARS = st.none() | st.booleans() | st.integers() | HUGE_INTS | st.floats() | TEXTS
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12
)
PLAUSIBLE = st.integers(-2, 70) | st.floats(-1, 70) | st.booleans() | st.none() | st.sampled_from(TRICKY_STRINGS)
YAML_BITS = [
    *("\n", "  ", "- ", ": ", "? ", "[", "]", "{", "}", ", ", "&a ", "*a", "&b ", "*b", "<<: *a", "!!float ", "!!str "),
    *("!!binary ", "!!set ", "!!timestamp ", "!!int ", ".nan", ".inf", "-.inf", "~", "0x", "0o", "1:30", "1e999"),
    *('"\\ud800"', '"\\0"', "'q'", "|\n", ">\n", "#", "---\n", "...\n", "%YAML 1.1\n", "2001-02-30", "9" * 50),
    *(f"{name}:" for name in NAMES),
    *("welcome", "pin", "phrase", "max_mb", "speed", "session_hours", "device", "dir", "start", "volume"),
]
YAMLISH = st.lists(st.sampled_from(YAML_BITS) | st.text(ANY_CHAR, max_size=4), max_size=40).map("".join)


def item_fields(name: str) -> list[str]:
    hint = typing.get_type_hints(Config)[name]
    item = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
    return [f.name for f in dataclasses.fields(item)] if dataclasses.is_dataclass(item) else ["welcome", "other"]


VALID = {
    "languages": [{"code": "en"}, {"code": "de", "voice": "onyx"}],
    "phrases": {"welcome": {"en": "Welcome to the hall of minerals.", "de": "Willkommen."}, "other": "Hello."},
    "buttons": [{"pin": 17, "phrase": "welcome", "led": 27}],
    "quiet_hours": [{"start": "22:00", "end": "07:00", "volume": 20}],
    "api": {"bind": "127.0.0.1", "port": 8080},
}


@st.composite
def configs_with_one_odd_value(draw) -> dict:
    """A valid config with one value (a whole section, a key, or a button's or quiet period's key) replaced."""
    data = {k: v.copy() if isinstance(v, dict) else [dict(i) for i in v] for k, v in VALID.items()}
    section = draw(st.sampled_from(NAMES)) if draw(st.integers(0, 7)) else draw(KEYS)  # mostly a known name
    value = draw(PLAUSIBLE) if draw(st.booleans()) else draw(VALUES)
    if section not in NAMES or draw(st.integers(0, 3)) == 0:
        data[section] = value
        return data
    key = draw(st.sampled_from(item_fields(section))) if draw(st.integers(0, 7)) else draw(KEYS)
    if isinstance(data.get(section), list):
        data[section][0][key] = value
    else:
        data[section] = {**data.get(section, {}), key: value}
    return data


def assert_clean(value) -> None:
    """Every float in a Config is finite and every string (lines, paths, names) encodes as UTF-8."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            assert_clean(getattr(value, f.name))
    elif isinstance(value, tuple | list):
        for item in value:
            assert_clean(item)
    elif isinstance(value, dict):
        for k, v in value.items():
            assert_clean(k)
            assert_clean(v)
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, str | Path):
        str(value).encode("utf-8")
        assert not isinstance(value, Path) or "\0" not in str(value)  # a NUL would make open() raise ValueError


def fuzz_folder(tmp_path_factory) -> Path:
    """One folder for every example (hypothesis runs many examples per test; tmp_path is one per test)."""
    folder = tmp_path_factory.getbasetemp() / "fuzz"
    folder.mkdir(exist_ok=True)
    return folder


def config_or_config_error(load) -> None:
    try:
        cfg = load()
    except ConfigError as exc:
        event("ConfigError")  # --hypothesis-show-statistics shows how often each side is reached
        assert_one_line_each(exc.problems)
    else:
        event("Config")
        assert isinstance(cfg, Config)
        assert_clean(cfg)


@FUZZ
@given(TEXTS | YAMLISH)
def test_any_text_gives_a_config_or_a_config_error(text):
    config_or_config_error(lambda: parse_config(text))


@FUZZ
@given(st.binary(max_size=200) | YAMLISH.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_file_gives_a_config_or_a_config_error(tmp_path_factory, content):
    path = fuzz_folder(tmp_path_factory) / "kiosk.yaml"
    path.write_bytes(content)
    config_or_config_error(lambda: load_config(path, staff_settings={}))


@FUZZ
@given(st.binary(max_size=200) | YAMLISH.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_staff_settings_file_gives_a_config_or_a_config_error(tmp_path_factory, content):
    folder = fuzz_folder(tmp_path_factory)
    (folder / "staff-settings.yaml").write_bytes(content)
    operator = folder / "kiosk.yaml"
    operator.write_text(yaml.safe_dump({**VALID, "staff": {"settings_file": str(folder / "staff-settings.yaml")}}))
    config_or_config_error(lambda: load_config(operator))


@FUZZ
@given(configs_with_one_odd_value())
def test_any_value_under_any_section_and_key_gives_a_config_or_a_config_error(data):
    config_or_config_error(lambda: validate(data))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(STAFF_SETTABLE)) | KEYS, VALUES, max_size=4))
def test_any_staff_settings_give_a_config_or_a_config_error(tmp_path_factory, staff):
    operator = fuzz_folder(tmp_path_factory) / "operator.yaml"
    if not operator.exists():
        operator.write_text(yaml.safe_dump(VALID))
    config_or_config_error(lambda: load_config(operator, staff_settings=staff))
