"""Fake cloud metadata services on loopback, behaving like Azure IMDS, AWS
IMDS, the GCE metadata server and Alibaba's, for tests and for feeding a
booted test VM.

In a test:
    with running_metadata_server("aws", user_data=b"#cloud-config\\n") as fake:
        fetch(... fake.url ...); fake.requests  # what was asked

As a script (serves until SIGTERM or SIGINT, prints its URL on stdout):
    python -m tests.fakes.metadata --cloud aws --port 8080 --user-data FILE
"""

from __future__ import annotations

import argparse
import base64
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CLOUDS = ("azure", "aws", "gcp", "alibaba")
AZURE_PATH = "/metadata/instance/compute/userData"
AWS_TOKEN_PATH = "/latest/api/token"
USERDATA_PATH = "/latest/user-data"  # aws, alibaba
GCP_ATTRIBUTES = "/computeMetadata/v1/instance/attributes/"
AWS_TOKEN = "AQAEAFakeImdsV2Token=="
GARBAGE = b"%%% this is not base64 %%%"


@dataclass
class Behaviour:
    cloud: str
    user_data: bytes | None = None     # None: the VM has none (404; Azure: empty 200)
    failures: int = 0                  # the first N requests answer failure_status
    failure_status: int = 503
    delay: float = 0.0                 # seconds before each answer...
    delayed: int | None = None         # ...of the first N requests (None: all)
    garbage: bool = False              # a body that does not decode (Azure, GCP base64)
    oversize: int | None = None        # answer the user-data with this many bytes instead
    chunked: bool = False              # send bodies without Content-Length (until close)
    imdsv1_only: bool = False          # aws: the token PUT is refused with token_status
    token_status: int = 403
    aws_token: str = AWS_TOKEN         # aws: the token the PUT hands out and GETs must carry
    gcp_encoding: str | None = None    # gcp: user-data-encoding attribute; "base64" encodes
    answer_status: int | None = None   # answer every request with this status (e.g. 400, 302)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class MetadataServer(ThreadingHTTPServer):
    daemon_threads = False   # server_close() joins the handler threads...
    block_on_close = True

    def __init__(self, address: tuple[str, int], behaviour: Behaviour) -> None:
        if behaviour.cloud not in CLOUDS:
            raise ValueError(f"unknown cloud {behaviour.cloud!r}")
        super().__init__(address, MetadataHandler)
        self.behaviour = behaviour
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # ...which end quickly: delays wait on this

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, request: RecordedRequest) -> int:
        with self.lock:
            self.requests.append(request)
            return len(self.requests)

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class MetadataHandler(BaseHTTPRequestHandler):
    server: MetadataServer
    timeout = 5  # socket timeout: a stuck client cannot hold a thread forever
    server_version = "FakeMetadata/1"

    def log_message(self, format: str, *args: object) -> None:
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        b = self.server.behaviour
        number = self.server.record(RecordedRequest(self.command, self.path, dict(self.headers.items())))
        if b.delay and (b.delayed is None or number <= b.delayed) and self.server.stopping.wait(b.delay):
            return
        try:
            if number <= b.failures:
                self._send(b.failure_status, b"internal error\n")
            elif b.answer_status is not None:
                self._send(b.answer_status, b"fixed answer\n",
                           {"Location": "http://127.0.0.1:9/elsewhere"} if 300 <= b.answer_status < 400 else None)
            else:
                status, body, headers = getattr(self, f"_{b.cloud}")(b, urlsplit(self.path))
                self._send(status, body, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up reading (e.g. it refused an oversize body)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if not self.server.behaviour.chunked:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            for start in range(0, len(body), 64 * 1024):
                self.wfile.write(body[start:start + 64 * 1024])
        self.close_connection = True

    def _user_data(self, b: Behaviour) -> bytes | None:
        if b.oversize is not None:
            return b"x" * b.oversize
        return b.user_data

    # One method per cloud: (status, body, headers) for a request.

    def _azure(self, b: Behaviour, url) -> tuple[int, bytes, dict[str, str] | None]:
        if self.headers.get("Metadata") != "true":
            return 400, b'{"error": "Bad request. Required metadata header not specified"}', None
        query = parse_qs(url.query)
        if url.path != AZURE_PATH:
            return 404, b"not found", None
        if "api-version" not in query or query.get("format") != ["text"] or self.command != "GET":
            return 400, b'{"error": "Bad request"}', None
        data = self._user_data(b)
        if b.garbage:
            return 200, GARBAGE, {"Content-Type": "text/plain"}
        if data is None:
            return 200, b"", {"Content-Type": "text/plain"}  # what Azure does: empty, not 404
        return 200, data if b.oversize is not None else base64.b64encode(data), {"Content-Type": "text/plain"}

    def _aws(self, b: Behaviour, url) -> tuple[int, bytes, dict[str, str] | None]:
        if url.path == AWS_TOKEN_PATH:
            if self.command != "PUT":
                return 405, b"", None
            if b.imdsv1_only:
                return b.token_status, b"", None
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, b"", None
            return 200, b.aws_token.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        if not b.imdsv1_only and self.headers.get("X-aws-ec2-metadata-token") != b.aws_token:
            return 401, b"", None
        if url.path != USERDATA_PATH or self.command != "GET":
            return 404, b"", None
        data = self._user_data(b)
        return (404, b"", None) if data is None else (200, data, {"Content-Type": "application/octet-stream"})

    def _gcp(self, b: Behaviour, url) -> tuple[int, bytes, dict[str, str] | None]:
        flavor = {"Metadata-Flavor": "Google"}
        if self.headers.get("Metadata-Flavor") != "Google":
            return 403, b"Missing Metadata-Flavor:Google header.", flavor
        data = self._user_data(b)
        if url.path == GCP_ATTRIBUTES + "user-data" and data is not None:
            if b.garbage:
                return 200, GARBAGE, flavor
            encoded = b.gcp_encoding == "base64" and b.oversize is None
            return 200, base64.b64encode(data) if encoded else data, flavor
        if url.path == GCP_ATTRIBUTES + "user-data-encoding" and b.gcp_encoding is not None:
            return 200, b.gcp_encoding.encode(), flavor
        return 404, b"not found", flavor

    def _alibaba(self, b: Behaviour, url) -> tuple[int, bytes, dict[str, str] | None]:
        data = self._user_data(b)
        if url.path != USERDATA_PATH or data is None:
            return 404, b"", None
        return 200, data, None


@contextmanager
def running_metadata_server(cloud: str, host: str = "127.0.0.1", port: int = 0,
                            **behaviour: object) -> Iterator[MetadataServer]:
    """A fake metadata service of `cloud` on loopback, serving in a thread."""
    server = MetadataServer((host, port), Behaviour(cloud, **behaviour))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"fake-{cloud}-metadata", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=10)


