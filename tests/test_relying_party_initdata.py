"""The worked relying-party check of overrides the pod's owner asks for in
the initdata: Trustee's engine (regorus, with Trustee's
query_reference_value extension) evaluates examples/trustee-policy.rego and
its addition examples/trustee-policy-initdata.rego over the claims Trustee
would hand them for one boot:

- `uefi_event_logs`: the launch records `plan --json` predicts for the
  user-data the relying party sent (the records the daemon writes at boot),
  read into Trustee's claims by podvm_bootstrap.attest.trustee_claims;
- `init_data_claims`: the initdata the relying party sent, as Trustee's
  attestation service derives them (`trustee_init_data_claims`);
- reference values from the same `plan --json`, the override's digest
  listed: only the initdata rule decides.

The policy accepts an override only when the launch record says
`requested_by: initdata` and the checked initdata asks for that component at
that digest."""

from __future__ import annotations

import base64
import gzip
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import regorus

from podvm_bootstrap.attest.tcg_log import parse_log
from podvm_bootstrap.attest.trustee_claims import claims
from tests.test_relying_party import planned, reference_values

REPO = Path(__file__).resolve().parent.parent
POLICIES = (REPO / "examples" / "trustee-policy.rego", REPO / "examples" / "trustee-policy-initdata.rego")
APF = "agent-protocol-forwarder"
REQUESTED = f"127.0.0.1:5000/podvm/{APF}@sha256:" + "5" * 64
AA_TOML = "[token_configs.kbs]\nurl = 'http://127.0.0.1:8080'\n"


def initdata_toml(requests: dict[str, str] | None) -> str:
    toml = f'algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n"aa.toml" = \'\'\'\n{AA_TOML}\'\'\'\n'
    if requests is not None:
        entry = "images:\n" + "".join(f"  {name}: {ref}\n" for name, ref in requests.items())
        toml += f"\"podvm-bootstrap.yaml\" = '''\n{entry}'''\n"
    return toml


def userdata(initdata: str | None, images: dict[str, str] | None = None) -> str:
    """The user-data the adaptor writes: the initdata as /run/peerpod/initdata
    (base64 of gzip), and (only with a changed adaptor) podvm_bootstrap.images."""
    text = "#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: '{}'\n"
    if initdata is not None:
        blob = base64.b64encode(gzip.compress(initdata.encode())).decode()
        text += f"  - path: /run/peerpod/initdata\n    content: {blob}\n"
    if images:
        text += "podvm_bootstrap:\n  images:\n" + "".join(f"    {n}: {r}\n" for n, r in images.items())
    return text


def trustee_init_data_claims(toml_text: str) -> dict[str, Any]:
    """Trustee's attestation service (attestation-service/src/lib.rs,
    parse_init_data, commit 78962cd416dcc8a32f9377e0066a28fe21420f69): the
    initdata's [data] table as JSON, its aa.toml and cdh.toml parsed from
    TOML when they parse (a policy.rego with policy_data would become
    agent_policy_claims; none here). Other entries stay strings."""
    data: dict[str, Any] = dict(tomllib.loads(toml_text)["data"])
    for key in ("cdh.toml", "aa.toml"):
        if isinstance(data.get(key), str):
            try:
                data[key] = tomllib.loads(data[key])
            except tomllib.TOMLDecodeError:
                pass
    assert "policy.rego" not in data
    return data


def evaluate(plan: dict[str, Any], init_data_claims: dict[str, Any] | None,
             tee: str = "az-snp-vtpm") -> tuple[bool, set[str]]:
    """The policies over one boot's claims: the launch records plan --json
    predicts (what the daemon writes), the initdata claims when a checked
    initdata came with the evidence."""
    log = b"".join(bytes.fromhex(record) for record in plan["measurement"]["records"])
    refs = reference_values(plan)
    engine = regorus.Engine()
    for policy in POLICIES:
        engine.add_policy_from_file(str(policy))
    engine.add_extension("query_reference_value", 1, lambda name: refs.get(name))
    document: dict[str, Any] = {tee: {"uefi_event_logs": claims(parse_log(log))["uefi_event_logs"]}}
    if init_data_claims is not None:
        document["init_data_claims"] = init_data_claims
    engine.set_input_json(json.dumps(document))
    return engine.eval_rule("data.policy.allow"), set(engine.eval_rule("data.policy.deny"))


def launch_record(plan: dict[str, Any], name: str) -> dict[str, Any]:
    contents = [json.loads(e.split(" ", 2)[2]) for e in plan["measurement"]["events"] if " LaunchComponent " in e]
    return next(c for c in contents if c["component"] == name)


@pytest.mark.parametrize("tee", ["az-snp-vtpm", "tdx"])
def test_an_override_the_initdata_asked_for_is_accepted(tmp_path, tee):
    toml = initdata_toml({APF: REQUESTED})
    plan = planned(tmp_path, userdata(toml))
    assert launch_record(plan, APF) == {"component": APF, "digest": REQUESTED.split("@")[1], "image": REQUESTED,
                                        "source": "override", "requested_by": "initdata"}
    assert evaluate(plan, trustee_init_data_claims(toml), tee) == (True, set())


def test_the_same_image_asked_for_in_the_user_data_is_denied(tmp_path):
    # Even with an initdata that asks for it: the record says the host asked.
    toml = initdata_toml({APF: REQUESTED})
    plan = planned(tmp_path, userdata(initdata_toml(None), images={APF: REQUESTED}))
    assert launch_record(plan, APF)["requested_by"] == "user-data"
    allow, deny = evaluate(plan, trustee_init_data_claims(toml))
    assert not allow
    assert deny == {f"component {APF} ran an override the user-data asked for, not the pod's initdata"}


@pytest.mark.parametrize("checked", ["another initdata", "no initdata claims", "another digest"])
def test_an_initdata_override_the_checked_initdata_does_not_ask_for_is_denied(tmp_path, checked):
    plan = planned(tmp_path, userdata(initdata_toml({APF: REQUESTED})))
    assert launch_record(plan, APF)["requested_by"] == "initdata"
    init_data_claims = {
        "another initdata": trustee_init_data_claims(initdata_toml(None)),
        "no initdata claims": None,
        "another digest": trustee_init_data_claims(initdata_toml({APF: REQUESTED.replace("5" * 64, "6" * 64)})),
    }[checked]
    allow, deny = evaluate(plan, init_data_claims)
    assert not allow
    assert deny == {f"component {APF} ran override {REQUESTED.split('@')[1]}, which the checked initdata does "
                    "not ask for"}


def test_a_launch_without_overrides_is_not_denied_by_the_addition(tmp_path):
    plan = planned(tmp_path, userdata(initdata_toml(None)))
    assert all(c["source"] == "default" for c in plan["components"])
    assert evaluate(plan, trustee_init_data_claims(initdata_toml(None))) == (True, set())
    assert evaluate(plan, None) == (True, set())


def test_an_unusable_request_entry_asks_for_nothing(tmp_path):
    plan = planned(tmp_path, userdata(initdata_toml({APF: REQUESTED})))
    for text in ("images: [\n", "- a\n", "images: 5\n"):
        allow, deny = evaluate(plan, {"podvm-bootstrap.yaml": text})
        assert not allow and len(deny) == 1, (text, deny)


def test_the_docs_show_the_addition_as_it_is():
    docs = (REPO / "docs/measured-launch.md").read_text()
    blocks = [b.split("```", 1)[0] for b in docs.split("```rego\n")[1:]]
    assert POLICIES[1].read_text() in blocks
