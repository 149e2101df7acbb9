"""The pure part of bake: which scalars of a manifest are images (defaults and
TEE variants), rewriting them in place, and the lock's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from podvm_bootstrap.cli.bake import (
    BakedImage,
    image_slots,
    lock_bytes,
    original_reference,
    previous_references,
    rewrite_manifest,
)
from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.images.imageref import parse_reference

PATH = Path("components.yaml")
D1, D2, D3 = (f"sha256:{c * 64}" for c in "abc")

MANIFEST = """\
version: 1
components:
  attestation-agent:
    # the generic default
    image: "quay.io/cc/attestation-agent:v1"   # quoted on purpose
    variants:
      az-snp-vtpm: {image: quay.io/cc/attestation-agent-az:v1, container: {command: [aa, --az]}}
      tdx:
        image: quay.io/cc/attestation-agent-tdx:v1
  kata-agent:
    image: quay.io/cc/kata-agent@sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc
"""


def test_slots_are_every_default_and_variant_in_file_order() -> None:
    slots = image_slots(MANIFEST, PATH)
    assert [(s.component, s.variant, s.reference) for s in slots] == [
        ("attestation-agent", None, "quay.io/cc/attestation-agent:v1"),
        ("attestation-agent", "az-snp-vtpm", "quay.io/cc/attestation-agent-az:v1"),
        ("attestation-agent", "tdx", "quay.io/cc/attestation-agent-tdx:v1"),
        ("kata-agent", None, f"quay.io/cc/kata-agent@{D3}"),
    ]
    assert slots[1].key == "components.attestation-agent.variants.az-snp-vtpm.image"


def test_rewrite_changes_only_the_image_scalars() -> None:
    slots = image_slots(MANIFEST, PATH)
    pins = dict(zip(slots, [f"quay.io/cc/attestation-agent@{D1}", f"quay.io/cc/attestation-agent-az@{D2}",
                            f"quay.io/cc/attestation-agent-tdx@{D2}", f"quay.io/cc/kata-agent@{D3}"], strict=True))
    new = rewrite_manifest(MANIFEST, PATH, pins)
    data = yaml.safe_load(new)
    aa = data["components"]["attestation-agent"]
    assert aa["image"] == f"quay.io/cc/attestation-agent@{D1}"
    assert aa["variants"]["az-snp-vtpm"] == {"image": f"quay.io/cc/attestation-agent-az@{D2}",
                                             "container": {"command": ["aa", "--az"]}}
    assert aa["variants"]["tdx"]["image"] == f"quay.io/cc/attestation-agent-tdx@{D2}"
    # comments, quoting and flow style are kept; the already pinned line is untouched
    assert "    # the generic default\n" in new and "   # quoted on purpose\n" in new
    assert f'image: "quay.io/cc/attestation-agent@{D1}"' in new or f"image: quay.io/cc/attestation-agent@{D1}" in new
    assert new.splitlines()[-1] == MANIFEST.splitlines()[-1]
    # rewriting what is already pinned gives the same text back
    assert rewrite_manifest(new, PATH, dict(zip(image_slots(new, PATH), pins.values(), strict=True))) == new


@pytest.mark.parametrize("bad, key", [
    ("components:\n  a:\n    image: [x]\n", "components.a.image"),
    ("components:\n  a:\n    image: x\n    variants:\n      tdx: {image: 3}\n", "components.a.variants.tdx.image"),
])
def test_a_non_string_image_is_a_config_error_with_its_key(bad: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        image_slots(bad, PATH)
    assert info.value.key == key


def test_lock_bytes_are_the_contracts_shape_and_stable() -> None:
    images = [BakedImage("kata-agent", None, "quay.io/cc/kata-agent:v1", D1, "f" * 64, None),
              BakedImage("attestation-agent", "tdx", "quay.io/cc/aa-tdx:v1", D2, "e" * 64, "release")]
    data = lock_bytes(images)
    assert data == lock_bytes(list(images)) and data.endswith(b"}\n")
    assert json.loads(data) == {"images": [
        {"component": "kata-agent", "variant": None, "reference": "quay.io/cc/kata-agent:v1", "digest": D1,
         "image_id": "f" * 64, "signed_by": None},
        {"component": "attestation-agent", "variant": "tdx", "reference": "quay.io/cc/aa-tdx:v1", "digest": D2,
         "image_id": "e" * 64, "signed_by": "release"}]}


def test_a_second_bake_keeps_the_reference_the_builder_wrote() -> None:
    previous = previous_references(lock_bytes([BakedImage("kata-agent", None, "quay.io/cc/kata-agent:v1", D1,
                                                          "f" * 64, None)]))
    slot = image_slots(f"components:\n  kata-agent:\n    image: quay.io/cc/kata-agent@{D1}\n", PATH)[0]
    assert original_reference(slot, parse_reference(slot.reference), previous) == "quay.io/cc/kata-agent:v1"
    # another digest, or another repository, is a new reference of its own
    for text in (f"quay.io/cc/kata-agent@{D2}", f"quay.io/other/kata-agent@{D1}"):
        slot = image_slots(f"components:\n  kata-agent:\n    image: {text}\n", PATH)[0]
        assert original_reference(slot, parse_reference(text), previous) == text


@pytest.mark.parametrize("lock", [None, b"", b"not json", b"[]", b'{"images": 3}', b'{"images": [{"x": 1}]}'])
def test_an_unreadable_earlier_lock_is_ignored(lock: bytes | None) -> None:
    assert previous_references(lock) == {}


def test_a_store_outside_the_image_is_a_usage_error(tmp_path: Path) -> None:
    from podvm_bootstrap.common.errors import UsageError
    from podvm_bootstrap.images.treestore import store_layout

    for store in ("usr/share/containers/storage", "/usr/../../etc"):
        with pytest.raises(UsageError):
            store_layout(tmp_path, store)


def test_a_command_that_outlives_its_bound_is_killed_and_its_lines_kept() -> None:
    import os

    from podvm_bootstrap.images.treestore import _run_streaming

    lines: list[str] = []
    code = _run_streaming(["sh", "-c", "echo first; echo $$ >&2; exec sleep 600"], dict(os.environ), 5.0,
                          lines.append)
    assert code is None and lines[0] == "first"
    with pytest.raises(ProcessLookupError):  # killed, not left behind
        os.kill(int(lines[1]), 0)
    assert _run_streaming(["sh", "-c", "printf 'no newline'; exit 3"], dict(os.environ), 30.0, lines.append) == 3
    assert lines[-1] == "no newline"


def test_the_error_line_is_podmans_or_skopeos_own() -> None:
    from podvm_bootstrap.images.treestore import _last_error

    podman = ("Trying to pull 127.0.0.1:5000/x@sha256:00...\n"
              "Error: initializing source docker://127.0.0.1:5000/x@sha256:00: reading manifest: manifest unknown\n")
    assert _last_error(podman) == ("initializing source docker://127.0.0.1:5000/x@sha256:00: reading manifest: "
                                   "manifest unknown")
    skopeo = 'time="2026-11-29T21:34:24Z" level=fatal msg="Error parsing image name: manifest unknown"\n'
    assert "manifest unknown" in _last_error(skopeo)
    assert _last_error("") == "failed with no message"



def test_the_tree_s_storage_conf_is_read_bounded(tmp_path: Path) -> None:
    from podvm_bootstrap.common.errors import ConfigError
    from podvm_bootstrap.images.treestore import DEFAULT_DRIVER, MAX_STORAGE_CONF, STORAGE_CONF, store_layout

    assert store_layout(tmp_path, None).driver == DEFAULT_DRIVER          # no storage.conf: the defaults
    conf = tmp_path / STORAGE_CONF.lstrip("/")
    conf.parent.mkdir(parents=True)
    conf.write_text("#" * (MAX_STORAGE_CONF + 1))
    with pytest.raises(ConfigError) as info:
        store_layout(tmp_path, None)
    assert str(info.value) == f"{conf}: the file is larger than {MAX_STORAGE_CONF} bytes"
