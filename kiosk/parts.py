"""The speaker's live parts, as the service built them.

One object that the service fills at start and changes in place on a reload, so that whoever reads it — the app
interface (kiosk.app), the status board (kiosk.status), the presses (kiosk.presses) — always sees the current
engine, cache and config. The service builds and replaces the parts; the core's helpers keep their own state here
too (the presses: the buttons and when each was last pressed; the upkeep tasks: warm progress, the engines'
reachability, the config file's problem). Adapters never see it: they get the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kiosk.announcer import Announcer
from kiosk.buttons import Buttons, PresenceSensor, VolumeKnob
from kiosk.cache import PhraseCache
from kiosk.captions.feed import CaptionFeed
from kiosk.clock import TrustedClock
from kiosk.config import Config
from kiosk.device import DeviceKeeper
from kiosk.events import EventLog
from kiosk.history import History
from kiosk.languages import LanguageChoice
from kiosk.player import Player
from kiosk.ratelimit import RateLimiter
from kiosk.schedule import Scheduler
from kiosk.setup_code import SetupCodes
from kiosk.speaker import Speaker
from kiosk.speech import SpeechEngine
from kiosk.speech.chain import EngineChain
from kiosk.supervisor import Supervisor
from kiosk.visitor import VisitorVolume
from kiosk.warm import new_progress


@dataclass(eq=False)
class Parts:
    """What the service is made of now. The fields without a default are set as the service is built and started."""

    cfg: Config
    config_path: Path | None
    history: History
    event_log: EventLog
    supervisor: Supervisor
    language_choice: LanguageChoice
    visitor_volume: VisitorVolume
    captions: CaptionFeed  # what the live captions show now
    clock: TrustedClock  # whether the wall clock can be believed (kiosk.clock)
    device: DeviceKeeper = field(init=False)
    cache: PhraseCache = field(init=False)
    engines: EngineChain = field(init=False)
    voices: dict[str, EngineChain] = field(init=False)
    player: Player = field(init=False)
    announcer: Announcer = field(init=False)
    speaker: Speaker = field(init=False)
    limiter: RateLimiter = field(init=False)
    scheduler: Scheduler = field(init=False)
    buttons: Buttons | None = None
    presence: PresenceSensor | None = None  # the motion sensor, where `presence:` sets a pin
    knob: VolumeKnob | None = None  # the visitor's volume knob, where `knob:` sets both pins
    gain: float = 1.0  # software gain where the device has no mixer
    api_token: str | None = None
    api_key: str | None = None
    port: int | None = None
    staff_port: int | None = None
    captions_port: int | None = None
    config_problem: str | None = None  # the config file on disk, when it cannot be used
    secret_problems: list[str] = field(default_factory=list)  # a key or token file that cannot be read
    engine_state: dict = field(default_factory=lambda: {"reachable": None, "error": None, "checked_at": None})
    warm: dict = field(default_factory=new_progress)
    last_pressed: dict[int, float] = field(default_factory=dict)  # GPIO pin → wall-clock time of its last press
    setup_codes: SetupCodes = field(default_factory=SetupCodes)  # the code the setup button's hold last spoke

    @property
    def engine(self) -> SpeechEngine:
        """The voice that speaks lines first (the others stand in when it fails)."""
        return self.engines.primary
