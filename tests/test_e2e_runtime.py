"""`podvm-bootstrap run` under real systemd in a booted pod VM (tests/bed):
the stand-in components start in order, are supervised, survive the daemon's
own death, and `status --json` tells the truth at every step.

One module-scoped VM with the image's own manifest; its tests run in file
order, each from "everything ready". test_e2e_runtime_variant.py boots a
variant manifest (a layer of two, a crash-looping essential component)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bed.proc import BedError, wait_until
from tests.bed.vm import PodVM, booted

pytestmark = pytest.mark.vm

APF = "agent-protocol-forwarder"
NAMES = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")
AA_TOML = "[token_configs]\nurl = \"http://127.0.0.1:1\"\n"


def userdata(override: str | None = None) -> str:
    text = ("#cloud-config\nwrite_files:\n  - path: /run/peerpod/aa.toml\n    content: |\n"
            + "".join(f"      {line}\n" for line in AA_TOML.splitlines())
            + "  - path: /run/peerpod/apf.json\n    content: '{}'\n")
    if override:
        text += f"podvm_bootstrap:\n  images:\n    agent-protocol-forwarder: {override}\n"
    return text


def baked(podvm_image: Any, path: str) -> dict:
    for lower in podvm_image.lowerdirs:
        f = Path(lower) / path.lstrip("/")
        if f.exists():
            return yaml.safe_load(f.read_text()) or {}
    raise BedError(f"{path} is not in the image")


def bootstrap_yaml(podvm_image: Any, **runtime: Any) -> str:
    settings = baked(podvm_image, "/etc/podvm-bootstrap/bootstrap.yaml")
    settings.setdefault("userdata", {}).update({"provider": "file", "timeout": "20s"})
    settings.setdefault("runtime", {}).update(runtime)
    return yaml.safe_dump(settings)


def status(vm: PodVM) -> dict:
    out = vm.run(["podvm-bootstrap", "status", "--json"], check=False, timeout=30)
    return json.loads(out.stdout)


def component(st: dict, name: str) -> dict:
    return next(c for c in st["components"] if c["name"] == name)


def wait_status(vm: PodVM, check: Callable[[dict], bool], timeout: float, what: str) -> dict:
    seen: dict = {}

    def ok() -> bool:
        nonlocal seen
        try:
            seen = status(vm)
            return check(seen)
        except (ValueError, KeyError, StopIteration, TypeError):  # no state yet, or not that far
            return False
    try:
        wait_until(ok, timeout, what, interval=0.5)
    except BedError as exc:
        raise AssertionError(f"{exc}; last status: {json.dumps(seen)[:3000]}") from None
    return seen


def all_ready(st: dict) -> bool:
    return all(c["state"] == "ready" and c["active_state"] == "active" for c in st["components"])


def containers(vm: PodVM) -> dict[str, tuple[str, str]]:
    """name -> (container ID, start time) of the running containers."""
    out = vm.podman("ps", "--format", "json").stdout
    return {c["Names"][0]: (c["Id"], str(c.get("StartedAt"))) for c in json.loads(out or "[]")}


def daemon_pid(vm: PodVM) -> int:
    return int(vm.systemctl("show", "-P", "MainPID", "podvm-bootstrap.service").stdout.strip())


def daemon_status_text(vm: PodVM) -> str:
    return vm.systemctl("show", "-P", "StatusText", "podvm-bootstrap.service").stdout.strip()


def answer(vm: PodVM, name: str = "agent-protocol-forwarder") -> str:
    """Which stand-in build the running container holds. (Not over TCP: the VM
    shares this machine's network, where another test's forwarder may listen.)"""
    return vm.podman("exec", name, name, "--version").stdout.strip()


def daemon_journal(vm: PodVM) -> list[tuple[float, str]]:
    lines = []
    for line in vm.journal("podvm-bootstrap.service").splitlines():
        m = re.match(r"\[\s*([0-9.]+)\] \S+ podvm-bootstrap\[\d+\]: (.*)", line)
        if m:
            lines.append((float(m.group(1)), m.group(2)))
    return lines


def first(lines: list[tuple[float, str]], pattern: str) -> tuple[int, float]:
    for index, (ts, text) in enumerate(lines):
        if re.search(pattern, text):
            return index, ts
    raise AssertionError(f"no journal line matches {pattern!r}: {lines[-40:]}")


def bed_components(podvm_image: Any) -> dict:
    """The baked manifest, minus kata-agent's `pid: host`: podman in the test
    bed runs with cgroups disabled (tests/bed/README.md), which refuses a shared PID
    namespace ("containers not creating Cgroups must create a private PID
    namespace"). A test bed limit, not the product's."""
    manifest = baked(podvm_image, "/etc/podvm-bootstrap/components.yaml")
    manifest["components"]["kata-agent"]["container"].pop("pid", None)
    return manifest


# --- the image's own manifest ------------------------------------------------


@pytest.fixture(scope="module")
def vm(podvm_image: Any, bed_registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodVM]:
    with booted(podvm_image, tmp_path_factory.mktemp("rt") / "vm", registry=bed_registry, wait="started",
                userdata=userdata(), files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_yaml(podvm_image),
                                            "/etc/podvm-bootstrap/components.yaml":
                                                yaml.safe_dump(bed_components(podvm_image), sort_keys=False)}) as v:
        yield v


