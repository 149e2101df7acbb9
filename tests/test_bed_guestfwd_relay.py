"""The QEMU VM's one way out (tests/bed/qemu.py, tests/bed/guestfwd_relay.py):
a relay process per guest connection, as QEMU's `guestfwd=...-cmd:` runs it
(the connection as stdin, stdout and stderr), tried here without a guest:
a real registry client (skopeo, several connections, some at once) copies an
image through an inetd-like listener that runs the relay per connection."""

from __future__ import annotations

import hashlib
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.bed.qemu import GUEST_REGISTRY, RELAY, QemuVM, network_argv
from tests.bed.registry import Registry


def run_relay(conn: socket.socket, port: int, log: Path) -> subprocess.Popen:
    """What libslirp's fork_exec does for a guest connection: the relay with
    the connection as its stdin, stdout and stderr."""
    return subprocess.Popen([sys.executable, "-I", str(RELAY), "127.0.0.1", str(port), str(log)],
                            stdin=conn, stdout=conn, stderr=conn)


@contextmanager
def relaying_listener(port: int, log: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """127.0.0.1:<free port> that hands each connection to a new relay to
    `port`; yields (its address, the relays run so far)."""
    listener = socket.create_server(("127.0.0.1", 0))
    relays: list[subprocess.Popen] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                relays.append(run_relay(conn, port, log))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", relays
    finally:
        listener.close()
        thread.join(5)
        for relay in relays:
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()


def test_a_registry_client_copies_an_image_through_one_relay_per_connection(
        bed_registry: Registry, standin_images, tmp_path: Path) -> None:
    v2 = standin_images[("agent-protocol-forwarder", "v2")]
    log = tmp_path / "relay.log"
    with relaying_listener(bed_registry.port, log) as (address, relays):
        out = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                              f"docker://{address}/{v2.repository}@{v2.digest}", f"oci:{tmp_path / 'copy'}:v2"],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    copied = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'copy'}:v2"],
                            capture_output=True, check=True, timeout=60).stdout
    assert "sha256:" + hashlib.sha256(copied).hexdigest() == v2.digest
    # Every connection was a relay of its own, and each one ended when its
    # client and the registry were done (nothing left behind).
    lines = log.read_text().splitlines()
    assert len(relays) >= 2 and all(r.returncode == 0 for r in relays), lines
    assert len([x for x in lines if x.endswith(" connected")]) == len(relays), lines
    assert len([x for x in lines if " closed after " in x]) == len(relays), lines


def test_the_relay_says_nothing_into_the_guests_stream(tmp_path: Path) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()   # nothing listens there now
    guest, theirs = socket.socketpair()
    with guest:
        relay = run_relay(theirs, port, tmp_path / "relay.log")
        theirs.close()
        guest.settimeout(10)
        # The guest sees its connection end with no data: a refused upstream
        # is in the log, not a message written into the guest's TCP stream.
        assert guest.recv(100) == b""
        assert relay.wait(10) == 1
    assert f"127.0.0.1:{port} refused" in (tmp_path / "relay.log").read_text()


def test_the_vm_has_no_network_without_a_registry_and_one_restricted_forward_with_it(tmp_path: Path) -> None:
    vm = QemuVM("podvm-argv", tmp_path / "a,b", None)  # type: ignore[arg-type]
    assert network_argv(vm, None) == ["-nic", "none"]
    registry = Registry(5999, tmp_path, None)  # type: ignore[arg-type]
    argv = network_argv(vm, registry)
    assert argv[0] == "-netdev" and argv[2:] == ["-device", "virtio-net-pci,netdev=net0"]
    options = argv[1].replace(",,", "\0").split(",")
    assert options[:4] == ["user", "id=net0", "restrict=on", "ipv6=off"]
    host, port = GUEST_REGISTRY
    forwards = [o for o in options if "fwd=" in o]
    assert len(forwards) == 1 and forwards[0].startswith(f"guestfwd=tcp:{host}:{port}-cmd:"), forwards
    command = shlex.split(forwards[0].split("-cmd:", 1)[1].replace("\0", ","))
    assert command == [sys.executable, "-I", str(RELAY), "127.0.0.1", "5999", str(tmp_path / "a,b" / "guestfwd.log")]
