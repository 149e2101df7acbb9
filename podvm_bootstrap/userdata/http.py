"""HTTP to a metadata service: bounded, retried, never unbounded in time or size.

One fetch has one monotonic deadline that covers every attempt and every
sleep between attempts. Connection errors, timeouts, 5xx and 429 are retried
with capped, jittered exponential backoff; 404 and the statuses a caller names
are answered to the caller at once; anything else is a UserDataError."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Collection, Mapping

import requests

from podvm_bootstrap.backoff import Backoff, Deadline
from podvm_bootstrap.errors import UserDataError
from podvm_bootstrap.log import get_logger

log = get_logger("userdata")

CHUNK = 16 * 1024


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

    def __init__(self, provider: str, deadline: Deadline, *, retry: RetryPolicy | None = None,
                 session: requests.Session | None = None) -> None:
        self.provider = provider
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self.session = session or _new_session()
        self.attempts = 0  # every request made, for logs and errors

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "MetadataClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, url: str, *, what: str, limit: int,
                headers: Mapping[str, str] | None = None,
                answer: Collection[int] = (404,)) -> Reply:
        """The reply to `method url`: 2xx with its body (at most `limit` bytes,
        else UserDataError), or a status in `answer` without a body. Retries
        until the deadline; raises UserDataError when it passes."""
        attempt, reason = 0, "no time left for an attempt"
        while True:
            remaining = self.deadline.remaining()
            if remaining <= 0.0:
                raise UserDataError(
                    f"{self.provider}: cannot fetch {what} from {url} within {self.deadline.seconds:g}s "
                    f"({attempt} attempt{'' if attempt == 1 else 's'}, last: {reason})")
            attempt += 1
            self.attempts += 1
            try:
                reply = self._attempt(method, url, headers, min(remaining, self.retry.attempt_timeout),
                                      what=what, limit=limit, answer=answer)
            except _Retryable as exc:
                reason = str(exc)
            else:
                return reply
            delay = min(self.retry.backoff.delay(attempt), self.deadline.remaining())
            if delay > 0.0:
                log.warning("%s: %s: attempt %d failed (%s); retrying in %.2fs",
                            self.provider, what, attempt, reason, delay)
                time.sleep(delay)

    def _attempt(self, method: str, url: str, headers: Mapping[str, str] | None, timeout: float, *,
                 what: str, limit: int, answer: Collection[int]) -> Reply:
        try:
            response = self.session.request(method, url, headers=dict(headers or {}), timeout=timeout,
                                            stream=True, allow_redirects=False)
        except requests.Timeout:
            raise _Retryable(f"no answer within {timeout:.2f}s") from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"connection failed: {_root_cause(exc)}") from None
        except (requests.RequestException, ValueError) as exc:
            # Malformed URL or header: retrying cannot help.
            raise UserDataError(f"{self.provider}: cannot request {what} from {url}: {exc}") from None
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

    def _read_body(self, response: requests.Response, url: str, *, what: str, limit: int) -> bytes:
        too_large = UserDataError(f"{self.provider}: {what} from {url} is larger than {limit} bytes; refused")
        length = response.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise too_large
        body = bytearray()
        try:
            for chunk in response.iter_content(CHUNK):
                body += chunk
                if len(body) > limit:
                    raise too_large
                if self.deadline.expired():
                    raise _Retryable("body not received in time")
        except requests.RequestException as exc:  # connection dropped or read timed out mid-body
            raise _Retryable(f"body incomplete: {_root_cause(exc)}") from None
        return bytes(body)


class _Retryable(Exception):
    pass


def _new_session() -> requests.Session:
    session = requests.Session()
    # Metadata services are link-local; an HTTP(S)_PROXY from the environment
    # must never see the request (nor the token or user-data).
    session.trust_env = False
    return session


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
