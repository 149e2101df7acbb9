"""docs/userdata.md "For the cloud-api-adaptor": the documented override examples are
run as written.

- The initdata route (what works with the adaptor as it ships): the pod's
  initdata annotation, decoded the way Kata's runtime decodes it, must be the
  docs' initdata TOML; the docs' user-data must be what the adaptor's
  cloud-config template writes for it, its initdata the same TOML again; and
  `plan` and `provision` on that user-data, with the sample baked
  configuration, must print what the docs show.
- The user-data route (needs an adaptor change): its config map and pod
  annotation are merged the way the docs tell the adaptor to (the
  annotation wins per component), the result must be the docs' user-data,
  and `podvm-bootstrap plan --json` on that user-data must do what the docs
  say.

Upstream behaviour mirrored here, as read from the sources:
- kata-containers src/runtime/pkg/oci/utils.go (addHypervisorInitdataOverrides,
  commit 7c6ba40c54ea29b459b4997cff948caaba4e658b): the annotation is
  standard base64 of gzip; the TOML inside goes to the remote hypervisor
  (src/runtime/virtcontainers/remote.go) as the same annotation, in clear.
- cloud-api-adaptor (commit fbdde756207826872ba4bcee1f5c6788d7aee707):
  pkg/util/cloud.go GetInitdataFromAnnotation gzips and base64-encodes that
  TOML again (pkg/initdata Encode), pkg/adaptor/cloud/cloud.go adds it as the
  write_files entry /run/peerpod/initdata, and
  src/cloud-providers/util/cloudinit/cloudconfig.go (cloudInitText) renders
  the cloud-config."""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs/userdata.md"
ANNOTATION = "io.katacontainers.config.podvm_bootstrap.images"
CONFIG_MAP_KEY = "PODVM_BOOTSTRAP_IMAGES"
INITDATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"


def example(name: str) -> str:
    """The fenced block right after `<!-- adaptor-example: NAME -->`."""
    text = DOCS.read_text()
    match = re.search(rf"<!-- adaptor-example: {re.escape(name)} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert match, f"{DOCS} lost its adaptor example {name!r}"
    return match.group(1) + "\n"


def adaptor_requests(config_map: dict, pod: dict) -> dict[str, str]:
    """The docs' rule: the config map's requests, then the pod's
    annotation over them, component by component."""
    merged = dict(json.loads(config_map["data"].get(CONFIG_MAP_KEY, "{}")))
    merged.update(json.loads(pod["metadata"].get("annotations", {}).get(ANNOTATION, "{}")))
    return merged


def test_the_docs_example_merges_into_its_user_data_and_plans_as_documented(tmp_path):
    config_map = yaml.safe_load(example("configmap"))
    pod = yaml.safe_load(example("pod"))
    userdata_text = example("user-data")
    userdata = yaml.safe_load(userdata_text)
    assert userdata_text.startswith("#cloud-config\n")
    requests = adaptor_requests(config_map, pod)
    assert userdata["podvm_bootstrap"]["images"] == requests
    assert set(requests) == {"agent-protocol-forwarder", "attestation-agent"}
    # both ask for the forwarder: the pod's annotation wins
    cluster = json.loads(config_map["data"][CONFIG_MAP_KEY])["agent-protocol-forwarder"]
    assert requests["agent-protocol-forwarder"] != cluster

    ud = tmp_path / "user-data"
    ud.write_text(userdata_text)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tmp_path / "root"),
                             "--config-dir", str(REPO / "image/config"), "plan", "--json", "--user-data", str(ud)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    by_name = {c["name"]: c for c in plan["components"]}
    apf, aa = by_name["agent-protocol-forwarder"], by_name["attestation-agent"]
    assert apf["source"] == "override" and apf["image"] == requests["agent-protocol-forwarder"]
    assert apf["override"]["accepted"] is True
    assert aa["source"] == "default" and aa["image"] != requests["attestation-agent"]
    assert aa["override"] == {"requested": requests["attestation-agent"], "accepted": False,
                              "reason": "the policy allows no override for attestation-agent (repositories is empty)",
                              "requested_by": "user-data"}
    # the docs quote that reason word for word
    assert aa["override"]["reason"] in " ".join(DOCS.read_text().split())
    assert plan["version"] and plan["tee"] == "none"


