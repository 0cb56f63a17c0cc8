"""Every environment is checked on every run: `resolve` checks the fleet without `--env` and in each
environment fleet.yaml declares, reports each problem once, and required fields may come from
fleet.yaml `defaults` or from every environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from renderer.config import resolve as resolve_mod
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

from conftest import run_cli

REV = "a" * 40
ENVS = "environments:\n  dev:\n    modal_environment: ff-dev\n{dev}  prod:\n    modal_environment: ff-prod\n{prod}"


def deployment(name: str, extra: str = "", gpu: str = "gpu: {type: L4}\n") -> str:
    return f"name: {name}\nmodel: {{id: org/{name}, revision: {REV}}}\n{gpu}{extra}"


def fleet(tmp_path: Path, fleet_yaml: str, **files: str) -> Path:
    root = tmp_path / "deployments"
    root.mkdir()
    (root / "fleet.yaml").write_text(fleet_yaml)
    for name, text in files.items():
        (root / f"{name}.yaml").write_text(text)
    return root


def errors(root: Path, env: str | None = None) -> list[str]:
    resolved = resolve(load_fleet([str(root)]), env)
    return [f"{Path(d.mark.file).name}:{d.mark.line}: {d.message}" for d in resolved.diagnostics if d.is_error]


DEV_CAPS_AT_ONE = "    overrides:\n      scaling: {max_containers: 1}\n"


def test_a_broken_environment_fails_validate_without_env(tmp_path):
    """The pre-commit hook and the PR job run `validate` without --env: dev's overlay is checked too."""
    root = fleet(
        tmp_path, ENVS.format(dev=DEV_CAPS_AT_ONE, prod=""), a=deployment("a", "scaling: {min_containers: 2}\n")
    )
    result = run_cli("validate", str(root))
    assert result.returncode == 1
    assert (
        f"{root}/a.yaml:4:27: error: scaling.min_containers: min_containers 2 is above max_containers 1 "
        "(in environment dev)" in result.stderr
    )
    for argv in (["plan", str(root), "--env", "prod"], ["render", str(root), "--out", str(tmp_path / "build")]):
        refused = run_cli(*argv)
        assert refused.returncode == 1 and "(in environment dev)" in refused.stderr, argv
    assert not (tmp_path / "build").exists()


def test_a_credential_in_an_environment_overlay_is_found_without_env(tmp_path):
    root = fleet(
        tmp_path,
        ENVS.format(dev="", prod=""),
        a=deployment("a", "environments:\n  prod:\n    engine:\n      env: {HF_TOKEN: hf_" + "x" * 34 + "}\n"),
    )
    assert errors(root) == ["a.yaml:7: looks like a Hugging Face token: credentials never belong in YAML"]


def test_each_problem_once_with_the_environments_it_breaks(tmp_path):
    root = fleet(
        tmp_path,
        ENVS.format(dev=DEV_CAPS_AT_ONE, prod=""),
        a=deployment("a", "scaling: {min_containers: 2}\nenvironments:\n  prod:\n    scaling: {max_containers: 1}\n"),
        b=deployment("b", "gpu: {type: L4, count: 2, tensor_parallel_size: 3}\n", gpu=""),
    )
    assert sorted(errors(root)) == [
        "a.yaml:4: min_containers 2 is above max_containers 1 (in environments dev, prod)",
        "b.yaml:3: tensor_parallel_size 3 must divide the GPU count 2",  # everywhere: no list
    ]
    assert sorted(errors(root, "dev")) == sorted(errors(root))  # the same, whichever --env is asked for


def test_an_inherited_error_is_reported_once_with_the_deployments_it_breaks(tmp_path):
    fleet_yaml = "defaults:\n  scaling: {min_containers: 3, max_containers: 2}\n"
    root = fleet(
        tmp_path, fleet_yaml, a=deployment("a"), b=deployment("b"), c=deployment("c", "scaling: {max_containers: 5}\n")
    )
    assert errors(root) == [
        "fleet.yaml:2:  min_containers 3 is above max_containers 2 (breaks deployments a, b)".replace(":  ", ": ")
    ]


