"""The pod VM booted for real: the image of image/build.py under systemd-nspawn.

Each boot stacks a fresh, throw-away upper directory over the cached image
layers (an overlay mount), so every VM starts pristine and the image is never
changed. Files can be placed before boot (user-data, settings) and after.
The booted systemd is reached with nsenter into its PID 1 (the direct child of
systemd-nspawn), and a VM is always ended by SIGKILL of that PID 1 (the kernel
then ends every process of its PID namespace) and of the nspawn PID.

    vm = boot(ensure_image(), workdir, userdata=b"#cloud-config\\n...")
    vm.run(["systemctl", "is-active", "kata-agent"]).stdout
    vm.destroy()
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.bed.proc import BedError, Service, flock_within, wait_until
from tests.bed.registry import Registry, mirror_conf

REPO = Path(__file__).resolve().parents[2]
VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USERDATA_FILE = "/media/cidata/user-data"
BOOTSTRAP_YAML = "/etc/podvm-bootstrap/bootstrap.yaml"
WAIT_STATES = {"running": ("running", "degraded"),
               "started": ("starting", "running", "degraded", "maintenance", "stopping")}
BED_REGISTRIES_CONF = "/etc/containers/registries.conf.d/60-podvm-test-bed-insecure.conf"


@dataclass(frozen=True)
class BuiltImage:
    lowerdirs: list[str]           # overlay lower directories, top first
    defaults: dict[str, str]       # component -> baked default image (name@digest)
    mirror_conf: str               # the registries.conf drop-in pointing at the stand-in registry
    standins: str                  # directory of the stand-in OCI layouts

    @property
    def default_digests(self) -> dict[str, str]:
        return {c: ref.split("@", 1)[1] for c, ref in self.defaults.items()}


def ensure_image(timeout: float = 900) -> BuiltImage:
    """Build the image or reuse the cached one (image/build.py)."""
    out = subprocess.run([sys.executable, str(REPO / "image" / "build.py")], stdout=subprocess.PIPE,
                         stderr=None, text=True, timeout=timeout, cwd=REPO)
    if out.returncode != 0:
        raise BedError(f"image/build.py failed with {out.returncode} (its output is above)")
    info = json.loads(out.stdout)
    return BuiltImage(info["lowerdirs"], info["defaults"], info["mirror_conf"], info["standins"])


@dataclass(eq=False)
class PodVM:
    """A booted pod VM. `run` executes a command inside (all namespaces of the
    VM, a clean environment); paths given to the file helpers are the VM's."""

    name: str
    workdir: Path
    image: BuiltImage
    nspawn: Service | None = None
    pid1: int | None = None
    metadata_url: str | None = None
    metadata_server: object = None   # tests/fakes/metadata.py's server (its .requests)
    lock: object = None              # the machine-wide VM lock held while booted
    _cleanup: ExitStack = field(default_factory=ExitStack)

    @property
    def merged(self) -> Path:
        return self.workdir / "merged"

    # --- running things inside -------------------------------------------------
    def run(self, cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 60,
            input: bytes | str | None = None, text: bool = True) -> subprocess.CompletedProcess:
        """Run cmd in the VM (a string goes to `sh -c`). check=True raises
        BedError with the output when it exits non-zero."""
        if self.pid1 is None:
            raise BedError(f"{self.name} is not running")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if text and isinstance(input, bytes):
            input = input.decode()
        full = ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={VM_PATH}", "LANG=C.UTF-8",
                "HOME=/root", *argv]
        out = subprocess.run(full, capture_output=True, text=text, timeout=timeout, input=input)
        if check and out.returncode != 0:
            raise BedError(f"in {self.name}: {shlex.join(argv)} exited {out.returncode}: "
                           f"{out.stdout!s:.2000} {out.stderr!s:.2000}")
        return out

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run(["podman", *args], check=check, timeout=timeout)

    def journal(self, unit: str | None = None, *args: str) -> str:
        """The VM's journal (of one unit when given), short-monotonic format."""
        sel = ["-u", unit] if unit else []
        return self.run(["journalctl", "--no-pager", "-o", "short-monotonic", *sel, *args], check=False).stdout

    def journal_safe(self) -> str:
        """The whole journal plus failed units, for a failed test's report;
        never raises."""
        try:
            failed = self.systemctl("--failed", check=False).stdout
            return f"{failed}\n{self.journal()}"[-200_000:]
        except Exception as exc:  # noqa: BLE001 - the report must not hide the test's own failure
            return f"(journal unavailable: {exc})"

    def wait_until(self, cmd: Sequence[str] | str, timeout: float = 60, what: str | None = None) -> None:
        """Wait (bounded) until cmd exits 0 inside the VM."""
        wait_until(lambda: self.run(cmd, check=False, timeout=10).returncode == 0, timeout,
                   what or f"`{cmd if isinstance(cmd, str) else shlex.join(cmd)}` in {self.name}", interval=0.2)

    def unit_state(self, unit: str) -> str:
        return self.systemctl("show", "-P", "ActiveState", unit, check=False).stdout.strip()

    # --- files -------------------------------------------------------------------
    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a file in the VM (parents created). Before boot it lands in
        the VM's own upper layer; once booted it is written from inside, so
        that /run and other mounts of the VM are honoured."""
        payload = data.encode() if isinstance(data, str) else data
        if self.pid1 is None:
            target = self.merged / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
            target.chmod(mode)
            return
        quoted = shlex.quote(path)
        self.run(f"mkdir -p \"$(dirname {quoted})\" && cat > {quoted} && chmod {mode:o} {quoted}",
                 input=payload, text=False)

    def read_file(self, path: str) -> bytes:
        return self.run(["cat", path], text=False).stdout

    # --- lifecycle ---------------------------------------------------------------
    def destroy(self) -> None:
        """SIGKILL the VM's PID 1 and the nspawn PID started here, then unmount
        and remove its throw-away layer. Safe to call twice."""
        if self.pid1 is None and self.nspawn is not None:  # destroyed while booting
            self.pid1 = _container_init(self.nspawn.pid)
        if self.pid1 is not None:
            _kill(self.pid1)
            self.pid1 = None
        if self.nspawn is not None:
            try:
                self.nspawn.popen.wait(10)
            except subprocess.TimeoutExpired:
                _kill(self.nspawn.pid)
                self.nspawn.popen.wait(10)
            self.nspawn = None
        self._cleanup.close()
        _unmount(self.merged)
        if self.workdir.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.workdir)], check=False)
        if self.lock is not None:
            self.lock.close()  # releases the flock
            self.lock = None
            _running_here.remove(self.name)
        if self in _live:
            _live.remove(self)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _unmount(path: Path) -> None:
    deadline = time.monotonic() + 10
    while os.path.ismount(path):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        if time.monotonic() > deadline:
            subprocess.run(["umount", "--lazy", str(path)], check=False)
            return
        time.sleep(0.2)


_running_here: list[str] = []  # the VM this process has booted, if any
_live: list[PodVM] = []


def _destroy_on_sigterm() -> None:
    """`timeout` and CI runners end a test run with SIGTERM, which Python does
    not turn into teardown: destroy this process's VM first, then die of it."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum, frame):
        for vm in list(_live):
            vm.destroy()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, the orphan check remains
        pass


