"""User-data documents for booting test VMs (cloud-config, as the
cloud-api-adaptor writes it)."""

from __future__ import annotations

import json

import yaml

# The stand-in attestation-agent refuses to start without a config that parses
# (like the real one), so a VM that should come up needs at least this.
AA_TOML = "[token_configs]\n[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n"
APF_JSON = json.dumps({"pod-network": {}})


def cloud_config(images: dict[str, str] | None = None, files: dict[str, str] | None = None,
                 *, minimal: bool = True) -> str:
    """A cloud-config: the minimal files the stand-ins need (unless
    minimal=False), plus `files` {path: text}, plus image overrides."""
    write = {"/run/peerpod/aa.toml": AA_TOML, "/run/peerpod/apf.json": APF_JSON} if minimal else {}
    write.update(files or {})
    doc: dict = {"write_files": [{"path": p, "content": c} for p, c in write.items()]}
    if images:
        doc["podvm_bootstrap"] = {"images": dict(images)}
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line file contents as readable `|` blocks."""


_BlockDumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


MINIMAL_USERDATA = cloud_config()
