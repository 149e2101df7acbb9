"""The pod VM's base root filesystem: Debian 12 from debootstrap, cached.

The base holds only Debian packages and the few settings a booted systemd
needs (machine-id, hostname, no first-boot prompt). It is slow to make (about
80 s and 450 MB), so it is kept under the cache directory, named by the hash
of its inputs (this file and the package list), and reused by every build and
every fresh clone that finds it there."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("PODVM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "podman", "netavark", "aardvark-dns", "conmon",
    "crun", "runc", "iptables", "python3", "python3-pydbus", "python3-yaml",
    "python3-requests", "python3-sdnotify", "python3-pip", "iproute2", "busybox-static",
    # measured launch: the TSS's Python bindings (python3-ply named: a virtual
    # dependency debootstrap cannot resolve by itself)
    "python3-tpm2-pytss", "python3-ply",
    # The signature verifier (signatures.py); debootstrap does not resolve the
    # virtual python3-cffi-backend-api-* that python3-cryptography depends on.
    "python3-cryptography", "python3-cffi-backend",
)
HOSTNAME = "podvm"


def base_key() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(MIRROR.encode())
    return h.hexdigest()[:16]


def ensure_base(cache: Path, log) -> Path:
    """The cached base tree's path, building it first when missing. The caller
    holds the cache lock."""
    final = cache / f"base-{base_key()}"
    if (final / "rootfs" / "usr/bin/podman").exists():
        return final / "rootfs"
    tmp = cache / f"{final.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    rootfs = tmp / "rootfs"
    log(f"debootstrap {SUITE} into {rootfs} (about 80 s, once per cache)")
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), MIRROR],
        check=True, stdout=subprocess.DEVNULL)
    _configure(rootfs)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final / "rootfs"


def _configure(rootfs: Path) -> None:
    # Without these a booted systemd stops at the first-boot prompt.
    mask = rootfs / "etc/systemd/system/systemd-firstboot.service"
    mask.unlink(missing_ok=True)
    mask.symlink_to("/dev/null")
    (rootfs / "etc/machine-id").write_text(hashlib.md5(base_key().encode()).hexdigest() + "\n")
    (rootfs / "etc/hostname").write_text(HOSTNAME + "\n")
    # The image needs no package index nor downloaded .debs.
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages"):
        for f in rootfs.glob(pattern):
            f.unlink()
