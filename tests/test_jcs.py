"""RFC 8785 canonical JSON for the event log's content (podvm_bootstrap.attest.jcs)."""

from __future__ import annotations

import json

import pytest

from podvm_bootstrap.attest.jcs import canonical_json


def test_no_whitespace_and_sorted_members():
    assert canonical_json({"source": "default", "component": "kata-agent", "digest": "sha256:ab", "n": 5,
                           "list": [1, True, None, False]}) == \
        '{"component":"kata-agent","digest":"sha256:ab","list":[1,true,null,false],"n":5,"source":"default"}'


def test_members_sort_by_utf16_code_units_not_code_points():
    # RFC 8785 3.2.3's example: U+1F600 (a surrogate pair in UTF-16) sorts before U+FB33.
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    text = canonical_json({k: i for i, k in enumerate(keys)})
    order = [k for k in json.loads(text)]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_string_escapes_are_the_minimal_ones():
    assert canonical_json("\"\\\b\f\n\r\t\x00\x1f\x7f/é€😀") == '"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f\x7f/é€😀"'


@pytest.mark.parametrize("value", [1.5, float("nan"), 2**53, -(2**53), "\ud800", {1: "x"}, object()])
def test_values_without_one_canonical_form_are_refused(value):
    with pytest.raises(ValueError):
        canonical_json(value)


def test_integers_in_the_ijson_range_and_round_trip():
    value = {"a": [2**53 - 1, -(2**53 - 1), 0], "b": {"c": "d"}}
    text = canonical_json(value)
    assert text == '{"a":[9007199254740991,-9007199254740991,0],"b":{"c":"d"}}'
    assert json.loads(text) == value
