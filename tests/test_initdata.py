"""Initdata parsing: base64 of gzipped TOML, digest over the decompressed TOML."""

from __future__ import annotations

import base64
import gzip
import hashlib
from pathlib import Path

import pytest

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.userdata.initdata import (
    DIGEST_FILE,
    PLACEHOLDER_TOML,
    InitdataError,
    bound_digest,
    bound_value,
    extract,
    image_requests,
    parse_initdata,
    placeholder_blob,
)

MAX = 1024 * 1024

AA = "[token_configs]\n[token_configs.kbs]\nurl = 'http://127.0.0.1:8080'\n"
CDH = "socket = 'unix:///run/confidential-containers/cdh.sock'\ncredentials = []\n"
POLICY = "package agent_policy\n\ndefault CreateContainerRequest := true\n"


def toml_doc(algorithm: str = "sha384", extra: str = "") -> bytes:
    return (f'algorithm = "{algorithm}"\nversion = "0.1.0"\n{extra}\n[data]\n'
            f'"aa.toml" = \'\'\'\n{AA}\'\'\'\n"cdh.toml" = \'\'\'\n{CDH}\'\'\'\n'
            f'"policy.rego" = \'\'\'\n{POLICY}\'\'\'\n').encode()


def blob(toml: bytes) -> bytes:
    return base64.b64encode(gzip.compress(toml))


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_digest_is_the_named_hash_of_the_decompressed_toml(algorithm):
    toml = toml_doc(algorithm)
    parsed = parse_initdata(blob(toml), MAX)
    assert parsed.algorithm == algorithm
    assert parsed.version == "0.1.0"
    assert parsed.digest_hex == hashlib.new(algorithm, toml).hexdigest()
    # not the digest of the compressed or base64 form
    assert parsed.digest_hex != hashlib.new(algorithm, blob(toml)).hexdigest()


def test_data_files_are_extracted_exactly():
    parsed = parse_initdata(blob(toml_doc()), MAX)
    assert parsed.files == {"aa.toml": AA.encode(), "cdh.toml": CDH.encode(), "policy.rego": POLICY.encode()}


def test_extract_adds_the_hex_digest_file():
    toml = toml_doc("sha512")
    files = extract(blob(toml), MAX)
    assert files[DIGEST_FILE] == hashlib.sha512(toml).hexdigest().encode()
    assert set(files) == {"aa.toml", "cdh.toml", "policy.rego", DIGEST_FILE}


def test_surrounding_whitespace_and_line_wrapping_are_tolerated():
    toml = toml_doc()
    wrapped = b"\n  " + base64.encodebytes(gzip.compress(toml)) + b"\n\n"
    assert parse_initdata(wrapped, MAX).digest_hex == hashlib.sha384(toml).hexdigest()


def test_unknown_data_keys_are_not_files():
    toml = b'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"../../etc/passwd" = "x"\n"aa.toml" = "a"\n'
    assert parse_initdata(blob(toml), MAX).files == {"aa.toml": b"a"}


def test_missing_data_table_means_no_files():
    toml = b'algorithm = "sha256"\nversion = "0.1.0"\n'
    parsed = parse_initdata(blob(toml), MAX)
    assert parsed.files == {} and parsed.digest_hex == hashlib.sha256(toml).hexdigest()


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"not base64 at all!", "not valid base64"),
    (base64.b64encode(b"algorithm = 'sha256'"), "not base64 of gzip"),
    (base64.b64encode(gzip.compress(b"x" * 100)[:-10]), "not valid gzip"),
    (blob(b"algorithm = \n"), "not valid TOML"),
    (blob(b"\xff\xfe"), "not UTF-8"),
    (blob(toml_doc("md5")), "algorithm must be one of sha256, sha384, sha512, got 'md5'"),
    (blob(b'version = "0.1.0"\n'), "algorithm must be one of"),
    (blob(b'algorithm = "sha256"\n'), "version"),
    (blob(b'algorithm = "sha256"\nversion = "1"\ndata = "x"\n'), r"\[data\] must be a table"),
    (blob(b'algorithm = "sha256"\nversion = "1"\n[data]\n"aa.toml" = 5\n'), "must be a string"),
])
def test_bad_initdata_is_one_clear_error(data, message):
    with pytest.raises(InitdataError, match=message) as info:
        parse_initdata(data, MAX)
    assert "\n" not in str(info.value)


def test_toml_error_names_the_line():
    with pytest.raises(InitdataError, match="line 3"):
        parse_initdata(blob(b'algorithm = "sha256"\nversion = "1"\nbroken ==\n'), MAX)


def test_deep_nesting_is_one_clear_error():
    toml = b'algorithm = "sha256"\nversion = "1"\na = ' + b"[" * 100000
    with pytest.raises(InitdataError, match="initdata TOML refused: nested deeper than 16 \\(at line 3\\)"):
        parse_initdata(blob(toml), MAX)


def test_gzip_bomb_is_bounded():
    with pytest.raises(InitdataError, match=f"more than {MAX} bytes"):
        parse_initdata(base64.b64encode(gzip.compress(b" " * (MAX * 8))), MAX)


# --- the adaptor's placeholder and the PCR binding, against upstream data -------

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream" / "cloud-api-adaptor"
# cloud-api-adaptor provision_test.go `testCheckSum` (see fixtures/upstream/cloud-api-adaptor/README.md)
ADAPTOR_TEST_CHECKSUM = ("52af3178dd7ad4bf551e629b84b45bfd1fbe1434b980120267181ae3575ea20ca"
                         "9013b8eadf31d27eed7ff2552d500ef")


