"""The MQTT topic contract, in one place (`<p>` is mqtt.prefix, `<id>` the device id):

<p>/<id>/availability   retained  online | offline (offline is also the last will)
<p>/<id>/status         retained  JSON: state, lines ready/configured, volume, problems, version, ...
<p>/<id>/event          -         JSON for each press and each line played
<p>/<id>/action         -         button_<pin> on each press of a physical button (Home Assistant triggers)
<p>/<id>/error          -         JSON answer to a command that was refused
<p>/<id>/<command>      commands: play, stop, volume, mute, reload, update; also on <p>/all/... and <p>/group/<g>/...
"""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = ("play", "stop", "volume", "mute", "reload", "update")


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str
    groups: tuple[str, ...] = ()

    def own(self, name: str) -> str:
        return f"{self.prefix}/{self.device}/{name}"

    @property
    def availability(self) -> str:
        return self.own("availability")

    @property
    def status(self) -> str:
        return self.own("status")

    @property
    def event(self) -> str:
        return self.own("event")

    @property
    def action(self) -> str:
        return self.own("action")

    @property
    def error(self) -> str:
        return self.own("error")

    def command_bases(self) -> list[str]:
        """Where commands for this speaker arrive: its own topics, all speakers', each of its groups'."""
        return [
            f"{self.prefix}/{self.device}",
            f"{self.prefix}/all",
            *(f"{self.prefix}/group/{g}" for g in self.groups),
        ]

    def command_topics(self) -> list[str]:
        return [f"{base}/{command}" for base in self.command_bases() for command in COMMANDS]

    def command_of(self, topic: str) -> str | None:
        """The command a topic carries, if it is one addressed to this speaker."""
        base, _, command = topic.rpartition("/")
        return command if command in COMMANDS and base in self.command_bases() else None


def target_base(prefix: str, *, device: str | None = None, group: str | None = None) -> str:
    """Where to send a command: one speaker, a group, or (neither) all of them."""
    if device:
        return f"{prefix}/{device}"
    if group:
        return f"{prefix}/group/{group}"
    return f"{prefix}/all"
