"""`status` and `verify`: what runs and whether its images are what the plan says.

status: state.json (written by the daemon) joined with the units' live state
from systemd when the system bus is there; without it, state.json alone and a
note saying so. Exit 0 when every essential component is ready (with none
essential: every component), 1 otherwise or when there is no state.

verify: every image the daemon runs (state.json), or, before any run, every
baked image of the manifest for this VM's TEE (the defaults, or their
variants), checked in local storage against its digest, and its stored
signature where policy.yaml asks for one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podvm_bootstrap.common.errors import EXIT_OK, EXIT_RUNTIME, one_line
from podvm_bootstrap.common.fsutil import read_json
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.common.texttable import text_table
from podvm_bootstrap.config.model import source_label
from podvm_bootstrap.runtime.state import MAX_STATE_JSON, STATE_FILE, read_state
from podvm_bootstrap.units.systemd_dbus import SystemdError, UnitState, read_unit_states

LiveReader = Callable[[list[str]], dict[str, UnitState]]


def _pid_running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_plan(state_dir: Path) -> dict[str, Any]:
    """plan.json as the daemon last wrote it ({} when absent or unreadable):
    where the boot's TEE and each component's variant are recorded."""
    plan = read_json(state_dir / "plan.json", MAX_STATE_JSON)
    return plan if isinstance(plan, dict) else {}


def collect_status(state_dir: Path, live_reader: LiveReader = read_unit_states) -> dict[str, Any] | None:
    from podvm_bootstrap import __version__

    state = read_state(state_dir)
    if state is None:
        return None
    daemon = dict(state.get("daemon") or {})
    daemon["running"] = _pid_running(daemon.get("pid"))
    plan = _read_plan(state_dir)
    variants = {c.get("name"): c.get("variant") for c in plan.get("components") or [] if isinstance(c, dict)}
    components = []
    for name, entry in state["components"].items():
        if isinstance(entry, dict):
            components.append({"name": name, "variant": variants.get(name), **entry})
    note = None
    try:
        live = live_reader([c["unit"] for c in components if isinstance(c.get("unit"), str)])
    except SystemdError as exc:
        live = None
        note = f"{exc}; unit states are the daemon's last record"
    measurement = (state.get("boot") or {}).get("measurement")
    measurement = measurement if isinstance(measurement, dict) else None
    for c in components:
        c["measured"] = is_measured(measurement, c)
        unit_state = live.get(c.get("unit", "")) if live is not None else None
        if unit_state is not None:
            c["active_state"], c["sub_state"] = unit_state.active, unit_state.sub
    essential = [c for c in components if c.get("essential")]
    judged = essential or components

    def up(c: dict[str, Any]) -> bool:
        return c.get("state") == "ready" and (live is None or c.get("active_state") == "active")

    return {"version": __version__, "tee": plan.get("tee"),
            "daemon": daemon, "live": live is not None, "note": note, "boot": state.get("boot") or {},
            "measurement": measurement, "components": components, "ok": bool(judged) and all(up(c) for c in judged)}


def is_measured(measurement: dict[str, Any] | None, component: dict[str, Any]) -> bool:
    """A component is measured when this boot's launch was extended into the
    TPM (and checks out) and the log names the digest it runs."""
    if measurement is None or measurement.get("measured") is not True:
        return False
    logged = measurement.get("components")
    digest = component.get("digest")
    return isinstance(logged, dict) and digest is not None and logged.get(component.get("name")) == digest


def measurement_line(measurement: dict[str, Any] | None) -> str:
    if measurement is None:
        return "measured launch: no measurement recorded yet"
    if measurement.get("measured") is True:
        return (f"measured launch: PCR {measurement.get('pcr')} of TPM {measurement.get('tpm')}: "
                f"{measurement.get('value')} ({measurement.get('eventlog')})")
    why = measurement.get("error") or f"measure.tpm: {measurement.get('tpm')}"
    return f"measured launch: NOT measured ({why}); event log {measurement.get('eventlog')}"


def initdata_line(measurement: dict[str, Any] | None) -> str | None:
    """The initdata binding of this boot (None: not recorded, or not bound by configuration)."""
    initdata = measurement.get("initdata") if measurement is not None else None
    if not isinstance(initdata, dict):
        return None
    if initdata.get("bound") is True:
        return (f"initdata: {initdata.get('digest')} bound into PCR {initdata.get('pcr')}: "
                f"{initdata.get('expected')}")
    why = initdata.get("error") or f"measure.tpm: {measurement.get('tpm') if measurement else None}"
    return f"initdata: NOT bound into PCR {initdata.get('pcr')} ({why}); digest {initdata.get('digest')}"


def format_status(status: dict[str, Any]) -> str:
    daemon = status["daemon"]
    lines = [f"daemon: pid {daemon.get('pid')} {'running' if daemon['running'] else 'not running'}, "
             f"{daemon.get('phase', '?')}, READY {'sent' if daemon.get('ready') else 'not sent'}; "
             f"{daemon.get('status', '')}"]
    if status["note"]:
        lines.append(f"note: {status['note']}")
    header = ("COMPONENT", "UNIT", "STATE", "HEALTH", "RESTARTS", "ACTIVE", "SOURCE", "SIGNED-BY", "IMAGE",
              "LAST ERROR")
    rows = [header]
    for c in status["components"]:
        active = "/".join(x for x in (c.get("active_state"), c.get("sub_state")) if x) or "-"
        name = c["name"] + ("*" if c.get("essential") else "")
        signature = c.get("signature")
        signed_by = str(signature.get("key")) if isinstance(signature, dict) else "-"
        rows.append((name, str(c.get("unit")), str(c.get("state")), str(c.get("health")), str(c.get("restarts", 0)),
                     active, source_label(c.get("source"), c.get("variant"), _requested_by(c)),
                     signed_by, str(c.get("image")), str(c.get("last_error") or "-")))
    lines += text_table(rows)
    lines.append("* essential")
    for c in status["components"]:
        override = c.get("override")
        if isinstance(override, dict) and override.get("accepted") is False:
            lines.append(f"refused override for {c['name']} (asked in the {override.get('requested_by')}): "
                         f"{override.get('requested')}: {override.get('reason')}")
    containers = [(c["name"], c["container"]) for c in status["components"] if isinstance(c.get("container"), dict)]
    if containers:
        lines.append("containers (after the TEE variant; `status --json` for every value):")
        lines += [f"  {name}: {container_summary(container)}" for name, container in containers]
    lines.append(measurement_line(status.get("measurement")))
    if (line := initdata_line(status.get("measurement"))) is not None:
        lines.append(line)
    lines.append(f"podvm-bootstrap {status['version']}, tee: {status.get('tee') or 'unknown'}")
    return "\n".join(lines) + "\n"


def _requested_by(component: dict[str, Any]) -> object:
    override = component.get("override")
    return override.get("requested_by") if isinstance(override, dict) else None


def container_summary(container: dict[str, Any]) -> str:
    """One line of a component's container settings (status --json's
    "container"): the command (or the image's own), then the settings that
    are set; env by name only (its values are in --json)."""
    import shlex

    def words(key: str) -> list[str]:
        value = container.get(key)
        return [str(w) for w in value] if isinstance(value, list) else []

    command = words("command")
    parts = [f"command {shlex.join(command)}" if command else "the image's own entrypoint and command"]
    env = container.get("env")
    if isinstance(env, dict) and env:
        parts.append("env " + " ".join(str(k) for k in env))
    for key in ("network", "pid", "user"):
        if container.get(key):
            parts.append(f"{key} {container[key]}")
    for key in ("privileged", "read_only"):
        if container.get(key) is True:
            parts.append(key.replace("_", "-"))
    for key in ("capabilities", "devices", "volumes"):
        if words(key):
            parts.append(f"{key} " + " ".join(words(key)))
    return one_line("; ".join(parts), 2000)


def status_exit(status: dict[str, Any] | None) -> int:
    return EXIT_OK if status is not None and status["ok"] else EXIT_RUNTIME


def no_state_line(state_dir: Path) -> str:
    return f"no daemon state: {state_dir / STATE_FILE} does not exist or is unreadable (has `run` started?)"


def images_to_verify(paths: Paths) -> list[tuple[str, str]]:
    """(component, image reference) pairs: what the daemon runs, else the baked
    images for this VM's TEE."""
    state = read_state(paths.state_dir)
    if state is not None:
        return [(name, str(entry.get("image"))) for name, entry in state["components"].items()
                if isinstance(entry, dict)]
    from podvm_bootstrap.attest.tee import detect_for_root
    from podvm_bootstrap.config.manifest import load_manifest
    from podvm_bootstrap.config.settings import load_settings
    from podvm_bootstrap.config.variants import resolve_variants

    manifest = load_manifest(paths.components_yaml)
    tee = detect_for_root(load_settings(paths.bootstrap_yaml).tee, paths.root).tee
    return [(c.name, str(c.image)) for c in resolve_variants(manifest, tee).components]


def verify_lines(paths: Paths, images: Any) -> tuple[list[str], bool]:
    from podvm_bootstrap.config.policy import load_policy
    from podvm_bootstrap.images.imageref import parse_reference
    from podvm_bootstrap.images.storage import ImageError

    policy = load_policy(paths.policy_yaml, paths.root)
    lines, all_ok = [], True
    for name, text in images_to_verify(paths):
        try:
            ref = parse_reference(text)
            if ref.digest is None:
                raise ImageError(f"{text} is not pinned by digest")
            verified = images.verify(ref, policy.trust_for(name))
            signed = f", signed by {verified.signature}" if verified.signature is not None else ""
            lines.append(f"ok {name} {ref.pinned} (image {verified.image_id[:12]}{signed})")
        except (ImageError, ValueError, OSError) as exc:  # a malformed store answers as a failed check
            all_ok = False
            lines.append(f"FAILED {name} {text}: {one_line(exc)}")
    return lines, all_ok
