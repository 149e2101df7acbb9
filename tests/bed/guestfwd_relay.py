"""One TCP connection of a QEMU guest relayed to a port on the host's loopback.

QEMU's user-mode network runs this once per connection the guest opens to a
`guestfwd=tcp:IP:PORT-cmd:...` address, with that connection as its stdin,
stdout and stderr (tests/bed/qemu.py). A `guestfwd=...-tcp:HOST:PORT` chardev
cannot serve a registry client: it is ONE host connection, opened when QEMU
starts, that every guest connection to the address writes into, and what comes
back goes to the first guest socket to that address (libslirp's
slirp_find_ctl_socket), so a second connection, or the first one closing,
stalls everything after it.

    guestfwd_relay.py HOST PORT [LOG]     LOG: a line when connected, one when closed

Standard library only, nothing written to stderr (it is the guest's stream).
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

IDLE_LIMIT = 300.0   # seconds without a byte either way: the connection is given up (every wait bounded)


def relay(guest: socket.socket, upstream: socket.socket) -> tuple[int, int]:
    """Copy both ways until both sides have closed, or nothing has moved for
    IDLE_LIMIT; each side's end of data is passed on as a half-close (HTTP
    clients and servers may rely on it). Returns (bytes from the guest, bytes
    to the guest)."""
    peers = {guest: upstream, upstream: guest}
    counts = {guest: 0, upstream: 0}
    selector = selectors.DefaultSelector()
    for s in peers:
        selector.register(s, selectors.EVENT_READ)
    open_sides = len(peers)
    while open_sides:
        ready = selector.select(timeout=IDLE_LIMIT)
        if not ready:
            break
        for key, _ in ready:
            source: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = source.recv(1 << 16)
            except ConnectionError:
                data = b""
            if data:
                counts[source] += len(data)
                peers[source].sendall(data)
                continue
            selector.unregister(source)
            open_sides -= 1
            try:
                peers[source].shutdown(socket.SHUT_WR)
            except OSError:
                pass
    return counts[guest], counts[upstream]


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    log = argv[3] if len(argv) > 3 else os.devnull
    # stderr is the guest's connection: a traceback must not become its data.
    errors = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(errors, 2)
    started = time.monotonic()
    guest = socket.socket(fileno=0)
    try:
        upstream = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        os.write(errors, f"{os.getpid()} {host}:{port} refused: {exc}\n".encode())
        return 1
    upstream.settimeout(None)
    os.write(errors, f"{os.getpid()} {host}:{port} connected\n".encode())
    sent, received = relay(guest, upstream)
    os.write(errors, f"{os.getpid()} {host}:{port} closed after {time.monotonic() - started:.2f}s: "
                     f"{sent} bytes from the guest, {received} to it\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
