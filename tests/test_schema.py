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

from conftest import REPO
from renderer.gpus import GPU_TYPES
from renderer.config import vllm_args
from renderer.config.schema import load_schema

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
    exe = shutil.which("check-jsonschema") or str(__import__("pathlib").Path(sys.executable).with_name("check-jsonschema"))
    files = [str(p) for p in sorted((REPO / "deployments").glob("*.yaml")) if p.name != "fleet.yaml"]
    ok = subprocess.run([exe, "--schemafile", str(REPO / "schema/deployment.schema.json"), *files],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    fleet = subprocess.run([exe, "--schemafile", str(REPO / "schema/fleet.schema.json"),
                            str(REPO / "deployments/fleet.yaml")], capture_output=True, text=True)
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "deployments/qwen2-5-7b-awq.yaml").read_text().replace("scaledown_window", "scaledown_windw"))
    assert subprocess.run([exe, "--schemafile", str(REPO / "schema/deployment.schema.json"), str(bad)],
                          capture_output=True).returncode == 1


def test_files_declare_schema_for_editors():
    for p in (REPO / "deployments").glob("*.yaml"):
        first = p.read_text().splitlines()[0]
        want = "fleet" if p.name == "fleet.yaml" else "deployment"
        assert first == f"# yaml-language-server: $schema=../schema/{want}.schema.json"
