"""The built pod VM image (image/build.py), looked at without booting it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.settings import load_settings

pytestmark = pytest.mark.vm  # builds the image (root, debootstrap on a cold cache)


def in_image(image, path: str) -> Path:
    """The file as the image has it: the project layer over the base."""
    for lower in image.lowerdirs:
        candidate = Path(lower) / path.lstrip("/")
        if os.path.lexists(candidate):
            return candidate
    raise FileNotFoundError(path)


def test_baked_manifest_pins_the_prefetched_stand_ins(podvm_image, standin_images):
    manifest = load_manifest(in_image(podvm_image, "/etc/podvm-bootstrap/components.yaml"))
    assert {c.name: str(c.image) for c in manifest.components} == podvm_image.defaults
    for name, ref in podvm_image.defaults.items():
        assert ref == f"quay.io/confidential-containers/{name}@{standin_images[(name, 'v1')].digest}"
    sample = yaml.safe_load(Path("image/config/components.yaml").read_text())
    assert set(sample["components"]) == set(podvm_image.defaults)


def test_baked_settings_never_leave_loopback(podvm_image):
    settings = load_settings(in_image(podvm_image, "/etc/podvm-bootstrap/bootstrap.yaml"))
    assert all(url.startswith("http://127.0.0.1:") for url in settings.userdata.endpoints.values())
    # The sample policy, plus the test bed's signing rules (the next test).
    policy = yaml.safe_load(in_image(podvm_image, "/etc/podvm-bootstrap/policy.yaml").read_text())
    del policy["keys"]
    for rules in policy["components"].values():
        del rules["signed_by"]
    assert policy == yaml.safe_load(Path("image/config/policy.yaml").read_text())


def test_baked_policy_requires_the_test_release_key_for_every_component(podvm_image):
    from podvm_bootstrap.config.policy import load_policy
    from tests.bed.keys import release_key

    layer = Path(podvm_image.lowerdirs[0])
    policy = load_policy(in_image(podvm_image, "/etc/podvm-bootstrap/policy.yaml"), layer)
    assert {name: policy.signed_by(name) for name in podvm_image.defaults} == {
        name: ("release",) for name in podvm_image.defaults}
    assert in_image(podvm_image, "/etc/podvm-bootstrap/keys/release.pub").read_text() == release_key().public_pem
    registries_d = in_image(podvm_image, "/etc/containers/registries.d/podvm-bootstrap.yaml")
    assert registries_d.read_text() == Path("containers/registries.d/podvm-bootstrap.yaml").read_text()
    assert yaml.safe_load(registries_d.read_text()) == {"default-docker": {"use-sigstore-attachments": True}}


def test_unit_is_installed_enabled_and_the_cli_is_where_it_points(podvm_image):
    # installed by the Debian package (make deb), which points the unit at /usr/bin
    unit = in_image(podvm_image, "/usr/lib/systemd/system/podvm-bootstrap.service")
    assert unit.read_text() == Path("systemd/podvm-bootstrap.service").read_text().replace(
        "ExecStart=/usr/local/bin/podvm-bootstrap run", "ExecStart=/usr/bin/podvm-bootstrap run")
    wants = in_image(podvm_image, "/etc/systemd/system/multi-user.target.wants/podvm-bootstrap.service")
    assert os.readlink(wants).endswith("/systemd/system/podvm-bootstrap.service")
    assert os.access(in_image(podvm_image, "/usr/bin/podvm-bootstrap"), os.X_OK)
    status = in_image(podvm_image, "/var/lib/dpkg/status").read_text()
    assert "Package: podvm-bootstrap\nStatus: install ok installed\n" in status


def test_defaults_are_baked_into_the_read_only_store(podvm_image):
    lock = yaml.safe_load(in_image(podvm_image, "/etc/podvm-bootstrap/components.lock.json").read_text())
    assert {e["component"]: e["reference"].split(":")[0] + "@" + e["digest"] for e in lock["images"]
            if e["variant"] is None} == podvm_image.defaults
    for entry in lock["images"]:
        assert in_image(podvm_image, f"/usr/share/containers/storage/vfs-images/{entry['image_id']}").is_dir()
    assert not (Path(podvm_image.lowerdirs[0]) / "usr/share/containers/storage/libpod").exists()


def test_second_build_reuses_the_cache(podvm_image):
    out = subprocess.run([".venv/bin/python", "image/build.py"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "debootstrap" not in out.stderr and "installing" not in out.stderr
    assert podvm_image.lowerdirs[0] in out.stdout
