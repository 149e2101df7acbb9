"""The man pages, made from the sources `--help` and the docs are made from.

Pure: text in, roff (the man macros) out. podvm-bootstrap(8) comes from the
argparse parser (every command, its options and their help) plus the exit
codes of the docs' "Command line" section; the section 5 pages come from the
docs' reference sections of the baked files, converted from a Markdown subset
(headings, paragraphs, fenced code, bullet and numbered lists, pipe tables,
inline code, bold, emphasis, links). `scripts/build-man.py` reads the files
and writes the pages (`make man`, and the Debian package's build)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The docs are Markdown pages; `Docs` is their text by path from the repository's
# root (scripts/build-man.py reads every one of DOCS_SOURCES).
Docs = Mapping[str, str]
OPERATING = "docs/operating.md"
CONFIGURATION = "docs/configuration.md"
MEASURED_LAUNCH = "docs/measured-launch.md"


@dataclass(frozen=True)
class DocSection:
    """One section of the docs: the page it is in and its heading as written
    (without the #s)."""

    doc: str
    title: str


@dataclass(frozen=True)
class FilePage:
    """A section 5 page: its name, NAME line, and the docs' sections it is made
    of (the first one is the DESCRIPTION)."""

    name: str
    summary: str
    sections: tuple[DocSection, ...]


# The section -> page table: the one place that says which docs make which page.
FILE_PAGES = (
    FilePage("bootstrap.yaml", "the pod VM daemon's baked settings",
             (DocSection(CONFIGURATION, "bootstrap.yaml"), DocSection(CONFIGURATION, "User-data providers"),
              DocSection(MEASURED_LAUNCH, "Settings (bootstrap.yaml)"))),
    FilePage("components.yaml", "the pod VM's components and their images",
             (DocSection(CONFIGURATION, "components.yaml"),)),
    FilePage("policy.yaml", "which component images a pod VM may run",
             (DocSection(CONFIGURATION, "policy.yaml"), DocSection(CONFIGURATION, "Signed component images"))),
)
COMMAND_SECTION = DocSection(OPERATING, "Command line")  # its "Exit codes:" paragraph is EXIT STATUS
DOCS_SOURCES = tuple(sorted({s.doc for p in FILE_PAGES for s in p.sections} | {COMMAND_SECTION.doc}))
COMMAND = "podvm-bootstrap"


# --- roff escaping -----------------------------------------------------------


def _escape(text: str, *, literal: bool = False) -> str:
    """Text for a roff line: backslashes as \\e, non-ASCII as \\[uXXXX] (groff
    reads ASCII), and in literals (code, options) a minus as \\- so it copies
    as the ASCII minus."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\e")
        elif c == "-" and literal:
            out.append("\\-")
        elif ord(c) > 126 or (ord(c) < 32 and c != "\t"):
            out.append(f"\\[u{ord(c):04X}]")
        else:
            out.append(c)
    return "".join(out)


def _line(text: str) -> str:
    """A text line that cannot be taken for a request (a leading . or ')."""
    return "\\&" + text if text.startswith((".", "'")) else text


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])|\[([^\]]+)\]\(([^)\s]+)\)")


def _breakable(code: str) -> str:
    # a long path or URL in running text may break after a / or a comma (\: is
    # an invisible break point), so a narrow terminal never overflows
    return re.sub(r"([/,])(?=.)", lambda m: m.group(1) + "\\:", code)


