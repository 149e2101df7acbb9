"""A clean Debian 12 tree for package and image-build tests: the test bed's
cached debootstrap base (image/rootfs_base.py) under a throw-away overlay,
and commands run inside it with systemd-nspawn (not booted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.bed.cache import cache_dir, cache_lock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "image"))
import rootfs_base  # noqa: E402

PODMAN_PY = "podman==5.8.0"


@contextmanager
def clean_debian_tree() -> Iterator[Path]:
    cache = cache_dir()
    with cache_lock(cache):
        base = rootfs_base.ensure_base(cache, lambda message: None)
    work = Path(tempfile.mkdtemp(prefix="pvb-deb-", dir="/var/tmp"))
    for d in ("upper", "work", "merged"):
        (work / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={work / 'upper'},workdir={work / 'work'}", str(work / "merged")],
                   check=True)
    try:
        yield work / "merged"
    finally:
        subprocess.run(["umount", str(work / "merged")], check=False, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def nspawn_argv(tree: Path) -> list[str]:
    # A machine name of its own: nspawn keeps per-name state under /run, and
    # other builds on this machine also run trees whose directory is "merged".
    name = f"pvb-deb-{os.getpid()}-{os.urandom(3).hex()}"
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-M", name, "-D", str(tree)]


def in_tree(tree: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run argv inside the tree; nspawn may pass the command's stderr on
    stdout, so check both."""
    return subprocess.run([*nspawn_argv(tree), *argv], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def apt_install(tree: Path, deb: Path) -> subprocess.CompletedProcess:
    shutil.copy(deb, tree / "var/tmp" / deb.name)
    return in_tree(tree, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                   f"/var/tmp/{deb.name}")


def build_deb() -> Path:
    done = subprocess.run(["./scripts/build-deb.sh"], cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"make deb failed: {done.stderr}")
    return REPO / done.stdout.strip().splitlines()[-1]


def podman_py_wheel() -> Path:
    """podman-py's wheel, downloaded once into the test bed's cache."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob("podman-5.8.0-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels),
                        PODMAN_PY], check=True, timeout=300)
        found = sorted(wheels.glob("podman-5.8.0-*.whl"))
    return found[0]
