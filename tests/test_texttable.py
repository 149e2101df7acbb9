"""texttable: the one plain-text table of `plan` and `status`."""

from __future__ import annotations

from podvm_bootstrap.common.texttable import text_table


def test_columns_are_aligned_and_the_last_is_not_padded():
    lines = text_table([("NAME", "UNIT", "IMAGE"),
                        ("kata-agent", "k.service", "quay.io/x@sha256:1"),
                        ("aa", "attestation-agent.service", "i")])
    assert lines == [
        "NAME        UNIT                       IMAGE",
        "kata-agent  k.service                  quay.io/x@sha256:1",
        "aa          attestation-agent.service  i",
    ]


def test_one_column_and_no_rows():
    assert text_table([("A",), ("long text",)]) == ["A", "long text"]
    assert text_table([]) == []
