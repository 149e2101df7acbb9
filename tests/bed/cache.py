"""The test bed's cache (outside the clone, shared by clones and CI runs):
$PODVM_CACHE, default /var/cache/podvm-bootstrap. Builds in it hold a lock so
that concurrent test sessions build each thing once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.bed.proc import BedError, flock_within

DEFAULT_CACHE = "/var/cache/podvm-bootstrap"


def cache_dir() -> Path:
    path = Path(os.environ.get("PODVM_CACHE", DEFAULT_CACHE))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def cache_lock(cache: Path, timeout: float = 1200.0) -> Iterator[None]:
    """Exclusive lock on the cache, waited for at most `timeout` seconds."""
    with open(cache / ".lock", "a") as f:
        if not flock_within(f, timeout):
            raise BedError(f"the cache {cache} stayed locked for {timeout:.0f}s (another build?)")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
