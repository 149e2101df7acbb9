"""policy.yaml: which image overrides from user-data are allowed
(docs/configuration.md "policy.yaml"), and the pure decision on one requested override.

Decisions on what the file format alone does not say:
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
- Signatures (`keys`, `signed_by`, `signed_identity`): every key is loaded and
  checked here, at load (a missing file or a key that is not an ECDSA P-256
  public key is a configuration error, even when no component names it);
  keyless forms (fulcio, pki, rekor) cannot be verified offline and are
  configuration errors. The verification itself is signatures.py's.
- `override_from: initdata` refuses a component's requests from the
  user-data whatever they ask for (the reason says so first); an initdata
  request is then judged by the other rules, like any request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from podvm_bootstrap.common.errors import ConfigError, one_line, show
from podvm_bootstrap.common.fsutil import read_bounded
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import under_root
from podvm_bootstrap.config.model import COMPONENT_NAME, OverrideDecision, RequestSource, component_name_problem
from podvm_bootstrap.config.yamlfile import Section, load_yaml_mapping
from podvm_bootstrap.images.imageref import DIGEST_PATTERN, ImageRef, ReferenceError, parse_reference
from podvm_bootstrap.images.signatures import SignedIdentity, Trust

if TYPE_CHECKING:  # cryptography is imported only when the policy has keys
    from cryptography.hazmat.primitives.asymmetric import ec

log = get_logger("policy")

POLICY_VERSION = 1
ON_REJECTED_CHOICES = ("use-default", "fail")
# Whose requests count for a component: any (user-data or initdata), or only
# the pod's owner's, in the measured initdata.
OVERRIDE_FROM_CHOICES = ("any", "initdata")
# User-data is untrusted: longer requests are refused before parsing, and
# what is echoed back in reasons and logs is cut to this many characters.
MAX_REQUEST_LENGTH = 1024
MAX_ECHO_LENGTH = 200
MAX_KEY_FILE = 64 * 1024
# Forms of containers-policy.json's sigstoreSigned that need Fulcio, a PKI or
# Rekor: not verifiable offline with a baked public key.
KEYLESS_FORMS = ("fulcio", "pki", "keyless", "rekorPublicKeyPath", "rekorPublicKeyData", "rekor")
# A fully expanded repository prefix: host[:port] then path components.
_HOST = (r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
         r"|[A-Za-z0-9-]+:[0-9]{1,5}")
_REPOSITORY_PREFIX = re.compile(rf"(?:{_HOST})(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


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
    signed_by: tuple[str, ...] = ()    # non-empty: every image of the component needs a signature by one
    signed_identity: SignedIdentity = SignedIdentity()
    override_from: str = "any"         # any | initdata (OVERRIDE_FROM_CHOICES)


@dataclass(frozen=True)
class Policy:
    version: int = POLICY_VERSION
    mutable_tags: bool = False
    on_rejected_override: str = "use-default"
    components: Mapping[str, ComponentPolicy] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[str, ec.EllipticCurvePublicKey] = field(default_factory=lambda: MappingProxyType({}))

    def signed_by(self, component: str) -> tuple[str, ...]:
        rules = self.components.get(component)
        return rules.signed_by if rules is not None else ()

    def trust_for(self, component: str) -> Trust | None:
        """What every image of `component` must be signed with; None when the
        policy asks for no signature."""
        rules = self.components.get(component)
        if rules is None or not rules.signed_by:
            return None
        return Trust(tuple((name, self.keys[name]) for name in rules.signed_by), rules.signed_identity)


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


def load_policy(path: Path, root: Path = Path("/")) -> Policy:
    """Read policy.yaml (key files under `root`). A missing file means no
    override at all (see module doc)."""
    if not path.exists():
        log.warning("%s not found: no image override is allowed", path)
        return Policy()
    top = Section(path, "", load_yaml_mapping(path, missing_ok=False))
    top.only(("version", "mutable_tags", "on_rejected_override", "keys", "components"))
    top.version(POLICY_VERSION)
    keys = _keys(top.section("keys"), root)
    components_sec = top.section("components")
    components: dict[str, ComponentPolicy] = {}
    for name in components_sec.data:
        problem = component_name_problem(name) if isinstance(name, str) else "invalid component name"
        if problem is not None:
            raise ConfigError(path, components_sec.child_key(str(name)), problem)
        components[name] = _component_policy(components_sec.section(name), keys)
    return Policy(
        version=POLICY_VERSION,
        mutable_tags=top.boolean("mutable_tags", False),
        on_rejected_override=top.string("on_rejected_override", "use-default", choices=ON_REJECTED_CHOICES),
        components=MappingProxyType(components),
        keys=MappingProxyType(keys),
    )


def _keys(sec: Section, root: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for name in sec.data:
        if not isinstance(name, str) or not COMPONENT_NAME.fullmatch(name):
            raise ConfigError(sec.path, sec.child_key(str(name)), "invalid key name (lowercase letters, digits, -)")
        entry = sec.section(name)
        keyless = [form for form in KEYLESS_FORMS if form in entry.data]
        if keyless:
            raise entry.error(keyless[0], "keyless verification (Fulcio, PKI, Rekor) is not supported offline; "
                                          "give the public key as path or data")
        entry.only(("path", "data"))
        if ("path" in entry.data) == ("data" in entry.data):
            raise ConfigError(sec.path, entry.key, "exactly one of path (a PEM file) or data (inline PEM) is required")
        if "path" in entry.data:
            file = entry.string("path", "")
            if not file.startswith("/"):
                raise entry.error("path", f"expected an absolute path, got {file!r}")
            pem, where = _read_key_file(entry, under_root(root, file)), "path"
        else:
            pem, where = entry.string("data", "").encode(), "data"
        keys[name] = _public_key(entry, where, pem)
    return keys


def _read_key_file(entry: Section, file: Path) -> bytes:
    try:
        return read_bounded(file, MAX_KEY_FILE, lambda why: entry.error("path", why), what=f"key file {file}",
                            missing_ok=False)
    except OSError as exc:
        raise entry.error("path", f"cannot read key file {file}: {exc.strerror or exc}") from None


def _public_key(entry: Section, where: str, pem: bytes) -> ec.EllipticCurvePublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise entry.error(where, "not a PEM public key (expected an ECDSA P-256 key, as cosign makes)") from None
    except Exception as exc:  # noqa: BLE001 - cryptography's backends raise others on odd input
        raise entry.error(where, f"not a usable public key: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise entry.error(where, f"not an ECDSA P-256 public key ({_key_kind(key)})")
    return key


def _key_kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA on curve {key.curve.name}"
    return type(key).__name__.lstrip("_")


def _signed_identity(sec: Section) -> SignedIdentity:
    value = sec.data.get("signed_identity")
    if value is None or value == "match-repository":
        return SignedIdentity()
    key = sec.child_key("signed_identity")
    forms = "match-repository, {exact-repository: REPO} or {remap: {prefix: P, signed_prefix: S}}"
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(sec.path, key, f"unknown form {show(value)}; expected {forms}")
    (kind, arg), = value.items()
    if kind == "exact-repository":
        if not isinstance(arg, str):
            raise ConfigError(sec.path, f"{key}.exact-repository", "expected a repository")
        try:
            ref = parse_reference(arg)
        except ReferenceError as exc:
            raise ConfigError(sec.path, f"{key}.exact-repository", str(exc)) from None
        if ref.tag is not None or ref.digest is not None:
            raise ConfigError(sec.path, f"{key}.exact-repository", f"a repository has no tag or digest, got {arg!r}")
        return SignedIdentity("exact-repository", repository=ref.repository)
    if kind == "remap":
        remap = Section(sec.path, f"{key}.remap", arg)
        remap.only(("prefix", "signed_prefix"))
        prefixes = []
        for name in ("prefix", "signed_prefix"):
            text = remap.string(name, None)
            if text is None:
                raise remap.error(name, "required")
            if not _REPOSITORY_PREFIX.fullmatch(text):
                raise remap.error(name, f"expected a fully expanded host[:port][/path] (e.g. docker.io/library), "
                                        f"got {text!r}")
            prefixes.append(text)
        return SignedIdentity("remap", prefix=prefixes[0], signed_prefix=prefixes[1])
    raise ConfigError(sec.path, key, f"unknown form {show(kind)}; expected {forms}")


def _component_policy(sec: Section, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> ComponentPolicy:
    sec.only(("repositories", "digests", "signed_by", "signed_identity", "override_from"))
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
    signed_by = sec.string_list("signed_by")
    for index, name in enumerate(signed_by):
        if name not in keys:
            raise sec.error(f"signed_by[{index}]", f"key {name!r} is not defined under keys")
    return ComponentPolicy(repositories=tuple(patterns), digests=digests, signed_by=signed_by,
                           signed_identity=_signed_identity(sec),
                           override_from=sec.string("override_from", "any", choices=OVERRIDE_FROM_CHOICES))


def evaluate_override(policy: Policy, component_name: str, requested: object,
                      requested_by: RequestSource = "user-data") -> OverrideDecision:
    """Accept or refuse one requested image for a component, asked for by
    `requested_by`; pure. An accepted decision carries `requested` verbatim
    (a valid reference); a refused one carries it escaped and shortened."""

    def refuse(reason: str) -> OverrideDecision:
        return OverrideDecision(requested=show(requested, MAX_ECHO_LENGTH), accepted=False, reason=reason,
                                requested_by=requested_by)

    rules = policy.components.get(component_name)
    if rules is not None and rules.override_from == "initdata" and requested_by != "initdata":
        return refuse(f"the policy takes overrides for {component_name} only from the pod's initdata "
                      f"(override_from: initdata); this request is from the {requested_by}")
    if not isinstance(requested, str):
        return refuse(f"not an image reference string ({type(requested).__name__})")
    if len(requested) > MAX_REQUEST_LENGTH:
        return refuse(f"longer than {MAX_REQUEST_LENGTH} characters")
    try:
        ref = parse_reference(requested)
    except ReferenceError as exc:
        return refuse(f"not a valid image reference: {one_line(exc, MAX_ECHO_LENGTH)}")
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
                                reason=f"allowed by {matched.text} (mutable tag, resolved at pull)",
                                requested_by=requested_by)
    if rules.digests and ref.digest not in rules.digests:
        return refuse(f"digest {ref.digest} is not in the policy's digests for {component_name}")
    return OverrideDecision(requested=requested, accepted=True, reason=f"allowed by {matched.text}",
                            requested_by=requested_by)
