"""Per-TEE component variants (components.yaml `variants`). Pure.

For the boot's TEE, a component's variant entry replaces the component's
`image`, and the `container` keys the entry names replace those keys of the
component's `container` (the others stay). A component without an entry for
the TEE is used as declared. The result is still a Component, marked with
`variant`, so everything downstream (policy, render, images) sees one shape."""

from __future__ import annotations

from dataclasses import replace

from podvm_bootstrap.config.model import Component, Manifest, Variant


def variant_for(component: Component, tee: str) -> Variant | None:
    for variant in component.variants:
        if variant.tee == tee:
            return variant
    return None


def apply_variant(component: Component, tee: str) -> Component:
    """`component` as it runs on `tee`."""
    variant = variant_for(component, tee)
    if variant is None:
        return component
    container = replace(component.container,
                        **{key: getattr(variant.container, key) for key in variant.container_keys})
    return replace(component, image=variant.image, container=container, variant=tee)


def resolve_variants(manifest: Manifest, tee: str) -> Manifest:
    """The manifest as it runs on `tee` (every component through apply_variant)."""
    return replace(manifest, components=tuple(apply_variant(c, tee) for c in manifest.components))
