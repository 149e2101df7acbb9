#!/usr/bin/env python3
"""`make demo`: build the pod VM image, boot it with sample user-data that
overrides the forwarder's image with a signed release, with a baked `tee:`
that picks the attestation agent's variant, and show what an operator looks
at, and the measured launch: a software TPM (swtpm) on 127.0.0.1 serves as
the VM's TPM; `plan --json` predicts PCR 8 (the initdata, here the
adaptor's placeholder) and PCR 23 (the launch set) before boot, tpm2_pcrread
reads both afterwards, and the records in the attestation agent's event log
replay to PCR 23. Then ask for an
unsigned image and show it refused (the verified default runs instead).

The components are the test bed's STAND-INS (tests/standins), served under
their real names by a loopback registry; the VM is systemd-nspawn booting the
image's root filesystem (tests/bed/vm.py). Everything stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.bed.cache import cache_dir, cache_lock  # noqa: E402
from tests.bed.cosign import push_unsigned_copy  # noqa: E402
from tests.bed.keys import copy_baked_keys  # noqa: E402
from tests.bed.registry import running_registry  # noqa: E402
from tests.bed.swtpm import running_swtpm  # noqa: E402
from tests.bed.userdata import cloud_config  # noqa: E402
from tests.bed.vm import boot, ensure_image  # noqa: E402
from tests.standins import images as standins  # noqa: E402

COMPONENT_UNITS = ["attestation-agent.service", "confidential-data-hub.service", "kata-agent.service",
                   "agent-protocol-forwarder.service", "api-server-rest.service"]


def banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def show(vm, title: str, command: str, timeout: float = 60) -> str:
    """Run `command` in the VM under a banner and print (and return) its output."""
    banner(title)
    print(f"# {command}")
    out = vm.run(command, check=False, timeout=timeout)
    text = (out.stdout + out.stderr).rstrip()
    print(text, flush=True)
    return text


# No TEE exists in the demo VM; an image meant for Azure SNP confidential VMs
# would bake this (with `tee: auto` it is detected from the vTPM's HCL report).
DEMO_TEE = "az-snp-vtpm"


def baked(image, path: str) -> dict:
    import yaml

    for lower in image.lowerdirs:
        f = Path(lower) / path.lstrip("/")
        if f.exists():
            return yaml.safe_load(f.read_text()) or {}
    raise SystemExit(f"demo: {path} is not in the image")


def reordered(data: bytes) -> bytes:
    """The records file with its first two records swapped (a forged copy)."""
    from podvm_bootstrap.attest.tcg_log import parse_records

    starts = [r.offset for r in parse_records(data).records] + [len(data)]
    first, second = data[starts[0]:starts[1]], data[starts[1]:starts[2]]
    return second + first + data[starts[2]:]


def measured_config(image, workroot: Path, tcti: str) -> tuple[Path, str]:
    """The image's baked files, with the file provider, DEMO_TEE and measure.tpm
    set to the loopback swtpm: a config dir for `plan` on this machine, and the
    bootstrap.yaml placed in the VM."""
    import yaml

    settings = baked(image, "/etc/podvm-bootstrap/bootstrap.yaml")
    settings.setdefault("userdata", {}).update({"provider": "file", "timeout": "20s"})
    settings["measure"] = {"tpm": tcti, "pcr": 23}
    settings["tee"] = DEMO_TEE
    bootstrap = yaml.safe_dump(settings, sort_keys=False)
    config = workroot / "config"
    config.mkdir()
    for name in ("components.yaml", "policy.yaml"):
        (config / name).write_text(yaml.safe_dump(baked(image, f"/etc/podvm-bootstrap/{name}"), sort_keys=False))
    (config / "bootstrap.yaml").write_text(bootstrap)
    copy_baked_keys(image, workroot / "plan-root")  # the policy's key files are under plan's --root
    return config, bootstrap


def predict(config: Path, workroot: Path, userdata: str) -> dict:
    """`podvm-bootstrap plan --json` on this machine, before boot: the launch
    set's event log and the PCR 23 value it gives from zero."""
    (workroot / "user-data").write_text(userdata)
    (workroot / "plan-root").mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(workroot / "plan-root"),
                          "--config-dir", str(config), "plan", "--json", "--user-data", str(workroot / "user-data")],
                         cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise SystemExit(f"demo: plan failed: {out.stderr.strip()}")
    return json.loads(out.stdout)["measurement"]


