"""policy.yaml loading and every rule of evaluate_override (pure)."""

import logging
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.policy import (
    ComponentPolicy,
    Policy,
    RepositoryPattern,
    evaluate_override,
    load_policy,
    parse_pattern,
)

SAMPLE = Path(__file__).resolve().parent.parent / "image" / "config" / "policy.yaml"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
APF = "agent-protocol-forwarder"


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def policy(*repositories: str, digests: tuple[str, ...] = (), mutable_tags: bool = False,
           component: str = APF) -> Policy:
    rules = ComponentPolicy(tuple(parse_pattern(r) for r in repositories), digests)
    return Policy(mutable_tags=mutable_tags, components=MappingProxyType({component: rules}))


def accepted(p: Policy, requested: object, component: str = APF) -> bool:
    decision = evaluate_override(p, component, requested)
    assert decision.reason
    return decision.accepted


# ---- loading ---------------------------------------------------------------

def test_sample_policy():
    p = load_policy(SAMPLE)
    assert p.mutable_tags is False and p.on_rejected_override == "use-default"
    assert [r.text for r in p.components[APF].repositories] == [
        "quay.io/confidential-containers/agent-protocol-forwarder", "127.0.0.1:5000/podvm/*"]
    assert p.components[APF].digests == ()
    assert p.components["kata-agent"].repositories == ()
    assert accepted(p, f"quay.io/confidential-containers/agent-protocol-forwarder@{D1}")
    assert accepted(p, f"127.0.0.1:5000/podvm/agent-protocol-forwarder@{D1}")
    assert not accepted(p, f"quay.io/confidential-containers/kata-agent@{D1}", "kata-agent")


def test_full_policy_loads(tmp_path):
    p = load_policy(write(tmp_path, {
        "version": 1, "mutable_tags": True, "on_rejected_override": "fail",
        "components": {APF: {"repositories": ["ghcr.io/example/*"], "digests": [D1]}}}))
    assert p.mutable_tags and p.on_rejected_override == "fail"
    assert p.components[APF] == ComponentPolicy(
        (RepositoryPattern("ghcr.io/example/*", "ghcr.io", "example", True),), (D1,))


def test_missing_policy_allows_nothing(tmp_path, caplog):
    # Attached directly: the CLI's setup_logging may have turned propagation off.
    logger = logging.getLogger("podvm_bootstrap")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="podvm_bootstrap"):
            p = load_policy(tmp_path / "policy.yaml")
    finally:
        logger.removeHandler(caplog.handler)
    assert p == Policy()
    assert not p.mutable_tags and p.on_rejected_override == "use-default" and not p.components
    assert "no image override is allowed" in caplog.text
    decision = evaluate_override(p, APF, f"quay.io/org/apf@{D1}")
    assert not decision.accepted and "allows no override" in decision.reason


def test_components_absent_means_no_overrides(tmp_path):
    p = load_policy(write(tmp_path, {"version": 1}))
    assert not p.components and not p.mutable_tags


