"""render, below the command line: the argv it builds, its own refusals of
values no unit can carry (defence in depth: the manifest refuses them first),
and a plan built in Python with inputs no components.yaml can hold, checked
against its golden units (tests/golden/), systemd-analyze verify and the argv
the machine's real systemd 252 parses out of them; real podman runs rendered
commands. The units of real configurations are the cases of tests/cases/.
Regenerate the golden files with UPDATE_GOLDEN=1 (then review the diff);
normally they are compared byte for byte."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.model import (
    Component,
    ContainerSpec,
    OverrideDecision,
    Plan,
    PlannedComponent,
    Probe,
    Restart,
)
from podvm_bootstrap.images.imageref import ImageRef, parse_reference
from podvm_bootstrap.units.gate import exec_argv, gate_entrypoint, open_waiting_gate, prepare_fifo, release
from podvm_bootstrap.units.render import podman_run_argv, render_units, unit_gate_fifo, unit_gate_key, volume_host_dirs
from tests.systemd_parser import parse_exec, parse_unit, substitute_environment
from tests.systemd_real import analyze_verify, dump_exec_commands

GOLDEN = Path(__file__).resolve().parent / "golden"

UNIT_KEYS = {"Description", "After", "Wants", "StartLimitIntervalSec", "StartLimitBurst"}
SERVICE_KEYS = {"Type", "NotifyAccess", "ExecStartPre", "ExecStart", "ExecStop", "ExecStopPost",
                "TimeoutStartSec", "TimeoutStopSec", "KillSignal", "SendSIGKILL", "Restart", "RestartSec"}


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


def planned(component: Component, image: ImageRef | None = None, source: str = "default",
            override: OverrideDecision | None = None) -> PlannedComponent:
    return PlannedComponent(component, image or component.image, source, override)  # type: ignore[arg-type]


def plan_of(*components: PlannedComponent) -> Plan:
    return Plan(components=components, start_order=(tuple(c.name for c in components),))


NASTY_COMMAND = ("/bin/agent", "--flag=%n", "$HOME", "${PATH}", "a b", 'say "hi"', "back\\slash\\",
                 "line\nExecStartPost=/bin/evil", ";", "", "tab\there", "é漢", "\x01\r", "--privileged", "#x")


def everything_plan() -> Plan:
    """Every container option, odd unit names, a tag-only image, and strings
    that try every way into a unit file, some of which the manifest refuses
    (a volume with a space or a named one, an image reference no parser
    returns): what render does with them on its own. tests/cases/everything
    is the part a components.yaml can hold."""
    base = Component(name="base", image=parse_reference("registry.example:5000/tools/base:1.2"),
                     unit="base.service")
    sink = Component(
        name="kitchen-sink", image=parse_reference(f"ghcr.io/example/sink@{digest(5)}"),
        unit="kitchen-sink@main.service", after=("base",),
        ready=Probe("notify", "", timeout=12.5), restart=Restart(delay=0.5, max_delay=8.0), stop_timeout=2.5,
        container=ContainerSpec(
            command=NASTY_COMMAND,
            env=(("PLAIN", "value"), ("NASTY", "%i $USER ${X} \"q\" 'q' \\ \n[Service]\nExecStart=/bin/evil"),
                 ("EMPTY", "")),
            network="host", pid="host", privileged=True, capabilities=("SYS_ADMIN", "NET_RAW"),
            devices=("/dev/fuse", "/dev/net/tun:/dev/net/tun:rwm"),
            volumes=("/run/a b:/a", "/run/%n$X:/b:ro", "named:/c", "/run/dup:/d", "/run/dup:/e"),
            read_only=True, user="1000:1000"))
    odd = Component(
        name="odd-image-1", unit="odd-image.service", after=("kitchen-sink", "base"),
        image=ImageRef("registry.example:5000", "we ird/%n", tag='t"ag\nDescription=evil %n\\', digest=None),
        container=ContainerSpec(command=("x",)))
    return plan_of(planned(base), planned(sink), planned(odd))


SCENARIOS = {"everything": everything_plan}


def check_golden(scenario: str, units: dict[str, str]) -> None:
    directory = GOLDEN / scenario
    if os.environ.get("UPDATE_GOLDEN"):
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.service"):
            stale.unlink()
        for name, text in units.items():
            (directory / name).write_bytes(text.encode("utf-8"))
    expected = {p.name: p.read_bytes() for p in sorted(directory.glob("*.service"))}
    assert expected, f"no golden files for {scenario}; run with UPDATE_GOLDEN=1"
    assert {name: text.encode("utf-8") for name, text in units.items()} == expected


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_units_match_golden_files(scenario: str) -> None:
    check_golden(scenario, render_units(SCENARIOS[scenario]()))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_systemd_analyze_verify_accepts_every_unit_silently(scenario: str) -> None:
    units = render_units(SCENARIOS[scenario]())
    result = analyze_verify(units)
    assert result.returncode == 0, result
    # verify exits 0 on unknown keys and bad values, but says so: it must say nothing.
    assert result.stdout == "" and result.stderr == "", result


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_only_known_directives_and_the_intended_argv(scenario: str) -> None:
    plan = SCENARIOS[scenario]()
    for pc in plan.components:
        text = render_units(plan)[pc.unit]
        assignments = parse_unit(text)
        for a in assignments:
            assert a.key in (UNIT_KEYS if a.section == "Unit" else SERVICE_KEYS if a.section == "Service" else ()), a
        keys = [a.key for a in assignments]
        assert len(keys) == len(set(keys)), keys
        values = {a.key: a.value for a in assignments}
        [start] = parse_exec(values["ExecStart"])
        assert list(start.argv) == podman_run_argv(pc)
        assert start.argv[-2:] == (f"--entrypoint={gate_entrypoint()}", str(pc.image))  # the command: at the gate
        assert f"--volume={unit_gate_fifo(pc)}:/.podvm-gate/release:ro" in start.argv
        gates = re.escape(f"/run/podvm-bootstrap/gates/{pc.name}/")
        assert re.fullmatch(rf"{gates}[0-9a-f]{{64}}\.fifo", unit_gate_fifo(pc))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_real_systemd_parses_the_intended_commands(scenario: str) -> None:
    plan = SCENARIOS[scenario]()
    units = render_units(plan)
    for pc in plan.components:
        commands = dump_exec_commands(units, pc.unit)

        def argv(directive: str) -> list[str]:
            [words] = commands[directive]  # noqa: B023 - called within this iteration
            return [substitute_environment(w).decode("utf-8") for w in words]

        assert argv("ExecStart") == podman_run_argv(pc)
        assert argv("ExecStop") == ["/usr/bin/podman", "stop", "--ignore", f"--time={_stop(pc)}", pc.name]
        assert argv("ExecStopPost") == ["/usr/bin/podman", "rm", "--force", "--ignore", "--time=0", pc.name]
        dirs = volume_host_dirs(pc)
        if dirs:
            assert argv("ExecStartPre") == ["/usr/bin/mkdir", "-p", "--", *dirs]
        else:
            assert "ExecStartPre" not in commands


def _stop(pc: PlannedComponent) -> int:
    return max(1, math.ceil(pc.component.stop_timeout))


def test_kitchen_sink_argv_in_full() -> None:
    plan = everything_plan()
    sink = plan.get("kitchen-sink")
    assert sink is not None
    assert podman_run_argv(sink) == [
        "/usr/bin/podman", "run", "--rm", "--replace", "--name", "kitchen-sink", "--sdnotify=container",
        "--detach", "--pull=never", "--stop-signal=SIGTERM", "--stop-timeout=3", "--network=host", "--pid=host",
        "--privileged",
        "--cap-add=SYS_ADMIN", "--cap-add=NET_RAW", "--device=/dev/fuse", "--device=/dev/net/tun:/dev/net/tun:rwm",
        "--volume=/run/a b:/a", "--volume=/run/%n$X:/b:ro", "--volume=named:/c", "--volume=/run/dup:/d",
        "--volume=/run/dup:/e", "--env=PLAIN=value",
        "--env=NASTY=%i $USER ${X} \"q\" 'q' \\ \n[Service]\nExecStart=/bin/evil", "--env=EMPTY=",
        "--read-only", "--user=1000:1000", "--volume=/bin/busybox:/.podvm-gate/busybox:ro",
        f"--volume=/run/podvm-bootstrap/gates/kitchen-sink/{unit_gate_key(sink)}.fifo:/.podvm-gate/release:ro",
        f"--entrypoint={gate_entrypoint()}", f"ghcr.io/example/sink@{digest(5)}"]
    plain = podman_run_argv(sink, gated=False)   # the benchmark's ideal: the same container, ungated
    assert plain[-len(NASTY_COMMAND) - 1:] == [f"ghcr.io/example/sink@{digest(5)}", *NASTY_COMMAND]
    assert not [a for a in plain if "podvm-gate" in a]
    assert volume_host_dirs(sink) == ["/run/a b", "/run/%n$X", "/run/dup"]


def unit_values(text: str) -> dict[str, bytes]:
    return {a.key: a.value for a in parse_unit(text)}


def test_tag_only_image_is_rendered_with_its_tag_and_description_cannot_break_out() -> None:
    units = render_units(everything_plan())
    assert b"registry.example:5000/tools/base:1.2" in unit_values(units["base.service"])["ExecStart"]
    odd = units["odd-image.service"]
    descriptions = [a for a in parse_unit(odd) if a.key == "Description"]
    assert len(descriptions) == 1
    assert b"%%n" in descriptions[0].value and b"\\x0a" in descriptions[0].value
    assert unit_values(odd)["After"] == b"kitchen-sink@main.service base.service"


def test_rendering_is_deterministic() -> None:
    first = render_units(everything_plan())
    second = render_units(everything_plan())
    assert first == second
    assert list(first) == ["base.service", "kitchen-sink@main.service", "odd-image.service"]


def _with_container(**changes: object) -> Plan:
    component = Component(name="c", image=parse_reference(f"quay.io/x/c@{digest(6)}"), unit="c.service",
                          container=ContainerSpec(**changes))  # type: ignore[arg-type]
    return plan_of(planned(component))


@pytest.mark.parametrize(("changes", "key"), [
    ({"command": ("ok", "nul\0")}, "components.c.container.command[1]"),
    ({"env": (("A", "x\0y"),)}, "components.c.container.env.A"),
    ({"env": (("A=B", "x"),)}, "components.c.container.env.A=B"),
    ({"env": (("A\0", "x"),)}, "components.c.container.env.'A\\x00'"),
    ({"volumes": ("/a\0:/b",)}, "components.c.container.volumes[0]"),
    ({"user": "\ud800"}, "components.c.container.user"),
    ({"capabilities": ("SYS_ADMIN,NET_ADMIN",)}, "components.c.container.capabilities[0]"),
    ({"devices": ("/dev/a,/dev/b",)}, "components.c.container.devices[0]"),
])
def test_values_no_unit_can_carry_are_config_errors_naming_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        render_units(_with_container(**changes), source="/etc/podvm-bootstrap/components.yaml")
    assert info.value.file == "/etc/podvm-bootstrap/components.yaml"
    assert info.value.key == key
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "unit"), [
    ("c", "../evil.service"), ("c", "evil"), ("c", "a b.service"), ("c", "%n.service"), ("c", ".service"),
    ("-c", "c.service"), ("c d", "c.service"), ("", "c.service"),
])
def test_bad_names_are_refused(name: str, unit: str) -> None:
    component = Component(name=name, image=parse_reference(f"quay.io/x/c@{digest(6)}"), unit=unit)
    with pytest.raises(ConfigError):
        render_units(plan_of(planned(component)))


def test_two_components_with_one_unit_are_refused() -> None:
    image = parse_reference(f"quay.io/x/c@{digest(6)}")
    a = Component(name="a", image=image, unit="same.service")
    b = Component(name="b", image=image, unit="same.service")
    with pytest.raises(ConfigError, match="same.service"):
        render_units(plan_of(planned(a), planned(b)))


def test_image_that_would_read_as_an_option_is_refused() -> None:
    component = Component(name="c", image=ImageRef("--privileged", "x"), unit="c.service")
    with pytest.raises(ConfigError, match="image"):
        render_units(plan_of(planned(component)))


# Real podman runs the rendered commands (private storage, the test bed's containers.conf).

PODMAN_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


@pytest.fixture()
def podman_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A busybox image in a private vfs store; yields (global podman options, image ref)."""
    conf = tmp_path / "containers.conf"
    conf.write_text(PODMAN_CONF)
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    store = Path(tempfile.mkdtemp(prefix="pvm-", dir="/tmp"))  # podman wants a runroot under 50 characters
    options = ["--root", str(store / "storage"), "--runroot", str(store / "run"), "--storage-driver", "vfs"]
    rootfs = tmp_path / "rootfs" / "bin"
    rootfs.mkdir(parents=True)
    (rootfs / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (rootfs / "busybox").chmod(0o755)
    for applet in ("sh", "sleep", "printf"):
        (rootfs / applet).symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(tmp_path / "rootfs"), "-c", "."], capture_output=True, check=True)
    imported = subprocess.run(["podman", *options, "import", "-q", "-", "localhost/podvm-test/busybox:1"],
                              input=tar.stdout, capture_output=True, timeout=120)
    assert imported.returncode == 0, imported.stderr.decode(errors="replace")
    digest_text = subprocess.run(["podman", *options, "image", "inspect", "--format", "{{.Digest}}",
                                  "localhost/podvm-test/busybox:1"], capture_output=True, text=True,
                                 check=True, timeout=60).stdout.strip()
    yield options, parse_reference(f"localhost/podvm-test/busybox@{digest_text}")
    subprocess.run(["podman", *options, "rm", "--all", "--force", "--time=0"], capture_output=True, timeout=120)
    shutil.rmtree(store, ignore_errors=True)


