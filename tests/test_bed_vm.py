"""The pod VM image booted under real systemd (systemd-nspawn), one VM for the
module (pod_vm): what the image bakes (unit, configs, prefetched images)."""

from __future__ import annotations

import json

import pytest
import yaml

pytestmark = pytest.mark.vm


def test_boots_to_running(pod_vm):
    state = pod_vm.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert pod_vm.read_file("/etc/hostname") == b"podvm\n"


def test_daemon_unit_is_installed_enabled_and_verifies(pod_vm):
    assert pod_vm.systemctl("is-enabled", "podvm-bootstrap.service").stdout.strip() == "enabled"
    show = pod_vm.systemctl("show", "-p", "Type,NotifyAccess,ExecStart,WatchdogUSec,Restart",
                            "podvm-bootstrap.service").stdout
    assert "Type=notify" in show and "NotifyAccess=main" in show and "Restart=on-failure" in show
    assert "WatchdogUSec=30s" in show
    assert "path=/usr/bin/podvm-bootstrap" in show  # from the Debian package (make deb)
    pod_vm.run(["test", "-x", "/usr/bin/podvm-bootstrap"])
    verify = pod_vm.run(["systemd-analyze", "verify", "/usr/lib/systemd/system/podvm-bootstrap.service"],
                        check=False)
    assert verify.returncode == 0, verify.stderr


def test_installed_cli_reads_the_baked_configuration(pod_vm):
    out = pod_vm.run(["podvm-bootstrap", "plan", "--json"], check=False)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert [c["name"] for c in plan["components"]] == ["attestation-agent", "confidential-data-hub", "kata-agent",
                                                       "agent-protocol-forwarder", "api-server-rest"]
    assert {c["name"]: c["digest"] for c in plan["components"]} == pod_vm.image.default_digests


def test_podman_socket_answers(pod_vm):
    assert pod_vm.systemctl("is-enabled", "podman.socket").stdout.strip() == "enabled"
    ping = pod_vm.run(["python3", "-c", "import podman; c = podman.PodmanClient(base_url="
                       "'unix:///run/podman/podman.sock'); print(c.ping(), c.version()['Version'])"], timeout=60)
    assert ping.stdout.split()[0] == "True"


def test_prefetched_images_are_in_storage_with_the_baked_digests(pod_vm):
    baked = yaml.safe_load(pod_vm.read_file("/etc/podvm-bootstrap/components.yaml"))
    images = {name: spec["image"] for name, spec in baked["components"].items()}
    assert images == pod_vm.image.defaults
    for ref in images.values():
        inspect = json.loads(pod_vm.podman("image", "inspect", ref).stdout)[0]
        assert ref.split("@")[1] in inspect["RepoDigests"][0], inspect["RepoDigests"]
    assert pod_vm.podman("info", "--format", "{{.Store.GraphDriverName}}").stdout.strip() == "vfs"


def test_a_stand_in_started_by_plain_podman_answers(pod_vm):
    ref = pod_vm.image.defaults["kata-agent"]
    pod_vm.run(["mkdir", "-p", "/run/kata-containers"])
    pod_vm.podman("run", "-d", "--rm", "--replace", "--name", "bed-kata", "--network", "host",
                  "-v", "/run/kata-containers:/run/kata-containers", ref)
    try:
        pod_vm.wait_until(["test", "-S", "/run/kata-containers/agent.sock"], 30)
        answer = pod_vm.podman("exec", "bed-kata", "standin", "probe", "unix", "/run/kata-containers/agent.sock")
        assert answer.stdout == "kata-agent standin v1\n"
    finally:
        pod_vm.podman("rm", "-f", "-t", "0", "bed-kata", check=False)


def test_override_image_is_pulled_through_the_loopback_mirror(pod_vm, standin_images):
    v2 = standin_images[("agent-protocol-forwarder", "v2")]
    ref = f"quay.io/{v2.repository}@{v2.digest}"
    assert pod_vm.podman("image", "exists", ref, check=False).returncode == 1
    pod_vm.podman("pull", "-q", ref)
    pod_vm.podman("image", "exists", ref)


def test_components_come_up_from_the_baked_defaults(pod_vm):
    """The daemon (once it exists) starts the baked defaults; the forwarder
    stand-in answers on the machine's loopback (the VM shares its network)."""
    for unit in ("attestation-agent.service", "kata-agent.service", "agent-protocol-forwarder.service"):
        assert pod_vm.unit_state(unit) == "active", pod_vm.journal(unit)
    answer = pod_vm.run(["podman", "exec", "agent-protocol-forwarder", "standin", "probe", "tcp", "127.0.0.1:15150"])
    assert answer.stdout == "agent-protocol-forwarder standin v1\n"
