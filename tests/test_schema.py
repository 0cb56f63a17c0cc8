"""The schema is the single source of field names, defaults and enums: prove it is well formed,
documented, in agreement with the code, and usable by a peer tool (check-jsonschema)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from jsonschema import Draft202012Validator

from renderer.config import vllm_args
from renderer.config.schema import load_schema
from renderer.gpus import GPU_TYPES

from conftest import REPO

SCHEMAS = ["deployment.schema.json", "fleet.schema.json"]


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_is_valid_draft_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _objects(node, path=""):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for k, v in node.items():
            yield from _objects(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, f"{path}/{i}")


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_object_is_strict_and_every_property_described(name):
    schema = load_schema(name)
    defs = load_schema("deployment.schema.json")["$defs"]
    for path, obj in _objects(schema):
        assert "additionalProperties" in obj, f"{path} is not strict"
        for prop, sub in obj.get("properties", {}).items():
            target = defs[sub["$ref"].split("/")[-1]] if "$ref" in sub and "#/$defs/" in sub["$ref"] else {}
            assert sub.get("description") or target.get("description"), f"{path}/{prop} has no description"


def test_gpu_enum_matches_gpu_table():
    enum = load_schema("deployment.schema.json")["$defs"]["gpu_type"]["enum"]
    assert set(enum) == set(GPU_TYPES) | {f"{g}!" for g in GPU_TYPES}
    prices = load_schema("fleet.schema.json")["properties"]["prices"]["propertyNames"]["enum"]
    assert set(prices) == set(GPU_TYPES)


def test_fast_boot_description_carries_the_measurement():
    desc = load_schema("deployment.schema.json")["$defs"]["engine"]["properties"]["fast_boot"]["description"]
    for figure in ("52.6 s", "44.6 s", "196", "65", "4987", "2728"):
        assert figure in desc


def test_examples_in_schema_validate():
    schema = load_schema("deployment.schema.json")
    from renderer.config.schema import validator as _validator

    for section, d in schema["$defs"].items():
        for prop, sub in d.get("properties", {}).items():
            for example in sub.get("examples", []):
                errors = list(_validator("deployment.schema.json", f"/$defs/{section}").iter_errors({prop: example}))
                assert not errors, (section, prop, example, errors)


def test_managed_flags_point_at_real_fields():
    # every field the argv table points users to (instead of extra_args) exists in the schema
    schema = load_schema("deployment.schema.json")["$defs"]
    fields = {row.field for row in vllm_args.ARGS if row.field}
    assert len(fields) >= 15
    for field in fields:
        section, prop = field.split(".")
        assert prop in schema[section]["properties"], field
    for row in vllm_args.ARGS:
        assert row.field or row.why, f"{row.flags}: a flag fleetform owns needs a reason"


def test_check_jsonschema_accepts_examples_and_rejects_typo(tmp_path):
    """The peer tool, with the same schema files, agrees: editors and CI can use them."""
    exe = shutil.which("check-jsonschema") or str(
        __import__("pathlib").Path(sys.executable).with_name("check-jsonschema")
    )
    files = [str(p) for p in sorted((REPO / "deployments").glob("*.yaml")) if p.name != "fleet.yaml"]
    ok = subprocess.run(
        [exe, "--schemafile", str(REPO / "schema/deployment.schema.json"), *files], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    fleet = subprocess.run(
        [exe, "--schemafile", str(REPO / "schema/fleet.schema.json"), str(REPO / "deployments/fleet.yaml")],
        capture_output=True,
        text=True,
    )
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (REPO / "deployments/qwen2-5-7b-awq.yaml").read_text().replace("scaledown_window", "scaledown_windw")
    )
    assert (
        subprocess.run(
            [exe, "--schemafile", str(REPO / "schema/deployment.schema.json"), str(bad)], capture_output=True
        ).returncode
        == 1
    )


def test_files_declare_schema_for_editors():
    for p in (REPO / "deployments").glob("*.yaml"):
        first = p.read_text().splitlines()[0]
        want = "fleet" if p.name == "fleet.yaml" else "deployment"
        assert first == f"# yaml-language-server: $schema=../schema/{want}.schema.json"


# --- the validator reads the schema as a deployment needs it -------------------------------------------------

from renderer.config import schema as S  # noqa: E402

from conftest import run_cli  # noqa: E402


def _typed(name, kind):
    return [(p, node) for p, node in S.walk(name) if node.get("type") == kind]


@pytest.mark.parametrize("name", SCHEMAS)
def test_no_integer_field_accepts_a_float(name):
    """JSON Schema's `integer` takes 2.0; every integer field here refuses it (and takes 2)."""
    fields = _typed(name, "integer")
    assert len(fields) >= (10 if name == "deployment.schema.json" else 3)
    for pointer, node in fields:
        value = node["enum"][0] if "enum" in node else node.get("minimum", node.get("exclusiveMinimum", 0) + 1)
        check = S.validator_class()(node)
        assert check.is_valid(value), pointer
        assert not check.is_valid(float(value)), pointer
        assert Draft202012Validator(node).is_valid(float(value))  # what plain JSON Schema would let through


