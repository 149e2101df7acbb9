"""The pure data of the core: components as the manifest declares them, and the
plan that resolution makes of them. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from podvm_bootstrap import __version__
from podvm_bootstrap.imageref import ImageRef

ProbeKind = Literal["unix_socket", "tcp", "exec", "file", "notify"]
PROBE_KINDS: tuple[str, ...] = ("unix_socket", "tcp", "exec", "file", "notify")


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
    # the component as declared). See podvm_bootstrap.variants.
    variant: str | None = None


@dataclass(frozen=True)
class Manifest:
    components: tuple[Component, ...]  # in file order
    source: str = "components.yaml"    # the file, for error messages

    def get(self, name: str) -> Component | None:
        for c in self.components:
            if c.name == name:
                return c
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)


@dataclass(frozen=True)
class OverrideDecision:
    requested: str
    accepted: bool
    reason: str


@dataclass(frozen=True)
class PlannedComponent:
    component: Component
    image: ImageRef            # what runs: the default (or its TEE variant) or the accepted override
    source: Literal["default", "variant", "override"]
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
            },
            "after": list(self.component.after),
        }


@dataclass(frozen=True)
class Plan:
    components: tuple[PlannedComponent, ...]
    start_order: tuple[tuple[str, ...], ...]
    errors: tuple[str, ...] = ()
    # True when a refused override must fail the boot (on_rejected_override: fail).
    refused: bool = False
    tee: str = "none"          # the TEE the variants were resolved for

    def get(self, name: str) -> PlannedComponent | None:
        for c in self.components:
            if c.name == name:
                return c
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "tee": self.tee,
            "components": [c.to_json() for c in self.components],
            "start_order": [list(layer) for layer in self.start_order],
            "errors": list(self.errors),
        }