def _take_vm_lock(name: str, timeout: float):
    """One booted VM per machine at a time: VMs share the machine's network,
    so the components' fixed loopback ports (15150) would collide between
    concurrent test sessions. Waits (bounded) for another session's VM; a
    second VM of this process is a test bug, reported at once."""
    if _running_here:
        raise BedError(f"only one test bed VM at a time: {_running_here[0]} is still running "
                       f"(do not mix the module-scoped pod_vm with boot_pod_vm in one module)")
    path = Path(os.environ.get("PODVM_VM_LOCK", "/run/podvm-bootstrap-test-bed.vm.lock"))
    f = open(path, "a+")  # noqa: SIM115 - kept open: it holds the lock for the VM's life
    if not flock_within(f, timeout):
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise BedError(f"another test bed VM (test process {holder}) held {path} for {timeout:.0f}s")
    f.seek(0)
    _refuse_orphan(f.read().split())
    _record(f, os.getpid())
    _running_here.append(name)
    _destroy_on_sigterm()
    return f


def _record(lock, test_pid: int, pid1: int | None = None) -> None:
    """The lock file says which test process runs which VM PID 1."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"{test_pid} {pid1 or ''}\n")
    lock.flush()


def _refuse_orphan(recorded: list[str]) -> None:
    """A test process killed outright leaves its VM running (and the lock
    free): refuse to boot next to it, and say how to end it."""
    if len(recorded) != 2 or not all(x.isdigit() for x in recorded):
        return
    test_pid, pid1 = map(int, recorded)
    if Path(f"/proc/{test_pid}").exists() or not Path(f"/proc/{pid1}").exists():
        return
    comm = Path(f"/proc/{pid1}/comm").read_text().strip()
    if comm == "systemd":
        raise BedError(f"a test bed VM of a test process that is gone ({test_pid}) still runs "
                       f"(its PID 1 is {pid1}); end it with `kill -9 {pid1}` and unmount its overlay")
    if comm.startswith("qemu-system"):  # a real VM (tests/bed/qemu.py) records QEMU's PID
        raise BedError(f"a test bed QEMU VM of a test process that is gone ({test_pid}) still runs "
                       f"(QEMU's PID is {pid1}); end it with `kill -9 {pid1}` (and its swtpm)")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def _is_namespace_init(pid: int) -> bool:
    """PID 1 of its own PID namespace (its NSpid line ends in 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
    return len(nspid) > 1 and nspid[-1] == "1"


def descendants(pid: int, generations: int = 3) -> list[int]:
    """The processes below `pid`, generation by generation (at most `generations` deep)."""
    found: list[int] = []
    generation = [pid]
    for _ in range(generations):
        generation = [child for parent in generation for child in _children(parent)]
        found += generation
    return found


def _container_init(nspawn_pid: int) -> int | None:
    """The VM's PID 1 under systemd-nspawn: not nspawn's first child (for a
    moment that is its intermediate process, which exits), but the
    descendant that is PID 1 of the new PID namespace
    (nspawn -> (outer child) -> init)."""
    return next((pid for pid in descendants(nspawn_pid) if _is_namespace_init(pid)), None)


def _bootstrap_yaml(vm: PodVM, provider: str, endpoint: str | None, timeout: str | None) -> str:
    """The baked (test bed) bootstrap.yaml with the user-data source of this boot."""
    path = vm.merged / BOOTSTRAP_YAML.lstrip("/")
    settings = yaml.safe_load(path.read_text()) or {}
    userdata = settings.setdefault("userdata", {})
    userdata["provider"] = provider
    if endpoint:
        userdata.setdefault("endpoints", {})[provider] = endpoint
    if timeout:
        userdata["timeout"] = timeout
    return "# test bed: user-data source of this boot\n" + yaml.safe_dump(settings, sort_keys=False)


def _registries_conf(image: BuiltImage, registry: Registry | None, insecure: Sequence[str]) -> dict[str, str]:
    files = {}
    if registry is not None:
        files[image.mirror_conf] = mirror_conf(registry.host)
    if insecure:
        files[BED_REGISTRIES_CONF] = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in insecure)
    return files


