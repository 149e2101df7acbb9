"""The image reference grammar and its normalization (pure)."""

import pytest

from podvm_bootstrap.images.imageref import ImageRef, ReferenceError, parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, registry, path, tag, digest", [
    ("busybox", "docker.io", "library/busybox", None, None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("myorg/app", "docker.io", "myorg/app", None, None),
    ("docker.io/busybox", "docker.io", "library/busybox", None, None),
    ("index.docker.io/library/busybox", "docker.io", "library/busybox", None, None),
    ("docker.io/myorg/app", "docker.io", "myorg/app", None, None),
    ("quay.io/org/app", "quay.io", "org/app", None, None),
    ("quay.io/org/team/sub/app:v1", "quay.io", "org/team/sub/app", "v1", None),
    ("Quay.IO/org/app", "quay.io", "org/app", None, None),
    ("127.0.0.1:5000/podvm/apf", "127.0.0.1:5000", "podvm/apf", None, None),
    ("127.0.0.1:5000/podvm/apf:latest", "127.0.0.1:5000", "podvm/apf", "latest", None),
    ("localhost/app", "localhost", "app", None, None),
    ("LocalHost/app", "localhost", "app", None, None),       # still the host localhost, lowercased
    ("localhost:5000/a/b", "localhost:5000", "a/b", None, None),
    ("[::1]:5000/a/b:1", "[::1]:5000", "a/b", "1", None),
    (f"quay.io/org/app@{D}", "quay.io", "org/app", None, D),
    (f"quay.io:443/org/app:v2@{D}", "quay.io:443", "org/app", "v2", D),
    ("ghcr.io/a_b/c__d/e-f/g--h.i", "ghcr.io", "a_b/c__d/e-f/g--h.i", None, None),
])
def test_valid_references_parse_and_normalize(text, registry, path, tag, digest):
    ref = parse_reference(text)
    assert ref == ImageRef(registry, path, tag, digest)
    assert ref.repository == f"{registry}/{path}"


@pytest.mark.parametrize("text", ["Registry/evil", f"Registry/evil@{D}", "REGISTRY/a/b:1", "Evil/x"])
def test_a_host_only_by_its_capitals_is_refused_not_moved_to_docker_io(text):
    """"Registry/evil" names the host Registry to docker's grammar (capitals
    make a first component a host); lowercased, "registry/evil" is a path on
    docker.io to podman. Judging one and running the other is refused."""
    with pytest.raises(ReferenceError, match="is a host only by its capitals"):
        parse_reference(text)


def test_every_parsed_reference_means_the_same_to_podman_when_printed():
    """What runs (str/pinned) parses back to the very reference judged."""
    for text in ("Quay.IO/org/app", "LocalHost:5000/a", "127.0.0.1:5000/podvm/apf", "myorg/app", f"q.io/a@{D}"):
        ref = parse_reference(text)
        assert parse_reference(str(ref)) == ref


def test_port_is_not_a_tag():
    ref = parse_reference("registry.example:5000/app")
    assert (ref.registry, ref.path, ref.tag) == ("registry.example:5000", "app", None)


def test_str_round_trips_and_pinned_drops_the_tag():
    ref = parse_reference(f"quay.io/org/app:v1@{D}")
    assert str(ref) == f"quay.io/org/app:v1@{D}"
    assert ref.pinned == f"quay.io/org/app@{D}"
    assert parse_reference(str(ref)) == ref
    with pytest.raises(ValueError):
        _ = parse_reference("quay.io/org/app:v1").pinned


@pytest.mark.parametrize("text", [
    "",
    " quay.io/org/app",
    "quay.io/org/app ",
    "quay.io/org /app",
    "quay.io/org/app\n",
    "quay.io/org/app\x00",
    "quay.io/org/\x1bapp",
    "quay.io/Org/app",                       # uppercase path
    "quay.io/org/app@sha256:" + "a" * 63,    # digest too short
    "quay.io/org/app@sha256:" + "a" * 65,    # digest too long
    "quay.io/org/app@sha256:" + "A" * 64,    # uppercase hex
    "quay.io/org/app@md5:" + "a" * 32,       # unknown algorithm
    "quay.io/org/app@",
    "quay.io/org/app:",
    "quay.io/org/app:-tag",
    "quay.io/org/app:t\u00e4g",              # non-ASCII tag
    "quay.io/org/app:" + "t" * 129,          # tag too long
    "quay.io//app",
    "quay.io/",
    "quay.io:99999/app",
    "quay.io:0/app",
    "-quay.io/app",
    "quay.io/org/-app",
    "quay.io/org/app.",
    "a/" * 130 + "b",                        # name too long
    ":tag",
])
def test_invalid_references_are_refused(text):
    with pytest.raises(ReferenceError):
        parse_reference(text)


def test_non_string_is_refused():
    with pytest.raises(ReferenceError):
        parse_reference(None)  # type: ignore[arg-type]


def test_with_digest_replaces_the_tag():
    ref = parse_reference("quay.io/org/app:v1").with_digest(D)
    assert (ref.tag, ref.digest) == (None, D)
    with pytest.raises(ReferenceError):
        ref.with_digest("sha256:xyz")


# --- digests: sha256 only (the contract; measurement and signatures assume it) ---

SHA384 = "sha384:" + "b" * 96
SHA512 = "sha512:" + "c" * 128


@pytest.mark.parametrize("digest", [SHA384, SHA512])
def test_sha384_and_sha512_digests_are_refused_with_the_reason(digest):
    with pytest.raises(ReferenceError, match="only sha256 digests are accepted, got 'sha"):
        parse_reference(f"quay.io/org/app@{digest}")
    with pytest.raises(ReferenceError):
        parse_reference("quay.io/org/app").with_digest(digest)


@pytest.mark.parametrize("digest", [SHA384, SHA512])
def test_an_override_pinned_by_another_algorithm_is_refused_by_the_policy(digest):
    from podvm_bootstrap.config.policy import ComponentPolicy, Policy, evaluate_override, parse_pattern

    rules = ComponentPolicy((parse_pattern("ghcr.io/example/*"),), ())
    policy = Policy(mutable_tags=False, components={"apf": rules})
    assert evaluate_override(policy, "apf", f"ghcr.io/example/apf@{D}").accepted
    decision = evaluate_override(policy, "apf", f"ghcr.io/example/apf@{digest}")
    assert not decision.accepted
    assert "only sha256 digests are accepted" in decision.reason


@pytest.mark.parametrize("digest", [SHA384, SHA512])
def test_a_baked_default_pinned_by_another_algorithm_is_a_config_error_naming_file_and_key(tmp_path, digest):
    from podvm_bootstrap.common.errors import ConfigError
    from podvm_bootstrap.config.manifest import load_manifest

    path = tmp_path / "components.yaml"
    path.write_text(f"version: 1\ncomponents:\n  apf:\n    image: quay.io/org/apf@{digest}\n")
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: components.apf.image: ")
    assert "only sha256 digests are accepted" in str(info.value)
