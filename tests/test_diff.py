"""`plan --against`: field-by-field diff, the restart rule, and the text / JSON / GitHub reporters,
end to end on a temporary git repository (see test_gitref.make_fleet_repo)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from renderer.cli.plan import plan_against
from renderer.cli.validate import validate_github
from renderer.codegen.render import render_fleet
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve
from renderer.gpus import GPU_TYPES
from renderer.plan import against as D

from test_gitref import FLEET_YAML, REV_1, REV_2, commit, deployment_yaml, fleet_repo, git, git_env, write  # noqa: F401

L4 = GPU_TYPES["L4"].usd_per_hour
GATEWAY = "gateway:\n  enabled: true\n"
HASH = re.compile(r"\b[0-9a-f]{12} -> [0-9a-f]{12}\b")


def run_plan(ref: str, *, fmt: str = "text", detailed: bool = False, paths=None, env=None, environ=None):
    out, err = io.StringIO(), io.StringIO()
    code = plan_against(ref, paths, env, fmt, detailed, out=out, err=err, environ=environ or {})
    return code, out.getvalue(), err.getvalue()


def apps_of(folder: Path, files: dict[str, str], env: str | None = None):
    write(folder, files)
    resolved = resolve(load_fleet([str(folder)]), env)
    assert resolved.ok, resolved.diagnostics
    return render_fleet(resolved.deployments)


def one_change(
    tmp_path: Path, before: str, after: str, fleet: str = FLEET_YAML, env: str | None = None
) -> D.DeploymentDiff:
    a = apps_of(tmp_path / "a", {"fleet.yaml": fleet, "x.yaml": before}, env)
    b = apps_of(tmp_path / "b", {"fleet.yaml": fleet, "x.yaml": after}, env)
    (d,) = D.diff_fleets(a, b).deployments
    return d


# --- the restart rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, field, impact, shown",
    [
        ("  buffer_containers: 1\n", "scaling.buffer_containers", D.SCALING, "0 -> 1"),
        ("  scaledown_window: 20m\n", "scaling.scaledown_window", D.SCALING, "15m -> 20m"),
        ("  target_concurrency: 64\n", "scaling.target_concurrency", D.SCALING, "32 -> 64"),
        ("routing_region: eu-west\n", "routing_region", D.SCALING, "us-east -> eu-west"),
        ('engine:\n  vllm_version: "0.26.1"\n', "engine.vllm_version", D.REBUILD, "0.26.0 -> 0.26.1"),
        ("image:\n  pip: [flashinfer-python==0.6.14]\n", "image.pip", D.REBUILD, "[] -> [flashinfer-python==0.6.14]"),
        (
            "engine:\n  env:\n    VLLM_LOGGING_LEVEL: DEBUG\n",
            "engine.env.VLLM_LOGGING_LEVEL",
            D.RESTART,
            "(unset) -> DEBUG",
        ),
        ("engine:\n  max_num_seqs: 64\n", "engine.max_num_seqs", D.RESTART, "(unset) -> 64"),
        ("secrets: [hf-token]\n", "secrets", D.RESTART, "[] -> [hf-token]"),
        ("environment: staging\n", "environment", D.MOVE, "(unset) -> staging"),
    ],
)
def test_each_kind_of_change_is_classified(tmp_path, extra, field, impact, shown):
    base = deployment_yaml("x")
    d = one_change(tmp_path, base, base + extra)
    assert d.action == D.UPDATE
    assert [(c.field, c.impact) for c in d.changes] == [(field, impact)]
    assert D.change_text(d.changes[0]) == f"{field}: {shown}"
    assert d.impact == impact


def test_a_change_that_does_not_reach_the_module_deploys_nothing(tmp_path):
    base = deployment_yaml("x")
    d = one_change(tmp_path, base, base + "description: for the batch team\n")
    assert d.action == D.UNCHANGED and d.impact == D.NONE
    assert [(c.field, c.before, c.after, c.impact) for c in d.changes] == [
        ("description", None, "for the batch team", D.NONE)
    ]
    # the same value written differently is no change at all
    assert (
        one_change(tmp_path / "2", base + "  scaledown_window: 900\n", base + "  scaledown_window: 15m\n").changes == ()
    )


def test_the_worst_change_decides_and_every_change_is_listed(tmp_path):
    before = deployment_yaml("x")
    after = deployment_yaml("x", REV_2, max_containers=8) + 'engine:\n  vllm_version: "0.26.1"\n'
    d = one_change(tmp_path, before, after)
    assert d.impact == D.REBUILD
    assert [(c.field, c.impact) for c in d.changes] == [
        ("model.revision", D.RESTART),
        ("scaling.max_containers", D.SCALING),
        ("engine.vllm_version", D.REBUILD),
    ]


def test_a_new_modal_environment_deploys_though_the_module_is_the_same(tmp_path):
    base = deployment_yaml("x")
    d = one_change(tmp_path, base, base + "environment: staging\ndescription: moved\n")
    assert d.before.content_hash == d.after.content_hash
    assert d.action == D.UPDATE and d.impact == D.MOVE
    assert [(c.field, c.impact) for c in d.changes] == [("description", D.NONE), ("environment", D.MOVE)]


def test_a_module_change_no_field_explains_still_counts(tmp_path):
    (a,) = apps_of(tmp_path, {"x.yaml": deployment_yaml("x")})
    b = dataclasses.replace(a, content_hash="sha256:" + "0" * 64)
    d = D.diff_deployment(a, b)
    assert d.action == D.UPDATE and d.impact == D.RESTART
    assert [c.field for c in d.changes] == ["(rendered module)"]


def test_every_rule_names_a_real_field_and_every_field_has_a_rule(tmp_path):
    """Guards the rule table against spec changes: a renamed field would silently fall to the
    default, a new one would be classified by accident (the gateway's fields included)."""
    from renderer.codegen.gateway import render_gateway

    write(tmp_path, {"fleet.yaml": FLEET_YAML + GATEWAY})
    resolved = resolve(load_fleet([str(tmp_path)]))
    (app,) = apps_of(tmp_path, {"x.yaml": deployment_yaml("x") + "engine:\n  env:\n    A: b\n"})
    gateway = D.GatewayVersion(render_gateway([app.deployment], resolved.gateway), "fleet.yaml", None)
    fields = [".".join(p) for p in [*D.flatten(app.deployment), *D.flatten_gateway(gateway)]]
    for rule in D.IMPACT_RULES:
        assert any(rule.matches(f) for f in fields), f"rule {rule.field!r} matches no field of a deployment"
    unruled = [f for f in fields if D.classify(f).why == D.DEFAULT_WHY]
    assert unruled == [], "add these fields to diff.IMPACT_RULES (and docs/ci.md)"


def test_values_are_shown_short():
    assert D.show(REV_1) == "1111111"
    assert D.show(5400, "scaling.startup_timeout") == "1h30m"
    assert D.show(90, "scaling.scaledown_window") == "1m30s"
    assert D.show(None) == "(unset)" and D.show(True) == "true" and D.show(0.92) == "0.92"
    assert D.show("has space") == '"has space"'
    long = D.show("x" * 200)
    assert len(long) == D.MAX_SHOWN and long.endswith("...")
    assert D.show([{"name": "sql", "revision": REV_2}]) == "[{name: sql, revision: 2222222}]"


# --- end to end on a git repository ------------------------------------------------------------------------

EXPECTED_TEXT = """\
fleetform plan: the working tree against HEAD~1 ({short})

~ batch (deployments/batch.yaml)  <hash> -> <hash>
    scaling: redeploy without an image build; the server in the container is unchanged
    scaling.max_containers: 4 -> 8  [scaling] +$3.19/h at max
    cost: $3.20/h -> $6.39/h at max (+$3.19/h); $0.00/h at min (unchanged)
~ chat (deployments/chat.yaml)  <hash> -> <hash>
    restart: new containers: same image, vLLM restarts with the new settings
    model.revision: 1111111 -> 2222222  [restart]
+ new (deployments/new.yaml)
    create: a new app: Modal builds its image unless cached, the first container downloads the weights
    cost: $0.00/h -> $1.60/h at max (+$1.60/h); $0.00/h at min (unchanged)
- old (deployments/old.yaml at HEAD~1)
    remove: no longer in the fleet; `fleetform deploy` leaves the app running; `fleetform destroy old` stops it
    cost: $1.60/h -> $0.00/h at max (-$1.60/h); $0.00/h at min (unchanged)

Plan: 1 to create, 2 to update (1 with new containers), 1 to remove, 0 unchanged.
Cost: $6.39/h -> $9.59/h at max (+$3.20/h); $0.00/h at min (unchanged).
  GPU time only; each deployment priced at the dearest GPU that may run it, its gpu.type or a gpu.fallbacks.
"""


def test_text_plan_and_exit_codes(fleet_repo):
    short = git(fleet_repo, "rev-parse", "--short=7", "HEAD~1")
    code, out, err = run_plan("HEAD~1", detailed=True)
    assert (code, err) == (2, "")
    assert HASH.sub("<hash> -> <hash>", out) == EXPECTED_TEXT.format(short=short)
    assert run_plan("HEAD~1")[0] == 0  # without --detailed-exitcode, changes are not an error
    code, out, _ = run_plan("HEAD", detailed=True)
    assert code == 0
    assert "\n  3 unchanged: batch, chat, new\n\nNo changes: 3 deployment(s) render the same as at HEAD.\n" in out
    assert "\nCost: $9.59/h at max (unchanged); $0.00/h at min (unchanged).\n" in out


def test_json_plan(fleet_repo):
    code, out, err = run_plan("HEAD~1", fmt="json", detailed=True)
    assert (code, err) == (2, "")
    data = json.loads(out)
    assert data["ok"] is True and data["changes"] is True
    assert data["against"] == {"ref": "HEAD~1", "commit": git(fleet_repo, "rev-parse", "HEAD~1")}
    assert data["fleet_env"] is None
    assert data["summary"] == {"create": 1, "update": 2, "remove": 1, "unchanged": 0}
    rows = {d["name"]: d for d in data["deployments"]}
    assert [d["name"] for d in data["deployments"]] == ["batch", "chat", "new", "old"]
    assert rows["chat"]["action"] == "update" and rows["chat"]["impact"] == "restart"
    assert rows["chat"]["changes"] == [
        {"field": "model.revision", "before": REV_1, "after": REV_2, "impact": "restart", "cost": None}
    ]
    ceiling = {"before": 4 * L4, "after": 8 * L4, "delta": 4 * L4}
    no_change = {"before": 0.0, "after": 0.0, "delta": 0.0}
    assert rows["batch"]["changes"] == [
        {
            "field": "scaling.max_containers",
            "before": 4,
            "after": 8,
            "impact": "scaling",
            "cost": {"usd_per_hour_min": no_change, "usd_per_hour_max": pytest.approx(ceiling)},
        }
    ]
    assert rows["batch"]["cost"] == {
        "usd_per_hour_min": no_change,
        "usd_per_hour_max": pytest.approx(ceiling),
        "priced_gpu": {"before": "L4", "after": "L4"},
    }
    assert data["cost"]["usd_per_hour_max"]["delta"] == pytest.approx(4 * L4 + 2 * L4 - 2 * L4)
    assert data["cost"]["unbounded"] == []
    assert rows["chat"]["before"]["content_hash"] != rows["chat"]["after"]["content_hash"]
    assert rows["chat"]["after"]["content_hash"].startswith("sha256:")
    assert rows["new"] == {
        "name": "new",
        "kind": "deployment",
        "action": "create",
        "impact": None,
        "before": None,
        "changes": [],
        "after": {
            "source": "deployments/new.yaml",
            "content_hash": rows["new"]["after"]["content_hash"],
            "modal_env": None,
        },
        "cost": {
            "usd_per_hour_min": no_change,
            "usd_per_hour_max": pytest.approx({"before": 0.0, "after": 2 * L4, "delta": 2 * L4}),
            "priced_gpu": {"before": None, "after": "L4"},
        },
    }
    assert rows["old"]["action"] == "remove" and rows["old"]["after"] is None
    assert rows["old"]["before"]["source"] == "deployments/old.yaml"
    assert data["notes"] == [] and data["diagnostics"] == []


def test_the_working_tree_is_what_is_compared(fleet_repo):
    write(fleet_repo, {"deployments/batch.yaml": deployment_yaml("batch", max_containers=8) + "  min_containers: 1\n"})
    code, out, _ = run_plan("HEAD", fmt="json", detailed=True)
    assert code == 2
    (batch,) = [d for d in json.loads(out)["deployments"] if d["action"] != "unchanged"]
    (change,) = batch["changes"]
    assert (change["field"], change["before"], change["after"], change["impact"]) == (
        "scaling.min_containers",
        0,
        1,
        "scaling",
    )
    assert change["cost"]["usd_per_hour_min"] == pytest.approx({"before": 0.0, "after": L4, "delta": L4})


def test_environment_overlays_apply_on_both_sides(fleet_repo):
    code, out, _ = run_plan("HEAD~1", fmt="json", env="prod")
    data = json.loads(out)
    assert code == 0 and data["fleet_env"] == "prod"
    batch = next(d for d in data["deployments"] if d["name"] == "batch")
    assert batch["after"]["modal_env"] == "ml-prod"
    assert [(c["field"], c["before"], c["after"], c["impact"]) for c in batch["changes"]] == [
        ("scaling.max_containers", 4, 8, "scaling")
    ]


def test_an_environment_new_since_the_revision_makes_everything_new(fleet_repo):
    write(fleet_repo, {"deployments/fleet.yaml": FLEET_YAML + "  staging:\n    modal_environment: staging\n"})
    code, out, _ = run_plan("HEAD", fmt="json", env="staging", detailed=True)
    data = json.loads(out)
    assert code == 2
    assert data["notes"] == ["environment staging is not declared at HEAD: every deployment in it counts as new"]
    assert data["summary"] == {"create": 3, "update": 0, "remove": 0, "unchanged": 0}


def test_errors_exit_1_with_one_line(fleet_repo):
    code, out, err = run_plan("no-such-ref", detailed=True)
    assert (code, out) == (1, "")
    assert err == "error: unknown git revision 'no-such-ref': no commit of that name in this repository\n"
    code, out, err = run_plan("no-such-ref", fmt="json")
    assert code == 1 and json.loads(out) == {"ok": False, "error": err[len("error: ") :].strip(), "diagnostics": []}
    # an unknown environment is a usage error (2), but 1 where 2 would read as "changes pending"
    assert run_plan("HEAD", env="prd")[0] == 2
    code, _, err = run_plan("HEAD", env="prd", detailed=True)
    assert code == 1 and err.startswith("error: unknown environment 'prd'")


def test_an_invalid_working_tree_is_reported_not_compared(fleet_repo):
    write(fleet_repo, {"deployments/chat.yaml": deployment_yaml("chat", "main")})
    code, out, err = run_plan("HEAD~1", detailed=True)
    assert (code, out) == (1, "")
    assert err.splitlines()[0].startswith("deployments/chat.yaml:4:13: error: model.revision: ")
    assert err.splitlines()[-1] == "1 error(s) in the working tree; nothing was compared"


def test_an_invalid_fleet_at_the_revision_is_an_error(fleet_repo):
    commit(fleet_repo, "break", {"deployments/chat.yaml": deployment_yaml("chat", "main")})
    write(fleet_repo, {"deployments/chat.yaml": deployment_yaml("chat", REV_2)})
    code, _, err = run_plan("HEAD", detailed=True)
    assert code == 1
    short = git(fleet_repo, "rev-parse", "--short=7", "HEAD")
    assert err.splitlines()[0].startswith(f"  at {short}: deployments/chat.yaml:4:13: error: model.revision")
    assert err.splitlines()[-1] == (
        f"error: the fleet at HEAD ({short}) does not validate (1 error(s)), so there is nothing sound to compare with"
    )


# --- GitHub: annotations and the step summary (golden) --------------------------------------------------------

EXPECTED_ANNOTATIONS = [
    "::notice file=deployments/batch.yaml,line=8,col=19,title=fleetform plan::batch: scaling.max_containers: 4 -> 8: "
    "scaling: redeploy without an image build; the server in the container is unchanged; +$3.19/h at max",
    "::warning file=deployments/chat.yaml,line=4,col=13,title=fleetform plan::chat: "
    "model.revision: 1111111 -> 2222222: "
    "restart: new containers: same image, vLLM restarts with the new settings",
    "::notice file=deployments/new.yaml,line=1,col=7,title=fleetform plan::new: create: a new app: Modal builds its "
    "image unless cached, the first container downloads the weights",
    "::warning title=fleetform plan::old: removed from the fleet (deployments/old.yaml at HEAD~1): `fleetform deploy` "
    "leaves the app running; `fleetform destroy old` stops it",
]

EXPECTED_SUMMARY = """\
## fleetform plan

Against `HEAD~1` (`{short}`): **1 to create, 2 to update (1 with new containers), 1 to remove, 0 unchanged**.
**Cost**: $6.39/h -> $9.59/h at max (+$3.20/h); $0.00/h at min (unchanged).

| Deployment | Action | Effect | Changes | Cost |
| --- | --- | --- | --- | --- |
| `batch` | update | **scaling**: redeploy without an image build; the server in the container is unchanged | `scaling.max_containers`: `4` → `8` (+$3.19/h at max) | $3.20/h -> $6.39/h at max (+$3.19/h); $0.00/h at min (unchanged) |
| `chat` | update | **restart**: new containers: same image, vLLM restarts with the new settings | `model.revision`: `1111111` → `2222222` |  |
| `new` | create | a new app: Modal builds its image unless cached, the first container downloads the weights |  | $0.00/h -> $1.60/h at max (+$1.60/h); $0.00/h at min (unchanged) |
| `old` | remove | no longer in the fleet; `fleetform deploy` leaves the app running; `fleetform destroy old` stops it |  | $1.60/h -> $0.00/h at max (-$1.60/h); $0.00/h at min (unchanged) |

<sub>scaling: redeploy, no image build · restart: new containers · rebuild: new image and containers · move: new Modal environment. The rule: docs/ci.md. Cost: GPU time only; each deployment priced at the dearest GPU that may run it, its gpu.type or a gpu.fallbacks.</sub>
"""


def test_github_format_golden(fleet_repo):
    short = git(fleet_repo, "rev-parse", "--short=7", "HEAD~1")
    code, out, err = run_plan("HEAD~1", fmt="github", detailed=True)
    assert (code, err) == (2, "")
    assert out == "\n".join(EXPECTED_ANNOTATIONS) + "\n" + EXPECTED_SUMMARY.format(short=short)


def test_github_summary_goes_to_the_step_summary_file(fleet_repo, tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    short = git(fleet_repo, "rev-parse", "--short=7", "HEAD~1")
    code, out, _ = run_plan("HEAD~1", fmt="github", environ={"GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 0
    assert summary.read_text() == "earlier step\n" + EXPECTED_SUMMARY.format(short=short) + "\n"
    lines = out.splitlines()
    assert lines[:4] == EXPECTED_ANNOTATIONS
    assert lines[4] == f"fleetform plan: the working tree against HEAD~1 ({short})"  # the log gets the text plan


def test_a_change_inherited_from_fleet_yaml_is_one_annotation_on_fleet_yaml(fleet_repo):
    write(fleet_repo, {"deployments/fleet.yaml": FLEET_YAML.replace('"0.26.0"', '"0.26.1"')})
    _, out, _ = run_plan("HEAD", fmt="github")
    annotations = [line for line in out.splitlines() if line.startswith("::")]
    assert annotations == [
        "::warning file=deployments/fleet.yaml,line=3,col=19,title=fleetform plan::batch, chat, new: "
        "engine.vllm_version: 0.26.0 -> 0.26.1: rebuild: image rebuild, then new containers"
    ]


def test_github_format_of_an_invalid_working_tree(fleet_repo):
    write(fleet_repo, {"deployments/chat.yaml": deployment_yaml("chat", "main")})
    code, out, _ = run_plan("HEAD", fmt="github")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(
        "::error file=deployments/chat.yaml,line=4,col=13,title=fleetform schema-pattern::model.revision: "
    )
    assert lines[1:4] == [
        "## fleetform validate",
        "",
        "**1 error(s)**; nothing can be rendered or deployed until they are fixed.",
    ]


def test_validate_github(fleet_repo, tmp_path):
    summary = tmp_path / "summary.md"
    out, err = io.StringIO(), io.StringIO()
    assert validate_github(None, None, out=out, err=err, environ={"GITHUB_STEP_SUMMARY": str(summary)}) == 0
    assert out.getvalue() == "" and summary.read_text() == "## fleetform validate\n\n**3 deployment(s) valid**.\n\n"
    write(fleet_repo, {"deployments/chat.yaml": deployment_yaml("chat", "main")})
    out = io.StringIO()
    assert validate_github(["deployments"], None, out=out, err=err, environ={}) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("::error file=deployments/chat.yaml,line=4,col=13,")
    assert lines[-3:] == ["| Where | Field | Problem |", "| --- | --- | --- |", lines[-1]] and lines[-1].startswith(
        "| `deployments/chat.yaml:4:13` | `model.revision` | error: "
    )


# --- cost -------------------------------------------------------------------------------------------------------


def test_a_cost_field_carries_its_share_of_the_cost_change(tmp_path):
    before = deployment_yaml("x").replace("type: L4", "type: L40S")
    after = deployment_yaml("x", max_containers=3).replace("type: L4", "type: H100")
    d = one_change(tmp_path, before, after)
    h100, l40s = GPU_TYPES["H100"].usd_per_hour, GPU_TYPES["L40S"].usd_per_hour
    gpu, scale = d.changes
    assert (gpu.field, scale.field) == ("gpu.type", "scaling.max_containers")
    # applied one at a time, in schema order: the GPU first at 2 containers, then the third container
    assert gpu.cost.delta_max == pytest.approx(2 * (h100 - l40s)) and scale.cost.delta_max == pytest.approx(h100)
    assert d.cost.delta_max == pytest.approx(gpu.cost.delta_max + scale.cost.delta_max)
    assert D.change_line(gpu) == f"gpu.type: L40S -> H100  [restart] +${2 * h100 - 2 * l40s:.2f}/h at max"
    assert D.cost_text(d.cost) == (
        f"${2 * l40s:.2f}/h -> ${3 * h100:.2f}/h at max (+${3 * h100 - 2 * l40s:.2f}/h); $0.00/h at min (unchanged)"
    )


def test_a_fallback_is_priced_when_it_is_dearer_and_the_plan_says_so(tmp_path):
    before = deployment_yaml("x")
    after = deployment_yaml("x", extra="").replace("type: L4\n", "type: L4\n  fallbacks: [L40S]\n")
    d = one_change(tmp_path, before, after)
    (change,) = d.changes
    assert change.field == "gpu.fallbacks" and d.cost.gpu_after == "L40S"
    l4, l40s = GPU_TYPES["L4"].usd_per_hour, GPU_TYPES["L40S"].usd_per_hour
    assert change.cost.delta_max == pytest.approx(2 * (l40s - l4))
    assert D.priced_note(d) == "priced at L40S, the dearest GPU that may run it (L4 falls back to it)"


def test_an_unset_max_containers_is_unbounded(tmp_path):
    before = deployment_yaml("x")
    after = deployment_yaml("x").replace("  max_containers: 2\n", "  min_containers: 0\n")
    d = one_change(tmp_path, before, after)
    (change,) = d.changes
    assert change.field == "scaling.max_containers" and change.after is None
    assert D.share_text(change.cost) == f"unbounded at max (was ${2 * L4:.2f}/h)"
    assert d.cost.to_dict()["usd_per_hour_max"] == {"before": pytest.approx(2 * L4), "after": None, "delta": None}


def test_plan_against_shows_each_deployments_cost_and_the_total(fleet_repo):
    write(fleet_repo, {"deployments/batch.yaml": deployment_yaml("batch", max_containers=8).replace("L4", "H100")})
    code, out, _ = run_plan("HEAD")
    h100 = GPU_TYPES["H100"].usd_per_hour
    assert code == 0
    assert f"    gpu.type: L4 -> H100  [restart] +${8 * h100 - 8 * L4:.2f}/h at max\n" in out
    assert f"    cost: ${8 * L4:.2f}/h -> ${8 * h100:.2f}/h at max (+${8 * h100 - 8 * L4:.2f}/h);" in out
    assert f"\nCost: ${12 * L4:.2f}/h -> ${8 * h100 + 4 * L4:.2f}/h at max (+$" in out
    summary = run_plan("HEAD", fmt="github")[1]
    assert f"**Cost**: ${12 * L4:.2f}/h -> ${8 * h100 + 4 * L4:.2f}/h at max" in summary
    assert f"(+${8 * h100 - 8 * L4:.2f}/h at max)" in summary


# --- the gateway ----------------------------------------------------------------------------------------------


def test_enabling_the_gateway_is_a_change(fleet_repo):
    """It used to report "No changes": the gateway is a member of the fleet."""
    write(fleet_repo, {"deployments/fleet.yaml": FLEET_YAML + GATEWAY})
    code, out, _ = run_plan("HEAD", detailed=True)
    assert code == 2
    assert "+ fleetform-gateway (gateway, deployments/fleet.yaml)\n    create: a new app: the fleet's gateway" in out
    assert "Plan: 1 to create, 0 to update, 0 to remove, 3 unchanged." in out
    doc = json.loads(run_plan("HEAD", fmt="json")[1])
    (gw,) = [d for d in doc["deployments"] if d["kind"] == "gateway"]
    assert (gw["name"], gw["action"], gw["cost"]) == ("fleetform-gateway", "create", None)
    assert doc["summary"]["create"] == 1


def test_gateway_settings_and_routes_are_compared(fleet_repo):
    commit(fleet_repo, "gateway", {"deployments/fleet.yaml": FLEET_YAML + GATEWAY})
    write(
        fleet_repo,
        {
            "deployments/fleet.yaml": FLEET_YAML + GATEWAY + "  max_containers: 3\n",
            "deployments/new.yaml": None,
        },
    )
    code, out, _ = run_plan("HEAD", detailed=True)
    assert code == 2
    gateway_block = out[out.index("~ fleetform-gateway") :]
    assert "gateway.max_containers: (unset) -> 3  [scaling]" in gateway_block
    assert "gateway.routes.org/new-model: new -> (unset)  [restart]" in gateway_block
    # the gateway is compared whole: an unchanged gateway is unchanged
    commit(fleet_repo, "all", {})
    code, out, _ = run_plan("HEAD", detailed=True)
    assert code == 0 and "No changes: 2 deployment(s) and the gateway render the same as at HEAD." in out
    # disabling it removes it
    write(fleet_repo, {"deployments/fleet.yaml": FLEET_YAML})
    assert "- fleetform-gateway (gateway, deployments/fleet.yaml at HEAD)" in run_plan("HEAD")[1]


def test_every_key_of_plan_against_json_is_documented(fleet_repo):
    """All of it, nested cost objects and the gateway included (docs/json-output.md)."""
    write(fleet_repo, {"deployments/fleet.yaml": FLEET_YAML + GATEWAY})

    def keys(value) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    found = keys(json.loads(run_plan("HEAD~1", fmt="json")[1]))
    assert {"cost", "kind", "priced_gpu", "delta", "unbounded", "usd_per_hour_max"} <= found
    text = (Path(__file__).resolve().parent.parent / "docs" / "json-output.md").read_text(encoding="utf-8")
    assert sorted(k for k in found if f"`{k}`" not in text) == []
