"""Cosign image signatures (sigstore "simple signing", keyed), verified offline. Pure: no I/O.

Input: the signature items of one image as containers storage keeps them
(untrusted bytes, `\\0sigstore-json\\n{"mimeType", "payload", "annotations"}`),
the planned repository@digest, and the component's trust (its `signed_by`
keys and `signed_identity`). Output: the name of the key that verified a
signature, or SignatureRefused with the reason.

A signature is valid when, in this order (nothing of the payload is read
before the signature over it verified):
1. the item is a sigstore signature of media type
   application/vnd.dev.cosign.simplesigning.v1+json with a base64 signature
   in the annotation dev.cosignproject.cosign/signature;
2. that signature verifies with one of the keys (ECDSA P-256, SHA-256) over
   the EXACT payload bytes (never re-serialized);
3. the payload is a JSON object whose `critical` has exactly `type`,
   `image` and `identity`; `critical.type` is "cosign container image
   signature";
4. `critical.image.docker-manifest-digest` is the planned digest;
5. `critical.identity.docker-reference` names the repository that
   `signed_identity` expects (containers-policy.json's sigstoreSigned:
   matchRepository, exactRepository, remapIdentity; for an image pinned by
   digest a signature for the same repository with any tag or digest counts).

Every parse is bounded: at most MAX_SIGNATURES items of at most
MAX_ITEM_SIZE bytes each are looked at.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from podvm_bootstrap.common.errors import show
from podvm_bootstrap.images.imageref import ImageRef, ReferenceError, parse_reference

if TYPE_CHECKING:  # cryptography is imported where a key is used: no import cost without signatures
    from cryptography.hazmat.primitives.asymmetric import ec

SIGSTORE_PREFIX = b"\x00sigstore-json\n"
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
MAX_SIGNATURES = 32            # items per image
MAX_ITEM_SIZE = 256 * 1024     # one stored item (payload base64 and annotations included)
MAX_TOTAL_SIZE = MAX_SIGNATURES * MAX_ITEM_SIZE
MAX_ECHO = 120                 # characters of untrusted text quoted in a reason

IdentityKind = Literal["match-repository", "exact-repository", "remap"]


class SignatureRefused(ValueError):
    """No signature of the image is valid; str() is the reason (one line)."""


@dataclass(frozen=True)
class SignedIdentity:
    """policy.yaml's signed_identity: which repository a signature must name."""

    kind: IdentityKind = "match-repository"
    repository: str | None = None      # exact-repository: the fully expanded repository
    prefix: str | None = None          # remap
    signed_prefix: str | None = None   # remap

    def expected_repository(self, planned_repository: str) -> str:
        """The repository a signature of an image of `planned_repository` must name."""
        if self.kind == "exact-repository":
            assert self.repository is not None
            return self.repository
        if self.kind == "remap":
            assert self.prefix is not None and self.signed_prefix is not None
            if repository_has_prefix(planned_repository, self.prefix):
                return self.signed_prefix + planned_repository[len(self.prefix):]
        return planned_repository


def repository_has_prefix(repository: str, prefix: str) -> bool:
    """`prefix` (host[:port] or a namespace or a repository, fully expanded)
    covers `repository` at a path boundary: quay.io/org covers quay.io/org/x,
    not quay.io/org-evil/x; quay.io covers neither quay.io:443 nor quay.iox."""
    return repository == prefix or repository.startswith(prefix + "/")


@dataclass(frozen=True)
class Trust:
    """What a component's images must be signed with: the `signed_by` keys
    (name, public key), in policy order, and the identity rule."""

    keys: tuple[tuple[str, ec.EllipticCurvePublicKey], ...]
    identity: SignedIdentity = SignedIdentity()

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keys)


def split_items(blob: bytes, sizes: Sequence[int] | None = None) -> list[bytes]:
    """The items of a stored `signature-<hex>` big-data blob: concatenated,
    with their lengths in the image's metadata (`sizes`) when it has them;
    without, sigstore items are split at each one's end of JSON."""
    if len(blob) > MAX_TOTAL_SIZE:
        raise SignatureRefused(f"signature data oversized ({len(blob)} bytes, at most {MAX_TOTAL_SIZE})")
    if sizes is not None and all(isinstance(s, int) and s > 0 for s in sizes) and sum(sizes) == len(blob):
        if len(sizes) > MAX_SIGNATURES:
            raise SignatureRefused(f"too many signatures ({len(sizes)}, at most {MAX_SIGNATURES})")
        items, offset = [], 0
        for size in sizes:
            items.append(blob[offset:offset + size])
            offset += size
        return items
    return _split_sigstore(blob)


def _split_sigstore(blob: bytes) -> list[bytes]:
    decoder = json.JSONDecoder()
    items: list[bytes] = []
    offset = 0
    while offset < len(blob):
        if len(items) >= MAX_SIGNATURES:
            raise SignatureRefused(f"too many signatures (more than {MAX_SIGNATURES})")
        if not blob.startswith(SIGSTORE_PREFIX, offset):
            raise SignatureRefused("malformed signature data: not a sequence of sigstore signatures")
        start = offset + len(SIGSTORE_PREFIX)
        # surrogateescape: a cut multi-byte character at the window's end
        # decodes (and encodes back) to the same bytes.
        window = blob[start:start + MAX_ITEM_SIZE].decode("utf-8", errors="surrogateescape")
        try:
            _, end = decoder.raw_decode(window)
        except (ValueError, RecursionError):
            raise SignatureRefused("malformed signature data: a signature is not JSON (or oversized)") from None
        length = len(window[:end].encode("utf-8", errors="surrogateescape"))
        items.append(blob[offset:start + length])
        offset = start + length
    return items


