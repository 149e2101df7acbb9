"""The read-only image store: defaults baked with `bake --store` are found and
verified by the daemon's image code (images.py, through a REAL podman API
service) in a store podman lists under additionalimagestores, mounted
read-only as a dm-verity /usr would be; overrides still go to the writable store."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.images.storage import ImageError, PodmanImages, big_data_path
from tests.bed.proc import Service
from tests.bed.registry import Registry
from tests.runtime_podman import CONTAINERS_CONF

pytestmark = pytest.mark.podman

REPO = Path(__file__).resolve().parent.parent
STORE = "/usr/share/containers/storage"


def bake_tree(tmp_path: Path, registry: Registry, registries_conf: Path) -> Path:
    """A tree whose three defaults are baked into STORE."""
    tree = tmp_path / "tree"
    (tree / "etc/podvm-bootstrap").mkdir(parents=True)
    (tree / "etc/containers").mkdir(parents=True)
    (tree / "etc/containers/storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\n[storage.options]\nadditionalimagestores = ["{STORE}"]\n')
    (tree / "etc/podvm-bootstrap/components.yaml").write_text("version: 1\ncomponents:\n" + "".join(
        f"  {c}:\n    image: {registry.host}/confidential-containers/{c}:v1\n"
        for c in ("attestation-agent", "kata-agent")))
    done = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tree), "bake", "--store", STORE],
                          env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(registries_conf)},
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return tree


class ReadOnlyStorePodman:
    """podman's API service with a writable store of its own and the tree's
    baked store bind-mounted read-only as its additional image store."""

    def __init__(self, base: Path, baked_store: Path, registries_conf: Path) -> None:
        self.ro = base / "ro"
        self.ro.mkdir()
        subprocess.run(["mount", "--bind", str(baked_store), str(self.ro)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(self.ro)], check=True)
        (base / "containers.conf").write_text(CONTAINERS_CONF)
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{base / "rw"}"\nrunroot = "{base / "run"}"\n'
            f'[storage.options]\nadditionalimagestores = ["{self.ro}"]\n')
        env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf"),
               "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
               "CONTAINERS_REGISTRIES_CONF": str(registries_conf)}
        self.socket = str(base / "podman.sock")
        self.service = Service("podman-service", ["podman", "system", "service", "--time=0",
                                                  f"unix://{self.socket}"], base / "service.log", env=env)
        self.service.wait_ready(lambda: os.path.exists(self.socket), 20, "listening")
        self.rw = base / "rw"
        self.storage_conf = base / "storage.conf"

    def stop(self) -> None:
        self.service.stop()
        subprocess.run(["umount", str(self.ro)], check=False, timeout=30)


@pytest.fixture()
def registries_conf(tmp_path: Path, bed_registry: Registry) -> Path:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{bed_registry.host}"\ninsecure = true\n')
    return conf


@pytest.fixture()
def baked(tmp_path: Path, bed_registry: Registry, registries_conf: Path) -> Path:
    return bake_tree(tmp_path, bed_registry, registries_conf)


@pytest.fixture()
def podman_ro(baked: Path, registries_conf: Path) -> Iterator[ReadOnlyStorePodman]:
    base = Path(tempfile.mkdtemp(prefix="pvb-ro-", dir="/tmp"))  # a short runroot for podman
    p = ReadOnlyStorePodman(base, baked / STORE.lstrip("/"), registries_conf)
    try:
        yield p
    finally:
        p.stop()
        shutil.rmtree(base, ignore_errors=True)


def lock_of(tree: Path) -> list[dict]:
    return json.loads((tree / "etc/podvm-bootstrap/components.lock.json").read_text())["images"]


def test_defaults_in_the_read_only_store_are_found_and_verified(baked: Path, podman_ro: ReadOnlyStorePodman,
                                                                  bed_registry: Registry, standin_images) -> None:
    with pytest.raises(OSError) as info:  # the store really is read-only
        (podman_ro.ro / "probe").write_text("x")
    assert info.value.errno == errno.EROFS
    images = PodmanImages(podman_ro.socket, storage_conf=None)   # asked of this podman
    try:
        for entry in lock_of(baked):
            ref = parse_reference(f"{bed_registry.host}/confidential-containers/{entry['component']}@{entry['digest']}")
            assert images.verify(ref).image_id == entry["image_id"]
            stored = images.ensure(ref)
            assert stored.pulled is False and stored.image_id == entry["image_id"]
        # an image that is not baked is pulled into the writable store, and verified there
        v2 = standin_images[("agent-protocol-forwarder", "v2")]
        ref = parse_reference(f"{bed_registry.host}/confidential-containers/agent-protocol-forwarder@{v2.digest}")
        stored = images.ensure(ref)
        assert stored.pulled is True
        assert (podman_ro.rw / "vfs-images" / stored.image_id).is_dir()
        assert not (podman_ro.ro / "vfs-images" / stored.image_id).exists()
    finally:
        images.close()


def test_an_image_pulled_beside_the_read_only_store_verifies_with_the_layers_it_shares(
        baked: Path, podman_ro: ReadOnlyStorePodman, bed_registry: Registry, standin_images) -> None:
    """A default not baked (another digest of a baked image: same layers) is
    pulled into the writable store, which then holds only the image: podman
    takes the layers it has from the read-only store. Its check looks for
    them there too (from the store's files, and as podman's API shows it)."""
    from tests.bed.cosign import push_unsigned_copy

    repository = "confidential-containers/attestation-agent"
    digest = push_unsigned_copy(bed_registry.host, repository, standin_images[("attestation-agent", "v1")].digest,
                                "shares-layers", "shares layers with the baked store")
    ref = parse_reference(f"{bed_registry.host}/{repository}@{digest}")
    for images in (PodmanImages(podman_ro.socket, storage_conf=podman_ro.storage_conf),
                   PodmanImages(podman_ro.socket, storage_conf=None)):
        try:
            stored = images.ensure(ref)
            assert (podman_ro.rw / "vfs-images" / stored.image_id).is_dir()
            layers = json.loads((podman_ro.rw / "vfs-layers" / "layers.json").read_text() or "[]") \
                if (podman_ro.rw / "vfs-layers" / "layers.json").exists() else []
            shared = json.loads((podman_ro.ro / "vfs-layers" / "layers.json").read_text())
            assert not {layer["id"] for layer in layers} & {layer["id"] for layer in shared}   # not copied
            assert images.verify(ref).image_id == stored.image_id
        finally:
            images.close()


def test_a_tampered_image_in_the_read_only_store_does_not_verify(tmp_path: Path, bed_registry: Registry,
                                                                 registries_conf: Path) -> None:
    tree = bake_tree(tmp_path, bed_registry, registries_conf)
    entry = lock_of(tree)[0]
    image_dir = tree / STORE.lstrip("/") / "vfs-images" / entry["image_id"]
    manifest = big_data_path(image_dir, f"manifest-{entry['digest']}")
    manifest.write_bytes(manifest.read_bytes().replace(b"schemaVersion", b"schemaversion"))
    base = Path(tempfile.mkdtemp(prefix="pvb-ro-", dir="/tmp"))
    podman = ReadOnlyStorePodman(base, tree / STORE.lstrip("/"), registries_conf)
    images = PodmanImages(podman.socket, storage_conf=None)   # asked of this podman
    try:
        ref = parse_reference(f"{bed_registry.host}/confidential-containers/{entry['component']}@{entry['digest']}")
        with pytest.raises(ImageError, match="hashes to"):
            images.verify(ref)
    finally:
        images.close()
        podman.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_additional_stores_come_from_podmans_storage_conf_and_its_options(tmp_path: Path) -> None:
    from podvm_bootstrap.images.storage import additional_image_stores

    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "overlay"\n[storage.options]\nadditionalimagestores = ["/a", "/b"]\n')
    info = {"configFile": str(conf), "graphOptions": {"overlay.imagestore": "/b", "overlay.mountopt": "nodev"}}
    assert additional_image_stores(info) == (Path("/a"), Path("/b"))
    conf.write_text("not = toml = at all")  # podman would not have read it; no traceback here either
    assert additional_image_stores(info) == (Path("/b"),)
    assert additional_image_stores({}) == ()


def test_a_storage_conf_podman_names_but_that_is_not_there_is_no_warning(tmp_path: Path, caplog) -> None:
    from podvm_bootstrap.images.storage import additional_image_stores

    info = {"configFile": str(tmp_path / "absent.conf"), "graphOptions": {"overlay.imagestore": "/b"}}
    assert additional_image_stores(info) == (Path("/b"),)
    assert caplog.records == []
