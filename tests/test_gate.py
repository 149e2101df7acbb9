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

from podvm_bootstrap.config.model import Component, ContainerSpec, Plan, PlannedComponent
from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.units.gate import (
    EXIT_NOT_RELEASED,
    EXIT_TERMINATED,
    GATE_FIFO,
    GATE_SCRIPT,
    GateError,
    exec_argv,
    fifo_path,
    gate_entrypoint,
    gate_volumes,
    open_waiting_gate,
    prepare_fifo,
    release,
    release_payload,
    remove_other_fifos,
)
from podvm_bootstrap.units.render import render_units, unit_gate_fifo, unit_gate_key
from tests.bed.proc import wait_until
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


def test_release_payload_is_read_back_by_the_gate_script_as_the_same_words(tmp_path: Path) -> None:
    """The very script the gate runs, in this machine's busybox sh, reading
    the release from a file in its FIFO's place: the words exec'd are the
    words released (newlines, quotes and all)."""
    release_file = tmp_path / "release"
    release_file.write_bytes(release_payload(["printf", "%s\\0", *NASTY]))
    script = GATE_SCRIPT.replace(GATE_FIFO, str(release_file))
    out = subprocess.run(["/bin/busybox", "sh", "-c", script, "podvm-gate"],
                         capture_output=True, check=True, timeout=10).stdout
    assert out.split(b"\0")[:-1] == [w.encode() for w in NASTY]


def test_no_waiting_reader_means_no_gate_and_a_fifo_is_kept_across_prepares(tmp_path: Path) -> None:
    fifo = prepare_fifo(tmp_path / "gates", "c", "k1")
    assert fifo == tmp_path / "gates" / "c" / "k1.fifo"
    inode = fifo.stat().st_ino
    assert prepare_fifo(tmp_path / "gates", "c", "k1").stat().st_ino == inode   # a waiting container holds it
    assert oct(fifo.stat().st_mode & 0o777) == "0o644"
    assert open_waiting_gate(fifo, deadline=0.0) is None                  # one look, nobody there
    (tmp_path / "gates" / "d").mkdir()
    (tmp_path / "gates" / "d" / "k1.fifo").write_text("not a fifo")
    with pytest.raises(GateError, match="not a FIFO"):           # never written into as if it were the gate
        open_waiting_gate(tmp_path / "gates" / "d" / "k1.fifo", deadline=0.0)
    assert prepare_fifo(tmp_path / "gates", "d", "k1").is_fifo()


def _planned(image: str = "quay.io/x/aa@sha256:" + "1" * 64, source: str = "default",
             **container: object) -> PlannedComponent:
    spec = ContainerSpec(**{"command": ("aa", "-c", "/run/peerpod/aa.toml"), "network": "host", **container})
    component = Component(name="aa", image=parse_reference(image), unit="aa.service", container=spec)
    return PlannedComponent(component, parse_reference(image), source, None)  # type: ignore[arg-type]


def test_a_gate_fifo_is_bound_to_the_container_definition_its_unit_runs() -> None:
    base = unit_gate_fifo(_planned())
    # The same plan, built again: the same FIFO (systemd's own restarts, a restarted daemon adopting).
    assert unit_gate_fifo(_planned()) == base
    assert base.startswith("/run/podvm-bootstrap/gates/aa/") and base.endswith(".fifo")
    # Another image (a variant, an override), another setting: another FIFO, so
    # a container of the other definition is never released by this plan.
    others = [_planned("quay.io/x/aa@sha256:" + "2" * 64, "variant"),
              _planned("quay.io/x/aa-snp@sha256:" + "1" * 64, "override"),
              _planned(privileged=True), _planned(env=(("A", "1"),))]
    paths = [unit_gate_fifo(p) for p in others]
    assert base not in paths and len(set(paths)) == len(paths)
    # The command is not the container's: it is handed over at the release
    # (the unit text does not carry it either), so the same container keeps its FIFO.
    assert unit_gate_fifo(_planned(command=("aa", "-v"))) == base
    # The unit binds exactly that FIFO; the key does not depend on where the gates live.
    for p in [_planned(), *others]:
        assert f"--volume={unit_gate_fifo(p)}:/.podvm-gate/release:ro" in \
            render_units(Plan((p,), (("aa",),)))["aa.service"]
    assert unit_gate_fifo(_planned(), "/elsewhere/gates") == f"/elsewhere/gates/aa/{unit_gate_key(_planned())}.fifo"