@pytest.mark.parametrize("data, key, words", [
    ({"mutable_tags": False}, "version", "required"),
    ({"version": 2}, "version", "unsupported"),
    ({"version": 1, "extra": 1}, "extra", "unknown key"),
    ({"version": 1, "mutable_tags": "no"}, "mutable_tags", "true or false"),
    ({"version": 1, "on_rejected_override": "ignore"}, "on_rejected_override", "one of"),
    ({"version": 1, "components": ["apf"]}, "components", "mapping"),
    ({"version": 1, "components": {"Bad_Name": {}}}, "components.Bad_Name", "component name"),
    ({"version": 1, "components": {APF: {"repos": []}}}, f"components.{APF}.repos", "unknown key"),
    ({"version": 1, "components": {APF: {"repositories": "quay.io/a/b"}}}, f"components.{APF}.repositories", "list"),
    ({"version": 1, "components": {APF: {"repositories": ["quay.io/a/b", 3]}}}, f"components.{APF}.repositories[1]", "string"),
    ({"version": 1, "components": {APF: {"repositories": ["quay.io/a/b", "quay.io/A/b"]}}}, f"components.{APF}.repositories[1]", "invalid repository pattern"),
    ({"version": 1, "components": {APF: {"repositories": ["quay.io/a/b:v1"]}}}, f"components.{APF}.repositories[0]", "tag or digest"),
    ({"version": 1, "components": {APF: {"repositories": [f"quay.io/a/b@{D1}"]}}}, f"components.{APF}.repositories[0]", "tag or digest"),
    ({"version": 1, "components": {APF: {"repositories": ["quay.io/a*"]}}}, f"components.{APF}.repositories[0]", "'*'"),
    ({"version": 1, "components": {APF: {"repositories": ["quay.io/*/b"]}}}, f"components.{APF}.repositories[0]", "'*'"),
    ({"version": 1, "components": {APF: {"repositories": ["*"]}}}, f"components.{APF}.repositories[0]", "'*'"),
    ({"version": 1, "components": {APF: {"repositories": ["/*"]}}}, f"components.{APF}.repositories[0]", "invalid"),
    ({"version": 1, "components": {APF: {"repositories": [""]}}}, f"components.{APF}.repositories[0]", "invalid"),
    ({"version": 1, "components": {APF: {"repositories": ["Registry/*"]}}}, f"components.{APF}.repositories[0]",
     "a host only by its capitals"),
    ({"version": 1, "components": {APF: {"digests": ["sha256:abc"]}}}, f"components.{APF}.digests[0]", "sha256"),
    ({"version": 1, "components": {APF: {"digests": ["1" * 64]}}}, f"components.{APF}.digests[0]", "sha256"),
    ({"version": 1, "components": {APF: {"override_from": "pod"}}}, f"components.{APF}.override_from",
     "must be one of any, initdata, got 'pod'"),
    ({"version": 1, "components": {APF: {"override_from": True}}}, f"components.{APF}.override_from",
     "expected a non-empty string"),
])
def test_bad_policy_names_file_and_key(tmp_path, data, key, words):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.file == str(path)
    assert info.value.key == key
    assert words in info.value.message


@pytest.mark.parametrize("value, expected", [(None, "any"), ("any", "any"), ("initdata", "initdata")])
def test_override_from_loads(tmp_path, value, expected):
    rules = {"repositories": ["quay.io/org/apf"]} | ({} if value is None else {"override_from": value})
    p = load_policy(write(tmp_path, {"version": 1, "components": {APF: rules}}))
    assert p.components[APF].override_from == expected


def test_override_from_initdata_refuses_every_user_data_request_first(tmp_path):
    p = load_policy(write(tmp_path, {"version": 1, "components": {
        APF: {"repositories": ["quay.io/org/apf"], "override_from": "initdata"}}}))
    for requested in (f"quay.io/org/apf@{D1}", f"ghcr.io/evil/apf@{D1}", 7):
        d = evaluate_override(p, APF, requested)
        assert not d.accepted and d.requested_by == "user-data"
        assert d.reason == (f"the policy takes overrides for {APF} only from the pod's initdata "
                            "(override_from: initdata); this request is from the user-data")
    d = evaluate_override(p, APF, f"quay.io/org/apf@{D1}", "initdata")
    assert d.accepted and d.requested_by == "initdata" and d.reason == "allowed by quay.io/org/apf"
    # from the initdata, every other rule still applies
    d = evaluate_override(p, APF, f"ghcr.io/evil/apf@{D1}", "initdata")
    assert not d.accepted and d.requested_by == "initdata" and "not allowed" in d.reason


def test_policy_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "version: 1\ncomponents: [\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}: ")


# ---- patterns --------------------------------------------------------------

@pytest.mark.parametrize("text, registry, path, prefix", [
    ("quay.io/org/apf", "quay.io", "org/apf", False),
    ("quay.io/org/*", "quay.io", "org", True),
    ("quay.io/*", "quay.io", "", True),
    ("127.0.0.1:5000/podvm/*", "127.0.0.1:5000", "podvm", True),
    ("busybox", "docker.io", "library/busybox", False),
    ("docker.io/busybox", "docker.io", "library/busybox", False),
    ("myorg/*", "docker.io", "myorg", True),
    ("docker.io/*", "docker.io", "", True),
    ("localhost/*", "localhost", "", True),
])
def test_patterns_parse_like_references(text, registry, path, prefix):
    assert parse_pattern(text) == RepositoryPattern(text, registry, path, prefix)


# ---- evaluate_override: acceptance and one refusal rule each ----------------

def test_exact_repository_with_digest_is_accepted():
    d = evaluate_override(policy("quay.io/org/apf"), APF, f"quay.io/org/apf@{D1}")
    assert d.accepted and d.requested == f"quay.io/org/apf@{D1}"
    assert "quay.io/org/apf" in d.reason