@pytest.mark.parametrize("name", SCHEMAS)
def test_no_number_field_accepts_infinity_or_nan(name):
    fields = _typed(name, "number")
    assert fields
    for pointer, node in fields:
        check = S.validator_class()(node)
        for bad in (float("inf"), float("nan")):
            assert not check.is_valid(bad), pointer


def _samples() -> set[str]:
    """Strings that are valid somewhere: every string in the example files and in the schemas' examples and defaults."""
    out: set[str] = set()

    def collect(node):
        if isinstance(node, str):
            out.add(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                out.add(k)
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    for p in (REPO / "deployments").glob("*.yaml"):
        collect(yaml.safe_load(p.read_text()))
    for name in SCHEMAS:
        for _, node in S.walk(name):
            collect(node.get("examples", []))
            collect(node.get("default"))
    return out


@pytest.mark.parametrize("name", SCHEMAS)
def test_no_pattern_accepts_a_trailing_newline(name):
    patterns = {node["pattern"] for _, node in S.walk(name) if isinstance(node.get("pattern"), str)}
    samples = _samples()
    exercised = set()
    for pattern in patterns:
        for value in samples:
            if S.matches(pattern, value):
                exercised.add(pattern)
                assert not S.matches(pattern, value + "\n"), (pattern, value)
                import re

                assert "$" not in pattern or re.search(pattern, value + "\n")  # Python's own `$` would
    assert len(exercised) >= len(patterns) - 2, patterns - exercised


def test_ecma_pattern_keeps_escapes_and_classes():
    assert S.ecma_pattern(r"^a\$[$]$") == r"^a\$[$]\Z"
    assert S.matches("^[a-z]+$", "abc") and not S.matches("^[a-z]+$", "abc\n")


def test_prices_are_finite_and_bounded(tmp_path):
    folder = tmp_path / "deployments"
    folder.mkdir()
    (folder / "demo.yaml").write_text((REPO / "deployments" / "qwen2-5-7b-awq.yaml").read_text())
    for price, message in (
        ("1.0e+400", "number 1.0e+400 is too large (infinite as a float)"),
        ("-0.5", "must be >= 0, got -0.5"),
        ("5000", "must be <= 1000, got 5000"),
    ):
        (folder / "fleet.yaml").write_text(f"prices:\n  H100: {price}\n")
        result = run_cli("validate", str(folder))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"fleet.yaml:2:9: error: prices.H100: {message}" in result.stderr, result.stderr
        assert "    hint: " in result.stderr


def test_catch_all_messages_for_keywords_without_their_own():
    from renderer.config.load import load_text
    from renderer.config.validate import _schema_error_diags

    doc = load_text("x.yaml", b"a: b\n")
    for schema, want in (
        ({"const": "c"}, "must be 'c', got string 'b'"),
        ({"maxLength": 0}, "must be at most 0 characters, got 1"),
        ({"minLength": 2}, "must be at least 2 characters, got 1"),
        ({"type": "string", "format": "ipv4", "not": {"const": "b"}}, "does not satisfy the schema's `not`"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "expected integer or null, got string 'b'"),
        ({"pattern": "^c$"}, "expected a value matching '^c$', got string 'b'"),
    ):
        errors = list(S.validator_class()({"properties": {"a": schema}}).iter_errors(doc.root.plain()))
        [d] = [d for e in errors for d in _schema_error_diags(e, doc.root, "", ())]
        assert d.message.startswith(want), d.message
        assert d.hint and (d.mark.line, d.mark.col) == (1, 4)


@pytest.mark.parametrize(
    "bounds,value,want",
    [
        ({"minimum": 2}, 1, ("must be >= 2, got 1", "use a value of at least 2")),
        ({"exclusiveMinimum": 0}, 0, ("must be > 0, got 0", "use a value above 0")),
        ({"maximum": 5}, 6, ("must be <= 5, got 6", "use a value of at most 5")),
        ({"exclusiveMaximum": 5}, 5, ("must be < 5, got 5", "use a value of at most 5")),
        ({"minimum": 1, "maximum": 3}, 4, ("must be <= 3, got 4", "use a value from 1 to 3")),
    ],
)
def test_bounds_messages_and_hints_for_one_sided_and_two_sided_bounds(bounds, value, want):
    """Every bounded field of the shipped schemas has both bounds; a field with one gets its own hint."""
    from renderer.config.load import load_text
    from renderer.config.validate import _schema_error_diags

    doc = load_text("x.yaml", f"a: {value}\n".encode())
    errors = list(S.validator_class()({"properties": {"a": bounds}}).iter_errors(doc.root.plain()))
    [d] = [d for e in errors for d in _schema_error_diags(e, doc.root, "", ())]
    assert (d.message, d.hint) == want


def test_a_whole_float_far_too_big_for_an_integer_field_gets_the_field_hint(tmp_path):
    """`write N, without a decimal point` stops below 1e18: past that, N would be a wall of digits."""
    folder = tmp_path / "deployments"
    folder.mkdir()
    text = (REPO / "deployments" / "qwen2-5-7b-awq.yaml").read_text()
    for value, hint in (
        ("1.0e+17", "write 100000000000000000, without a decimal point: this field takes a whole number"),
        ("1.0e+18", "max_num_seqs: Most sequences batched at once (`--max-num-seqs`)"),
    ):
        (folder / "demo.yaml").write_text(text.replace("  max_num_seqs: 64\n", f"  max_num_seqs: {value}\n"))
        result = run_cli("validate", str(folder))
        assert result.returncode == 1
        assert f"    hint: {hint}" in result.stderr, result.stderr


def test_a_refused_price_key_is_reported_at_its_own_line(tmp_path):
    folder = tmp_path / "deployments"
    folder.mkdir()
    (folder / "demo.yaml").write_text((REPO / "deployments" / "qwen2-5-7b-awq.yaml").read_text())
    (folder / "fleet.yaml").write_text("prices:\n  H100: 2.0\n  H10: 3.0\n")
    result = run_cli("validate", str(folder))
    assert result.returncode == 1
    assert f"{folder / 'fleet.yaml'}:3:3: error: prices.H10: invalid key 'H10': expected one of T4, " in result.stderr
    assert '    hint: did you mean "H100"?' in result.stderr


# --- the schema reader's own functions (renderer/config/schema.py) ------------------------------------------


@pytest.mark.parametrize(
    "value,seconds",
    [(900, 900), ("15m", 900), ("1h30m", 5400), ("90s", 90), ("2h0m5s", 7205), ("1h", 3600), ("0s", 0)],
)
def test_parse_duration(value, seconds):
    assert S.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "15x", "m", "1m1h", True, None, 1.5])