def test_an_error_in_one_environments_overrides_names_deployments_and_environment(tmp_path):
    root = fleet(
        tmp_path,
        ENVS.format(dev="    overrides:\n      gpu: {count: 3, tensor_parallel_size: 2}\n", prod=""),
        a=deployment("a"),
        b=deployment("b"),
    )
    assert errors(root) == [
        "fleet.yaml:5: tensor_parallel_size 2 must divide the GPU count 3 (breaks deployments a, b in environment dev)"
    ]


def test_a_long_list_of_deployments_is_cut(tmp_path):
    names = [f"d{i}" for i in range(8)]
    root = fleet(
        tmp_path, "defaults:\n  scaling: {min_containers: 3, max_containers: 2}\n", **{n: deployment(n) for n in names}
    )
    [message] = errors(root)
    assert message.endswith("(breaks deployments d0, d1, d2, d3, d4 and 3 more)")


def test_an_environment_that_touches_nothing_is_not_checked_again(tmp_path, monkeypatch):
    calls = []
    real = resolve_mod.check_rules
    monkeypatch.setattr(resolve_mod, "check_rules", lambda ctx: calls.append(ctx.data["name"]) or real(ctx))
    root = fleet(
        tmp_path,
        ENVS.format(dev="", prod="    overrides:\n      scaling: {buffer_containers: 1}\n"),
        a=deployment("a"),
        b=deployment("b", "environments:\n  dev:\n    scaling: {min_containers: 1}\n"),
    )
    resolved = resolve(load_fleet([str(root)]), "dev")
    assert resolved.ok, resolved.diagnostics
    # a: the base tree (dev changes nothing of it) and prod; b: base, its own dev overlay, prod
    assert sorted(calls) == ["a", "a", "b", "b", "b"]
    assert {d.name: d.scaling.min_containers for d in resolved.deployments} == {"a": 0, "b": 1}
    assert {d.modal_env for d in resolved.deployments} == {"ff-dev"}
    resolve(resolved.loaded, "prod")  # the same files for another environment: checked once already
    assert len(calls) == 5


def test_the_deployments_returned_are_the_requested_environments(tmp_path):
    root = fleet(tmp_path, ENVS.format(dev=DEV_CAPS_AT_ONE, prod=""), a=deployment("a"))
    loaded = load_fleet([str(root)])
    caps = {env: resolve(loaded, env).deployments[0].scaling.max_containers for env in (None, "dev", "prod")}
    assert caps == {None: None, "dev": 1, "prod": None}


# --- required fields may come from defaults -----------------------------------------------------------


def test_a_required_field_may_come_from_fleet_defaults(tmp_path):
    root = fleet(
        tmp_path,
        "defaults:\n  gpu: {type: L40S}\n  model: {revision: " + REV + "}\n",
        a="name: a\nmodel: {id: org/a}\n",
        b=deployment("b"),
    )
    resolved = resolve(load_fleet([str(root)]))
    assert resolved.ok, resolved.diagnostics
    assert {d.name: (d.gpu.type, d.model.revision) for d in resolved.deployments} == {
        "a": ("L40S", REV),
        "b": ("L4", REV),
    }


def test_a_missing_required_field_is_reported_at_the_deployment_file(tmp_path):
    """Even when an overlay of fleet.yaml was merged last, the field is missing from the deployment."""
    root = fleet(
        tmp_path,
        ENVS.format(dev="    overrides:\n      gpu: {count: 1}\n", prod=""),
        a="name: a\nmodel: {id: org/a, revision: " + REV + "}\ngpu:\n  count: 1\n",
    )
    resolved = resolve(load_fleet([str(root)]))
    [d] = [d for d in resolved.diagnostics if d.is_error]
    assert (Path(d.mark.file).name, d.mark.line, d.path, d.message) == (
        "a.yaml",
        3,
        ("gpu",),
        "missing required field 'type'",
    )


