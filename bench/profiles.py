"""The networks and the lines the benchmark speaks. Every profile is seeded: a seed replays the same arrivals."""

from __future__ import annotations

from fake_openai import BYTES_PER_SECOND, Behaviour, pcm_for

CHUNK = [4096]

#: Served by the loopback test server under /profiles/NAME/SEED/v1.
PROFILES = {
    # ≈350 ms to the first byte, then ≈3x real time in ~4 KB chunks with ±30 ms jitter
    "typical": Behaviour(first_byte_delay_s=0.35, realtime_factor=3.0, chunk_sizes=CHUNK, jitter_s=0.03),
    # ≈700 ms, then ≈1.2x real time
    "slow": Behaviour(first_byte_delay_s=0.70, realtime_factor=1.2, chunk_sizes=CHUNK, jitter_s=0.03),
    # the first chunk with the first byte, then whatever is ready every ~400 ms: 1.5x real time on average
    "bursty": Behaviour(
        first_byte_delay_s=0.35, realtime_factor=1.5, chunk_sizes=CHUNK, jitter_s=0.03, burst_every_s=0.4
    ),
    # typical, with one ~800 ms stall halfway through the audio
    "stall": Behaviour(
        first_byte_delay_s=0.35,
        realtime_factor=3.0,
        chunk_sizes=CHUNK,
        jitter_s=0.03,
        stall_at_fraction=0.5,
        stall_s=0.8,
    ),
}

#: A line already in the phrase cache; the usual approaches have no cache, so they have nothing to show here.
CACHED = "cached"
#: The network the cached line was first fetched over.
CACHED_FROM = "typical"

LINES = {
    # 6 words, 1.9 s
    "brief": "Welcome to the hall of minerals.",
    # 15 words
    "short": "Press the brass lever and watch the gears of the orrery carry the planets around.",
    # 150 words
    "long": (
        "This clock was built in 1754 by a Geneva watchmaker for a merchant who wanted to know the time in every "
        "port his ships sailed to. Its six small dials show the hours in London, Lisbon, Cadiz, Amsterdam, "
        "Constantinople and Canton, and a seventh, larger dial in the centre keeps the time of Geneva itself. "
        "Inside, a single spring drives all seven trains of gears for eight days at a time. The case is walnut, "
        "inlaid with brass and mother of pearl, and the glass on the front is original: look closely and you will "
        "see small bubbles trapped in it. The clock stopped in 1891 and stood silent for more than a century. "
        "In 2004 our conservators cleaned every wheel, replaced two worn pivots by hand, and set it going again. "
        "It has kept time ever since, losing less than a minute each week. Listen: you can hear it tick."
    ),
}


def audio_s(text: str) -> float:
    """Seconds of audio the test server sends for `text`."""
    return len(pcm_for(text)) / BYTES_PER_SECOND
