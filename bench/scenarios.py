"""What the benchmark runs, derived from the manifest baked into the image:
replicated manifests for the scale runs, the ideal script's containers (the
very `podman run` argv the daemon's units use), the probes both are waited
on with. Pure, apart from reading/writing a manifest file where asked."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml

from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.model import Manifest, PlannedComponent
from podvm_bootstrap.config.planner import start_order
from podvm_bootstrap.units.render import podman_run_argv, volume_host_dirs

AA, KATA, APF = "attestation-agent", "kata-agent", "agent-protocol-forwarder"
LAYER_BASES = (AA, KATA, APF)   # one layer each: the critical path stays 3 deep
REPLICA_PORT_BASE = 15160       # forwarder replicas listen on 127.0.0.1:15161...


def layer_sizes(n: int) -> list[int]:
    """n components over the three layers, the remainder on the last ones:
    3 -> [1, 1, 1], 10 -> [3, 3, 4], 30 -> [10, 10, 10]."""
    if n < 3:
        raise ValueError(f"need at least 3 components (one per layer), got {n}")
    sizes = [n // 3] * 3
    for i in range(n % 3):
        sizes[2 - i] += 1
    return sizes


def _replica(base_name: str, base: dict[str, Any], index: int) -> tuple[str, dict[str, Any]]:
    """A copy of a stand-in component under its own name, socket or port.
    The stand-in takes --component NAME and then --socket PATH / --listen
    HOST:PORT (tests/standins/standin.c)."""
    name = f"{base_name}-r{index}"
    spec = copy.deepcopy(base)
    spec.pop("essential", None)
    spec.pop("unit", None)
    container = spec.setdefault("container", {})
    if base_name == AA:
        sock = f"/run/confidential-containers/attestation-agent/r{index}.sock"
        container["command"] = [AA, "--component", name, "--socket", sock]
        spec["ready"] = {"unix_socket": sock}
        spec["after"] = []
    elif base_name == KATA:
        sock = f"/run/kata-containers/r{index}.sock"
        container["command"] = [KATA, "--component", name, "--socket", sock]
        spec["ready"] = {"unix_socket": sock}
        spec["after"] = [AA]
    else:
        address = f"127.0.0.1:{REPLICA_PORT_BASE + index}"
        container["command"] = [APF, "--component", name, "--listen", address]
        spec["ready"] = {"tcp": address}
        spec["after"] = [KATA]
    return name, spec


def scaled_manifest(baked: dict[str, Any], n: int) -> dict[str, Any]:
    """The baked manifest (the three stand-ins) replicated to n components in
    the same three layers: layer 1 like the attestation-agent, layer 2 after
    it like the kata-agent, layer 3 after that like the forwarder. Replicas
    are not essential; READY=1 still waits for the kata-agent only."""
    components = baked["components"]
    missing = [b for b in LAYER_BASES if b not in components]
    if missing:
        raise ValueError(f"the baked manifest lacks {', '.join(missing)}")
    out: dict[str, Any] = {b: copy.deepcopy(components[b]) for b in LAYER_BASES}
    out[KATA]["after"], out[APF]["after"] = [AA], [KATA]  # one layer each, whatever else the chain holds
    index = 0
    for base_name, size in zip(LAYER_BASES, layer_sizes(n)):
        for _ in range(size - 1):
            index += 1
            name, spec = _replica(base_name, components[base_name], index)
            out[name] = spec
    return {"version": baked.get("version", 1), "components": out}


def with_exec_probe(baked: dict[str, Any], name: str, argv: list[str]) -> dict[str, Any]:
    """The manifest with one component's ready (= health) probe replaced by an
    exec probe (run in its container), its health settings kept."""
    out = copy.deepcopy(baked)
    out["components"][name]["ready"] = {"exec": list(argv)}
    return out


def load_text(text: str) -> Manifest:
    """A manifest from YAML text, validated by the product's own loader."""
    with tempfile.TemporaryDirectory(prefix="podvm-bench-") as tmp:
        path = Path(tmp) / "components.yaml"
        path.write_text(text)
        return load_manifest(path)


def probe_of(component) -> dict[str, str]:
    ready = component.ready
    if ready is None or ready.kind not in ("unix_socket", "tcp"):
        raise ValueError(f"{component.name}: the benchmark waits on unix_socket/tcp ready probes only")
    return {"name": component.name, "kind": ready.kind, "target": str(ready.target)}


def probes(manifest: Manifest) -> list[dict[str, str]]:
    return [probe_of(c) for c in manifest.components]


def ideal_layers(manifest: Manifest) -> list[list[dict[str, Any]]]:
    """The ideal script's steps: per start-order layer, each component's
    `podman run` argv as its generated unit runs it, minus --sdnotify (which
    needs systemd) and minus the start gate (the image's own entrypoint and
    the manifest's command run at once), the host directories its unit creates,
    and its ready probe."""
    by_name = {c.name: c for c in manifest.components}
    layers = []
    for layer in start_order(manifest):
        steps = []
        for name in layer:
            planned = PlannedComponent(by_name[name], by_name[name].image, "default")
            argv = [a for a in podman_run_argv(planned, gated=False) if not a.startswith("--sdnotify")]
            steps.append({"name": name, "argv": argv, "dirs": volume_host_dirs(planned),
                          "probe": probe_of(by_name[name])})
        layers.append(steps)
    return layers


def all_at_once_layers(manifest: Manifest) -> list[list[dict[str, Any]]]:
    """The same containers all started together, no ordering: one layer.
    A component that needs another one's socket (the forwarder needs
    kata-agent's) may exit at first; podman's own `--restart=on-failure`
    brings it back (it cannot be combined with --rm)."""
    steps = [step for layer in ideal_layers(manifest) for step in layer]
    for step in steps:
        argv = [a for a in step["argv"] if a != "--rm"]
        step["argv"] = [*argv[:2], "--restart=on-failure:50", *argv[2:]]
    return [steps]


def binaries_steps(manifest: Manifest) -> list[dict[str, Any]]:
    """Today's peer pods for the same components: the programs themselves as
    plain systemd services (no container), each one started by a `.path`
    unit when its dependency's socket exists. Per component: its argv (the
    manifest's command, the program named by its first word), the host
    directories its container would mount, the sockets it waits for, its probe."""
    by_name = {c.name: c for c in manifest.components}
    steps = []
    for c in manifest.components:
        command = list(c.container.command) or [c.name]
        waits = []
        for dep in c.after:
            probe = probe_of(by_name[dep])
            if probe["kind"] != "unix_socket":
                raise ValueError(f"{c.name}: a .path unit can wait for a socket file only, not {probe['kind']}")
            waits.append(probe["target"])
        planned = PlannedComponent(c, c.image, "default")
        steps.append({"name": c.name, "argv": command, "dirs": volume_host_dirs(planned), "waits": waits,
                      "probe": probe_of(c)})
    return steps


def units(manifest: Manifest) -> dict[str, str]:
    return {c.name: c.unit for c in manifest.components}


def dump(manifest: dict[str, Any], header: str) -> str:
    return f"# {header}\n" + yaml.safe_dump(manifest, sort_keys=False)
