"""Limits exactly at their boundaries, with the numbers written out: a limit that moves by one, or a
`<` that becomes `<=`, changes what a user can load, so each is pinned from both sides here.

The numbers are literals on purpose: importing the constants would move the test with the code."""

from __future__ import annotations

import pytest

from renderer.config.load import LoadError, load_text


def load_errors(raw: bytes) -> list[str]:
    """Each diagnostic as `line:col: message`."""
    try:
        load_text("f.yaml", raw)
    except LoadError as exc:
        return [f"{d.mark.line}:{d.mark.col}: {d.message}" for d in exc.diagnostics]
    return []


def _sized(total: int) -> bytes:
    """A valid one-key document of exactly `total` bytes."""
    head, tail = b'a: "', b'"\n'
    return head + b"x" * (total - len(head) - len(tail)) + tail


def test_a_file_of_exactly_one_mebibyte_loads_one_byte_more_does_not():
    assert load_errors(_sized(1_048_576)) == []
    assert load_errors(_sized(1_048_577)) == ["1:1: file is 1048577 bytes, over the 1 MiB limit"]


def _nodes(total: int) -> bytes:
    """A document of exactly `total` nodes: the root mapping, one list and its items."""
    return b"a: [" + b",".join([b"x"] * (total - 2)) + b"]\n"


def test_a_document_of_exactly_100000_nodes_loads_one_more_does_not():
    assert load_errors(_nodes(100_000)) == []
    assert load_errors(_nodes(100_001)) == ["1:200001: document expands to more than 100000 nodes"]


def _nested(lists: int) -> bytes:
    return b"a: " + b"[" * lists + b"1" + b"]" * lists + b"\n"


def test_nesting_of_exactly_64_levels_loads_one_more_does_not():
    assert load_errors(_nested(63)) == []  # the root mapping and 63 lists: 64 levels
    assert load_errors(_nested(64)) == ["1:67: nested more than 64 levels deep"]


def test_an_integer_of_exactly_30_digits_loads_31_do_not():
    assert load_text("f.yaml", b"a: " + b"9" * 30 + b"\n").data == {"a": int("9" * 30)}
    assert load_text("f.yaml", b"a: 1_" + b"0" * 29 + b"\n").data == {"a": 10**29}  # underscores do not count
    assert load_errors(b"a: " + b"9" * 31 + b"\n") == ["1:4: integer of 31 digits is too large"]


def test_a_hex_integer_counts_its_digits_not_its_prefix():
    assert load_text("f.yaml", b"a: 0x" + b"f" * 30 + b"\n").data == {"a": 16**30 - 1}
    assert load_errors(b"a: -0x" + b"f" * 31 + b"\n") == ["1:4: integer of 31 digits is too large"]


@pytest.mark.parametrize(
    "length,shown",
    [(40, "'" + "x" * 40 + "'"), (41, "'" + "x" * 40 + "... (41 characters)'")],
)
def test_values_in_messages_are_cut_after_40_characters(length, shown):
    assert load_errors(b"x" * length + b"\n") == [f"1:1: expected a mapping of fields, got the str {shown}"]
