from __future__ import annotations

import pytest

from renderer.config.load import MAX_BYTES, LoadError, load_text


def errors(raw: bytes) -> list[tuple[int, int, str]]:
    with pytest.raises(LoadError) as exc:
        load_text("f.yaml", raw)
    return [(d.mark.line, d.mark.col, d.message) for d in exc.value.diagnostics]


def test_positions_of_keys_and_values():
    doc = load_text("f.yaml", b"name: x\nscaling:\n  max_containers: 4\nlist:\n  - a\n  - b\n")
    assert doc.data == {"name": "x", "scaling": {"max_containers": 4}, "list": ["a", "b"]}
    node, mark = doc.root.find(("scaling", "max_containers"))
    assert (mark.line, mark.col) == (3, 19) and node.value == 4
    assert doc.root.find(("list", 1))[1].line == 6
    # a missing key stops at the deepest existing node
    assert doc.root.find(("scaling", "nope"))[1].line == 2


@pytest.mark.parametrize("text,fragment", [
    (b"a: yes\n", "boolean true"), (b"a: No\n", "boolean false"), (b"a: on\n", "boolean true"),
    (b"a: 0755\n", "octal"), (b"a: 1:30\n", "base-60"), (b"a: 2024-01-01\n", "date"), (b"a: 0b101\n", "binary"),
])
def test_yaml_11_surprises_are_reported(text, fragment):
    [(line, col, message)] = errors(text)
    assert (line, col) == (1, 4) and fragment in message


def test_plain_values_are_kept():
    doc = load_text("f.yaml", b"a: true\nb: 900\nc: 0.9\nd: '0755'\ne: ~\nf: 0x1F\ng: '1:30'\n")
    assert doc.data == {"a": True, "b": 900, "c": 0.9, "d": "0755", "e": None, "f": 31, "g": "1:30"}


def test_duplicate_keys_all_reported():
    assert errors(b"a: 1\nb: 2\na: 3\nb: 4\n") == [
        (3, 1, "duplicate key 'a'"), (4, 1, "duplicate key 'b'")]


def test_merge_keys_and_custom_tags_refused():
    assert "merge keys" in errors(b"base: &b {x: 1}\nother:\n  <<: *b\n")[0][2]
    assert "unsupported YAML tag" in errors(b"a: !!python/object:os.system x\n")[0][2]


def test_alias_bomb_is_refused_quickly():
    lines = [b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [".encode() + b", ".join([f"*a{i-1}".encode()] * 10) + b"]")
    [(_, _, message)] = errors(b"\n".join(lines) + b"\n")
    assert "expands to more than" in message


def test_small_aliases_are_fine():
    assert load_text("f.yaml", b"a: &x [1, 2]\nb: *x\n").data == {"a": [1, 2], "b": [1, 2]}


def test_empty_comment_only_huge_binary_multi():
    assert errors(b"") == [(1, 1, "file is empty")]
    assert errors(b"# only a comment\n")[0][2].startswith("file holds no YAML document")
    assert "over the 1 MiB limit" in errors(b"a: " + b"x" * MAX_BYTES)[0][2]
    assert errors(b"name: ok\nmodel: \xff\xfe\n")[0][:2] == (2, 8)
    assert "more than one YAML document" in errors(b"a: 1\n---\nb: 2\n")[0][2]
    assert "expected a mapping" in errors(b"- 1\n- 2\n")[0][2]
    assert errors(b"a: 1\nb: [2\n")[0][2].startswith("invalid YAML")


def test_non_string_keys_refused():
    assert "keys must be strings" in errors(b"1: a\n")[0][2]
