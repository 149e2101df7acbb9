"""Error types, each with the exit code DESIGN.md gives it.

Anything a user or the host can cause is one of these; the CLI prints
``str(error)`` as one line and exits with ``exit_code``, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_POLICY = 3


def one_line(value: object, limit: int = 300) -> str:
    """Text for a log or error line: whitespace runs (line breaks included)
    folded to one space, cut at `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


class BootstrapError(Exception):
    """A failure that is reported as one line, not a traceback."""

    exit_code = EXIT_RUNTIME

    def __str__(self) -> str:
        # One line, always: a message carrying a newline would break journald's
        # one-event-per-line and could forge a second log entry.
        return " ".join(super().__str__().splitlines())


class UsageError(BootstrapError):
    exit_code = EXIT_CONFIG


class ConfigError(BootstrapError):
    """A baked configuration file is wrong; names the file and the key."""

    exit_code = EXIT_CONFIG

    def __init__(self, file: object, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


class UserDataError(BootstrapError):
    """User-data could not be fetched or decoded (untrusted input, or the host)."""


class PolicyFailure(BootstrapError):
    """The policy refused an override and says to fail (on_rejected_override: fail)."""

    exit_code = EXIT_POLICY
