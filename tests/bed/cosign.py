"""Cosign-format image signatures for the test bed, made with real keys.

There is no cosign on Debian 12 (nor on PyPI), and Debian's podman and skopeo
have sigstore signing compiled out, so the test bed makes what `cosign sign
--key` makes, with the `cryptography` package:

- a key pair: ECDSA P-256, the public key as PEM SubjectPublicKeyInfo
  (cosign's `cosign.pub`);
- the payload: sigstore "simple signing" JSON naming the image's repository
  and manifest digest;
- the signature: ECDSA-P256-SHA256 over the payload bytes, base64 (ASN.1 DER);
- the attachment: an OCI manifest tagged `sha256-<hex>.sig` in the image's
  repository, one layer per signature (media type
  application/vnd.dev.cosign.simplesigning.v1+json, the payload as its blob,
  the signature in the annotation dev.cosignproject.cosign/signature),
  pushed over the registry's HTTP API (blob uploads, then the manifest).

    key = SigningKey.generate("release")
    sign_and_push(registry_host, "test/apf", "sha256:...", [key.sign_payload(payload_for(...))])
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# The pod VM's registries.d file (use-sigstore-attachments), as the image bakes it.
REGISTRIES_D_FILE = Path(__file__).resolve().parents[2] / "containers" / "registries.d" / "podvm-bootstrap.yaml"
REGISTRIES_D = REGISTRIES_D_FILE.read_text()


@dataclass(frozen=True)
class SignatureLayer:
    """One signature as it travels: the exact payload bytes and their base64 signature."""

    payload: bytes
    signature: str   # base64 of the DER ECDSA signature; any text for a malformed case
    extra_annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class SigningKey:
    """A test signing key (never a secret that means anything: made per test run)."""

    name: str
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        return cls(name, ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load(cls, name: str, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(name, key)

    @property
    def public_pem(self) -> str:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    @property
    def private_pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    def write_public(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.public_pem)
        return path

    def sign_payload(self, payload: bytes) -> SignatureLayer:
        der = self.private.sign(payload, ec.ECDSA(hashes.SHA256()))
        return SignatureLayer(payload, base64.b64encode(der).decode())


def payload_for(docker_reference: str, digest: str, *, kind: str = COSIGN_TYPE,
                optional: dict[str, Any] | None = None) -> bytes:
    """The simple-signing payload cosign writes for repository@digest (its
    field order and compact separators; the verifier must never re-serialize)."""
    doc: dict[str, Any] = {"critical": {"identity": {"docker-reference": docker_reference},
                                        "image": {"docker-manifest-digest": digest},
                                        "type": kind},
                           "optional": optional}
    return json.dumps(doc, separators=(",", ":")).encode()


def sigstore_item(layer: SignatureLayer) -> bytes:
    """One signature as containers/image keeps it in storage (big-data item
    `signature-<hex>`): `\\0sigstore-json\\n` + {mimeType, payload, annotations}."""
    body = {"mimeType": SIGNATURE_MEDIA_TYPE, "payload": base64.b64encode(layer.payload).decode(),
            "annotations": {SIGNATURE_ANNOTATION: layer.signature, **layer.extra_annotations}}
    return b"\x00sigstore-json\n" + json.dumps(body).encode()


def attachment_tag(digest: str) -> str:
    """The registry attachment convention: sha256:HEX -> sha256-HEX.sig."""
    algorithm, hex_ = digest.split(":", 1)
    return f"{algorithm}-{hex_}.sig"


def _request(url: str, method: str, data: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()
        return resp.status, dict(resp.headers)


def push_blob(registry_host: str, repository: str, data: bytes, auth: dict[str, str] | None = None) -> str:
    """Monolithic blob upload (POST, then PUT with the digest); returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = f"http://{registry_host}/v2/{repository}/blobs"
    _, headers = _request(f"{base}/uploads/", "POST", b"", auth)
    location = headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry_host}{location}"
    separator = "&" if "?" in location else "?"
    _request(f"{location}{separator}digest={digest}", "PUT", data,
             {"Content-Type": "application/octet-stream", **(auth or {})})
    return digest


def signature_manifest(registry_host: str, repository: str, layers: Sequence[SignatureLayer],
                       auth: dict[str, str] | None = None) -> bytes:
    """Push the blobs of a signature manifest and return the manifest's bytes."""
    payload_digests = [push_blob(registry_host, repository, layer.payload, auth) for layer in layers]
    config = json.dumps({"architecture": "", "created": "0001-01-01T00:00:00Z", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": payload_digests}}).encode()
    config_digest = push_blob(registry_host, repository, config, auth)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": config_digest},
        "layers": [{"mediaType": SIGNATURE_MEDIA_TYPE, "size": len(layer.payload), "digest": digest,
                    "annotations": {SIGNATURE_ANNOTATION: layer.signature, **layer.extra_annotations}}
                   for layer, digest in zip(layers, payload_digests, strict=True)],
    }
    return json.dumps(manifest).encode()


def push_signatures(registry_host: str, repository: str, digest: str, layers: Sequence[SignatureLayer],
                    auth: dict[str, str] | None = None) -> str:
    """Attach `layers` as the signatures of repository@digest (replacing any
    before); returns the signature manifest's tag."""
    manifest = signature_manifest(registry_host, repository, layers, auth)
    tag = attachment_tag(digest)
    _request(f"http://{registry_host}/v2/{repository}/manifests/{tag}", "PUT", manifest,
             {"Content-Type": OCI_MANIFEST, **(auth or {})})
    return tag


def push_raw_signature_manifest(registry_host: str, repository: str, digest: str, manifest: bytes) -> str:
    """Put any bytes as the signature manifest of repository@digest (malformed cases)."""
    tag = attachment_tag(digest)
    _request(f"http://{registry_host}/v2/{repository}/manifests/{tag}", "PUT", manifest,
             {"Content-Type": OCI_MANIFEST})
    return tag


def sign_image(registry_host: str, repository: str, digest: str, key: SigningKey, *,
               identity: str | None = None, auth: dict[str, str] | None = None) -> str:
    """cosign sign --key: one valid signature of registry_host/repository@digest,
    naming `identity` (default: the image's own repository)."""
    payload = payload_for(identity or f"{registry_host}/{repository}", digest)
    return push_signatures(registry_host, repository, digest, [key.sign_payload(payload)], auth)


def push_unsigned_copy(registry_host: str, repository: str, reference: str, tag: str, note: str) -> str:
    """A new image in `repository` with the same config and layers as
    `reference` (its manifest plus one annotation, so another digest with no
    signature attached), tagged `tag`; returns its digest. Blobs are shared:
    nothing is uploaded but the manifest."""
    req = urllib.request.Request(f"http://{registry_host}/v2/{repository}/manifests/{reference}",
                                 headers={"Accept": OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=30) as resp:
        manifest = json.loads(resp.read())
    if manifest.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        raise ValueError(f"{repository}:{reference} is not an OCI image manifest")
    manifest.setdefault("annotations", {})["org.podvm-bootstrap.test-bed.copy"] = note
    body = json.dumps(manifest).encode()
    _request(f"http://{registry_host}/v2/{repository}/manifests/{tag}", "PUT", body, {"Content-Type": OCI_MANIFEST})
    return "sha256:" + hashlib.sha256(body).hexdigest()

