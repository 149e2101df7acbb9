"""Ready/health probes, each one bounded attempt: (ok, detail).

unix_socket and tcp connect; file checks existence; exec runs the argv in the
component's container through the podman API. `notify` needs systemd (the
unit reached active) and is answered by the daemon, not here."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from podvm_bootstrap.common.errors import one_line
from podvm_bootstrap.common.paths import under_root
from podvm_bootstrap.config.model import Probe


def run_probe(probe: Probe, container: str, timeout: float, *, root: Path = Path("/"),
              podman_socket: str = "/run/podman/podman.sock") -> tuple[bool, str]:
    try:
        if probe.kind == "unix_socket":
            return _unix(under_root(root, str(probe.target)), timeout)
        if probe.kind == "tcp":
            return _tcp(str(probe.target), timeout)
        if probe.kind == "file":
            path = under_root(root, str(probe.target))
            return (True, "") if os.path.exists(path) else (False, f"{probe.target} does not exist")
        if probe.kind == "exec":
            return _exec(tuple(probe.target), container, timeout, podman_socket)
    except OSError as exc:
        return False, exc.strerror or str(exc)
    return False, f"probe kind {probe.kind} is not run here"


def _unix(path: Path, timeout: float) -> tuple[bool, str]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except TimeoutError:
            return False, f"connect to {path} timed out"
    return True, ""


def _tcp(target: str, timeout: float) -> tuple[bool, str]:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except TimeoutError:
        return False, f"connect to {target} timed out"
    return True, ""


def _exec(argv: tuple[str, ...], container: str, timeout: float, podman_socket: str) -> tuple[bool, str]:
    from podman import PodmanClient

    try:
        with PodmanClient(base_url=f"http+unix://{podman_socket}", timeout=timeout) as client:
            code, output = client.containers.get(container).exec_run(list(argv))
    except Exception as exc:  # noqa: BLE001 - not found, API error, timeout: all a failed probe
        return False, f"exec {argv[0]}: {one_line(exc, 200)}"
    if code == 0:
        return True, ""
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    return False, f"exec {argv[0]} exited {code}: {one_line(text, 200)}"
