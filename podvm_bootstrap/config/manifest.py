"""components.yaml: the baked component manifest (docs/configuration.md "components.yaml").

Read strictly: every unknown key, wrong type, bad name, unknown or circular
`after` is a ConfigError naming the file and the dotted key. Names and unit
names become container names and file names, so they are held to narrow
grammars rather than escaped later; those rules, and the rules of `after`
across components, are the model's (model.check_components), applied here
once, at load: the later stages rely on the loaded model."""

from __future__ import annotations

import re
from pathlib import Path

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.common.fsutil import read_bounded
from podvm_bootstrap.config.model import (
    PROBE_KINDS,
    TEES,
    Component,
    ContainerSpec,
    Health,
    Manifest,
    Probe,
    Restart,
    Variant,
    check_components,
)
from podvm_bootstrap.config.yamlfile import Section, load_yaml_mapping
from podvm_bootstrap.images.imageref import ImageRef, ReferenceError, parse_reference

MANIFEST_VERSION = 1
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CAPABILITY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VOLUME_OPTIONS = re.compile(r"[A-Za-z0-9]+(?:,[A-Za-z0-9]+)*")

COMPONENT_KEYS = ("image", "variants", "unit", "after", "essential", "ready", "health", "restart",
                  "stop_timeout", "container")
VARIANT_KEYS = ("image", "container")
CONTAINER_KEYS = ("command", "env", "network", "pid", "privileged", "capabilities", "devices",
                  "volumes", "read_only", "user")


MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a baked file; anything larger is not a manifest


def manifest_digest(path: Path) -> str:
    """sha256:HEX of the components.yaml file as baked (its exact bytes), so
    the host side can tell which manifest a pod VM image carries."""
    import hashlib

    try:
        data = read_bounded(path, MAX_MANIFEST_BYTES, lambda why: ConfigError(path, "", why), what="the file",
                            missing_ok=False)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_manifest(path: Path) -> Manifest:
    """Read and validate components.yaml; ConfigError (exit 2) on any problem."""
    top = Section(path, "", load_yaml_mapping(path, missing_ok=False))
    top.only(("version", "components"))
    top.version(MANIFEST_VERSION)
    if not isinstance(top.data.get("components"), dict) or not top.data["components"]:
        raise top.error("components", "expected a non-empty mapping of component name to settings")
    components_sec = top.section("components")
    for name in components_sec.data:
        if not isinstance(name, str):
            raise ConfigError(path, "components", f"component names must be strings, got {name!r}")
    components = tuple(_component(components_sec.section(name), name) for name in components_sec.data)
    # Names, units and `after` across components: the model's one set of rules.
    check_components(components, str(path))
    return Manifest(components=components, source=str(path))


def _image(sec: Section) -> ImageRef:
    image_text = sec.data.get("image")
    if image_text is None:
        raise sec.error("image", "required")
    if not isinstance(image_text, str):
        raise sec.error("image", f"expected an image reference string, got {image_text!r}")
    try:
        return parse_reference(image_text)
    except ReferenceError as exc:
        raise sec.error("image", str(exc)) from None


def _variants(sec: Section) -> tuple[Variant, ...]:
    """`variants`: TEE name -> {image, container}; the container keys given
    are the ones that replace the component's."""
    variants = []
    for tee in sec.data:
        if not isinstance(tee, str) or tee not in TEES:
            raise sec.error(str(tee), f"unknown TEE {tee!r} (known: {', '.join(TEES)})")
        entry = sec.section(tee)
        entry.only(VARIANT_KEYS)
        container = entry.section("container")
        variants.append(Variant(tee=tee, image=_image(entry), container=_container(container),
                                container_keys=tuple(k for k in CONTAINER_KEYS if k in container.data)))
    return tuple(variants)


def _component(sec: Section, name: str) -> Component:
    sec.only(COMPONENT_KEYS)
    image = _image(sec)
    ready = _probe(sec.section("ready")) if sec.data.get("ready") is not None else None
    stop_timeout = sec.duration("stop_timeout", 10.0)
    if stop_timeout <= 0:
        raise sec.error("stop_timeout", "must be greater than zero")
    return Component(
        name=name,
        image=image,
        unit=sec.string("unit", f"{name}.service"),
        after=sec.string_list("after"),
        essential=sec.boolean("essential", False),
        ready=ready,
        health=_health(sec, ready),
        restart=_restart(sec.section("restart")),
        stop_timeout=stop_timeout,
        container=_container(sec.section("container")),
        variants=_variants(sec.section("variants")),
    )


