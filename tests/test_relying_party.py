"""The relying party's whole path, with real parts: a software TPM quoted
with tpm2-tools (EK, AK, tpm2_quote over PCRs 8 and 23 with a fresh nonce,
tpm2_checkquote), the event log replayed to the quoted PCR 23 by
`podvm-bootstrap measurements`, PCR 8 recomputed from the initdata that was
sent, and the worked Trustee policy (examples/trustee-policy.rego) evaluated
by regorus, Trustee's own Rego engine, over the claims built from that log,
with reference values from `plan --json`.

The pod VM's side is played here by the test: it writes the records with
podvm_bootstrap.attest.tcg_log and extends the software TPM with tpm2_pcrextend,
as the daemon does at boot (see `pod_vm_side`); the same path with a booted
pod VM is tests/test_e2e_relying_party.py."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import regorus

from podvm_bootstrap.attest.jcs import canonical_json
from podvm_bootstrap.attest.tcg_log import DOMAIN, encode_record, event_digest, parse_log, split_aael
from podvm_bootstrap.attest.trustee_claims import claims
from podvm_bootstrap.userdata.initdata import parse_initdata
from tests.bed.proc import BedError
from tests.plan_command import CONFIG, USERDATA_NO_OVERRIDES, USERDATA_OVERRIDES, run_plan
from tests.test_trustee_claims import FIXTURES

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "examples" / "trustee-policy.rego"
LAUNCH_PCR, INITDATA_PCR = 23, 8
INITDATA_TOML = b'''algorithm = "sha384"
version = "0.1.0"

[data]
"aa.toml" = """
[token_configs.kbs]
url = "http://127.0.0.1:8080"
"""
'''


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def planned(tmp_path: Path, userdata: str) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = run_plan(tmp_path, CONFIG, userdata, "--json")
    assert result.returncode == 0, result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def reference_values(plan: dict[str, Any]) -> dict[str, Any]:
    """What a relying party registers in Trustee's RVPS from `plan --json`."""
    refs: dict[str, Any] = {"podvm_launch_components": [c["name"] for c in plan["components"]]}
    refs.update({f"podvm_launch.{c['name']}": [c["digest"]] for c in plan["components"]})
    return refs


def reference_values_from_events(events: list[str]) -> dict[str, Any]:
    """The same reference values from `plan --json`'s measurement.events (the launch's texts)."""
    launched = [json.loads(split_aael(text)[2]) for text in events if split_aael(text)[1] == "LaunchComponent"]
    refs: dict[str, Any] = {"podvm_launch_components": [c["component"] for c in launched]}
    refs.update({f"podvm_launch.{c['component']}": [c["digest"]] for c in launched})
    return refs


def launch_texts(plan: dict[str, Any], *, complete: bool = True) -> list[str]:
    """The launch records' texts for a plan: start order, by name within a layer."""
    by_name = {c["name"]: c for c in plan["components"]}
    texts = []
    for layer in plan["start_order"]:
        for name in sorted(layer):
            c = by_name[name]
            content = {"component": name, "digest": c["digest"], "image": c["image"], "source": c["source"]}
            if c["source"] == "override":
                content["requested_by"] = "user-data"
            texts.append(f"{DOMAIN} LaunchComponent {canonical_json(content)}")
    if complete:
        texts.append(f'{DOMAIN} LaunchComplete {{"components":{len(texts)}}}')
    return texts


def fitted(digest: bytes) -> bytes:
    """An initdata digest as the 32 bytes extended into PCR 8 (sha384/512 cut, as `head -c64` of its hex)."""
    return digest[:32].ljust(32, b"\0")


def pod_vm_side(swtpm: Any, tmp_path: Path, texts: list[str], initdata_digest: bytes) -> Path:
    """What the daemon does at boot: PCR 8 bound to the initdata, then each
    record appended to the log and its digest extended into PCR 23. The
    booted pod VM does the same in tests/test_e2e_relying_party.py; this
    quick form keeps the relying party's side tested without a VM."""
    swtpm.extend(INITDATA_PCR, fitted(initdata_digest).hex())
    log = tmp_path / "eventlog"
    with log.open("wb") as f:
        for text in texts:
            f.write(encode_record(LAUNCH_PCR, text))
            swtpm.extend(LAUNCH_PCR, event_digest(text).hex())
    return log


