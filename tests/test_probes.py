"""Probes against real sockets, files and a real podman container."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvm_bootstrap.config.model import Probe
from podvm_bootstrap.runtime.probes import run_probe
from tests.bed.proc import free_port
from tests.runtime_podman import Podman


def test_unix_socket_probe(tmp_path: Path) -> None:
    path = tmp_path / "run" / "agent.sock"
    probe = Probe("unix_socket", "/run/agent.sock")
    ok, detail = run_probe(probe, "c", 1.0, root=tmp_path)
    assert not ok and "No such file" in detail
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        assert run_probe(probe, "c", 1.0, root=tmp_path) == (True, "")
    # A socket file that nobody listens on any more.
    ok, detail = run_probe(probe, "c", 1.0, root=tmp_path)
    assert not ok and "refused" in detail.lower()


def test_tcp_probe() -> None:
    port = free_port()
    probe = Probe("tcp", f"127.0.0.1:{port}")
    assert run_probe(probe, "c", 1.0)[0] is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen(1)
        assert run_probe(probe, "c", 1.0) == (True, "")


def test_file_probe(tmp_path: Path) -> None:
    probe = Probe("file", "/run/ready.marker")
    assert run_probe(probe, "c", 1.0, root=tmp_path) == (False, "/run/ready.marker does not exist")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ready.marker").write_text("")
    assert run_probe(probe, "c", 1.0, root=tmp_path) == (True, "")


@pytest.fixture(scope="module")
def container() -> Iterator[Podman]:
    with Podman.running() as podman:
        image = podman.make_image("probe")
        podman.cli("run", "-d", "--name", "probed", "--network", "host", image, "/bin/busybox", "sleep", "600")
        try:
            yield podman
        finally:
            podman.cli("rm", "-f", "-t", "0", "probed")


@pytest.mark.podman
def test_exec_probe_runs_in_the_container(container: Podman) -> None:
    socket_path = container.socket
    ok, detail = run_probe(Probe("exec", ("/bin/busybox", "test", "-f", "/marker")), "probed", 10.0,
                           podman_socket=socket_path)
    assert (ok, detail) == (True, "")
    ok, detail = run_probe(Probe("exec", ("/bin/busybox", "test", "-f", "/nothere")), "probed", 10.0,
                           podman_socket=socket_path)
    assert not ok and "exited 1" in detail
    ok, detail = run_probe(Probe("exec", ("/bin/busybox", "true")), "no-such-container", 10.0,
                           podman_socket=socket_path)
    assert not ok and "exec /bin/busybox" in detail


@pytest.mark.podman
def test_exec_probe_that_hangs_is_bounded(container: Podman) -> None:
    ok, detail = run_probe(Probe("exec", ("/bin/busybox", "sleep", "60")), "probed", 1.0,
                           podman_socket=container.socket)
    assert not ok and "exec /bin/busybox" in detail
