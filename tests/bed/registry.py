"""A real container registry (distribution 2.8, Debian's docker-registry) on
127.0.0.1, optionally requiring a password (htpasswd, bcrypt)."""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bed.proc import BedError, Service, free_port
from tests.standins.images import StandinImage

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


@dataclass
class Registry:
    """A running registry. `host` is 127.0.0.1:<port>; references to images in
    it are `<host>/<repository>@sha256:...`."""

    port: int
    storage: Path
    service: Service
    username: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.service.pid

    def _creds(self) -> list[str]:
        return [f"--creds={self.username}:{self.password}"] if self.username else []

    def auth_json(self) -> dict:
        """The containers-auth.json content that logs in to this registry."""
        if not self.username:
            return {"auths": {}}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"auths": {self.host: {"auth": token}}}

    def push_layout(self, layout: Path, repository: str, tag: str) -> str:
        """Copy an OCI layout into this registry as repository:tag; returns the
        manifest digest the registry reports."""
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *self._dest_creds(),
                        f"oci:{layout}:latest", f"docker://{self.host}/{repository}:{tag}"],
                       check=True, capture_output=True, timeout=300)
        return self.manifest_digest(repository, tag)

    def _dest_creds(self) -> list[str]:
        return [f"--dest-creds={self.username}:{self.password}"] if self.username else []

    def push_standin(self, image: StandinImage, repository: str | None = None, *, sign: bool = True) -> str:
        """Push a stand-in (by default as confidential-containers/<component>:<variant>)
        and check the registry kept its digest. `sign`: also attach its cosign
        signature by the test bed's release key, made for the stand-in's real
        name (quay.io/confidential-containers/<component>), as a release would be."""
        from tests.bed.cosign import sign_image
        from tests.bed.keys import STANDIN_IDENTITY, release_key

        repository = repository or image.repository
        digest = self.push_layout(image.layout, repository, image.tag)
        if digest != image.digest:
            raise BedError(f"registry changed the digest of {image.component}:{image.variant}: "
                           f"{digest} != {image.digest}")
        if sign:
            sign_image(self.host, repository, digest, release_key(),
                       identity=STANDIN_IDENTITY.format(repository=image.repository), auth=self._auth_header())
        return digest

    def push_podman_image(self, local_ref: str, repository: str, tag: str, podman: list[str] | None = None) -> str:
        """Push an image from a podman storage (`podman push --tls-verify=false`)."""
        creds = [f"--creds={self.username}:{self.password}"] if self.username else []
        subprocess.run([*(podman or ["podman"]), "push", "--quiet", "--tls-verify=false", *creds, local_ref,
                        f"{self.host}/{repository}:{tag}"], check=True, capture_output=True, timeout=300)
        return self.manifest_digest(repository, tag)

    def manifest_digest(self, repository: str, reference: str) -> str:
        """The Docker-Content-Digest of repository:reference (HEAD request)."""
        req = urllib.request.Request(f"http://{self.host}/v2/{repository}/manifests/{reference}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES, **self._auth_header()})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.headers["Docker-Content-Digest"]

    def has_manifest(self, repository: str, reference: str) -> bool:
        try:
            self.manifest_digest(repository, reference)
            return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def _auth_header(self) -> dict[str, str]:
        if not self.username:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def stop(self) -> None:
        self.service.stop()


def mirror_conf(registry_host: str) -> str:
    """registries.conf drop-in: pulls of quay.io/confidential-containers/* (by
    digest too) go to the loopback registry holding the stand-ins."""
    return (f"# TEST BED ONLY: the stand-ins of quay.io/confidential-containers/* live in a loopback registry.\n"
            f"[[registry]]\nprefix = \"quay.io/confidential-containers\"\n"
            f"location = \"quay.io/confidential-containers\"\n"
            f"[[registry.mirror]]\nlocation = \"{registry_host}/confidential-containers\"\ninsecure = true\n")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # up, and wants a password


def start_registry(storage: Path, *, port: int | None = None, username: str | None = None,
                   password: str | None = None, timeout: float = 20.0) -> Registry:
    """Start docker-registry on 127.0.0.1 (a free port unless given) serving
    `storage`; with username/password it requires them (htpasswd, bcrypt)."""
    storage.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if username:
        htpasswd = storage / "htpasswd"
        subprocess.run(["htpasswd", "-B", "-b", "-c", str(htpasswd), username, password or ""],
                       check=True, capture_output=True)
        config["auth"] = {"htpasswd": {"realm": "podvm-test-bed", "path": str(htpasswd)}}
    config_file = storage / "config.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    service = Service(f"docker-registry:{port}", ["docker-registry", "serve", str(config_file)],
                      storage / "registry.log")
    service.wait_ready(lambda: _answers(port), timeout, f"answering on 127.0.0.1:{port}")
    return Registry(port, storage, service, username, password)


@contextmanager
def running_registry(storage: Path | None = None, **kwargs) -> Iterator[Registry]:
    """A registry for the duration of the block, stopped by its PID after."""
    with tempfile.TemporaryDirectory(prefix="podvm-registry-") as tmp:
        registry = start_registry(storage or Path(tmp), **kwargs)
        try:
            yield registry
        finally:
            registry.stop()
