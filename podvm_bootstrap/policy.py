"""policy.yaml: which image overrides from user-data are allowed (DESIGN.md
"policy.yaml"), and the pure decision on one requested override.

Decisions taken where DESIGN.md is silent:
- A missing policy.yaml is the most restrictive policy: no override at all,
  mutable_tags false, on_rejected_override use-default (a warning is logged).
  The image is meant to bake one; its absence must never open anything.
- Repository patterns are matched on the parsed registry (host and port) and
  path components, never on the raw string. "R/P" allows exactly that
  repository; "R/P/*" allows every repository *under* R/P at any depth, but
  not R/P itself (list both to allow both). "R/*" with a registry host R
  allows every repository on that host and port. A pattern without a registry
  host is on docker.io, as for image references ("busybox" is
  docker.io/library/busybox, "myorg/*" is docker.io/myorg/*).
- A reference with both a tag and a digest is judged by its digest; the tag is
  informational.
- With mutable_tags and a non-empty digests list, a tag-only reference is
  refused: its digest is unknown until the pull.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from podvm_bootstrap.errors import ConfigError
from podvm_bootstrap.imageref import DIGEST_PATTERN, ImageRef, ReferenceError, parse_reference
from podvm_bootstrap.log import get_logger
from podvm_bootstrap.manifest import COMPONENT_NAME
from podvm_bootstrap.model import OverrideDecision
from podvm_bootstrap.yamlfile import Section, load_yaml_mapping

log = get_logger("policy")

POLICY_VERSION = 1
ON_REJECTED_CHOICES = ("use-default", "fail")
# User-data is untrusted: longer requests are refused before parsing, and
# what is echoed back in reasons and logs is cut to this many characters.
MAX_REQUEST_LENGTH = 1024
MAX_ECHO_LENGTH = 200


@dataclass(frozen=True)
class RepositoryPattern:
    """A parsed entry of `repositories`."""

    text: str
    registry: str
    path: str          # "" only for a registry-wide "R/*"
    prefix: bool       # True for "…/*": repositories under path, at any depth

    def matches(self, ref: ImageRef) -> bool:
        if ref.registry != self.registry:
            return False
        if not self.prefix:
            return ref.path == self.path
        # Whole path components only: org/apf/* never matches org/apf-evil.
        return self.path == "" or ref.path.startswith(self.path + "/")


@dataclass(frozen=True)
class ComponentPolicy:
    repositories: tuple[RepositoryPattern, ...] = ()
    digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    version: int = POLICY_VERSION
    mutable_tags: bool = False
    on_rejected_override: str = "use-default"
    components: Mapping[str, ComponentPolicy] = field(default_factory=lambda: MappingProxyType({}))


def parse_pattern(text: str) -> RepositoryPattern:
    """A repository pattern; ValueError (ReferenceError) when invalid."""
    if not isinstance(text, str) or not text:
        raise ValueError("expected a non-empty repository pattern")
    prefix = text.endswith("/*")
    base = text[:-2] if prefix else text
    if "*" in base:
        raise ValueError(f"'*' is only allowed as a final '/*' component, got {text!r}")
    if prefix:
        # Parse as a reference two components deeper, so that the registry is
        # recognised exactly as it would be in a reference under the prefix
        # (and docker.io's "library/" is not added to the prefix itself).
        ref = parse_reference(f"{base}/x/x")
        path = ref.path[: -len("x/x")].rstrip("/")
    else:
        ref = parse_reference(base)
        path = ref.path
    if ref.tag is not None or ref.digest is not None:
        raise ValueError(f"a repository pattern has no tag or digest, got {text!r}")
    return RepositoryPattern(text=text, registry=ref.registry, path=path, prefix=prefix)


def load_policy(path: Path) -> Policy:
    """Read policy.yaml. A missing file means no override at all (see module doc)."""
    if not path.exists():
        log.warning("%s not found: no image override is allowed", path)
        return Policy()
    top = Section(path, "", load_yaml_mapping(path, missing_ok=False))
    top.only(("version", "mutable_tags", "on_rejected_override", "components"))
    version = top.data.get("version")
    if version is None:
        raise top.error("version", f"required (set it to {POLICY_VERSION})")
    if isinstance(version, bool) or version != POLICY_VERSION:
        raise top.error("version", f"unsupported version {version!r} (expected {POLICY_VERSION})")
    components_sec = top.section("components")
    components: dict[str, ComponentPolicy] = {}
    for name in components_sec.data:
        if not isinstance(name, str) or not COMPONENT_NAME.fullmatch(name):
            raise ConfigError(path, components_sec.child_key(str(name)), "invalid component name")
        components[name] = _component_policy(components_sec.section(name))
    return Policy(
        version=POLICY_VERSION,
        mutable_tags=top.boolean("mutable_tags", False),
        on_rejected_override=top.string("on_rejected_override", "use-default", choices=ON_REJECTED_CHOICES),
        components=MappingProxyType(components),
    )


def _component_policy(sec: Section) -> ComponentPolicy:
    sec.only(("repositories", "digests"))
    patterns = []
    for index, text in enumerate(sec.string_list("repositories")):
        try:
            patterns.append(parse_pattern(text))
        except ValueError as exc:
            raise sec.error(f"repositories[{index}]", f"invalid repository pattern: {exc}") from None
    digests = sec.string_list("digests")
    for index, digest in enumerate(digests):
        if not DIGEST_PATTERN.fullmatch(digest):
            raise sec.error(f"digests[{index}]", f"expected sha256:<64 lowercase hex>, got {digest!r}")
    return ComponentPolicy(repositories=tuple(patterns), digests=digests)


def describe(value: object, limit: int = MAX_ECHO_LENGTH) -> str:
    """Untrusted text made safe to echo: control characters escaped, cut to `limit`."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
    if len(escaped) > limit:
        return escaped[:limit] + f"... ({len(value)} characters)"
    return escaped


