"""Connections to a metadata service that end at the fetch's deadline, and
carry at most a byte budget, whatever the server does.

requests (and urllib3, and http.client under them) only know timeouts per
socket operation: a server that sends its status line, its headers or its
body one byte at a time, or an endless series of interim `100 Continue`
answers, resets them forever. So every socket a fetch opens is registered
with a `ConnectionGuard`:

- a connection serves one request: the guard shuts it down once the request
  is over, so that a connection the service keeps alive is never reused
  outside the guard's watch;
- at the deadline (a timer on the monotonic clock) the guard shuts the socket
  down, which ends any read or write in progress on it at once, in whatever
  phase (connect, status line, headers, body);
- a plain-HTTP socket also counts what it receives, and fails once an answer
  is larger than its budget (the body limit plus room for the status line and
  headers), so memory stays bounded at every phase too.

It works the same on urllib3 1.26 (Debian's, the pod VM image's) and 2.x (a
virtualenv's): both create each connection's socket in
`HTTPConnection._new_conn`, which the session's connection classes override.
Name resolution is the one step a shutdown cannot cut short (it is bounded by
the resolver's own timeouts; metadata endpoints are usually IP addresses).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from podvm_bootstrap.common.backoff import Deadline

# Room for the status line, interim answers and headers beyond the body limit.
HEADER_BUDGET = 64 * 1024


class AnswerTooLarge(OSError):
    """The server sent more than the connection's byte budget."""


class _BudgetSocket(socket.socket):
    """A socket that counts the bytes it receives and fails past `budget`."""

    budget: int = 0
    received: int = 0

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        count = super().recv_into(buffer, nbytes, flags)
        self._count(count)
        return count

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self._count(len(data))
        return data

    def _count(self, count: int) -> None:
        self.received += count
        if self.received > self.budget:
            raise AnswerTooLarge(f"answer larger than {self.budget} bytes")


class ConnectionGuard:
    """The sockets of one fetch: shut down at the deadline, budgeted in bytes.
    `budget` is set by the client before each request (its body limit)."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.budget = HEADER_BUDGET
        self.fired = False          # the deadline shut the connections down
        self.over_budget = False    # an answer was larger than its budget
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(deadline.remaining(), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def track(self, sock: socket.socket) -> socket.socket:
        """Register a new connection's socket; returns the socket to use."""
        if not isinstance(sock, _BudgetSocket) and sock.type == socket.SOCK_STREAM:
            timeout = sock.gettimeout()
            counted = _BudgetSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            counted.settimeout(timeout)
            counted.budget = self.budget + HEADER_BUDGET
            sock = counted
        with self._lock:
            # A duplicate descriptor of our own: shutting it down ends the
            # connection even after TLS wrapped (and took over) the original.
            self._sockets.append(sock.dup())
            if self.fired:
                self._shutdown_all()
        return sock

    def note_error(self, exc: BaseException) -> None:
        """Remember whether a failed request ran over its byte budget: the
        AnswerTooLarge is somewhere in what requests and urllib3 wrapped it in."""
        pending, seen = [exc], 0
        while pending and seen < 32:
            current = pending.pop()
            seen += 1
            if isinstance(current, AnswerTooLarge):
                self.over_budget = True
                return
            pending.extend(inner for inner in (current.__cause__, current.__context__,
                                               getattr(current, "reason", None), *current.args)
                           if isinstance(inner, BaseException))

    def release(self) -> None:
        """End the connections of a finished request and forget them. Shut
        down, not only forgotten: a service may keep a connection open
        whatever the request's `Connection: close` asked, and urllib3 would
        then reuse it for the next request, a socket this guard no longer
        watches (the deadline would not reach it, and a body dripped a byte
        at a time would run on forever). A shut-down connection reads as
        dropped: urllib3 opens a new one, which `track` sees."""
        with self._lock:
            self._shutdown_all()
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def close(self) -> None:
        self._timer.cancel()
        self.release()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown_all()

    def _shutdown_all(self) -> None:
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer or by us


def guarded_session(guard: ConnectionGuard) -> requests.Session:
    """A requests session whose every connection `guard` watches. Proxy
    variables from the environment are ignored (metadata services are
    link-local: a proxy must never see the request, the token or user-data)."""

    def new_conn(base: type[HTTPConnection]) -> Any:
        def _new_conn(self: Any) -> socket.socket:
            return guard.track(base._new_conn(self))
        return _new_conn

    connection = type("GuardedHTTPConnection", (HTTPConnection,), {"_new_conn": new_conn(HTTPConnection)})
    tls_connection = type("GuardedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn(HTTPSConnection)})
    pools = {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": connection}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls_connection}),
    }

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
