"""systemd quoting: exec words and free text come back exactly, according to
the test-side model of systemd's parser (tests/systemd_parser.py) and to the
machine's real systemd 252 (systemd --test dump, systemd-analyze verify)."""

from __future__ import annotations

import pytest

from podvm_bootstrap.units.systemd_escape import (
    UnrepresentableValue,
    check_representable,
    exec_command,
    exec_word,
    unit_text,
)
from tests.systemd_parser import SystemdParseError, logical_lines, parse_exec, parse_unit, substitute_environment
from tests.systemd_real import analyze_verify, dump_exec_commands

NASTY = [
    "plain", "a b", "  lead and trail  ", "tab\there", "nl\nExecStartPost=/bin/evil", "cr\rx",
    'q"uote', "'single'", "back\\slash", "trailing\\", "\\", "\\;", ";", "x;y", "", "$", "$$",
    "$HOME", "${HOME}", "a$HOME", "%n", "%%", "%", "100%", "`tick`", "é ü 漢字", "\x01\x1f\x7f",
    "\u2028\u0085\u200b\u202e", "\ufffe\ufdd0", "\U0001F600", "--privileged", "-", "#comment",
    "[Service]", "a=b,c", "@foo", "\\x41", "\\n", "\"\"", "end\\\n",
]


def roundtrip(words: list[str]) -> tuple[str, ...]:
    value = exec_command(["/usr/bin/printf", *words])
    [command] = parse_exec(value)
    return command.argv[1:]


@pytest.mark.parametrize("word", NASTY)
def test_exec_word_round_trips_through_systemd_parsing(word: str) -> None:
    assert roundtrip([word]) == (word,)


def test_all_nasty_words_together_keep_their_boundaries() -> None:
    assert roundtrip(NASTY) == tuple(NASTY)


def test_bare_words_stay_readable_and_others_are_quoted() -> None:
    assert exec_word("--volume=/run/x:/run/x:ro") == "--volume=/run/x:/run/x:ro"
    assert exec_word("50%") == "50%%"
    assert exec_word("a b") == '"a b"'
    assert exec_word("") == '""'
    assert exec_word(";") == '";"'
    assert exec_word("$HOME") == '"$$HOME"'
    assert exec_word('say "hi"\n') == '"say \\"hi\\"\\n"'
    assert exec_word("\x01") == '"\\x01"'
    assert exec_word("\u2028") == '"\\xe2\\x80\\xa8"'
    assert exec_word("é") == '"é"'


@pytest.mark.parametrize("word", NASTY)
def test_exec_word_is_one_physical_line_without_controls(word: str) -> None:
    rendered = exec_word(word)
    assert all(0x20 <= ord(c) != 0x7F for c in rendered), rendered
    assert not rendered.endswith("\\")
    assert "\u2028" not in rendered and "\u0085" not in rendered


@pytest.mark.parametrize("bad", ["nul\0byte", "\0", "lone\ud800surrogate"])
def test_unrepresentable_values_are_refused(bad: str) -> None:
    with pytest.raises(UnrepresentableValue):
        exec_word(bad)
    with pytest.raises(UnrepresentableValue):
        unit_text(bad)
    with pytest.raises(ValueError):
        check_representable(bad)


def test_executable_must_be_a_plain_absolute_path() -> None:
    for argv in ([], ["podman", "run"], ["/usr/bin/po dman"], ["/usr/bin/%n"], ["-/usr/bin/x"]):
        with pytest.raises(UnrepresentableValue):
            exec_command(argv)


def test_continuation_lines_join_back_into_one_command() -> None:
    value = exec_command(["/usr/bin/printf", "a b", "trailing\\", "c"], line_breaks=[1, 3])
    assert value.count(" \\\n\t") == 2
    assignments = parse_unit(f"[Service]\nExecStart={value}\nType=oneshot\n")
    assert [(a.key, a.section) for a in assignments] == [("ExecStart", "Service"), ("Type", "Service")]
    [command] = parse_exec(assignments[0].value)
    assert command.argv == ("/usr/bin/printf", "a b", "trailing\\", "c")


