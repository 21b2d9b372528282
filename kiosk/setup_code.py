"""The setup code: six digits the speaker says aloud when staff hold its setup button, so that whoever stands at
the exhibit can set (or reset) the staff password on the staff page without a shell.

A code is valid for `VALID_S` and once; a new hold replaces the old code. It lives only here, in memory: never
logged, kept in the history, published, captioned or cached (the line that says it is spoken `private`).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable

DIGITS = 6
VALID_S = 600.0
#: How long staff hold the setup button for a code (the config does not change it; tests may pass a shorter one).
HOLD_S = 5.0


class SetupCodes:
    """The one setup code in force, if any."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, valid_s: float = VALID_S):
        self._clock = clock
        self._valid_s = valid_s
        self._code: bytes | None = None
        self._until = 0.0

    def new(self) -> str:
        """A fresh code, replacing any earlier one."""
        code = f"{secrets.randbelow(10**DIGITS):0{DIGITS}d}"
        self._code, self._until = code.encode(), self._clock() + self._valid_s
        return code

    def use(self, typed: str) -> bool:
        """Whether `typed` is the code in force (compared in constant time); a right code is used up."""
        typed_bytes = typed.strip().replace(" ", "").encode("utf-8", "replace")
        code = self._code if self._code is not None and self._clock() < self._until else None
        right = hmac.compare_digest(typed_bytes, code or b"-" * DIGITS) and code is not None
        if right or code is None:
            self._code = None
        return right

    def forget(self) -> None:
        self._code = None


def spoken(code: str) -> str:
    """The words that say `code`: digit by digit, in two groups of three, twice."""
    groups = f"{' '.join(code[:3])}, {' '.join(code[3:])}"
    return f"Your setup code is {groups}. I repeat: {groups}."
