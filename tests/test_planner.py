"""make_plan, start_order and format_table (pure)."""

import json
from pathlib import Path
from types import MappingProxyType

import pytest

from podvm_bootstrap.errors import ConfigError
from podvm_bootstrap.imageref import parse_reference
from podvm_bootstrap.manifest import load_manifest
from podvm_bootstrap.model import Component, Manifest
from podvm_bootstrap.planner import format_table, make_plan, start_order
from podvm_bootstrap.policy import ComponentPolicy, Policy, load_policy, parse_pattern

CONFIG = Path(__file__).resolve().parent.parent / "image" / "config"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
APF = "agent-protocol-forwarder"
CHAIN = ("attestation-agent", "confidential-data-hub", "kata-agent", APF, "api-server-rest")
LOOPBACK_APF = f"127.0.0.1:5000/podvm/agent-protocol-forwarder@{D1}"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(CONFIG / "components.yaml")


@pytest.fixture(scope="module")
def sample_policy() -> Policy:
    return load_policy(CONFIG / "policy.yaml")


def with_fail(policy: Policy) -> Policy:
    return Policy(mutable_tags=policy.mutable_tags, on_rejected_override="fail", components=policy.components)


def component(name: str, *after: str, image: str = f"quay.io/org/x@{D1}") -> Component:
    return Component(name=name, image=parse_reference(image), unit=f"{name}.service", after=after)


def test_defaults_only(manifest, sample_policy):
    plan = make_plan(manifest, sample_policy, {})
    assert [c.name for c in plan.components] == list(manifest.names)
    for planned, declared in zip(plan.components, manifest.components):
        assert planned.source == "default" and planned.override is None
        assert planned.image == declared.image and planned.digest == declared.image.digest
    assert plan.errors == () and plan.refused is False
    assert plan.start_order == tuple((name,) for name in CHAIN)


def test_accepted_override(manifest, sample_policy):
    plan = make_plan(manifest, sample_policy, {APF: LOOPBACK_APF})
    apf = plan.get(APF)
    assert apf.source == "override"
    assert apf.image == parse_reference(LOOPBACK_APF) and apf.digest == D1
    assert apf.override.accepted and apf.override.requested == LOOPBACK_APF
    assert plan.get("kata-agent").source == "default"
    assert plan.errors == () and not plan.refused


def test_refused_override_uses_default(manifest, sample_policy):
    plan = make_plan(manifest, sample_policy, {"kata-agent": f"quay.io/evil/kata-agent@{D2}"})
    kata = plan.get("kata-agent")
    assert kata.source == "default" and kata.image == manifest.get("kata-agent").image
    assert kata.override is not None and not kata.override.accepted
    assert "allows no override" in kata.override.reason
    assert len(plan.errors) == 1
    assert plan.errors[0].startswith("override for kata-agent refused: ")
    assert kata.override.reason in plan.errors[0]
    assert plan.refused is False


def test_refused_override_with_fail_policy(manifest, sample_policy):
    plan = make_plan(manifest, with_fail(sample_policy), {APF: f"ghcr.io/evil/apf@{D1}"})
    assert plan.refused is True
    assert plan.get(APF).source == "default"
    assert len(plan.errors) == 1 and "ghcr.io/evil/apf is not allowed" in plan.errors[0]


def test_accepted_override_with_fail_policy_is_not_refused(manifest, sample_policy):
    plan = make_plan(manifest, with_fail(sample_policy), {APF: LOOPBACK_APF})
    assert plan.refused is False and plan.errors == ()


def test_unknown_component_override_is_reported(manifest, sample_policy):
    plan = make_plan(manifest, sample_policy, {"trustee-agent": f"quay.io/x/cdh@{D1}", APF: LOOPBACK_APF})
    assert plan.errors == ("override for unknown component 'trustee-agent' ignored",)
    assert plan.get(APF).source == "override"
    assert not plan.refused
    # under "fail", an override that cannot be honoured fails too
    assert make_plan(manifest, with_fail(sample_policy), {"cdh": f"quay.io/x/cdh@{D1}"}).refused


def test_untrusted_override_values_and_names(manifest, sample_policy):
    plan = make_plan(manifest, sample_policy, {
        APF: {"image": "x"},
        "kata-agent": "x" * 50_000,
        "evil\nname": "y",
        7: "z",
    })
    assert plan.get(APF).source == "default" and not plan.get(APF).override.accepted
    assert plan.get("kata-agent").source == "default"
    assert len(plan.errors) == 4
    for line in plan.errors:
        assert "\n" not in line and len(line) < 600
    assert "override for unknown component 'evil\\nname' ignored" in plan.errors
    assert "override for unknown component 7 ignored" in plan.errors


