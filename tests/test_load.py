from __future__ import annotations

import pytest

from renderer.config.load import MAX_BYTES, MAX_DEPTH, MAX_INT_DIGITS, LoadError, load_text


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


@pytest.mark.parametrize(
    "text,fragment",
    [
        (b"a: yes\n", "boolean true"),
        (b"a: No\n", "boolean false"),
        (b"a: on\n", "boolean true"),
        (b"a: 0755\n", "octal"),
        (b"a: 1:30\n", "base-60"),
        (b"a: 2024-01-01\n", "date"),
        (b"a: 0b101\n", "binary"),
        (b"a: 1:30.5\n", "'1:30.5' is read as a base-60 number"),
        (b"a: .inf\n", "'.inf' is read as a special float"),
        (b"a: .NaN\n", "'.NaN' is read as a special float"),
    ],
)
def test_yaml_11_surprises_are_reported(text, fragment):
    [(line, col, message)] = errors(text)
    assert (line, col) == (1, 4) and fragment in message


def test_plain_values_are_kept():
    doc = load_text("f.yaml", b"a: true\nb: 900\nc: 0.9\nd: '0755'\ne: ~\nf: 0x1F\ng: '1:30'\n")
    assert doc.data == {"a": True, "b": 900, "c": 0.9, "d": "0755", "e": None, "f": 31, "g": "1:30"}


def test_duplicate_keys_all_reported():
    assert errors(b"a: 1\nb: 2\na: 3\nb: 4\n") == [(3, 1, "duplicate key 'a'"), (4, 1, "duplicate key 'b'")]


def test_merge_keys_and_custom_tags_refused():
    assert "merge keys" in errors(b"base: &b {x: 1}\nother:\n  <<: *b\n")[0][2]
    assert "unsupported YAML tag" in errors(b"a: !!python/object:os.system x\n")[0][2]


