"""`podvm-bootstrap bake` against REAL podman and skopeo on the machine, the
real registry on 127.0.0.1 holding the stand-ins (tests/bed), into a fresh
image tree: the command line as an image build runs it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from podvm_bootstrap.images.storage import big_data_path, verify_in_storage
from tests.bed.cosign import SignatureLayer, push_signatures
from tests.bed.registry import Registry, running_registry

pytestmark = pytest.mark.podman

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = ("attestation-agent", "kata-agent", "agent-protocol-forwarder")
VFS_STORAGE_CONF = '[storage]\ndriver = "vfs"\ngraphroot = "/var/lib/containers/storage"\n'
POLICY = "version: 1\nmutable_tags: false\ncomponents: {}\n"


def manifest_text(registry: Registry, tags: dict[str, str]) -> str:
    """A manifest whose images are tags (or whatever `tags` says) on the loopback registry, with comments."""
    lines = ["# baked by the test; this comment must survive bake", "version: 1", "components:"]
    previous = None
    for name in COMPONENTS:
        ref = tags[name] if "@" in tags[name] or "/" in tags[name] else \
            f"{registry.host}/confidential-containers/{name}:{tags[name]}"
        lines += [f"  {name}:", f"    image: {ref}   # {name} default"]
        if previous:
            lines.append(f"    after: [{previous}]")
        lines.append("    container: {network: host}")
        previous = name
    return "\n".join(lines) + "\n"


@pytest.fixture()
def env(tmp_path: Path, bed_registry: Registry) -> dict[str, str]:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{bed_registry.host}"\ninsecure = true\n')
    return {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}


def make_tree(tmp_path: Path, manifest: str, storage_conf: str | None = VFS_STORAGE_CONF) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc/podvm-bootstrap").mkdir(parents=True)
    (tree / "etc/podvm-bootstrap/components.yaml").write_text(manifest)
    (tree / "etc/podvm-bootstrap/policy.yaml").write_text(POLICY)
    if storage_conf is not None:
        (tree / "etc/containers").mkdir(parents=True)
        (tree / "etc/containers/storage.conf").write_text(storage_conf)
    return tree


def bake(tree: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", "bake", "--root", str(tree), *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


def snapshot(tree: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the tree with its bytes and mtime."""
    return {str(p.relative_to(tree)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()}


def image_ids(graph_root: Path, refs: list[str]) -> list[str]:
    """The image IDs podman itself reports for refs in that store (one podman
    run: its database in the store remembers the runroot it was made with)."""
    with tempfile.TemporaryDirectory(prefix="pvb-inspect-", dir="/tmp") as runroot:
        out = subprocess.run(["podman", "--root", str(graph_root), "--runroot", runroot,
                              "--storage-driver", "vfs", "image", "inspect", "--format", "{{.Id}}", *refs],
                             capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


def test_bake_resolves_tags_pulls_into_the_tree_and_writes_the_lock(
        tmp_path: Path, env: dict[str, str], bed_registry: Registry, standin_images) -> None:
    tree = make_tree(tmp_path, manifest_text(bed_registry, {c: "v1" for c in COMPONENTS}))
    done = bake(tree, env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

    digests = {c: standin_images[(c, "v1")].digest for c in COMPONENTS}
    repos = {c: f"{bed_registry.host}/confidential-containers/{c}" for c in COMPONENTS}
    baked = (tree / "etc/podvm-bootstrap/components.yaml").read_text()
    # Only the image scalars changed: comments and layout are the builder's.
    assert baked == manifest_text(bed_registry, {c: f"{repos[c]}@{digests[c]}" for c in COMPONENTS})
    # The baked manifest is now acceptable to a policy without mutable tags.
    (tmp_path / "empty").write_text("")
    planned = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tree), "plan", "--json",
                              "--user-data", str(tmp_path / "empty")], capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    assert [c["image"] for c in json.loads(planned.stdout)["components"]] == \
        [f"{repos[c]}@{digests[c]}" for c in COMPONENTS]

    graph = tree / "var/lib/containers/storage"
    # podman's own database would name this machine's paths: not left in the image.
    assert (graph / "vfs-images").is_dir() and not (graph / "libpod").exists()
    lock = json.loads((tree / "etc/podvm-bootstrap/components.lock.json").read_text())
    ids = dict(zip(COMPONENTS, image_ids(graph, [f"{repos[c]}@{digests[c]}" for c in COMPONENTS]), strict=True))
    assert lock == {"images": [
        {"component": c, "variant": None, "reference": f"{repos[c]}:v1", "digest": digests[c],
         "image_id": ids[c], "signed_by": None}
        for c in COMPONENTS]}
    for entry in lock["images"]:  # each image verifies where the VM will read it
        verify_in_storage(graph, "vfs", entry["image_id"], entry["digest"])
    assert "pulling" in done.stdout and "Copying blob" in done.stdout  # progress of the pulls


def test_second_bake_with_the_same_inputs_changes_no_file(
        tmp_path: Path, env: dict[str, str], bed_registry: Registry) -> None:
    tree = make_tree(tmp_path, manifest_text(bed_registry, {c: "v1" for c in COMPONENTS}))
    assert bake(tree, env).returncode == 0
    before = snapshot(tree)
    again = bake(tree, env)
    assert again.returncode == 0, again.stderr
    assert snapshot(tree) == before  # every file: same bytes, same mtime
    assert "pulling" not in again.stdout and "nothing changed" in again.stdout
    lock = json.loads((tree / "etc/podvm-bootstrap/components.lock.json").read_text())
    assert {e["reference"].rsplit(":", 1)[1] for e in lock["images"]} == {"v1"}  # still the builder's tags


def test_a_changed_tag_is_baked_anew(tmp_path: Path, env: dict[str, str], bed_registry: Registry,
                                     standin_images) -> None:
    tags = {c: "v1" for c in COMPONENTS}
    tree = make_tree(tmp_path, manifest_text(bed_registry, tags))
    assert bake(tree, env).returncode == 0
    tags["agent-protocol-forwarder"] = "v2"
    source = tmp_path / "components.yaml"
    source.write_text(manifest_text(bed_registry, tags))
    done = bake(tree, env, "--components", str(source))
    assert done.returncode == 0, done.stderr
    lock = json.loads((tree / "etc/podvm-bootstrap/components.lock.json").read_text())
    apf = lock["images"][2]
    assert apf["reference"].endswith("agent-protocol-forwarder:v2")
    assert apf["digest"] == standin_images[("agent-protocol-forwarder", "v2")].digest
    assert apf["digest"] in (tree / "etc/podvm-bootstrap/components.yaml").read_text()


@pytest.mark.parametrize("broken", ["tag", "digest"])
def test_a_missing_image_fails_with_one_line_and_writes_nothing(
        tmp_path: Path, env: dict[str, str], bed_registry: Registry, broken: str) -> None:
    missing = (f"{bed_registry.host}/confidential-containers/kata-agent:no-such-tag" if broken == "tag" else
               f"{bed_registry.host}/confidential-containers/kata-agent@sha256:{'0' * 63}1")
    text = manifest_text(bed_registry, {"attestation-agent": "v1", "kata-agent": missing,
                                        "agent-protocol-forwarder": "v1"})
    tree = make_tree(tmp_path, text)
    done = bake(tree, env)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("podvm-bootstrap: error: cannot ") and "kata-agent" in lines[0]
    assert (tree / "etc/podvm-bootstrap/components.yaml").read_text() == text
    assert not (tree / "etc/podvm-bootstrap/components.lock.json").exists()


def test_a_config_error_exits_2_naming_file_and_key(tmp_path: Path, env: dict[str, str],
                                                    bed_registry: Registry) -> None:
    text = manifest_text(bed_registry, {c: "v1" for c in COMPONENTS}).replace(
        "    container: {network: host}\n", "    container: {network: host, colour: red}\n", 1)
    tree = make_tree(tmp_path, text)
    done = bake(tree, env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"podvm-bootstrap: error: {tree}/etc/podvm-bootstrap/components.yaml: "
        "components.attestation-agent.container.colour: unknown key (known: capabilities, command, devices, env, "
        "network, pid, privileged, read_only, user, volumes)"]
    assert not (tree / "var/lib/containers").exists()


def test_store_fills_a_separate_store_listed_as_additional(tmp_path: Path, env: dict[str, str],
                                                           bed_registry: Registry, standin_images) -> None:
    store = "/usr/share/containers/storage"
    conf = VFS_STORAGE_CONF + f'[storage.options]\nadditionalimagestores = ["{store}"]\n'
    tree = make_tree(tmp_path, manifest_text(bed_registry, {c: "v1" for c in COMPONENTS}), conf)
    done = bake(tree, env, "--store", store)
    assert done.returncode == 0, done.stderr
    lock = json.loads((tree / "etc/podvm-bootstrap/components.lock.json").read_text())
    for entry in lock["images"]:
        verify_in_storage(tree / store.lstrip("/"), "vfs", entry["image_id"], entry["digest"])
    assert not (tree / "var/lib/containers/storage/vfs-images").exists()  # the writable store stays empty


def test_store_not_listed_in_the_trees_storage_conf_is_a_config_error(
        tmp_path: Path, env: dict[str, str], bed_registry: Registry) -> None:
    tree = make_tree(tmp_path, manifest_text(bed_registry, {c: "v1" for c in COMPONENTS}))
    done = bake(tree, env, "--store", "/usr/share/containers/storage")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"podvm-bootstrap: error: {tree}/etc/containers/storage.conf: storage.options.additionalimagestores: "
        "must list /usr/share/containers/storage (the read-only store --store fills), got []"]
    assert not (tree / "usr").exists()


