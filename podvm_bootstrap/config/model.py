"""The pure data of the core: components as the manifest declares them, and the
plan that resolution makes of them. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from podvm_bootstrap import __version__
from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.images.imageref import ImageRef

ProbeKind = Literal["unix_socket", "tcp", "exec", "file", "notify"]
PROBE_KINDS: tuple[str, ...] = ("unix_socket", "tcp", "exec", "file", "notify")
# Every TEE name a manifest variant may be keyed by (tee.py detects which one this VM is in).
TEES = ("tdx", "snp", "az-snp-vtpm", "az-tdx-vtpm", "se", "cca")
# bootstrap.yaml `tee:` choices.
TEE_CHOICES = ("auto", "none", *TEES)


@dataclass(frozen=True)
class Probe:
    """A readiness/health check. `target` is a path (unix_socket, file),
    "host:port" (tcp), an argv run in the container (exec), or "" (notify)."""

    kind: ProbeKind
    target: str | tuple[str, ...]
    timeout: float = 30.0  # ready: how long to wait for it at start


@dataclass(frozen=True)
class Health:
    interval: float = 10.0
    timeout: float = 5.0     # one probe attempt
    failures: int = 3        # consecutive failures before a restart


@dataclass(frozen=True)
class Restart:
    delay: float = 0.1       # the first restart: fast (every start is verified at its gate anyway)
    max_delay: float = 30.0


@dataclass(frozen=True)
class ContainerSpec:
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    network: str | None = None
    pid: str | None = None
    privileged: bool = False
    capabilities: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    read_only: bool = False
    user: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The settings as `plan --json` and `status --json` show them (key
        "container"). An empty command: the image's own Entrypoint and Cmd
        run (the start gate execs what podman itself would)."""
        return {
            "command": list(self.command),
            "env": dict(self.env),
            "network": self.network,
            "pid": self.pid,
            "privileged": self.privileged,
            "capabilities": list(self.capabilities),
            "devices": list(self.devices),
            "volumes": list(self.volumes),
            "read_only": self.read_only,
            "user": self.user,
        }


@dataclass(frozen=True)
class Variant:
    """A component's entry for one TEE: its image, and the container keys
    (`container_keys`, as written) that replace the component's own."""

    tee: str
    image: ImageRef
    container: ContainerSpec = field(default_factory=ContainerSpec)
    container_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Component:
    name: str
    image: ImageRef
    unit: str
    after: tuple[str, ...] = ()
    essential: bool = False
    ready: Probe | None = None
    health: Health = field(default_factory=Health)
    restart: Restart = field(default_factory=Restart)
    stop_timeout: float = 10.0
    container: ContainerSpec = field(default_factory=ContainerSpec)
    variants: tuple[Variant, ...] = ()
    # The TEE whose variant this component is, once resolved for a boot (None:
    # the component as declared). See podvm_bootstrap.config.variants.
    variant: str | None = None


@dataclass(frozen=True)
class Manifest:
    components: tuple[Component, ...]  # in file order
    source: str = "components.yaml"    # the file, for error messages

    def get(self, name: str) -> Component | None:
        return _named(self.components, name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)


# --- the rules every set of components obeys (one home: see check_components) --

# A component's name is its container's name (a podman argument) and its
# gate's directory: held to a narrow grammar rather than escaped.
COMPONENT_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
MAX_COMPONENT_NAME = 63
# systemd unit name characters; the name becomes a file in the unit dir.
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\-@]+\.service")
MAX_UNIT_NAME = 255
RESERVED_UNITS = ("podvm-bootstrap.service",)  # the daemon's own unit


def component_name_problem(name: str) -> str | None:
    """Why `name` cannot be a component's name; None when it can."""
    if not COMPONENT_NAME.fullmatch(name) or len(name) > MAX_COMPONENT_NAME:
        return (f"invalid component name (lowercase letters, digits and '-', "
                f"starting with a letter or digit, at most {MAX_COMPONENT_NAME})")
    return None


def unit_name_problem(unit: str) -> str | None:
    """Why `unit` cannot be a component's unit name; None when it can."""
    if not UNIT_NAME.fullmatch(unit) or len(unit) > MAX_UNIT_NAME or unit.startswith((".", "@")):
        return (f"invalid unit name {unit!r} (expected <name>.service with "
                "letters, digits and : _ . - @ only)")
    if unit.endswith("@.service"):
        return f"{unit!r} is a template; give an instance name"
    if unit in RESERVED_UNITS:
        return f"{unit!r} is reserved for the daemon itself"
    return None