def test_alias_bomb_is_refused_quickly():
    lines = [b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [".encode() + b", ".join([f"*a{i - 1}".encode()] * 10) + b"]")
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
    assert "key '1' is not a string" in errors(b"1: a\n")[0][2]


@pytest.mark.parametrize(
    "text,where,path",
    [
        (b"a:\n  b: 1\n  1: x\n", (3, 3), ("a", "1")),
        (b"a:\n  b: 1\n  null: x\n", (3, 3), ("a", "null")),
        (b"a: {b: 1, true: 2}\n", (1, 11), ("a", "true")),
        (b"a:\n  b: 1\n  ? [x]\n  : y\n", (3, 5), ("a", "?")),
    ],
)
def test_a_bad_key_is_reported_at_its_own_line_and_path(text, where, path):
    with pytest.raises(LoadError) as exc:
        load_text("f.yaml", text)
    [d] = exc.value.diagnostics
    assert ((d.mark.line, d.mark.col), d.path) == (where, path)


@pytest.mark.parametrize(
    "text,where,fragment",
    [
        (b"a: &a [*a]\n", (1, 4), "refers to a collection that contains it"),
        (b"a: &a {b: {c: *a}}\n", (1, 4), "refers to a collection that contains it"),
        (b"a: " + b"[" * 600 + b"]" * 600 + b"\n", (1, 3 + MAX_DEPTH), f"more than {MAX_DEPTH} levels"),
        (b"a:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 200)), None, f"more than {MAX_DEPTH} levels"),
        (b"a: " + b"{b: " * 100 + b"1" + b"}" * 100 + b"\n", None, f"more than {MAX_DEPTH} levels"),
        (b"a: " + b"1" * 5000 + b"\n", (1, 4), "integer of 5000 digits is too large"),
        (b"a: -" + b"9" * 31 + b"\n", (1, 4), "integer of 31 digits is too large"),
        (b"a: 1.0e+400\n", (1, 4), "too large (infinite as a float)"),
    ],
)
def test_hostile_documents_are_positioned_errors(text, where, fragment):
    """Recursion, depth and numbers Python cannot hold: each a diagnostic, never a crash."""
    with pytest.raises(LoadError) as exc:
        load_text("f.yaml", text)
    [d] = exc.value.diagnostics
    assert fragment in d.message
    if where:
        assert (d.mark.line, d.mark.col) == where


@pytest.mark.parametrize(
    "text,where",
    [
        (b"a: " + b"[" * 600 + b"]" * 600 + b"\n", (1, 67)),
        (b"a:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 600)), (65, 129)),
    ],
)
def test_without_libyaml_deep_documents_are_positioned_errors_too(monkeypatch, text, where):
    """PyYAML's pure-Python composer recurses once a level and runs out of stack on hundreds of
    levels: the depth is then found from the parser's events, at the first level too deep."""
    import yaml

    import renderer.config.load as load

    monkeypatch.setattr(load, "_Loader", yaml.SafeLoader)
    with pytest.raises(LoadError) as exc:
        load_text("f.yaml", text)
    [d] = exc.value.diagnostics
    assert ((d.mark.line, d.mark.col), d.path, d.message) == (where, (), "nested more than 64 levels deep")


def test_deep_but_sane_nesting_and_long_numbers_still_load():
    assert load_text("f.yaml", b"a: " + b"[" * 20 + b"1" + b"]" * 20 + b"\n").data["a"] is not None
    assert load_text("f.yaml", b"a: " + b"9" * MAX_INT_DIGITS + b"\n").data["a"] == int("9" * MAX_INT_DIGITS)


def test_empty_and_comment_only_fleet_files_get_fleet_hints():
    for raw in (b"", b"# nothing yet\n"):
        with pytest.raises(LoadError) as exc:
            load_text("fleet.yaml", raw, "fleet")
        [d] = exc.value.diagnostics
        assert "fleet-wide settings" in d.hint and "`name`" not in d.hint
    with pytest.raises(LoadError) as exc:
        load_text("fleet.yaml", b"- a\n", "fleet")
    assert "defaults" in exc.value.diagnostics[0].hint


# --- which files make up the fleet, through the real CLI ----------------------------------------------

import os  # noqa: E402

from conftest import run_cli  # noqa: E402

REV = "a" * 40


def deployment(name: str) -> str:
    return f"name: {name}\nmodel: {{id: org/{name}, revision: {REV}}}\ngpu: {{type: L4}}\n"


def fleet_dir(tmp_path, **files: str):
    d = tmp_path / "deployments"
    d.mkdir()
    for name, text in files.items():
        (d / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (d / name.replace("__", "/")).write_text(text)
    return d


def validate(*args, cwd):
    return run_cli("validate", *args, cwd=cwd)


def test_a_fifo_is_reported_not_read(tmp_path):
    d = fleet_dir(tmp_path, **{"a.yaml": deployment("a")})
    os.mkfifo(d / "pipe.yaml")
    result = run_cli("validate", "deployments", cwd=tmp_path)  # old code: blocks on open() until the timeout
    assert result.returncode == 1
    assert "deployments/pipe.yaml:1:1: error: (document): is a named pipe (FIFO), not a regular file" in result.stderr


def test_links_to_devices_and_broken_links_are_reported(tmp_path):
    d = fleet_dir(tmp_path, **{"a.yaml": deployment("a")})
    os.symlink("/dev/null", d / "null.yaml")
    os.symlink("gone.yaml", d / "broken.yaml")
    result = validate("deployments", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "deployments/null.yaml:1:1: error: (document): is a character device (through a symbolic link), "
        "not a regular file"
    ) in result.stderr
    assert "deployments/broken.yaml:1:1: error: (document): broken symbolic link (to gone.yaml)" in result.stderr


def test_files_in_subfolders_are_named_in_a_warning(tmp_path):
    fleet_dir(
        tmp_path,
        **{
            "a.yaml": deployment("a"),
            "old__b.yaml": deployment("b"),
            "old__notes.txt": "x",
            "old__deeper__c.yml": deployment("c"),
        },
    )
    result = validate("deployments", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 1 deployment(s) valid, 2 warning(s)\n"
    assert (
        "deployments/old/b.yaml:1:1: warning: (document): not read: it is in a subfolder of deployments"
        in result.stderr
    )
    assert "deployments/old/deeper/c.yml:1:1: warning" in result.stderr and "notes.txt" not in result.stderr


def test_fleet_yml_is_refused_with_the_fix(tmp_path):
    fleet_dir(tmp_path, **{"a.yaml": deployment("a"), "fleet.yml": "defaults: {gpu: {count: 1}}\n"})
    result = validate("deployments", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "deployments/fleet.yml:1:1: error: (document): the fleet file must be named fleet.yaml\n"
        "    hint: rename it: mv deployments/fleet.yml deployments/fleet.yaml\n"
    )
    assert "name" not in result.stderr.split("\n", 2)[2].replace("named", "")  # no "missing name" as a deployment


@pytest.mark.parametrize("text", ["", "# settings to come\n"])
def test_empty_fleet_yaml_says_what_belongs_there(tmp_path, text):
    fleet_dir(tmp_path, **{"a.yaml": deployment("a"), "fleet.yaml": text})
    result = validate("deployments", cwd=tmp_path)
    assert result.returncode == 1
    first, hint = result.stderr.splitlines()[:2]
    assert first.startswith("deployments/fleet.yaml:1:1: error: (document): file ")
    assert "fleet-wide settings" in hint


def test_a_readme_and_other_files_are_not_part_of_the_fleet(tmp_path):
    fleet_dir(tmp_path, **{"a.yaml": deployment("a"), "README.md": "# not yaml: {", ".hidden.yaml": "broken: ["})
    result = validate("deployments", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: 1 deployment(s) valid\n", "")


def test_a_file_named_twice_is_read_once(tmp_path):
    fleet_dir(tmp_path, **{"a.yaml": deployment("a")})
    result = validate("deployments", "deployments/a.yaml", "./deployments/a.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: 1 deployment(s) valid\n", "")


def test_an_explicitly_named_fleet_yaml_is_the_fleet_file(tmp_path):
    fleet_dir(tmp_path, **{"fleet.yaml": "defaults: {auth: {mode: none}}\n"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.yaml").write_text(deployment("a"))
    result = validate("deployments/fleet.yaml", "other/a.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("deployments/fleet.yaml:1:25: warning: auth.mode:")  # its defaults apply


def test_an_empty_folder_is_a_usage_error(tmp_path):
    (tmp_path / "deployments").mkdir()
    result = validate("deployments", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: no deployment files (*.yaml) in deployments\n"


def test_a_folder_with_yaml_only_in_subfolders_has_no_deployment_files(tmp_path):
    """The subfolder warning must not turn "nothing to read" into a green run over zero deployments
    (`render` would then prune every module it wrote before)."""
    fleet_dir(tmp_path, **{"old__a.yaml": deployment("a")})
    result = validate("deployments", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, "error: no deployment files (*.yaml) in deployments\n")


def test_a_second_fleet_yaml_is_named_in_a_warning_and_the_same_one_twice_is_not(tmp_path):
    fleet_dir(tmp_path, **{"a.yaml": deployment("a"), "fleet.yaml": "defaults: {gpu: {count: 1}}\n"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.yaml").write_text(deployment("b"))
    (tmp_path / "other" / "fleet.yaml").write_text("defaults: {gpu: {count: 1}}\n")
    result = validate("deployments", "other", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 2 deployment(s) valid, 1 warning(s)\n"
    assert result.stderr.startswith(
        "other/fleet.yaml:1:1: warning: (document): not read: deployments/fleet.yaml is the fleet file\n"
    )
    result = validate("deployments", "deployments/fleet.yaml", "./deployments/fleet.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: 1 deployment(s) valid\n", "")
