"""The pure cosign verifier (signatures.py): real ECDSA P-256 keys and
cosign-format items made with `cryptography` (tests/bed/cosign.py); every
refusal has its own test, each failing if its check were removed."""

from __future__ import annotations

import base64
import json

import pytest

from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.images.signatures import (
    MAX_ITEM_SIZE,
    MAX_SIGNATURES,
    SignatureRefused,
    SignedIdentity,
    Trust,
    split_items,
    verify_signatures,
)
from tests.bed.cosign import SignatureLayer, SigningKey, payload_for, sigstore_item

REPO = "quay.io/confidential-containers/agent-protocol-forwarder"
DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64
REF = parse_reference(f"{REPO}@{DIGEST}")


@pytest.fixture(scope="module")
def release() -> SigningKey:
    return SigningKey.generate("release")


@pytest.fixture(scope="module")
def ops() -> SigningKey:
    return SigningKey.generate("ops")


@pytest.fixture(scope="module")
def stranger() -> SigningKey:
    return SigningKey.generate("stranger")


def trust(*keys: SigningKey, identity: SignedIdentity = SignedIdentity()) -> Trust:
    return Trust(tuple((k.name, k.private.public_key()) for k in keys), identity)


def item(key: SigningKey, reference: str = REPO, digest: str = DIGEST, **kw) -> bytes:
    return sigstore_item(key.sign_payload(payload_for(reference, digest, **kw)))


def refused(items: list[bytes], t: Trust, ref=REF) -> str:
    with pytest.raises(SignatureRefused) as info:
        verify_signatures(items, ref, t)
    return str(info.value)


# ---- accepted ----------------------------------------------------------------

def test_valid_signature_names_its_key(release, ops):
    assert verify_signatures([item(release)], REF, trust(release, ops)) == "release"
    assert verify_signatures([item(ops)], REF, trust(release, ops)) == "ops"


def test_signature_naming_a_tag_of_the_same_repository_counts(release):
    assert verify_signatures([item(release, f"{REPO}:v1.2")], REF, trust(release)) == "release"


def test_one_valid_among_bad_ones_is_enough(release, stranger):
    items = [item(stranger), item(release, digest=OTHER_DIGEST), item(release)]
    assert verify_signatures(items, REF, trust(release)) == "release"


def test_exact_payload_bytes_are_verified_not_a_reserialization(release):
    # Whitespace and key order cosign did not choose: still verifies, because
    # the signature is over these bytes and nothing is re-serialized.
    payload = (b'{ "optional": {"x": 1},\n "critical": {"type": "cosign container image signature", '
               b'"identity": {"docker-reference": "' + REPO.encode() + b'"}, '
               b'"image": {"docker-manifest-digest": "' + DIGEST.encode() + b'"}}}')
    assert verify_signatures([sigstore_item(release.sign_payload(payload))], REF, trust(release)) == "release"


# ---- refusals, one per reason -------------------------------------------------

def test_no_signature(release):
    assert refused([], trust(release)) == "no signature"


def test_signed_by_a_key_not_listed(release, stranger):
    reason = refused([item(stranger)], trust(release))
    assert "not signed by any key" in reason and "release" in reason


def test_signed_for_another_digest(release):
    reason = refused([item(release, digest=OTHER_DIGEST)], trust(release))
    assert "another digest" in reason and OTHER_DIGEST in reason


def test_signed_for_another_repository(release):
    reason = refused([item(release, "quay.io/evil/agent-protocol-forwarder")], trust(release))
    assert "another repository" in reason and "quay.io/evil/agent-protocol-forwarder" in reason


def test_repository_is_compared_whole_not_as_a_prefix(release):
    assert "another repository" in refused([item(release, REPO + "-evil")], trust(release))
    assert "another repository" in refused([item(release, REPO + "/sub")], trust(release))


def test_payload_not_json(release):
    layer = release.sign_payload(b"not json at all")
    assert refused([sigstore_item(layer)], trust(release)) == "signed payload is not JSON"


def test_wrong_critical_type(release):
    reason = refused([item(release, kind="atomic container signature")], trust(release))
    assert "critical.type" in reason and "atomic container signature" in reason


def test_critical_with_extra_or_missing_fields(release):
    for critical in ({"type": "cosign container image signature", "image": {"docker-manifest-digest": DIGEST}},
                     {"type": "cosign container image signature", "image": {"docker-manifest-digest": DIGEST},
                      "identity": {"docker-reference": REPO}, "extra": 1}):
        payload = json.dumps({"critical": critical, "optional": None}).encode()
        assert "simple-signing document" in refused([sigstore_item(release.sign_payload(payload))], trust(release))


