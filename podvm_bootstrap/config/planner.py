"""Resolution: (manifest, policy, requested overrides) → the plan. Pure.

Overrides are asked for in the user-data (the host's word) and in the
initdata (the pod owner's, covered by the initdata digest): when both ask for
a component, the initdata's request is the one judged, and the decision says
which source asked (`requested_by`). Every override is accounted for:
accepted, or refused with a line in plan.errors. Under
`on_rejected_override: fail`, any override that is not accepted (including
one naming a component the manifest does not have) sets plan.refused, and
the caller exits 3.

The boot's TEE picks each component's variant first (podvm_bootstrap.config.variants):
the variant is then that component's baked image (`source: variant`), and an
accepted override replaces it like it replaces a default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from podvm_bootstrap.common.errors import ConfigError, show
from podvm_bootstrap.common.texttable import text_table
from podvm_bootstrap.config.model import Manifest, Plan, PlannedComponent, check_components, source_label
from podvm_bootstrap.config.policy import Policy, evaluate_override
from podvm_bootstrap.config.variants import resolve_variants
from podvm_bootstrap.images.imageref import parse_reference


def make_plan(manifest: Manifest, policy: Policy, overrides: Mapping[Any, object], tee: str = "none",
              initdata_overrides: Mapping[Any, object] | None = None) -> Plan:
    """`overrides`: the user-data's requests; `initdata_overrides`: the
    initdata's, which win per component."""
    _check_defaults_pinned(manifest, policy)
    from_initdata = initdata_overrides or {}
    planned: list[PlannedComponent] = []
    errors: list[str] = []
    refused = False
    for component in resolve_variants(manifest, tee).components:
        signed_by = policy.signed_by(component.name)
        if component.name in from_initdata:
            decision = evaluate_override(policy, component.name, from_initdata[component.name], "initdata")
            if component.name in overrides:
                decision = replace(decision, reason=decision.reason + "; the user-data asked too, the initdata wins")
        elif component.name in overrides:
            decision = evaluate_override(policy, component.name, overrides[component.name], "user-data")
        else:
            planned.append(PlannedComponent(component, component.image, "default", signed_by=signed_by))
            continue
        if decision.accepted:
            image = parse_reference(decision.requested)
            planned.append(PlannedComponent(component, image, "override", decision, signed_by=signed_by))
        else:
            planned.append(PlannedComponent(component, component.image, "default", decision, signed_by=signed_by))
            errors.append(f"override for {component.name} refused: {decision.reason}; "
                          f"requested {decision.requested} (in the {decision.requested_by})")
            refused = True
    for source, requests in (("initdata", from_initdata), ("user-data", overrides)):
        for name in requests:
            if not isinstance(name, str) or manifest.get(name) is None:
                errors.append(f"override for unknown component {show(name, quote=True)} ignored "
                              f"(in the {source})")
                refused = True
    return Plan(
        components=tuple(planned),
        start_order=start_order(manifest),
        errors=tuple(errors),
        refused=refused and policy.on_rejected_override == "fail",
        tee=tee,
    )


def _check_defaults_pinned(manifest: Manifest, policy: Policy) -> None:
    if policy.mutable_tags:
        return
    for c in manifest.components:
        baked = [(f"components.{c.name}.image", c.image)]
        baked += [(f"components.{c.name}.variants.{v.tee}.image", v.image) for v in c.variants]
        for key, image in baked:
            if image.digest is None:
                raise ConfigError(manifest.source, key,
                                  f"must be pinned by digest (@sha256:...) since the policy does not "
                                  f"allow mutable tags, got {image}")


def start_order(manifest: Manifest) -> tuple[tuple[str, ...], ...]:
    """Layers of a topological sort of `after` (Kahn by levels): a layer holds the
    components whose dependencies are all in earlier layers, in manifest order.
    The loaded manifest has no unknown `after` and no cycle; a model built by
    hand that has is refused by the model's own rules (check_components)."""
    placed: set[str] = set()
    layers: list[tuple[str, ...]] = []
    remaining = list(manifest.components)
    while remaining:
        layer = tuple(c.name for c in remaining if all(dep in placed for dep in c.after))
        if not layer:
            check_components(manifest.components, manifest.source)  # raises: it names the unknown or cycle
            stuck = ", ".join(c.name for c in remaining)
            raise ConfigError(manifest.source, "components", f"no start order for {stuck}")
        layers.append(layer)
        placed.update(layer)
        remaining = [c for c in remaining if c.name not in placed]
    return tuple(layers)


def format_table(plan: Plan) -> str:
    """The human view of `plan`: one row per component, then refused overrides
    and other errors, then the start order."""
    header = ("COMPONENT", "UNIT", "SOURCE", "IMAGE")
    lines = text_table([header] + [
        (c.name, c.unit, source_label(c.source, c.variant, c.override.requested_by if c.override else None),
         str(c.image)) for c in plan.components])
    for c in plan.components:
        if c.override is not None and not c.override.accepted:
            lines.append(f"refused override for {c.name} (asked in the {c.override.requested_by}): "
                         f"{c.override.requested}: {c.override.reason}")
    refused_lines = {f"override for {c.name} refused" for c in plan.components
                     if c.override is not None and not c.override.accepted}
    for error in plan.errors:
        if not any(error.startswith(prefix) for prefix in refused_lines):
            lines.append(f"error: {error}")
    lines.append(f"tee: {plan.tee}")
    lines.append("start order: " + " -> ".join(", ".join(layer) for layer in plan.start_order))
    if plan.refused:
        lines.append("the policy says fail on a refused override: nothing would start")
    return "\n".join(lines) + "\n"
