"""Logging for journald: one event per line on stderr, with the sd-daemon
priority prefix (<3> error, <4> warning, <6> info, <7> debug) that journald
turns into the entry's priority. Outside systemd the prefix is left off."""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
LEVELS = ("debug", "info", "warning", "error")


class _OneLineFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        component = getattr(record, "component", None)
        if component:
            message = f"{component}: {message}"
        # Untrusted text (user-data, registry answers) must not start a new
        # journal entry of its own: fold any line break.
        message = " ".join(message.splitlines())
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{message}"
        return f"podvm-bootstrap: {record.levelname.lower()}: {message}"


def setup_logging(level: str = "info") -> None:
    journal = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(journal))
    root = logging.getLogger("podvm_bootstrap")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("podvm_bootstrap") else f"podvm_bootstrap.{name}")
