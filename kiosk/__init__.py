"""Exhibit speaker: speaks museum exhibit lines through ALSA, streamed from a TTS engine or the phrase cache."""

__version__ = "0.1.0"
