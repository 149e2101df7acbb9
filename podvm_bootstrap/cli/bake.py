"""`podvm-bootstrap bake`: the image build's step (docs/image-building.md "3. `podvm-bootstrap bake`").

For a pod VM image tree being built, every default and every TEE variant of
the manifest is resolved to a digest (a tag ends here, whatever the policy),
pulled by digest into the tree's container storage, verified there, its
signature checked when the policy asks for one; then the tree's
components.yaml is rewritten with repo@digest references (comments and layout
kept: only the image scalars change) and components.lock.json records what
was baked. Nothing is written unless every image succeeded, and a second run
with the same inputs writes nothing.

The pure part (finding the image scalars, rewriting them, the lock's bytes)
is separate from the I/O (treestore.py: podman and skopeo on the tree).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from podvm_bootstrap.common.errors import ConfigError, UsageError
from podvm_bootstrap.common.fsutil import read_at_most, write_if_changed
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.policy import Policy, load_policy
from podvm_bootstrap.images.imageref import ImageRef, ReferenceError, parse_reference
from podvm_bootstrap.images.treestore import (
    BakeError,
    StoreLayout,
    TreePodman,
    find_in_store,
    resolve_digest,
    store_layout,
)

LOCK_NAME = "components.lock.json"
MAX_LOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ImageSlot:
    """One image reference of the manifest: a component's default or one of
    its variants, with where its scalar lies in the file's text."""

    component: str
    variant: str | None
    reference: str
    start: int   # character offsets of the scalar (quotes included)
    end: int

    @property
    def key(self) -> str:
        """The dotted key, for error lines."""
        middle = f".variants.{self.variant}" if self.variant else ""
        return f"components.{self.component}{middle}.image"


@dataclass(frozen=True)
class BakedImage:
    component: str
    variant: str | None
    reference: str      # as the manifest had it (a tag, or the digest it was baked from)
    digest: str
    image_id: str
    signed_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "variant": self.variant, "reference": self.reference,
                "digest": self.digest, "image_id": self.image_id, "signed_by": self.signed_by}


# --- the pure part --------------------------------------------------------


def _mapping_items(node: yaml.Node | None) -> list[tuple[yaml.Node, yaml.Node]]:
    return list(node.value) if isinstance(node, yaml.MappingNode) else []


def _get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    for k, v in _mapping_items(node):
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def image_slots(text: str, path: Path) -> list[ImageSlot]:
    """Every image reference of a manifest, in file order: each component's
    `image`, then its `variants.<tee>.image` (the one place that knows where
    variants keep their images). The manifest was validated before; anything
    not a plain string here is still a config error, not a traceback."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    slots: list[ImageSlot] = []
    components = _get(root, "components") if root is not None else None
    for name_node, spec in _mapping_items(components):
        name = name_node.value
        entries: list[tuple[str | None, yaml.Node | None]] = [(None, _get(spec, "image"))]
        entries += [(tee.value, _get(variant, "image")) for tee, variant in _mapping_items(_get(spec, "variants"))]
        for variant, node in entries:
            slot_key = f"components.{name}" + (f".variants.{variant}" if variant else "") + ".image"
            if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
                raise ConfigError(path, slot_key, "expected an image reference string")
            slots.append(ImageSlot(name, variant, node.value, node.start_mark.index, node.end_mark.index))
    return slots


def rewrite_manifest(text: str, path: Path, pinned: dict[ImageSlot, str]) -> str:
    """The manifest text with each slot's scalar replaced by its pinned
    reference; everything else (comments, order, layout) as it was."""

    def substitute(quote: bool) -> str:
        out, last = [], 0
        for slot in sorted(pinned, key=lambda s: s.start):
            value = json.dumps(pinned[slot]) if quote else pinned[slot]
            out += [text[last:slot.start], value]
            last = slot.end
        out.append(text[last:])
        return "".join(out)

    expected = {slot.key: value for slot, value in pinned.items()}
    for quote in (False, True):
        new = substitute(quote)
        try:
            found = {slot.key: slot.reference for slot in image_slots(new, path)}
        except ConfigError:
            continue
        if found == expected:
            return new
    raise BakeError(f"{path}: cannot rewrite the image references in place")  # not reached for valid YAML


def lock_bytes(images: list[BakedImage]) -> bytes:
    return (json.dumps({"images": [i.to_json() for i in images]}, indent=2) + "\n").encode()


def previous_references(lock: bytes | None) -> dict[tuple[str, str | None], tuple[str, str]]:
    """From an earlier lock: (component, variant) -> (reference, digest). A
    second bake reads a manifest that the first one pinned; the lock keeps
    the reference the builder wrote (a tag) rather than the pin."""
    try:
        entries = json.loads(lock)["images"] if lock else []
    except (ValueError, KeyError, TypeError):
        return {}
    found = {}
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("component", "reference", "digest")):
            found[(e["component"], e.get("variant") if isinstance(e.get("variant"), str) else None)] = \
                (e["reference"], e["digest"])
    return found


def original_reference(slot: ImageSlot, ref: ImageRef,
                       previous: dict[tuple[str, str | None], tuple[str, str]]) -> str:
    earlier = previous.get((slot.component, slot.variant))
    if earlier is not None and ref.digest is not None and ref.tag is None and earlier[1] == ref.digest:
        try:
            if parse_reference(earlier[0]).repository == ref.repository:
                return earlier[0]
        except ReferenceError:
            pass
    return slot.reference


# --- the signature hook ---------------------------------------------------


def check_signature(policy: Policy, component: str, pinned: ImageRef, layout: StoreLayout,
                    image_id: str) -> str | None:
    """The name of the baked key whose signature (fetched with the pull, kept
    in the store) verifies `pinned`, or None when the policy asks for none:
    the daemon's own check, so a bad signature fails the build, not the boot."""
    from podvm_bootstrap.images.signature_store import check_signature as check_stored
    from podvm_bootstrap.images.storage import ImageError

    try:
        return check_stored(layout.host_path, layout.driver, image_id, pinned, policy.trust_for(component))
    except ImageError as exc:
        raise BakeError(f"{component}: {exc}") from None