@pytest.mark.parametrize("text", NASTY)
def test_unit_text_stays_on_one_line_and_never_expands(text: str) -> None:
    rendered = unit_text(text)
    assert all(0x20 <= ord(c) != 0x7F for c in rendered)
    assert not rendered.endswith("\\")
    assert "%" not in rendered.replace("%%", "")
    [assignment] = parse_unit(f"[Unit]\nDescription=x {rendered} y\n")
    assert assignment.key == "Description"


def test_unit_text_keeps_visible_text() -> None:
    assert unit_text("kata-agent (quay.io/x@sha256:ab)") == "kata-agent (quay.io/x@sha256:ab)"
    assert unit_text("50% é") == "50%% é"
    assert unit_text("a\nb\\") == "a\\x0ab\\x5c"


# The parser model itself, on lines whose meaning systemd.service(5) documents.

def test_parser_model_follows_documented_examples() -> None:
    assert [c.argv for c in parse_exec('/bin/echo one ; /bin/echo "two two"')] == [
        ("/bin/echo", "one"), ("/bin/echo", "two two")]
    assert parse_exec("/bin/echo \\; x")[0].argv == ("/bin/echo", ";", "x")
    assert parse_exec("/bin/echo 'a  b' \"c\\td\" e\\sf")[0].argv == ("/bin/echo", "a  b", "c\td", "e f")
    assert parse_exec("-/bin/true %%n $$X")[0] .argv == ("/bin/true", "%n", "$X")
    assert parse_exec("-/bin/true")[0].prefixes == "-"
    with pytest.raises(SystemdParseError):
        parse_exec("/bin/echo %n")
    with pytest.raises(SystemdParseError):
        parse_exec("/bin/echo $HOME")
    with pytest.raises(SystemdParseError):
        parse_exec("/bin/echo a${HOME}")
    with pytest.raises(SystemdParseError):
        parse_exec('/bin/echo "unbalanced')
    with pytest.raises(SystemdParseError):
        parse_exec("/bin/echo \\q")
    assert substitute_environment(b"a$b") == b"a$b"


def test_parser_model_splits_lines_like_systemd() -> None:
    text = b"[Service]\r\nA=1\rB=2\0C=3 \\\n# comment inside\n  more\nD=\\\\\nE=4\n"
    assert [(n, line) for n, line in logical_lines(text)] == [
        (1, b"[Service]"), (2, b"A=1"), (3, b"B=2"), (4, b"C=3    more"), (7, b"D=\\\\"), (8, b"E=4")]


# Against the machine's real systemd.

def test_real_systemd_parses_nasty_words_exactly() -> None:
    value = exec_command(["/usr/bin/printf", *NASTY], line_breaks=[5, 17])
    unit = f"[Unit]\nDescription={unit_text(''.join(NASTY))}\n[Service]\nType=oneshot\nExecStart={value}\n"
    verify = analyze_verify({"nasty.service": unit})
    assert verify.returncode == 0 and verify.stdout == "" and verify.stderr == "", verify
    [argv] = dump_exec_commands({"nasty.service": unit}, "nasty.service")["ExecStart"]
    # systemd substitutes the environment ("$$" -> "$") at exec time, after the dump.
    final = [substitute_environment(word).decode("utf-8") for word in argv]
    assert final == ["/usr/bin/printf", *NASTY]


def test_real_systemd_agrees_with_the_parser_model_on_hand_written_lines() -> None:
    lines = ['/bin/echo "a b" c\\td \'e "f\' %%n $$x', "/bin/echo \\; \";\" x\\sy \"\\x41\\101\\u00e9\"",
             "/bin/echo \"\" '' a\"b\"c"]
    for line in lines:
        unit = f"[Service]\nType=oneshot\nExecStart={line}\n"
        [argv] = dump_exec_commands({"t.service": unit}, "t.service")["ExecStart"]
        [model] = parse_exec(line)
        assert tuple(substitute_environment(w).decode() for w in argv) == model.argv