def _exec(values: dict[str, bytes], key: str, podman_options: list[str]) -> list[str]:
    [command] = parse_exec(values[key])
    argv = list(command.argv)
    if argv[0] == "/usr/bin/podman":
        argv[1:1] = podman_options
    return argv


def _wait_for(path: Path) -> None:
    for _ in range(300):   # bounded: 30s at most
        if path.exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.podman
def test_podman_runs_the_rendered_command_with_the_exact_argv_and_env(podman_store, tmp_path: Path) -> None:
    options, image = podman_store
    args = ("a b", "%n", "$HOME", 'q"x', "nl\nx", "", ";", "é", "\\")
    out = tmp_path / "out dir"
    component = Component(name="podvm-probe", image=image, unit="podvm-probe.service", container=ContainerSpec(
        command=("sh", "-c", 'printf "%s\\0" "$@" > /out/argv.tmp; printf %s "$NASTY" > /out/env;'
                             " mv /out/argv.tmp /out/argv", "sh", *args),
        env=(("NASTY", 'v $X %i "q"\nline'),), network="host", volumes=(f"{out}:/out",), read_only=True,
        user="0:0", capabilities=("NET_RAW",)))
    gates = tmp_path / "gates"
    fifo = prepare_fifo(gates, "podvm-probe", unit_gate_key(planned(component)))
    values = unit_values(render_units(plan_of(planned(component)), gate_dir=str(gates))["podvm-probe.service"])
    subprocess.run(_exec(values, "ExecStartPre", options), check=True, timeout=30)
    assert out.is_dir()
    started = subprocess.run(_exec(values, "ExecStart", options), capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    fd = open_waiting_gate(fifo, time.monotonic() + 30)
    assert fd is not None and not (out / "argv").exists()   # held at its gate until released
    release(fd, exec_argv({"config": {}}, component.container.command))
    _wait_for(out / "argv")
    assert (out / "argv").read_bytes().split(b"\0")[:-1] == [a.encode() for a in args]
    assert (out / "env").read_text() == 'v $X %i "q"\nline'


@pytest.mark.podman
def test_podman_stop_commands_end_a_container_that_ignores_sigterm(podman_store, tmp_path: Path) -> None:
    options, image = podman_store
    # sh as PID 1 of its container has no SIGTERM handler: only SIGKILL ends it.
    component = Component(name="podvm-stubborn", image=image, unit="podvm-stubborn.service", stop_timeout=1.0,
                          container=ContainerSpec(command=("sh", "-c", "trap '' TERM; sleep 600 & wait; sleep 600")))
    fifo = prepare_fifo(tmp_path / "gates", "podvm-stubborn", unit_gate_key(planned(component)))
    values = unit_values(render_units(plan_of(planned(component)), gate_dir=str(tmp_path / "gates"))
                         ["podvm-stubborn.service"])
    started = subprocess.run(_exec(values, "ExecStart", options), capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    fd = open_waiting_gate(fifo, time.monotonic() + 30)
    assert fd is not None
    release(fd, exec_argv({"config": {}}, component.container.command))

    def running() -> str:
        return subprocess.run(["podman", *options, "ps", "--filter", "name=^podvm-stubborn$", "--format",
                               "{{.Names}}"], capture_output=True, text=True, timeout=60).stdout.strip()

    assert running() == "podvm-stubborn"
    stopped = subprocess.run(_exec(values, "ExecStop", options), capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert running() == ""
    cleanup = subprocess.run(_exec(values, "ExecStopPost", options), capture_output=True, text=True, timeout=60)
    assert cleanup.returncode == 0, cleanup.stderr
    gone = subprocess.run(["podman", *options, "ps", "-a", "--filter", "name=^podvm-stubborn$", "--format",
                           "{{.Names}}"], capture_output=True, text=True, timeout=60)
    assert gone.stdout.strip() == ""