class Policy:
    """The worked policy under regorus, with Trustee's query_reference_value extension."""

    def __init__(self, refs: dict[str, Any]) -> None:
        self.engine = regorus.Engine()
        self.engine.add_policy_from_file(str(POLICY))
        self.engine.add_extension("query_reference_value", 1, lambda name: refs.get(name))

    def evaluate(self, tee_claims: dict[str, Any], tee: str = "az-snp-vtpm") -> tuple[bool, set[str]]:
        self.engine.set_input_json(json.dumps({tee: tee_claims}))
        return self.engine.eval_rule("data.policy.allow"), set(self.engine.eval_rule("data.policy.deny"))


def initdata() -> tuple[bytes, bytes]:
    """The initdata the relying party sent (as the adaptor carries it) and its digest."""
    blob = base64.b64encode(gzip.compress(INITDATA_TOML))
    parsed = parse_initdata(blob, 64 * 1024)
    assert parsed.algorithm == "sha384"
    return blob, bytes.fromhex(parsed.digest_hex)


def test_quote_replay_initdata_and_policy_from_one_boot(swtpm, tmp_path):
    plan = planned(tmp_path, USERDATA_NO_OVERRIDES)
    _, digest = initdata()
    log = pod_vm_side(swtpm, tmp_path, launch_texts(plan), digest)

    # The relying party: a quote over PCRs 8 and 23 with a fresh nonce, checked.
    quoted = swtpm.quoted_pcrs(INITDATA_PCR, LAUNCH_PCR)
    # PCR 8 recomputed from the initdata it sent: sha256(0^32 || digest fitted to 32 bytes).
    assert quoted[INITDATA_PCR] == hashlib.sha256(bytes(32) + fitted(digest)).digest()
    # The log replayed to the quoted PCR 23, and the launch complete.
    out = cli("measurements", "--log", str(log), "--json", "--expect-pcr", f"{LAUNCH_PCR}={quoted[LAUNCH_PCR].hex()}")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["launch"]["complete"]
    assert [c["component"] for c in report["launch"]["components"]] == [n for layer in plan["start_order"]
                                                                        for n in sorted(layer)]

    # The claims as the verifier hands them to the policy, next to the quoted PCRs.
    tee_claims = {"tpm": {f"pcr{p:02}": v.hex() for p, v in quoted.items()},
                  "init_data": quoted[INITDATA_PCR].hex(), "uefi_event_logs": report["uefi_event_logs"]}
    assert reference_values(plan) == reference_values_from_events(plan["measurement"]["events"])
    allow, deny = Policy(reference_values(plan)).evaluate(tee_claims)
    assert (allow, deny) == (True, set())
    # The same claims from the tdx verifier's claim path.
    assert Policy(reference_values(plan)).evaluate(tee_claims, tee="tdx") == (True, set())


def test_a_log_that_is_not_what_was_extended_fails_the_replay(swtpm, tmp_path):
    plan = planned(tmp_path, USERDATA_NO_OVERRIDES)
    texts = launch_texts(plan)
    log = pod_vm_side(swtpm, tmp_path, texts, initdata()[1])
    quoted = swtpm.quoted_pcrs(LAUNCH_PCR)[LAUNCH_PCR]
    # Swap two components' records: same events, another order, another register value.
    swapped = tmp_path / "swapped"
    swapped.write_bytes(b"".join(encode_record(LAUNCH_PCR, t) for t in [texts[1], texts[0], *texts[2:]]))
    out = cli("measurements", "--log", str(swapped), "--expect-pcr", quoted.hex())
    assert out.returncode == 1 and "register 23: the replay gives" in out.stderr
    # A record the TPM never saw, appended.
    log.write_bytes(log.read_bytes() + encode_record(LAUNCH_PCR, f"{DOMAIN} Unmeasured x"))
    out = cli("measurements", "--log", str(log), "--expect-pcr", quoted.hex())
    assert out.returncode == 2 and "unknown operation 'Unmeasured'" in out.stderr


# --- the policy's refusals, over claims built from the records -------------

def policy_over(refs: dict[str, Any], data: bytes) -> tuple[bool, set[str]]:
    return Policy(refs).evaluate({"uefi_event_logs": claims(parse_log(data))["uefi_event_logs"]})


def records(texts: list[str]) -> bytes:
    return b"".join(encode_record(LAUNCH_PCR, t) for t in texts)


