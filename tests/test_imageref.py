"""The image reference grammar and its normalization (pure)."""

import pytest

from podvm_bootstrap.imageref import ImageRef, ReferenceError, parse_reference

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
