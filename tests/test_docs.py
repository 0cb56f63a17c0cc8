"""The documentation that must not drift: docs/schema.md is generated from schema/ and must be
current; docs/ci.md states the restart rule of renderer/plan/against.py; docs/json-output.md names every
key `plan --against --format json` prints."""

from __future__ import annotations

import re

import pytest

from renderer import docs
from renderer.config.schema import DEPLOYMENT_SCHEMA, FLEET_SCHEMA, load_schema
from renderer.plan import against as D

from conftest import REPO

SCHEMA_MD = REPO / "docs" / "schema.md"


def test_schema_reference_is_current():
    assert SCHEMA_MD.is_file(), "docs/schema.md is missing: run `python -m renderer.docs`"
    assert SCHEMA_MD.read_text(encoding="utf-8") == docs.render_schema_markdown(), (
        "docs/schema.md is stale: run `python -m renderer.docs` and commit the result"
    )


def test_a_schema_change_makes_the_reference_stale(tmp_path):
    """What the staleness test guards against: a field added to schema/ but not to the docs."""
    import json
    import shutil

    from renderer.config.schema import schema_dir

    shutil.copytree(schema_dir(), tmp_path / "schema")
    path = tmp_path / "schema" / DEPLOYMENT_SCHEMA
    schema = json.loads(path.read_text())
    schema["$defs"]["scaling"]["properties"]["warmup_requests"] = {
        "description": "Requests sent to a new container before it serves.",
        "type": "integer",
        "default": 0,
    }
    path.write_text(json.dumps(schema))
    changed = docs.render_schema_markdown(tmp_path / "schema")
    assert changed != SCHEMA_MD.read_text(encoding="utf-8")
    assert "| `warmup_requests` | integer | `0` | Requests sent to a new container before it serves. |  |" in _section(
        changed, "### `scaling`"
    )
    assert docs.main(["--check", "--schema-dir", str(tmp_path / "schema"), "--out", str(SCHEMA_MD)]) == 1


def _section(text: str, heading: str) -> str:
    """The text under one heading, up to the next heading of any level."""
    start = text.index(f"\n{heading}\n")
    rest = text[start + len(heading) + 2 :]
    end = re.search(r"^#+ ", rest, re.M)
    return rest[: end.start()] if end else rest


def _rows(section: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines() if line.startswith("| `")
    ]


@pytest.mark.parametrize(
    "heading, properties",
    [
        ("## Deployment file", lambda d, f: d["properties"]),
        *[
            (f"### `{s}`", lambda d, f, s=s: d["$defs"][s]["properties"])
            for s in ("model", "gpu", "scaling", "engine", "image", "cache", "auth")
        ],
        (
            "#### `model.lora_adapters[]`",
            lambda d, f: d["$defs"]["model"]["properties"]["lora_adapters"]["items"]["properties"],
        ),
        ("## Fleet file: `fleet.yaml`", lambda d, f: f["properties"]),
        ("### `environments.NAME`", lambda d, f: f["properties"]["environments"]["additionalProperties"]["properties"]),
    ],
)
def test_every_field_has_a_row_with_five_columns(heading, properties):
    deployment, fleet = load_schema(DEPLOYMENT_SCHEMA), load_schema(FLEET_SCHEMA)
    rows = _rows(_section(docs.render_schema_markdown(), heading))
    assert [r[0] for r in rows] == [f"`{k}`" for k in properties(deployment, fleet)]
    assert all(len(r) == 5 for r in rows), rows


def test_rows_carry_type_default_description_and_examples():
    text = docs.render_schema_markdown()
    rows = {r[0]: r for r in _rows(_section(text, "### `scaling`"))}
    assert rows["`scaledown_window`"][1:3] == ["[duration](#duration)", "`15m`"]
    assert rows["`scaledown_window`"][4] == "`900`<br>`15m`<br>`5m`"
    assert rows["`min_containers`"][1] == "integer (>= 0, <= 100)"
    rows = {r[0]: r for r in _rows(_section(text, "### `model`"))}
    assert rows["`revision`"][2] == "**required**"
    assert rows["`quantization`"][1].startswith("one of `none`, `fp8`")
    # every link points at a heading of the document
    anchors = {docs.anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    assert set(re.findall(r"\]\(#([^)]+)\)", text)) <= anchors


def test_check_mode_fails_on_a_stale_file(tmp_path, capsys):
    out = tmp_path / "schema.md"
    assert docs.main(["--check", "--out", str(out)]) == 1
    assert docs.main(["--out", str(out)]) == 0
    assert docs.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert docs.main(["--check", "--out", str(out)]) == 1
    assert "stale" in capsys.readouterr().err


def test_ci_guide_states_every_restart_rule():
    """docs/ci.md carries the rule table; renderer/plan/against.py's IMPACT_RULES is its source."""
    text = (REPO / "docs" / "ci.md").read_text(encoding="utf-8")
    rows = {(r[0], r[1]) for r in _rows(text)}
    for rule in D.IMPACT_RULES:
        assert (f"`{rule.field}`", rule.impact) in rows, f"docs/ci.md lacks the row for {rule.field} ({rule.impact})"
    documented = {field for field, impact in rows if impact in D.IMPACT_ORDER}
    assert documented == {f"`{r.field}`" for r in D.IMPACT_RULES}, "docs/ci.md lists a rule diff.py does not have"


def test_json_reference_names_every_plan_against_key():
    text = (REPO / "docs" / "json-output.md").read_text(encoding="utf-8")
    change = D.FieldChange(("scaling", "max_containers"), 4, 8, D.SCALING, "")
    sample = D.plan_json(D.FleetDiff(()), "origin/main", "0" * 40, None)
    row = D.DeploymentDiff("x", D.REMOVE, None, (change,), None, None).to_dict()
    keys = set(sample) | set(sample["against"]) | set(sample["summary"]) | set(row) | set(change.to_dict())
    keys |= {"source", "content_hash", "modal_environment"}  # of `before` and `after`
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert missing == [], f"docs/json-output.md does not document {missing}"
    for word in (*D.IMPACT_ORDER, D.CREATE, D.UPDATE, D.REMOVE, D.UNCHANGED):
        assert f"`{word}`" in text


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["render", "--out", "out"],
        ["plan"],
        ["plan", "--env", "prod"],
        ["explain", "chat"],
        ["validate", "deployments/bad.yaml"],
    ],
)
def test_json_reference_names_every_key_the_commands_print(argv, tmp_path, monkeypatch, capsys):
    """The existing commands' JSON against the reference: a new key must be documented."""
    import json

    from renderer import cli

    from test_gitref import FLEET_YAML, deployment_yaml, write

    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        {
            "deployments/fleet.yaml": FLEET_YAML,
            "deployments/chat.yaml": deployment_yaml("chat"),
            "deployments/bad.yaml": "name: Bad\n",
        },
    )
    if argv != ["validate", "deployments/bad.yaml"]:
        (tmp_path / "deployments" / "bad.yaml").unlink()
    cli.main([*argv, "--format", "json"])
    keys = _keys(json.loads(capsys.readouterr().out))
    text = (REPO / "docs" / "json-output.md").read_text(encoding="utf-8")
    assert keys and sorted(k for k in keys if f"`{k}`" not in text) == []
