"""The start rule for streamed audio, on made-up arrival times (the player test plays it on a clocked device)."""

import pytest

from kiosk.preroll import MIN_WINDOW_S, Arrivals, Preroll

RULE = Preroll(floor_s=0.12, max_wait_s=3.0)


def arrived(*chunks: tuple[float, float]) -> Arrivals:
    arrivals = Arrivals()
    for at, audio_s in chunks:
        arrivals.add(at, audio_s)
    return arrivals


def test_nothing_arrived_never_starts():
    assert not RULE.ready(Arrivals(), now=100.0, expected_s=5.0)


def test_fast_stream_starts_as_soon_as_the_floor_has_arrived():
    # 85 ms chunks every 28 ms: about 3x real time
    two_chunks = arrived((10.0, 0.085), (10.028, 0.085))
    assert RULE.ready(two_chunks, now=10.028, expected_s=50.0)
    assert not RULE.ready(arrived((10.0, 0.085)), now=10.028, expected_s=50.0)


def test_a_first_chunk_alone_says_nothing_about_the_rate():
    big_first = arrived((10.0, 0.6))
    assert not RULE.ready(big_first, now=10.0 + MIN_WINDOW_S / 2, expected_s=5.0)
    assert not RULE.ready(big_first, now=10.3, expected_s=5.0)  # nothing since: the rate is 0


def test_rate_is_measured_up_to_now_so_a_pause_holds_the_start_back():
    chunks = arrived((10.0, 0.085), (10.05, 0.085), (10.10, 0.085))  # 1.7x so far
    assert RULE.ready(chunks, now=10.10, expected_s=20.0)
    # 400 ms later with nothing new the rate is 0.17/0.5 = 0.34x: 20 s of line cannot be covered by 0.255 s
    assert not RULE.ready(chunks, now=10.50, expected_s=20.0)


@pytest.mark.parametrize("rate", [0.5, 0.8, 0.95])
def test_slow_stream_waits_until_the_buffer_covers_the_shortfall(rate):
    rule = Preroll(floor_s=0.12, max_wait_s=60.0)
    expected_s = 10.0
    chunk_s = 0.1
    arrivals = Arrivals()
    at = 0.0
    arrivals.add(at, chunk_s)
    while not rule.ready(arrivals, now=at, expected_s=expected_s):
        at += chunk_s / rate
        arrivals.add(at, chunk_s)
        assert at < rule.max_wait_s, "the rule should have started before max_wait_s"
    buffered = arrivals.total_s
    remaining = expected_s - buffered
    # started with enough to play until the last chunk arrives: remaining/rate of arrival vs buffered+remaining
    assert buffered - rule.floor_s >= remaining * (1 / arrivals.rate(at) - 1)
    # and not a chunk later than needed
    fewer = Arrivals(first_at=arrivals.first_at, first_s=arrivals.first_s, total_s=buffered - chunk_s)
    assert not rule.ready(fewer, now=at - chunk_s / rate, expected_s=expected_s)


def test_hopeless_stream_starts_after_max_wait():
    trickle = arrived((10.0, 0.05), (10.5, 0.05))
    assert not RULE.ready(trickle, now=12.9, expected_s=60.0)
    assert RULE.ready(trickle, now=13.0, expected_s=60.0)


def test_unknown_length_starts_at_the_floor():
    slow = arrived((10.0, 0.1), (10.2, 0.1))  # 0.5x
    assert RULE.ready(slow, now=10.2, expected_s=None)
    assert not RULE.ready(slow, now=10.2, expected_s=30.0)
