"""User-data payload decoding and cloud-config parsing (pure functions)."""

from __future__ import annotations

import base64
import gzip
import tracemalloc

import pytest

from podvm_bootstrap.common.errors import UserDataError, show
from podvm_bootstrap.userdata.cloudconfig import (
    MAX_FILE_SIZE,
    UserData,
    WriteFile,
    decode_payload,
    parse_userdata,
)
from podvm_bootstrap.userdata.codec import gunzip_bounded

DIGEST = "sha256:" + "a" * 64
DESIGN_EXAMPLE = f"""\
#cloud-config
write_files:
  - path: /run/peerpod/apf.json
    content: '{{"pod-network": {{}}}}'
  - path: /run/peerpod/aa.toml
    encoding: b64            # b64 | base64 | gzip+b64 | gz+b64 | (absent = text)
    content: W3Rva2VuX2NvbmZpZ3Nd
podvm_bootstrap:
  images:
    agent-protocol-forwarder: ghcr.io/example/apf@{DIGEST}
""".encode()

MAX = 256 * 1024


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def bomb(size: int) -> bytes:
    return gzip.compress(b"\0" * size, compresslevel=9)


# --- decode_payload -----------------------------------------------------------

def test_plain_cloud_config_passes_through_unchanged():
    assert decode_payload(DESIGN_EXAMPLE, MAX) == DESIGN_EXAMPLE


def test_base64_payload_is_decoded():
    assert decode_payload(b64(DESIGN_EXAMPLE), MAX) == DESIGN_EXAMPLE


def test_base64_payload_with_line_wrapping_and_trailing_newline():
    wrapped = b"\n".join(base64.encodebytes(DESIGN_EXAMPLE).split(b"\n")) + b"\n"
    assert decode_payload(wrapped, MAX) == DESIGN_EXAMPLE


def test_gzip_payload_is_decoded():
    assert decode_payload(gzip.compress(DESIGN_EXAMPLE), MAX) == DESIGN_EXAMPLE


def test_base64_of_gzip_payload_is_decoded():
    assert decode_payload(b64(gzip.compress(DESIGN_EXAMPLE)), MAX) == DESIGN_EXAMPLE


def test_base64_detection_does_not_misfire_on_short_alphabet_text():
    # "abcd" is valid base64 but decodes to binary garbage: it is left as text.
    assert decode_payload(b"abcd", MAX) == b"abcd"


def test_garbage_binary_is_passed_through_for_the_parser_to_refuse():
    garbage = bytes(range(256))
    assert decode_payload(garbage, MAX) == garbage
    with pytest.raises(UserDataError, match="not UTF-8"):
        parse_userdata(garbage)


def test_truncated_gzip_is_refused():
    with pytest.raises(UserDataError, match="not valid gzip"):
        decode_payload(gzip.compress(DESIGN_EXAMPLE)[:-12], MAX)


def test_corrupt_gzip_is_refused():
    data = bytearray(gzip.compress(DESIGN_EXAMPLE))
    data[20] ^= 0xFF
    with pytest.raises(UserDataError, match="not valid gzip"):
        decode_payload(bytes(data), MAX)


def test_gzip_bomb_is_refused_without_inflating_it():
    payload = bomb(64 * 1024 * 1024)
    assert len(payload) < 100 * 1024
    with pytest.raises(UserDataError, match=f"more than {MAX} bytes"):
        decode_payload(payload, MAX)


