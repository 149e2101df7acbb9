"""Property: whatever text the manifest or user-data puts into a component, the
rendered unit holds exactly the intended directives, and systemd's parsing of
ExecStart=/ExecStartPre= gives back exactly the intended argv. Text that no
unit can carry (NUL, lone surrogates) and values podman would split are a
ConfigError instead, never a unit."""

from __future__ import annotations

import subprocess

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.model import Component, ContainerSpec, Plan, PlannedComponent, Probe, Restart
from podvm_bootstrap.images.imageref import ImageRef
from podvm_bootstrap.units.gate import gate_entrypoint, gate_volumes, release_payload
from podvm_bootstrap.units.render import GATE_DIR, render_units, unit_gate_key
from tests.systemd_parser import parse_exec, parse_unit, physical_lines, substitute_environment
from tests.systemd_real import dump_exec_commands

UNIT_KEYS = {"Description", "After", "Wants", "StartLimitIntervalSec", "StartLimitBurst"}
SERVICE_KEYS = {"Type", "NotifyAccess", "ExecStartPre", "ExecStart", "ExecStop", "ExecStopPost",
                "TimeoutStartSec", "TimeoutStopSec", "KillSignal", "SendSIGKILL", "Restart", "RestartSec"}
ONCE = {"Description", "Type", "ExecStart", "ExecStop", "ExecStopPost", "Restart"}

# Every code point, surrogates and NUL included, with the troublemakers often.
ANY_CHAR = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
    st.sampled_from(list("%$\\\"' ;\n\r\t\0#[]=@-{}`\x7f\x85\u2028\ufffe")),
)
TEXT = st.text(ANY_CHAR, max_size=12)
# Component names as the manifest allows them (model.COMPONENT_NAME), other
# than the plan's fixed first component.
NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True).filter(lambda name: name != "base")


def unrepresentable(value: str) -> bool:
    return "\0" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def podman_splits(value: str) -> bool:
    return not value or any(c in value for c in ',"') or value != value.strip()


@st.composite
def components(draw: st.DrawFn) -> tuple[Component, ImageRef]:
    name = draw(NAMES)
    image = ImageRef(draw(TEXT), draw(TEXT), draw(st.none() | TEXT), draw(st.none() | TEXT))
    ready = draw(st.none() | st.builds(Probe, st.sampled_from(["tcp", "notify"]), st.just("x"),
                                       st.floats(0.001, 3600)))
    spec = ContainerSpec(
        command=tuple(draw(st.lists(TEXT, max_size=5))),
        env=tuple(draw(st.lists(st.tuples(st.one_of(NAMES.map(str.upper), TEXT), TEXT), max_size=3))),
        network=draw(st.none() | TEXT), pid=draw(st.none() | TEXT), privileged=draw(st.booleans()),
        capabilities=tuple(draw(st.lists(TEXT, max_size=2))), devices=tuple(draw(st.lists(TEXT, max_size=2))),
        volumes=tuple(draw(st.lists(st.one_of(TEXT, st.tuples(TEXT, TEXT).map(lambda t: f"/{t[0]}:{t[1]}")),
                                    max_size=3))),
        read_only=draw(st.booleans()), user=draw(st.none() | TEXT))
    component = Component(name=name, image=image, unit=f"{name}.service", ready=ready,
                          restart=Restart(draw(st.floats(0, 600)), 600.0),
                          stop_timeout=draw(st.floats(0.001, 3600)), container=spec)
    override = draw(st.none() | st.builds(ImageRef, TEXT, TEXT, st.none() | TEXT, st.none() | TEXT))
    return component, override or image


def plan_for(component: Component, image: ImageRef) -> Plan:
    base = Component(name="base", image=ImageRef("quay.io", "x/base", "1"), unit="base.service")
    component = Component(**{**component.__dict__, "after": ("base",)})
    return Plan(components=(PlannedComponent(base, base.image, "default"),
                            PlannedComponent(component, image, "default")),
                start_order=(("base",), (component.name,)))


def expected_refusal(component: Component, image: ImageRef) -> bool:
    spec = component.container
    texts = [str(image), *spec.command, *spec.capabilities, *spec.devices, *spec.volumes,
             *(v for v in (spec.network, spec.pid, spec.user) if v is not None),
             *(part for pair in spec.env for part in pair)]
    return (any(unrepresentable(t) for t in texts) or str(image).startswith("-")
            or any(not k or "=" in k for k, _ in spec.env)
            or any(podman_splits(v) for v in (*spec.capabilities, *spec.devices)))


