#!/usr/bin/env python3
"""Builds the pod VM as a bootable disk (raw and qcow2) from the same tree
image/build.py makes, the way an image build for the cloud-api-adaptor's
libvirt provider would:

  tree   build.py's two layers (debootstrap base + package + bake) copied
         out, plus Debian's cloud kernel with its initramfs and modules
         (apt-get in the tree), tpm2-tools, and what a real VM needs instead
         of the nspawn test bed's settings: podman's own defaults (no
         containers.conf), the overlay driver (storage.conf as docs/image-building.md
         "4. A read-only store for the defaults" shows it), the sample manifest
         and settings as they are (kata-agent's `pid: host` kept), the store
         of the defaults baked again for that driver;
  disk   one GPT disk: podvm-root (ext4, mounted read-only), podvm-store (the
         read-only store of the defaults, ext4 without a journal) and
         podvm-store-verity (its dm-verity hash tree), podvm-var (ext4,
         writable: overrides, state, journal). The store's root hash goes on
         the kernel command line (podvm.store_roothash=HEX); a unit of the
         image opens the verity device from it before podman runs.

Booted by direct kernel boot (the kernel and initramfs are written beside the
disk and are also in the root's /boot), user-data from a `cidata` ISO that
the image mounts at /media/cidata before the daemon starts.
TEST BED ONLY, on top: the stand-ins as the components (build.py), the
quay.io/confidential-containers mirror at 10.0.2.100:5000 (the address a
test's QEMU forwards to its loopback registry), and a command agent on the
virtio-serial port org.podvm.testbed.agent (inert unless a host attaches it).

Cached under $PODVM_CACHE as disk-<hash of its inputs>/.

    image/disk.py [--cache DIR]     prints the built disk as JSON
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "image"))

import build  # noqa: E402
from tests.bed.cache import cache_lock  # noqa: E402
from tests.bed.registry import mirror_conf, running_registry  # noqa: E402
from tests.standins import images as standins  # noqa: E402

DISK_FILES = REPO / "image" / "disk"
# Debian packages the disk adds to the tree: the kernel it boots (with its
# modules and an initramfs from initramfs-tools), and tpm2-tools to read the
# vTPM inside the VM.
KERNEL_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "tpm2-tools")
# QEMU's user-mode network forwards this guest address to a test's loopback
# registry (tests/bed/qemu.py); nothing else is reachable from the VM.
GUEST_REGISTRY = "10.0.2.100:5000"
STORE_MOUNT_UNIT = "usr-share-containers-storage.mount"
# Fixed partition UUIDs: the kernel command line names the root by its own.
PART_UUIDS = {
    "podvm-root": "6a3c0b9e-5d1f-4c7a-9b0e-000000000001",
    "podvm-store": "6a3c0b9e-5d1f-4c7a-9b0e-000000000002",
    "podvm-store-verity": "6a3c0b9e-5d1f-4c7a-9b0e-000000000003",
    "podvm-var": "6a3c0b9e-5d1f-4c7a-9b0e-000000000004",
}
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
VAR_SIZE = 1024 << 20  # the writable /var: overrides pulled at boot, state, journal
MIB = 1 << 20
STORAGE_CONF = f"""\
# The container storage of the pod VM (docs/image-building.md "4. A read-only store for the defaults"):
# podman's overlay driver, the writable store on /var, the baked defaults in a
# read-only additional store (a dm-verity device, mounted by {STORE_MOUNT_UNIT}).
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
[storage.options]
additionalimagestores = ["{build.RO_STORE}"]
"""


def log(message: str) -> None:
    print(f"disk: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Partition:
    name: str
    offset: int  # bytes from the start of the disk
    size: int


def disk_key(layer: str) -> str:
    h = hashlib.sha256(layer.encode() + "\0".join(KERNEL_PACKAGES).encode())
    for p in [Path(__file__), *sorted(DISK_FILES.rglob("*"))]:
        if p.is_file():
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(argv, check=True, **kw)


def copy_tree(lowerdirs: list[str], tree: Path) -> None:
    """build.py's layers, read through a read-only overlay mount (lower
    directories only), copied into a plain directory the disk is made of."""
    merged = tree.with_name("merged")
    merged.mkdir()
    run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={':'.join(lowerdirs)}", str(merged))
    try:
        run("cp", "-a", f"{merged}/.", str(tree))
    finally:
        run("umount", str(merged))
        merged.rmdir()


def install_kernel(tree: Path) -> None:
    log(f"apt-get install {' '.join(KERNEL_PACKAGES)} in the tree")
    build.in_tree(tree, "apt-get", "update", "-qq")
    build.in_tree(tree, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-qq", "--yes",
                  "--no-install-recommends", *KERNEL_PACKAGES)
    build.in_tree(tree, "apt-get", "clean")
    for f in (tree / "var/lib/apt/lists").glob("*_Packages"):
        f.unlink()


def rebake_for_overlay(tree: Path, images: dict) -> None:
    """The nspawn layer's store is vfs (overlayfs cannot nest there); a real
    VM uses podman's default, overlay: the sample manifest (nothing dropped)
    is baked again, for that driver, into an empty read-only store."""
    etc = tree / "etc/podvm-bootstrap"
    (etc / "components.yaml").write_text(build.baked_components("v1", dropped_keys={}, dropped_variant_keys=()))
    (etc / "components.lock.json").unlink()
    (etc / "bootstrap.yaml").write_text((build.CONFIG_DIR / "bootstrap.yaml").read_text())
    (tree / "etc/containers/containers.conf").unlink()  # the nspawn test bed's: podman's defaults here
    (tree / "etc/containers/storage.conf").write_text(STORAGE_CONF)
    shutil.rmtree(tree / build.RO_STORE.lstrip("/"))
    (tree / build.RO_STORE.lstrip("/")).mkdir()
    with running_registry() as registry:
        for (_component, variant), image in images.items():
            if variant != "padded":
                registry.push_standin(image)
        build.bake(tree, registry.host)
    (tree / build.MIRROR_CONF).write_text(mirror_conf(GUEST_REGISTRY))
    shutil.rmtree(tree / "run" / "containers", ignore_errors=True)


def configure(tree: Path) -> None:
    """The disk's own units and files (image/disk/): fstab (read-only root,
    writable /var, tmpfs /tmp), the cidata mount and the daemon's drop-in,
    the store's verity device and mount, networkd (DHCP), the test agent."""
    (tree / "etc/systemd/system" / STORE_MOUNT_UNIT).unlink()  # the nspawn bind mount; replaced below
    wants = tree / "etc/systemd/system/local-fs.target.wants" / STORE_MOUNT_UNIT
    wants.unlink(missing_ok=True)
    for src in sorted(DISK_FILES.rglob("*")):
        if src.is_file():
            dst = tree / src.relative_to(DISK_FILES)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (tree / "media/cidata").mkdir(parents=True, exist_ok=True)
    (tree / "var/log/journal").mkdir(parents=True, exist_ok=True)  # a persistent journal on /var
    run("systemctl", f"--root={tree}", "--quiet", "enable", STORE_MOUNT_UNIT, "systemd-networkd.service",
        "podvm-testbed-agent.service")
    # Nothing waits for a network: the VM may have none (-nic none).
    run("systemctl", f"--root={tree}", "--quiet", "mask", "systemd-networkd-wait-online.service")


