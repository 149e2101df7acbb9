"""The boot's stages as the commands share them: read the baked files →
fetch the user-data → provision its files → plan (`run`, `provision`,
`plan`, `render` call the same functions; the daemon then ensures images,
measures, renders units, starts and supervises: daemon.py).

Each stage is I/O at the edge around a pure core module. User-data problems
are logged as one line each and the boot goes on with what is usable; baked
configuration problems raise ConfigError (exit 2).

`read_baked` and `baked_plan` need no policy and no user-data: the daemon
starts the baked defaults' units from them before the fetch (their
processes held at their start gates), with nothing imported that only the
policy's keys (cryptography) or a metadata service (requests) need."""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from podvm_bootstrap.common.errors import BootstrapError, ConfigError, UsageError, UserDataError, one_line
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.model import Manifest, Plan
from podvm_bootstrap.config.settings import Settings, UserDataSettings, load_settings

if TYPE_CHECKING:
    from podvm_bootstrap.attest.tee import TeeChoice
    from podvm_bootstrap.config.policy import Policy
    from podvm_bootstrap.userdata.cloudconfig import UserData
    from podvm_bootstrap.userdata.provision import ProvisionResult

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
    from podvm_bootstrap.userdata.cloudconfig import decode_payload
    raw: bytes | None
    if source.file is not None:
        raw = _read_limited(Path(source.file), settings.max_size)
    else:
        from podvm_bootstrap.userdata.sources import fetch_userdata  # HTTP clients only when a provider is asked

        raw = fetch_userdata(settings, root=paths.root, provider=source.provider,
                             endpoint=source.endpoint, timeout=source.timeout)
    if raw is None:
        return None
    return decode_payload(raw, settings.max_size)