def shut_down(vm) -> None:
    banner("shutting the VM down")
    vm.run(["systemctl", "poweroff", "--no-block"], check=False)
    try:
        vm.nspawn.popen.wait(60)
        print("the VM powered off")
    except subprocess.TimeoutExpired:
        print("the VM did not power off within 60s; killing it")


def main() -> int:
    started = time.monotonic()
    banner("building the pod VM image (cached after the first time)")
    image = ensure_image()
    print(f"layers: {' over '.join(image.lowerdirs)}")
    for name, ref in image.defaults.items():
        print(f"default {name}: {ref}")

    cache = cache_dir()
    with cache_lock(cache):
        built = standins.build_all(cache / f"standins-{standins.inputs_key()}")
    v2 = built[("agent-protocol-forwarder", "v2")]
    override = f"quay.io/{v2.repository}@{v2.digest}"
    userdata = cloud_config(images={"agent-protocol-forwarder": override})

    workroot = Path(tempfile.mkdtemp(prefix="podvm-demo-", dir="/var/tmp"))
    try:
        with running_registry() as registry, running_swtpm(workroot / "swtpm") as tpm:
            for image_ in built.values():
                if image_.variant != "padded":
                    registry.push_standin(image_)
            banner("sample user-data (untrusted; the forwarder's image overridden by digest, a signed release)")
            print(userdata.rstrip())
            config, bootstrap = measured_config(image, workroot, tpm.tcti)
            banner("measured launch, before boot: `podvm-bootstrap plan --json` predicts PCR 8 and PCR 23")
            predicted = predict(config, workroot, userdata)
            print(f"TPM: swtpm on 127.0.0.1 (measure.tpm: {tpm.tcti}); PCR 23 now {tpm.pcrread(23).hex()}")
            print("predicted launch records (their events; each a TCG2 EV_EVENT_TAG record on PCR 23):\n  "
                  + "\n  ".join(predicted["events"]))
            print(f"predicted PCR 23: {predicted['expected']}")
            initdata = predicted["initdata"]
            print(f"predicted PCR {initdata['pcr']}: {initdata['expected']} (the initdata {initdata['digest']} "
                  "bound: the user-data carries none, so the cloud-api-adaptor's placeholder)")
            banner("booting the pod VM (systemd-nspawn)")
            banner(f"baked for this demo: tee: {DEMO_TEE} (bootstrap.yaml; user-data cannot choose it)")
            vm = boot(image, workroot / "vm", name="podvm-demo", userdata=userdata, registry=registry,
                      wait="started", files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap})
            try:
                vm.wait_until("systemctl is-system-running | grep -qE '^(running|degraded)$'", 120,
                              "podvm-bootstrap to report READY (the boot to finish)")
                print(f"booted; podvm-bootstrap sent READY {time.monotonic() - started:.1f}s after the demo started"
                      " (READY = every essential component ready)")
                try:
                    vm.wait_until("podvm-bootstrap status >/dev/null", 60, "every component to be ready")
                except Exception as exc:  # show the state anyway: that is what an operator needs then
                    print(f"not every component became ready: {exc}")
                show(vm, "podvm-bootstrap status", "podvm-bootstrap status")
                show(vm, "the TEE and the variant chosen (journal, plan)",
                     "journalctl --no-pager -o cat -u podvm-bootstrap"
                     " | grep -E '^(<[0-9]>)?(TEE: |[a-z-]+: [a-z-]+ variant)'; podvm-bootstrap plan 2>/dev/null")
                show(vm, "which attestation agent build runs (its stand-in says so)",
                     "podman exec attestation-agent attestation-agent --version")
                show(vm, "what the adaptor side reads: daemon version and manifest digest",
                     "podvm-bootstrap --version")
                show(vm, "the components' units", "systemctl list-units --no-pager --all " + " ".join(COMPONENT_UNITS))
                show(vm, "start order (journal of podvm-bootstrap, with timestamps)",
                     "journalctl --no-pager -o short-precise -u podvm-bootstrap "
                     "| grep -E 'starting|ready probe passed|READY|override|pull|verified'")
                show(vm, "what answers on the forwarder's port (from inside its container)",
                     "podman exec agent-protocol-forwarder standin probe tcp 127.0.0.1:15150")
                show(vm, "podvm-bootstrap verify (digests and signatures, in local storage)",
                     "podvm-bootstrap verify")
                banner("measured launch: PCR 8 and PCR 23 read on the host with tpm2_pcrread")
                pcr = tpm.pcrread(23).hex()
                print(f"PCR 23 = sha256:{pcr} ({'as' if 'sha256:' + pcr == predicted['expected'] else 'NOT as'}"
                      " plan --json predicted before boot: the launch set)")
                pcr8 = tpm.pcrread(initdata["pcr"]).hex()
                print(f"PCR {initdata['pcr']} = sha256:{pcr8} "
                      f"({'as' if 'sha256:' + pcr8 == initdata['expected'] else 'NOT as'} plan --json predicted "
                      "before boot: the initdata)")
                show(vm, "the records in the attestation agent's event log, replayed against the TPM's PCR 23 "
                         "(what a verifier runs)",
                     f"podvm-bootstrap measurements --expect-pcr {pcr}; echo \"exit $?\"")
                vm.write_file("/tmp/reordered", reordered(vm.read_file("/run/attestation-agent/eventlog")))
                show(vm, "a reordered copy (records 1 and 2 swapped) does not replay to it",
                     f"podvm-bootstrap measurements --log /tmp/reordered --expect-pcr {pcr}"
                     " > /tmp/out 2>&1; rc=$?; tail -2 /tmp/out; echo \"exit $rc\"")

                shut_down(vm)
            finally:
                vm.destroy()

            # A new launch set needs a new boot (the launch is measured once per
            # boot), so the unsigned request is shown at the next boot: a fresh VM
            # and a fresh TPM, as a reboot gives.
            banner("next boot: an UNSIGNED image requested for the forwarder (same content, no signature)")
            unsigned = push_unsigned_copy(registry.host, v2.repository, v2.digest, "unsigned", "demo: unsigned")
            unsigned_ref = f"quay.io/{v2.repository}@{unsigned}"
            print(f"user-data now asks for {unsigned_ref}")
            with running_swtpm(workroot / "swtpm-next") as next_tpm:
                (workroot / "next").mkdir()
                _, next_bootstrap = measured_config(image, workroot / "next", next_tpm.tcti)
                vm = boot(image, workroot / "vm-next", name="podvm-demo",
                          userdata=cloud_config(images={"agent-protocol-forwarder": unsigned_ref}),
                          registry=registry, wait="started",
                          files={"/etc/podvm-bootstrap/bootstrap.yaml": next_bootstrap})
                try:
                    try:  # status exits 0 once the essential kata-agent is ready: wait for the forwarder's row
                        vm.wait_until("podvm-bootstrap status | grep -qE '^agent-protocol-forwarder +[^ ]+ +ready '",
                                      90, "the forwarder to be ready")
                    except Exception as exc:
                        print(f"not every component became ready: {exc}")
                    show(vm, "podvm-bootstrap status (the forwarder runs its signed default)",
                         "podvm-bootstrap status")
                    show(vm, "why (journal of podvm-bootstrap)",
                         "journalctl --no-pager -o cat -u podvm-bootstrap | grep -E 'unsigned|signature' | tail -n 3")
                    shut_down(vm)
                finally:
                    vm.destroy()
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
