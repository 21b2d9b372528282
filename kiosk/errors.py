"""One root for every fault the product expects and explains in one line (no traceback)."""


class KioskError(Exception):
    """An expected fault: the message is written for the person at the console."""


class ConfigError(KioskError):
    """The configuration is invalid; `problems` holds every problem found, each "section.key: message"."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class AudioError(KioskError):
    """The audio device could not be opened or written."""


class SpeechError(KioskError):
    """A speech engine failed to deliver audio."""


class CacheError(KioskError):
    """The phrase cache could not be read or written."""
