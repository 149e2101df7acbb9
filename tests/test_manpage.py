"""The man pages (podvm_bootstrap/cli/manpage.py, scripts/build-man.py): the
Markdown-subset converter's escaping, and each generated page rendered by
groff and man-db with no warning, carrying every command and option of the
parser and every heading of its docs sections."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap import __version__
from podvm_bootstrap.cli import manpage
from podvm_bootstrap.cli.main import build_parser
from podvm_bootstrap.cli.manpage import FILE_PAGES, doc_sections, inline, markdown_to_roff
from podvm_bootstrap.common import errors

ROOT = Path(__file__).resolve().parents[1]
DOCS = {name: (ROOT / name).read_text() for name in manpage.DOCS_SOURCES}


def requests_of(roff: str) -> list[str]:
    """The lines groff takes for requests or macros."""
    return [line for line in roff.splitlines() if line.startswith((".", "'"))]


def render(path: Path) -> str:
    """The text of a page, after checking that groff (-ww: every warning) and
    man-db render it on an 80-column terminal with no warning. The text is
    groff's on lines too long to be broken or hyphenated, for finding words in."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    groff = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)], capture_output=True, text=True,
                           env=env, timeout=60)
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    man = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert man.returncode == 0 and man.stderr == "" and "NAME" in man.stdout, man.stderr
    wide = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=5000n", "-P-cbou", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert wide.returncode == 0 and wide.stderr == "", wide.stderr
    assert "\u2010" not in man.stdout, "a word hyphenated (a literal cut in two)"
    return wide.stdout.replace("\u2010", "-").replace("\u2212", "-")


def plain(text: str) -> str:
    return " ".join(text.split())


# --- the converter ------------------------------------------------------------


def test_a_code_line_beginning_with_a_dot_or_a_quote_is_text_not_a_request() -> None:
    roff = markdown_to_roff("Before:\n\n```\n.TH EVIL 1\n'br\nnormal\n```\n")
    assert ".TH EVIL 1" not in requests_of(roff) and "'br" not in requests_of(roff)
    assert "\\&.TH EVIL 1" in roff and "\\&'br" in roff
    assert requests_of(roff) == [".PP", ".PP", ".EX", ".EE"]


def test_a_paragraph_line_beginning_with_a_dot_is_text_too() -> None:
    roff = markdown_to_roff("first line\n.SH NOT A HEADING\n")
    assert requests_of(roff) == [".PP"]


def test_a_backslash_survives_in_code_and_in_text(tmp_path: Path) -> None:
    roff = markdown_to_roff('A path C:\\new and `a\\tb`.\n\n```\nprintf "x\\n"\n```\n')
    assert "C:\\enew" in roff and "a\\etb" in roff and 'printf "x\\en"' in roff
    page = tmp_path / "t.7"
    page.write_text('.TH T 7\n.SH NAME\nt \\- t\n' + roff)
    text = render(page)
    assert "C:\\new" in text and "a\\tb" in text and 'printf "x\\n"' in text


def test_code_minus_signs_are_ascii_minus_and_non_ascii_is_escaped() -> None:
    assert inline("`--json`") == "\\fB\\-\\-json\\fR"
    assert inline("a → b") == "a \\[u2192] b"
    assert markdown_to_roff("```\nls --all\n```\n").count("\\-\\-all") == 1


def test_code_blocks_keep_their_indentation_and_inline_code_may_span_lines(tmp_path: Path) -> None:
    roff = markdown_to_roff("```yaml\nkeys:\n  release: {path: /k.pub}\n```\n\nrun `cosign\nsign` here\n\n"
                            "- item\n\n  ```\n  a:\n    b: 1\n  ```\n")
    assert "keys:\n  release: {path: /k.pub}" in roff and "a:\n  b: 1" in roff
    page = tmp_path / "t.7"
    page.write_text(".TH T 7\n.SH NAME\nt \\- t\n" + roff)
    text = render(page)
    assert "keys:\n         release:" in text and "run cosign sign here" in text


def test_inline_markup() -> None:
    assert inline("**bold** and *em* and [a link](https://x.example/) plain") == \
        "\\fBbold\\fR and \\fIem\\fR and a link plain"
    assert inline("not*emphasis*here, a * b") == "not*emphasis*here, a * b"
    assert inline("see [Start gates](operating.md#start-gates) and [`tee`](#the-tee-tee)") == \
        'see "Start gates" and "\\fBtee\\fR"'


def test_headings_lists_and_tables() -> None:
    roff = markdown_to_roff(
        "### Top\n\ntext\n\n#### Sub\n\n- one\n  continued\n  - nested\n- two\n\n1. first\n\n"
        "| key | default | meaning |\n| --- | --- | --- |\n| `a.b` | `1` | the a |\n", top=3)
    assert ".SH TOP" in roff and ".SS Sub" in roff
    assert markdown_to_roff("# The `x` → y\n", top=1) == ".SH THE \\fBX\\fR \\[u2192] Y\n"  # escapes stay lower case
    assert roff.count(".IP \\(bu 2") == 3 and ".RS" in roff and ".RE" in roff and ".IP 1. 4" in roff
    assert ".TP\n\\fBa.b\\fR\n\\fIdefault\\fR: \\fB1\\fR\n.br\nthe a" in roff
    assert roff.count(".RS") == roff.count(".RE")


def test_doc_sections_skip_headings_inside_code_blocks() -> None:
    found = doc_sections("## A\n\n```\n## not a heading\n```\n\n### B\n\nb text\n\n## C\n")
    assert set(found) == {"A", "B", "C"} and "b text" in found["A"][1] and found["B"] == (3, "\nb text\n")


