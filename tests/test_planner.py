"""make_plan and start_order (pure), on inputs the command line cannot give
them: override names that are not strings, and a manifest that skipped the
loader's checks. The plans of real configurations (and the plan table) are
the cases of tests/cases/."""

from pathlib import Path

import pytest

from podvm_bootstrap.errors import ConfigError
from podvm_bootstrap.imageref import parse_reference
from podvm_bootstrap.manifest import load_manifest
from podvm_bootstrap.model import Component, Manifest
from podvm_bootstrap.planner import make_plan, start_order
from podvm_bootstrap.policy import Policy, load_policy

CONFIG = Path(__file__).resolve().parent.parent / "image" / "config"
D1 = "sha256:" + "1" * 64
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
    assert "override for unknown component 'evil\\nname' ignored" in plan.errors
    assert "override for unknown component 7 ignored" in plan.errors


def test_start_order_defends_against_cycles_and_unknown_after():
    with pytest.raises(ConfigError) as info:
        start_order(Manifest((component("a", "b"), component("b", "a"))))
    assert "cycle a -> b -> a" in str(info.value)
    with pytest.raises(ConfigError) as info:
        start_order(Manifest((component("a", "ghost"),)))
    assert info.value.key == "components.a.after[0]"
