"""GPIO push buttons and their LEDs, the PIR motion sensor and the volume knob (a rotary encoder). The only module that
imports gpiozero.

gpiozero calls `when_pressed` on its own thread; each press is handed to the event loop with
call_soon_threadsafe and all decisions (cooldown, policy) are made there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from gpiozero import LED, Button, Device, MotionSensor, RotaryEncoder
from gpiozero.exc import BadPinFactory, GPIOZeroError
from gpiozero.pins.mock import MockFactory

from kiosk.config import ButtonConfig, KnobConfig, PresenceConfig

log = logging.getLogger(__name__)

PressHandler = Callable[[ButtonConfig], None]


@dataclass(frozen=True)
class Hold:
    """A button held `seconds` calls `handler(button)` on the event loop, once per hold (which button's hold means
    something is the handler's to say). The press works as before: a hold starts with a press."""

    seconds: float
    handler: PressHandler


class Buttons:
    """The configured buttons; `on_press` runs on the event loop for every press outside its cooldown."""

    def __init__(
        self,
        configs: tuple[ButtonConfig, ...],
        on_press: PressHandler,
        *,
        loop: asyncio.AbstractEventLoop,
        pin_factory=None,
        clock: Callable[[], float] = time.monotonic,
        hold: Hold | None = None,
    ):
        self._on_press = on_press
        self._hold = hold
        self._loop = loop
        self._clock = clock
        self._last_press: dict[int, float] = {}
        self._devices: list = []
        self._leds: dict[int, LED] = {}
        self.cooled_down = 0  # presses ignored because they came within a button's cooldown
        self.factory = "none"
        self.error: str | None = None
        try:
            for cfg in configs:
                self._add(cfg, pin_factory)
            self.factory = _factory_name(pin_factory or Device.pin_factory)
        except (BadPinFactory, GPIOZeroError, OSError) as exc:
            self.close()
            self.error = f"GPIO unavailable, buttons disabled: {exc}"

    @property
    def simulated(self) -> bool:
        return self.factory == "mock"

    def _add(self, cfg: ButtonConfig, pin_factory) -> None:
        button = Button(
            cfg.pin, pull_up=cfg.pull_up, bounce_time=(cfg.bounce_ms / 1000) or None, pin_factory=pin_factory
        )
        button.when_pressed = lambda: self._loop.call_soon_threadsafe(self._pressed, cfg)
        hold = self._hold
        if hold is not None:
            button.hold_time = hold.seconds
            button.when_held = lambda: self._loop.call_soon_threadsafe(hold.handler, cfg)
        self._devices.append(button)
        if cfg.led is not None:
            led = LED(cfg.led, pin_factory=pin_factory)
            self._devices.append(led)
            self._leds[cfg.pin] = led

    def _pressed(self, cfg: ButtonConfig) -> None:
        now = self._clock()
        last = self._last_press.get(cfg.pin)
        if last is not None and now - last < cfg.cooldown_ms / 1000:
            self.cooled_down += 1
            return
        self._last_press[cfg.pin] = now
        self._on_press(cfg)

    def light(self, pin: int, on: bool) -> None:
        """Light (or put out) the LED of the button on `pin`, if it has one."""
        led = self._leds.get(pin)
        if led is not None:
            led.value = on

    def blink(self, pin: int, seconds: float = 5.0) -> bool:
        """Blink the LED of the button on `pin` so staff can find it; False when it has no LED."""
        led = self._leds.get(pin)
        if led is None:
            return False
        led.blink(on_time=0.25, off_time=0.25, n=max(1, round(seconds * 2)), background=True)
        return True

    def flash(self, pin: int, times: int) -> bool:
        """Flash the LED of the button on `pin` `times` times (a language button: the n-th language, n flashes)."""
        led = self._leds.get(pin)
        if led is None:
            return False
        led.blink(on_time=0.2, off_time=0.3, n=max(1, times), background=True)
        return True

    def close(self) -> None:
        for device in self._devices:
            try:
                device.close()
            except Exception as exc:  # closing must not stop a shutdown or a reload
                log.warning("closing %s failed: %s", device, exc)
        self._devices.clear()
        self._leds.clear()


class PresenceSensor:
    """A PIR motion sensor (its output high while it sees movement); `on_motion` runs on the event loop each time
    it starts to. Which motion is a new visitor is decided in kiosk.presses."""

    def __init__(
        self,
        cfg: PresenceConfig,
        on_motion: Callable[[], None],
        *,
        loop: asyncio.AbstractEventLoop,
        pin_factory=None,
        sample_rate: float = 20,
    ):
        self._sensor: MotionSensor | None = None
        self.error: str | None = None
        try:
            # One sample decides (a PIR module smooths its own output); sampled 20 times a second by gpiozero.
            self._sensor = MotionSensor(cfg.pin, queue_len=1, sample_rate=sample_rate, pin_factory=pin_factory)
            self._sensor.when_motion = lambda: loop.call_soon_threadsafe(on_motion)
            # Its first sample (within 1/sample_rate s) only sets the state: someone already there is no approach.
            # Waited for here, so that `active` never blocks the event loop.
            self._sensor.value  # noqa: B018
        except (BadPinFactory, GPIOZeroError, OSError) as exc:
            self.close()
            self.error = f"GPIO unavailable, presence sensor disabled: {exc}"

    @property
    def active(self) -> bool:
        """Whether the sensor sees movement now."""
        return self._sensor is not None and bool(self._sensor.motion_detected)

    def close(self) -> None:
        sensor, self._sensor = self._sensor, None
        _close_device(sensor)


class VolumeKnob:
    """A rotary encoder (gpiozero.RotaryEncoder, its common pin to ground); `on_turn(detents)` runs on the event loop
    with the detents turned since it last ran (clockwise positive). Detents that come while a call is on its way are
    added to it, so a fast spin arrives as a few calls, never a backlog of one per detent."""

    def __init__(
        self, cfg: KnobConfig, on_turn: Callable[[int], None], *, loop: asyncio.AbstractEventLoop, pin_factory=None
    ):
        self._on_turn = on_turn
        self._loop = loop
        self._lock = threading.Lock()  # detents are counted on gpiozero's thread, handed over on the event loop
        self._pending = 0
        self._on_its_way = False
        self._encoder: RotaryEncoder | None = None
        self.error: str | None = None
        try:
            # max_steps=0: only the detents matter here, never a position
            self._encoder = RotaryEncoder(cfg.a, cfg.b, max_steps=0, pin_factory=pin_factory)
            self._encoder.when_rotated_clockwise = lambda: self._turned(1)
            self._encoder.when_rotated_counter_clockwise = lambda: self._turned(-1)
        except (BadPinFactory, GPIOZeroError, OSError) as exc:
            self.close()
            self.error = f"GPIO unavailable, volume knob disabled: {exc}"

    def _turned(self, detent: int) -> None:  # gpiozero's thread
        with self._lock:
            self._pending += detent
            if self._on_its_way:
                return
            self._on_its_way = True
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:  # the event loop
        with self._lock:
            detents, self._pending, self._on_its_way = self._pending, 0, False
        if detents and self._encoder is not None:
            self._on_turn(detents)

    def close(self) -> None:
        encoder, self._encoder = self._encoder, None
        _close_device(encoder)


def _close_device(device) -> None:
    if device is not None:
        try:
            device.close()
        except Exception as exc:  # closing must not stop a shutdown or a reload
            log.warning("closing %s failed: %s", device, exc)


def pin_factory_report() -> tuple[str | None, str]:
    """(factory name, explanation) for gpiozero on this machine; name None when there is no GPIO at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpiozero warns for every factory it falls back from
        try:
            Device.ensure_pin_factory()
        except BadPinFactory as exc:
            return (
                None,
                f"no GPIO pin factory ({exc}); on a Pi install python3-lgpio, elsewhere "
                "set GPIOZERO_PIN_FACTORY=mock to simulate the buttons",
            )
    name = _factory_name(Device.pin_factory)
    if name == "mock":
        return name, "mock pin factory: buttons are simulated, not wired to anything"
    return name, f"{name} pin factory"


def _factory_name(factory) -> str:
    if factory is None:
        return "none"
    if isinstance(factory, MockFactory):
        return "mock"
    return type(factory).__name__.removesuffix("Factory").lower()