def test_a_missing_docs_section_names_it() -> None:
    page = manpage.FilePage("x.yaml", "x", (manpage.DocSection(manpage.CONFIGURATION, "No such section"),))
    with pytest.raises(KeyError, match="docs/configuration.md: no section 'No such section'"):
        manpage.file_page(page, DOCS, __version__)
    page = manpage.FilePage("x.yaml", "x", (manpage.DocSection("docs/nowhere.md", "bootstrap.yaml"),))
    with pytest.raises(KeyError, match="docs/nowhere.md: not among the docs read"):
        manpage.file_page(page, DOCS, __version__)


def test_the_docs_sources_are_every_page_the_table_names() -> None:
    named = {s.doc for p in FILE_PAGES for s in p.sections} | {manpage.COMMAND_SECTION.doc}
    assert set(manpage.DOCS_SOURCES) == named == {"docs/operating.md", "docs/configuration.md",
                                                  "docs/measured-launch.md"}


def test_a_parser_becomes_the_command_page_as_help_shows_it() -> None:
    parser = argparse.ArgumentParser(prog="podvm-bootstrap", description=".PP does things")
    parser.add_argument("--level", metavar="L", choices=["a", "b"], default="a", help="the level (%(default)s)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("go", help="go somewhere")
    p.add_argument("--to", metavar="PLACE", required=True, action="append", help="where")
    docs = "## Command line\n\n```\nsynopsis\n```\n\nExit codes: 0 fine; 1 not fine. Nothing else.\n\nA note.\n"
    roff = manpage.command_page(parser, {manpage.OPERATING: docs}, "9.9", [("/etc/x", "the x")])
    assert ".TP\n\\fB\\-\\-level\\fR \\fIL\\fR\nthe level (a); one of \\fBa\\fR, \\fBb\\fR" in roff
    assert ".SS go\n.PP\ngo somewhere\n.TP\n\\fB\\-\\-to\\fR \\fIPLACE\\fR\nwhere; required; repeatable" in roff
    assert ".SH EXIT STATUS\n.TP\n0\nfine\n.TP\n1\nnot fine\n" in roff
    assert "synopsis" not in roff and "A note." in roff and "Exit codes" not in roff
    assert "\n\\&.PP does things\n" in roff  # the description is text, whatever it starts with


# --- the generated pages --------------------------------------------------------


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    done = subprocess.run([sys.executable, str(ROOT / "scripts/build-man.py"), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"podvm-bootstrap.8", "bootstrap.yaml.5", "components.yaml.5", "policy.yaml.5"}
    return out


def test_the_command_page_has_every_command_and_option_of_the_parser(pages: Path) -> None:
    text = render(pages / "podvm-bootstrap.8")
    parser = build_parser()
    assert plain(parser.description or "") in plain(text)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = text[text.index("\nCOMMANDS\n"):text.index("\nEXIT STATUS\n")]
    for name, p in sub.choices.items():
        assert re.search(rf"^   {name}$", commands, re.M), name  # its own subsection
        block = commands[commands.index(f"\n   {name}\n"):]
        block = block[:m.start() + 1] if (m := re.search(r"\n   [a-z]+\n", block[1:])) else block
        for action in p._actions:
            for option in action.option_strings:
                assert option in text
            if action.help and not set(action.option_strings) & {"-h", "--help", "--config-dir", "--state-dir",
                                                                   "--root", "--log-level"}:
                assert plain(action.help.replace("`", "")) in plain(block), (name, action.help)
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text
    assert "\nEXIT STATUS\n" in text and "\nFILES\n" in text and "/etc/podvm-bootstrap/components.yaml" in text


def test_the_exit_codes_are_the_docs_and_cover_every_code_of_the_program(pages: Path) -> None:
    codes = dict(manpage.exit_codes(DOCS))
    assert set(codes) == {str(v) for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert codes["2"].startswith("usage or configuration error")
    text = render(pages / "podvm-bootstrap.8")
    status = plain(text[text.index("\nEXIT STATUS\n"):text.index("\nFILES\n")])
    for code, meaning in codes.items():
        assert f"{code} {plain(meaning.replace('`', ''))}" in status


@pytest.mark.parametrize("page", FILE_PAGES, ids=lambda p: p.name)
def test_each_file_page_renders_with_the_headings_of_its_docs_sections(pages: Path, page: manpage.FilePage) -> None:
    text = render(pages / f"{page.name}.5")
    assert text.startswith(f"{page.name.upper()}(5)")
    for where in page.sections[1:]:
        assert f"\n{where.title.upper()}\n" in text
    for where in page.sections:
        level, body = doc_sections(DOCS[where.doc])[where.title]
        subheading = re.compile(rf"^#{{{level + 1},6}}\s+(.*)$", re.M)
        for sub in subheading.findall(re.sub(r"```.*?```", "", body, flags=re.S)):
            assert f"\n   {sub.replace('`', '')}\n" in text, sub
        # every key of its reference tables
        for key in re.findall(r"^\| `([^`]+)` \|", body, re.M):
            assert key in text, key


def test_the_pages_are_the_same_whatever_the_terminal(pages: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts/build-man.py"), str(tmp_path)], capture_output=True,
                          env={**os.environ, "COLUMNS": "37"}, timeout=120)
    assert done.returncode == 0
    for page in pages.iterdir():
        assert (tmp_path / page.name).read_bytes() == page.read_bytes()
