"""Pytest fixtures of the test bed (registered by tests/conftest.py).

Session scope: standin_images, standin_bin, bed_registry, auth_registry, podvm_image, podvm_disk.
Module scope:  pod_vm (one booted VM with the minimal user-data), qemu_vm (the same as a real VM under QEMU).
Per test:      boot_pod_vm (a factory; every VM it boots is torn down after the test),
               swtpm (a software TPM on loopback).
See tests/bed/README.md."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bed.cache import cache_dir, cache_lock
from tests.bed.registry import Registry, running_registry
from tests.standins import images as standins

AUTH_USER, AUTH_PASSWORD = "podvm", "stand-in-secret"


@pytest.fixture(scope="session")
def standin_images() -> dict[tuple[str, str], standins.StandinImage]:
    """Every stand-in as an OCI layout, by (component, variant): variants v1
    (the default images), v2 (agent-protocol-forwarder only: an override) and
    padded (agent-protocol-forwarder v1 plus 50 MB)."""
    cache = cache_dir()
    with cache_lock(cache):
        return standins.build_all(cache / f"standins-{standins.inputs_key()}")


@pytest.fixture(scope="session")
def standin_bin(tmp_path_factory) -> Callable[[str, str], Path]:
    """standin_bin(component, version="v1") -> path of the stand-in program
    named after the component (it picks its role from its name), for tests
    that run it directly on the machine."""
    root = tmp_path_factory.mktemp("standin-bin")
    built: dict[str, Path] = {}

    def get(component: str, version: str = "v1") -> Path:
        if version not in built:
            built[version] = standins.compile_standin(root, version)
        link = root / version / component
        if not link.exists():
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(built[version])
        return link

    return get


def _with_standins(registry: Registry, images: dict) -> Registry:
    for (_component, variant), image in images.items():
        if variant != "padded":
            registry.push_standin(image)
    return registry


@pytest.fixture(scope="session")
def bed_registry(standin_images) -> Iterator[Registry]:
    """A registry on 127.0.0.1:<free port> holding the stand-ins as
    confidential-containers/<component>:<variant> (v1, v2; push the padded
    one with bed_registry.push_standin(...) when needed). Booted VMs reach it
    as quay.io/confidential-containers/* through their mirror setting."""
    with running_registry() as registry:
        yield _with_standins(registry, standin_images)


@pytest.fixture(scope="session")
def auth_registry(standin_images) -> Iterator[Registry]:
    """Like bed_registry, but every request needs the password (htpasswd);
    registry.auth_json() is the matching containers-auth.json content."""
    with running_registry(username=AUTH_USER, password=AUTH_PASSWORD) as registry:
        yield _with_standins(registry, standin_images)


@pytest.fixture(scope="session")
def podvm_image():
    """The built (or cached) pod VM image (tests/bed/vm.py BuiltImage)."""
    from tests.bed.vm import ensure_image

    return ensure_image()


@pytest.fixture
def boot_pod_vm(request, podvm_image, bed_registry):
    """boot_pod_vm(**boot options) -> PodVM, booted and running; see
    tests/bed/vm.py boot() for the options. Torn down (SIGKILL of its PID 1)
    after the test; its journal is attached to the report of a failed test."""
    from tests.bed.vm import boot

    vms = []
    request.node._podvm_vms = vms
    workroot = Path(tempfile.mkdtemp(prefix="podvm-vm-", dir=os.environ.get("PODVM_VM_DIR", "/var/tmp")))

    def factory(**options):
        options.setdefault("registry", bed_registry)
        vm = boot(podvm_image, workroot / f"vm{len(vms)}", **options)
        vms.append(vm)
        return vm

    try:
        yield factory
    finally:
        for vm in vms:
            vm.destroy()
        shutil.rmtree(workroot, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the journal of every VM the test booted to a failed report."""
    outcome = yield
    report = outcome.get_result()
    if report.when in ("call", "setup") and report.failed:
        vms = list(getattr(item, "_podvm_vms", []))
        vms += [v for v in getattr(item, "funcargs", {}).values() if hasattr(v, "journal_safe") and v not in vms]
        for vm in vms:
            report.sections.append((f"journal of {vm.name}", vm.journal_safe()))


@pytest.fixture(scope="module")
def pod_vm(podvm_image, bed_registry, tmp_path_factory):
    """One VM per test module, booted with the minimal user-data (the baked
    defaults come up), for tests that only look. Do not combine with
    boot_pod_vm in one module: one VM runs at a time."""
    from tests.bed.userdata import MINIMAL_USERDATA
    from tests.bed.vm import booted

    with booted(podvm_image, tmp_path_factory.mktemp("pod-vm") / "vm", registry=bed_registry,
                userdata=MINIMAL_USERDATA) as vm:
        yield vm


@pytest.fixture
def swtpm(tmp_path_factory):
    """A fresh software TPM on 127.0.0.1 (tests/bed/swtpm.py): `.tcti` for
    measure.tpm, `.pcrread(pcr)` and `.quoted_pcr(pcr)` read it back with
    tpm2-tools. Stopped by its PID after the test."""
    from tests.bed.swtpm import running_swtpm

    with running_swtpm(tmp_path_factory.mktemp("swtpm")) as tpm:
        yield tpm


@pytest.fixture(scope="session")
def podvm_disk():
    """The built (or cached) pod VM disk (image/disk.py; tests/bed/qemu.py BuiltDisk)."""
    from tests.bed.qemu import ensure_disk

    return ensure_disk()


@pytest.fixture(scope="module")
def qemu_vm(podvm_disk, tmp_path_factory):
    """One real VM per test module: the disk under QEMU (tests/bed/qemu.py)
    with its own vTPM, the minimal user-data on a cidata ISO, no network.
    Do not combine with another VM fixture in one module."""
    from tests.bed.qemu import booted
    from tests.bed.userdata import MINIMAL_USERDATA

    workdir = Path(tempfile.mkdtemp(prefix="podvm-qemu-", dir=os.environ.get("PODVM_VM_DIR", "/var/tmp")))
    try:
        with booted(podvm_disk, workdir, userdata=MINIMAL_USERDATA) as vm:
            yield vm
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
