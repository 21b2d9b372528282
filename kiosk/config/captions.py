"""The `captions:` section: the public captions and transcript pages (kiosk.captions), served on a port of their own
so that a crowd of phones following the captions can never take a connection from the trigger API or the staff page.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.config.fields import _bounded

DEFAULT_PROMPT = "Press the button to hear about this exhibit."


@dataclass(frozen=True)
class CaptionsConfig:
    """Live captions at /captions and the exhibit's transcript at /transcript: read-only, no login."""

    enabled: bool = True
    bind: str = "0.0.0.0"  # visitors' phones on the exhibit's network; 127.0.0.1 keeps it to a screen on the Pi
    port: int = _bounded(8081, 0, 65535)  # 0: any free port
    title: str = ""  # the exhibit's name, shown between lines; empty: none
    prompt: str = DEFAULT_PROMPT  # shown between lines
