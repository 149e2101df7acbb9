"""Pacing of retries, shared by user-data fetches, image pulls and component
restarts: a monotonic deadline and capped, jittered exponential backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


class Deadline:
    """A point in time on a monotonic clock."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, capped, with "equal jitter": the delay of attempt n
    lies in [d/2, d] where d = min(cap, initial * 2**(n-1)). Never zero, so a
    failing service is not hammered; jittered, so a fleet booting together
    does not retry in lockstep."""

    initial: float = 0.5
    cap: float = 5.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        base: float = min(self.cap, self.initial * (2 ** min(max(attempt - 1, 0), 32)))
        return base / 2 + rng() * base / 2
