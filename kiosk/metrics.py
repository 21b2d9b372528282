"""Prometheus metrics for /metrics.

prometheus_client is used rather than hand-written text: the exposition format (escaping, histogram buckets,
_sum/_count, +Inf) is easy to get subtly wrong. Each service owns its own registry, never the global one.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # the *_created series only add noise to a small device's scrape

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Press → first audio: a cache hit should land in the lowest buckets, a streamed line in the 0.3-1 s ones.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.first_audio = Histogram(
            "kiosk_press_to_first_audio_seconds",
            "Request (button press or trigger) to first audio frame",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.lines = Counter("kiosk_lines_total", "Lines spoken, by outcome", ["outcome"], registry=r)
        self.underruns = Counter("kiosk_underruns_total", "Audio device underruns recovered", registry=r)
        self.cache_hits = Counter("kiosk_cache_hits_total", "Lines served from the phrase cache", registry=r)
        self.cache_misses = Counter("kiosk_cache_misses_total", "Lines that had to be synthesized", registry=r)
        self.engine_errors = Counter("kiosk_engine_errors_total", "Speech engine failures", ["engine"], registry=r)
        self.presses = Counter("kiosk_button_presses_total", "Button presses accepted", ["pin"], registry=r)
        self.rejected = Counter("kiosk_requests_rejected_total", "Requests not accepted", ["reason"], registry=r)
        self.speaking = Gauge("kiosk_speaking", "1 while a line is playing", registry=r)
        self.lines_ready = Gauge("kiosk_cache_lines_ready", "Configured lines ready offline in the cache", registry=r)
        self.lines_configured = Gauge("kiosk_cache_lines_configured", "Configured exhibit lines", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
