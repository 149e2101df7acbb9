"""`make deb`: the Debian package, built with Debian's tooling, installed with
apt-get into a clean Debian 12 tree (the test bed's cached debootstrap base,
under a throw-away overlay), and run there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from podvm_bootstrap import __version__
from tests.debian_tree import apt_install, build_deb, clean_debian_tree, in_tree

pytestmark = pytest.mark.podman  # needs root, debootstrap's cache, systemd-nspawn


# Generated at build from the parser and the docs (scripts/build-man.py).
MAN_PAGES = ("./usr/share/man/man8/podvm-bootstrap.8.gz", "./usr/share/man/man5/bootstrap.yaml.5.gz",
             "./usr/share/man/man5/components.yaml.5.gz", "./usr/share/man/man5/policy.yaml.5.gz")


@pytest.fixture(scope="module")
def deb() -> Path:
    path = build_deb()
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
    assert field(deb, "Recommends") == "python3-tpm2-pytss"  # measured launch with a TPM
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/bin/podvm-bootstrap", "./usr/lib/systemd/system/podvm-bootstrap.service",
                 "./etc/containers/registries.d/podvm-bootstrap.yaml",
                 "./usr/share/podvm-bootstrap/components.yaml", "./usr/share/podvm-bootstrap/policy.yaml",
                 "./usr/share/podvm-bootstrap/bootstrap.yaml",
                 "./usr/lib/python3/dist-packages/podvm_bootstrap/cli/bake.py",
                 *MAN_PAGES):
        assert f" {path}\n" in files, path


def test_apt_installs_the_package_into_a_clean_debian_tree_and_it_runs_there(deb: Path) -> None:
    with clean_debian_tree() as tree:
        assert not (tree / "usr/bin/podvm-bootstrap").exists()
        done = apt_install(tree, deb)
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


def test_the_packaged_man_pages_render_with_no_warning(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True, timeout=120)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    for page in MAN_PAGES:
        man = subprocess.run(["man", "--warnings", "-l", str(tmp_path / page)], capture_output=True, text=True,
                             env=env, timeout=60)
        assert man.returncode == 0 and man.stderr == "", (page, man.stderr)
        name = Path(page).name.removesuffix(".gz")
        assert man.stdout.startswith(f"{name.rsplit('.', 1)[0].upper()}({name.rsplit('.', 1)[1]})"), man.stdout[:80]
    command = subprocess.run(["man", "-l", str(tmp_path / MAN_PAGES[0])], capture_output=True, text=True, env=env,
                             timeout=60).stdout
    for word in ("COMMANDS", "EXIT STATUS", "FILES", "measurements", "collect", "expect-pcr"):
        assert word in command, word


def test_the_same_sources_give_the_same_package(deb: Path) -> None:
    first = deb.read_bytes()
    assert build_deb().read_bytes() == first