@pytest.mark.parametrize("tree_registries_d", [True, False])
def test_the_trees_registries_d_makes_bake_fetch_and_keep_signatures(
        tmp_path: Path, standin_images, tree_registries_d: bool) -> None:
    image = standin_images[("kata-agent", "v1")]
    payload = json.dumps({"critical": {"type": "cosign container image signature",
                                       "image": {"docker-manifest-digest": image.digest}}}).encode()
    with running_registry(tmp_path / "registry") as registry:
        registry.push_standin(image)
        # Its signature is not checked here: this is about the attachment being fetched and kept.
        push_signatures(registry.host, image.repository, image.digest, [SignatureLayer(payload, "bm90LWNoZWNrZWQ=")])
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        tree = make_tree(tmp_path, "version: 1\ncomponents:\n  kata-agent:\n"
                                   f"    image: {registry.host}/{image.repository}@{image.digest}\n")
        if tree_registries_d:  # as the package installs it into the image
            (tree / "etc/containers/registries.d").mkdir()
            shutil.copy(REPO / "containers/registries.d/podvm-bootstrap.yaml", tree / "etc/containers/registries.d")
        done = bake(tree, {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)})
        assert done.returncode == 0, done.stderr
    entry = json.loads((tree / "etc/podvm-bootstrap/components.lock.json").read_text())["images"][0]
    image_dir = tree / "var/lib/containers/storage/vfs-images" / entry["image_id"]
    stored = big_data_path(image_dir, "signature-" + image.digest.split(":", 1)[1])
    kept = stored.read_bytes() if stored.exists() else b""
    # containers/storage keeps it as "\0sigstore-json\n{mimeType, payload (base64), annotations}"
    assert (base64.b64encode(payload) in kept) is tree_registries_d


