"""bootstrap.yaml: the daemon's baked settings, every key with a default."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from podvm_bootstrap.config.model import TEE_CHOICES
from podvm_bootstrap.config.yamlfile import Section, load_yaml_mapping

# `measure.tpm`: auto | none | device:PATH | swtpm:host=HOST,port=PORT | mssim:...
_HOST_PORT = re.compile(r"host=([A-Za-z0-9.:\-\[\]]+),port=([0-9]{1,5})")


@dataclass(frozen=True)
class TpmSetting:
    """`measure.tpm`, parsed: kind auto | none | tcti (with name and conf)."""

    kind: str
    name: str = ""
    conf: str = ""

    def __str__(self) -> str:
        return f"{self.name}:{self.conf}" if self.kind == "tcti" else self.kind


def parse_tpm_setting(text: str) -> TpmSetting:
    """Validate `measure.tpm` (ValueError with the reason)."""
    if text in ("auto", "none"):
        return TpmSetting(text)
    name, sep, conf = text.partition(":")
    if name == "device" and sep:
        if not conf.startswith("/") or any(c in conf for c in " ,\n\t"):
            raise ValueError(f"device: needs an absolute device path, got {text!r}")
        return TpmSetting("tcti", name, conf)
    if name in ("swtpm", "mssim") and sep:
        match = _HOST_PORT.fullmatch(conf)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"{name}: needs host=HOST,port=PORT, got {text!r}")
        return TpmSetting("tcti", name, conf)
    raise ValueError(f"expected auto, none, device:PATH or swtpm:host=HOST,port=PORT, got {text!r}")


PROVIDERS = ("azure", "aws", "gcp", "alibaba")
PROVIDER_CHOICES = ("auto", *PROVIDERS, "file", "none")

DEFAULT_ENDPOINTS: Mapping[str, str] = MappingProxyType({
    "azure": "http://169.254.169.254",
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "alibaba": "http://100.100.100.200",
})

DEFAULT_ALLOWED_PATHS = (
    "/run/peerpod/aa.toml",
    "/run/peerpod/cdh.toml",
    "/run/peerpod/apf.json",
    "/run/peerpod/auth.json",
    "/run/peerpod/initdata",
    "/run/peerpod/scratch-space.marker",
)


@dataclass(frozen=True)
class UserDataSettings:
    provider: str = "auto"
    timeout: float = 180.0
    max_size: int = 256 * 1024
    file: str = "/media/cidata/user-data"
    endpoints: Mapping[str, str] = field(default_factory=lambda: DEFAULT_ENDPOINTS)


@dataclass(frozen=True)
class ProvisionSettings:
    allowed_paths: tuple[str, ...] = DEFAULT_ALLOWED_PATHS


@dataclass(frozen=True)
class RuntimeSettings:
    """How the daemon reaches podman and paces itself (docs/configuration.md "bootstrap.yaml")."""

    podman_socket: str = "/run/podman/podman.sock"
    pull_timeout: float = 300.0
    pull_retries: int = 5
    pull_backoff: float = 1.0            # first wait between pull attempts ...
    pull_backoff_max: float = 30.0       # ... doubling up to this (jittered)
    auth_file: str = "/run/peerpod/auth.json"  # registry credentials (containers-auth.json)
    job_timeout: float = 120.0           # a systemd start/stop job must finish within this
    crash_loop_restarts: int = 5         # this many restarts of a component ...
    crash_loop_window: float = 300.0     # ... within this window is a crash loop


DEFAULT_EVENTLOG = "/run/attestation-agent/eventlog"   # the attestation agent's own runtime event log


@dataclass(frozen=True)
class MeasureSettings:
    """Measured launch: the TPM (auto | none | a TCTI), the PCR the launch set
    is extended into, the event log its records are appended to (as the pod
    VM sees it; under --root), and the PCR the initdata digest is bound into
    (None: not bound)."""

    tpm: str = "auto"
    pcr: int = 23
    eventlog: str = DEFAULT_EVENTLOG
    initdata_pcr: int | None = 8


@dataclass(frozen=True)
class Settings:
    userdata: UserDataSettings = field(default_factory=UserDataSettings)
    provision: ProvisionSettings = field(default_factory=ProvisionSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    tee: str = "auto"  # auto (detect) | none | a TEE name (podvm_bootstrap.config.model.TEES)


def endpoint_ok(url: str) -> bool:
    """A metadata service base URL: http(s), a host, no query or fragment
    (the providers append their own paths and queries)."""
    if not isinstance(url, str) or not url.isprintable() or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number within 0..65535
        host = parts.hostname  # urlsplit itself refuses "http://[::1" with ValueError
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(host) and port != 0
            and not parts.query and not parts.fragment)


def load_settings(path: Path) -> Settings:
    """Read bootstrap.yaml; a missing file means every default."""
    top = Section(path, "", load_yaml_mapping(path, missing_ok=True))
    top.only(("userdata", "provision", "runtime", "measure", "tee"))
    return Settings(
        userdata=_userdata(top.section("userdata")),
        provision=_provision(top.section("provision")),
        runtime=_runtime(top.section("runtime")),
        measure=_measure(top.section("measure")),
        tee=top.string("tee", "auto", choices=TEE_CHOICES),
    )


def _userdata(sec: Section) -> UserDataSettings:
    sec.only(("provider", "timeout", "max_size", "file", "endpoints"))
    d = UserDataSettings()
    endpoints = dict(DEFAULT_ENDPOINTS)
    eps = sec.section("endpoints")
    eps.only(PROVIDERS)
    for name in PROVIDERS:
        url = eps.string(name, None)
        if url is not None:
            if not endpoint_ok(url):
                raise eps.error(name, f"expected an http:// or https:// URL with no query, got {url!r}")
            endpoints[name] = url.rstrip("/")
    timeout = sec.duration("timeout", d.timeout)
    if timeout <= 0:
        raise sec.error("timeout", "must be greater than zero")
    file = sec.string("file", d.file)
    if not file.startswith("/"):
        raise sec.error("file", f"must be an absolute path, got {file!r}")
    return UserDataSettings(
        provider=sec.string("provider", d.provider, choices=PROVIDER_CHOICES),
        timeout=timeout,
        max_size=sec.size("max_size", d.max_size),
        file=file,
        endpoints=MappingProxyType(endpoints),
    )


def _provision(sec: Section) -> ProvisionSettings:
    sec.only(("allowed_paths",))
    paths = sec.string_list("allowed_paths", DEFAULT_ALLOWED_PATHS)
    for index, p in enumerate(paths):
        if not p.startswith("/") or any(part in ("..", ".") for part in p.split("/")) or p.endswith("/"):
            raise sec.error(f"allowed_paths[{index}]", f"must be a normalized absolute file path, got {p!r}")
    return ProvisionSettings(allowed_paths=paths)


def _runtime(sec: Section) -> RuntimeSettings:
    sec.only(("podman_socket", "pull_timeout", "pull_retries", "pull_backoff", "pull_backoff_max", "auth_file",
              "job_timeout", "crash_loop_restarts", "crash_loop_window"))
    d = RuntimeSettings()
    durations = {key: sec.duration(key, getattr(d, key))
                 for key in ("pull_timeout", "pull_backoff", "pull_backoff_max", "job_timeout", "crash_loop_window")}
    for key, value in durations.items():
        if value <= 0:
            raise sec.error(key, "must be greater than zero")
    if durations["pull_backoff_max"] < durations["pull_backoff"]:
        raise sec.error("pull_backoff_max", "must not be less than pull_backoff")
    for key in ("podman_socket", "auth_file"):
        path = sec.string(key, getattr(d, key))
        if not path.startswith("/"):
            raise sec.error(key, f"must be an absolute path, got {path!r}")
    return RuntimeSettings(
        podman_socket=sec.string("podman_socket", d.podman_socket),
        pull_retries=sec.integer("pull_retries", d.pull_retries),
        auth_file=sec.string("auth_file", d.auth_file),
        crash_loop_restarts=sec.integer("crash_loop_restarts", d.crash_loop_restarts, minimum=1),
        **durations,
    )


def _measure(sec: Section) -> MeasureSettings:
    sec.only(("tpm", "pcr", "eventlog", "initdata_pcr"))
    d = MeasureSettings()
    tpm = sec.string("tpm", d.tpm)
    try:
        parse_tpm_setting(tpm)
    except ValueError as exc:
        raise sec.error("tpm", str(exc)) from None
    pcr = sec.integer("pcr", d.pcr)
    if pcr > 23:
        raise sec.error("pcr", f"a PCR index is 0 to 23, got {pcr}")
    eventlog = sec.string("eventlog", d.eventlog)
    if not eventlog.startswith("/") or eventlog.endswith("/") or any(part in ("..", ".")
                                                                      for part in eventlog.split("/")):
        raise sec.error("eventlog", f"must be a normalized absolute file path, got {eventlog!r}")
    initdata_pcr: int | None = d.initdata_pcr
    if sec.data.get("initdata_pcr") == "none":
        initdata_pcr = None
    elif isinstance(sec.data.get("initdata_pcr"), str):
        raise sec.error("initdata_pcr", f"expected a PCR index (0 to 23) or none, got {sec.data['initdata_pcr']!r}")
    else:
        initdata_pcr = sec.integer("initdata_pcr", 8)
        if initdata_pcr > 23:
            raise sec.error("initdata_pcr", f"a PCR index is 0 to 23, or none, got {initdata_pcr}")
        if initdata_pcr == pcr:
            raise sec.error("initdata_pcr", f"must not be measure.pcr ({pcr}): the launch set's register "
                                            "must read zero before its first record")
    return MeasureSettings(tpm=tpm, pcr=pcr, eventlog=eventlog, initdata_pcr=initdata_pcr)
