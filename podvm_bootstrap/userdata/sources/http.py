"""HTTP to a metadata service: bounded, retried, never unbounded in time or size.

One fetch has one monotonic deadline that covers every attempt and every
sleep between attempts. Connection errors, timeouts, 5xx and 429 are retried
with capped, jittered exponential backoff; 404 and the statuses a caller names
are answered to the caller at once; anything else is a UserDataError."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import requests
import urllib3

from podvm_bootstrap.common.backoff import Backoff, Deadline
from podvm_bootstrap.common.errors import UserDataError, one_line
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.userdata.sources.connections import HEADER_BUDGET, ConnectionGuard, guarded_session

log = get_logger("userdata")

CHUNK = 16 * 1024
_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class RetryPolicy:
    """Pacing of one fetch; tests pass small values."""

    initial_backoff: float = 0.5
    max_backoff: float = 5.0
    attempt_timeout: float = 10.0  # cap of one request (connect, and each read)

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.initial_backoff, self.max_backoff)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes | None  # None unless 2xx


class MetadataClient:
    """Requests to one provider's metadata service within one deadline."""

    def __init__(self, provider: str, deadline: Deadline, *, retry: RetryPolicy | None = None) -> None:
        self.provider = provider
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self.guard = ConnectionGuard(deadline)
        self.session = guarded_session(self.guard)
        self.attempts = 0  # every request made, for logs and errors

    def close(self) -> None:
        self.session.close()
        self.guard.close()

    def __enter__(self) -> MetadataClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, url: str, *, what: str, limit: int,
                headers: Mapping[str, str] | None = None,
                answer: Collection[int] = (404,)) -> Reply:
        """The reply to `method url`: 2xx with its body (at most `limit` bytes,
        else UserDataError), or a status in `answer` without a body. Retries
        until the deadline; raises UserDataError when it passes."""
        attempt, reason, answered = 0, "no time left for an attempt", ""
        while True:
            remaining = self.deadline.remaining()
            if remaining <= 0.0:
                # The last attempt is often the one the deadline cut: the
                # service's last real answer says more to the operator.
                before = f"; before: {answered}" if answered and answered != reason else ""
                raise UserDataError(
                    f"{self.provider}: cannot fetch {what} from {url} within {self.deadline.seconds:g}s "
                    f"({attempt} attempt{'' if attempt == 1 else 's'}, last: {reason}{before})")
            attempt += 1
            self.attempts += 1
            # Once connected, the guard cuts the connection at the deadline
            # (whatever phase it is in): the read timeout is only the cap of
            # one socket operation. A connect ends at the deadline by its own
            # timeout (the guard sees the socket once it is connected).
            cap = self.retry.attempt_timeout
            timeout = (min(cap, remaining), cap if cap < remaining else remaining + 1.0)
            self.guard.budget = limit
            try:
                reply = self._attempt(method, url, headers, timeout, what=what, limit=limit, answer=answer)
            except _Retryable as exc:
                reason = "cut at the deadline" if self.guard.fired and exc.cut_possible else str(exc)
                answered = answered if reason == "cut at the deadline" else reason
            else:
                if not self.guard.fired:
                    return reply
                # A connection shut down at the deadline ends like an answer
                # (a status line cut short still parses): never take it for one.
                reason = "cut at the deadline"
            finally:
                self.guard.release()
            delay = min(self.retry.backoff.delay(attempt), self.deadline.remaining())
            if delay > 0.0:
                log.warning("%s: %s: attempt %d failed (%s); retrying in %.2fs",
                            self.provider, what, attempt, reason, delay)
                time.sleep(delay)

    def _attempt(self, method: str, url: str, headers: Mapping[str, str] | None, timeout: tuple[float, float], *,
                 what: str, limit: int, answer: Collection[int]) -> Reply:
        # identity only: a compressed body would be inflated past every bound
        # by some urllib3 versions; one connection per request, so that each
        # is a new socket the guard watches.
        sent = {**(headers or {}), "Accept-Encoding": "identity", "Connection": "close"}
        try:
            response = self.session.request(method, url, headers=sent, timeout=timeout,
                                            stream=True, allow_redirects=False)
        except requests.ConnectTimeout:
            raise _Retryable(f"not connected within {timeout[0]:.2f}s", cut_possible=False) from None
        except requests.Timeout:
            raise _Retryable(f"no answer within {timeout[1]:.2f}s") from None
        except requests.ConnectionError as exc:
            self._too_large(exc, url, what=what, limit=limit)
            raise _Retryable(f"connection failed: {_root_cause(exc)}") from None
        except (requests.RequestException, ValueError) as exc:
            # Malformed URL or header: retrying cannot help.
            raise UserDataError(f"{self.provider}: cannot request {what} from {url}: {one_line(exc, 200)}") from None
        with response:
            status = response.status_code
            if 200 <= status < 300:
                return Reply(status, self._read_body(response, url, what=what, limit=limit))
            if status in answer:
                return Reply(status, None)
            if status >= 500 or status == 429:
                raise _Retryable(f"HTTP {status}")
            raise UserDataError(f"{self.provider}: {what} from {url} refused: HTTP {status}"
                                + (" (redirects are not followed)" if 300 <= status < 400 else ""))

    def _too_large(self, exc: BaseException, url: str, *, what: str, limit: int) -> None:
        self.guard.note_error(exc)
        if self.guard.over_budget:
            raise UserDataError(f"{self.provider}: {what} from {url} is larger than {limit} bytes "
                                f"(with its headers, {limit + HEADER_BUDGET}); refused") from None

    def _read_body(self, response: requests.Response, url: str, *, what: str, limit: int) -> bytes:
        """The body, exactly as sent: no Content-Encoding is accepted (nothing
        is ever inflated), and a Content-Length is checked both ways."""
        def refused(problem: str) -> UserDataError:
            return UserDataError(f"{self.provider}: {what} from {url} {problem}; refused")

        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise refused(f"has Content-Encoding {one_line(encoding, 40)!r} (only identity is accepted)")
        length = _content_length(response.headers)
        if length is not None and length > limit:
            raise refused(f"is larger than {limit} bytes")
        body = bytearray()
        try:
            while True:
                chunk = response.raw.read(CHUNK, decode_content=False)
                if not chunk:
                    break
                body += chunk
                if len(body) > limit:
                    raise refused(f"is larger than {limit} bytes")
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError) as exc:  # connection dropped, or cut at the deadline, mid-body
            self._too_large(exc, url, what=what, limit=limit)
            raise _Retryable(f"body incomplete: {_root_cause(exc)}") from None
        if length is not None and len(body) != length:
            # urllib3 1.26 returns a body cut short as if it were whole
            raise _Retryable(f"body incomplete: {len(body)} of its Content-Length {length} bytes")
        return bytes(body)