class ChildFetch:
    """A user-data fetch in a child process (a fork of the daemon, before it
    starts any thread of its own): requests, urllib3 and TLS (about 8 MiB
    resident, for a fetch done once a boot) never load in the daemon, and the
    fetch overlaps the daemon's own start-up on another core. The child
    hands back the decoded user-data, "none", or its one-line error."""

    # The fetch ends at its own deadline; past it and this grace, the child is
    # ended: what its deadline cannot cut (a DNS lookup in the C library, a
    # TLS handshake stalled in OpenSSL) never holds the boot.
    GRACE = 5.0

    def __init__(self, pid: int, fd: int, limit: int, deadline: float) -> None:
        self.pid, self.fd, self.limit, self.deadline = pid, fd, limit, deadline

    @classmethod
    def start(cls, paths: Paths, settings: UserDataSettings, source: UserDataSource) -> ChildFetch:
        read_end, write_end = os.pipe()
        deadline = time.monotonic() + (source.timeout or settings.timeout) + cls.GRACE
        pid = os.fork()
        if pid == 0:   # the child: fetch, answer on the pipe, exit without Python's clean-up
            try:
                os.close(read_end)
                _answer(write_end, paths, settings, source)
            finally:
                os._exit(0)
        os.close(write_end)
        return cls(pid, read_end, settings.max_size + 4096, deadline)

    def result(self) -> bytes | None:
        """The child's answer (waits for it): the user-data, None when the
        VM has none; UserDataError (UsageError) as the fetch raised it."""
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= self.limit:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                    raise UserDataError(f"cannot fetch user-data: the fetch was still running {self.GRACE:g}s "
                                        f"after its timeout, and was ended")
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            self.close()
        answer = b"".join(chunks)
        kind, body = answer[:1], answer[1:]
        if kind == b"R" and size <= self.limit:
            return body
        if kind == b"N" and not body:
            return None
        if kind == b"U":
            raise UsageError(body.decode(errors="replace"))
        if kind == b"E":
            raise UserDataError(body.decode(errors="replace"))
        raise UserDataError("the user-data fetch ended without an answer")

    def close(self) -> None:
        """End the child if it still runs (the daemon stops) and reap it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid > 0:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0


def _answer(fd: int, paths: Paths, settings: UserDataSettings, source: UserDataSource) -> None:
    try:
        raw = read_raw_userdata(paths, settings, source)
        message = b"N" if raw is None else b"R" + raw
    except UserDataError as exc:
        message = b"E" + str(exc).encode()
    except UsageError as exc:
        message = b"U" + str(exc).encode()
    except BootstrapError as exc:
        message = b"E" + str(exc).encode()
    except Exception as exc:  # noqa: BLE001 - whatever the fetch met is the user-data's error, never a crash
        message = b"E" + f"cannot fetch: {type(exc).__name__}: {one_line(exc)}".encode()
    view = memoryview(message)
    while view:
        view = view[os.write(fd, view):]


def _read_limited(path: Path, max_size: int) -> bytes:
    """A --user-data FILE: the operator's path (a symbolic link is followed),
    but only a regular file is read, without blocking, and bounded."""
    from podvm_bootstrap.userdata.untrusted_file import read_userdata_file
    data = read_userdata_file(path, max_size, what="user-data file", follow_symlinks=True)
    if data is None:
        raise UserDataError(f"cannot read user-data file {path}: No such file or directory")
    return data


@dataclass(frozen=True)
class Obtained:
    """The user-data of this boot: the raw (decoded) bytes when there are any,
    what parsed of them, and the one-line reason when they are not used."""

    raw: bytes | None = None
    userdata: UserData | None = None
    error: str | None = None


def fetch(paths: Paths, settings: Settings, source: UserDataSource, child: ChildFetch | None = None) -> Obtained:
    """Fetch and parse user-data for a boot; on failure log one line and go on
    with none (the baked defaults)."""
    from podvm_bootstrap.userdata.cloudconfig import parse_userdata
    raw = None
    try:
        raw = child.result() if child is not None else read_raw_userdata(paths, settings.userdata, source)
        if raw is None:
            log.info("no user-data for this VM; using the baked defaults")
            return Obtained()
        userdata = parse_userdata(raw)
    except UserDataError as exc:
        log.error("user-data ignored: %s; going on with the baked defaults", exc)
        return Obtained(raw=raw, error=str(exc))
    for problem in userdata.problems:
        log.error("user-data: %s", problem)
    if userdata.ignored_keys:
        log.info("user-data keys not acted on: %s", ", ".join(userdata.ignored_keys))
    return Obtained(raw=raw, userdata=userdata)


def provision(paths: Paths, settings: Settings, userdata: UserData | None) -> list[ProvisionResult]:
    """Write the user-data's files into the allow-list (under --root): one
    result per entry, written or refused (a refused one is skipped, the rest
    still written); the adaptor's placeholder initdata when the user-data
    (or its absence) carries none."""
    from podvm_bootstrap.userdata.provision import provision_files

    files = userdata.write_files if userdata is not None else ()
    return provision_files(files, settings.provision.allowed_paths, paths.root, placeholder=True)


def initdata_requests(paths: Paths, settings: Settings, userdata: UserData | None, *,
                      provisioned: bool) -> dict[str, object]:
    """The overrides the pod's owner asks for in this boot's initdata ([data]
    "podvm-bootstrap.yaml"). `provisioned` (the daemon, after provisioning):
    read from the initdata file provisioning left under --root, the one whose
    digest is bound at boot; otherwise (`plan`, `render`: no side effects) from
    the content the user-data's write_files would provision there. Anything
    unusable is one error line and no request: the user-data's requests and
    the defaults go on."""
    from podvm_bootstrap.userdata import initdata
    from podvm_bootstrap.userdata.cloudconfig import MAX_FILE_SIZE
    from podvm_bootstrap.userdata.provision import INITDATA_PATH, initdata_entry, read_provisioned

    try:
        if provisioned:
            blob = read_provisioned(paths.root, INITDATA_PATH, MAX_FILE_SIZE)
        else:
            blob = (None if userdata is None else
                    initdata_entry(userdata.write_files, settings.provision.allowed_paths))
        if blob is None:
            return {}
        parsed = initdata.parse_initdata(blob, MAX_FILE_SIZE)
    except UserDataError as exc:
        if provisioned:   # provisioning has said why already
            log.info("no override is read from the initdata: %s", exc)
        else:
            log.error("%s; no override is read from the initdata", exc)
        return {}
    try:
        requests = initdata.image_requests(parsed, settings.userdata.max_size)
    except UserDataError as exc:
        log.error("%s; the initdata asks for no override", exc)
        return {}
    for problem in requests.problems:
        log.error("%s", problem)
    return requests.images


@dataclass(frozen=True)
class Baked:
    """What the image carries, apart from the policy: settings, manifest, and
    this VM's TEE (baked `tee:` or detected)."""

    settings: Settings
    manifest: Manifest
    tee: TeeChoice


