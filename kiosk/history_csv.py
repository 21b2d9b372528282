"""The history as CSV for curators' spreadsheets: one row per press or trigger, in words rather than codes.

The history keeps codes (`button:17`, `cache`, `failed` with the engine's own message); this turns them into what a
curator reads: the button's name, the line's text as configured now (the history keeps the line's id, not its text:
a line since deleted shows no text), who asked (a visitor's button, a staff test, the schedule, show control...),
where the voice came from and how it ended, with errors reduced to a few words (never addresses or exception names).

Spreadsheets run a cell that starts with = + - @ (or a tab or carriage return) as a formula, and a line's text is
anyone's to write (`=HYPERLINK("http://…","click")`): such a cell is prefixed with a single quote, as OWASP recommends
for CSV injection. Control characters become spaces; every other character (German, Arabic, emoji) is kept. The file
starts with a UTF-8 byte order mark so that Excel reads it as UTF-8.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kiosk.config.phrases import LANGUAGE_NAMES
from kiosk.plain_words import fault_kind

if TYPE_CHECKING:
    from kiosk.config import Config

#: The header row, in the order of the cells.
CSV_COLUMNS = (
    "Date and time",
    "Clock set",
    "Exhibit",
    "Button",
    "Line",
    "Text",
    "Language",
    "Who",
    "Heard from",
    "Response (ms)",
    "Outcome",
)
#: Written first so that Excel opens the file as UTF-8 (other programs skip it).
BOM = "\ufeff"
#: A cell starting with one of these (after any spaces) is read as a formula; the full-width forms too, by some.
FORMULA_STARTS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")

_WHO = {
    "staff": "staff test",
    "schedule": "schedule",
    "attract": "invitation (no one at the exhibit)",
    "presence": "motion sensor",
    "api": "show control (web API)",
    "mqtt": "show control (MQTT)",
    "osc": "show control (OSC)",
    "setup": "setup button (setup code)",
}
_HEARD_FROM = {"cache": "offline copy", "openai": "online voice", "piper": "local voice"}
_OUTCOMES = {
    "done": "played",
    "stopped": "stopped before the end",
    "dropped": "not played: the queue was cleared",
    "approach": "a visitor came close",
    "busy": "refused: busy speaking",
    "queue_full": "refused: too many lines waiting",
    "quiet_hours": "refused: quiet hours",
    "closed": "refused: the exhibit is closed",
    "unknown_phrase": "refused: no such line",
    "unknown_language": "refused: no such language",
    "text_disabled": "refused: free text is not allowed",
    "bad_text": "refused: the text cannot be spoken",
}
#: What a failure was (kiosk.plain_words.fault_kind), in a few words for a curator's column.
_FAILURES = {
    "software": "software fault",
    "no_voice": "no voice available",
    "no_key": "no key for the online voice",
    "quota": "voice service out of credit",
    "key_refused": "voice service refused the key",
    "gave_up": "took too long",
    "cut_off": "voice cut off",
    "unreachable": "no network",
    "too_slow": "voice too slow",
    "ran_on": "voice ran on",
    "busy": "voice service busy",
    "service_failed": "voice service failed",
    "refused": "voice service refused",
    "local_voice": "local voice failed",
    "sound": "sound system problem",
    "cache": "offline copy unreadable",
    "stopped": "stopped",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def outcomes_csv(rows: Iterable[Any], cfg: Config | None = None) -> str:
    """`rows` (kiosk.history.Outcome) as CSV in their order, named and worded from `cfg` (None: codes and ids only),
    with a byte order mark and a header row; times in ISO 8601 with the local offset."""
    words = _Words(cfg)
    out = io.StringIO()
    out.write(BOM)
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180: quotes where needed, CRLF
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in words.row(row)])
    return out.getvalue()


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def safe_cell(value: str) -> str:
    """`value` safe to open in a spreadsheet: control characters as spaces, lone surrogates as U+FFFD, and a single
    quote before a formula's first character (OWASP's advice on CSV injection)."""
    text = _CONTROL.sub(" ", value)
    if any(unicodedata.category(c) == "Cs" for c in text):  # not encodable: the download would fail
        text = "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in text)
    stripped = text.lstrip()
    if stripped and stripped[0] in FORMULA_STARTS:
        return "'" + text
    return text


def who(origin: str) -> str:
    if origin.startswith("button:"):
        return "visitor button"
    return _WHO.get(origin, "other")


def heard_from(source: str | None) -> str:
    if source is None:
        return "not heard"
    return _HEARD_FROM.get(source, "other voice")


def outcome_words(outcome: str, error: str | None) -> str:
    """How it ended, in words: "played", "failed: no network", "refused: quiet hours"..."""
    if outcome == "failed":
        return f"failed: {failure_words(error)}"
    return _OUTCOMES.get(outcome, "other")


def failure_words(error: str | None) -> str:
    """A failure's message as a few words for staff: never its addresses, ports or exception names."""
    if not error:
        return "no reason given"
    return _FAILURES.get(fault_kind(error) or "", "unknown problem")


class _Words:
    """What the config says of a row: the exhibit's name, button names, line texts and language names."""

    def __init__(self, cfg: Config | None):
        self.cfg = cfg
        self.exhibit = _exhibit_name(cfg)
        self.buttons = {b.pin: b.name or f"GPIO {b.pin}" for b in cfg.buttons} if cfg else {}

    def row(self, row: Any) -> list[str]:
        trusted = getattr(row, "clock_trusted", True)
        ms = "" if row.response_ms is None else str(round(row.response_ms))
        return [
            iso_time(row.time),
            "yes" if trusted else "no",
            self.exhibit,
            self.button(row.origin),
            row.line or "",
            self.text(row.line, row.language),
            self.language(row.language),
            who(row.origin),
            heard_from(row.source),
            ms,
            outcome_words(row.outcome, row.error),
        ]

    def button(self, origin: str) -> str:
        if not origin.startswith("button:"):
            return ""
        pin = origin.split(":", 1)[1]
        known = pin.isascii() and pin.isdigit() and len(pin) < 4  # "button:²" is no pin (a damaged row)
        return self.buttons.get(int(pin), f"GPIO {pin}") if known else f"GPIO {pin}"

    def text(self, line: str | None, language: str | None) -> str:
        if self.cfg is None or line is None or line not in self.cfg.phrases:
            return ""
        return self.cfg.text_for(line, language)[0]

    def language(self, code: str | None) -> str:
        if not code:
            return ""
        configured = self.cfg.language(code) if self.cfg else None
        if configured is not None:
            name = configured.spoken_name
        else:
            name = LANGUAGE_NAMES.get(code) or LANGUAGE_NAMES.get(code.split("-")[0]) or code
        return code if name == code else f"{name} ({code})"


def _exhibit_name(cfg: Config | None) -> str:
    """The captions' title (the exhibit's name), else the speaker's name on the network (its host name)."""
    if cfg is None:
        return ""
    return cfg.captions.title.strip() or cfg.mqtt.device()
