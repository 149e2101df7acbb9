"""The boot's stages as the commands share them: fetch → provision → resolve.

Each stage is I/O at the edge around a pure core module. User-data problems
are logged as one line each and the boot goes on with what is usable; baked
configuration problems raise ConfigError (exit 2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from podvm_bootstrap.cloudconfig import UserData, decode_payload, parse_userdata
from podvm_bootstrap.errors import UserDataError
from podvm_bootstrap.log import get_logger
from podvm_bootstrap.paths import Paths
from podvm_bootstrap.model import Plan
from podvm_bootstrap.settings import Settings, UserDataSettings, load_settings
from podvm_bootstrap.userdata import fetch_userdata

log = get_logger("stages")


@dataclass(frozen=True)
class UserDataSource:
    """Where the user-data comes from: a file given on the command line, or a
    provider (None: bootstrap.yaml's) with an optional endpoint and timeout."""

    file: str | None = None
    provider: str | None = None
    endpoint: str | None = None
    timeout: float | None = None


def read_raw_userdata(paths: Paths, settings: UserDataSettings, source: UserDataSource) -> bytes | None:
    """The decoded user-data, or None when this VM has none. UserDataError when
    it cannot be had (unreachable, oversize, undecodable)."""
    if source.file is not None:
        raw = _read_limited(Path(source.file), settings.max_size)
    else:
        raw = fetch_userdata(settings, root=paths.root, provider=source.provider,
                             endpoint=source.endpoint, timeout=source.timeout)
    if raw is None:
        return None
    return decode_payload(raw, settings.max_size)


def _read_limited(path: Path, max_size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(max_size + 1)
    except OSError as exc:
        raise UserDataError(f"cannot read user-data file {path}: {exc.strerror or exc}") from None
    if len(data) > max_size:
        raise UserDataError(f"user-data file {path} is larger than max_size ({max_size} bytes)")
    return data


def obtain_userdata(paths: Paths, settings: Settings, source: UserDataSource) -> UserData | None:
    """Fetch and parse user-data for a boot; on failure log one line and go on
    with none (the baked defaults)."""
    try:
        raw = read_raw_userdata(paths, settings.userdata, source)
        if raw is None:
            log.info("no user-data for this VM; using the baked defaults")
            return None
        userdata = parse_userdata(raw)
    except UserDataError as exc:
        log.error("user-data ignored: %s", exc)
        return None
    for problem in userdata.problems:
        log.error("user-data: %s", problem)
    if userdata.ignored_keys:
        log.info("user-data keys not acted on: %s", ", ".join(userdata.ignored_keys))
    return userdata


@dataclass(frozen=True)
class Resolved:
    settings: Settings
    userdata: UserData | None
    plan: Plan


def resolve(paths: Paths, source: UserDataSource) -> Resolved:
    """Baked configuration + user-data → the plan (no side effects)."""
    from podvm_bootstrap.manifest import load_manifest
    from podvm_bootstrap.planner import make_plan
    from podvm_bootstrap.policy import load_policy

    settings = load_settings(paths.bootstrap_yaml)
    manifest = load_manifest(paths.components_yaml)
    policy = load_policy(paths.policy_yaml)
    userdata = obtain_userdata(paths, settings, source)
    overrides = userdata.images if userdata is not None else {}
    plan = make_plan(manifest, policy, overrides)
    for error in plan.errors:
        log.error("%s", error)
    return Resolved(settings=settings, userdata=userdata, plan=plan)