def read_baked(paths: Paths, settings: Settings | None = None) -> Baked:
    from podvm_bootstrap.attest.tee import detect_for_root
    from podvm_bootstrap.config.manifest import load_manifest

    if settings is None:
        settings = load_settings(paths.bootstrap_yaml)
    manifest = load_manifest(paths.components_yaml)
    return Baked(settings, manifest, detect_for_root(settings.tee, paths.root))


def baked_plan(baked: Baked) -> Plan | None:
    """The plan with no user-data and no override allowed: each component's
    baked default or variant. None when it cannot be made without the policy
    (a default not pinned by digest: only the policy can allow that)."""
    from podvm_bootstrap.config.planner import make_plan
    from podvm_bootstrap.config.policy import Policy

    try:
        return make_plan(baked.manifest, Policy(), {}, tee=baked.tee.tee)
    except ConfigError:
        return None


@dataclass(frozen=True)
class BootPlan:
    settings: Settings
    userdata: UserData | None
    plan: Plan
    policy: Policy
    raw: bytes | None = None           # the decoded user-data, as fetched (None: there is none)
    userdata_error: str | None = None  # why the user-data is not used, when it is not
    tee_reason: str = ""               # why plan.tee is this boot's TEE
    provisioned: tuple[ProvisionResult, ...] = ()   # with provision_files: one per write_files entry


def plan(paths: Paths, source: UserDataSource, settings: Settings | None = None, *, baked: Baked | None = None,
         provision_files: bool = False, child: ChildFetch | None = None) -> BootPlan:
    """Baked configuration + user-data → the plan: which image runs as each
    component (default, variant or accepted override). With provision_files
    (the daemon), the user-data's files are written first; otherwise no side
    effects. `settings`, `baked`: what the caller has read already; `child`:
    the fetch, when it runs in a child process."""
    from podvm_bootstrap.attest.tee import userdata_tee_notice
    from podvm_bootstrap.config.planner import make_plan
    from podvm_bootstrap.config.policy import load_policy

    if baked is None:
        baked = read_baked(paths, settings)
    settings = baked.settings
    policy = load_policy(paths.policy_yaml, paths.root)   # a baked file's error before any wait on the fetch
    obtained = fetch(paths, settings, source, child)
    provisioned: list[ProvisionResult] = []
    if provision_files:
        provisioned = provision(paths, settings, obtained.userdata)
        for result in provisioned:
            (log.info if result.written else log.error)("provision: %s", result.line())
    overrides = obtained.userdata.images if obtained.userdata is not None else {}
    from_initdata = initdata_requests(paths, settings, obtained.userdata, provisioned=provision_files)
    if obtained.userdata is not None and (notice := userdata_tee_notice(obtained.userdata)):
        log.warning("%s", notice)
    tee = baked.tee
    boot_plan = make_plan(baked.manifest, policy, overrides, tee=tee.tee, initdata_overrides=from_initdata)
    log.info("TEE: %s (%s)", tee.tee, tee.reason)
    for planned in boot_plan.components:
        if planned.variant is not None:
            log.info("%s: %s variant, image %s (%s)", planned.name, planned.variant, planned.image, planned.source)
        if planned.override is not None and planned.override.accepted:
            log.info("override for %s accepted (asked in the %s): %s; image %s", planned.name,
                     planned.override.requested_by, planned.override.reason, planned.image)
    for error in boot_plan.errors:
        log.error("%s", error)
    return BootPlan(settings=settings, userdata=obtained.userdata, plan=boot_plan, policy=policy,
                    raw=obtained.raw, userdata_error=obtained.error, tee_reason=tee.reason,
                    provisioned=tuple(provisioned))
