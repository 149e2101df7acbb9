"""Error types, each with its exit code (docs/operating.md "Command line").

Anything a user or the host can cause is one of these; the CLI prints
``str(error)`` as one line and exits with ``exit_code``, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_POLICY = 3


# --- untrusted text in a log or error line: the one home of the escaping rule --


def _escape_unprintable(text: str) -> str:
    """Each character that is not printable as its Python escape (\\x1b,
    \\u2028, ...): nothing left can start a line or drive a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def one_line(value: object, limit: int = 300) -> str:
    """Prose for a log or error line (an exception's message, a server's
    answer): white space runs (line breaks included) folded to one space, any
    other unprintable character escaped, cut at `limit` characters."""
    text = _escape_unprintable(" ".join(str(value).split()))
    return text if len(text) <= limit else text[:limit] + "..."


def error_line(exc: BaseException) -> str:
    """one_line of a D-Bus (GLib.Error) failure: its own `message`, without the
    domain and code that str() puts around it."""
    return one_line(getattr(exc, "message", None) or exc)


def show(value: object, limit: int = 200, *, quote: bool = False) -> str:
    """A value from untrusted input (a path, a key, a name, an image
    reference) for a message: as it is when it is plain printable text
    (quote=True: between single quotes), else repr-escaped, so that line breaks
    and control characters are visible escapes inside quotes; a value that is
    not a string is shown as its repr. Cut at `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text or not text.isprintable() or text != text.strip() or "'" in text or '"' in text:
        text = repr(text)
    elif quote and isinstance(value, str):
        text = f"'{text}'"
    return text + "..." if cut else text


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