def _probe(sec: Section) -> Probe:
    sec.only((*PROBE_KINDS, "timeout"))
    kinds = [k for k in PROBE_KINDS if k in sec.data]
    if len(kinds) != 1:
        raise ConfigError(sec.path, sec.key, f"expected exactly one of {', '.join(PROBE_KINDS)}, "
                                             f"got {', '.join(kinds) if kinds else 'none'}")
    kind = kinds[0]
    value = sec.data[kind]
    timeout = sec.duration("timeout", Probe.timeout)  # the dataclass default
    if timeout <= 0:
        raise sec.error("timeout", "must be greater than zero")
    target: str | tuple[str, ...]
    if kind in ("unix_socket", "file"):
        target = _absolute_path(sec, kind, value)
    elif kind == "tcp":
        target = _host_port(sec, kind, value)
    elif kind == "exec":
        if not isinstance(value, list) or not value:
            raise sec.error(kind, "expected a non-empty list of strings (the argv)")
        target = sec.string_list(kind)
    else:  # notify
        if value is not True:
            raise sec.error(kind, f"expected true, got {value!r}")
        target = ""
    return Probe(kind=kind, target=target, timeout=timeout)  # type: ignore[arg-type]


def _absolute_path(sec: Section, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or _has_control(value):
        raise sec.error(key, f"expected an absolute path, got {value!r}")
    return value


def _host_port(sec: Section, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise sec.error(key, f"expected \"host:port\", got {value!r}")
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host_ok = len(host) > 2 and re.fullmatch(r"[0-9A-Fa-f:.]+", host[1:-1]) is not None
    else:
        host_ok = re.fullmatch(r"[A-Za-z0-9.-]+", host) is not None
    if not sep or not host_ok or not port.isdigit() or not 0 < int(port) <= 65535:
        raise sec.error(key, f"expected \"host:port\" with a port in 1-65535, got {value!r}")
    return value


def _health(sec: Section, ready: Probe | None) -> Health:
    if sec.data.get("health") is None:
        return Health()
    if ready is None:
        raise sec.error("health", "needs a ready probe (health runs the ready probe)")
    h = sec.section("health")
    h.only(("interval", "timeout", "failures"))
    d = Health()
    interval = h.duration("interval", d.interval)
    timeout = h.duration("timeout", d.timeout)
    for key, value in (("interval", interval), ("timeout", timeout)):
        if value <= 0:
            raise h.error(key, "must be greater than zero")
    return Health(interval=interval, timeout=timeout, failures=h.integer("failures", d.failures, minimum=1))


def _restart(sec: Section) -> Restart:
    sec.only(("delay", "max_delay"))
    d = Restart()
    delay = sec.duration("delay", d.delay)
    max_delay = sec.duration("max_delay", max(d.max_delay, delay))
    if max_delay < delay:
        raise sec.error("max_delay", f"must be at least delay ({delay:g}s)")
    return Restart(delay=delay, max_delay=max_delay)


def _container(sec: Section) -> ContainerSpec:
    sec.only(CONTAINER_KEYS)
    command = sec.string_list("command")
    volumes = sec.string_list("volumes")
    for index, volume in enumerate(volumes):
        _check_volume(sec, f"volumes[{index}]", volume)
    devices = sec.string_list("devices")
    for index, device in enumerate(devices):
        if not device.startswith("/dev/") or _has_space_or_control(device):
            raise sec.error(f"devices[{index}]", f"expected /dev/<device>[:<path>[:<perms>]], got {device!r}")
    capabilities = sec.string_list("capabilities")
    for index, cap in enumerate(capabilities):
        if not CAPABILITY.fullmatch(cap):
            raise sec.error(f"capabilities[{index}]", f"invalid capability name {cap!r}")
    return ContainerSpec(
        command=command,
        env=_env(sec.section("env")),
        network=_word(sec, "network"),
        pid=_word(sec, "pid"),
        privileged=sec.boolean("privileged", False),
        capabilities=capabilities,
        devices=devices,
        volumes=volumes,
        read_only=sec.boolean("read_only", False),
        user=_word(sec, "user"),
    )


def _env(sec: Section) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, value in sec.data.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise sec.error(str(key), f"invalid environment variable name {key!r} "
                                      "(letters, digits and _, not starting with a digit)")
        if not isinstance(value, str):
            raise sec.error(key, f"expected a string value, got {value!r} (quote it in YAML)")
        if "\0" in value:
            raise sec.error(key, "must not contain NUL")
        pairs.append((key, value))
    return tuple(pairs)


def _word(sec: Section, key: str) -> str | None:
    value = sec.string(key, None)
    if value is not None and _has_space_or_control(value):
        raise sec.error(key, f"must not contain whitespace or control characters, got {value!r}")
    return value


def _check_volume(sec: Section, key: str, volume: str) -> None:
    parts = volume.split(":")
    if len(parts) not in (2, 3) or _has_space_or_control(volume):
        raise sec.error(key, f"expected host:container[:options], got {volume!r}")
    for path in parts[:2]:
        if not path.startswith("/") or ".." in path.split("/"):
            raise sec.error(key, f"expected absolute paths without '..', got {volume!r}")
    if len(parts) == 3 and not VOLUME_OPTIONS.fullmatch(parts[2]):
        raise sec.error(key, f"invalid volume options {parts[2]!r}")


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _has_space_or_control(text: str) -> bool:
    return _has_control(text) or any(c.isspace() for c in text)
