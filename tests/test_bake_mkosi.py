"""The mkosi example's steps (image/mkosi/), on a debootstrap tree since mkosi
cannot run on these machines: the package installed with apt-get (mkosi's
Packages=), mkosi.extra copied in, then image/mkosi/mkosi.postinst itself run
from the build machine with the tree at $BUILDROOT. The tree's own podman,
with the tree's storage.conf, then finds every baked default in the
read-only store."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bed.registry import Registry
from tests.debian_tree import REPO, apt_install, build_deb, clean_debian_tree, in_tree, nspawn_argv, podman_py_wheel

pytestmark = pytest.mark.podman

MKOSI = REPO / "image/mkosi"
STORE = "/usr/share/containers/storage"
COMPONENTS = ("attestation-agent", "kata-agent", "agent-protocol-forwarder")


def test_the_mkosi_example_builds_a_tree_whose_podman_sees_the_baked_defaults(
        tmp_path: Path, bed_registry: Registry, standin_images) -> None:
    deb = build_deb()
    srcdir = tmp_path / "src"
    (srcdir / "wheels").mkdir(parents=True)
    shutil.copy(podman_py_wheel(), srcdir / "wheels")
    registries = tmp_path / "registries.conf"
    registries.write_text(f'[[registry]]\nlocation = "{bed_registry.host}"\ninsecure = true\n')

    with clean_debian_tree() as tree:
        installed = apt_install(tree, deb)                    # mkosi: Packages=podvm-bootstrap
        assert installed.returncode == 0, installed.stdout + installed.stderr
        shutil.copytree(MKOSI / "mkosi.extra", tree, dirs_exist_ok=True)  # mkosi: mkosi.extra
        conf = tree / "etc/containers/storage.conf"
        # TEST BED ONLY: the tree is an overlay mount, and overlayfs cannot nest on it.
        conf.write_text(conf.read_text().replace('driver = "overlay"', 'driver = "vfs"'))
        baked = tree / "etc/podvm-bootstrap"
        baked.mkdir(parents=True)
        (baked / "components.yaml").write_text("version: 1\ncomponents:\n" + "".join(
            f"  {c}:\n    image: {bed_registry.host}/confidential-containers/{c}:v1\n" for c in COMPONENTS))

        env = {**os.environ, "BUILDROOT": str(tree), "SRCDIR": str(srcdir),
               "CHROOT": shlex.join(nspawn_argv(tree)),
               "PODVM_BOOTSTRAP": f"{shlex.quote(sys.executable)} -m podvm_bootstrap",
               "CONTAINERS_REGISTRIES_CONF": str(registries)}
        done = subprocess.run([str(MKOSI / "mkosi.postinst")], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr

        # podman-py is in, the samples filled what the build did not give
        assert in_tree(tree, "python3", "-c", "import podman").returncode == 0
        assert (baked / "policy.yaml").read_bytes() == (REPO / "image/config/policy.yaml").read_bytes()
        lock = json.loads((baked / "components.lock.json").read_text())["images"]
        assert [(e["component"], e["digest"]) for e in lock] == \
            [(c, standin_images[(c, "v1")].digest) for c in COMPONENTS]
        assert not (tree / "var/lib/containers/storage/vfs-images").exists()
        for entry in lock:
            ref = f"{bed_registry.host}/confidential-containers/{entry['component']}@{entry['digest']}"
            seen = in_tree(tree, "podman", "image", "inspect", "--format", "{{.Id}}", ref)
            assert seen.returncode == 0, seen.stdout + seen.stderr
            assert seen.stdout.strip().splitlines()[-1] == entry["image_id"]
