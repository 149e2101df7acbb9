#!/usr/bin/env python3
"""`make man` (and the Debian package's build): writes the man pages into DIR
(default build/man): podvm-bootstrap.8 from the command line parser and the
docs' "Command line" section (docs/operating.md), bootstrap.yaml.5,
components.yaml.5 and policy.yaml.5 from the docs' reference sections
(podvm_bootstrap/cli/manpage.py converts; its FILE_PAGES table says which section
of which docs page makes which page)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from podvm_bootstrap import __version__  # noqa: E402
from podvm_bootstrap.cli.main import build_parser  # noqa: E402
from podvm_bootstrap.cli.manpage import DOCS_SOURCES, all_pages  # noqa: E402
from podvm_bootstrap.common.paths import CONFIG_DIR, STATE_DIR, UNIT_DIR  # noqa: E402

# The FILES section: the paths are the code's own defaults (paths.py).
FILES = (
    (f"{CONFIG_DIR}/bootstrap.yaml", "the daemon's settings: user-data provider, runtime, measured launch, TEE; "
                                     "see **bootstrap.yaml**(5)"),
    (f"{CONFIG_DIR}/components.yaml", "the components, their images and how they start; see **components.yaml**(5)"),
    (f"{CONFIG_DIR}/policy.yaml", "which overrides and signatures are accepted; see **policy.yaml**(5)"),
    (STATE_DIR, "runtime state: `plan.json`, `state.json` (read by `status`)"),
    (UNIT_DIR, "where `run` writes one unit per component"),
)


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "build/man"
    docs = {name: (ROOT / name).read_text(encoding="utf-8") for name in DOCS_SOURCES}
    out.mkdir(parents=True, exist_ok=True)
    for name, text in all_pages(build_parser(), docs, __version__, FILES).items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="ascii")
        tmp.replace(out / name)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