def test_flipped_byte_of_the_payload(release):
    layer = release.sign_payload(payload_for(REPO, DIGEST))
    tampered = bytearray(layer.payload)
    tampered[10] ^= 0x01
    reason = refused([sigstore_item(SignatureLayer(bytes(tampered), layer.signature))], trust(release))
    assert "not signed by any key" in reason


@pytest.mark.parametrize("mutate, words", [
    (lambda b: b"\x00simple-signing\n" + b[len(b"\x00sigstore-json\n"):], "not a sigstore signature"),
    (lambda b: b[:-3], "not JSON"),
    (lambda b: b.replace(b"application/vnd.dev.cosign.simplesigning.v1+json", b"text/plain"), "media type"),
    (lambda b: b.replace(b"dev.cosignproject.cosign/signature", b"other"), "annotation"),
    (lambda b: b.replace(b'"payload": "', b'"payload": "%%'), "not base64"),
])
def test_malformed_items(release, mutate, words):
    assert words in refused([mutate(item(release))], trust(release))


def test_signature_annotation_not_base64(release):
    layer = release.sign_payload(payload_for(REPO, DIGEST))
    reason = refused([sigstore_item(SignatureLayer(layer.payload, "***not base64***"))], trust(release))
    assert "not base64" in reason


def test_oversized_item(release):
    layer = release.sign_payload(payload_for(REPO, DIGEST, optional={"pad": "x" * MAX_ITEM_SIZE}))
    assert "oversized" in refused([sigstore_item(layer)], trust(release))


def test_too_many_signatures(release):
    assert "too many signatures" in refused([item(release)] * (MAX_SIGNATURES + 1), trust(release))


def test_several_reasons_are_all_said(release, stranger):
    reason = refused([item(stranger), item(release, digest=OTHER_DIGEST)], trust(release))
    assert reason.startswith("none of 2 signatures is valid")
    assert "not signed by any key" in reason and "another digest" in reason


def test_reasons_echo_untrusted_text_escaped_and_short(release):
    reason = refused([item(release, kind="evil\nline" + "x" * 500)], trust(release))
    assert "\n" not in reason and "\\n" in reason and len(reason) < 300


# ---- signed_identity ----------------------------------------------------------

def test_exact_repository(release):
    signed_in = "quay.io/confidential-containers/release-signed"
    t = trust(release, identity=SignedIdentity("exact-repository", repository=signed_in))
    assert verify_signatures([item(release, signed_in)], REF, t) == "release"
    assert "another repository" in refused([item(release)], t)  # the image's own repository is not it


def test_remap_identity(release):
    t = trust(release, identity=SignedIdentity("remap", prefix="ghcr.io/mirror",
                                               signed_prefix="quay.io/confidential-containers"))
    mirrored = parse_reference(f"ghcr.io/mirror/agent-protocol-forwarder@{DIGEST}")
    assert verify_signatures([item(release)], mirrored, t) == "release"
    assert "another repository" in refused([item(release, "ghcr.io/mirror/agent-protocol-forwarder")], t, mirrored)
    # Outside the prefix the image's own repository is expected, unchanged.
    assert verify_signatures([item(release)], REF, t) == "release"
    # The prefix is matched on whole path components.
    lookalike = parse_reference(f"ghcr.io/mirror-evil/agent-protocol-forwarder@{DIGEST}")
    assert "another repository" in refused([item(release, "quay.io/confidential-containers-evil/"
                                                          "agent-protocol-forwarder")], t, lookalike)


def test_docker_hub_short_names_are_normalized(release):
    ref = parse_reference(f"docker.io/library/busybox@{DIGEST}")
    assert verify_signatures([item(release, "busybox:1.36")], ref, trust(release)) == "release"


def test_signed_identity_not_a_reference(release):
    assert "not an image reference" in refused([item(release, "Not A Reference!")], trust(release))


# ---- splitting a stored blob --------------------------------------------------

def test_split_by_recorded_sizes_and_without(release, ops):
    a, b = item(release), item(ops)
    assert split_items(a + b, [len(a), len(b)]) == [a, b]
    assert split_items(a + b) == [a, b]
    assert split_items(a + b, [1, 2]) == [a, b]  # sizes that do not add up are not trusted


def test_split_refuses_garbage_and_oversize(release):
    with pytest.raises(SignatureRefused, match="malformed"):
        split_items(item(release) + b"garbage")
    with pytest.raises(SignatureRefused, match="oversized"):
        split_items(b"\x00" * (MAX_SIGNATURES * MAX_ITEM_SIZE + 1))
    with pytest.raises(SignatureRefused, match="too many"):
        split_items(item(release) * (MAX_SIGNATURES + 1))


def test_base64_of_item_payload_round_trip(release):
    # What podman stores is what cosign pushed: the payload, base64 in JSON.
    stored = json.loads(item(release)[len(b"\x00sigstore-json\n"):])
    assert base64.b64decode(stored["payload"]) == payload_for(REPO, DIGEST)
