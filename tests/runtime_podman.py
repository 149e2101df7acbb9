"""Real podman for the runtime tests: `podman system service` on a temp
socket with its own storage (CONTAINERS_CONF as tests/bed/README.md says), and the CLI on
the same storage to play the image build (prefetch) and the tamperer."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from podvm_bootstrap.common.backoff import Backoff
from podvm_bootstrap.images.storage import PodmanImages, PullPacing
from tests.bed.cosign import REGISTRIES_D
from tests.bed.proc import Service

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def unmount_under(base: Path) -> None:
    """Unmount what podman's overlay driver mounted below `base` (it bind-mounts
    storage/overlay onto itself); else every test run would leave a mount."""
    prefix = str(base).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, timeout=30)


class Podman:
    """`podman system service` on a temp socket with its own storage; the CLI
    on the same storage plays the image build (prefetch) and the tamperer."""

    def __init__(self, base: Path, insecure: Sequence[str], sigstore_attachments: bool = False) -> None:
        self.base = base
        self.root, self.runroot = base / "storage", base / "run"
        (base / "containers.conf").write_text(CONTAINERS_CONF)
        (base / "registries.conf").write_text("".join(
            f'[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in insecure))
        self.env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf")}
        if sigstore_attachments:
            # containers/image reads $HOME/.config/containers/registries.d before
            # /etc/containers/registries.d (for root too): the pod VM's file,
            # for this store only, without touching /etc.
            registries_d = base / "home" / ".config" / "containers" / "registries.d"
            registries_d.mkdir(parents=True)
            (registries_d / "podvm-bootstrap.yaml").write_text(REGISTRIES_D)
            self.env["HOME"] = str(base / "home")
        self.socket = str(base / "podman.sock")
        self.service: Service | None = None
        self.start()

    @property
    def argv(self) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot)]

    def start(self) -> None:
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.service = Service("podman-service", [*self.argv, "system", "service", "--time=0",
                                                  f"unix://{self.socket}"], self.base / "service.log", env=self.env)
        self.service.wait_ready(lambda: os.path.exists(self.socket), 20, "listening")

    def restart(self) -> None:
        assert self.service is not None
        self.service.stop()
        self.start()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def cli(self, *args: str, input: bytes | None = None) -> str:
        result = subprocess.run([*self.argv, *args], env=self.env, input=input, capture_output=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {result.stderr.decode()}")
        return result.stdout.decode().strip()

    def make_image(self, marker: str) -> str:
        """A small local image whose content (and so digest) depends on `marker`."""
        tree = self.base / f"tree-{marker}"
        (tree / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/busybox", tree / "bin" / "busybox")
        (tree / "marker").write_text(marker)
        tar = subprocess.run(["tar", "-C", str(tree), "--sort=name", "--mtime=@0", "-c", "."],
                             capture_output=True, check=True).stdout
        local = f"localhost/test-{marker}:1"
        self.cli("import", "-", local, input=tar)
        return local

    def storage_conf(self) -> Path:
        """A storage.conf that says where this store is (what the pod VM image bakes)."""
        conf = self.base / "storage.conf"
        conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root}"\nrunroot = "{self.runroot}"\n')
        return conf

    def images(self, files: bool = False) -> PodmanImages:
        """files: images found from the store's files (storage.conf), else through the API."""
        return PodmanImages(self.socket, pacing=PullPacing(retries=2, timeout=60.0, backoff=Backoff(0.01, 0.02)),
                            sleep=lambda s: None, storage_conf=self.storage_conf() if files else None)

    @classmethod
    @contextmanager
    def running(cls, insecure: Sequence[str] = (), sigstore_attachments: bool = False) -> Iterator[Podman]:
        # podman wants a short runroot (< 50 characters): not under pytest's tmp_path.
        base = Path(tempfile.mkdtemp(prefix="pvb-", dir="/tmp"))
        p = cls(base, insecure, sigstore_attachments)
        try:
            yield p
        finally:
            p.stop()
            unmount_under(base)
            shutil.rmtree(base, ignore_errors=True)

    def store_images_dir(self) -> Path:
        return self.root / "overlay-images"
