"""Per-TEE variants: components.yaml `variants`, their resolution in the plan
(pure), the policy on overrides of a variant, the units rendered for one
(golden files), and the command line (plan, render, status, --version)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.model import TEES, OverrideDecision, PlannedComponent
from podvm_bootstrap.config.planner import format_table, make_plan
from podvm_bootstrap.config.policy import ComponentPolicy, Policy, load_policy, parse_pattern
from podvm_bootstrap.runtime.state import write_state
from podvm_bootstrap.units.render import render_units

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "image" / "config"
AA = "attestation-agent"
D = {n: "sha256:" + str(n) * 64 for n in range(1, 10)}
VARIANT_UNITS = Path(__file__).parent / "cases" / "sample-config-az-snp-vtpm" / "expect" / "units"


def sample():
    return load_manifest(CONFIG / "components.yaml")


def sample_policy() -> Policy:
    return load_policy(CONFIG / "policy.yaml")


def write_manifest(tmp_path: Path, variants: object, **extra: object) -> Path:
    path = tmp_path / "components.yaml"
    aa = {"image": f"quay.io/cc/aa@{D[1]}", "variants": variants,
          "container": {"command": ["attestation-agent", "-c", "/run/peerpod/aa.toml"], "network": "host",
                        "volumes": ["/run/peerpod:/run/peerpod:ro"]}, **extra}
    path.write_text(yaml.safe_dump({"version": 1, "components": {AA: aa}}, sort_keys=False))
    return path


def config_error(tmp_path: Path, variants: object) -> ConfigError:
    path = write_manifest(tmp_path, variants)
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    assert info.value.file == str(path) and "\n" not in str(info.value)
    return info.value


# --- components.yaml ---------------------------------------------------------

def test_variants_parse_with_the_container_keys_they_name(tmp_path):
    m = load_manifest(write_manifest(tmp_path, {
        "tdx": {"image": f"quay.io/cc/aa@{D[2]}", "container": {"devices": ["/dev/tdx_guest"], "network": "none"}},
        "az-snp-vtpm": {"image": f"quay.io/cc/aa-az@{D[3]}"},
    }))
    tdx, az = m.components[0].variants
    assert (tdx.tee, str(tdx.image)) == ("tdx", f"quay.io/cc/aa@{D[2]}")
    assert tdx.container_keys == ("network", "devices")  # in the container's key order
    assert tdx.container.devices == ("/dev/tdx_guest",)
    assert az.tee == "az-snp-vtpm" and az.container_keys == ()


@pytest.mark.parametrize("variants, key, words", [
    ({"sgx": {"image": f"quay.io/cc/aa@{D[2]}"}}, "components.attestation-agent.variants.sgx", "unknown TEE"),
    ({"TDX": {"image": f"quay.io/cc/aa@{D[2]}"}}, "components.attestation-agent.variants.TDX", "unknown TEE"),
    ({"auto": {"image": f"quay.io/cc/aa@{D[2]}"}}, "components.attestation-agent.variants.auto", "unknown TEE"),
    ({"tdx": {}}, "components.attestation-agent.variants.tdx.image", "required"),
    ({"tdx": None}, "components.attestation-agent.variants.tdx.image", "required"),
    ({"tdx": {"image": "quay.io/cc/aa@sha256:12"}}, "components.attestation-agent.variants.tdx.image", ""),
    ({"tdx": {"image": f"quay.io/cc/aa@{D[2]}", "unit": "x.service"}},
     "components.attestation-agent.variants.tdx.unit", "unknown key"),
    ({"tdx": {"image": f"quay.io/cc/aa@{D[2]}", "container": {"devices": ["tdx_guest"]}}},
     "components.attestation-agent.variants.tdx.container.devices[0]", "/dev/"),
    ({"tdx": {"image": f"quay.io/cc/aa@{D[2]}", "container": {"gpus": 1}}},
     "components.attestation-agent.variants.tdx.container.gpus", "unknown key"),
    ({"tdx": "quay.io/cc/aa"}, "components.attestation-agent.variants.tdx", "expected a mapping"),
    ([{"tdx": {}}], "components.attestation-agent.variants", "expected a mapping"),
])
def test_variant_config_errors_name_file_and_key(tmp_path, variants, key, words):
    err = config_error(tmp_path, variants)
    assert err.key == key and words in str(err)


def test_variant_images_must_be_pinned_like_defaults(tmp_path):
    m = load_manifest(write_manifest(tmp_path, {"snp": {"image": "quay.io/cc/aa:snp"}}))
    with pytest.raises(ConfigError) as info:
        make_plan(m, Policy(), {}, tee="none")  # whatever the TEE: the image is baked
    assert info.value.key == "components.attestation-agent.variants.snp.image"
    assert make_plan(m, Policy(mutable_tags=True), {}, tee="snp").get(AA).image.tag == "snp"


# --- resolution (pure) -------------------------------------------------------

@pytest.mark.parametrize("tee", [t for t in TEES if t != "cca"])
def test_the_tees_variant_replaces_image_and_named_container_keys(tee):
    manifest = sample()
    declared = manifest.get(AA)
    variant = next(v for v in declared.variants if v.tee == tee)
    plan = make_plan(manifest, sample_policy(), {}, tee=tee)
    aa = plan.get(AA)
    assert plan.tee == tee
    assert aa.source == "variant" and aa.variant == tee and aa.override is None
    assert aa.image == variant.image and aa.digest == variant.image.digest != declared.image.digest
    # devices come from the variant; every other container key stays the component's
    assert aa.component.container.devices == variant.container.devices and aa.component.container.devices
    assert replace(aa.component.container, devices=()) == declared.container
    assert aa.component.ready == declared.ready and aa.unit == declared.unit
    for other in plan.components[1:]:
        assert other.source == "default" and other.variant is None
        assert other.image == manifest.get(other.name).image


@pytest.mark.parametrize("tee", ["none", "cca"])
def test_no_entry_for_the_tee_runs_the_component_as_declared(tee):
    manifest = sample()
    plan = make_plan(manifest, sample_policy(), {}, tee=tee)
    assert all(p.source == "default" and p.variant is None for p in plan.components)
    assert [p.component for p in plan.components] == list(manifest.components)


def test_an_accepted_override_replaces_the_variant_and_keeps_its_container():
    allow = Policy(components={AA: ComponentPolicy((parse_pattern("ghcr.io/example/*"),))})
    override = f"ghcr.io/example/aa@{D[7]}"
    aa = make_plan(sample(), allow, {AA: override}, tee="tdx").get(AA)
    assert aa.source == "override" and str(aa.image) == override
    assert aa.variant == "tdx" and aa.component.container.devices == ("/dev/tdx_guest",)
    assert aa.override == OverrideDecision(override, True, "allowed by ghcr.io/example/*")


def test_the_policy_judges_an_override_of_a_variant_the_same_way():
    override = f"ghcr.io/evil/aa@{D[7]}"
    for tee in ("none", "az-snp-vtpm"):
        plan = make_plan(sample(), sample_policy(), {AA: override}, tee=tee)
        aa = plan.get(AA)
        assert aa.override is not None and not aa.override.accepted
        assert "allows no override" in aa.override.reason
        assert aa.source == ("variant" if tee != "none" else "default")
        assert aa.image == (sample().get(AA).image if tee == "none" else
                            next(v.image for v in sample().get(AA).variants if v.tee == tee))
        assert len(plan.errors) == 1 and plan.errors[0].startswith("override for attestation-agent refused")


def test_a_fallback_to_the_baked_image_of_a_variant_is_the_variants():
    # The daemon falls back from an unusable override with source "default":
    # on a variant that is the variant's image, and must say so.
    aa = make_plan(sample(), sample_policy(), {}, tee="snp").get(AA)
    fallback = PlannedComponent(aa.component, aa.component.image, "default",
                                OverrideDecision("ghcr.io/x/aa@" + D[8], False, "image unusable"))
    assert fallback.source == "variant" and fallback.variant == "snp"
    assert fallback.to_json()["source"] == "variant" and fallback.to_json()["variant"] == "snp"


def test_plan_json_and_table_show_tee_and_variant():
    from podvm_bootstrap import __version__

    plan = make_plan(sample(), sample_policy(), {}, tee="az-tdx-vtpm")
    doc = json.loads(json.dumps(plan.to_json()))
    assert list(doc)[:3] == ["version", "tee", "components"]
    assert doc["version"] == __version__ and doc["tee"] == "az-tdx-vtpm"
    aa = doc["components"][0]
    assert (aa["name"], aa["source"], aa["variant"]) == (AA, "variant", "az-tdx-vtpm")
    assert aa["image"].endswith("@" + aa["digest"]) and aa["digest"].endswith("a2")
    assert all(c["variant"] is None and c["source"] == "default" for c in doc["components"][1:])
    table = format_table(plan)
    row = next(line for line in table.splitlines() if line.startswith(AA))
    assert row.split()[:4] == [AA, f"{AA}.service", "variant", "(az-tdx-vtpm)"]
    assert "tee: az-tdx-vtpm" in table.splitlines()


# --- render ------------------------------------------------------------------

def test_units_of_a_variant_match_golden_files():
    units = render_units(make_plan(sample(), sample_policy(), {}, tee="az-snp-vtpm"))
    assert {k: v.encode() for k, v in units.items()} == {p.name: p.read_bytes() for p in VARIANT_UNITS.iterdir()}
    aa = units[f"{AA}.service"]
    assert "# Image source: variant (az-snp-vtpm)" in aa
    assert "--device=/dev/tpmrm0" in aa and "sha256:" + "0" * 62 + "a1" in aa
    # the other units are exactly those of the component as declared
    plain = render_units(make_plan(sample(), sample_policy(), {}, tee="none"))
    assert {k: v for k, v in units.items() if k != f"{AA}.service"} == \
        {k: v for k, v in plain.items() if k != f"{AA}.service"}


# --- the command line --------------------------------------------------------

def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent"
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    return target


def plan_json(tmp_path: Path, config: Path, root: Path, userdata: str = "#cloud-config\n") -> tuple[dict, str]:
    ud = tmp_path / "user-data"
    ud.write_text(userdata)
    result = cli("--root", str(root), "--config-dir", str(config), "plan", "--json", "--user-data", str(ud))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_plan_detects_the_tee_under_root(tmp_path, config):
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev/sev-guest").touch()
    doc, stderr = plan_json(tmp_path, config, root)
    assert doc["tee"] == "snp"
    assert doc["components"][0]["variant"] == "snp" and doc["components"][0]["source"] == "variant"
    assert "TEE: snp (/dev/sev-guest exists)" in stderr


def test_baked_tee_wins_and_user_data_cannot_choose_it(tmp_path, config):
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev/tdx_guest").touch()
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(bootstrap.read_text().replace("tee: auto ", "tee: se   "))
    hostile = "#cloud-config\ntee: tdx\npodvm_bootstrap:\n  tee: tdx\n"
    doc, stderr = plan_json(tmp_path, config, root, hostile)
    assert doc["tee"] == "se" and doc["components"][0]["variant"] == "se"
    assert "TEE: se (bootstrap.yaml tee: se)" in stderr
    # both spellings of the attempt are reported, one line each, and ignored
    assert "user-data: tee ignored" in stderr
    assert "podvm_bootstrap: unknown key tee ignored" in stderr
    # with detection, the same user-data still does not choose
    bootstrap.write_text(bootstrap.read_text().replace("tee: se   ", "tee: auto "))
    (root / "dev/tdx_guest").unlink()
    doc, _ = plan_json(tmp_path, config, root, hostile)
    assert doc["tee"] == "none" and doc["components"][0]["variant"] is None


def test_unknown_baked_tee_exits_2_naming_file_and_key(tmp_path, config):
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(bootstrap.read_text().replace("tee: auto ", "tee: sev  "))
    result = cli("--root", str(tmp_path), "--config-dir", str(config), "plan", "--user-data", "/dev/null")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"podvm-bootstrap: error: {bootstrap}: tee: must be one of " \
        "auto, none, tdx, snp, az-snp-vtpm, az-tdx-vtpm, se, cca, got 'sev'"


def test_unknown_tee_in_a_baked_variant_exits_2(tmp_path, config):
    components = config / "components.yaml"
    components.write_text(components.read_text().replace("      tdx:\n", "      tdx-guest:\n"))
    result = cli("--root", str(tmp_path), "--config-dir", str(config), "plan", "--user-data", "/dev/null")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith(
        f"podvm-bootstrap: error: {components}: components.attestation-agent.variants.tdx-guest: unknown TEE")
    assert len(result.stderr.strip().splitlines()) == 1


def test_render_writes_the_variants_units(tmp_path, config):
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(bootstrap.read_text().replace("tee: auto ", "tee: az-snp-vtpm "))
    out = tmp_path / "units"
    result = cli("--root", str(tmp_path / "root"), "--config-dir", str(config), "render", "--user-data",
                 "/dev/null", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in VARIANT_UNITS.iterdir()}


def test_version_prints_the_manifest_digest(tmp_path, config):
    from podvm_bootstrap import __version__

    expected = "sha256:" + hashlib.sha256((config / "components.yaml").read_bytes()).hexdigest()
    result = cli("--config-dir", str(config), "--version")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"podvm-bootstrap {__version__} manifest {expected}\n"
    # --root moves the baked file like every other path
    root = tmp_path / "root"
    (root / "etc/podvm-bootstrap").mkdir(parents=True)
    (root / "etc/podvm-bootstrap/components.yaml").write_bytes(b"version: 1\n")
    result = cli("--version", "--root", str(root))
    assert result.stdout.split()[-1] == "sha256:" + hashlib.sha256(b"version: 1\n").hexdigest()
    # one changed byte, another digest
    (config / "components.yaml").write_text((config / "components.yaml").read_text() + "\n")
    assert cli("--config-dir", str(config), "--version").stdout.split()[-1] != expected
    # no manifest: one error line naming it, exit 2
    missing = cli("--root", str(tmp_path / "nowhere"), "--version")
    assert missing.returncode == 2 and missing.stdout == f"podvm-bootstrap {__version__} manifest unavailable\n"
    assert missing.stderr.count("\n") == 1 and "components.yaml" in missing.stderr


def test_status_reports_version_tee_and_variant(tmp_path):
    from podvm_bootstrap import __version__

    state_dir = tmp_path / "state"
    plan = make_plan(sample(), sample_policy(), {}, tee="tdx")
    state_dir.mkdir()
    (state_dir / "plan.json").write_text(json.dumps(plan.to_json()))
    write_state(state_dir, {
        "daemon": {"pid": os.getpid(), "phase": "supervising", "ready": True, "status": "5/5 ready"},
        "boot": {}, "units": [],
        "components": {p.name: {"unit": p.unit, "image": str(p.image), "digest": p.digest, "source": p.source,
                                "override": None, "state": "ready", "health": "passing",
                                "essential": p.component.essential, "restarts": 0, "last_error": None}
                       for p in plan.components}})
    result = cli("--state-dir", str(state_dir), "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["version"] == __version__ and status["tee"] == "tdx"
    by_name = {c["name"]: c for c in status["components"]}
    assert by_name[AA]["variant"] == "tdx" and by_name[AA]["source"] == "variant"
    assert by_name["kata-agent"]["variant"] is None
    human = cli("--state-dir", str(state_dir), "status").stdout
    assert "variant (tdx)" in human and f"podvm-bootstrap {__version__}, tee: tdx" in human


def test_verify_before_any_run_checks_the_baked_images_for_this_tee(tmp_path, config):
    from podvm_bootstrap.cli.status import images_to_verify
    from podvm_bootstrap.common.paths import Paths

    paths = Paths.build(root=str(tmp_path / "root"), config_dir=str(config), state_dir=str(tmp_path / "state"))
    declared = sample()
    assert dict(images_to_verify(paths)) == {c.name: str(c.image) for c in declared.components}
    (tmp_path / "root/dev").mkdir(parents=True)
    (tmp_path / "root/dev/sev-guest").touch()
    snp = next(v.image for v in declared.get(AA).variants if v.tee == "snp")
    images = dict(images_to_verify(paths))
    assert images[AA] == str(snp) and images["kata-agent"] == str(declared.get("kata-agent").image)


def test_version_is_not_taken_from_other_options(tmp_path, config):
    # `--log FILE` of `measurements` is no abbreviation of --log-level, and
    # a bad global option is reported once, by the full parser
    log = tmp_path / "eventlog"
    log.write_bytes(b"")  # a records file with no records yet
    result = cli("--config-dir", str(config), "measurements", "--log", str(log))
    assert "--log-level" not in result.stderr and "usage:" not in result.stderr
    assert "the launch is incomplete" in result.stderr  # the measurements command read the log
    bad = cli("--log-level", "loud", "--version")
    assert bad.returncode == 2 and bad.stderr.count("invalid choice") == 1


def test_the_measured_launch_records_the_variant(tmp_path, config):
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(bootstrap.read_text().replace("tee: auto ", "tee: tdx  "))
    doc, _ = plan_json(tmp_path, config, tmp_path / "root")
    aa = doc["components"][0]
    logged = json.loads(doc["measurement"]["events"][0].split(" ", 2)[2])   # no INIT record: the first is the agent
    assert logged == {"component": AA, "digest": aa["digest"], "image": aa["image"], "source": "variant"}
    assert aa["variant"] == "tdx"
