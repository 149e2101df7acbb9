#!/usr/bin/env python3
"""Builds the pod VM image's root filesystem as two cached layers:

  base   Debian 12 from debootstrap (image/rootfs_base.py), keyed by its inputs;
  layer  this project on top of it, the way docs/image-building.md says an
         image build does it: the Debian package (`make deb`)
         installed with apt-get (its unit enabled on install), podman-py from
         its wheel, the baked /etc/podvm-bootstrap files, then
         `podvm-bootstrap bake --store /usr/share/containers/storage`: the
         default images (tags) pulled by digest into a read-only store and
         pinned in the baked components.yaml and components.lock.json.

The layer is the upper directory of an overlay mount over the base, so it
holds only what the project adds; a booted VM stacks its own throw-away upper
directory on top (tests/bed/vm.py) and never changes either layer.

This builds the TEST BED image: the default components are the stand-ins of
tests/standins (named like the real ones, quay.io/confidential-containers/...,
served by a loopback registry that a registries.conf mirror points at), and
podman is configured for running nested in systemd-nspawn (tests/bed/README.md), and
a bind mount makes the store of the defaults read-only at boot, as the
dm-verity /usr of a real image would.
The stand-ins are signed with the test bed's release key (tests/bed/keys.py,
made per cache, never committed), whose public half is baked as
/etc/podvm-bootstrap/keys/release.pub, and the baked policy requires a
signature by it for every component.

    image/build.py [--cache DIR]     prints the built image as JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "image"))

import rootfs_base  # noqa: E402
import yaml  # noqa: E402

from tests.bed.cache import cache_dir, cache_lock  # noqa: E402
from tests.bed.keys import KEY_NAME, release_key  # noqa: E402
from tests.bed.registry import mirror_conf, running_registry  # noqa: E402
from tests.standins import images as standins  # noqa: E402

PODMAN_PY = "podman==5.8.0"
CONFIG_DIR = REPO / "image" / "config"
UNIT = REPO / "systemd" / "podvm-bootstrap.service"
PROJECT_FILES = ("pyproject.toml", "README.md", "scripts/build-deb.sh", "scripts/build-man.py")
RO_STORE = "/usr/share/containers/storage"
MIRROR_CONF = "etc/containers/registries.conf.d/50-podvm-test-bed-mirror.conf"
REGISTRIES_D = REPO / "containers" / "registries.d" / "podvm-bootstrap.yaml"
KEY_FILE = f"/etc/podvm-bootstrap/keys/{KEY_NAME}.pub"
# Nothing listens on 127.0.0.1:9: a test VM that is not given a metadata
# service can never reach a real one (auto-detection reads the host's DMI).
NOWHERE = "http://127.0.0.1:9"

TEST_BED_CONTAINERS_CONF = """\
# TEST BED ONLY (podman nested in systemd-nspawn on a cgroup v1 hybrid host,
# tests/bed/README.md): cgroup v1 is read-only there (and under cgroup v2 the
# device-filter eBPF programs are refused), the keyring syscall and /proc/sys
# writes are blocked, and the default rlimits are refused.
[containers]
cgroups = "disabled"
keyring = false
default_sysctls = []
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "crun"
[network]
network_backend = "netavark"
"""
# Test bed deviations from the sample manifest, each forced by the nesting:
# podman refuses a host PID namespace to a container without cgroups.
TEST_BED_DROPPED_KEYS = {"kata-agent": ("pid",)}
# ... and the TEE devices of the variants do not exist in a test VM (a forced
# `tee:` runs the variant's image, which is what the tests look at).
TEST_BED_DROPPED_VARIANT_KEYS = ("devices",)
# vfs: the booted tree is itself an overlay mount, and overlayfs cannot take
# an overlayfs upper directory; vfs works anywhere.
TEST_BED_STORAGE_CONF = f"""\
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
[storage.options]
additionalimagestores = ["{RO_STORE}"]
"""
# TEST BED ONLY: stands in for a dm-verity /usr, under which the store of the
# baked defaults is read-only.
RO_STORE_MOUNT_UNIT = "usr-share-containers-storage.mount"
RO_STORE_MOUNT = f"""\
# TEST BED ONLY: the baked default images' store read-only, as on a dm-verity /usr.
[Unit]
Description=Read-only store of the baked default images
DefaultDependencies=no
Before=local-fs.target podman.socket podvm-bootstrap.service