def test_a_request_on_a_host_only_by_its_capitals_is_refused():
    """The request `Registry/evil@...` would have been judged on the host
    `Registry`, then run as `registry/evil@...`, which podman resolves on
    docker.io: refused, whatever the policy allows."""
    decision = evaluate_override(policy("registry.example/*", "docker.io/*"), APF, f"Registry/evil@{D1}")
    assert not decision.accepted and "host only by its capitals" in decision.reason


def test_not_parseable_is_refused():
    d = evaluate_override(policy("quay.io/org/apf"), APF, "quay.io/org/APF@sha256:x")
    assert not d.accepted and "not a valid image reference" in d.reason


def test_component_not_in_policy_is_refused():
    d = evaluate_override(policy("quay.io/org/apf"), "kata-agent", f"quay.io/org/apf@{D1}")
    assert not d.accepted and "allows no override for kata-agent" in d.reason


def test_empty_repositories_is_refused():
    d = evaluate_override(policy(), APF, f"quay.io/org/apf@{D1}")
    assert not d.accepted and "repositories is empty" in d.reason


def test_repository_not_allowed_is_refused():
    d = evaluate_override(policy("quay.io/org/apf"), APF, f"ghcr.io/evil/apf@{D1}")
    assert not d.accepted and "repository ghcr.io/evil/apf is not allowed" in d.reason


def test_tag_without_mutable_tags_is_refused():
    d = evaluate_override(policy("quay.io/org/apf"), APF, "quay.io/org/apf:latest")
    assert not d.accepted and "not pinned by digest" in d.reason


def test_digest_not_in_allow_list_is_refused():
    p = policy("quay.io/org/apf", digests=(D1,))
    assert accepted(p, f"quay.io/org/apf@{D1}")
    d = evaluate_override(p, APF, f"quay.io/org/apf@{D2}")
    assert not d.accepted and D2 in d.reason and "digests" in d.reason


def test_mutable_tags_accepts_a_tag_from_an_allowed_repository():
    p = policy("quay.io/org/apf", mutable_tags=True)
    d = evaluate_override(p, APF, "quay.io/org/apf:v1")
    assert d.accepted and "mutable tag" in d.reason
    assert not accepted(p, "quay.io/other/apf:v1")


def test_mutable_tags_with_a_digest_list_still_needs_a_digest():
    p = policy("quay.io/org/apf", digests=(D1,), mutable_tags=True)
    assert not accepted(p, "quay.io/org/apf:v1")
    assert accepted(p, f"quay.io/org/apf:v1@{D1}")


def test_tag_and_digest_the_digest_counts():
    assert accepted(policy("quay.io/org/apf"), f"quay.io/org/apf:anything@{D1}")
    assert not accepted(policy("quay.io/org/apf", digests=(D1,)), f"quay.io/org/apf:v1@{D2}")


@pytest.mark.parametrize("pattern, requested, ok", [
    # look-alike repositories: whole path components only
    ("quay.io/org/apf", "quay.io/org/apf-evil", False),
    ("quay.io/org/apf/*", "quay.io/org/apf-evil", False),
    ("quay.io/org/apf/*", "quay.io/org/apf-evil/x", False),
    ("quay.io/org/apf", "quay.io/org/apf/x", False),
    ("quay.io/org/apf", "quay.io/org", False),
    # "/*" covers repositories under the path at any depth, not the path itself
    ("quay.io/org/*", "quay.io/org/apf", True),
    ("quay.io/org/*", "quay.io/org/team/sub/apf", True),
    ("quay.io/org/*", "quay.io/org", False),
    ("quay.io/org/*", "quay.io/organisation/apf", False),
    # registry host and port must match exactly
    ("127.0.0.1:5000/podvm/*", "127.0.0.1:5000/podvm/apf", True),
    ("127.0.0.1:5000/podvm/*", "127.0.0.1:5001/podvm/apf", False),
    ("127.0.0.1:5000/podvm/*", "127.0.0.1/podvm/apf", False),
    ("quay.io/org/*", "quay.io:443/org/apf", False),
    ("quay.io:443/org/*", "quay.io/org/apf", False),
    ("quay.io/org/*", "quay.io.evil.com/org/apf", False),
    ("quay.io/org/*", "evilquay.io/org/apf", False),
    ("quay.io/*", "quay.io/any/depth/apf", True),
    ("quay.io/*", "quay.io:443/any/apf", False),
    # docker.io normalization on both sides
    ("quay.io/org/*", "org/apf", False),
    ("myorg/*", "docker.io/myorg/apf", True),
    ("myorg/*", "myorg/apf", True),
    ("busybox", "docker.io/library/busybox", True),
    ("docker.io/busybox", "busybox", True),
    ("library/*", "busybox", True),
    ("quay.io/org/apf", "Quay.IO/org/apf", True),
])
def test_repository_matching(pattern, requested, ok):
    assert accepted(policy(pattern), f"{requested}@{D1}") is ok