def test_the_placeholder_is_the_adaptors_byte_for_byte():
    adaptor = (UPSTREAM / "placeholder-initdata.toml").read_bytes()
    assert adaptor == PLACEHOLDER_TOML
    parsed = parse_initdata(placeholder_blob(), MAX)
    assert parsed.digest_hex == hashlib.sha256(adaptor).hexdigest() == (
        "adb48cc14fea9403d3d51f3b5f5068fd4d80445a14e94f1b3d5dbabaad66478d")
    assert parsed.files == {"aa.toml": b""}
    assert placeholder_blob() == placeholder_blob()   # no timestamp: the same file every boot


def test_the_adaptors_own_initdata_vector_gives_its_checksum():
    blob = (UPSTREAM / "provision_test-ccInitData.b64").read_bytes()
    assert parse_initdata(blob, MAX).digest_hex == ADAPTOR_TEST_CHECKSUM


def test_a_long_digest_is_cut_to_the_32_bytes_the_adaptor_extends():
    # tpm2_pcrextend 8:sha256=$(head -c64 initdata.digest): the first 64 hex digits
    assert bound_digest(ADAPTOR_TEST_CHECKSUM) == bytes.fromhex(ADAPTOR_TEST_CHECKSUM[:64])
    assert bound_digest("ab" * 32) == bytes.fromhex("ab" * 32)
    assert bound_digest("cd" * 64 + "\n") == bytes.fromhex("cd" * 32)


@pytest.mark.parametrize("text", ["", "ab" * 31, "ab" * 40, "zz" * 32, "ab" * 33])
def test_a_digest_file_that_is_no_digest_is_refused(text):
    with pytest.raises(ValueError):
        bound_digest(text)


def test_the_bound_value_is_trustees():
    # trustee deps/verifier/src/az_snp_vtpm/mod.rs test_verify_init_data (commit 78962cd4):
    # sha256(0x00 * 32 || "8505...") == "bdda..."
    digest = bytes.fromhex("8505e4e25e50a27c5dc8147af88efbece627fbea55291911eff832d9ee127781")
    assert bound_value(digest).hex() == "bddaccb9c52249e97a31baea61b7d91be8221a16e703d92148d04fb8e9c1dfdd"


# ---- the pod owner's image requests: [data] "podvm-bootstrap.yaml" ------------

APF_REF = "quay.io/confidential-containers/agent-protocol-forwarder@sha256:" + "4" * 64


def with_requests(entry: str) -> bytes:
    return blob(toml_doc() + f"\"podvm-bootstrap.yaml\" = '''\n{entry}'''\n".encode())


def test_the_requests_entry_is_read_with_the_same_images_mapping_as_the_user_data():
    parsed = parse_initdata(with_requests(f"images:\n  agent-protocol-forwarder: {APF_REF}\n"), MAX)
    requests = image_requests(parsed, 256 * 1024)
    assert requests.images == {"agent-protocol-forwarder": APF_REF} and requests.problems == ()
    # it is never a file, and the known files are still there
    assert "podvm-bootstrap.yaml" not in extract(with_requests("images: {}\n"), MAX)
    assert parsed.files["aa.toml"] == AA.encode()


def test_no_requests_entry_asks_for_nothing():
    assert image_requests(parse_initdata(blob(toml_doc()), MAX), 1024).images == {}


@pytest.mark.parametrize("entry, words", [
    ("images: [\n", "initdata podvm-bootstrap.yaml is not valid YAML: "),
    ("a: &x [1]\nb: *x\n", "initdata podvm-bootstrap.yaml is not valid YAML: YAML aliases are not allowed"),
    ("- images\n", "initdata podvm-bootstrap.yaml must be a YAML mapping (images: {component: image}), got a list"),
    ("images: !!python/object:os.system x\n", "initdata podvm-bootstrap.yaml is not valid YAML: "),
    ("images: {x: " + "y" * 300 + "}\n", "initdata podvm-bootstrap.yaml is larger than 256 bytes"),
])
def test_an_unusable_requests_entry_is_one_line(entry, words):
    parsed = parse_initdata(with_requests(entry), MAX)
    with pytest.raises(UserDataError) as info:
        image_requests(parsed, 256)
    assert str(info.value).startswith(words) and "\n" not in str(info.value)


def test_a_requests_entry_that_is_not_a_string_leaves_the_rest_of_the_initdata_usable():
    toml = toml_doc() + b'"podvm-bootstrap.yaml" = 7\n'
    parsed = parse_initdata(blob(toml), MAX)
    assert parsed.files["aa.toml"] == AA.encode()
    with pytest.raises(InitdataError, match="initdata podvm-bootstrap.yaml must be a string"):
        image_requests(parsed, MAX)


def test_bad_items_are_one_line_each_and_the_rest_is_kept():
    entry = f"images:\n  agent-protocol-forwarder: {APF_REF}\n  7: x\nextra: 1\n"
    requests = image_requests(parse_initdata(with_requests(entry), MAX), MAX)
    assert requests.images == {"agent-protocol-forwarder": APF_REF}
    assert requests.problems == (
        "initdata podvm-bootstrap.yaml: unknown key extra ignored (known: images)",
        "initdata podvm-bootstrap.yaml.images: component name must be a string, got 7; ignored")
