"""make_plan and start_order (pure), on inputs the command line cannot give
them: override names that are not strings, and a manifest that skipped the
loader's checks. The plans of real configurations (and the plan table) are
the cases of tests/cases/."""

from pathlib import Path
from types import MappingProxyType

import pytest

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.model import Component, Manifest
from podvm_bootstrap.config.planner import make_plan, start_order
from podvm_bootstrap.config.policy import ComponentPolicy, Policy, load_policy, parse_pattern
from podvm_bootstrap.images.imageref import parse_reference

CONFIG = Path(__file__).resolve().parent.parent / "image" / "config"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
APF = "agent-protocol-forwarder"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(CONFIG / "components.yaml")


@pytest.fixture(scope="module")
def sample_policy() -> Policy:
    return load_policy(CONFIG / "policy.yaml")


def component(name: str, *after: str, image: str = f"quay.io/org/x@{D1}") -> Component:
    return Component(name=name, image=parse_reference(image), unit=f"{name}.service", after=after)


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
    assert "override for unknown component 'evil\\nname' ignored (in the user-data)" in plan.errors
    assert "override for unknown component 7 ignored (in the user-data)" in plan.errors


def override_policy(override_from: str = "any") -> Policy:
    rules = ComponentPolicy(repositories=(parse_pattern("quay.io/org/*"),), override_from=override_from)
    return Policy(components=MappingProxyType({APF: rules}))


def test_the_initdata_request_wins_over_the_user_data_one(manifest):
    plan = make_plan(manifest, override_policy(), {APF: f"quay.io/org/user@{D1}"},
                     initdata_overrides={APF: f"quay.io/org/owner@{D2}"})
    apf = plan.get(APF)
    assert apf.source == "override" and str(apf.image) == f"quay.io/org/owner@{D2}"
    assert apf.override.requested_by == "initdata" and apf.override.accepted
    assert apf.override.reason == "allowed by quay.io/org/*; the user-data asked too, the initdata wins"
    assert plan.errors == ()


def test_a_refused_initdata_request_is_not_replaced_by_the_user_data_one(manifest):
    # The pod's owner asked; the host's request, though the policy would take
    # it, does not run in its place: the default does.
    plan = make_plan(manifest, override_policy(), {APF: f"quay.io/org/user@{D1}"},
                     initdata_overrides={APF: "quay.io/elsewhere/x@" + D2})
    apf = plan.get(APF)
    assert apf.source == "default" and apf.override.requested_by == "initdata" and not apf.override.accepted
    assert plan.errors == (f"override for {APF} refused: repository quay.io/elsewhere/x is not allowed for {APF}; "
                           "the user-data asked too, the initdata wins; "
                           f"requested quay.io/elsewhere/x@{D2} (in the initdata)",)


@pytest.mark.parametrize("override_from", ["any", "initdata"])
def test_override_from_decides_whether_user_data_requests_count(manifest, override_from):
    requested = f"quay.io/org/user@{D1}"
    plan = make_plan(manifest, override_policy(override_from), {APF: requested})
    apf = plan.get(APF)
    assert apf.override.requested_by == "user-data"
    if override_from == "any":
        assert apf.source == "override" and apf.override.accepted
    else:
        assert apf.source == "default" and not apf.override.accepted
        assert apf.override.reason == (f"the policy takes overrides for {APF} only from the pod's initdata "
                                       "(override_from: initdata); this request is from the user-data")
        # the same request from the initdata is taken
        plan = make_plan(manifest, override_policy(override_from), {}, initdata_overrides={APF: requested})
        assert plan.get(APF).source == "override" and plan.get(APF).override.requested_by == "initdata"


def test_unknown_components_in_the_initdata_are_reported_as_such(manifest):
    plan = make_plan(manifest, override_policy(), {}, initdata_overrides={"ghost": "x"})
    assert plan.errors == ("override for unknown component 'ghost' ignored (in the initdata)",)


def test_start_order_defends_against_cycles_and_unknown_after():
    with pytest.raises(ConfigError) as info:
        start_order(Manifest((component("a", "b"), component("b", "a"))))
    assert "cycle a -> b -> a" in str(info.value)
    with pytest.raises(ConfigError) as info:
        start_order(Manifest((component("a", "ghost"),)))
    assert info.value.key == "components.a.after[0]"
