"""A hostile metadata service, on both HTTP stacks the daemon runs on: the
virtualenv's requests + urllib3 2.x, and the pod VM image's Debian
python3-requests + urllib3 1.26 (run with Debian's /usr/bin/python3).

Each answer comes from a raw-socket server on 127.0.0.1 (tests/fakes/metadata.py)
that sends what no HTTP library would: a phase that never ends, endless
interim answers, stacked encodings, a body shorter than its Content-Length,
a Content-Length that is not a number. `podvm-bootstrap userdata` must end
with one error line (exit 1) and print nothing, whatever it gets; the wait
for it is bounded (a hang fails the test), never timed.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.metadata import drip, endless_continue, head, kept_alive, running_raw_server, send_then_close

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"  # Debian's interpreter: python3-requests, urllib3 1.26
STACKS = {"venv": sys.executable, "debian": DEBIAN_PYTHON}
USER_DATA = b"#cloud-config\nwrite_files: []\n"
HANG_GUARD = 30  # seconds: a fetch still running then is a hang (the fetch's own timeout is 1-2 s)


@dataclass
class Outcome:
    code: int
    stdout: bytes
    stderr: str


def fetch(stack: str, url: str, timeout: float = 1.0, tmp: Path | None = None, provider: str = "alibaba") -> Outcome:
    """`podvm-bootstrap userdata` from the provider (alibaba) at `url`, under the stack's interpreter."""
    config = tmp or Path("/nonexistent-config")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
    result = subprocess.run(
        [STACKS[stack], "-m", "podvm_bootstrap", "--config-dir", str(config), "--root", str(config),
         "userdata", "--provider", provider, "--endpoint", url, "--timeout", str(timeout)],
        cwd=REPO, env=env, capture_output=True, timeout=HANG_GUARD)
    return Outcome(result.returncode, result.stdout, result.stderr.decode("utf-8", "replace"))


