"""Builds the STAND-IN component images (test fixtures, not the real agents).

One static C program (standin.c) plays every component; each image holds it
under the component's name, plus busybox for `exec` probes. Images are written
as OCI layouts, byte for byte reproducible (sorted tar, zero mtimes, gzip
without a timestamp), so their digests depend only on the binaries: an image
build and a test session that build them separately agree on every digest.

    python -m tests.standins.images OUTDIR    # builds, prints the index as JSON
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "standin.c"
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "cat", "ls", "touch", "rm", "kill", "sleep", "echo", "test", "nc", "ps", "mkdir")
NAMESPACE = "confidential-containers"  # quay.io/confidential-containers/<component>
COMPONENTS = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder",
              "api-server-rest")
# The attestation agent's per-TEE builds (components.yaml variants): v1 with
# /etc/standin-variant naming the TEE, so each answers "... standin v1 <tee>".
AA_TEE_VARIANTS = ("az-snp-vtpm", "az-tdx-vtpm", "tdx", "snp", "se")
PAD_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class StandinImage:
    component: str
    variant: str       # "v1" (the default), "v2" (an override), "padded" (v1 plus 50 MB), or a TEE
                       # (attestation-agent only: its build for that TEE, AA_TEE_VARIANTS)
    layout: Path       # OCI layout directory
    digest: str        # sha256:... of the manifest, as registries and podman report it

    @property
    def repository(self) -> str:
        """The repository path under a registry: confidential-containers/<component>."""
        return f"{NAMESPACE}/{self.component}"

    @property
    def tag(self) -> str:
        return self.variant

    @property
    def version_line(self) -> str:
        """What the stand-in answers on every connection."""
        if self.variant in AA_TEE_VARIANTS:
            return f"{self.component} standin v1 {self.variant}"
        version = "v1" if self.variant == "padded" else self.variant
        return f"{self.component} standin {version}"


VARIANTS = [(c, "v1") for c in COMPONENTS] + [("agent-protocol-forwarder", "v2"),
                                               ("agent-protocol-forwarder", "padded")] \
    + [("attestation-agent", tee) for tee in AA_TEE_VARIANTS]


def inputs_key() -> str:
    h = hashlib.sha256()
    for f in (SOURCE, Path(__file__), BUSYBOX):
        h.update(f.read_bytes())
    h.update(subprocess.run(["gcc", "--version"], capture_output=True, check=True).stdout)
    return h.hexdigest()[:16]


def build_all(outdir: Path) -> dict[tuple[str, str], StandinImage]:
    """Build every stand-in into outdir (reused when already built from the
    same inputs) and return them by (component, variant)."""
    index_file = outdir / "index.json"
    if index_file.exists():
        return load_index(outdir)
    tmp = outdir.with_name(outdir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    binaries = {v: compile_standin(tmp, v).read_bytes() for v in ("v1", "v2")}
    entries = []
    for component, variant in VARIANTS:
        binary = binaries["v2" if variant == "v2" else "v1"]
        layout = tmp / f"{component}-{variant}"
        digest = _write_layout(layout, component, binary, pad=variant == "padded",
                               tee=variant if variant in AA_TEE_VARIANTS else None)
        entries.append({"component": component, "variant": variant, "digest": digest})
    (tmp / "index.json").write_text(json.dumps(entries, indent=1))
    for f in tmp.glob("standin-*"):
        f.unlink()
    shutil.rmtree(outdir, ignore_errors=True)
    tmp.rename(outdir)
    return load_index(outdir)


def load_index(outdir: Path) -> dict[tuple[str, str], StandinImage]:
    entries = json.loads((outdir / "index.json").read_text())
    return {(e["component"], e["variant"]): StandinImage(e["component"], e["variant"],
                                                          outdir / f"{e['component']}-{e['variant']}", e["digest"])
            for e in entries}


def compile_standin(workdir: Path, version: str) -> Path:
    out = workdir / f"standin-{version}"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", f'-DSTANDIN_VERSION="{version}"',
                    "-o", str(out), str(SOURCE)], check=True)
    subprocess.run(["strip", str(out)], check=True)
    return out


def _tar_layer(component: str, binary: bytes, pad: bool, tee: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        def add_link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)

        for d in ("bin", "etc", "run", "tmp", "usr", "usr/local", "usr/local/bin"):
            add_dir(d)
        add_file("bin/busybox", BUSYBOX.read_bytes())
        for applet in BUSYBOX_APPLETS:
            add_link(f"bin/{applet}", "busybox")
        add_file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)
        add_file("etc/group", b"root:x:0:\n", 0o644)
        add_file("etc/standin", f"STAND-IN test image of {component}, not the real component\n".encode(), 0o644)
        if tee is not None:
            add_file("etc/standin-variant", f"{tee}\n".encode(), 0o644)
        if pad:
            add_file("pad.bin", random.Random(component).randbytes(PAD_BYTES), 0o644)
        add_file("usr/local/bin/standin", binary)
        add_link(f"usr/local/bin/{component}", "standin")
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def _write_layout(layout: Path, component: str, binary: bytes, pad: bool, tee: str | None = None) -> str:
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    tar = _tar_layer(component, binary, pad, tee)
    gz = gzip.compress(tar, compresslevel=1 if pad else 6, mtime=0)
    layer_digest = _blob(layout, gz)
    config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Cmd": [f"/usr/local/bin/{component}"],
            "Labels": {"org.opencontainers.image.description": f"test stand-in for {component}"},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(layout, config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(gz)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _blob(layout, manifest_bytes)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(manifest_bytes), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return manifest_digest


if __name__ == "__main__":
    built = build_all(Path(sys.argv[1]))
    print(json.dumps({f"{c}:{v}": img.digest for (c, v), img in built.items()}, indent=1))