# ---- untrusted input --------------------------------------------------------

@pytest.mark.parametrize("value", [None, 5, ["quay.io/org/apf"], {"image": "x"}, b"quay.io/org/apf"])
def test_non_string_requests_are_refused(value):
    d = evaluate_override(policy("quay.io/org/apf"), APF, value)
    assert not d.accepted and "not an image reference string" in d.reason
    assert isinstance(d.requested, str)


def test_huge_request_is_refused_and_not_echoed():
    huge = "quay.io/org/apf" + "a" * 100_000
    d = evaluate_override(policy("quay.io/org/*"), APF, huge)
    assert not d.accepted and "longer than" in d.reason
    assert len(d.requested) < 300 and len(d.reason) < 300


def test_long_invalid_request_reason_is_bounded():
    text = "quay.io/org/" + "A" * 900
    d = evaluate_override(policy("quay.io/org/*"), APF, text)
    assert not d.accepted
    assert len(d.reason) < 400 and len(d.requested) < 300


def test_control_characters_are_escaped_in_decisions():
    d = evaluate_override(policy("quay.io/org/apf"), APF, f"quay.io/org/apf@{D1}\n\x1b[31mFAKE LOG LINE")
    assert not d.accepted
    for text in (d.requested, d.reason):
        assert "\n" not in text and "\x1b" not in text
    assert "\\n" in d.requested


# ---- keys, signed_by, signed_identity ------------------------------------------

@pytest.fixture(scope="module")
def release_key():
    from tests.bed.cosign import SigningKey

    return SigningKey.generate("release")


def signing_policy(tmp_path: Path, key_pem: str, **component: object) -> Path:
    (tmp_path / "etc/podvm-bootstrap/keys").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc/podvm-bootstrap/keys/release.pub").write_text(key_pem)
    return write(tmp_path, {
        "version": 1,
        "keys": {"release": {"path": "/etc/podvm-bootstrap/keys/release.pub"}, "ops": {"data": key_pem}},
        "components": {APF: {"repositories": ["ghcr.io/example/*"], "signed_by": ["release", "ops"], **component},
                       "kata-agent": {}}})


def test_keys_from_a_file_under_root_and_inline(tmp_path, release_key):
    from podvm_bootstrap.images.signatures import SignedIdentity

    p = load_policy(signing_policy(tmp_path, release_key.public_pem), tmp_path)
    assert set(p.keys) == {"release", "ops"}
    assert p.signed_by(APF) == ("release", "ops") and p.signed_by("kata-agent") == ()
    trust = p.trust_for(APF)
    assert trust is not None and trust.key_names == ("release", "ops")
    assert trust.identity == SignedIdentity()
    assert p.trust_for("kata-agent") is None and p.trust_for("unknown") is None


@pytest.mark.parametrize("identity, expected", [
    ("match-repository", ("match-repository", None, None, None)),
    ({"exact-repository": "quay.io/org/signed"}, ("exact-repository", "quay.io/org/signed", None, None)),
    ({"exact-repository": "busybox"}, ("exact-repository", "docker.io/library/busybox", None, None)),
    ({"remap": {"prefix": "ghcr.io/example", "signed_prefix": "quay.io/confidential-containers"}},
     ("remap", None, "ghcr.io/example", "quay.io/confidential-containers")),
    ({"remap": {"prefix": "127.0.0.1:5000", "signed_prefix": "docker.io/library"}},
     ("remap", None, "127.0.0.1:5000", "docker.io/library")),
    ({"remap": {"prefix": "registry:5000/mirror", "signed_prefix": "localhost/org"}},
     ("remap", None, "registry:5000/mirror", "localhost/org")),
])
def test_signed_identity_forms(tmp_path, release_key, identity, expected):
    p = load_policy(signing_policy(tmp_path, release_key.public_pem, signed_identity=identity), tmp_path)
    got = p.components[APF].signed_identity
    assert (got.kind, got.repository, got.prefix, got.signed_prefix) == expected