def test_the_policy_denies_an_override_the_reference_values_do_not_list(tmp_path):
    expected = planned(tmp_path / "a", USERDATA_NO_OVERRIDES)
    overridden = planned(tmp_path / "b", USERDATA_OVERRIDES)
    overrides = [c for c in overridden["components"] if c["source"] == "override"]
    assert overrides, "the override user-data gives at least one accepted override"
    allow, deny = policy_over(reference_values(expected), records(launch_texts(overridden)))
    assert not allow
    assert {f"component {c['name']} ran {c['digest']}, a digest the reference values do not list"
            for c in overrides} <= deny
    # Listed by the relying party, the same override is allowed.
    refs = reference_values(expected)
    for c in overrides:
        refs[f"podvm_launch.{c['name']}"].append(c["digest"])
    assert policy_over(refs, records(launch_texts(overridden))) == (True, set())


def test_the_policy_denies_a_record_whose_digest_does_not_match_its_event(tmp_path):
    plan = planned(tmp_path, USERDATA_NO_OVERRIDES)
    texts = launch_texts(plan)
    data = bytearray(records(texts))
    # Rewrite the first record's event to another digest of the same length, keeping its record digest.
    first = encode_record(LAUNCH_PCR, texts[0])
    other = texts[0].replace(plan["components"][0]["digest"][-8:], "deadbeef")
    assert len(other) == len(texts[0])
    data[:len(first)] = first[:50] + encode_record(LAUNCH_PCR, other)[50:]
    allow, deny = policy_over(reference_values(plan), bytes(data))
    assert not allow and "a launch record's digest does not match its event" in deny


def test_the_policy_denies_a_log_without_launch_complete(tmp_path):
    plan = planned(tmp_path, USERDATA_NO_OVERRIDES)
    allow, deny = policy_over(reference_values(plan), records(launch_texts(plan, complete=False)))
    assert not allow and deny == {"the launch is incomplete: no single LaunchComplete closing it"}


def test_the_policy_denies_a_missing_or_repeated_component_and_no_reference_set(tmp_path):
    plan = planned(tmp_path, USERDATA_NO_OVERRIDES)
    texts = launch_texts(plan, complete=False)
    missing = texts[1:] + [f'{DOMAIN} LaunchComplete {{"components":{len(texts) - 1}}}']
    name = plan["start_order"][0][0]
    assert policy_over(reference_values(plan), records(missing))[1] == \
        {f"component {name} of the reference launch set did not run"}
    twice = texts + texts[:1] + [f'{DOMAIN} LaunchComplete {{"components":{len(texts) + 1}}}']
    assert policy_over(reference_values(plan), records(twice))[1] == {"a component was launched twice"}
    assert "no reference launch set (podvm_launch_components)" in policy_over({}, records(launch_texts(plan)))[1]


def test_records_on_another_register_or_of_another_domain_are_not_the_launch(tmp_path):
    plan = planned(tmp_path, USERDATA_NO_OVERRIDES)
    texts = launch_texts(plan)
    elsewhere = b"".join(encode_record(9, t) for t in texts)
    assert policy_over(reference_values(plan), elsewhere) == (False, {
        "the launch is incomplete: no single LaunchComplete closing it",
        *{f"component {n} of the reference launch set did not run" for n in reference_values(plan)[
            "podvm_launch_components"]}})
    agent = encode_record(LAUNCH_PCR, "github.com/confidential-containers/guest-components X {}")
    assert policy_over(reference_values(plan), agent + records(texts)) == (True, set())


def test_the_policy_reads_trustees_own_tdx_claims():
    """Trustee's claims of a real TDX log with AAEL records (none of ours): read without error, denied."""
    doc = json.loads((FIXTURES / "CCEL_AAEL_alibabacloud_out.json").read_text())
    allow, deny = Policy({"podvm_launch_components": ["attestation-agent"]}).evaluate(doc, tee="tdx")
    assert not allow and deny == {"the launch is incomplete: no single LaunchComplete closing it",
                                  "component attestation-agent of the reference launch set did not run"}


def test_a_tampered_quote_message_fails_checkquote(swtpm, tmp_path):
    """The quote the relying party checks is really checked: a flipped byte fails tpm2_checkquote."""
    swtpm.quoted_pcrs(LAUNCH_PCR)
    message = swtpm.workdir / "quote.msg"
    data = bytearray(message.read_bytes())
    data[-1] ^= 1
    message.write_bytes(bytes(data))
    with pytest.raises(BedError, match="tpm2_checkquote"):
        swtpm.tool("tpm2_checkquote", "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig",
                   "-f", "quote.pcrs", "-g", "sha256")


def test_the_docs_show_the_policy_file_as_it_is():
    docs = (REPO / "docs/measured-launch.md").read_text()
    blocks = [b.split("```", 1)[0] for b in docs.split("```rego\n")[1:]]
    assert POLICY.read_text() in blocks
    assert "input.aael" not in docs
