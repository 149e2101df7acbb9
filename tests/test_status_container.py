"""What a component runs, shown to operators: its container settings after
the TEE variant replaced its keys (the unit's ExecStart shows only the start
gate), in `plan --json`, in state.json and `status` (--json and the table),
and named in the unit file's header."""

from __future__ import annotations

from pathlib import Path

from podvm_bootstrap.cli.status import collect_status, format_status
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.model import PlannedComponent
from podvm_bootstrap.config.variants import resolve_variants
from podvm_bootstrap.runtime.state import state_record, write_state
from podvm_bootstrap.units.render import CONTAINER_NOTE, render_units

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
COMPONENTS = f"""\
version: 1
components:
  attestation-agent:
    image: quay.io/confidential-containers/attestation-agent@{D1}
    container:
      command: [attestation-agent, -c, /run/peerpod/aa.toml]
      env: {{RUST_LOG: info}}
      network: host
      volumes: [/run/confidential-containers:/run/confidential-containers]
    variants:
      tdx:
        image: quay.io/confidential-containers/attestation-agent@{D2}
        container: {{command: [attestation-agent, --tdx], devices: [/dev/tdx_guest]}}
  kata-agent:
    image: quay.io/confidential-containers/kata-agent@{D1}
    container: {{privileged: true}}
"""


def planned(tmp_path: Path, tee: str) -> list[PlannedComponent]:
    path = tmp_path / "components.yaml"
    path.write_text(COMPONENTS)
    manifest = resolve_variants(load_manifest(path), tee)
    return [PlannedComponent(c, c.image, "default") for c in manifest.components]


def test_plan_json_shows_the_container_after_the_variant(tmp_path: Path) -> None:
    aa, kata = (p.to_json()["container"] for p in planned(tmp_path, "tdx"))
    # The variant's command and devices replaced the component's; its other keys hold.
    assert aa == {"command": ["attestation-agent", "--tdx"], "env": {"RUST_LOG": "info"}, "network": "host",
                  "pid": None, "privileged": False, "capabilities": [], "devices": ["/dev/tdx_guest"],
                  "volumes": ["/run/confidential-containers:/run/confidential-containers"], "read_only": False,
                  "user": None}
    assert kata["command"] == [] and kata["privileged"] is True   # [] : the image's own entrypoint and command
    assert planned(tmp_path, "none")[0].to_json()["container"]["command"] == ["attestation-agent", "-c",
                                                                             "/run/peerpod/aa.toml"]


def test_status_shows_each_components_container_in_json_and_the_table(tmp_path: Path) -> None:
    plan = {p.name: p for p in planned(tmp_path, "tdx")}
    write_state(tmp_path, state_record(
        daemon={"pid": 0, "phase": "supervising", "ready": True, "status": "2/2 ready"}, boot={},
        units=[p.unit for p in plan.values()], planned=plan,
        snapshot={name: {"state": "ready"} for name in plan}, resolved_from={}, unit_hashes={}, live={}))
    st = collect_status(tmp_path, live_reader=lambda units: {})
    containers = {c["name"]: c["container"] for c in st["components"]}
    assert containers["attestation-agent"]["command"] == ["attestation-agent", "--tdx"]
    assert containers["attestation-agent"]["env"] == {"RUST_LOG": "info"}
    text = format_status(st).splitlines()
    at = text.index("containers (after the TEE variant; `status --json` for every value):")
    assert text[at + 1:at + 3] == [
        "  attestation-agent: command attestation-agent --tdx; env RUST_LOG; network host; devices /dev/tdx_guest; "
        "volumes /run/confidential-containers:/run/confidential-containers",
        "  kata-agent: the image's own entrypoint and command; privileged"]


def test_the_unit_file_says_where_to_read_what_its_container_runs(tmp_path: Path) -> None:
    from podvm_bootstrap.config.model import Plan

    plan = planned(tmp_path, "tdx")
    units = render_units(Plan(tuple(plan), (tuple(p.name for p in plan),)), source="components.yaml")
    for text in units.values():
        assert CONTAINER_NOTE in text.splitlines()[:4]
        assert "status --json" in CONTAINER_NOTE and '"container"' in CONTAINER_NOTE
