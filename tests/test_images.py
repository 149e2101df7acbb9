"""images.py against REAL podman (its API service on a temp socket, storage
in a temp dir) and a real registry on 127.0.0.1 (tests/bed/registry.py)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvm_bootstrap.common.backoff import Backoff
from podvm_bootstrap.images.containers_store import locate_store
from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.images.storage import (
    ImageError,
    PodmanImages,
    PullPacing,
    big_data_path,
    registry_auth,
    verify_in_storage,
)
from tests.bed.proc import free_port
from tests.bed.registry import Registry, running_registry
from tests.runtime_podman import Podman

pytestmark = pytest.mark.podman

FAST = PullPacing(retries=2, timeout=60.0, backoff=Backoff(0.01, 0.02))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("auth-registry"), username="bob", password="s3cret:x") as reg:
        yield reg


@pytest.fixture()
def podman(registry: Registry, auth_registry: Registry) -> Iterator[Podman]:
    # podman wants a short runroot (< 50 characters): not under pytest's tmp_path.
    with Podman.running([registry.host, auth_registry.host]) as p:
        yield p


def publish(podman: Podman, registry: Registry, marker: str, *, keep_local: bool = False) -> str:
    """Build an image, push it as test/<marker>:1, drop the local copy; returns repo@digest."""
    local = podman.make_image(marker)
    digest = registry.push_podman_image(local, f"test/{marker}", "1", podman=[*podman.argv])
    if not keep_local:
        podman.cli("rmi", "-f", local)
    return f"{registry.host}/test/{marker}@{digest}"


def test_pull_by_digest_then_verified_and_present(podman: Podman, registry: Registry) -> None:
    ref = parse_reference(publish(podman, registry, "pulled"))
    images = podman.images()
    assert images.lookup(ref.pinned) is None
    stored = images.ensure(ref)
    assert stored.pulled is True and stored.ref == ref
    assert images.verify(ref).image_id == stored.image_id
    assert podman.cli("image", "inspect", "--format", "{{.Digest}}", ref.pinned) == ref.digest
    # A second ensure finds it: no pull.
    assert images.ensure(ref).pulled is False


def test_prefetched_image_is_used_without_any_pull(podman: Podman, tmp_path: Path) -> None:
    with running_registry(tmp_path / "short-lived") as reg:
        (podman.base / "registries.conf").write_text(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        ref = parse_reference(publish(podman, reg, "prefetched"))
        podman.cli("pull", "--quiet", ref.pinned)  # the image build's prefetch
    # The registry is gone: only the local copy can satisfy this.
    stored = podman.images().ensure(ref)
    assert stored.pulled is False
    assert stored.image_id == podman.cli("image", "inspect", "--format", "{{.Id}}", ref.pinned)


def test_registry_down_bounded_retries_then_failure(podman: Podman) -> None:
    port = free_port()
    ref = parse_reference(f"127.0.0.1:{port}/test/nothing@sha256:" + "1" * 64)
    sleeps: list[float] = []
    images = PodmanImages(podman.socket, pacing=FAST, sleep=sleeps.append, storage_conf=None)
    with pytest.raises(ImageError, match=r"cannot pull 127\.0\.0\.1:\d+/test/nothing@sha256:1+"):
        images.ensure(ref)
    assert len(sleeps) == FAST.retries  # retries + 1 attempts, a backoff between each
    assert all(0.005 <= s <= 0.02 for s in sleeps)


def test_pull_time_is_bounded_by_the_pull_timeout(podman: Podman) -> None:
    ref = parse_reference(f"127.0.0.1:{free_port()}/test/nothing@sha256:" + "2" * 64)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 10.0  # each wait eats the budget

    images = PodmanImages(podman.socket, pacing=PullPacing(retries=100, timeout=25.0, backoff=Backoff(1, 1)),
                          sleep=sleep, clock=lambda: now[0], storage_conf=None)
    with pytest.raises(ImageError):
        images.ensure(ref)
    assert now[0] == 30.0  # three attempts fit in 25 s of budget, not 101


def test_registry_serving_another_manifest_for_the_digest_is_refused(podman: Podman, registry: Registry) -> None:
    good = parse_reference(publish(podman, registry, "tamper-a"))
    other = parse_reference(publish(podman, registry, "tamper-b"))
    blobs = Path(registry.storage) / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    hex_a, hex_b = good.digest.split(":")[1], other.digest.split(":")[1]
    (blobs / hex_a[:2] / hex_a / "data").write_bytes((blobs / hex_b[:2] / hex_b / "data").read_bytes())
    images = podman.images()
    with pytest.raises(ImageError, match="cannot pull"):
        images.ensure(good)
    assert images.lookup(good.pinned) is None


def test_mutable_tag_resolved_to_the_registry_digest_only_when_allowed(podman: Podman, registry: Registry) -> None:
    pinned = parse_reference(publish(podman, registry, "tagged"))
    tagged = parse_reference(f"{registry.host}/test/tagged:1")
    images = podman.images()
    with pytest.raises(ImageError, match="not pinned by digest"):
        images.ensure(tagged)
    stored = images.ensure(tagged, allow_tag=True)
    assert stored.ref == pinned and stored.from_tag == "1" and stored.pulled
    assert images.verify(pinned).image_id == stored.image_id  # runs by that digest


def test_auth_json_logs_in_to_a_password_registry(podman: Podman, auth_registry: Registry, tmp_path: Path) -> None:
    ref = parse_reference(publish(podman, auth_registry, "private"))
    with pytest.raises(ImageError, match="cannot pull"):
        podman.images().ensure(ref)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps(auth_registry.auth_json()))
    stored = PodmanImages(podman.socket, auth_file=auth, pacing=FAST, sleep=lambda s: None,
                           storage_conf=None).ensure(ref)
    assert stored.pulled and stored.ref == ref


def test_verify_detects_a_rewritten_stored_manifest(podman: Podman, registry: Registry) -> None:
    ref = parse_reference(publish(podman, registry, "rewritten"))
    images = podman.images()
    image_id = images.ensure(ref).image_id
    manifest_file = big_data_path(podman.store_images_dir() / image_id, f"manifest-{ref.digest}")
    manifest = json.loads(manifest_file.read_bytes())
    manifest["annotations"] = {"x": "y"}
    manifest_file.write_bytes(json.dumps(manifest).encode())
    with pytest.raises(ImageError, match="stored manifest hashes to sha256:[0-9a-f]{64}, not the planned"):
        images.verify(ref)
    with pytest.raises(ImageError):
        images.ensure(ref)  # present but wrong: not trusted, not run


def test_verify_detects_another_image_answering_to_the_digest(podman: Podman, registry: Registry) -> None:
    """The local store is edited so that a different image carries the planned
    name@digest (and even its manifest): podman would run it; verify refuses."""
    ref = parse_reference(publish(podman, registry, "genuine"))
    images = podman.images()
    genuine_id = images.ensure(ref).image_id
    impostor_id = podman.cli("image", "inspect", "--format", "{{.Id}}", podman.make_image("impostor"))
    podman.stop()
    index_file = podman.store_images_dir() / "images.json"
    records = json.loads(index_file.read_text())
    genuine = next(r for r in records if r["id"] == genuine_id)
    impostor = next(r for r in records if r["id"] == impostor_id)
    key = f"manifest-{ref.digest}"
    shutil.copy(big_data_path(podman.store_images_dir() / genuine_id, key),
                big_data_path(podman.store_images_dir() / impostor_id, key))
    impostor["names"] = [ref.pinned]
    impostor["digest"] = ref.digest
    impostor["big-data-names"].append(key)
    impostor.setdefault("big-data-digests", {})[key] = ref.digest
    impostor.setdefault("big-data-sizes", {})[key] = genuine["big-data-sizes"][key]
    records.remove(genuine)
    index_file.write_text(json.dumps(records))
    podman.start()
    for images in (podman.images(), podman.images(files=True)):   # through the API, and from the files
        assert images.lookup(ref.pinned)[0] == impostor_id  # what `podman run` would take
        with pytest.raises(ImageError, match=f"describes image sha256:{genuine_id}, but the local image is "
                                             f"sha256:{impostor_id}"):
            images.verify(ref)


def test_images_are_found_and_verified_from_the_store_files_without_podmans_api(podman: Podman,
                                                                                registry: Registry) -> None:
    """With storage.conf describing the store, a prefetched image is found and
    verified with podman's API service down: the same answer as the API's."""
    ref = parse_reference(publish(podman, registry, "files"))
    by_api = podman.images().ensure(ref)
    podman.stop()
    images = podman.images(files=True)
    assert images.reads_files and images.lookup(ref.pinned) == (by_api.image_id, ref.digest)
    stored = images.ensure(ref)
    assert stored.pulled is False and stored.image_id == by_api.image_id
    verified = images.verify(ref)
    assert verified.image_id == by_api.image_id and "rootfs" in verified.config
    assert images._client is None    # podman-py was never even connected
    missing = parse_reference(f"{ref.repository}@sha256:" + "4" * 64)
    assert images.lookup(missing.pinned) is None


def test_a_storage_conf_without_driver_finds_podmans_own_store_and_driver(podman: Podman,
                                                                          registry: Registry) -> None:
    """What Debian's podman does with no storage.conf: the driver is podman's
    own guess; found here from the graph root's state, the answer podman
    itself gives, and the image found with the API down."""
    ref = parse_reference(publish(podman, registry, "guessed"))
    by_api = podman.images().ensure(ref)
    info = json.loads(podman.cli("info", "--format", "json"))["store"]
    conf = podman.base / "no-driver.conf"
    conf.write_text(f'[storage]\ngraphroot = "{podman.root}"\nrunroot = "{podman.runroot}"\n')
    store = locate_store(conf, environ={})
    assert store is not None and store.driver == info["graphDriverName"] and store.graph_root == podman.root
    podman.stop()
    try:
        images = PodmanImages(podman.socket, storage_conf=conf, sleep=lambda s: None)
        assert images.reads_files and images.verify(ref).image_id == by_api.image_id
        assert images._client is None
    finally:
        podman.start()


def test_podman_socket_missing_is_one_clear_error(tmp_path: Path) -> None:
    images = PodmanImages(str(tmp_path / "nope.sock"), pacing=FAST, sleep=lambda s: None, storage_conf=None)
    with pytest.raises(ImageError, match="podman API socket .*nope.sock does not exist"):
        images.verify(parse_reference("quay.io/x/y@sha256:" + "3" * 64))


# --- pure parts ------------------------------------------------------------


def _auth_file(tmp_path: Path, auths: object) -> Path:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_registry_auth_picks_the_most_specific_entry(tmp_path: Path) -> None:
    ref = parse_reference("ghcr.io/org/app@sha256:" + "4" * 64)
    path = _auth_file(tmp_path, {"ghcr.io": {"auth": _b64("a:1")}, "ghcr.io/org": {"auth": _b64("b:2:3")},
                                 "ghcr.io/other": {"auth": _b64("c:4")}, "quay.io": {"auth": _b64("d:5")}})
    assert registry_auth(path, ref) == {"username": "b", "password": "2:3"}
    assert registry_auth(path, parse_reference("ghcr.io/orgx/app:1")) == {"username": "a", "password": "1"}
    assert registry_auth(path, parse_reference("docker.io/library/busybox:1")) is None


def test_registry_auth_ignores_bad_files(tmp_path: Path) -> None:
    ref = parse_reference("ghcr.io/org/app:1")
    assert registry_auth(tmp_path / "missing.json", ref) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert registry_auth(bad, ref) is None
    assert registry_auth(_auth_file(tmp_path, {"ghcr.io": {"auth": "%%%"}}), ref) is None
    assert registry_auth(_auth_file(tmp_path, {"ghcr.io": {"auth": _b64("nocolon")}}), ref) is None


def test_verify_in_storage_refuses_a_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "overlay-images" / ("a" * 64)).mkdir(parents=True)
    with pytest.raises(ImageError, match="no stored manifest"):
        verify_in_storage(tmp_path, "overlay", "a" * 64, "sha256:" + "b" * 64)
    with pytest.raises(ImageError, match="invalid image ID"):
        verify_in_storage(tmp_path, "overlay", "../x", "sha256:" + "b" * 64)
