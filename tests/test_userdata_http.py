"""The pure parts of the HTTP helper: backoff, deadline, base64 transport."""

from __future__ import annotations

import base64

import pytest

from podvm_bootstrap.common.backoff import Backoff, Deadline
from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.userdata.sources.http import base64_limit
from podvm_bootstrap.userdata.sources.transport import decode_base64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_down_on_its_clock_and_never_goes_negative():
    clock = FakeClock()
    deadline = Deadline(10.0, clock)
    assert deadline.remaining() == 10.0 and not deadline.expired()
    clock.now += 7.5
    assert deadline.remaining() == 2.5
    clock.now += 5
    assert deadline.remaining() == 0.0 and deadline.expired()


def test_backoff_doubles_from_initial_up_to_the_cap():
    backoff = Backoff(initial=0.5, cap=5.0)
    upper = [backoff.delay(n, rng=lambda: 1.0) for n in range(1, 8)]
    assert upper == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_jitter_stays_between_half_and_full_delay():
    backoff = Backoff(initial=0.5, cap=5.0)
    assert backoff.delay(3, rng=lambda: 0.0) == 1.0
    assert backoff.delay(3, rng=lambda: 0.5) == 1.5
    for n in range(1, 50):  # real randomness, and huge attempt numbers do not overflow
        assert 0.25 <= Backoff(0.5, 5.0).delay(n) <= 5.0
    assert Backoff(0.5, 5.0).delay(10**6, rng=lambda: 1.0) == 5.0


def test_base64_limit_leaves_room_for_max_size_bytes_encoded_with_line_breaks():
    for size in (1, 2, 3, 57, 1000, 256 * 1024):
        assert len(base64.encodebytes(b"\xff" * size)) <= base64_limit(size)


def test_decode_base64_accepts_line_breaks_and_refuses_garbage_and_oversize():
    data = bytes(range(256)) * 4
    assert decode_base64("azure", base64.encodebytes(data), len(data)) == data
    with pytest.raises(UserDataError, match="^azure: user-data is not valid base64"):
        decode_base64("azure", b"abc$", 100)
    with pytest.raises(UserDataError, match="^gcp: user-data is larger than max_size"):
        decode_base64("gcp", base64.b64encode(data), len(data) - 1)
