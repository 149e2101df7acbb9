"""The benchmark's pure helpers (bench/stats.py, bench/scenarios.py): no VM,
no timing; the benchmark itself runs with `make bench`."""

import math

import pytest
import yaml

from bench import scenarios
from bench.stats import Row, Summary, Target, fmt, markdown_table, ratio, summarize, verdict


def test_summarize_gives_median_and_range():
    s = summarize([0.5, 0.1, 0.3, 0.9])
    assert s == Summary(n=4, median=0.4, low=0.1, high=0.9)
    assert summarize([2.0]) == Summary(1, 2.0, 2.0, 2.0)
    assert summarize([]) is None


def test_summarize_refuses_non_finite_values():
    with pytest.raises(ValueError):
        summarize([1.0, math.nan])
    with pytest.raises(ValueError):
        summarize([math.inf])


def test_ratio_of_medians_and_missing_sides():
    assert ratio(summarize([1.1, 1.2, 5.0]), summarize([1.0, 1.0, 0.1])) == pytest.approx(1.2)
    assert ratio(None, summarize([1.0])) is None
    assert ratio(summarize([1.0]), None) is None
    assert ratio(summarize([1.0]), summarize([0.0])) is None


def test_verdicts_inclusive_and_strict_limits():
    at_most = Target(1.10)
    below = Target(0.150, strict=True)
    assert verdict(1.10, at_most) == "ok"
    assert verdict(1.11, at_most) == "MISSED"
    assert verdict(0.150, below) == "MISSED"
    assert verdict(0.149, below) == "ok"
    assert verdict(None, below) == "n/a"
    assert verdict(5.0, None) == ""


def test_format_in_units():
    assert fmt(0.1234, "ms") == "123.4 ms"
    assert fmt(41 * (1 << 20), "MiB") == "41.00 MiB"
    assert fmt(1.0512, "x") == "1.05x"
    assert fmt(None, "s") == "-"


def test_table_rows_verdicts_errors_and_notes():
    rows = [
        Row("boot", "s", summarize([2.0, 2.2]), summarize([1.0, 1.0]), "ideal", 2.1, "x", Target(1.10), note="why"),
        Row("hang", "s", None, target=Target(20.0), missed="not detected within 30 s"),
        Row("pull", "s", target=Target(1.10), error="registry down"),
    ]
    table = markdown_table([("Section", rows)])
    lines = table.splitlines()
    assert lines[2].startswith("| **Section** |")
    assert "boot [1]" in lines[3] and lines[3].endswith("| MISSED |")
    assert "not detected within 30 s" in lines[4] and lines[4].endswith("| MISSED |")
    assert "ERROR: registry down" in lines[5]
    assert "[1] why" in table
    assert rows[0].to_json()["verdict"] == "MISSED" and rows[2].to_json()["verdict"] == "ERROR"


SAMPLE = yaml.safe_load("""
version: 1
components:
  attestation-agent:
    image: quay.io/confidential-containers/attestation-agent@sha256:""" + "1" * 64 + """
    ready: {unix_socket: /run/confidential-containers/attestation-agent/attestation-agent.sock}
    container: {command: [attestation-agent, -c, /run/peerpod/aa.toml], network: host}
  kata-agent:
    image: quay.io/confidential-containers/kata-agent@sha256:""" + "2" * 64 + """
    after: [attestation-agent]
    essential: true
    ready: {unix_socket: /run/kata-containers/agent.sock}
    container: {privileged: true, network: host, volumes: [/run/kata-containers:/run/kata-containers]}
  agent-protocol-forwarder:
    image: quay.io/confidential-containers/agent-protocol-forwarder@sha256:""" + "3" * 64 + """
    after: [kata-agent]
    ready: {tcp: 127.0.0.1:15150}
    health: {interval: 5s, failures: 3}
    container: {network: host}
""")


@pytest.mark.parametrize("n, sizes", [(3, [1, 1, 1]), (10, [3, 3, 4]), (30, [10, 10, 10])])
def test_scaled_manifest_keeps_three_layers_with_distinct_endpoints(n, sizes):
    text = scenarios.dump(scenarios.scaled_manifest(SAMPLE, n), "test")
    manifest = scenarios.load_text(text)  # the product's own loader accepts it
    layers = scenarios.ideal_layers(manifest)
    assert [len(layer) for layer in layers] == sizes
    targets = [p["target"] for p in scenarios.probes(manifest)]
    assert len(set(targets)) == n
    assert [c.name for c in manifest.components if c.essential] == ["kata-agent"]
    for step in (s for layer in layers for s in layer):
        assert not any(a.startswith("--sdnotify") for a in step["argv"])
        assert step["argv"][:3] == ["/usr/bin/podman", "run", "--rm"]


def test_scale_needs_one_component_per_layer():
    with pytest.raises(ValueError):
        scenarios.layer_sizes(2)


def test_exec_probe_variant_keeps_health_settings():
    variant = scenarios.with_exec_probe(SAMPLE, "agent-protocol-forwarder", ["standin", "probe", "tcp", "x:1"])
    manifest = scenarios.load_text(scenarios.dump(variant, "test"))
    apf = manifest.get("agent-protocol-forwarder")
    assert apf.ready.kind == "exec" and apf.health.interval == 5.0 and apf.health.failures == 3
    assert SAMPLE["components"]["agent-protocol-forwarder"]["ready"] == {"tcp": "127.0.0.1:15150"}