def intended_argv_parts(pc: PlannedComponent) -> tuple[list[str], list[str]]:
    """What must appear: every option value, and at the end the start gate
    (its two mounts, its entrypoint) then the image. The command is the
    gate's to exec (it is handed over at the release, not written in the unit)."""
    spec = pc.component.container
    options = ([f"--network={spec.network}"] if spec.network is not None else []) \
        + ([f"--pid={spec.pid}"] if spec.pid is not None else []) \
        + [f"--cap-add={c}" for c in spec.capabilities] + [f"--device={d}" for d in spec.devices] \
        + [f"--volume={v}" for v in spec.volumes] + [f"--env={k}={v}" for k, v in spec.env] \
        + ([f"--user={spec.user}"] if spec.user is not None else [])
    # With a digest the image runs as repo@digest (a tag beside it is informational).
    image = pc.image.pinned if pc.image.digest is not None else str(pc.image)
    gate = [f"--volume={v}" for v in gate_volumes(GATE_DIR, pc.name, unit_gate_key(pc))]
    return options, [*gate, f"--entrypoint={gate_entrypoint()}", image]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(components())
def test_rendered_units_carry_exactly_the_intended_values(drawn: tuple[Component, ImageRef]) -> None:
    component, image = drawn
    plan = plan_for(component, image)
    refused = expected_refusal(component, image)
    event("refused" if refused else "rendered")
    if refused:
        try:
            render_units(plan)
        except ConfigError as exc:
            assert str(exc).startswith("components.yaml: components.")
            return
        raise AssertionError("a value no unit can carry was rendered")
    units = render_units(plan)
    assert list(units) == ["base.service", component.unit]
    text = units[component.unit]
    pc = plan.components[1]

    for line in physical_lines(text.encode("utf-8")):
        assert all(b >= 0x20 and b != 0x7F for b in line.replace(b"\t", b" ")), line
    assignments = parse_unit(text)
    keys = [a.key for a in assignments]
    for a in assignments:
        assert a.key in (UNIT_KEYS if a.section == "Unit" else SERVICE_KEYS), a
    for key in ONCE:
        assert keys.count(key) == 1, (key, keys)
    assert len(keys) == len(set(keys))
    values = {a.key: a.value for a in assignments}
    assert values["After"] == values["Wants"] == b"base.service"

    [start] = parse_exec(values["ExecStart"])
    options, tail = intended_argv_parts(pc)
    assert list(start.argv[-len(tail):]) == tail
    assert start.argv[:6] == ("/usr/bin/podman", "run", "--rm", "--replace", "--name", component.name)
    head = list(start.argv[:-len(tail)])
    for option in options:
        assert option in head
    assert len(head) == 11 + len(options) + component.container.privileged + component.container.read_only

    host_dirs = list(dict.fromkeys(v.split(":", 1)[0] for v in component.container.volumes
                                   if v.startswith("/")))
    if host_dirs:
        [pre] = parse_exec(values["ExecStartPre"])
        assert list(pre.argv) == ["/usr/bin/mkdir", "-p", "--", *host_dirs]
    else:
        assert "ExecStartPre" not in values


SAMPLE_TEXT = st.text(ANY_CHAR.filter(lambda c: c != "\0" and not 0xD800 <= ord(c) <= 0xDFFF), max_size=16)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SAMPLE_TEXT, min_size=1, max_size=6), st.lists(st.tuples(NAMES.map(str.upper), SAMPLE_TEXT),
                                                              max_size=2))
def test_real_systemd_reads_back_generated_command_lines_and_the_gate_reads_back_the_command(
        command: list[str], env: list[tuple[str, str]]) -> None:
    component = Component(name="c", image=ImageRef("quay.io", "x/c", "1"), unit="c.service",
                          container=ContainerSpec(command=tuple(command), env=tuple(env)))
    plan = Plan(components=(PlannedComponent(component, component.image, "default"),), start_order=(("c",),))
    units = render_units(plan)
    [argv] = dump_exec_commands(units, "c.service")["ExecStart"]
    final = [substitute_environment(w).decode("utf-8") for w in argv]
    assert final[-2:] == [f"--entrypoint={gate_entrypoint()}", "quay.io/x/c:1"]
    # The command reaches the component through the gate: the very eval of the gate's script in busybox sh.
    out = subprocess.run(["/bin/busybox", "sh", "-c", 'p=$(cat) && eval "set -- $p" && printf "%s\\0" "$@"'],
                         input=release_payload(command), capture_output=True, check=True, timeout=10).stdout
    assert out.split(b"\0")[:-1] == [c.encode() for c in command]
    for name, value in env:
        assert f"--env={name}={value}" in final