@dataclass(frozen=True)
class _Item:
    payload: bytes
    signature: bytes


def _parse_item(item: bytes) -> _Item:
    """One stored sigstore item → (payload bytes, DER signature); SignatureRefused if malformed."""
    if len(item) > MAX_ITEM_SIZE:
        raise SignatureRefused(f"malformed signature: oversized ({len(item)} bytes, at most {MAX_ITEM_SIZE})")
    if not item.startswith(SIGSTORE_PREFIX):
        raise SignatureRefused("malformed signature: not a sigstore signature")
    try:
        body = json.loads(item[len(SIGSTORE_PREFIX):])
    except (ValueError, RecursionError):
        raise SignatureRefused("malformed signature: not JSON") from None
    if not isinstance(body, dict):
        raise SignatureRefused("malformed signature: not a JSON object")
    if body.get("mimeType") != SIGNATURE_MEDIA_TYPE:
        raise SignatureRefused(f"malformed signature: media type {show(body.get('mimeType'), MAX_ECHO)}, "
                               f"not {SIGNATURE_MEDIA_TYPE}")
    annotations = body.get("annotations")
    encoded_sig = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(encoded_sig, str) or not encoded_sig:
        raise SignatureRefused(f"malformed signature: no {SIGNATURE_ANNOTATION} annotation")
    encoded_payload = body.get("payload")
    if not isinstance(encoded_payload, str):
        raise SignatureRefused("malformed signature: no payload")
    try:
        payload = base64.b64decode(encoded_payload, validate=True)
        signature = base64.b64decode(encoded_sig, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureRefused("malformed signature: payload or signature is not base64") from None
    return _Item(payload, signature)


def _signing_key(item: _Item, trust: Trust) -> str:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    for name, key in trust.keys:
        try:
            key.verify(item.signature, item.payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return name
    raise SignatureRefused(f"not signed by any key the policy trusts for it ({', '.join(trust.key_names)})")


def _critical(payload: bytes) -> Mapping[str, object]:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        raise SignatureRefused("signed payload is not JSON") from None
    critical = doc.get("critical") if isinstance(doc, dict) else None
    if not isinstance(critical, dict) or set(critical) != {"type", "image", "identity"}:
        raise SignatureRefused("signed payload is not a simple-signing document "
                               "(critical must hold exactly type, image and identity)")
    if critical["type"] != COSIGN_TYPE:
        raise SignatureRefused(f"signed payload has critical.type {show(critical['type'], MAX_ECHO)}, "
                               f"not {COSIGN_TYPE!r}")
    return critical


def _check_claims(critical: Mapping[str, object], ref: ImageRef, identity: SignedIdentity) -> None:
    image, ident = critical["image"], critical["identity"]
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) and len(image) == 1 else None
    if not isinstance(digest, str):
        raise SignatureRefused("signed payload has no critical.image.docker-manifest-digest")
    if digest != ref.digest:
        raise SignatureRefused(f"signed for another digest ({show(digest, MAX_ECHO)}), not {ref.digest}")
    reference = ident.get("docker-reference") if isinstance(ident, dict) and len(ident) == 1 else None
    if not isinstance(reference, str):
        raise SignatureRefused("signed payload has no critical.identity.docker-reference")
    try:
        signed = parse_reference(reference)
    except ReferenceError:
        raise SignatureRefused(f"signed identity {show(reference, MAX_ECHO)} is not an image reference") from None
    expected = identity.expected_repository(ref.repository)
    if signed.repository != expected:
        raise SignatureRefused(f"signed for another repository ({show(signed.repository, MAX_ECHO)}), not {expected}")


def verify_signatures(items: Sequence[bytes], ref: ImageRef, trust: Trust) -> str:
    """The name of the key of the first valid signature of `ref`
    (repository@digest) among `items`; SignatureRefused naming why none is."""
    if ref.digest is None:
        raise SignatureRefused(f"{ref} is not pinned by digest")
    if not items:
        raise SignatureRefused("no signature")
    if len(items) > MAX_SIGNATURES:
        raise SignatureRefused(f"too many signatures ({len(items)}, at most {MAX_SIGNATURES})")
    reasons: list[str] = []
    for item in items:
        try:
            parsed = _parse_item(item)
            key_name = _signing_key(parsed, trust)
            _check_claims(_critical(parsed.payload), ref, trust.identity)
            return key_name
        except SignatureRefused as exc:
            if str(exc) not in reasons:
                reasons.append(str(exc))
    if len(items) == 1:
        raise SignatureRefused(reasons[0])
    raise SignatureRefused(f"none of {len(items)} signatures is valid: " + "; ".join(reasons))