def test_replacing_a_definition_removes_the_other_fifos_of_its_component(tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    old, new, other = prepare_fifo(gates, "aa", "old"), prepare_fifo(gates, "aa", "new"), prepare_fifo(gates, "b", "x")
    assert remove_other_fifos(gates, "aa", "new") == ["old"]
    assert not old.exists() and new.is_fifo() and other.is_fifo()
    assert remove_other_fifos(gates, "aa", "new") == []
    assert remove_other_fifos(gates, "b", None) == ["x"] and not other.exists()   # no longer runs
    assert remove_other_fifos(gates, "gone", None) == []


@pytest.fixture()
def podman() -> Iterator[Podman]:
    with Podman.running() as p:
        yield p


def _run_gated(podman: Podman, image: str, gates: Path, out: Path, name: str, key: str = "k",
               component: str | None = None) -> None:
    podman.cli("run", "-d", "--name", name, "--network=none", f"--volume={out}:/out",
               *(f"--volume={v}" for v in gate_volumes(gates, component or name, key)),
               f"--entrypoint={gate_entrypoint()}", image)


def _exit_code(podman: Podman, name: str) -> int:
    return int(podman.cli("wait", name))


def test_a_gated_container_runs_nothing_until_released_then_execs_exactly_the_argv(podman: Podman,
                                                                                      tmp_path: Path) -> None:
    image = podman.make_image("gate")
    gates, out = tmp_path / "gates", tmp_path / "out"
    out.mkdir()
    fifo = prepare_fifo(gates, "gated", "k")
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
    fifo = prepare_fifo(gates, "refused", "k")
    _run_gated(podman, image, gates, out, "refused")
    fd = open_waiting_gate(fifo, deadline=time.monotonic() + 30)
    assert fd is not None
    os.close(fd)                                           # what the daemon does when verification fails
    assert _exit_code(podman, "refused") == EXIT_NOT_RELEASED
    assert os.listdir(out) == []
    logs = subprocess.run([*podman.argv, "logs", "refused"], env=podman.env, capture_output=True, text=True,
                          timeout=30)
    assert "podvm-gate: not released" in logs.stdout + logs.stderr


def test_a_container_stopped_at_its_gate_ends_at_once(podman: Podman, tmp_path: Path) -> None:
    """The gate's shell is PID 1 of its container, where a signal without a
    handler is ignored: its TERM trap ends it at the stop's SIGTERM, not at
    the stop timeout's SIGKILL (exit 137)."""
    image = podman.make_image("gate")
    gates, out = tmp_path / "gates", tmp_path / "out"
    out.mkdir()
    prepare_fifo(gates, "stopped", "k")
    _run_gated(podman, image, gates, out, "stopped")
    wait_until(lambda: _waits_at_gate(podman, "stopped"), 30, "the container at its gate")
    t0 = time.monotonic()
    podman.cli("stop", "--time", "10", "stopped")
    took = time.monotonic() - t0
    assert _exit_code(podman, "stopped") == EXIT_TERMINATED
    assert took < 5.0, f"the stop took {took:.1f}s: SIGTERM was ignored until the stop timeout"
    assert os.listdir(out) == []


def _waits_at_gate(podman: Podman, name: str) -> bool:
    """The container's PID 1 (the gate's shell) or a child of it is blocked
    opening its FIFO."""
    pid = podman.cli("inspect", "-f", "{{.State.Pid}}", name)
    try:
        pids = [pid, *Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return pid != "0" and any(Path(f"/proc/{p}/wchan").read_text() == "wait_for_partner" for p in pids)
    except OSError:
        return False


def test_a_release_reaches_only_the_container_of_its_own_definition(podman: Podman, tmp_path: Path) -> None:
    """An older container of the component (another definition: its early
    start, a replaced unit) still waits at its gate when the new one is
    released: the argv goes to the new container only; the old one never runs
    anything and ends with the gate's exit 75 once its FIFO is closed."""
    image = podman.make_image("gate")
    gates, old_out, new_out = tmp_path / "gates", tmp_path / "old", tmp_path / "new"
    old_out.mkdir()
    new_out.mkdir()
    old_fifo, new_fifo = prepare_fifo(gates, "comp", "old"), prepare_fifo(gates, "comp", "new")
    _run_gated(podman, image, gates, old_out, "comp-old", "old", "comp")
    old_fd = open_waiting_gate(old_fifo, deadline=time.monotonic() + 30)
    assert old_fd is not None                              # the old container waits at its own gate
    _run_gated(podman, image, gates, new_out, "comp-new", "new", "comp")
    new_fd = open_waiting_gate(new_fifo, deadline=time.monotonic() + 30)
    assert new_fd is not None
    release(new_fd, NASTY)
    assert _exit_code(podman, "comp-new") == 0
    assert (new_out / "argv").read_bytes() == "".join(f"{w}|" for w in NASTY[5:]).encode()
    assert podman.cli("inspect", "-f", "{{.State.Running}}", "comp-old") == "true"   # still at its gate
    assert os.listdir(old_out) == []
    assert remove_other_fifos(gates, "comp", "new") == ["old"]   # what the daemon does: no path to it is left
    assert fifo_path(gates, "comp", "old") not in {str(p) for p in (gates / "comp").iterdir()}
    os.close(old_fd)                                       # its unit's stop: the gate reads nothing
    assert _exit_code(podman, "comp-old") == EXIT_NOT_RELEASED
    assert os.listdir(old_out) == []


def test_units_name_the_gates_as_the_pod_vm_sees_them(tmp_path: Path) -> None:
    from podvm_bootstrap.units.gate import unit_gate_dir

    assert unit_gate_dir(Path("/"), Path("/run/podvm-bootstrap")) == "/run/podvm-bootstrap/gates"
    assert unit_gate_dir(tmp_path, tmp_path / "run/podvm-bootstrap") == "/run/podvm-bootstrap/gates"   # --root
    assert unit_gate_dir(Path("/"), tmp_path / "state") == f"{tmp_path}/state/gates"                 # --state-dir
