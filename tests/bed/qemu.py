"""The pod VM as a real VM: the disk of image/disk.py booted under QEMU the
way the cloud-api-adaptor's libvirt provider boots a pod VM.

- the disk: a throw-away qcow2 overlay over the cached disk.qcow2 (a pristine
  VM each boot, nothing copied), as virtio-blk; direct kernel boot with the
  kernel, initramfs and command line (the store's verity root hash) the
  build wrote beside it;
- user-data: a `cidata` ISO9660 volume (genisoimage: user-data, meta-data) as
  a second virtio disk, which the image mounts at /media/cidata;
- a vTPM: one `swtpm socket --tpm2` per VM on a unix socket, behind QEMU's
  tpm-crb device (the guest's /dev/tpmrm0);
- no network (`-nic none`), unless the boot is given a registry: then QEMU's
  user-mode network, restricted (`restrict=on`: the guest reaches neither the
  host nor beyond), with one forward, 10.0.2.100:5000 (the disk's mirror of
  quay.io/confidential-containers) to that registry on the host's loopback,
  through guestfwd_relay.py, one process per guest connection;
- the serial console to console.log; commands run by the image's test agent
  on the virtio-serial port org.podvm.testbed.agent (one JSON line each way);
- KVM when a probe guest prints its kernel's messages within seconds, else
  TCG (`-accel tcg,thread=multi`); PODVM_QEMU_ACCEL=kvm|tcg skips the probe.

The machine-wide VM lock (tests/bed/vm.py) is held for the VM's whole life;
QEMU and swtpm are stopped by their PIDs.

    disk = ensure_disk()
    with booted_qemu(disk, workdir, userdata=MINIMAL_USERDATA) as vm:
        vm.run(["systemctl", "is-active", "kata-agent"]).stdout
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.bed import vm as nspawn_vm
from tests.bed.proc import BedError, Service, wait_until
from tests.bed.registry import Registry

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
AGENT_PORT = "org.podvm.testbed.agent"
# The guest address of the registry: what image/disk.py's mirror (its
# GUEST_REGISTRY) points the disk's quay.io/confidential-containers at.
GUEST_REGISTRY = ("10.0.2.100", 5000)
RELAY = Path(__file__).resolve().with_name("guestfwd_relay.py")
PROBE_TIMEOUT = 15.0
VM_PATH = nspawn_vm.VM_PATH


@dataclass(frozen=True)
class BuiltDisk:
    dir: Path
    raw: Path
    qcow2: Path
    kernel: Path
    initrd: Path
    cmdline: str
    partitions: dict[str, dict[str, int]]  # name -> {"offset", "size"} in bytes
    defaults: dict[str, str]               # component -> baked default image (name@digest)

    @property
    def default_digests(self) -> dict[str, str]:
        return {c: ref.split("@", 1)[1] for c, ref in self.defaults.items()}

    def debugfs(self, partition: str, request: str) -> str:
        """debugfs (read-only) on one of the disk's ext4 partitions, in place."""
        device = f"{self.raw}?offset={self.partitions[partition]['offset']}"
        out = subprocess.run(["debugfs", "-R", request, device], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise BedError(f"debugfs -R {request!r} {device}: {out.stderr.strip()}")
        return out.stdout

    def baked_file(self, path: str) -> str:
        """A file of the disk's root filesystem, e.g. /etc/podvm-bootstrap/components.lock.json."""
        return self.debugfs("podvm-root", f"cat {path}")

    def store_offset(self, path: str) -> int:
        """The disk offset of the first data byte of `path` (relative to the
        store's root) in the verity-protected store partition."""
        blocks = self.debugfs("podvm-store", f"blocks {path}").split()
        if not blocks:
            raise BedError(f"{path} has no data block in the store")
        return self.partitions["podvm-store"]["offset"] + int(blocks[0]) * 4096


def ensure_disk(timeout: float = 1800) -> BuiltDisk:
    """Build the disk or reuse the cached one (image/disk.py)."""
    out = subprocess.run([sys.executable, str(REPO / "image" / "disk.py")], stdout=subprocess.PIPE,
                         stderr=None, text=True, timeout=timeout, cwd=REPO)
    if out.returncode != 0:
        raise BedError(f"image/disk.py failed with {out.returncode} (its output is above)")
    info = json.loads(out.stdout)
    return BuiltDisk(Path(info["dir"]), Path(info["raw"]), Path(info["qcow2"]), Path(info["kernel"]),
                     Path(info["initrd"]), info["cmdline"], info["partitions"], info["defaults"])


_accel: list[str] = []


def accelerator(disk: BuiltDisk, workdir: Path) -> str:
    """'kvm' when a KVM guest gets through its kernel's start within
    PROBE_TIMEOUT seconds (on some nested machines /dev/kvm answers but a
    guest hangs after its first line), else 'tcg'. Probed once a process."""
    forced = os.environ.get("PODVM_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if _accel:
        return _accel[0]
    found = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        workdir.mkdir(parents=True, exist_ok=True)
        console = workdir / "kvm-probe.log"
        # No root: the kernel panics once it has brought the machine up, and
        # -no-reboot turns the panic's reboot into QEMU's exit.
        probe = Service("qemu-kvm-probe", [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "512", "-nodefaults",
                                           "-display", "none", "-no-reboot", "-kernel", str(disk.kernel),
                                           "-append", "console=ttyS0 panic=-1", "-serial", f"file:{console}"],
                        workdir / "kvm-probe.qemu.log")
        try:
            wait_until(lambda: "Kernel panic" in console.read_text(errors="replace") or not probe.alive(),
                       PROBE_TIMEOUT, "the KVM probe guest", interval=0.1)
            if "Kernel panic" in console.read_text(errors="replace"):
                found = "kvm"
        except BedError:
            pass
        finally:
            probe.stop(grace=2)
    _accel.append(found)
    return found


@dataclass(eq=False)
class QemuVM:
    name: str
    workdir: Path
    disk: BuiltDisk
    accel: str = ""
    qemu: Service | None = None
    swtpm: Service | None = None
    lock: object = None
    started: float = 0.0          # time.time() when QEMU was started
    boot_ids: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _buf: bytes = b""
    _next_id: int = 0

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def disk_path(self) -> Path:
        return self.workdir / "disk.qcow2"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""

    def guestfwd_log(self) -> list[str]:
        """What the relays of the registry forward logged: a line per guest
        connection when connected, one when closed (or why it could not
        connect); empty without a network."""
        try:
            return (self.workdir / "guestfwd.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    # --- the agent -------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(self.workdir / "agent.sock"))
            self._sock = s
        return self._sock

    def _read_line(self, deadline: float) -> dict:
        sock = self._connect()
        while b"\n" not in self._buf:
            if self.qemu is None or not self.qemu.alive():
                raise BedError(f"{self.name}: QEMU is gone: {self.qemu.log_tail() if self.qemu else ''}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(min(left, 1.0))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise BedError(f"{self.name}: the agent's socket was closed by QEMU")
            self._buf += chunk
            if len(self._buf) > 64 << 20:
                raise BedError(f"{self.name}: the agent's answer is over 64 MiB")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            doc = json.loads(line)
        except ValueError:
            return {}
        return doc

    def wait_agent(self, timeout: float, *, new_boot: bool = False) -> str:
        """Wait (bounded) until the agent answers (in a boot not seen before
        with new_boot); the boot id. A ping every few seconds: what the host
        sends before the guest opens its port may be lost."""
        seen = list(self.boot_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                boot_id = self._request(["cat", "/proc/sys/kernel/random/boot_id"], 10,
                                        min(deadline, time.monotonic() + 3)).stdout.strip()
            except TimeoutError:
                continue
            if not (new_boot and boot_id in seen):
                if boot_id not in self.boot_ids:
                    self.boot_ids.append(boot_id)
                return boot_id
            time.sleep(1)
        raise BedError(f"{self.name}: no agent{' of a new boot' if new_boot else ''} within {timeout:.0f}s; "
                       f"console ends:\n{self.console()[-3000:]}")

    def _request(self, argv: list[str], timeout: float, deadline: float, data: bytes | None = None,
                 ) -> subprocess.CompletedProcess:
        self._next_id += 1
        req = {"id": self._next_id, "argv": argv, "timeout": timeout,
               "input": base64.b64encode(data).decode() if data is not None else None}
        self._connect().sendall(json.dumps(req).encode() + b"\n")
        while True:
            doc = self._read_line(deadline)
            if doc.get("id") == self._next_id:
                break
        out, err = base64.b64decode(doc["stdout"]), base64.b64decode(doc["stderr"])
        if doc.get("timeout"):
            raise BedError(f"{self.name}: {argv} still ran after {timeout:.0f}s")
        return subprocess.CompletedProcess(argv, doc["rc"], out, err)

    def run(self, cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 60,
            input: bytes | str | None = None, text: bool = True) -> subprocess.CompletedProcess:
        """Run a command in the VM (a string goes to `sh -c`), bounded by
        `timeout` inside and outside."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        data = input.encode() if isinstance(input, str) else input
        try:
            raw = self._request(["env", "-i", f"PATH={VM_PATH}", "LANG=C.UTF-8", *argv], timeout,
                                time.monotonic() + timeout + 15, data)
        except TimeoutError:
            raise BedError(f"{self.name}: no answer to {argv} within {timeout + 15:.0f}s") from None
        done = subprocess.CompletedProcess(argv, raw.returncode,
                                           raw.stdout.decode(errors="replace") if text else raw.stdout,
                                           raw.stderr.decode(errors="replace") if text else raw.stderr)
        if check and done.returncode != 0:
            raise BedError(f"{self.name}: {argv} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", *args], check=check)

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run(["podman", *args], check=check, timeout=timeout)

    def journal(self, unit: str | None = None, *args: str) -> str:
        argv = ["journalctl", "--no-pager", "-o", "short-precise", "-b", *args] + (["-u", unit] if unit else [])
        return self.run(argv, check=False, timeout=60).stdout

    def journal_safe(self) -> str:
        try:
            failed = self.run(["systemctl", "--failed", "--no-pager"], check=False, timeout=20).stdout
            return f"$ systemctl --failed\n{failed}\n$ journalctl -b\n{self.journal()}"
        except BedError as exc:
            return f"(journal unavailable: {exc}); console:\n{self.console()[-6000:]}"

    def unit_state(self, unit: str) -> str:
        return self.run(["systemctl", "is-active", unit], check=False, timeout=20).stdout.strip()

    def wait_until(self, cmd: Sequence[str] | str, timeout: float = 60, what: str | None = None) -> None:
        wait_until(lambda: self.run(cmd, check=False, timeout=20).returncode == 0, timeout,
                   what or f"{cmd!r} in {self.name}", interval=0.5)

    def read_file(self, path: str) -> bytes:
        return self.run(["cat", path], text=False).stdout

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self.run(["sh", "-c", f'cat > "$0" && chmod {mode:o} "$0"', path], input=data)

    def system_state(self) -> str:
        return self.run(["systemctl", "is-system-running"], check=False, timeout=20).stdout.strip()

    def wait_running(self, timeout: float) -> None:
        """Until systemd says running or degraded (every start job done,
        podvm-bootstrap's READY=1 included)."""
        try:
            wait_until(lambda: self.system_state() in nspawn_vm.WAIT_STATES["running"], timeout,
                       f"{self.name} to be running", interval=0.5)
        except BedError as exc:
            raise BedError(f"{exc}; its failed units and journal end:\n{self.journal_safe()[-4000:]}") from None

    def reboot(self, timeout: float = 300) -> None:
        """`systemctl reboot` inside: the same QEMU (and swtpm: the TPM's
        state is kept, its PCRs are reset with the machine), the same disk;
        back when the new boot's agent answers and systemd is running."""
        self.run(["systemd-run", "--no-block", "--on-active=1", "/bin/systemctl", "reboot"])
        self.wait_agent(timeout, new_boot=True)
        self.wait_running(timeout)

    def destroy(self) -> None:
        """SIGKILL QEMU and stop swtpm (their PIDs), remove the work
        directory (its overlay disk) unless kept, release the lock."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for svc in (self.qemu, self.swtpm):
            if svc is not None:
                svc.stop(grace=5)
        self.qemu = self.swtpm = None
        if self.lock is not None:
            self.lock.close()  # type: ignore[attr-defined]
            self.lock = None
            nspawn_vm._running_here.remove(self.name)
        if self in nspawn_vm._live:
            nspawn_vm._live.remove(self)  # type: ignore[arg-type]


def cidata_iso(path: Path, userdata: bytes | str | None, instance: str) -> Path:
    """The libvirt provider's cidata volume: ISO9660 labelled `cidata` with
    user-data (empty when None) and meta-data."""
    src = path.with_suffix(".d")
    src.mkdir(parents=True, exist_ok=True)
    data = userdata.encode() if isinstance(userdata, str) else (userdata or b"")
    (src / "user-data").write_bytes(data)
    (src / "meta-data").write_text(f"instance-id: {instance}\nlocal-hostname: podvm\n")
    subprocess.run(["genisoimage", "-quiet", "-output", str(path), "-volid", "cidata", "-joliet", "-rock",
                    str(src / "user-data"), str(src / "meta-data")], check=True)
    return path


def network_argv(vm: QemuVM, registry: Registry | None) -> list[str]:
    """No network without a registry; with one, user-mode networking where
    the guest reaches only GUEST_REGISTRY, relayed to the registry's loopback
    port. `cmd:` (a relay per connection) and not `tcp:HOST:PORT`: that
    chardev is one host connection for every guest connection, and a pull
    opens several (guestfwd_relay.py says what goes wrong)."""
    if registry is None:
        return ["-nic", "none"]
    host, port = GUEST_REGISTRY
    # QEMU splits the command with g_shell_parse_argv (no shell); a comma in
    # an option's value is written twice.
    relay = shlex.join([sys.executable, "-I", str(RELAY), "127.0.0.1", str(registry.port),
                        str(vm.workdir / "guestfwd.log")]).replace(",", ",,")
    return ["-netdev", f"user,id=net0,restrict=on,ipv6=off,guestfwd=tcp:{host}:{port}-cmd:{relay}",
            "-device", "virtio-net-pci,netdev=net0"]


def qemu_argv(vm: QemuVM, *, cidata: Path | None, memory_mib: int, cpus: int,
              registry: Registry | None = None) -> list[str]:
    w = vm.workdir
    accel = ["-accel", "kvm", "-cpu", "host"] if vm.accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    argv = [QEMU, "-name", vm.name, "-machine", "q35", *accel, "-smp", str(cpus), "-m", str(memory_mib),
            "-nodefaults", "-display", "none", "-serial", f"file:{vm.console_log}",
            "-kernel", str(vm.disk.kernel), "-initrd", str(vm.disk.initrd), "-append", vm.disk.cmdline,
            "-drive", f"file={vm.disk_path},if=virtio,format=qcow2,cache=unsafe"]
    if cidata is not None:
        argv += ["-drive", f"file={cidata},if=virtio,format=raw,readonly=on"]
    argv += ["-chardev", f"socket,id=chrtpm,path={w / 'swtpm.sock'}",
             "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
             "-device", "virtio-serial-pci",
             "-chardev", f"socket,id=agent,path={w / 'agent.sock'},server=on,wait=off",
             "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
             *network_argv(vm, registry)]
    return argv


def boot(disk: BuiltDisk, workdir: Path, *, name: str | None = None, userdata: bytes | str | None = None,
         cidata: bool = True, registry: Registry | None = None, flip: Sequence[int] = (),
         wait: str | None = "running", boot_timeout: float = 300, memory_mib: int = 2048, cpus: int = 2,
         lock_timeout: float = 900) -> QemuVM:
    """Boot the disk under QEMU (see the module's doc). `registry`: the
    one place the VM can reach (its mirror's address), none without.
    `flip`: guest disk offsets whose byte is inverted in this VM's overlay
    before it starts."""
    name = name or f"podvm-qemu-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    vm = QemuVM(name, workdir, disk)
    vm.lock = nspawn_vm._take_vm_lock(name, lock_timeout)
    nspawn_vm._live.append(vm)  # type: ignore[arg-type]
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk.qcow2),
                        str(vm.disk_path)], check=True)
        for offset in flip:
            flip_byte(vm.disk_path, offset)
        iso = cidata_iso(workdir / "cidata.iso", userdata, name) if cidata else None
        vm.accel = accelerator(disk, workdir)
        (workdir / "tpm").mkdir(exist_ok=True)
        vm.swtpm = Service("swtpm", ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={workdir / 'tpm'}",
                                     "--ctrl", f"type=unixio,path={workdir / 'swtpm.sock'}",
                                     "--log", "level=1"], workdir / "swtpm.log")
        vm.swtpm.wait_ready(lambda: (workdir / "swtpm.sock").exists(), 10, "listening")
        vm.started = time.time()
        vm.qemu = Service("qemu", qemu_argv(vm, cidata=iso, memory_mib=memory_mib, cpus=cpus, registry=registry),
                          workdir / "qemu.log")
        nspawn_vm._record(vm.lock, os.getpid(), vm.qemu.pid)
        vm.qemu.wait_ready(lambda: (workdir / "agent.sock").exists(), 10, "listening on the agent's socket")
        if wait:
            vm.wait_agent(boot_timeout)
            if wait == "running":
                vm.wait_running(boot_timeout)
        return vm
    except BaseException:
        vm.destroy()
        raise


def read_byte(disk: Path, offset: int) -> int:
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", f"read -v {offset} 1", str(disk)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    # "000a1b2c:  5a  Z"
    return int(out.split(":", 1)[1].split()[0], 16)


def flip_byte(disk: Path, offset: int) -> None:
    value = read_byte(disk, offset) ^ 0xFF
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x{value:02x} {offset} 1", str(disk)],
                   check=True, stdout=subprocess.DEVNULL)


@contextmanager
def booted(disk: BuiltDisk, workdir: Path, **options) -> Iterator[QemuVM]:
    """boot() for the duration of a block; always destroyed after."""
    vm = boot(disk, workdir, **options)
    try:
        yield vm
    finally:
        vm.destroy()