def inline(text: str) -> str:
    """Markdown inline markup to roff: `code` and **bold** bold, *emphasis*
    italic, [text](https://...) its text, [text](page.md#section) "text";
    everything else escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(_escape(text[pos:m.start()]))
        code, bold, em, link = m.group(1), m.group(2), m.group(3), m.group(4)
        if code is not None:
            out.append("\\fB" + _breakable(_escape(code, literal=True)) + "\\fR")
        elif bold is not None:
            out.append("\\fB" + inline(bold).replace("\\fR", "\\fB") + "\\fR")
        elif em is not None:
            out.append("\\fI" + inline(em).replace("\\fR", "\\fI") + "\\fR")
        elif re.match(r"[a-z][a-z0-9+.-]*:", m.group(5)):
            out.append(inline(link))
        else:  # a section of the docs: named in quotes, as a page that cannot follow the link reads it
            out.append('"' + inline(link) + '"')
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


# --- Markdown blocks ---------------------------------------------------------

_FENCE = re.compile(r"^(\s*)(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$")


def _table(rows: list[str]) -> list[str]:
    """A pipe table as a tagged list: the first column the tag, the middle
    columns "header: value" lines, the last column the text (tables of keys,
    defaults and meanings read well so at any width, with no tbl)."""
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [r for r in cells[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
    out: list[str] = []
    for row in body:
        row = row + [""] * (len(head) - len(row))
        out += [".TP", _line(inline(row[0]) or "\\&")]
        for h, c in zip(head[1:-1], row[1:-1], strict=False):
            if c:
                out += [_line(f"\\fI{inline(h)}\\fR: {inline(c)}"), ".br"]
        if len(head) > 1 and row[len(head) - 1]:
            out.append(_line(inline(row[len(head) - 1])))
        elif out[-1] == ".br":
            out.pop()
    return out


def markdown_to_roff(text: str, *, top: int = 1) -> str:
    """A Markdown subset to roff. A heading of level `top` is a .SH
    (uppercased), deeper ones .SS."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    depth = 0  # nested list levels open (.RS)
    i = 0

    def flush() -> None:
        if para:  # one line: inline markup may span the source's line breaks
            out.append(_line(inline(" ".join(para))))
            para.clear()

    def set_depth(n: int) -> None:
        nonlocal depth
        while depth < n:
            out.append(".RS")
            depth += 1
        while depth > n:
            out.append(".RE")
            depth -= 1

    indents: list[int] = []  # indentation of each open list level
    while i < len(lines):
        raw = lines[i]
        fence = _FENCE.match(raw)
        if fence:
            flush()
            indent, mark = len(fence.group(1)), fence.group(2)
            code = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(mark):
                code.append(lines[i][indent:] if not lines[i][:indent].strip() else lines[i].lstrip())
                i += 1
            i += 1
            out += [".IP" if indents else ".PP", ".EX"]  # in a list item: indented with it
            out.extend(_line(_escape(c, literal=True)) for c in code)
            out.append(".EE")
            continue
        if not raw.strip():
            flush()
            i += 1
            continue
        heading = _HEADING.match(raw)
        item = _ITEM.match(raw)
        if heading:
            flush()
            indents.clear()
            set_depth(0)
            level, title = len(heading.group(1)), heading.group(2)
            out.append(f".SH {inline(title.upper())}" if level <= top else f".SS {inline(title)}")
            i += 1
        elif raw.lstrip().startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out.extend(_table(rows))
        elif item:
            flush()
            indent = len(item.group(1))
            while indents and indent < indents[-1]:
                indents.pop()
            if not indents or indent > indents[-1]:
                indents.append(indent)
            set_depth(len(indents) - 1)
            mark = item.group(2)
            out.append(".IP \\(bu 2" if mark in "-*+" else f".IP {mark} 4")
            para.append(item.group(3))
            i += 1
        else:
            if indents and len(raw) - len(raw.lstrip()) == 0 and not para:
                indents.clear()
                set_depth(0)
            if not para and not indents:
                out.append(".PP")
            elif not para and out and out[-1] not in (".PP",) and not out[-1].startswith(".IP"):
                out.append(".IP")
            para.append(raw.strip())
            i += 1
    flush()
    set_depth(0)
    return "\n".join(out) + "\n"


# --- the docs' sections ------------------------------------------------------