def assert_refused(outcome: Outcome, *words: str) -> str:
    """Exit 1, nothing printed, no traceback, and an error line with `words`."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.code == 1, outcome.stderr
    assert outcome.stdout == b""
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("podvm-bootstrap: error: ")]
    assert len(errors) == 1, outcome.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


stacks = pytest.mark.parametrize("stack", list(STACKS))


def test_the_two_stacks_are_the_two_urllib3_generations():
    versions = {}
    for stack, python in STACKS.items():
        out = subprocess.run([python, "-c", "import requests, urllib3; print(urllib3.__version__)"],
                             capture_output=True, text=True, timeout=60, check=True)
        versions[stack] = out.stdout.strip()
    assert versions["venv"].startswith("2.") and versions["debian"].startswith("1.26"), versions


@stacks
def test_a_well_formed_answer_is_fetched_and_asks_for_identity_encoding(stack):
    answer = head(headers={"Content-Length": str(len(USER_DATA))}) + USER_DATA
    with running_raw_server(send_then_close(answer)) as server:
        outcome = fetch(stack, server.url)
    assert (outcome.code, outcome.stdout) == (0, USER_DATA), outcome.stderr
    assert b"\r\naccept-encoding: identity\r\n" in server.requests[0].lower()


# --- encodings and lengths ------------------------------------------------------------

def gzip_bomb(layers: int) -> bytes:
    """User-data that inflates to 64 MiB through `layers` gzip layers."""
    data = USER_DATA + b"#" * (64 * 1024 * 1024)
    for _ in range(layers):
        data = gzip.compress(data, compresslevel=9)
    return data


@stacks
@pytest.mark.parametrize("encoding, layers", [("gzip, gzip", 2), ("gzip", 1), ("deflate", 0), ("br", 0)])
def test_any_content_encoding_is_refused_and_never_inflated(stack, encoding, layers):
    body = gzip_bomb(layers) if layers else USER_DATA
    answer = head(headers={"Content-Encoding": encoding, "Content-Length": str(len(body))}) + body
    with running_raw_server(send_then_close(answer)) as server:
        assert_refused(fetch(stack, server.url), f"has Content-Encoding {encoding!r}", "only identity")
    assert server.connections == 1  # refused at once, not retried


@stacks
def test_a_body_shorter_than_its_content_length_is_never_taken_for_the_whole(stack):
    answer = head(headers={"Content-Length": str(len(USER_DATA) + 100)}) + USER_DATA
    with running_raw_server(send_then_close(answer)) as server:
        assert_refused(fetch(stack, server.url), "cannot fetch user-data", "body incomplete")
    assert server.connections >= 1


@stacks
@pytest.mark.parametrize("value", ["\u00b2".encode("latin-1"), "\u0663".encode(), b"1, 1", b"-1", b"+30", b"0x1e",
                                   b"1" * 30])
def test_a_content_length_that_is_not_a_plain_number_is_one_error_line(stack, value):
    answer = head(raw_headers=b"Content-Length: " + value + b"\r\n") + USER_DATA
    with running_raw_server(send_then_close(answer)) as server:
        assert_refused(fetch(stack, server.url), "cannot fetch user-data")
    assert server.connections >= 1


# --- the deadline, at every phase ---------------------------------------------------------

PHASES = {
    "status line": drip(b"HTTP/1.1 200 O"),
    "headers": drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
    "body": drip(head(headers={"Content-Length": "200000"}) + b"#cloud-config\n", b"#"),
    "interim 100 Continue": endless_continue(interval=0.05),
}


@stacks
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_server_that_never_finishes_a_phase_is_cut_at_the_deadline(stack, phase):
    with running_raw_server(PHASES[phase]) as server:
        assert_refused(fetch(stack, server.url, timeout=1.0), "within 1s", "cut at the deadline")
    # the server was still sending when the client hung up: the fetch ended at
    # its deadline, not at the end of an answer (there is none)
    assert server.cut and all(server.cut), server.cut


@stacks
def test_a_connect_that_never_completes_ends_at_the_deadline(stack):
    # A listener whose one-slot backlog is full: the kernel drops further SYNs.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener, socket.socket() as filler:
        filler.connect(listener.getsockname())
        host, port = listener.getsockname()[:2]
        url = f"http://{host}:{port}"
        assert_refused(fetch(stack, url, timeout=1.0), "within 1s", "not connected within")


@stacks
def test_the_deadline_holds_on_a_connection_kept_alive_after_a_first_answer(stack):
    """AWS: the token PUT is answered normally on a connection the service
    keeps open (whatever the request's `Connection: close` asked), then the
    user-data GET on it drips its body a byte every 200 ms. A reused
    connection escaped the deadline's guard (it watched only new sockets):
    the fetch ran on and on, each byte resetting the read timeout."""
    token = b"token-kept-alive"
    first = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(token), token)
    seen: list[bytes] = []
    dripping = drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x", interval=0.2)
    with running_raw_server(kept_alive(first, dripping, seen)) as server:
        started = time.monotonic()
        outcome = fetch(stack, server.url, timeout=2.0, provider="aws")
        took = time.monotonic() - started
    assert_refused(outcome, "within 2s")
    assert took < 2.0 + 10.0, took   # the interpreter's start-up, and the deadline: not the 30 s hang guard
    # The service did answer the PUT and see a GET with the token: the case this is about.
    assert server.requests[0].startswith(b"PUT /latest/api/token ")
    assert any(r.startswith(b"GET /latest/user-data ") and token in r for r in seen + server.requests[1:]), \
        (seen, server.requests)


# --- size, at every phase -------------------------------------------------------------------

@stacks
@pytest.mark.parametrize("phase, answer", [
    ("interim answers", endless_continue()),
    ("headers", send_then_close(b"HTTP/1.1 200 OK\r\n" + b"".join(
        b"X-Big-%d: %s\r\n" % (n, b"a" * 60000) for n in range(90)) + b"\r\n" + USER_DATA)),
])
def test_an_answer_larger_than_its_budget_is_refused_at_any_phase(stack, phase, answer):
    with running_raw_server(answer) as server:
        assert_refused(fetch(stack, server.url, timeout=30.0), "is larger than", "refused")
    assert server.connections == 1  # not retried: a service that sends too much is refused


# --- plan (and run, through the same stage) go on with the baked defaults ----------------

@stacks
@pytest.mark.parametrize("answer", [
    drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
    send_then_close(head(raw_headers="Content-Length: \u00b2\r\n".encode("latin-1")) + USER_DATA),
    send_then_close(head(headers={"Content-Encoding": "gzip, gzip", "Content-Length": "20"}) + b"x" * 20),
], ids=["headers-never-end", "superscript-length", "stacked-encoding"])
def test_plan_goes_on_with_the_baked_defaults_after_a_hostile_answer(stack, tmp_path, answer):
    import json
    import shutil

    config = tmp_path / "config"
    shutil.copytree(REPO / "image" / "config", config)
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(bootstrap.read_text().replace("timeout: 180s", "timeout: 1s"))
    with running_raw_server(answer) as server:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
        result = subprocess.run(
            [STACKS[stack], "-m", "podvm_bootstrap", "--config-dir", str(config), "--root", str(tmp_path),
             "plan", "--json", "--provider", "alibaba", "--endpoint", server.url],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if "user-data ignored" in line], result.stderr
    assert {c["source"] for c in json.loads(result.stdout)["components"]} == {"default"}