# --- raw answers: what no HTTP library would send --------------------------------

class RawServer:
    """A loopback TCP server that answers each connection with `answer(conn,
    stop)`, a function that writes whatever bytes it likes, as slowly as it
    likes (waiting on `stop`, set when the server stops, so that every wait
    ends). Counts the connections and records, per connection, whether the
    client hung up before the answer was over (`cut`)."""

    def __init__(self, answer, backlog: int = 16) -> None:
        self.answer = answer
        self.stop_event = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.listener.settimeout(0.05)
        self.connections = 0
        self.requests: list[bytes] = []  # each request's head, as received
        self.cut: list[bool] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, name="raw-metadata", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = _read_request(conn)
                with self.lock:
                    self.requests.append(request)
                if getattr(self.answer, "wants_request", False):
                    self.answer(conn, self.stop_event, request)
                else:
                    self.answer(conn, self.stop_event)
                cut = False
            except OSError:  # the client closed or shut down the connection mid-answer
                cut = True
            with self.lock:
                self.cut.append(cut)

    def start(self) -> RawServer:
        self.acceptor.start()
        return self

    def stop(self) -> None:
        # An answer the client hung up on ends by itself within two of its
        # writes: give those a moment to be recorded as cut, then stop the rest.
        for thread in list(self.threads):
            thread.join(timeout=2)
        self.stop_event.set()
        self.acceptor.join(timeout=10)
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=10)


def _read_request(conn: socket.socket) -> bytes:
    """The request head (bounded): the answer starts once it is in."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@contextmanager
def running_raw_server(answer, backlog: int = 16) -> Iterator[RawServer]:
    server = RawServer(answer, backlog).start()
    try:
        yield server
    finally:
        server.stop()


def head(status: str = "200 OK", headers: dict[str, str] | None = None, *, raw_headers: bytes = b"") -> bytes:
    """A status line and headers, ending the head (Connection: close)."""
    lines = [f"HTTP/1.1 {status}".encode()]
    lines += [f"{name}: {value}".encode() for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n" + raw_headers + b"Connection: close\r\n\r\n"


def send_then_close(data: bytes):
    """An answer of fixed bytes, then the connection closes."""
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(data)
    return answer


def drip(prefix: bytes, byte: bytes = b"x", interval: float = 0.05):
    """`prefix` at once, then `byte` every `interval` seconds until the server
    stops: a phase (status line, headers, body) that never ends."""
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(prefix)
        while not stop.wait(interval):
            conn.sendall(byte)
    return answer


def kept_alive(first: bytes, then, seen: list[bytes] | None = None):
    """An IMDSv2-like service that keeps its connections alive: a PUT gets
    `first` (a whole answer without `Connection: close`, with its
    Content-Length), then the next request on that same connection (its head
    appended to `seen`) is answered by `then`; any other request, on a new
    connection, by `then` at once. What a client that reuses its connection
    meets (the token PUT, then the user-data GET)."""
    def answer(conn: socket.socket, stop: threading.Event, request: bytes) -> None:
        if request.startswith(b"PUT "):
            conn.sendall(first)
            following = _read_request(conn)
            if seen is not None:
                seen.append(following)
            if not following:
                return
        then(conn, stop)
    answer.wants_request = True  # type: ignore[attr-defined]
    return answer


def endless_continue(interval: float = 0.0):
    """Interim `100 Continue` answers, one after another until the server stops."""
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        while not stop.wait(interval):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.metadata",
                                     description="Serve a fake cloud metadata service until SIGTERM.")
    parser.add_argument("--cloud", choices=CLOUDS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user-data", metavar="FILE", help="the user-data to serve (none: 404)")
    parser.add_argument("--gcp-encoding", choices=("base64", "plain"))
    parser.add_argument("--imdsv1-only", action="store_true")
    parser.add_argument("--failures", type=int, default=0, help="answer the first N requests with 503")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = parser.parse_args(argv)
    user_data = None
    if args.user_data:
        with open(args.user_data, "rb") as f:
            user_data = f.read()
    server = MetadataServer((args.host, args.port), Behaviour(
        args.cloud, user_data=user_data, gcp_encoding=args.gcp_encoding, imdsv1_only=args.imdsv1_only,
        failures=args.failures, delay=args.delay))
    server.verbose = args.verbose  # type: ignore[attr-defined]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    print(server.url, flush=True)
    while not stop.wait(1.0):
        pass
    server.stop()
    thread.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
