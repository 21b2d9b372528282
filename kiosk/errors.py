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
    """A speech engine failed to deliver audio.

    `kind` lets the engine chain decide what to do: "auth" (key missing or refused) and "quota" (out of credit)
    put the engine in back-off at once; "transient" (network, timeout, 5xx, rate limit) only when repeated;
    "cut" means audio had already been heard when the stream broke.
    """

    def __init__(self, message: str, kind: str = "other"):
        super().__init__(message)
        self.kind = kind


class CacheError(KioskError):
    """The phrase cache could not be read or written."""
