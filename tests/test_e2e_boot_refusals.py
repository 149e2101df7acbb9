"""A signed policy refusing, in one boot, a baked default that is not in
local storage (pulled, unsigned) and four overrides (pulled, unsigned), in
a booted pod VM (tests/bed): the boot still reaches READY promptly, every
refused start undone, nothing restarted. Before, the refused default's
early start (`podman run --pull=never` of an image not in storage) failed
and crossed systemd's Restart= with the daemon's own starts."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.bed.vm import booted
from tests.test_e2e_boot_pulled import READY_WITHIN, copy_of, ready_after
from tests.test_e2e_runtime import (
    NAMES,
    baked,
    bed_components,
    bootstrap_yaml,
    component,
    daemon_journal,
    userdata,
    wait_status,
)

pytestmark = pytest.mark.vm


def test_a_signed_policy_refusing_a_default_and_four_overrides_still_boots_promptly(
        podvm_image: Any, bed_registry: Any, standin_images: Any, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> None:
    """The image's policy requires the release key's signature for every
    component. api-server-rest's baked default is an unsigned image not in
    storage (pulled, then refused: that component's error); the four others
    are asked for unsigned overrides (pulled, refused: their verified
    defaults run). READY comes promptly, every refused start undone."""
    refused_default = "api-server-rest"
    manifest = bed_components(podvm_image)
    manifest["components"][refused_default]["image"] = copy_of(bed_registry, standin_images, refused_default,
                                                               "unsigned-default", signed=False)
    overrides = {name: copy_of(bed_registry, standin_images, name, "unsigned-override", signed=False)
                 for name in NAMES if name != refused_default}
    text = userdata() + "podvm_bootstrap:\n  images:\n" + "".join(
        f"    {name}: {ref}\n" for name, ref in overrides.items())
    # The image's policy, with every component's own repository open to overrides: they are refused
    # for their missing signature, not for their repository.
    policy = baked(podvm_image, "/etc/podvm-bootstrap/policy.yaml")
    for name, rules in policy["components"].items():
        rules["repositories"] = [f"quay.io/confidential-containers/{name}"]
        assert rules["signed_by"] == ["release"]
    with booted(podvm_image, tmp_path_factory.mktemp("refusals") / "vm", registry=bed_registry, wait="started",
                userdata=text, files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_yaml(podvm_image),
                                      "/etc/podvm-bootstrap/policy.yaml": yaml.safe_dump(policy, sort_keys=False),
                                      "/etc/podvm-bootstrap/components.yaml":
                                          yaml.safe_dump(manifest, sort_keys=False)}) as vm:
        request.node._podvm_vms = [vm]
        others = [n for n in NAMES if n != refused_default]
        st = wait_status(vm, lambda s: s["daemon"]["ready"] and all(
            component(s, n)["state"] == "ready" for n in others), 120, "READY with the four defaults ready")
        assert ready_after(vm) < READY_WITHIN
        for name in others:
            c = component(st, name)
            assert c["source"] == "default" and c["override"]["accepted"] is False, c
            assert re.search(r"not signed|signature", c["override"]["reason"]), c
            assert c["restarts"] == 0, c
        failed = component(st, refused_default)
        assert failed["state"] == "failed" and re.search(r"not signed|signature", failed["last_error"]), failed
        texts = [t for _, t in daemon_journal(vm)]
        assert not any("not ready within" in t or "starting it again" in t for t in texts), texts
        # The refused default was never started early (it was not in storage) and has no unit.
        assert vm.run(["test", "-e", f"/run/systemd/system/{refused_default}.service"],
                      check=False).returncode != 0
        assert vm.unit_state(f"{refused_default}.service") in ("inactive", "unknown")
