"""The start gate (gate.py): its pure parts, and the gate itself in a real
podman container (runc, this machine's static busybox bind-mounted): nothing
of the component runs before the release, the released argv is exactly what
the daemon handed over, and a gate opened without a release ends the
container instead of running anything."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvm_bootstrap.gate import (
    EXIT_NOT_RELEASED,
    GateError,
    exec_argv,
    gate_entrypoint,
    gate_volumes,
    open_waiting_gate,
    prepare_fifo,
    release,
    release_payload,
)
from tests.runtime_podman import Podman

NASTY = ["/bin/busybox", "sh", "-c", 'printf "%s|" "$@" > /out/argv', "$0", "a b", "it's", "$HOME", "`id`",
         "line\nbreak", "", "\\", '"q"', "*"]


@pytest.mark.parametrize("config, command, expected", [
    ({"config": {"Entrypoint": ["/e"], "Cmd": ["c", "d"]}}, (), ["/e", "c", "d"]),
    ({"config": {"Entrypoint": ["/e"], "Cmd": ["c"]}}, ("x", "y"), ["/e", "x", "y"]),   # command replaces Cmd
    ({"config": {"Entrypoint": None, "Cmd": ["/c"]}}, (), ["/c"]),
    ({"config": {"Cmd": ["/c"]}}, ("/m", "-v"), ["/m", "-v"]),
])
def test_exec_argv_is_what_podman_itself_would_run(config: dict, command: tuple, expected: list) -> None:
    assert exec_argv(config, command) == expected


@pytest.mark.parametrize("config, command", [
    ({"config": {}}, ()),                                   # nothing to run
    ({"config": {"Entrypoint": "/bin/sh -c x"}}, ()),        # not a list
    ({"config": {"Cmd": ["/c", 3]}}, ()),
    ({"config": {"Cmd": ["/c\0x"]}}, ()),
    ({}, ()),
])
def test_exec_argv_refuses_what_cannot_be_run(config: dict, command: tuple) -> None:
    with pytest.raises(GateError):
        exec_argv(config, command)


def test_release_payload_is_read_back_by_a_shell_as_the_same_words(tmp_path: Path) -> None:
    """The very script the gate runs (eval "set -- $p"), in this machine's busybox sh."""
    payload = release_payload(NASTY)
    out = subprocess.run(["/bin/busybox", "sh", "-c", 'p=$(cat) && eval "set -- $p" && printf "%s\\0" "$@"'],
                         input=payload, capture_output=True, check=True, timeout=10).stdout
    assert out.split(b"\0")[:-1] == [w.encode() for w in NASTY]


def test_no_waiting_reader_means_no_gate_and_a_fifo_is_kept_across_prepares(tmp_path: Path) -> None:
    fifo = prepare_fifo(tmp_path / "gates", "c")
    inode = fifo.stat().st_ino
    assert prepare_fifo(tmp_path / "gates", "c").stat().st_ino == inode   # a waiting container holds it
    assert oct(fifo.stat().st_mode & 0o777) == "0o644"
    assert open_waiting_gate(fifo, deadline=0.0) is None                  # one look, nobody there
    (tmp_path / "gates" / "d.fifo").write_text("not a fifo")
    with pytest.raises(GateError, match="not a FIFO"):           # never written into as if it were the gate
        open_waiting_gate(tmp_path / "gates" / "d.fifo", deadline=0.0)
    assert prepare_fifo(tmp_path / "gates", "d").is_fifo()


@pytest.fixture()
def podman() -> Iterator[Podman]:
    with Podman.running() as p:
        yield p


def _run_gated(podman: Podman, image: str, gates: Path, out: Path, name: str) -> None:
    podman.cli("run", "-d", "--name", name, "--network=none", f"--volume={out}:/out",
               *(f"--volume={v}" for v in gate_volumes(gates, name)), f"--entrypoint={gate_entrypoint()}", image)


def _exit_code(podman: Podman, name: str) -> int:
    return int(podman.cli("wait", name))


def test_a_gated_container_runs_nothing_until_released_then_execs_exactly_the_argv(podman: Podman,
                                                                                      tmp_path: Path) -> None:
    image = podman.make_image("gate")
    gates, out = tmp_path / "gates", tmp_path / "out"
    out.mkdir()
    fifo = prepare_fifo(gates, "gated")
    _run_gated(podman, image, gates, out, "gated")
    fd = open_waiting_gate(fifo, deadline=time.monotonic() + 30)
    assert fd is not None                                  # the container waits at its gate ...
    assert podman.cli("inspect", "-f", "{{.State.Running}}", "gated") == "true"
    assert not (out / "argv").exists()                     # ... and nothing of it ran
    release(fd, NASTY)
    assert _exit_code(podman, "gated") == 0
    assert (out / "argv").read_bytes() == "".join(f"{w}|" for w in NASTY[5:]).encode()


def test_a_gate_opened_and_closed_without_a_release_ends_the_container(podman: Podman, tmp_path: Path) -> None:
    image = podman.make_image("gate")
    gates, out = tmp_path / "gates", tmp_path / "out"
    out.mkdir()
    fifo = prepare_fifo(gates, "refused")
    _run_gated(podman, image, gates, out, "refused")
    fd = open_waiting_gate(fifo, deadline=time.monotonic() + 30)
    assert fd is not None
    os.close(fd)                                           # what the daemon does when verification fails
    assert _exit_code(podman, "refused") == EXIT_NOT_RELEASED
    assert os.listdir(out) == []
    logs = subprocess.run([*podman.argv, "logs", "refused"], env=podman.env, capture_output=True, text=True,
                          timeout=30)
    assert "podvm-gate: not released" in logs.stdout + logs.stderr


def test_units_name_the_gates_as_the_pod_vm_sees_them(tmp_path: Path) -> None:
    from podvm_bootstrap.gate import unit_gate_dir

    assert unit_gate_dir(Path("/"), Path("/run/podvm-bootstrap")) == "/run/podvm-bootstrap/gates"
    assert unit_gate_dir(tmp_path, tmp_path / "run/podvm-bootstrap") == "/run/podvm-bootstrap/gates"   # --root
    assert unit_gate_dir(Path("/"), tmp_path / "state") == f"{tmp_path}/state/gates"                 # --state-dir
