"""Known secrets, planted in the files user-data provisions (and in the
user-data itself) by the tests of `collect` and its redaction rules, which
then search every byte of the output for each of them."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile

import yaml

# Known secrets, each distinct, planted below and searched for in every output.
REGISTRY_AUTH = base64.b64encode(b"podvm:registry-pass-7f3a").decode()
TLS_KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDplantedkey01"
TLS_CERT_BODY = "MIIDazCCAlOgAwIBAgIUplantedcert000000000000000000000000000000"
CA_BODY = "MIIBszCCAVmgAwIBAgIUplantedcacert0000000000000000000000000000"
KBS_TOKEN = "kbs-token-4c1d9e"
CDH_SECRET = "cdh-sealed-secret-88aa"
POLICY_TEXT = "package agent_policy\ndefault AllowRequestsFailingPolicy := planted-policy-99"
RUNCMD_PASSWORD = "chpasswd-root-Secr3t"

SECRETS = (REGISTRY_AUTH, TLS_KEY_BODY, TLS_CERT_BODY, CA_BODY, KBS_TOKEN, CDH_SECRET, "planted-policy-99",
           RUNCMD_PASSWORD)


def pem(kind: str, body: str) -> str:
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


AUTH_JSON = json.dumps({"auths": {"registry.example:5000": {"auth": REGISTRY_AUTH}}}).encode()
APF_JSON = json.dumps({
    "pod-network": {"podip": "10.244.0.19/24", "interface": "eth0", "mtu": 1500, "vxlan-id": 555001},
    "pod-namespace": "default", "pod-name": "nginx-866fdb5bfb-b98nw",
    "tls-server-key": pem("PRIVATE KEY", TLS_KEY_BODY),
    "tls-server-cert": pem("CERTIFICATE", TLS_CERT_BODY),
    "tls-client-ca": pem("CERTIFICATE", CA_BODY),
}).encode()
AA_TOML = f'[token_configs]\n[token_configs.kbs]\nurl = "http://127.0.0.1:8080"\ntoken = "{KBS_TOKEN}"\n'.encode()
CDH_TOML = f'socket = "unix:///run/cdh.sock"\n[kbc]\nname = "cc_kbc"\nsecret = "{CDH_SECRET}"\nretries = 3\n'.encode()


def initdata_blob(algorithm: str = "sha384") -> tuple[bytes, bytes]:
    toml = (f'algorithm = "{algorithm}"\nversion = "0.1.0"\n[data]\n"aa.toml" = \'\'\'\n{AA_TOML.decode()}\'\'\'\n'
            f'"policy.rego" = \'\'\'\n{POLICY_TEXT}\n\'\'\'\n').encode()
    return base64.b64encode(gzip.compress(toml)), toml



OVERRIDE = "ghcr.io/example/apf@sha256:" + "a" * 64


def userdata_text(*, initdata: bool = True, override: str | None = OVERRIDE) -> bytes:
    """A cloud-config writing auth.json and apf.json (text), aa.toml and
    cdh.toml (b64), and an initdata (unless initdata=False), with a runcmd
    holding a password (ignored by the daemon, withheld all the same)."""
    files: list[dict[str, str]] = [
        {"path": "/run/peerpod/auth.json", "content": AUTH_JSON.decode()},
        {"path": "/run/peerpod/apf.json", "content": APF_JSON.decode()},
        {"path": "/run/peerpod/aa.toml", "encoding": "b64", "content": base64.b64encode(AA_TOML).decode()},
        {"path": "/run/peerpod/cdh.toml", "encoding": "b64", "content": base64.b64encode(CDH_TOML).decode()},
    ]
    if initdata:
        files.append({"path": "/run/peerpod/initdata", "content": initdata_blob("sha256")[0].decode()})
    doc: dict[str, object] = {"write_files": files, "runcmd": [f"echo root:{RUNCMD_PASSWORD} | chpasswd"]}
    if override:
        doc["podvm_bootstrap"] = {"images": {"agent-protocol-forwarder": override}}
    return ("#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=10_000)).encode()


PREFIX = "podvm-bootstrap: error: collect: "   # the line a part that cannot be had prints on stderr


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bundle_members(data: bytes) -> dict[str, bytes]:
    """A collect bundle's members by their name inside its one top directory."""
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tops = set()
        for info in tar.getmembers():
            assert info.isfile(), f"{info.name}: only regular files in a bundle"
            top, _, name = info.name.partition("/")
            tops.add(top)
            extracted = tar.extractfile(info)
            assert extracted is not None
            members[name] = extracted.read()
    assert len(tops) == 1 and next(iter(tops)).startswith("podvm-collect-"), tops
    return members


def assert_no_secret_in_bundle(data: bytes) -> None:
    """No planted secret in any member (decompressed), nor anywhere in the
    decompressed tar stream (names and headers included)."""
    stream = gzip.decompress(data)
    for name, content in bundle_members(data).items():
        for secret in SECRETS:
            assert secret.encode() not in content, f"{secret!r} leaked into {name}"
    for secret in SECRETS:
        assert secret.encode() not in stream, f"{secret!r} leaked into the tar stream"


def manifest_of(members: dict[str, bytes]) -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(members["MANIFEST.json"])["parts"]}


def assert_manifest_tells_the_truth(members: dict[str, bytes], stderr: bytes) -> dict[str, dict]:
    """Every part kept is a member with its size and sha256, nothing else is
    in the bundle, and each part that could not be had is one stderr line."""
    parts = manifest_of(members)
    assert set(members) - {"MANIFEST.json"} == {n for n, p in parts.items() if "sha256" in p}
    for name, part in parts.items():
        if "sha256" in part:
            assert (part["size"], part["sha256"]) == (len(members[name]), sha256(members[name])), name
    lines = [line for line in stderr.decode().splitlines() if line.startswith(PREFIX)]
    assert lines == [f"{PREFIX}{p['name']}: {p['error']}" for p in parts.values() if "error" in p]
    assert "Traceback" not in stderr.decode()
    return parts
