"""The relying party's whole path against a booted pod VM (tests/bed, the
software TPM as measure.tpm): `plan --json` on the host predicts PCR 8 (the
initdata the user-data carries) and PCR 23 (the launch set) and gives the
reference values; after boot one tpm2_quote over PCRs 8 and 23 with a fresh
nonce, checked with tpm2_checkquote, shows exactly those values; the VM's
/run/attestation-agent/eventlog replays to the quoted PCR 23 under
`measurements`; PCR 8 is sha256(0^32 || the sent initdata's digest fitted to
32 bytes); and the worked Trustee policy, under regorus, allows the claims
of that boot and denies them once the relying party stops listing a
component's digest."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.bed.userdata import cloud_config
from tests.test_e2e_measured import BOOTSTRAP, EVENTLOG, measured_bootstrap, predict_on_host
from tests.test_e2e_runtime import all_ready, wait_status
from tests.test_relying_party import (
    INITDATA_PCR,
    LAUNCH_PCR,
    Policy,
    cli,
    fitted,
    initdata,
    reference_values_from_events,
)

pytestmark = pytest.mark.vm


def test_a_booted_pod_vm_passes_the_relying_party_and_its_policy(boot_pod_vm, podvm_image, swtpm, tmp_path):
    blob, digest = initdata()
    userdata = cloud_config(files={"/run/peerpod/initdata": blob.decode()})
    bootstrap = measured_bootstrap(podvm_image, swtpm.tcti)
    predicted = predict_on_host(podvm_image, tmp_path, bootstrap, userdata)
    assert predicted["initdata"]["digest"].endswith(digest.hex())

    vm = boot_pod_vm(userdata=userdata, files={BOOTSTRAP: bootstrap}, wait="started")
    wait_status(vm, all_ready, 120, "every component ready")

    quoted = swtpm.quoted_pcrs(INITDATA_PCR, LAUNCH_PCR)  # one quote, fresh nonce, tpm2_checkquote
    assert quoted[INITDATA_PCR] == hashlib.sha256(bytes(32) + fitted(digest)).digest()
    assert "sha256:" + quoted[INITDATA_PCR].hex() == predicted["initdata"]["expected"]
    assert "sha256:" + quoted[LAUNCH_PCR].hex() == predicted["expected"]

    log = tmp_path / "cc_eventlog"
    log.write_bytes(vm.read_file(EVENTLOG))
    out = cli("measurements", "--log", str(log), "--json", "--expect-pcr", f"{LAUNCH_PCR}={quoted[LAUNCH_PCR].hex()}")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    tee_claims = {"tpm": {f"pcr{p:02}": v.hex() for p, v in quoted.items()},
                  "init_data": quoted[INITDATA_PCR].hex(), "uefi_event_logs": report["uefi_event_logs"]}
    refs = reference_values_from_events(predicted["events"])
    assert Policy(refs).evaluate(tee_claims) == (True, set())
    first = refs["podvm_launch_components"][0]
    allow, deny = Policy({**refs, f"podvm_launch.{first}": []}).evaluate(tee_claims)
    assert not allow and len(deny) == 1 and next(iter(deny)).startswith(f"component {first} ran sha256:")