def mkfs_ext4(image: Path, source: Path, label: str, size: int, *, journal: bool = True) -> None:
    image.unlink(missing_ok=True)
    opts = [] if journal else ["-O", "^has_journal"]
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-E", "root_owner=0:0", *opts, "-d", str(source),
        str(image), f"{size // 1024}k", env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
        stdout=subprocess.DEVNULL)


def tree_size(path: Path) -> int:
    out = run("du", "-s", "--block-size=1", str(path), stdout=subprocess.PIPE, text=True).stdout
    return int(out.split()[0])


def align(n: int) -> int:
    return (n + MIB - 1) // MIB * MIB


def verity_format(data: Path, hashes: Path) -> str:
    out = run("veritysetup", "format", str(data), str(hashes), stdout=subprocess.PIPE, text=True).stdout
    found = re.search(r"^Root hash:\s+([0-9a-f]{64})$", out, re.M)
    if not found:
        raise SystemExit(f"image/disk.py: veritysetup format printed no root hash:\n{out}")
    return found.group(1)


def assemble(disk: Path, parts: list[tuple[str, Path]]) -> list[Partition]:
    """A GPT disk holding each file as a partition (sfdisk on the file: no
    loop device), each 1 MiB aligned."""
    layout, offset = [], MIB
    for name, f in parts:
        layout.append(Partition(name, offset, align(f.stat().st_size)))
        offset += layout[-1].size
    total = offset + MIB  # the backup GPT
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as out:
        out.truncate(total)
    script = "label: gpt\n" + "".join(
        f"start={p.offset // 512}, size={p.size // 512}, type={LINUX_FS}, uuid={PART_UUIDS[p.name]}, name={p.name}\n"
        for p in layout)
    run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk), input=script.encode())
    for p, (_, f) in zip(layout, parts, strict=True):
        run("dd", f"if={f}", f"of={disk}", "bs=1M", f"seek={p.offset}", "oflag=seek_bytes",
            "conv=notrunc,sparse", "status=none")
    return layout