@pytest.fixture()
def ready_vm(vm: PodVM, request: pytest.FixtureRequest) -> PodVM:
    request.node._podvm_vms = [vm]  # journal in the report when it fails
    wait_status(vm, all_ready, 120, "every component ready")
    return vm


def test_components_start_in_dependency_order_and_ready_is_sent(ready_vm: PodVM, podvm_image: Any) -> None:
    vm = ready_vm
    assert vm.systemctl("is-active", "podvm-bootstrap.service", check=False).stdout.strip() == "active"
    st = status(vm)
    assert st["ok"] is True and st["live"] is True and st["daemon"]["ready"] is True
    for name in NAMES:
        c = component(st, name)
        assert c["digest"] == podvm_image.default_digests[name] and c["source"] == "default"
        assert c["health"] == "passing" and c["restarts"] == 0 and c["ready"]["wall"]
    lines = daemon_journal(vm)
    # Every container is set up at once; each process is released (its gate
    # opened, its image verified for that start) once what it needs is ready.
    kata_start = first(lines, r"^kata-agent: starting kata-agent\.service")
    aa_ready = first(lines, r"^attestation-agent: ready probe passed")
    kata_released = first(lines, r"^kata-agent: gate open: released \S*kata-agent \(image [0-9a-f]{12} verified")
    kata_ready = first(lines, r"^kata-agent: ready probe passed")
    apf_released = first(lines, r"^agent-protocol-forwarder: gate open: released")
    assert kata_start < aa_ready < kata_released < kata_ready < apf_released  # (line, monotonic time) pairs
    assert aa_ready[1] <= kata_released[1] <= kata_ready[1] <= apf_released[1]
    assert f"{len(NAMES)}/{len(NAMES)} ready" in daemon_status_text(vm)
    assert answer(vm) == "agent-protocol-forwarder standin v1"
    # state.json on disk, 0644, and the raw user-data kept 0600.
    mode = vm.run(["stat", "-c", "%a", "/run/podvm-bootstrap/state.json", "/run/podvm-bootstrap/user-data"]).stdout
    assert mode.split() == ["644", "600"]
    assert vm.read_file("/run/podvm-bootstrap/user-data").decode() == userdata()
    assert vm.run(["podvm-bootstrap", "verify"]).stdout.count("\nok ") + 1 == len(NAMES)


def test_crashed_component_is_restarted_and_ready_again(ready_vm: PodVM) -> None:
    vm = ready_vm
    before = containers(vm)["agent-protocol-forwarder"]
    vm.podman("kill", "--signal", "USR1", "agent-protocol-forwarder")  # the stand-in exits 70 at once
    st = wait_status(vm, lambda s: all_ready(s) and component(s, "agent-protocol-forwarder")["restarts"] >= 1
                     and containers(vm).get("agent-protocol-forwarder", before) != before,
                     90, "the forwarder restarted and ready")
    assert component(st, "kata-agent")["restarts"] == 0
    assert answer(vm) == "agent-protocol-forwarder standin v1"


