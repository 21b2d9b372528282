"""What the captions show now, and the pages that follow them.

The announcer tells the feed when a line starts to be heard (the moment its first audio reaches the device, and again
whenever the device ran dry and the line slipped later), when better word times are known, and when it ends. Each
page that follows gets the whole current state whenever it changes, with the line's position as heard at the moment
it is sent, so a page that joins mid-line or misses a change is right at once. A follower's change flag is one
`asyncio.Event`: changes in a burst are sent once, and a page that stops reading holds nothing but that flag.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kiosk.captions.timing import Word
from kiosk.config import right_to_left

#: The most pages one speaker feeds, and the most from one address (a screen, a few phones behind one NAT).
MAX_FOLLOWERS = 200
MAX_PER_ADDRESS = 16


class TooManyFollowers(Exception):
    pass


@dataclass
class _Line:
    token: object
    text: str
    language: str | None
    words: Sequence[Word]
    heard_from: float  # monotonic time at which the line's first sample was heard


@dataclass(eq=False)
class Follower:
    address: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    displaced: bool = False  # its place went to a page from a lighter address: its stream ends


class CaptionFeed:
    def __init__(
        self,
        *,
        title: str = "",
        prompt: str = "",
        clock: Callable[[], float] = time.monotonic,
        max_followers: int = MAX_FOLLOWERS,
        max_per_address: int = MAX_PER_ADDRESS,
    ):
        self.title = title
        self.prompt = prompt
        self._clock = clock
        self._line: _Line | None = None
        self._followers: dict[Follower, None] = {}  # oldest first
        self._per_address: Counter[str] = Counter()
        self._max_followers = max_followers
        self._max_per_address = max_per_address
        self._ids = itertools.count(1)
        self._line_id = 0
        self.closed = False

    # -- told by the announcer

    def heard(self, token: object, text: str, language: str | None, words: Sequence[Word], heard_from: float) -> None:
        """`text` (identified by `token`) was first heard at monotonic time `heard_from` (called again when the
        device ran dry and the line slipped later, or when another voice took the line over)."""
        line = self._line
        if line is not None and line.token is token and line.text == text:
            line.heard_from = heard_from
        else:
            self._line = _Line(token, text, language, words, heard_from)
            self._line_id = next(self._ids)
        self._changed()

    def retimed(self, token: object, words: Sequence[Word]) -> None:
        """Better word times for the line `token` (from its whole audio)."""
        if self._line is not None and self._line.token is token and words:
            self._line.words = words
            self._changed()

    def ended(self, token: object) -> None:
        """The line `token` has played out or was stopped: back to the exhibit's name and prompt."""
        if self._line is not None and self._line.token is token:
            self._line = None
            self._changed()

    def close(self) -> None:
        """The speaker is stopping: every page's stream ends (the pages reconnect to whoever serves next)."""
        self.closed = True
        self._changed()

    def configure(self, *, title: str, prompt: str) -> None:
        if (title, prompt) != (self.title, self.prompt):
            self.title, self.prompt = title, prompt
            self._changed()

    # -- read by the pages

    def state(self) -> dict:
        """What the captions show now; a line's position is as heard at this moment."""
        line = self._line
        if line is None:
            return {"state": "idle", "title": self.title, "prompt": self.prompt}
        language = line.language or ""
        return {
            "state": "speaking",
            "id": self._line_id,
            "title": self.title,
            "text": line.text,
            "language": language,
            "rtl": right_to_left(language),
            "words": [w.as_json() for w in line.words],
            "position_ms": round(1000 * (self._clock() - line.heard_from)),
        }

    def follow(self, address: str) -> Follower:
        """A new page following the captions; raises TooManyFollowers past the limits. Pass it to `unfollow`."""
        if self._per_address[address] >= self._max_per_address:
            raise TooManyFollowers("too many caption pages from this address")
        if len(self._followers) >= self._max_followers and not self._make_room(address):
            raise TooManyFollowers("too many pages are following the captions; try again later")
        follower = Follower(address)
        follower.changed.set()  # the current state is sent first
        self._followers[follower] = None
        self._per_address[address] += 1
        return follower

    def _make_room(self, address: str) -> bool:
        """At the limit, a page takes the place of the oldest page of the address holding the most, provided that
        address holds more than twice as many as the newcomer's will (much as kiosk.web.server's connection guard
        does): a few machines holding every place with pages that never read never lock a new visitor out, and
        machines holding about as many each never take each other's places (they would only come back at once)."""
        busiest, held = max(self._per_address.items(), key=lambda item: item[1], default=("", 0))
        if held <= 2 * (self._per_address[address] + 1):
            return False
        oldest = next(f for f in self._followers if f.address == busiest)
        self.unfollow(oldest)
        oldest.displaced = True
        oldest.changed.set()
        return True

    def unfollow(self, follower: Follower) -> None:
        if follower in self._followers:
            del self._followers[follower]
            self._per_address[follower.address] -= 1
            if self._per_address[follower.address] <= 0:
                del self._per_address[follower.address]

    @property
    def followers(self) -> int:
        return len(self._followers)

    def _changed(self) -> None:
        for follower in self._followers:
            follower.changed.set()