# --- the command ----------------------------------------------------------


def bake(paths: Paths, *, components_file: Path | None = None, store: str | None = None,
         progress: Callable[[str], None] = lambda line: print(line, flush=True)) -> list[BakedImage]:
    """Bake the tree at paths.root; BakeError (exit 1) or ConfigError (exit 2)
    on the first failure, with nothing written."""
    tree = paths.root
    if not tree.is_dir():
        raise UsageError(f"bake: --root must name the image tree being built, got {str(tree)!r}")
    source = components_file or paths.components_yaml
    load_manifest(source)  # every config error first, with its file and key
    policy = load_policy(paths.policy_yaml, paths.root)
    text = source.read_text(encoding="utf-8")
    slots = image_slots(text, source)
    layout = store_layout(tree, store)
    lock_path = paths.config_dir / LOCK_NAME
    previous = previous_references(read_at_most(lock_path, MAX_LOCK))  # past the limit: not JSON, ignored

    digests: dict[str, str] = {}  # tag -> digest: each tag resolved once per run
    podman: TreePodman | None = None
    baked: list[BakedImage] = []
    pinned: dict[ImageSlot, str] = {}
    try:
        for number, slot in enumerate(slots, 1):
            label = f"[{number}/{len(slots)}] {slot.component}" + (f" ({slot.variant})" if slot.variant else "")
            try:
                ref = parse_reference(slot.reference)
            except ReferenceError as exc:
                raise ConfigError(source, slot.key, str(exc)) from None
            if ref.digest is None:
                if str(ref) not in digests:
                    digests[str(ref)] = resolve_digest(ref)
                    progress(f"{label}: {ref} is {digests[str(ref)]}")
                digest = digests[str(ref)]
            else:
                digest = ref.digest
            target = ref.with_digest(digest)
            image_id = find_in_store(layout, target)
            if image_id is None:
                progress(f"{label}: pulling {target.pinned}")
                if podman is None:
                    podman = TreePodman(tree, layout, progress)
                podman.pull(target, label)
                image_id = find_in_store(layout, target)
                if image_id is None:
                    raise BakeError(f"{target.pinned} was pulled but does not verify in {layout.host_path}")
            else:
                progress(f"{label}: {target.pinned} already in the store")
            key = check_signature(policy, slot.component, target, layout, image_id)
            pinned[slot] = target.pinned
            baked.append(BakedImage(slot.component, slot.variant, original_reference(slot, ref, previous),
                                    digest, image_id, key))
    finally:
        if podman is not None:
            podman.close()

    new_text = rewrite_manifest(text, source, pinned)
    target_yaml = paths.components_yaml
    mode = os.stat(target_yaml).st_mode & 0o7777 if target_yaml.exists() else 0o644
    target_yaml.parent.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(target_yaml, new_text.encode(), mode)
    changed |= write_if_changed(lock_path, lock_bytes(baked), 0o644)
    progress(f"baked {len(baked)} images into {layout.graph_root}; "
             + ("wrote components.yaml and components.lock.json" if changed else "nothing changed"))
    return baked