def test_killed_component_is_counted_at_once_and_left_to_systemds_restart(ready_vm: PodVM) -> None:
    """SIGKILL of the container: the daemon sees the unit leave active (its
    PropertiesChanged), shows the component restarting, counts the restart
    exactly once, lets systemd's Restart= bring it back (no restart of its
    own on top) and shows it ready again once its probe passes."""
    vm = ready_vm
    restarts = component(status(vm), "agent-protocol-forwarder")["restarts"]
    journal = vm.journal("podvm-bootstrap.service")
    vm.podman("kill", "--signal", "KILL", "agent-protocol-forwarder")
    st = wait_status(vm, lambda s: all_ready(s) and component(s, "agent-protocol-forwarder")["restarts"] > restarts,
                     60, "the forwarder counted and ready again")
    assert component(st, "agent-protocol-forwarder")["restarts"] == restarts + 1
    new_lines = vm.journal("podvm-bootstrap.service")[len(journal):]
    assert re.search(r"agent-protocol-forwarder: unit agent-protocol-forwarder\.service is \w+/[\w-]+: restarting "
                     rf"\({restarts + 1} restarts\)", new_lines), new_lines
    assert "restarting agent-protocol-forwarder.service (restart" not in new_lines  # systemd's restart, not a 2nd
    assert "agent-protocol-forwarder: ready probe passed: ready" in new_lines
    assert answer(vm) == "agent-protocol-forwarder standin v1"


def test_hung_component_is_detected_by_its_probe_and_restarted(ready_vm: PodVM) -> None:
    vm = ready_vm
    before_container = containers(vm)["kata-agent"]
    restarts = component(status(vm), "kata-agent")["restarts"]
    # The stand-in closes its listening socket and stays alive: only the probe can tell.
    vm.podman("exec", "kata-agent", "sh", "-c", "mkdir -p /run/standin && touch /run/standin/kata-agent.unlisten")
    unhealthy = wait_status(vm, lambda s: component(s, "kata-agent")["state"] == "unhealthy", 30,
                            "kata-agent unhealthy")
    assert "health probe failed" in component(unhealthy, "kata-agent")["last_error"]
    assert containers(vm)["kata-agent"] == before_container  # alive, not answering
    wait_status(vm, lambda s: all_ready(s) and component(s, "kata-agent")["restarts"] > restarts,
                90, "kata-agent restarted by the supervisor")
    assert containers(vm)["kata-agent"] != before_container
    assert re.search(r"kata-agent: restarting kata-agent\.service \(restart \d+\): health probe failed 3 times",
                     vm.journal("podvm-bootstrap.service"))


def test_killed_daemon_is_restarted_by_systemd_and_adopts_the_components(ready_vm: PodVM) -> None:
    vm = ready_vm
    before = containers(vm)
    old_pid = daemon_pid(vm)
    vm.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", "podvm-bootstrap.service")
    wait_until(lambda: daemon_pid(vm) not in (0, old_pid) and
               vm.systemctl("is-active", "podvm-bootstrap.service", check=False).stdout.strip() == "active",
               60, "systemd to restart the daemon and the new one to be READY")
    st = wait_status(vm, lambda s: all_ready(s) and s["daemon"]["pid"] == daemon_pid(vm), 60, "the new daemon")
    assert containers(vm) == before  # same container IDs and start times: nothing was restarted
    for name in NAMES:
        assert f"{name}: unit {name}.service unchanged and active: adopting it" in vm.journal("podvm-bootstrap.service")
    assert st["daemon"]["running"] is True


def test_rerun_with_unchanged_plan_rewrites_and_restarts_nothing(ready_vm: PodVM) -> None:
    vm = ready_vm
    before = containers(vm)
    stamp = "stat -c '%n %Y.%Z %i' /run/systemd/system/*.service"
    units_before = vm.run(stamp).stdout
    vm.systemctl("restart", "podvm-bootstrap.service")  # returns once the new daemon is READY
    wait_status(vm, lambda s: all_ready(s) and s["daemon"]["pid"] == daemon_pid(vm), 60, "the re-run daemon")
    assert vm.run(stamp).stdout == units_before
    assert containers(vm) == before