def build_disk(layer: dict, images: dict, final: Path) -> None:
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        run("rm", "-rf", "--one-file-system", str(tmp))
    tree = tmp / "tree"
    tree.mkdir(parents=True)
    copy_tree(layer["lowerdirs"], tree)
    install_kernel(tree)
    rebake_for_overlay(tree, images)
    configure(tree)

    versions = sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))
    if len(versions) != 1 or not (tree / "lib/modules" / versions[0]).is_dir():
        raise SystemExit(f"image/disk.py: expected one kernel with its modules in the tree, found {versions}")
    version = versions[0]
    shutil.copy2(tree / "boot" / f"vmlinuz-{version}", tmp / "vmlinuz")
    shutil.copy2(tree / "boot" / f"initrd.img-{version}", tmp / "initrd.img")

    # The store and /var leave the root for partitions of their own.
    parts_dir = tmp / "parts"
    parts_dir.mkdir()
    store, var = tmp / "store-tree", tmp / "var-tree"
    (tree / build.RO_STORE.lstrip("/")).rename(store)
    (tree / build.RO_STORE.lstrip("/")).mkdir()
    (tree / "var").rename(var)
    (tree / "var").mkdir()

    log("making the file systems and the verity hash tree")
    mkfs_ext4(parts_dir / "store.img", store, "podvm-store", align(tree_size(store) * 5 // 4 + 16 * MIB),
              journal=False)
    roothash = verity_format(parts_dir / "store.img", parts_dir / "store.verity")
    mkfs_ext4(parts_dir / "root.img", tree, "podvm-root", align(tree_size(tree) * 5 // 4 + 64 * MIB))
    mkfs_ext4(parts_dir / "var.img", var, "podvm-var", max(VAR_SIZE, align(tree_size(var) * 2)))
    layout = assemble(tmp / "disk.raw", [("podvm-root", parts_dir / "root.img"),
                                         ("podvm-store", parts_dir / "store.img"),
                                         ("podvm-store-verity", parts_dir / "store.verity"),
                                         ("podvm-var", parts_dir / "var.img")])
    run("qemu-img", "convert", "-O", "qcow2", str(tmp / "disk.raw"), str(tmp / "disk.qcow2"))
    for d in (parts_dir, store, var, tree):
        run("rm", "-rf", "--one-file-system", str(d))
    cmdline = (f"root=PARTUUID={PART_UUIDS['podvm-root']} ro console=ttyS0 "
               f"podvm.store_roothash={roothash}")
    (tmp / "disk.json").write_text(json.dumps({
        "kernel_version": version,
        "cmdline": cmdline,
        "store_roothash": roothash,
        "partitions": {p.name: {"offset": p.offset, "size": p.size} for p in layout},
        "defaults": layer["defaults"],
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1))
    if final.exists():
        run("rm", "-rf", "--one-file-system", str(final))
    tmp.rename(final)


def prune(cache: Path, keep: str, max_age: float = 3600) -> None:
    for entry in cache.iterdir():
        if entry.name.startswith("disk-") and entry.name != keep and not entry.name.endswith(".partial") \
                and time.time() - entry.stat().st_mtime > max_age:
            log(f"pruning {entry}")
            run("rm", "-rf", "--one-file-system", str(entry))


def build_disk_image(cache: Path) -> dict:
    layer = build.build(cache)
    with cache_lock(cache):
        images = standins.build_all(cache / f"standins-{standins.inputs_key()}")
        final = cache / f"disk-{disk_key(layer['layer'])}"
        if not (final / "disk.json").exists():
            started = time.monotonic()
            build_disk(layer, images, final)
            log(f"disk built in {time.monotonic() - started:.0f}s: {final}")
            prune(cache, final.name)
        info = json.loads((final / "disk.json").read_text())
    return {**info, "dir": str(final), "raw": str(final / "disk.raw"), "qcow2": str(final / "disk.qcow2"),
            "kernel": str(final / "vmlinuz"), "initrd": str(final / "initrd.img")}


def main() -> int:
    return build.cached_build_main(__doc__, "image/disk.py", "mount, systemd-nspawn", build_disk_image)


if __name__ == "__main__":
    sys.exit(main())