def test_gzip_bomb_is_never_inflated_in_memory():
    payload = bomb(64 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(UserDataError):
            decode_payload(payload, MAX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX  # a few buffers of max_size, never the 64 MiB it expands to


def test_base64_of_gzip_bomb_is_refused():
    with pytest.raises(UserDataError, match="more than"):
        decode_payload(b64(bomb(8 * 1024 * 1024)), MAX)


def test_gzip_exactly_at_the_limit_is_accepted():
    data = b"#cloud-config\n" + b"#" * 100
    assert decode_payload(gzip.compress(data), len(data)) == data
    with pytest.raises(UserDataError):
        decode_payload(gzip.compress(data), len(data) - 1)


def test_multi_member_gzip_is_bounded_in_total():
    data = gzip.compress(b"a" * 600) + gzip.compress(b"b" * 600)
    assert gunzip_bounded(data, 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(UserDataError, match="more than 1000"):
        gunzip_bounded(data, 1000)


def test_too_many_layers_are_refused():
    with pytest.raises(UserDataError, match="layers"):
        decode_payload(b64(b64(gzip.compress(DESIGN_EXAMPLE))), MAX)


# --- parse_userdata: the document -------------------------------------------

def test_design_example():
    ud = parse_userdata(DESIGN_EXAMPLE)
    assert ud.write_files == (
        WriteFile(path="/run/peerpod/apf.json", content=b'{"pod-network": {}}', index=0),
        WriteFile(path="/run/peerpod/aa.toml", content=b"[token_configs]", index=1),
    )
    assert ud.images == {"agent-protocol-forwarder": f"ghcr.io/example/apf@{DIGEST}"}
    assert ud.problems == ()
    assert ud.ignored_keys == ()


def test_document_without_header_is_accepted_when_a_mapping():
    ud = parse_userdata(b"write_files:\n  - path: /run/peerpod/apf.json\n    content: x\n")
    assert [f.path for f in ud.write_files] == ["/run/peerpod/apf.json"]


def test_empty_document_is_empty_userdata():
    assert parse_userdata(b"#cloud-config\n") == UserData()
    assert parse_userdata(b"") == UserData()


def test_other_cloud_config_keys_are_listed_as_ignored_not_problems():
    ud = parse_userdata(b"#cloud-config\nruncmd: [reboot]\nusers: []\nwrite_files: []\n")
    assert ud.ignored_keys == ("runcmd", "users")
    assert ud.problems == ()


@pytest.mark.parametrize("text, message", [
    (b"#!/bin/sh\nrm -rf /\n", "script"),
    (b"Content-Type: multipart/mixed; boundary=x\nMIME-Version: 1.0\n\n--x\n", "MIME"),
    (b"#include\nhttp://example.com/x\n", "include"),
    (b"#cloud-boothook\necho hi\n", "boothook"),
    (b"## template: jinja\n#cloud-config\n", "template"),
])
def test_unsupported_formats_are_refused(text, message):
    with pytest.raises(UserDataError, match=message):
        parse_userdata(text)


def test_non_mapping_document_is_refused():
    with pytest.raises(UserDataError, match="must be a YAML mapping, got a list"):
        parse_userdata(b"#cloud-config\n- a\n- b\n")
    with pytest.raises(UserDataError, match="got a string"):
        parse_userdata(b"just some words")


def test_invalid_yaml_names_the_line_and_does_not_dump_content():
    text = b"#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: [secret-token\n"
    with pytest.raises(UserDataError) as info:
        parse_userdata(text)
    message = str(info.value)
    assert message.endswith("at line 5")  # the stream end, where the list was still open
    assert "secret-token" not in message
    assert "\n" not in message


@pytest.mark.parametrize("text", [
    b"#cloud-config\nwhen: 2001-13-14\n",               # a timestamp the constructor cannot build
    b"#cloud-config\nbig: " + b"9" * 5000 + b"\n",        # past Python's int-string limit
])
def test_scalars_the_safe_loader_cannot_build_are_one_user_data_error(text):
    with pytest.raises(UserDataError, match="^user-data is not valid YAML: ") as info:
        parse_userdata(text)
    assert "\n" not in str(info.value)


def test_yaml_error_line_number_is_the_failing_line():
    text = b"#cloud-config\na: 1\nb: 2\nc: : :\n"
    with pytest.raises(UserDataError, match="at line 4"):
        parse_userdata(text)


def test_alias_bomb_is_refused():
    lines = ["#cloud-config", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    with pytest.raises(UserDataError, match="aliases are not allowed.*line 3"):
        parse_userdata("\n".join(lines).encode())


def test_even_a_single_alias_is_refused():
    with pytest.raises(UserDataError, match="aliases"):
        parse_userdata(b"#cloud-config\nx: &x hello\ny: *x\n")


@pytest.mark.parametrize("opening", [b"[", b"{a: "])
def test_deep_nesting_is_one_clear_error(opening):
    with pytest.raises(UserDataError, match="nested too deeply"):
        parse_userdata(b"#cloud-config\nx: " + opening * 100000)


def test_python_object_tags_are_refused_by_the_safe_loader():
    with pytest.raises(UserDataError, match="not valid YAML"):
        parse_userdata(b"#cloud-config\nx: !!python/object/apply:os.system ['true']\n")


def test_not_utf8_is_refused():
    with pytest.raises(UserDataError, match="not UTF-8"):
        parse_userdata(b"#cloud-config\nx: \xff\xfe\n")


# --- write_files entries ------------------------------------------------------

def entry_doc(*entries: str) -> bytes:
    return ("#cloud-config\nwrite_files:\n" + "".join(entries)).encode()


@pytest.mark.parametrize("encoding", ["b64", "base64", "BASE64"])
def test_base64_encodings(encoding):
    ud = parse_userdata(entry_doc(f"  - {{path: /p, encoding: {encoding}, content: aGVsbG8=}}\n"))
    assert ud.write_files[0].content == b"hello"


@pytest.mark.parametrize("encoding", ["gzip+b64", "gz+b64", "gzip+base64", "gz+base64"])
def test_gzip_encodings(encoding):
    content = b64(gzip.compress(b"hello gzip")).decode()
    ud = parse_userdata(entry_doc(f"  - {{path: /p, encoding: '{encoding}', content: {content}}}\n"))
    assert ud.write_files[0].content == b"hello gzip"
    assert ud.problems == ()


def test_text_content_is_utf8_encoded_as_is():
    ud = parse_userdata(entry_doc("  - path: /p\n    content: |\n      héllo\n      world\n"))
    assert ud.write_files[0].content == "héllo\nworld\n".encode()


def test_missing_content_is_an_empty_file_like_cloud_init():
    ud = parse_userdata(entry_doc("  - path: /run/peerpod/scratch-space.marker\n"))
    assert ud.write_files[0].content == b""
    assert ud.problems == ()


def test_bad_entries_are_problems_and_the_rest_is_kept():
    ud = parse_userdata(entry_doc(
        "  - {path: /a, encoding: b64, content: 'not base64!!'}\n",
        "  - {path: /b, encoding: gzip+b64, content: aGVsbG8=}\n",
        "  - {path: /c, encoding: rot13, content: x}\n",
        "  - just a string\n",
        "  - {content: no path}\n",
        "  - {path: [/d], content: x}\n",
        "  - {path: /e, content: {a: 1}}\n",
        "  - {path: /f, content: x, source: {uri: 'http://example.com'}}\n",
        "  - {path: /g, content: x, append: true}\n",
        "  - {path: /ok, content: kept}\n",
    ))
    assert [(f.path, f.content, f.index) for f in ud.write_files] == [("/ok", b"kept", 9)]
    assert len(ud.problems) == 9
    expected = ["not valid base64", "not valid gzip", "unknown encoding", "expected a mapping",
                "missing path", "path must be a string", "content must be a string",
                "unsupported key(s) source", "append is not supported"]
    for index, (problem, text) in enumerate(zip(ud.problems, expected, strict=True)):
        assert problem.startswith(f"write_files[{index}]: ")
        assert text in problem
        assert problem.endswith("entry skipped")


def test_write_files_not_a_list_is_one_problem():
    ud = parse_userdata(b"#cloud-config\nwrite_files: {path: /a}\n")
    assert ud.write_files == ()
    assert ud.problems == ("write_files: expected a list, got a mapping; no file written",)


@pytest.mark.parametrize("value, mode", [
    ("'0600'", 0o600), ("'600'", 0o600), ("'0o640'", 0o640), ("0600", 0o600), ("'04755'", 0o4755), ("420", 0o644),
])
def test_permissions_accepted_forms(value, mode):
    ud = parse_userdata(entry_doc(f"  - {{path: /p, content: x, permissions: {value}}}\n"))
    assert ud.problems == ()
    assert ud.write_files[0].permissions == mode


@pytest.mark.parametrize("value", ["'rw-r--r--'", "'0800'", "true", "-1", "'0644x'", "[1]", "99999"])
def test_bad_permissions_are_a_problem(value):
    ud = parse_userdata(entry_doc(f"  - {{path: /p, content: x, permissions: {value}}}\n"))
    assert ud.write_files == ()
    assert "permissions" in ud.problems[0]


def test_gzip_bomb_in_content_is_refused_bounded():
    content = b64(bomb(MAX_FILE_SIZE + 1)).decode()
    ud = parse_userdata(entry_doc(f"  - {{path: /p, encoding: gz+b64, content: {content}}}\n",
                                  "  - {path: /q, content: fine}\n"))
    assert [f.path for f in ud.write_files] == ["/q"]
    assert f"more than {MAX_FILE_SIZE} bytes" in ud.problems[0]


def test_total_decoded_content_is_bounded_across_entries():
    half = b64(bomb(MAX_FILE_SIZE // 2 + 1)).decode()
    ud = parse_userdata(entry_doc(*[f"  - {{path: /p{i}, encoding: gz+b64, content: {half}}}\n" for i in range(3)]))
    assert len(ud.write_files) == 1
    assert len(ud.problems) == 2


def test_problem_lines_escape_untrusted_text():
    ud = parse_userdata(entry_doc('  - {path: "/x\\nwrote /run/peerpod/evil", content: x, encoding: "a\\nb"}\n'))
    assert len(ud.problems) == 1
    assert "\n" not in ud.problems[0]
    assert "'/x\\nwrote /run/peerpod/evil'" in ud.problems[0]


# --- podvm_bootstrap ----------------------------------------------------------

def test_podvm_bootstrap_images():
    ud = parse_userdata(f"#cloud-config\npodvm_bootstrap:\n  images:\n    kata-agent: q.io/k@{DIGEST}\n"
                        f"    attestation-agent: ' q.io/a:v1 '\n".encode())
    assert ud.images == {"kata-agent": f"q.io/k@{DIGEST}", "attestation-agent": "q.io/a:v1"}
    assert ud.problems == ()


def test_podvm_bootstrap_bad_parts_are_problems():
    ud = parse_userdata(b"#cloud-config\npodvm_bootstrap:\n  policy: {mutable_tags: true}\n  images:\n"
                        b"    a: [x]\n    b: 5\n    c: ''\n    good: q.io/g:1\n    1: q.io/n:1\n")
    # Requests that are not strings reach the policy, which refuses them (so
    # that `on_rejected_override: fail` applies to them too).
    assert ud.images == {"a": ["x"], "b": 5, "c": "", "good": "q.io/g:1"}
    assert len(ud.problems) == 2
    assert "unknown key policy" in ud.problems[0]
    assert "component name must be a string" in ud.problems[1]
    assert all("ignored" in p for p in ud.problems)


def test_podvm_bootstrap_not_a_mapping():
    ud = parse_userdata(b"#cloud-config\npodvm_bootstrap: [images]\n")
    assert ud.images == {}
    assert ud.problems == ("podvm_bootstrap: expected a mapping, got a list; ignored",)
    ud = parse_userdata(b"#cloud-config\npodvm_bootstrap: {images: [a]}\n")
    assert ud.images == {} and "images: expected a mapping" in ud.problems[0]


def test_show_escapes_only_what_needs_it():
    assert show("/run/peerpod/aa.toml") == "/run/peerpod/aa.toml"
    assert show("/a\nb") == "'/a\\nb'"
    assert show("/a\u2028b") == "'/a\\u2028b'"
    assert show("x" * 500).endswith("...") and len(show("x" * 500)) < 300


# Explicit tags whose values PyYAML's safe constructors cannot build: before
# the strict loader, each was an IndexError, KeyError or AttributeError (a
# traceback in `run`, before any component started).
LIBRARY_MISHANDLED_TAGS = [
    b"!!int ''", b"!!int '-'", b"!!int '+'", b"!!int '_'", b"!!int '0x_'",
    b"!!float ''", b"!!float '.'", b"!!float '-'",
    b"!!bool ''", b"!!bool 'maybe'",
    b"!!timestamp 1", b"!!timestamp 'not a date'", b"!!timestamp 2001-13-14",
    b"!!binary 'YWJ'", b"!!binary [1]",
    b"!!python/object/apply:os.system ['true']", b"!!python/name:os.system ''",
    b"!!set x", b"!!omap x", b"!!pairs [1]",
]


@pytest.mark.parametrize("value", LIBRARY_MISHANDLED_TAGS, ids=lambda v: v.decode())
def test_explicit_tags_the_yaml_library_mishandles_are_one_user_data_error(value):
    with pytest.raises(UserDataError, match="^user-data is not valid YAML: ") as info:
        parse_userdata(b"#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: " + value + b"\n")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value, expected", [
    (b"!!int '0x1f'", 31), (b"!!float '1.5'", 1.5), (b"!!bool 'yes'", True), (b"!!binary 'YWJj'", b"abc"),
])
def test_well_formed_explicit_tags_still_load(value, expected):
    from podvm_bootstrap.config.yamlfile import load_yaml_text

    assert load_yaml_text("x: " + value.decode(), aliases=False) == {"x": expected}