def test_changed_plan_in_the_same_boot_is_refused_and_the_recorded_container_runs_on(
        ready_vm: PodVM, standin_images: Any, podvm_image: Any) -> None:
    """The launch set is recorded once per boot: a daemon re-run with a new
    override in the user-data starts nothing unrecorded. The forwarder's
    recorded container (the default) keeps running untouched, its unit file
    still names the recorded image (systemd's own restart runs that), and the
    refusal is one error line and the override's reason in status. (The
    override running, pulled by digest, in a boot that has it from the
    start: test_e2e_runtime_early.py.)"""
    vm = ready_vm
    before = containers(vm)
    unit = f"/run/systemd/system/{APF}.service"
    stamp = "stat -c '%n %Y.%Z %i' /run/systemd/system/*.service"
    units_before, unit_text = vm.run(stamp).stdout, vm.read_file(unit)
    log_before = vm.read_file("/run/attestation-agent/eventlog")
    v2 = standin_images[(APF, "v2")].digest
    override = f"quay.io/confidential-containers/{APF}@{v2}"
    vm.write_file("/media/cidata/user-data", userdata(override))
    try:
        journal = vm.journal("podvm-bootstrap.service")
        vm.systemctl("restart", "podvm-bootstrap.service")
        st = wait_status(vm, lambda s: all_ready(s) and s["daemon"]["pid"] == daemon_pid(vm), 90,
                         "the re-run daemon ready")
        apf = component(st, APF)
        assert apf["source"] == "default" and apf["image"] == podvm_image.defaults[APF], apf
        assert apf["override"]["requested"] == override and apf["override"]["accepted"] is False
        reason = apf["override"]["reason"]
        assert (f"{override} is not in this boot's measured launch set ({podvm_image.default_digests[APF]}); "
                f"a new launch set needs a reboot; its recorded {podvm_image.defaults[APF]} runs") == reason
        assert apf["digest"] == st["measurement"]["components"][APF] == podvm_image.default_digests[APF]
        assert containers(vm) == before                 # same IDs, same start times: nothing restarted
        assert vm.run(stamp).stdout == units_before and vm.read_file(unit) == unit_text
        assert vm.read_file("/run/attestation-agent/eventlog") == log_before   # never measured again
        assert answer(vm) == f"{APF} standin v1"
        new_lines = vm.journal("podvm-bootstrap.service")[len(journal):]
        assert new_lines.count("a new launch set needs a reboot") == 1, new_lines
        assert f"{APF}: unit {APF}.service unchanged and active: adopting it" in new_lines
        assert "no longer planned" not in new_lines
        text = vm.run(["podvm-bootstrap", "status"], check=False).stdout
        assert f"refused override for {APF} (asked in the user-data): {override}: {reason}" in text
        # systemd's own restart of the unit runs the recorded image, never the refused one.
        vm.systemctl("restart", f"{APF}.service")
        wait_status(vm, lambda s: all_ready(s) and containers(vm).get(APF) not in (None, before[APF]), 60,
                    "the forwarder restarted by systemd and ready")
        assert answer(vm) == f"{APF} standin v1"
        assert vm.read_file(unit) == unit_text
    finally:
        vm.write_file("/media/cidata/user-data", userdata())
        vm.systemctl("restart", "podvm-bootstrap.service")
    wait_status(vm, lambda s: all_ready(s) and s["daemon"]["pid"] == daemon_pid(vm), 90, "the daemon re-run")
    assert component(status(vm), APF)["override"] is None


def test_sigterm_stops_the_daemon_and_leaves_the_components_running(ready_vm: PodVM) -> None:
    vm = ready_vm
    before = containers(vm)
    vm.systemctl("stop", "podvm-bootstrap.service")
    show = vm.systemctl("show", "-p", "ActiveState,Result,ExecMainStatus", "podvm-bootstrap.service").stdout
    assert sorted(show.split()) == ["ActiveState=inactive", "ExecMainStatus=0", "Result=success"]
    assert containers(vm) == before
    st = status(vm)
    assert st["daemon"]["running"] is False and st["daemon"]["phase"] == "stopped"
    assert all(c["active_state"] == "active" for c in st["components"])
    assert "SIGTERM: supervision stops; the components keep running" in vm.journal("podvm-bootstrap.service")