def _ec_key_pem(curve) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(curve).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("edit, key, words", [
    (lambda d: d["components"][APF].update(signed_by=["nobody"]), f"components.{APF}.signed_by[0]",
     ["'nobody' is not defined"]),
    (lambda d: d["keys"]["release"].update(path="/etc/podvm-bootstrap/keys/missing.pub"), "keys.release.path",
     ["cannot read key file", "missing.pub"]),
    (lambda d: d["keys"]["release"].update(path="keys/release.pub"), "keys.release.path", ["absolute path"]),
    (lambda d: d["keys"]["ops"].update(data="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"),
     "keys.ops.data", ["not a PEM public key"]),
    (lambda d: d["keys"]["ops"].update(data=_ec_key_pem(__import__(
        "cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ec"]).SECP384R1())),
     "keys.ops.data", ["not an ECDSA P-256", "secp384r1"]),
    (lambda d: d["keys"]["ops"].update(data=_ed25519_pem()), "keys.ops.data", ["not an ECDSA P-256"]),
    (lambda d: d["keys"].update(ops={"fulcio": {"caPath": "/x"}}), "keys.ops.fulcio", ["not supported offline"]),
    (lambda d: d["keys"].update(ops={"pki": {"caRootsPath": "/x"}}), "keys.ops.pki", ["not supported offline"]),
    (lambda d: d["keys"].update(ops={}), "keys.ops", ["exactly one of path"]),
    (lambda d: d["keys"]["ops"].update(path="/etc/podvm-bootstrap/keys/release.pub"), "keys.ops",
     ["exactly one of path"]),
    (lambda d: d["components"][APF].update(signed_identity="match-exact"), f"components.{APF}.signed_identity",
     ["unknown form", "match-exact"]),
    (lambda d: d["components"][APF].update(signed_identity={"remapIdentity": {}}),
     f"components.{APF}.signed_identity", ["unknown form"]),
    (lambda d: d["components"][APF].update(signed_identity={"exact-repository": "quay.io/x:tag"}),
     f"components.{APF}.signed_identity.exact-repository", ["no tag or digest"]),
    (lambda d: d["components"][APF].update(signed_identity={"remap": {"prefix": "ghcr.io/example"}}),
     f"components.{APF}.signed_identity.remap.signed_prefix", ["required"]),
    (lambda d: d["components"][APF].update(signed_identity={"remap": {"prefix": "example",
                                                                       "signed_prefix": "quay.io/x"}}),
     f"components.{APF}.signed_identity.remap.prefix", ["fully expanded"]),
])
def test_signature_config_errors_name_file_and_key(tmp_path, release_key, edit, key, words):
    path = signing_policy(tmp_path, release_key.public_pem)
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_policy(path, tmp_path)
    assert info.value.file == str(path) and info.value.key == key, str(info.value)
    for word in words:
        assert word in str(info.value)


def test_key_file_not_a_key_at_all(tmp_path, release_key):
    path = signing_policy(tmp_path, release_key.public_pem)
    (tmp_path / "etc/podvm-bootstrap/keys/release.pub").write_bytes(b"\x00\xff" * 100)
    with pytest.raises(ConfigError, match="keys.release.path: not a PEM public key"):
        load_policy(path, tmp_path)


def test_an_oversized_key_file_is_refused_naming_it(tmp_path, release_key):
    from podvm_bootstrap.config.policy import MAX_KEY_FILE

    path = signing_policy(tmp_path, release_key.public_pem)
    key_file = tmp_path / "etc/podvm-bootstrap/keys/release.pub"
    key_file.write_text(release_key.public_pem + "#" * MAX_KEY_FILE)
    with pytest.raises(ConfigError) as info:
        load_policy(path, tmp_path)
    assert info.value.key == "keys.release.path"
    assert info.value.message == f"key file {key_file} is larger than {MAX_KEY_FILE} bytes"


@pytest.mark.parametrize(("version", "words"), [
    (None, "required (set it to 1)"), (2, "unsupported version 2 (expected 1)"),
    ("1", "unsupported version '1' (expected 1)"), (True, "unsupported version True (expected 1)"),
])
def test_policy_version_is_required_and_checked(tmp_path, version, words):
    path = tmp_path / "policy.yaml"
    data: dict = {"components": {}} if version is None else {"version": version, "components": {}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_policy(path, tmp_path)
    assert (info.value.key, info.value.message) == ("version", words)


def test_the_reason_a_reference_is_invalid_is_quoted_once():
    d = evaluate_override(policy("quay.io/org/apf"), APF, "quay.io/org/apf:-bad")
    assert d.reason == "not a valid image reference: invalid tag '-bad' in 'quay.io/org/apf:-bad'"
    assert d.requested == "quay.io/org/apf:-bad"