def _content_length(headers: Mapping[str, str]) -> int | None:
    """The Content-Length header as a number; None when there is none. Only
    ASCII digits: str.isdigit() also accepts '²' or '٣', which int() refuses.
    With a Transfer-Encoding beside it, or more than one value, the answer
    is ambiguous: never used, and the attempt fails (retried like a broken
    connection)."""
    value = headers.get("Content-Length")
    if value is None:
        return None
    if headers.get("Transfer-Encoding") is not None or not _DIGITS.fullmatch(value.strip()):
        raise _Retryable(f"invalid Content-Length {one_line(value, 40)!r}")
    return int(value.strip())


class _Retryable(Exception):
    def __init__(self, reason: str, *, cut_possible: bool = True) -> None:
        super().__init__(reason)
        self.cut_possible = cut_possible  # False: failed before the guard saw a socket


def _root_cause(exc: BaseException) -> str:
    for _ in range(10):  # requests → urllib3 → socket error, a few layers deep
        inner = exc.__cause__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)
        if inner is None:
            break
        exc = inner
    text = str(exc) or type(exc).__name__
    # urllib3 wraps "[Errno 111] Connection refused" in a long repr; keep the errno part.
    marker = text.rfind("[Errno")
    return text[marker:].rstrip(")'\"") if marker >= 0 else text


def base64_limit(max_size: int) -> int:
    """How many bytes of base64 (with some whitespace) can carry max_size bytes."""
    return 4 * -(-max_size // 3) + 2 * -(-max_size // 57) + 64