def test_unpinned_default_is_a_config_error(sample_policy):
    m = Manifest((component("a"), component("b", image="quay.io/org/b:latest")), source="/etc/x/components.yaml")
    with pytest.raises(ConfigError) as info:
        make_plan(m, sample_policy, {})
    assert info.value.file == "/etc/x/components.yaml"
    assert info.value.key == "components.b.image"
    assert "must be pinned by digest" in info.value.message
    assert info.value.exit_code == 2


def test_unpinned_default_is_fine_with_mutable_tags():
    m = Manifest((component("b", image="quay.io/org/b:latest"),))
    plan = make_plan(m, Policy(mutable_tags=True), {})
    assert plan.get("b").digest is None and plan.get("b").image.tag == "latest"


def test_start_order_diamond_and_independent_sets():
    m = Manifest((
        component("top"),
        component("left", "top"),
        component("lone"),
        component("right", "top"),
        component("bottom", "right", "left"),
        component("late", "bottom", "lone"),
    ))
    assert start_order(m) == (("top", "lone"), ("left", "right"), ("bottom",), ("late",))
    independent = Manifest((component("c"), component("a"), component("b")))
    assert start_order(independent) == (("c", "a", "b"),)


def test_start_order_defends_against_cycles_and_unknown_after():
    with pytest.raises(ConfigError) as info:
        start_order(Manifest((component("a", "b"), component("b", "a"))))
    assert "cycle a -> b -> a" in str(info.value)
    with pytest.raises(ConfigError) as info:
        start_order(Manifest((component("a", "ghost"),)))
    assert info.value.key == "components.a.after[0]"


def test_plan_json_shape(manifest, sample_policy):
    plan = make_plan(manifest, sample_policy, {APF: LOOPBACK_APF, "kata-agent": "nope"})
    doc = json.loads(json.dumps(plan.to_json()))
    assert set(doc) == {"version", "tee", "components", "start_order", "errors"}
    for entry in doc["components"]:
        assert set(entry) == {"name", "unit", "image", "digest", "source", "variant", "signed_by", "override",
                              "after"}
    by_name = {c["name"]: c for c in doc["components"]}
    assert by_name["attestation-agent"]["override"] is None
    assert by_name[APF]["override"] == {"requested": LOOPBACK_APF, "accepted": True,
                                        "reason": "allowed by 127.0.0.1:5000/podvm/*"}
    assert by_name[APF]["source"] == "override" and by_name[APF]["digest"] == D1
    assert by_name[APF]["after"] == ["kata-agent"]
    assert by_name["kata-agent"]["override"]["accepted"] is False
    assert doc["start_order"] == [[name] for name in CHAIN]
    assert len(doc["errors"]) == 1


def test_format_table(manifest, sample_policy):
    plan = make_plan(manifest, sample_policy, {APF: LOOPBACK_APF, "kata-agent": f"quay.io/evil/k@{D2}",
                                               "ghost": "x"})
    text = format_table(plan)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].split() == ["COMPONENT", "UNIT", "SOURCE", "IMAGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:1 + len(CHAIN)]}
    assert rows[APF] == [APF, f"{APF}.service", "override", LOOPBACK_APF]
    assert rows["kata-agent"][2] == "default"
    assert any(line.startswith("refused override for kata-agent: quay.io/evil/k@") for line in lines)
    assert "error: override for unknown component 'ghost' ignored" in lines
    assert lines[-1] == "start order: " + " -> ".join(CHAIN)
    assert lines[-2] == "tee: none"


def test_format_table_shows_the_fail_verdict(manifest, sample_policy):
    text = format_table(make_plan(manifest, with_fail(sample_policy), {"kata-agent": f"quay.io/evil/k@{D2}"}))
    assert "nothing would start" in text


def test_policy_repositories_matter_for_the_plan(manifest):
    # Same override, two policies: only the one listing the repository accepts it.
    allowing = Policy(components=MappingProxyType({APF: ComponentPolicy((parse_pattern("ghcr.io/example/*"),))}))
    ref = f"ghcr.io/example/team/apf@{D2}"
    assert make_plan(manifest, allowing, {APF: ref}).get(APF).source == "override"
    assert make_plan(manifest, Policy(), {APF: ref}).get(APF).source == "default"
