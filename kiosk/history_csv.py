"""The history as CSV, for curators' spreadsheets: one row per press or trigger, times with the local offset."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Any

CSV_COLUMNS = ("time", "origin", "line", "source", "response_ms", "outcome", "error", "text_chars", "language")


def outcomes_csv(rows: Iterable[Any]) -> str:
    """`rows` (kiosk.history.Outcome) as CSV, in their order; times in ISO 8601 with the local offset."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([iso_time(row.time), *(_cell(getattr(row, c)) for c in CSV_COLUMNS[1:])])
    return out.getvalue()


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
