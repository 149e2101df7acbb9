"""Container image references, parsed by the distribution reference grammar.

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component ( "/" path-component )*
    domain     := host [ ":" port ]

Normalized like podman/docker: a first component is a registry host only when
it contains "." or ":" or is "localhost"; otherwise the image is on docker.io
(and a single component lives under docker.io/library/). Policy matches the
parsed registry and path, never the raw string. A host is lowercased (host
names are case-insensitive), so one that is a host only by its capitals
("Registry/x", a host to docker's grammar) is refused: lowercased, podman
would read it as a docker.io path, and what runs must be what was judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::(?P<port>[0-9]{{1,5}}))?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # ASCII only, unlike \w
# The contract pins images by sha256 only (measurement and signatures assume it);
# the OCI grammar's sha384/sha512 digests are refused.
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
DIGEST_PATTERN = _DIGEST
MAX_NAME_LENGTH = 255
DEFAULT_REGISTRY = "docker.io"
_DOCKER_HUB_ALIASES = ("index.docker.io",)  # the legacy name docker still maps


class ReferenceError(ValueError):
    """Not a valid image reference; the message says why."""


@dataclass(frozen=True, order=True)
class ImageRef:
    registry: str          # host[:port], normalized (docker.io when absent)
    path: str              # repository path inside the registry
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @property
    def repository(self) -> str:
        """registry/path: what the policy's repositories match."""
        return f"{self.registry}/{self.path}"

    @property
    def pinned(self) -> str:
        """repository@digest, the form that runs; only when there is a digest."""
        if self.digest is None:
            raise ValueError(f"{self} has no digest")
        return f"{self.repository}@{self.digest}"

    def with_digest(self, digest: str) -> ImageRef:
        if not _DIGEST.fullmatch(digest):
            raise ReferenceError(f"invalid digest {digest!r}")
        return ImageRef(self.registry, self.path, None, digest)

    def __str__(self) -> str:
        out = self.repository
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _digest_problem(digest: str) -> str:
    """Why `digest` is not `sha256:<64 lowercase hex>`, for the message."""
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        return f"only sha256 digests are accepted, got {algorithm[:16]!r} (expected sha256:<64 lowercase hex>)"
    return f"expected sha256:<64 lowercase hex>, got {len(hex_part)} characters" + (
        "" if re.fullmatch(r"[a-f0-9]*", hex_part) else " with some not lowercase hex")


def _is_host(first: str) -> bool:
    """Whether a reference's first component (lowercase) names a registry host."""
    return "." in first or ":" in first or first == "localhost"


def parse_reference(text: str) -> ImageRef:
    """Parse and normalize an image reference; ReferenceError when invalid."""
    if not isinstance(text, str) or not text:
        raise ReferenceError("empty image reference")
    if text != text.strip() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ReferenceError(f"image reference contains whitespace or control characters: {text!r}")
    name, digest = text, None
    if "@" in text:
        name, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ReferenceError(f"invalid digest: {_digest_problem(digest)}")
    tag = None
    # A tag follows the last ':' only if no '/' comes after it (else it is a port).
    colon = name.rfind(":")
    if colon != -1 and "/" not in name[colon + 1:]:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise ReferenceError(f"invalid tag {tag!r} in {text!r}")
    if not name:
        raise ReferenceError(f"missing repository name in {text!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ReferenceError(f"repository name longer than {MAX_NAME_LENGTH} characters")
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path_parts = first, parts[1:]
        domain = _DOMAIN.fullmatch(registry)
        if not domain:
            raise ReferenceError(f"invalid registry {registry!r} in {text!r}")
        port = domain.group("port")
        if port is not None and not (0 < int(port) <= 65535):
            raise ReferenceError(f"invalid port in registry {registry!r}")
    else:
        registry, path_parts = DEFAULT_REGISTRY, parts
    registry = registry.lower()
    if not _is_host(registry):
        # "Registry/x" names the host Registry (capitals make it one), but
        # its lowercase form is a path on docker.io to podman: what would
        # run is not what was judged. Refused rather than changed in meaning.
        raise ReferenceError(f"registry {first!r} in {text!r} is a host only by its capitals; podman reads "
                             f"{registry!r} as a docker.io path (name the host with a '.' or a port)")
    if registry in _DOCKER_HUB_ALIASES:
        registry = DEFAULT_REGISTRY
    # docker.io/busybox is docker.io/library/busybox, as for a bare "busybox".
    if registry == DEFAULT_REGISTRY and len(path_parts) == 1:
        path_parts = ["library", *path_parts]
    for component in path_parts:
        if not _PATH_COMPONENT.fullmatch(component):
            raise ReferenceError(
                f"invalid repository path component {component!r} in {text!r} "
                "(lowercase letters, digits and . _ - separators)")
    return ImageRef(registry=registry, path="/".join(path_parts), tag=tag, digest=digest)
