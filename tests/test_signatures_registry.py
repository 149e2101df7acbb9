"""Signatures end to end on this machine: cosign-format signatures pushed to
a REAL registry on 127.0.0.1 (tests/bed/cosign.py), pulled by REAL podman
with the pod VM's registries.d file (use-sigstore-attachments), kept in its
storage, and checked there by images.py's per-start verification; then the
`verify` command through the real command line."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.images.signature_store import SignatureError, stored_signature_items
from podvm_bootstrap.images.signatures import SignedIdentity, Trust
from podvm_bootstrap.images.storage import ImageError, big_data_path
from tests.bed import cosign
from tests.bed.cosign import SignatureLayer, SigningKey, payload_for
from tests.bed.registry import Registry, running_registry
from tests.runtime_podman import Podman

pytestmark = pytest.mark.podman


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def release() -> SigningKey:
    return SigningKey.generate("release")


@pytest.fixture(scope="module")
def stranger() -> SigningKey:
    return SigningKey.generate("stranger")


@pytest.fixture()
def podman(registry: Registry) -> Iterator[Podman]:
    with Podman.running([registry.host], sigstore_attachments=True) as p:
        yield p


def trust(key: SigningKey) -> Trust:
    return Trust(((key.name, key.private.public_key()),), SignedIdentity())


def publish(podman: Podman, registry: Registry, marker: str) -> tuple[str, str]:
    """An image pushed as test/<marker>:1 and dropped locally: (repository path, digest)."""
    local = podman.make_image(marker)
    digest = registry.push_podman_image(local, f"test/{marker}", "1", podman=podman.argv)
    podman.cli("rmi", "-f", local)
    return f"test/{marker}", digest


def test_pull_keeps_the_signature_and_it_verifies(podman: Podman, registry: Registry, release: SigningKey) -> None:
    repo, digest = publish(podman, registry, "signed")
    cosign.sign_image(registry.host, repo, digest, release)
    ref = parse_reference(f"{registry.host}/{repo}@{digest}")
    stored = podman.images().ensure(ref, trust=trust(release))
    assert stored.pulled and stored.signature == "release"
    # The signature is in podman's storage, where verification reads it.
    items = stored_signature_items(podman.root, "overlay", stored.image_id, digest)
    assert len(items) == 1 and items[0].startswith(b"\x00sigstore-json\n")
    verified = podman.images().verify(ref, trust(release))
    assert (verified.image_id, verified.signature) == (stored.image_id, "release")
    unsigned = podman.images().verify(ref)  # no signature asked for: none checked
    assert (unsigned.image_id, unsigned.signature) == (stored.image_id, None)


def _layers(kind: str, key: SigningKey, stranger: SigningKey, host: str, repo: str, digest: str) -> list:
    good_payload = payload_for(f"{host}/{repo}", digest)
    return {
        "unknown key": [stranger.sign_payload(good_payload)],
        "other digest": [key.sign_payload(payload_for(f"{host}/{repo}", "sha256:" + "0" * 64))],
        "other repository": [key.sign_payload(payload_for(f"{host}/test/elsewhere", digest))],
        "payload not JSON": [key.sign_payload(b"this is not JSON")],
        "wrong type": [key.sign_payload(payload_for(f"{host}/{repo}", digest, kind="atomic container signature"))],
        "signature not base64": [SignatureLayer(good_payload, "@@@")],
        "no signature annotation": [SignatureLayer(good_payload, "", {"other": "x"})],
    }[kind]


@pytest.mark.parametrize("kind, words", [
    ("no signature", "no signature"),
    ("unknown key", "not signed by any key the policy trusts for it (release)"),
    ("other digest", "signed for another digest"),
    ("other repository", "signed for another repository"),
    ("payload not JSON", "signed payload is not JSON"),
    ("wrong type", "critical.type"),
    ("signature not base64", "malformed signature"),
    ("no signature annotation", "malformed signature"),
])
def test_each_bad_signature_is_refused_with_its_reason(podman: Podman, registry: Registry, release: SigningKey,
                                                       stranger: SigningKey, kind: str, words: str) -> None:
    repo, digest = publish(podman, registry, kind.replace(" ", "-").lower())
    if kind != "no signature":
        layers = _layers(kind, release, stranger, registry.host, repo, digest)
        if kind == "no signature annotation":
            manifest = json.loads(cosign.signature_manifest(registry.host, repo, layers))
            del manifest["layers"][0]["annotations"][cosign.SIGNATURE_ANNOTATION]
            cosign.push_raw_signature_manifest(registry.host, repo, digest, json.dumps(manifest).encode())
        else:
            cosign.push_signatures(registry.host, repo, digest, layers)
    ref = parse_reference(f"{registry.host}/{repo}@{digest}")
    with pytest.raises(SignatureError) as info:
        podman.images().ensure(ref, trust=trust(release))
    assert isinstance(info.value, ImageError)
    assert words in str(info.value) and f"signature of {ref} refused" in str(info.value)


def test_flipped_byte_of_a_stored_signature_fails_the_next_verification(
        podman: Podman, registry: Registry, release: SigningKey) -> None:
    repo, digest = publish(podman, registry, "tampered")
    cosign.sign_image(registry.host, repo, digest, release)
    ref = parse_reference(f"{registry.host}/{repo}@{digest}")
    stored = podman.images().ensure(ref, trust=trust(release))
    path = big_data_path(podman.root / "overlay-images" / stored.image_id, "signature-" + digest.split(":")[1])
    data = bytearray(path.read_bytes())
    # A byte inside the base64 payload: still well-formed, no longer what was signed.
    at = data.index(b'"payload":"') + len(b'"payload":"') + 20
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="not signed by any key"):
        podman.images().verify(ref, trust(release))


def test_without_the_registries_d_file_no_signature_is_kept(registry: Registry, release: SigningKey) -> None:
    with Podman.running([registry.host]) as plain:
        repo, digest = publish(plain, registry, "plain")
        cosign.sign_image(registry.host, repo, digest, release)
        ref = parse_reference(f"{registry.host}/{repo}@{digest}")
        with pytest.raises(SignatureError, match="no signature"):
            plain.images().ensure(ref, trust=trust(release))


def with_signature_bit_flipped(item: bytes) -> bytes:
    """A stored sigstore item whose ECDSA signature has one bit flipped inside
    its DER bytes (not in the base64 text, whose last character may carry
    padding bits no decoder reads); same length, so the stored size holds."""
    found = re.search(re.escape(f'"{cosign.SIGNATURE_ANNOTATION}":').encode() + rb'\s*"([A-Za-z0-9+/=]+)"', item)
    assert found, item
    der = bytearray(base64.b64decode(found.group(1)))
    der[len(der) // 2] ^= 0x01
    tampered = base64.b64encode(bytes(der))
    assert len(tampered) == len(found.group(1))
    return item[:found.start(1)] + tampered + item[found.end(1):]


def test_verify_command_checks_signatures(tmp_path: Path, podman: Podman, registry: Registry,
                                          release: SigningKey) -> None:
    repo, digest = publish(podman, registry, "cli")
    cosign.sign_image(registry.host, repo, digest, release)
    image = f"{registry.host}/{repo}@{digest}"
    podman.cli("pull", "--quiet", image)  # the image build's prefetch, signature included
    root, config = tmp_path / "root", tmp_path / "config"
    config.mkdir()
    release.write_public(root / "etc/podvm-bootstrap/keys/release.pub")
    (config / "components.yaml").write_text(
        f"version: 1\ncomponents:\n  attestation-agent:\n    image: {image}\n")
    (config / "policy.yaml").write_text(
        "version: 1\nkeys:\n  release: {path: /etc/podvm-bootstrap/keys/release.pub}\n"
        "components:\n  attestation-agent: {signed_by: [release]}\n")
    (config / "bootstrap.yaml").write_text(f"runtime: {{podman_socket: {podman.socket}}}\n")
    argv = [sys.executable, "-m", "podvm_bootstrap", "--root", str(root), "--config-dir", str(config),
            "--state-dir", str(tmp_path / "state"), "verify"]
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "CONTAINERS_STORAGE_CONF": str(podman.storage_conf())})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"ok attestation-agent {image} (image ") and ok.stdout.endswith(
        ", signed by release)\n")
    image_id = podman.cli("image", "inspect", "--format", "{{.Id}}", image)
    path = big_data_path(podman.root / "overlay-images" / image_id, "signature-" + digest.split(":")[1])
    path.write_bytes(with_signature_bit_flipped(path.read_bytes()))
    failed = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "CONTAINERS_STORAGE_CONF": str(podman.storage_conf())})
    assert failed.returncode == 1
    assert failed.stdout.startswith(f"FAILED attestation-agent {image}: signature of {image} refused: ")
    assert "Traceback" not in failed.stderr


def test_test_bed_stand_ins_are_signed_for_their_release_name(podman: Podman, bed_registry: Registry,
                                                              standin_images: dict) -> None:
    """The bed registry's stand-ins carry signatures by the test release key
    naming quay.io/confidential-containers/<c> (what the image and the VM
    pull): pulled here under the registry's own name, a remap identity
    (containers-policy.json's remapIdentity) accepts them, match-repository not."""
    from tests.bed.keys import release_key

    image = standin_images[("kata-agent", "v1")]
    (podman.base / "registries.conf").write_text(f'[[registry]]\nlocation = "{bed_registry.host}"\ninsecure = true\n')
    ref = parse_reference(f"{bed_registry.host}/{image.repository}@{image.digest}")
    key = release_key()
    remap = Trust(((key.name, key.private.public_key()),),
                  SignedIdentity("remap", prefix=bed_registry.host, signed_prefix="quay.io"))
    assert podman.images().ensure(ref, trust=remap).signature == "release"
    with pytest.raises(SignatureError, match="signed for another repository"):
        podman.images().verify(ref, trust(key))