def test_parse_duration_refuses_what_is_not_a_duration(value):
    with pytest.raises(ValueError, match="not a duration"):
        S.parse_duration(value)


def test_ecma_pattern_ends_only_outside_character_classes():
    assert S.ecma_pattern("^a$") == r"^a\Z"
    assert S.ecma_pattern("^[]$]$") == r"^[]$]\Z"  # a leading `]` is a member; the class ends at the next one
    assert S.ecma_pattern("^[a]$[$]$") == r"^[a]\Z[$]\Z"
    assert S.ecma_pattern("^[a-z$]+$") == r"^[a-z$]+\Z"  # a `$` deep in a class is a member
    assert S.matches("^[]x]+$", "]x]") and not S.matches("^[]x]+$", "]x]\n")


def test_subschema_at_follows_refs_items_and_additional_properties():
    D = S.DEPLOYMENT_SCHEMA
    assert S.subschema_at(D, ("engine", "env", "ANY_NAME")) == {"type": "string", "maxLength": 4096}
    assert "H100!" in S.subschema_at(D, ("gpu", "fallbacks", 0))["enum"]
    assert S.subschema_at(D, ("scaling", "scaledown_window"))["default"] == "15m"
    assert S.subschema_at(D, ("nope",)) is None
    assert S.subschema_at(D, ("name", "deeper")) is None
    assert S.subschema_at(S.FLEET_SCHEMA, ("environments", "prod"))["required"] == ["modal_environment"]
    file, last, target = S.shipped().target("deployment.schema.json#/$defs/environment_name", S.FLEET_SCHEMA)
    assert (file, last, target) == (D, "environment_name", S.load_schema(D)["$defs"]["environment_name"])
    assert S.shipped().target("#", D) == (D, "", S.load_schema(D))


def test_defaults_come_nested_and_only_where_the_schema_has_one():
    defaults = S.schema_defaults()
    assert defaults["scaling"] == {
        "min_containers": 0,
        "buffer_containers": 0,
        "scaledown_window": "15m",
        "target_concurrency": 32,
        "startup_timeout": "10m",
    }
    assert defaults["gpu"] == {"count": 1, "fallbacks": []} and "name" not in defaults
    gateway = S.gateway_defaults()
    assert gateway["name"] == "fleetform-gateway" and gateway["max_containers"] is None


def test_section_of_a_misplaced_field():
    assert [S.section_of(k) for k in ("scaledown_window", "count", "quantization", "nope")] == [
        "scaling",
        "gpu",
        "model",
        None,
    ]


def test_walk_yields_every_object_with_its_pointer():
    pointers = dict(S.walk(S.FLEET_SCHEMA))
    assert pointers[""] is S.load_schema(S.FLEET_SCHEMA)
    assert pointers["/properties/gateway/properties/enabled"]["type"] == "boolean"
    assert all(isinstance(node, dict) for node in pointers.values())


def test_schema_files_read_from_a_folder_are_the_shipped_ones(tmp_path):
    for name in S.SCHEMAS:
        (tmp_path / name).write_text((S.schema_dir() / name).read_text())
    edited = json.loads((tmp_path / S.FLEET_SCHEMA).read_text())
    edited["title"] = "edited"
    (tmp_path / S.FLEET_SCHEMA).write_text(json.dumps(edited))
    files = S.SchemaFiles.from_dir(tmp_path).files
    assert files[S.DEPLOYMENT_SCHEMA] == S.shipped().files[S.DEPLOYMENT_SCHEMA]
    assert files[S.FLEET_SCHEMA]["title"] == "edited"
