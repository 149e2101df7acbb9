"""Reading signature items from a containers-storage layout (files only):
the layout podman 4.3 writes (checked against real podman in
test_signatures_registry.py), built here by hand for the edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.images.signature_store import SignatureError, check_signature, stored_signature_items
from podvm_bootstrap.images.signatures import MAX_TOTAL_SIZE, SignedIdentity, Trust
from podvm_bootstrap.images.storage import ImageError, big_data_path
from tests.bed.cosign import SigningKey, payload_for, sigstore_item

IMAGE_ID = "c" * 64
DIGEST = "sha256:" + "d" * 64
REF = parse_reference(f"quay.io/org/apf@{DIGEST}")


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("release")


def store(root: Path, blob: bytes | None, metadata: object = None, images_json: bytes | None = None) -> Path:
    image_dir = root / "vfs-images" / IMAGE_ID
    image_dir.mkdir(parents=True)
    record = {"id": IMAGE_ID, "metadata": json.dumps(metadata) if metadata is not None else ""}
    (root / "vfs-images" / "images.json").write_bytes(images_json or json.dumps([record]).encode())
    if blob is not None:
        big_data_path(image_dir, "signature-" + DIGEST.split(":")[1]).write_bytes(blob)
    return root


def trust(key: SigningKey) -> Trust:
    return Trust(((key.name, key.private.public_key()),), SignedIdentity())


def test_items_split_by_the_recorded_sizes(tmp_path, key):
    a = sigstore_item(key.sign_payload(payload_for("quay.io/org/other", DIGEST)))
    b = sigstore_item(key.sign_payload(payload_for("quay.io/org/apf", DIGEST)))
    root = store(tmp_path, a + b, {"signatures-sizes": {DIGEST: [len(a), len(b)]}})
    assert stored_signature_items(root, "vfs", IMAGE_ID, DIGEST) == [a, b]
    assert check_signature(root, "vfs", IMAGE_ID, REF, trust(key)) == "release"


def test_without_metadata_or_with_a_broken_images_json_items_are_split_by_their_json(tmp_path, key):
    a = sigstore_item(key.sign_payload(payload_for("quay.io/org/apf", DIGEST)))
    root = store(tmp_path, a + a, images_json=b"[" * 100_000)
    assert stored_signature_items(root, "vfs", IMAGE_ID, DIGEST) == [a, a]


def test_no_item_means_no_signature_and_no_trust_means_no_check(tmp_path, key):
    root = store(tmp_path, None)
    assert stored_signature_items(root, "vfs", IMAGE_ID, DIGEST) == []
    with pytest.raises(SignatureError, match=f"signature of {REF} refused: no signature$"):
        check_signature(root, "vfs", IMAGE_ID, REF, trust(key))
    assert check_signature(root, "vfs", IMAGE_ID, REF, None) is None


def test_oversized_and_unreadable_are_refusals_not_crashes(tmp_path, key):
    root = store(tmp_path / "big", b"\x00" * (MAX_TOTAL_SIZE + 1))
    with pytest.raises(SignatureError, match="signature data is larger than"):
        check_signature(root, "vfs", IMAGE_ID, REF, trust(key))
    root = store(tmp_path / "dir", None)
    big_data_path(root / "vfs-images" / IMAGE_ID, "signature-" + DIGEST.split(":")[1]).mkdir()
    with pytest.raises(SignatureError, match="unreadable") as info:
        check_signature(root, "vfs", IMAGE_ID, REF, trust(key))
    assert isinstance(info.value, ImageError)