[Mount]
What={RO_STORE}
Where={RO_STORE}
Type=none
Options=bind,ro

[Install]
WantedBy=local-fs.target
"""


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def _hash_files(h, paths) -> None:
    for p in sorted(paths):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")


def project_sources() -> list[Path]:
    files = [REPO / f for f in PROJECT_FILES]
    files += [p for p in (REPO / "podvm_bootstrap").rglob("*.py")]
    files += sorted((REPO / "docs").glob("*.md"))  # the man pages are made from them
    files += [p for p in (REPO / "debian").rglob("*") if p.is_file()]
    files += sorted((REPO / "containers/registries.d").glob("*.yaml"))
    return files


def layer_key(standins_key: str, release_pub: str) -> str:
    h = hashlib.sha256()
    h.update(rootfs_base.base_key().encode() + standins_key.encode() + PODMAN_PY.encode() + release_pub.encode())
    _hash_files(h, project_sources() + sorted(CONFIG_DIR.glob("*.yaml")) + [UNIT, Path(__file__), REPO / "tests/bed/registry.py"]
                + [REGISTRIES_D, REPO / "tests/bed/cosign.py", REPO / "tests/bed/keys.py"])
    return h.hexdigest()[:16]


@contextmanager
def overlay(lowers: list[Path], upper: Path, work: Path, merged: Path) -> Iterator[Path]:
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    lowerdir = ":".join(str(p) for p in lowers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lowerdir},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def in_tree(tree: Path, *argv: str) -> None:
    """Run a command inside the tree (not booted): systemd-nspawn gives it
    /proc, /dev and the machine's network (for the loopback registry)."""
    subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(tree),
                    "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1", "--setenv=PIP_ROOT_USER_ACTION=ignore", *argv],
                   check=True, stdin=subprocess.DEVNULL, stdout=sys.stderr)  # stdout is the JSON answer


def podman_py_wheel(cache: Path) -> Path:
    """podman-py is not in Debian 12: its wheel is downloaded once into the
    cache (the machine's pip has the index's certificates, the tree's not)."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob("podman-5.8.0-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels),
                        PODMAN_PY], check=True)
        found = sorted(wheels.glob("podman-5.8.0-*.whl"))
    return found[0]


def baked_components(tag: str, dropped_keys: dict = TEST_BED_DROPPED_KEYS,
                     dropped_variant_keys: tuple = TEST_BED_DROPPED_VARIANT_KEYS) -> str:
    """The sample components.yaml as an image builder writes it before bake:
    each default image named by its tag and each TEE variant's by the TEE
    (bake pins them), minus the test bed's TEST_BED_DROPPED_KEYS and
    TEST_BED_DROPPED_VARIANT_KEYS (none for the disk image, image/disk.py)."""
    manifest = yaml.safe_load((CONFIG_DIR / "components.yaml").read_text())
    dropped = []
    for name, spec in manifest["components"].items():
        if name not in standins.COMPONENTS:
            raise SystemExit(f"image/build.py: no stand-in image for component {name}")
        spec["image"] = f"{spec['image'].split('@', 1)[0]}:{tag}"
        for key in dropped_keys.get(name, ()):
            if spec.get("container", {}).pop(key, None) is not None:
                dropped.append(f"{name}.container.{key}")
        for tee, variant in (spec.get("variants") or {}).items():  # a TEE's stand-in is tagged with the TEE
            variant["image"] = f"{variant['image'].split('@', 1)[0]}:{tee}"
            for key in dropped_variant_keys:
                if (variant.get("container") or {}).pop(key, None) is not None:
                    dropped.append(f"{name}.variants.{tee}.container.{key}")
            if variant.get("container") == {}:
                del variant["container"]
    return ("# Written by image/build.py from image/config/components.yaml, then pinned by podvm-bootstrap bake\n"
            "# (TEST BED: the stand-ins of tests/standins).\n"
            f"# Test bed only, dropped (podman nested in systemd-nspawn cannot do them): {', '.join(dropped) or 'none'}\n"
            + yaml.safe_dump(manifest, sort_keys=False))


def baked_bootstrap() -> str:
    """The sample bootstrap.yaml with every metadata endpoint on loopback and
    a short user-data timeout (test bed only)."""
    settings = yaml.safe_load((CONFIG_DIR / "bootstrap.yaml").read_text()) or {}
    userdata = settings.setdefault("userdata", {})
    userdata["endpoints"] = {cloud: NOWHERE for cloud in ("azure", "aws", "gcp", "alibaba")}
    userdata["timeout"] = "20s"
    header = "# TEST BED variant of image/config/bootstrap.yaml: metadata endpoints on loopback only.\n"
    return header + yaml.safe_dump(settings, sort_keys=False)


def baked_policy(components: list[str]) -> str:
    """The sample policy.yaml plus the test bed's release key, required for
    every component of the manifest (defaults, variants and overrides)."""
    policy = yaml.safe_load((CONFIG_DIR / "policy.yaml").read_text())
    policy["keys"] = {KEY_NAME: {"path": KEY_FILE}}
    rules = policy.get("components") or {}
    for name in components:
        entry = rules.get(name) or {}
        entry["signed_by"] = [KEY_NAME]
        rules[name] = entry
    policy["components"] = rules
    return ("# TEST BED variant of image/config/policy.yaml: every component's image must be signed by the\n"
            "# test bed's release key (tests/bed/keys.py), baked as " + KEY_FILE + ".\n"
            + yaml.safe_dump(policy, sort_keys=False))
def build_deb() -> Path:
    """`make deb`'s package (scripts/build-deb.sh), as an image build gets it."""
    out = subprocess.run([str(REPO / "scripts/build-deb.sh")], cwd=REPO, check=True, stdout=subprocess.PIPE,
                         text=True, timeout=600)
    return REPO / out.stdout.strip().splitlines()[-1]