def check_components(components: Sequence[Component], source: str) -> None:
    """The rules of a set of components, wherever it comes from: names safe as
    container, file and unit names; one unit per component; `after` naming
    other components of the set, each once, without a cycle. ConfigError
    naming `source` and the dotted key. load_manifest applies them once;
    render applies them again (the same function) to a model built by hand."""
    names = tuple(c.name for c in components)
    units: dict[str, str] = {}
    for c in components:
        key = f"components.{c.name}"
        problem = component_name_problem(c.name)
        if problem is not None:
            raise ConfigError(source, key, problem)
        problem = unit_name_problem(c.unit)
        if problem is not None:
            raise ConfigError(source, f"{key}.unit", problem)
        if c.unit in units:
            raise ConfigError(source, f"{key}.unit", f"{c.unit!r} is already the unit of {units[c.unit]!r}")
        units[c.unit] = c.name
        for index, dep in enumerate(c.after):
            if dep == c.name:
                raise ConfigError(source, f"{key}.after", f"{c.name!r} cannot come after itself")
            if dep not in names:
                raise ConfigError(source, f"{key}.after[{index}]",
                                  f"unknown component {dep!r} (known: {', '.join(names)})")
            if dep in c.after[:index]:
                raise ConfigError(source, f"{key}.after[{index}]", f"{dep!r} is listed twice")
    cycle = find_cycle({c.name: c.after for c in components})
    if cycle is not None:
        raise ConfigError(source, f"components.{cycle[0]}.after", "cycle " + " -> ".join(cycle))


def find_cycle(after: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], starting at the first component (in
    mapping order) that lies on it; None when there is none."""
    WHITE, GRAY, BLACK = 0, 1, 2
    color = {name: WHITE for name in after}
    for start in after:
        if color[start] != WHITE:
            continue
        stack: list[tuple[str, Any]] = [(start, iter(after[start]))]
        color[start] = GRAY
        while stack:
            node, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                color[node] = BLACK
                stack.pop()
            elif color.get(dep, BLACK) == GRAY:
                path = [n for n, _ in stack]
                cycle = path[path.index(dep):]
                first = min(cycle, key=list(after).index)
                i = cycle.index(first)
                cycle = cycle[i:] + cycle[:i]
                return [*cycle, first]
            elif color.get(dep, BLACK) == WHITE:
                color[dep] = GRAY
                stack.append((dep, iter(after[dep])))
    return None


# Who asked for an override: the host, in the user-data's `podvm_bootstrap.images`;
# or the pod's owner, in the initdata's [data] entry "podvm-bootstrap.yaml"
# (covered by the initdata digest the TEE or the TPM binds).
RequestSource = Literal["user-data", "initdata"]
ImageSource = Literal["default", "variant", "override"]


@dataclass(frozen=True)
class OverrideDecision:
    requested: str
    accepted: bool
    reason: str
    requested_by: RequestSource = "user-data"


@dataclass(frozen=True)
class PlannedComponent:
    component: Component
    image: ImageRef            # what runs: the default (or its TEE variant) or the accepted override
    source: ImageSource
    override: OverrideDecision | None = None
    signed_by: tuple[str, ...] = ()   # keys the policy accepts signatures of (empty: none needed)
    signature: str | None = None      # the key whose signature verified the image in storage

    def __post_init__(self) -> None:
        # The one rule for `source`: a baked image of a component resolved to
        # a TEE variant is the variant's, whoever builds the entry (the planner,
        # or the daemon falling back from an unusable override).
        if self.source == "default" and self.component.variant is not None:
            object.__setattr__(self, "source", "variant")

    @property
    def variant(self) -> str | None:
        """The TEE variant applied to the component (its container settings hold
        even when an override replaces the image)."""
        return self.component.variant

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def unit(self) -> str:
        return self.component.unit

    @property
    def digest(self) -> str | None:
        return self.image.digest

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "image": str(self.image),
            "digest": self.digest,
            "source": self.source,
            "variant": self.variant,
            "signed_by": list(self.signed_by),
            "override": None if self.override is None else {
                "requested": self.override.requested,
                "accepted": self.override.accepted,
                "reason": self.override.reason,
                "requested_by": self.override.requested_by,
            },
            "after": list(self.component.after),
            # What its container runs, after the TEE variant replaced its keys
            # (the unit's command line shows only the start gate).
            "container": self.component.container.to_json(),
        }


def source_label(source: object, variant: object, requested_by: object) -> str:
    """How `plan` and `status` show where a component's image comes from:
    `default`, `variant (tdx)`, `override from initdata (tdx)`."""
    label = str(source)
    if source == "override" and requested_by is not None:
        label += f" from {requested_by}"
    return label + (f" ({variant})" if variant else "")


_Named = TypeVar("_Named", Component, PlannedComponent)


def _named(items: Sequence[_Named], name: str) -> _Named | None:
    """The component of that name (its first, in order), or None."""
    return next((item for item in items if item.name == name), None)


@dataclass(frozen=True)
class Plan:
    components: tuple[PlannedComponent, ...]
    start_order: tuple[tuple[str, ...], ...]
    errors: tuple[str, ...] = ()
    # True when a refused override must fail the boot (on_rejected_override: fail).
    refused: bool = False
    tee: str = "none"          # the TEE the variants were resolved for

    def get(self, name: str) -> PlannedComponent | None:
        return _named(self.components, name)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "tee": self.tee,
            "components": [c.to_json() for c in self.components],
            "start_order": [list(layer) for layer in self.start_order],
            "errors": list(self.errors),
        }
