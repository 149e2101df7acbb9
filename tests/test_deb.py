"""`make deb`: the Debian package, built with Debian's tooling, installed with
apt-get into a clean Debian 12 tree (the test bed's cached debootstrap base,
under a throw-away overlay), and run there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from podvm_bootstrap import __version__
from tests.bed.cache import cache_dir, cache_lock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "image"))
import rootfs_base  # noqa: E402

pytestmark = pytest.mark.podman  # needs root, debootstrap's cache, systemd-nspawn


@pytest.fixture(scope="module")
def deb() -> Path:
    done = subprocess.run(["./scripts/build-deb.sh"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    path = REPO / done.stdout.strip().splitlines()[-1]
    assert path.name == f"podvm-bootstrap_{__version__}_all.deb"
    return path


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_the_package_depends_on_debians_python_packages_only(deb: Path) -> None:
    depends = {d.strip().split()[0] for d in field(deb, "Depends").split(",")}
    assert {"python3-yaml", "python3-requests", "python3-sdnotify", "python3-pydbus", "python3-gi",
            "podman"} <= depends
    assert not any("podman-py" in d or d == "python3-podman" for d in depends)  # not in Debian 12
    assert field(deb, "Version") == __version__ and field(deb, "Architecture") == "all"
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/bin/podvm-bootstrap", "./usr/lib/systemd/system/podvm-bootstrap.service",
                 "./etc/containers/registries.d/podvm-bootstrap.yaml",
                 "./usr/share/podvm-bootstrap/components.yaml", "./usr/share/podvm-bootstrap/policy.yaml",
                 "./usr/share/podvm-bootstrap/bootstrap.yaml",
                 "./usr/lib/python3/dist-packages/podvm_bootstrap/bake.py"):
        assert f" {path}\n" in files, path


@contextmanager
def clean_debian_tree() -> Iterator[Path]:
    """The cached debootstrap base under a throw-away overlay: a clean Debian 12 tree."""
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


def in_tree(tree: Path, *argv: str) -> subprocess.CompletedProcess:
    # A machine name of its own: nspawn keeps per-name state under /run, and
    # other builds on this machine also run trees whose directory is "merged".
    name = f"pvb-deb-{os.getpid()}-{os.urandom(3).hex()}"
    return subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-M", name,
                           "-D", str(tree), *argv],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_apt_installs_the_package_into_a_clean_debian_tree_and_it_runs_there(deb: Path) -> None:
    with clean_debian_tree() as tree:
        assert not (tree / "usr/bin/podvm-bootstrap").exists()
        shutil.copy(deb, tree / "var/tmp" / deb.name)
        done = in_tree(tree, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                       f"/var/tmp/{deb.name}")
        assert done.returncode == 0, done.stdout + done.stderr
        status = in_tree(tree, "dpkg-query", "-W", "-f=${Status} ${Version}", "podvm-bootstrap")
        assert status.stdout == f"install ok installed {__version__}"

        # the unit, enabled on install, runs the packaged command
        wants = tree / "etc/systemd/system/multi-user.target.wants/podvm-bootstrap.service"
        assert wants.is_symlink() and os.readlink(wants).endswith("/systemd/system/podvm-bootstrap.service")
        unit = (tree / "usr/lib/systemd/system/podvm-bootstrap.service").read_text()
        assert "\nExecStart=/usr/bin/podvm-bootstrap run\n" in unit
        registries = yaml.safe_load((tree / "etc/containers/registries.d/podvm-bootstrap.yaml").read_text())
        assert registries == {"default-docker": {"use-sigstore-attachments": True}}

        # the command runs with Debian's Python and python3-* packages: a plan of the sample files
        (tree / "var/tmp/empty").write_text("")
        plan = in_tree(tree, "podvm-bootstrap", "--config-dir", "/usr/share/podvm-bootstrap", "plan", "--json",
                       "--user-data", "/var/tmp/empty")
        assert plan.returncode == 0, plan.stderr
        assert '"name": "kata-agent"' in plan.stdout
        usage = in_tree(tree, "podvm-bootstrap", "bake")
        assert usage.returncode == 2 and "bake needs --root TREE" in usage.stdout + usage.stderr
