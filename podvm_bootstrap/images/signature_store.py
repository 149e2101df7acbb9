"""An image's cosign signatures as podman keeps them in containers storage
(files only, no network, bounded), checked with signatures.py.

With registries.d's `use-sigstore-attachments: true`, a pull of
REPO@sha256:HEX fetches the `sha256-HEX.sig` attachment and containers/image
stores its signatures as the image's big-data item `signature-HEX`: the items
concatenated, their lengths in the image's metadata (images.json,
`signatures-sizes` by manifest digest). That is what is read here at every
start; trust comes only from the policy's keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from podvm_bootstrap.common.fsutil import read_bounded
from podvm_bootstrap.images.containers_store import MAX_STORE_INDEX
from podvm_bootstrap.images.imageref import ImageRef
from podvm_bootstrap.images.signatures import MAX_TOTAL_SIZE, SignatureRefused, Trust, split_items, verify_signatures
from podvm_bootstrap.images.storage import ImageError, big_data_path

MAX_METADATA = 1024 * 1024


class SignatureError(ImageError):
    """The image in storage has no valid signature by the keys its component needs."""


def _sizes(image_record: dict[str, Any] | None, digest: str) -> list[int] | None:
    """The item lengths containers/image recorded for the signatures of `digest`."""
    metadata = image_record.get("metadata") if isinstance(image_record, dict) else None
    if not isinstance(metadata, str) or len(metadata) > MAX_METADATA:
        return None
    try:
        parsed = json.loads(metadata)
    except (ValueError, RecursionError):
        return None
    sizes = parsed.get("signatures-sizes") if isinstance(parsed, dict) else None
    value = sizes.get(digest) if isinstance(sizes, dict) else None
    return value if isinstance(value, list) else None


def _image_record(images_json: Path, image_id: str) -> dict[str, Any] | None:
    data = read_bounded(images_json, MAX_STORE_INDEX, SignatureRefused)
    try:
        images = json.loads(data) if data else []
    except (ValueError, RecursionError):
        return None
    return next((i for i in images if isinstance(i, dict) and i.get("id") == image_id), None) \
        if isinstance(images, list) else None


def stored_signature_items(graph_root: Path, driver: str, image_id: str, digest: str) -> list[bytes]:
    """The signature items stored with image `image_id` for its manifest
    `digest` ([] when there are none); SignatureRefused when oversized."""
    images_dir = graph_root / f"{driver}-images"
    blob = read_bounded(big_data_path(images_dir / image_id, "signature-" + digest.split(":", 1)[1]),
                        MAX_TOTAL_SIZE, SignatureRefused, what="signature data")
    if not blob:
        return []
    return split_items(blob, _sizes(_image_record(images_dir / "images.json", image_id), digest))


def verify_stored_signature(graph_root: Path, driver: str, image_id: str, ref: ImageRef, trust: Trust) -> str:
    """The key that verified a stored signature of ref (repository@digest) of
    image `image_id`; SignatureRefused with the reason otherwise."""
    if ref.digest is None:
        raise SignatureRefused(f"{ref} is not pinned by digest")
    return verify_signatures(stored_signature_items(graph_root, driver, image_id, ref.digest), ref, trust)


def check_signature(graph_root: Path, driver: str, image_id: str, ref: ImageRef, trust: Trust | None) -> str | None:
    """images.py's one call at every verification: None when no signature is
    needed, else the key that verified one; SignatureError (an ImageError)
    with the reason when none is valid."""
    if trust is None:
        return None
    try:
        return verify_stored_signature(graph_root, driver, image_id, ref, trust)
    except SignatureRefused as exc:
        raise SignatureError(f"signature of {ref} refused: {exc}") from None
    except OSError as exc:
        raise SignatureError(f"signature of {ref} unreadable: {exc.strerror or exc}") from None