def kata_decode_initdata(annotation: str) -> str:
    """What Kata's runtime does with the annotation: standard base64 (no
    other form), then gzip; the TOML it hands the adaptor."""
    try:
        return gzip.decompress(base64.b64decode(annotation, validate=True)).decode()
    except (binascii.Error, OSError, UnicodeDecodeError) as exc:
        raise AssertionError(f"Kata's runtime would refuse this annotation: {exc}") from None


def adaptor_cloud_config(files: list[tuple[str, str]]) -> str:
    """The adaptor's cloud-config template (cloudInitText) for write_files
    entries that have only a path and a content: the content as a `|` block,
    one line per line of it."""
    out = "#cloud-config\n\nwrite_files:\n"
    for path, content in files:
        out += f"  - path: {path}\n"
        if content:
            lines = content.split("\n")
            if lines[-1] == "":
                lines = lines[:-1]
            out += "    content: |\n" + "".join(f"      {line}\n" for line in lines)
    return out


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tmp_path / "root"),
                           "--config-dir", str(REPO / "image/config"), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def console(name: str, command: str) -> str:
    """The output a docs console block shows for `$ command`."""
    first, _, rest = example(name).partition("\n")
    assert first == f"$ {command}", f"docs block {name!r} must start with '$ {command}'"
    return rest


def test_the_initdata_route_works_with_the_adaptor_as_it_ships(tmp_path):
    toml_text = example("initdata")
    data = tomllib.loads(toml_text)["data"]
    assert set(data) == {"aa.toml", "cdh.toml", "policy.rego", "podvm-bootstrap.yaml"}
    requests = yaml.safe_load(data["podvm-bootstrap.yaml"])["images"]
    assert set(requests) == {"agent-protocol-forwarder", "attestation-agent"}

    # the pod's annotation, as Kata's runtime reads it
    pod = yaml.safe_load(example("pod-initdata"))
    assert pod["spec"]["runtimeClassName"] == "kata-remote"
    handed_to_adaptor = kata_decode_initdata(pod["metadata"]["annotations"][INITDATA_ANNOTATION])
    assert handed_to_adaptor == toml_text

    # the user-data, as the adaptor's template writes it: its files, then the initdata encoded again
    userdata_text = example("user-data-initdata")
    entries = yaml.safe_load(userdata_text)["write_files"]
    files = [(e["path"], e["content"].removesuffix("\n")) for e in entries]
    assert [path for path, _ in files] == ["/run/peerpod/apf.json", "/run/peerpod/initdata"]
    assert userdata_text == adaptor_cloud_config(files)
    assert kata_decode_initdata(dict(files)["/run/peerpod/initdata"]) == handed_to_adaptor
    assert "podvm_bootstrap" not in userdata_text   # nothing of ours: the adaptor is unchanged

    ud = tmp_path / "user-data"
    ud.write_text(userdata_text)
    (tmp_path / "root").mkdir()
    result = cli(tmp_path, "plan", "--user-data", str(ud))
    assert result.returncode == 0, result.stderr
    assert result.stdout == console("plan-initdata", "podvm-bootstrap plan")

    result = cli(tmp_path, "plan", "--json", "--user-data", str(ud))
    assert result.returncode == 0, result.stderr
    by_name = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    apf, aa = by_name["agent-protocol-forwarder"], by_name["attestation-agent"]
    assert apf["source"] == "override" and apf["image"] == requests["agent-protocol-forwarder"]
    assert apf["override"]["accepted"] is True and apf["override"]["requested_by"] == "initdata"
    assert aa["source"] == "default" and aa["override"] == {
        "requested": requests["attestation-agent"], "accepted": False, "requested_by": "initdata",
        "reason": "the policy allows no override for attestation-agent (repositories is empty)"}
    assert aa["override"]["reason"] in " ".join(DOCS.read_text().split())

    result = cli(tmp_path, "provision", "--user-data", str(ud))
    assert result.returncode == 0, result.stderr
    peerpod = tmp_path / "root/run/peerpod"
    digest = (peerpod / "initdata.digest").read_text()
    assert digest + "\n" == console("digest-initdata", "cat /run/peerpod/initdata.digest")
    assert digest == hashlib.sha384(toml_text.encode()).hexdigest()
    for name in ("aa.toml", "cdh.toml", "policy.rego"):
        assert (peerpod / name).read_text() == data[name]
    assert not (peerpod / "podvm-bootstrap.yaml").exists()
