"""The model's rules for a set of components (names, units, `after`), applied
by one function wherever a set of components comes from: load_manifest at load,
render again for a plan built by hand, start_order when a hand-built manifest
cannot be ordered. The same input gets the same key and words from each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.model import (
    MAX_COMPONENT_NAME,
    Component,
    Manifest,
    Plan,
    PlannedComponent,
    check_components,
    component_name_problem,
    unit_name_problem,
)
from podvm_bootstrap.config.planner import start_order
from podvm_bootstrap.config.policy import load_policy
from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.units.render import render_units

DIGEST = "sha256:" + "1" * 64
IMAGE = f"quay.io/org/app@{DIGEST}"
SOURCE = "/etc/podvm-bootstrap/components.yaml"


def component(name: str, *after: str, unit: str | None = None) -> Component:
    return Component(name=name, image=parse_reference(IMAGE), unit=unit or f"{name}.service", after=after)


def refusal(components: list[Component]) -> tuple[str, str]:
    with pytest.raises(ConfigError) as info:
        check_components(components, SOURCE)
    assert info.value.file == SOURCE
    return info.value.key, info.value.message


@pytest.mark.parametrize("name", ["kata-agent", "a", "0", "a1-b2", "x" * MAX_COMPONENT_NAME])
def test_component_names_that_are_allowed(name: str):
    assert component_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "Kata", "kata_agent", "-kata", "kata.agent", "ka ta", "a\nb", "é",
                                  "x" * (MAX_COMPONENT_NAME + 1)])
def test_component_names_that_are_refused(name: str):
    assert component_name_problem(name) == ("invalid component name (lowercase letters, digits and '-', "
                                            f"starting with a letter or digit, at most {MAX_COMPONENT_NAME})")


@pytest.mark.parametrize("unit", ["kata-agent.service", "kitchen-sink@main.service", "A:b_c.d-e.service"])
def test_unit_names_that_are_allowed(unit: str):
    assert unit_name_problem(unit) is None


@pytest.mark.parametrize(("unit", "words"), [
    ("a.socket", "invalid unit name"), ("../evil.service", "invalid unit name"), (".service", "invalid unit name"),
    ("@x.service", "invalid unit name"), ("%n.service", "invalid unit name"), ("a b.service", "invalid unit name"),
    ("x" * 250 + ".service", "invalid unit name"), ("a@.service", "is a template"),
    ("podvm-bootstrap.service", "reserved for the daemon itself"),
])
def test_unit_names_that_are_refused(unit: str, words: str):
    problem = unit_name_problem(unit)
    assert problem is not None and words in problem


def test_the_graph_rules_name_their_key():
    assert refusal([component("a"), component("b", unit="a.service")]) == \
        ("components.b.unit", "'a.service' is already the unit of 'a'")
    assert refusal([component("a", "a")]) == ("components.a.after", "'a' cannot come after itself")
    assert refusal([component("a"), component("b", "a", "c")]) == \
        ("components.b.after[1]", "unknown component 'c' (known: a, b)")
    assert refusal([component("a"), component("b", "a", "a")]) == ("components.b.after[1]", "'a' is listed twice")
    assert refusal([component("a", "c"), component("b", "a"), component("c", "b")]) == \
        ("components.a.after", "cycle a -> c -> b -> a")
    check_components([component("a"), component("b", "a"), component("c", "a", "b")], SOURCE)


def _planned(components: list[Component]) -> Plan:
    return Plan(components=tuple(PlannedComponent(c, c.image, "default") for c in components),
                start_order=(tuple(c.name for c in components),))


def _from_manifest(tmp_path: Path, components: dict) -> ConfigError:
    path = tmp_path / "components.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "components": components}, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    return info.value


@pytest.mark.parametrize(("components", "built"), [
    ({"a": {"image": IMAGE}, "odd.name": {"image": IMAGE}}, [component("a"), component("odd.name")]),
    ({"a": {"image": IMAGE, "unit": "a b.service"}}, [component("a", unit="a b.service")]),
    ({"a": {"image": IMAGE, "unit": "a@.service"}}, [component("a", unit="a@.service")]),
    ({"a": {"image": IMAGE}, "b": {"image": IMAGE, "unit": "a.service"}},
     [component("a"), component("b", unit="a.service")]),
    ({"a": {"image": IMAGE, "after": ["ghost"]}}, [component("a", "ghost")]),
    ({"a": {"image": IMAGE, "after": ["b"]}, "b": {"image": IMAGE, "after": ["a"]}},
     [component("a", "b"), component("b", "a")]),
])
def test_load_and_render_refuse_with_the_same_rule(tmp_path: Path, components: dict, built: list[Component]):
    loaded = _from_manifest(tmp_path, components)
    with pytest.raises(ConfigError) as info:
        render_units(_planned(built), source=loaded.file)
    rendered = info.value
    assert (rendered.file, rendered.key, rendered.message) == (loaded.file, loaded.key, loaded.message)


def test_start_order_of_a_hand_built_manifest_refuses_with_the_same_rule():
    manifest = Manifest((component("a", "ghost"),), source=SOURCE)
    with pytest.raises(ConfigError) as info:
        start_order(manifest)
    assert (info.value.key, info.value.message) == refusal(list(manifest.components))


def test_policy_refuses_a_component_name_with_the_manifest_s_words(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "components": {"Kata_Agent": {"repositories": []}}}))
    with pytest.raises(ConfigError) as info:
        load_policy(path, tmp_path)
    assert info.value.key == "components.Kata_Agent"
    assert info.value.message == component_name_problem("Kata_Agent")