@pytest.mark.parametrize("store", [None, "/usr/share/containers/storage"], ids=["tree-store", "separate-store"])
@pytest.mark.parametrize("signer", ["release", "stranger"])
def test_bake_checks_signatures_the_policy_asks_for(tmp_path: Path, standin_images, signer: str,
                                                    store: str | None) -> None:
    """A policy with signed_by: bake checks the signature it fetched with the
    pull, with the daemon's own verifier, in the tree's store or in the
    separate one --store fills. Signed by the baked key: baked, and the lock
    names the key. Signed by a key the policy does not list: the build fails
    with one line and writes nothing (not the boot)."""
    from tests.bed.cosign import SigningKey, sign_image

    image = standin_images[("kata-agent", "v1")]
    release = SigningKey.generate("release")
    with running_registry(tmp_path / "registry") as registry:
        registry.push_standin(image, sign=False)
        sign_image(registry.host, image.repository, image.digest,
                   release if signer == "release" else SigningKey.generate("stranger"))
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        text = ("version: 1\ncomponents:\n  kata-agent:\n"
                f"    image: {registry.host}/{image.repository}@{image.digest}\n")
        storage_conf = VFS_STORAGE_CONF + (f'[storage.options]\nadditionalimagestores = ["{store}"]\n'
                                           if store else "")
        tree = make_tree(tmp_path, text, storage_conf)
        (tree / "etc/containers/registries.d").mkdir()
        shutil.copy(REPO / "containers/registries.d/podvm-bootstrap.yaml", tree / "etc/containers/registries.d")
        release.write_public(tree / "etc/podvm-bootstrap/keys/release.pub")
        (tree / "etc/podvm-bootstrap/policy.yaml").write_text(
            "version: 1\nkeys:\n  release: {path: /etc/podvm-bootstrap/keys/release.pub}\n"
            "components:\n  kata-agent: {signed_by: [release]}\n")
        env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}
        store_args = ["--store", store] if store else []
        done = bake(tree, env, *store_args)
        again = bake(tree, env, *store_args) if signer == "release" else None   # the signature found in the store again
    lock_path = tree / "etc/podvm-bootstrap/components.lock.json"
    graph = tree / (store or "/var/lib/containers/storage").lstrip("/")
    if signer == "release":
        assert done.returncode == 0, done.stderr
        assert json.loads(lock_path.read_text())["images"][0]["signed_by"] == "release"
        assert again is not None and again.returncode == 0 and "nothing changed" in again.stdout, again
        image_id = json.loads(lock_path.read_text())["images"][0]["image_id"]
        assert big_data_path(graph / "vfs-images" / image_id, "signature-" + image.digest.split(":", 1)[1]).exists()
    else:
        assert done.returncode == 1
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "kata-agent" in lines[0] and "signature" in lines[0], done.stderr
        assert not lock_path.exists()
        assert (tree / "etc/podvm-bootstrap/components.yaml").read_text() == text