def doc_sections(text: str) -> dict[str, tuple[int, str]]:
    """Each heading of a Markdown document (outside code blocks): its level and
    its body up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    heads: list[tuple[int, int, str]] = []
    in_code = False
    for n, line in enumerate(lines):
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and (m := _HEADING.match(line)):
            heads.append((n, len(m.group(1)), m.group(2)))
    found: dict[str, tuple[int, str]] = {}
    for k, (n, level, title) in enumerate(heads):
        end = next((m for m, lv, _ in heads[k + 1:] if lv <= level), len(lines))
        found.setdefault(title, (level, "\n".join(lines[n + 1:end])))
    return found


def _section(docs: Docs, where: DocSection) -> tuple[int, str]:
    if where.doc not in docs:
        raise KeyError(f"{where.doc}: not among the docs read (the man pages are made from it)")
    found = doc_sections(docs[where.doc])
    if where.title not in found:
        raise KeyError(f"{where.doc}: no section {where.title!r} (the man pages are made from it)")
    return found[where.title]


def _header(name: str, section: int, summary: str, version: str, manual: str, sources: Iterable[str]) -> list[str]:
    return [
        f'.\\" Generated from {", ".join(sources)} and the command line parser; edit those, not this.',
        f'.TH "{name.upper()}" "{section}" "" "{COMMAND} {_escape(version)}" "{manual}"',
        # left-aligned, never hyphenated: the text is full of literals (keys, paths,
        # options); HY 0, as the man macros' .EE and .YS turn hyphenation back on to HY
        ".ad l",
        ".nr HY 0",
        ".nh",
        ".SH NAME",
        f"{_escape(name, literal=True)} \\- {_escape(summary)}",
    ]


def file_page(page: FilePage, docs: Docs, version: str) -> str:
    """The section 5 page of one baked file."""
    sources = dict.fromkeys(s.doc for s in page.sections)  # in order, once each
    out = _header(page.name, 5, page.summary, version, "File Formats", sources)
    out += [".SH SYNOPSIS", f"\\fB/etc/{COMMAND}/{_escape(page.name)}\\fR"]
    for n, where in enumerate(page.sections):
        level, body = _section(docs, where)
        out.append(".SH DESCRIPTION" if n == 0 else f".SH {inline(where.title.upper())}")
        out.append(markdown_to_roff(body, top=level).rstrip("\n"))
    others = [p.name for p in FILE_PAGES if p.name != page.name]
    out += [".SH SEE ALSO", ",\n".join(f"\\fB{_escape(n)}\\fR(5)" for n in others) + f",\n\\fB{COMMAND}\\fR(8)"]
    return "\n".join(out) + "\n"


# --- podvm-bootstrap(8), from the parser -------------------------------------


def _usage(parser: argparse.ArgumentParser, skip: set[str]) -> str:
    # a fixed width: the same page whatever the terminal the build runs in
    fmt = argparse.HelpFormatter(parser.prog, width=100_000)
    actions = [a for a in parser._actions if not set(a.option_strings) & skip]
    fmt.add_usage(parser.usage, actions, parser._mutually_exclusive_groups, prefix="")
    return " ".join(fmt.format_help().split())


def _options(actions: Iterable[argparse.Action], skip: set[str]) -> list[str]:
    out: list[str] = []
    for a in actions:
        if not a.option_strings or set(a.option_strings) & skip or a.help == argparse.SUPPRESS:
            continue
        tag = ", ".join(f"\\fB{_escape(o, literal=True)}\\fR" for o in a.option_strings)
        if a.nargs != 0:
            if a.metavar is not None:
                arg = str(a.metavar)
            elif a.choices is not None:
                arg = "{" + ",".join(str(c) for c in a.choices) + "}"
            else:
                arg = str(a.dest).upper()
            tag += f" \\fI{_escape(arg, literal=True)}\\fR"
        out += [".TP", tag]
        text = inline(_expand_help(a)) if a.help else ""
        notes = []
        if a.choices is not None and a.metavar is not None and not all(str(c) in text for c in a.choices):
            notes.append("one of " + ", ".join(f"\\fB{_escape(str(c), literal=True)}\\fR" for c in a.choices))
        if a.required:
            notes.append("required")
        if isinstance(a, argparse._AppendAction) and "repeatable" not in text:
            notes.append("repeatable")
        text = "; ".join(x for x in [text, *notes] if x)
        out.append(_line(text or "\\&"))
    return out


def _expand_help(a: argparse.Action) -> str:
    """The help as --help shows it: %(default)s and the like filled in."""
    help_ = a.help or ""
    if "%" not in help_:
        return help_
    params = {k: v for k, v in vars(a).items() if v is not argparse.SUPPRESS}
    if a.choices is not None:
        params["choices"] = ", ".join(str(c) for c in a.choices)
    return help_ % params


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in a._choices_actions}
            return [(name, helps.get(name, ""), p) for name, p in a.choices.items()]
    return []


def exit_codes(docs: Docs) -> list[tuple[str, str]]:
    """The exit codes of the docs' "Command line" section, from its paragraph
    "Exit codes: 0 success; 1 ...; 2 ...": (code, meaning) pairs."""
    _, body = _section(docs, COMMAND_SECTION)
    para = next((p for p in re.split(r"\n\s*\n", body) if p.lstrip().startswith("Exit codes:")), None)
    if para is None:
        raise KeyError(f"{COMMAND_SECTION.doc}: {COMMAND_SECTION.title!r} has no 'Exit codes:' paragraph")
    first = " ".join(para.split()).removeprefix("Exit codes:")
    codes = first[: first.index(". ")] if ". " in first else first
    pairs = []
    for part in codes.split(";"):
        code, _, meaning = part.strip().partition(" ")
        pairs.append((code, meaning.rstrip(".")))
    return pairs


def command_page(parser: argparse.ArgumentParser, docs: Docs, version: str,
                 files: Sequence[tuple[str, str]]) -> str:
    """podvm-bootstrap(8): synopsis, every command with its options and help,
    the global options, the exit codes, the files (path, what) and the
    "Command line" section's notes."""
    out = _header(COMMAND, 8, "boots a peer-pods pod VM's components from verified images", version,
                  "System Administration", [COMMAND_SECTION.doc])
    # the commands' lines leave out -h and the global options (the first line's)
    globals_ = {o for a in parser._actions for o in a.option_strings if o != "--version"}
    out += [".SH SYNOPSIS",
            _line(f"\\fB{COMMAND}\\fR " + _escape(_usage(parser, set()).removeprefix(COMMAND), literal=True))]
    subs = _subcommands(parser)
    for name, _, p in subs:
        args = _usage(p, globals_).removeprefix(p.prog)
        out += [".br", _line(f"\\fB{COMMAND}\\fR [\\fIOPTIONS\\fR] \\fB{_escape(name, literal=True)}\\fR"
                             + _escape(args, literal=True))]
    out += [".SH DESCRIPTION", ".PP", _line(inline(parser.description or ""))]
    out += [".SH OPTIONS", ".PP", "Accepted before or after the command."]
    out += _options(parser._actions, skip=set())
    out += [".SH COMMANDS"]
    for name, help_, p in subs:
        out += [".SS " + _escape(name, literal=True), ".PP", _line(inline(help_))]
        opts = _options(p._actions, skip=globals_ | {"-h", "--help"})
        if opts:
            out += opts
    out += [".SH EXIT STATUS"]
    for code, meaning in exit_codes(docs):
        out += [".TP", _line(_escape(code)), _line(inline(meaning))]
    out += [".SH FILES"]
    for path, what in files:
        out += [".TP", f"\\fI{_breakable(_escape(path, literal=True))}\\fR", _line(inline(what))]
    _, notes = _section(docs, COMMAND_SECTION)
    notes = re.sub(r"^```.*?^```\n?", "", notes, count=1, flags=re.S | re.M)  # the synopsis: the parser's above
    notes = "\n\n".join(p for p in re.split(r"\n\s*\n", notes) if not p.lstrip().startswith("Exit codes:"))
    out += [".SH NOTES", markdown_to_roff(notes).rstrip("\n")]
    out += [".SH SEE ALSO", ",\n".join(f"\\fB{_escape(p.name)}\\fR(5)" for p in FILE_PAGES)
            + ",\n\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBpodman\\fR(1)"]
    return "\n".join(out) + "\n"


def all_pages(parser: argparse.ArgumentParser, docs: Docs, version: str,
              files: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Every page, by file name (podvm-bootstrap.8, components.yaml.5, ...)."""
    pages = {f"{COMMAND}.8": command_page(parser, docs, version, files)}
    for page in FILE_PAGES:
        pages[f"{page.name}.5"] = file_page(page, docs, version)
    return pages