def bake(tree: Path, registry_host: str) -> None:
    """`podvm-bootstrap bake` from the build machine (this checkout: the same
    code as the package), reaching quay.io/confidential-containers through
    the test bed's mirror."""
    with tempfile.TemporaryDirectory(prefix="podvm-bake-") as tmp:
        registries = Path(tmp) / "registries.conf"
        registries.write_text(mirror_conf(registry_host))
        subprocess.run([sys.executable, "-m", "podvm_bootstrap", "bake", "--root", str(tree), "--store", RO_STORE],
                       cwd=REPO, check=True, stdout=sys.stderr, timeout=1800,
                       env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(registries)})


def build_layer(cache: Path, base: Path, images: dict, final: Path) -> None:
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():  # left by an interrupted build
        if os.path.ismount(tmp / "merged"):
            subprocess.run(["umount", str(tmp / "merged")], check=True)
        shutil.rmtree(tmp)
    defaults = {c: images[(c, "v1")] for c in standins.COMPONENTS}
    deb = build_deb()
    with overlay([base], tmp / "upper", tmp / "work", tmp / "merged") as tree, \
            running_registry() as registry:
        log(f"installing {deb.name} and podman-py into {tmp / 'upper'}")
        work = tree / "var/tmp/podvm-build"  # not /tmp: systemd-nspawn mounts a tmpfs there
        (work / "wheels").mkdir(parents=True)
        shutil.copy2(podman_py_wheel(cache), work / "wheels")
        shutil.copy2(deb, work)
        in_tree(tree, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "--quiet", "--yes",
                f"/var/tmp/podvm-build/{deb.name}")
        in_tree(tree, "pip", "install", "--quiet", "--break-system-packages", "--no-index", "--no-deps",
                "--find-links", "/var/tmp/podvm-build/wheels", "podman")
        shutil.rmtree(work)

        etc = tree / "etc" / "podvm-bootstrap"
        etc.mkdir(parents=True)
        (etc / "bootstrap.yaml").write_text(baked_bootstrap())
        (etc / "policy.yaml").write_text(baked_policy(list(defaults)))
        key_file = tree / KEY_FILE.lstrip("/")
        key_file.parent.mkdir(parents=True)
        key_file.write_text(release_key(cache).public_pem)
        (etc / "components.yaml").write_text(baked_components("v1"))
        (tree / "etc/containers/containers.conf").write_text(TEST_BED_CONTAINERS_CONF)
        (tree / "etc/containers/storage.conf").write_text(TEST_BED_STORAGE_CONF)
        (tree / MIRROR_CONF).parent.mkdir(parents=True, exist_ok=True)
        (tree / MIRROR_CONF).write_text(mirror_conf(registry.host))
        (tree / "etc/systemd/system" / RO_STORE_MOUNT_UNIT).write_text(RO_STORE_MOUNT)
        # podvm-bootstrap.service is enabled by its package.
        subprocess.run(["systemctl", f"--root={tree}", "--quiet", "enable", "podman.socket", RO_STORE_MOUNT_UNIT],
                       check=True)

        log(f"baking the default component images (stand-ins) into {RO_STORE}")
        for (component, variant), image in images.items():  # every stand-in the manifest may name
            if variant != "padded":
                registry.push_standin(image)
        bake(tree, registry.host)
        lock = json.loads((etc / "components.lock.json").read_text())["images"]
        baked = {e["component"]: e["reference"].rsplit(":", 1)[0] + "@" + e["digest"] for e in lock
                 if e["variant"] is None}
        if baked != {c: f"quay.io/{i.repository}@{i.digest}" for c, i in defaults.items()}:
            raise SystemExit(f"image/build.py: bake pinned {baked}, not the stand-ins' digests")
        variants = {f"{e['component']}/{e['variant']}": e["reference"].rsplit(":", 1)[0] + "@" + e["digest"]
                    for e in lock if e["variant"] is not None}
        # Nothing of the build's own runs may stay in the image.
        shutil.rmtree(tree / "run" / "containers", ignore_errors=True)
    shutil.rmtree(tmp / "work")
    shutil.rmtree(tmp / "merged")
    (tmp / "image.json").write_text(json.dumps({
        "defaults": baked,
        "variants": variants,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def prune(cache: Path, keep: set[str], max_age: float = 3600) -> None:
    """Remove layers, bases and stand-ins of older inputs, once unused for an
    hour (a VM of a concurrent session may still stand on a recent one)."""
    for entry in cache.iterdir():
        if entry.name.startswith(("layer-", "base-", "standins-")) and entry.name not in keep \
                and not entry.name.endswith(".partial") and time.time() - entry.stat().st_mtime > max_age:
            log(f"pruning {entry}")
            subprocess.run(["rm", "-rf", "--one-file-system", str(entry)], check=False)


def build(cache: Path) -> dict:
    with cache_lock(cache):
        base = rootfs_base.ensure_base(cache, log)
        images = standins.build_all(cache / f"standins-{standins.inputs_key()}")
        final = cache / f"layer-{layer_key(standins.inputs_key(), release_key(cache).public_pem)}"
        if not (final / "image.json").exists():
            started = time.monotonic()
            build_layer(cache, base, images, final)
            log(f"project layer built in {time.monotonic() - started:.0f}s: {final}")
            prune(cache, keep={final.name, base.parent.name, images[(standins.COMPONENTS[0], "v1")].layout.parent.name})
        info = json.loads((final / "image.json").read_text())
    return {
        "lowerdirs": [str(final / "upper"), str(base)],
        "layer": str(final),
        "base": str(base),
        "standins": str(images[(standins.COMPONENTS[0], "v1")].layout.parent),
        "defaults": info["defaults"],
        "mirror_conf": "/" + MIRROR_CONF,
    }


def cached_build_main(doc: str, program: str, root_for: str, make: Callable[[Path], dict]) -> int:
    """The command line of a cached build (this script, image/disk.py): --cache,
    root required (`root_for` says why), the built thing's description as JSON."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help="cache directory ($PODVM_CACHE, /var/cache/podvm-bootstrap)")
    args = parser.parse_args()
    if args.cache:
        os.environ["PODVM_CACHE"] = str(args.cache)
    if os.geteuid() != 0:
        print(f"{program}: must run as root ({root_for})", file=sys.stderr)
        return 1
    print(json.dumps(make(cache_dir()), indent=1))
    return 0


def main() -> int:
    return cached_build_main(__doc__, "image/build.py", "debootstrap, mount, systemd-nspawn", build)


if __name__ == "__main__":
    sys.exit(main())
