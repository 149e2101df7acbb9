"""errors: the one home of how untrusted text enters a log or error line."""

from __future__ import annotations

import pytest

from podvm_bootstrap.common.errors import ConfigError, error_line, one_line, show


def test_one_line_folds_white_space_and_escapes_the_rest():
    assert one_line("a\n  b\r\n\tc\u2028d") == "a b c d"
    assert one_line("red \x1b[31mFAKE\x00 \x7f") == "red \\x1b[31mFAKE\\x00 \\x7f"
    assert one_line(ValueError("bad\nvalue")) == "bad value"


def test_one_line_is_cut_at_its_limit():
    assert one_line("x" * 301) == "x" * 300 + "..."
    assert one_line("x" * 300) == "x" * 300
    assert one_line("\x01" * 100, 20) == "\\x01" * 5 + "..."


@pytest.mark.parametrize(("value", "shown"), [
    ("/run/peerpod/aa.toml", "/run/peerpod/aa.toml"),
    ("/a\nb", "'/a\\nb'"),
    ("/a\u2028b", "'/a\\u2028b'"),
    ("\x1b[31m", "'\\x1b[31m'"),
    (" padded", "' padded'"),
    ("it's", '"it\'s"'),
    ("", "''"),
    (7, "7"),
    (None, "None"),
    ({"image": "x"}, "\"{'image': 'x'}\""),
])
def test_show_keeps_plain_text_and_makes_the_rest_visible(value: object, shown: str):
    assert show(value) == shown


def test_show_quote_puts_plain_text_in_quotes_only_once():
    assert show("trustee-agent", quote=True) == "'trustee-agent'"
    assert show("evil\nname", quote=True) == "'evil\\nname'"
    assert show(7, quote=True) == "7"


def test_show_is_bounded():
    text = show("x" * 500)
    assert text == "x" * 200 + "..."
    assert len(show("\n" * 500, 50)) < 300


class _GLibLike(Exception):
    def __init__(self) -> None:
        super().__init__("g-dbus-error-quark: GDBus.Error:org.freedesktop.systemd1.NoSuchUnit: no\nunit (36)")
        self.message = "GDBus.Error:org.freedesktop.systemd1.NoSuchUnit: no\nunit"


def test_error_line_takes_a_dbus_error_s_own_message():
    assert error_line(_GLibLike()) == "GDBus.Error:org.freedesktop.systemd1.NoSuchUnit: no unit"
    assert error_line(OSError("plain\nerror")) == "plain error"


def test_config_error_is_one_line_with_file_and_key():
    err = ConfigError("/etc/podvm-bootstrap/components.yaml", "components.a.unit", "bad\nname")
    assert str(err) == "/etc/podvm-bootstrap/components.yaml: components.a.unit: bad name"