def test_a_field_every_environment_sets_is_enough(tmp_path):
    root = fleet(
        tmp_path,
        ENVS.format(dev="    overrides:\n      gpu: {type: L4}\n", prod="    overrides:\n      gpu: {type: H100}\n"),
        a="name: a\nmodel: {id: org/a, revision: " + REV + "}\n",
    )
    loaded = load_fleet([str(root)])
    base = resolve(loaded)
    assert base.ok and base.deployments == ()
    [warning] = base.diagnostics
    assert "gpu set only by its environments" in warning.message and not warning.is_error
    assert resolve(loaded, "prod").deployments[0].gpu.type == "H100"
    assert resolve(loaded, "prod").diagnostics == ()


def test_a_field_only_some_environments_set_is_an_error(tmp_path):
    root = fleet(
        tmp_path,
        ENVS.format(dev="    overrides:\n      gpu: {type: L4}\n", prod=""),
        a="name: a\nmodel: {id: org/a, revision: " + REV + "}\n",
    )
    assert errors(root) == ["a.yaml:1: missing required field 'gpu' (in environment prod and without --env)"]


# --- a broken fleet.yaml is reported alone ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fleet_yaml",
    [
        "environments:\n  dev: {modal_environment: ff-dev}\nprices: {H100: cheap}\n",  # invalid
        "environments:\n  dev: {modal_environment: ff-dev\n",  # does not load
    ],
)
def test_a_broken_fleet_yaml_is_reported_alone(tmp_path, fleet_yaml):
    root = fleet(
        tmp_path,
        fleet_yaml,
        a="name: a\nmodel: {id: org/a, revision: " + REV + "}\nenvironments:\n  dev: {scaling: {min_containers: 1}}\n",
    )
    result = run_cli("validate", str(root), "--format", "json")
    assert result.returncode == 1
    files = {Path(d["file"]).name for d in json.loads(result.stdout)["diagnostics"]}
    assert files == {"fleet.yaml"}


# --- the schema, section by section --------------------------------------------------------------------------


def test_the_deployment_schema_has_no_cross_section_keyword_at_its_top():
    """`_SchemaChecker` validates sections apart: only keywords that look at keys alone may sit at the top."""
    from renderer.config.schema import DEPLOYMENT_SCHEMA, load_schema

    top = set(load_schema(DEPLOYMENT_SCHEMA)) - {"$schema", "$id", "title", "description", "$defs", "properties"}
    assert top <= {"type", "required", "additionalProperties"}


def test_section_checks_find_what_a_whole_tree_check_finds(tmp_path):
    from renderer.config.load import load_text
    from renderer.config.schema import DEPLOYMENT_SCHEMA
    from renderer.config.validate import check_tree

    doc = load_text(
        "f.yaml",
        b"name: a\nmodel: {id: nope, revision: main}\ngpu: {count: 99}\n"
        b"scaling: {min_containers: -1}\nauth: {mode: api_key}\nbogus: 1\n",
    )
    checker = resolve_mod._SchemaChecker()
    assert sorted(checker.check(doc.root), key=str) == sorted(check_tree(doc.root, DEPLOYMENT_SCHEMA), key=str)


def test_deployments_broken_in_different_environments_are_grouped(tmp_path):
    root = fleet(
        tmp_path,
        "defaults:\n  scaling: {min_containers: 2}\n" + ENVS.format(dev=DEV_CAPS_AT_ONE, prod=""),
        a=deployment("a", "scaling: {max_containers: 1}\n"),
        b=deployment("b"),
    )
    assert errors(root) == [
        "fleet.yaml:2: min_containers 2 is above max_containers 1 "
        "(breaks deployment a; deployment b in environment dev)"
    ]


def test_a_file_checked_whole_is_not_checked_again_section_by_section(tmp_path, monkeypatch):
    """The schema check of a deployment file is kept per section: the merged tree, which shares
    every section nothing overrides, is not validated again."""
    sections = []
    real = resolve_mod._section_validator
    monkeypatch.setattr(resolve_mod, "_section_validator", lambda key: sections.append(key) or real(key))
    root = fleet(tmp_path, ENVS.format(dev="", prod=""), a=deployment("a"))
    resolved = resolve(load_fleet([str(root)]))
    assert resolved.ok, resolved.diagnostics
    assert sections == []
