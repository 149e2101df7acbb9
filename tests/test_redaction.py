"""The redaction rules of `collect` (podvm_bootstrap.cli.redaction, pure): what
of each secret-bearing file is kept (names, sizes, digests, structure) and
that no planted secret survives in a summary or in a scrubbed text."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podvm_bootstrap.cli.redaction import (
    HEX_DIGEST,
    INITDATA,
    JSON_SECRET_KEYS,
    JSON_VALUES,
    MIN_SCRUB,
    OPAQUE,
    PLACEHOLDER,
    TOML_VALUES,
    USERDATA,
    redact,
    rule_for,
    scrub,
    scrub_forms,
)
from tests.planted_secrets import (
    AA_TOML,
    APF_JSON,
    AUTH_JSON,
    CA_BODY,
    CDH_SECRET,
    CDH_TOML,
    KBS_TOKEN,
    REGISTRY_AUTH,
    RUNCMD_PASSWORD,
    SECRETS,
    TLS_CERT_BODY,
    TLS_KEY_BODY,
    initdata_blob,
    pem,
    userdata_text,
)


def everything_of(result) -> str:
    return json.dumps(result.summary)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked"


def test_rules_are_chosen_by_the_file_name():
    assert rule_for("/run/peerpod/auth.json") == JSON_VALUES
    assert rule_for("apf.json") == JSON_SECRET_KEYS
    assert rule_for("/run/peerpod/aa.toml") == rule_for("cdh.toml") == TOML_VALUES
    assert rule_for("/run/peerpod/initdata") == INITDATA
    assert rule_for("/run/peerpod/initdata.digest") == HEX_DIGEST
    assert rule_for("/run/podvm-bootstrap/user-data") == USERDATA
    # default deny: anything else is opaque
    assert rule_for("/run/peerpod/policy.rego") == rule_for("/run/peerpod/anything-new") == OPAQUE


def test_every_file_is_named_with_its_size_and_sha256():
    for name, data in (("auth.json", AUTH_JSON), ("apf.json", APF_JSON), ("aa.toml", AA_TOML), ("x.bin", b"\0\1")):
        summary = redact(name, data).summary
        assert summary["file"] == name and summary["size"] == len(data)
        assert summary["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_auth_json_keeps_the_registry_names_and_no_value():
    result = redact("auth.json", AUTH_JSON)
    assert result.summary["shape"] == {"auths": {"registry.example:5000": {
        "auth": f"<redacted: string, {len(REGISTRY_AUTH)} bytes>"}}}
    assert_no_secret(everything_of(result))
    assert REGISTRY_AUTH in result.secrets


def test_apf_json_keeps_the_pod_network_and_withholds_keys_and_certificates():
    result = redact("apf.json", APF_JSON)
    shape = result.summary["shape"]
    assert shape["pod-network"] == {"podip": "10.244.0.19/24", "interface": "eth0", "mtu": 1500, "vxlan-id": 555001}
    assert shape["pod-name"] == "nginx-866fdb5bfb-b98nw"
    for key in ("tls-server-key", "tls-server-cert", "tls-client-ca"):
        assert shape[key].startswith("<redacted: string, ")
    assert_no_secret(everything_of(result))
    # each PEM's lines are searched for elsewhere, its armour lines are not
    assert {TLS_KEY_BODY, TLS_CERT_BODY, CA_BODY} <= result.secrets
    assert "-----BEGIN CERTIFICATE-----" not in result.secrets
    assert "10.244.0.19/24" not in result.secrets


@pytest.mark.parametrize("key", ["password", "apiToken", "client_secret", "ssh.private", "registry-credentials",
                                 "tlsCert", "ca"])
def test_apf_json_secret_keys_by_their_parts(key):
    result = redact("apf.json", json.dumps({key: "value-planted-0001", "other": {"nested": "kept-value"}}).encode())
    assert result.summary["shape"] == {key: "<redacted: string, 18 bytes>", "other": {"nested": "kept-value"}}


def test_apf_json_a_pem_under_any_key_is_withheld():
    result = redact("apf.json", json.dumps({"blob": pem("EC PRIVATE KEY", TLS_KEY_BODY)}).encode())
    assert_no_secret(everything_of(result))


def test_toml_files_keep_tables_and_keys_and_withhold_every_value():
    aa = redact("aa.toml", AA_TOML)
    assert aa.summary["shape"] == {"token_configs": {"kbs": {"url": "<redacted: string, 21 bytes>",
                                                             "token": "<redacted: string, 16 bytes>"}}}
    cdh = redact("/run/peerpod/cdh.toml", CDH_TOML)
    assert cdh.summary["shape"]["kbc"]["retries"] == "<redacted: number>"
    for result in (aa, cdh):
        assert_no_secret(everything_of(result))
    assert KBS_TOKEN in aa.secrets and CDH_SECRET in cdh.secrets


def test_initdata_keeps_algorithm_version_digest_and_names():
    blob, toml = initdata_blob()
    result = redact("/run/peerpod/initdata", blob)
    info = result.summary["initdata"]
    assert info["algorithm"] == "sha384" and info["version"] == "0.1.0"
    assert info["digest"] == hashlib.sha384(toml).hexdigest()
    assert sorted(info["data"]) == ["aa.toml", "policy.rego"]
    assert info["data"]["aa.toml"]["shape"]["token_configs"]["kbs"]["token"].startswith("<redacted")
    assert info["data"]["policy.rego"]["rule"] == OPAQUE
    assert_no_secret(everything_of(result))
    assert {KBS_TOKEN, "default AllowRequestsFailingPolicy := planted-policy-99"} <= result.secrets


def test_the_initdata_digest_file_is_kept_when_it_is_a_digest():
    digest = hashlib.sha256(b"x").hexdigest()
    assert redact("initdata.digest", digest.encode()).summary["value"] == digest
    assert redact("initdata.digest", digest.encode()).secrets == frozenset()
    odd = redact("initdata.digest", b"not a digest " + KBS_TOKEN.encode())
    assert "value" not in odd.summary and KBS_TOKEN not in everything_of(odd)


def test_userdata_keeps_the_written_paths_and_withholds_contents():
    raw = userdata_text()
    result = redact("/run/podvm-bootstrap/user-data", raw)
    info = result.summary["user-data"]
    assert [w["path"] for w in info["write_files"]] == ["/run/peerpod/auth.json", "/run/peerpod/apf.json",
                                                        "/run/peerpod/aa.toml", "/run/peerpod/cdh.toml",
                                                        "/run/peerpod/initdata"]
    assert info["write_files"][2]["size"] == len(AA_TOML)
    assert info["write_files"][2]["sha256"] == "sha256:" + hashlib.sha256(AA_TOML).hexdigest()
    assert info["write_files"][1]["shape"]["pod-network"]["podip"] == "10.244.0.19/24"
    assert info["overrides_requested"] == ["agent-protocol-forwarder"] and info["ignored_keys"] == ["runcmd"]
    assert_no_secret(everything_of(result))
    # the contents, their b64 forms and the document's own lines are searched for elsewhere
    assert base64.b64encode(AA_TOML).decode() in result.secrets
    assert f"- echo root:{RUNCMD_PASSWORD} | chpasswd" in result.secrets
    assert base64.b64encode(CDH_TOML).decode() in result.secrets


def test_userdata_as_base64_of_gzip_is_decoded_first():
    raw = base64.b64encode(gzip.compress(userdata_text()))
    result = redact("user-data", raw)
    assert len(result.summary["user-data"]["write_files"]) == 5


@pytest.mark.parametrize("name,data", [
    ("auth.json", b'{"auths": ' + REGISTRY_AUTH.encode()),          # broken JSON
    ("aa.toml", b"token = " + KBS_TOKEN.encode() + b"\n[["),       # broken TOML
    ("cdh.toml", b"\xff\xfe" + CDH_SECRET.encode()),                # not UTF-8
    ("initdata", b"!!" + KBS_TOKEN.encode()),                       # not base64
    ("user-data", b"#!/bin/sh\necho " + RUNCMD_PASSWORD.encode()),  # a script
    ("user-data", b"#cloud-config\nwrite_files: [" + RUNCMD_PASSWORD.encode()),  # broken YAML
])
def test_a_file_its_rule_cannot_parse_is_withheld_whole(name, data):
    result = redact(name, data)
    assert result.summary["note"].startswith("not parsed (") and "shape" not in result.summary
    assert_no_secret(everything_of(result))
    # the file's own lines are what the other parts are searched for
    scrubbed, count = scrub(data, scrub_forms(result.secrets))
    assert count >= 1
    assert_no_secret(scrubbed.decode("utf-8", "replace"))


def test_deep_documents_are_cut_and_withheld():
    deep: object = KBS_TOKEN
    for _ in range(100):
        deep = {"k": deep}
    result = redact("apf.json", json.dumps(deep).encode())
    assert_no_secret(everything_of(result))
    assert KBS_TOKEN in result.secrets


def test_scrub_replaces_every_form_and_counts():
    secrets = {KBS_TOKEN, 'quote"and\nline', "short"}
    forms = scrub_forms(secrets)
    assert b"short" not in forms and len("short") < MIN_SCRUB
    text = (f"aa: token {KBS_TOKEN} refused; json: " + json.dumps({"v": 'quote"and\nline'}) + " short").encode()
    out, count = scrub(text, forms)
    assert count == 2 and KBS_TOKEN.encode() not in out and b"quote" not in out
    assert out.count(PLACEHOLDER) == 2 and out.endswith(b" short")


def test_scrub_replaces_a_longer_secret_before_its_parts():
    forms = scrub_forms({"abcdef", "abcdefghij"})
    out, count = scrub(b"x abcdefghij y abcdef", forms)
    assert out == b"x <redacted> y <redacted>" and count == 2


def test_a_lone_surrogate_from_json_is_searched_for_as_it_can_appear():
    result = redact("auth.json", b'{"auth": "abc\\ud800defghi"}')
    assert scrub_forms(result.secrets)  # no UnicodeEncodeError


# Secret-like leaves (upper case and digits) cannot collide with keys (lower
# case) nor with a placeholder's text.
_leaf = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=MIN_SCRUB, max_size=24)
_doc = st.recursive(
    _leaf | st.integers() | st.booleans() | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abcdefgh-_", max_size=12), inner, max_size=4),
    max_leaves=30)


def _leaves(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaves(v)]
    if isinstance(value, list):
        return [s for v in value for s in _leaves(v)]
    return [value] if isinstance(value, str) else []


@given(doc=st.dictionaries(st.text("abcdefgh-_", max_size=12), _doc, max_size=6))
@settings(max_examples=200, deadline=None)
def test_no_value_of_any_auth_json_survives_in_its_summary_or_a_scrubbed_copy(doc):
    data = json.dumps(doc).encode()
    result = redact("auth.json", data)
    summary = json.dumps(result.summary)
    scrubbed, _ = scrub(json.dumps({"echo": doc}).encode(), scrub_forms(result.secrets))
    for leaf in _leaves(doc):
        assert leaf not in summary and leaf.encode() not in scrubbed