def boot(image: BuiltImage, workdir: Path, *, name: str | None = None, userdata: bytes | str | None = None,
         metadata: str | None = None, metadata_options: dict | None = None,
         provider: str | None = None, userdata_timeout: str | None = "20s",
         registry: Registry | None = None, insecure_registries: Sequence[str] = (),
         files: dict[str, bytes | str] | None = None, wait: str | None = "running",
         boot_timeout: float = 90, lock_timeout: float = 900) -> PodVM:
    """Boot a pod VM and return it.

    wait       "running": until `systemctl is-system-running` says running or
               degraded (every start job done, podvm-bootstrap's included:
               with Type=notify that is its READY=1, or its failure);
               "started": until systemd answers at all (starting too: for
               tests that watch a start-up that may never finish); None: no wait

    userdata   bytes/str written to /media/cidata/user-data (the file provider)
    metadata   a cloud ("aws", "azure", "gcp", "alibaba"): serve `userdata`
               from a fake metadata service on 127.0.0.1 instead (in this
               process, tests/fakes/metadata.py) and point the VM's provider at
               it; metadata_options go to running_metadata_server
    provider   force userdata.provider (default: "file" with userdata,
               the cloud with metadata, "none" without either)
    registry   the registry the VM's quay.io/confidential-containers mirror
               points at (the stand-ins); insecure_registries: more hosts
               (e.g. an auth_registry.host) the VM may pull from over http
    files      {path in the VM: content} placed before boot (e.g. a policy
               variant); written after the other settings, so they win
    Only one VM runs on a machine at a time (a lock, waited for at most
    lock_timeout seconds): VMs share the machine's network.
    """
    name = name or f"podvm-{os.getpid()}-{workdir.name}"
    if workdir.exists():
        raise BedError(f"the VM's work directory {workdir} exists already (it is removed with the VM)")
    vm = PodVM(name=name, workdir=workdir, image=image)
    vm.lock = _take_vm_lock(name, lock_timeout)
    _live.append(vm)
    try:
        for d in ("upper", "work", "merged"):
            (workdir / d).mkdir(parents=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={':'.join(image.lowerdirs)},upperdir={workdir / 'upper'},"
                        f"workdir={workdir / 'work'}", str(vm.merged)], check=True)
        before: dict[str, bytes | str] = dict(_registries_conf(image, registry, insecure_registries))
        if metadata:
            from tests.fakes.metadata import running_metadata_server

            raw = userdata.encode() if isinstance(userdata, str) else userdata
            fake = vm._cleanup.enter_context(running_metadata_server(metadata, user_data=raw,
                                                                     **(metadata_options or {})))
            vm.metadata_url, vm.metadata_server = fake.url, fake
            before[BOOTSTRAP_YAML] = _bootstrap_yaml(vm, provider or metadata, fake.url, userdata_timeout)
        else:
            if userdata is not None:
                before[USERDATA_FILE] = userdata
            before[BOOTSTRAP_YAML] = _bootstrap_yaml(vm, provider or ("file" if userdata is not None else "none"),
                                                     None, userdata_timeout)
        before.update(files or {})
        for path, content in before.items():
            vm.write_file(path, content)
        vm.nspawn = Service(f"systemd-nspawn {name}", [
            "systemd-nspawn", "-D", str(vm.merged), "-M", name, "--register=no", "--keep-unit",
            "--capability=all", "--console=read-only", "--boot"], workdir / "console.log")
        wait_until(lambda: _container_init(vm.nspawn.pid) is not None or not vm.nspawn.alive(), 30,
                   f"the PID 1 of {name}", interval=0.05)
        if not vm.nspawn.alive():
            raise BedError(f"systemd-nspawn exited with {vm.nspawn.popen.returncode}: {vm.nspawn.log_tail()}")
        vm.pid1 = _container_init(vm.nspawn.pid)
        _record(vm.lock, os.getpid(), vm.pid1)
        if wait:
            states = WAIT_STATES[wait]
            try:
                wait_until(lambda: _system_state(vm) in states, boot_timeout, f"{name} to be {wait}", interval=0.2)
            except BedError as exc:
                raise BedError(f"{exc}; its failed units and journal end:\n{vm.journal_safe()[-4000:]}") from None
        return vm
    except BaseException:
        vm.destroy()
        raise


def _system_state(vm: PodVM) -> str:
    if vm.nspawn is None or not vm.nspawn.alive():
        raise BedError(f"{vm.name} stopped while booting: {vm.nspawn.log_tail() if vm.nspawn else ''}")
    return vm.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()


@contextmanager
def booted(image: BuiltImage, workdir: Path, **options) -> Iterator[PodVM]:
    """boot() for the duration of a block; always destroyed after."""
    vm = boot(image, workdir, **options)
    try:
        yield vm
    finally:
        vm.destroy()