def evaluate_override(policy: Policy, component_name: str, requested: object) -> OverrideDecision:
    """Accept or refuse one requested image for a component; pure. An accepted
    decision carries `requested` verbatim (a valid reference); a refused one
    carries it escaped and shortened."""

    def refuse(reason: str) -> OverrideDecision:
        return OverrideDecision(requested=describe(requested), accepted=False, reason=reason)

    if not isinstance(requested, str):
        return refuse(f"not an image reference string ({type(requested).__name__})")
    if len(requested) > MAX_REQUEST_LENGTH:
        return refuse(f"longer than {MAX_REQUEST_LENGTH} characters")
    try:
        ref = parse_reference(requested)
    except ReferenceError as exc:
        return refuse(f"not a valid image reference: {describe(str(exc))}")
    rules = policy.components.get(component_name)
    if rules is None:
        return refuse(f"the policy allows no override for {component_name}")
    if not rules.repositories:
        return refuse(f"the policy allows no override for {component_name} (repositories is empty)")
    matched = next((p for p in rules.repositories if p.matches(ref)), None)
    if matched is None:
        return refuse(f"repository {ref.repository} is not allowed for {component_name}")
    if ref.digest is None:
        if not policy.mutable_tags:
            return refuse("not pinned by digest (@sha256:...) and the policy does not allow mutable tags")
        if rules.digests:
            return refuse("a tag cannot be checked against the policy's digest list; pin it by digest")
        return OverrideDecision(requested=requested, accepted=True,
                                reason=f"allowed by {matched.text} (mutable tag, resolved at pull)")
    if rules.digests and ref.digest not in rules.digests:
        return refuse(f"digest {ref.digest} is not in the policy's digests for {component_name}")
    return OverrideDecision(requested=requested, accepted=True, reason=f"allowed by {matched.text}")
