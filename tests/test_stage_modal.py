"""`fleetform stage`, and staging inside `fleetform deploy`, through the real CLI (a subprocess) and
the real modal client, against the in-test control plane of modal_control_plane.py.

The plane answers the stage function's call as a successful run would (its `fake_stage`: every
repository of the module verified, the markers written on the Volume the function mounts at the
Hugging Face cache path); what runs inside the function is tested in test_staging.py, with the
real huggingface_hub against a fake Hub. `--env dev` is the Modal environment `ff-dev`.
"""

from __future__ import annotations

import json
import shutil

import pytest
from modal_proto import api_pb2

from conftest import REPO, run_cli
from modal_control_plane import ControlPlane

FLEET_YAML = """\
defaults:
  engine:
    vllm_version: "0.26.0"
  auth:
    mode: proxy
environments:
  dev:
    modal_environment: ff-dev
  prod:
    modal_environment: ff-prod
"""
SMALL, LARGE = "qwen2-5-7b-instruct", "llama-3-3-70b-fp8"
PROXY = {"MODAL_PROXY_TOKEN_ID": "wk-e2e", "MODAL_PROXY_TOKEN_SECRET": "ws-e2e"}
HF = "/root/.cache/huggingface"


@pytest.fixture
def fleet(tmp_path):
    root = tmp_path / "fleet"
    (root / "deployments").mkdir(parents=True)
    (root / "deployments" / "fleet.yaml").write_text(FLEET_YAML)
    for name in (SMALL, LARGE):
        shutil.copy(REPO / "deployments" / f"{name}.yaml", root / "deployments")
    return root


@pytest.fixture
def plane():
    with ControlPlane() as p:
        yield p


def cli(plane, fleet, *args: str):
    return run_cli(*args, cwd=fleet, env={**plane.env(), **PROXY, "HOME": str(fleet)})


def stage(plane, fleet, *args: str):
    result = cli(plane, fleet, "stage", "--env", "dev", "--format", "json", *args)
    return result, json.loads(result.stdout)


def markers(plane) -> list[str]:
    return sorted(plane.volume_files.get(("ff-dev", "huggingface-cache"), {}))


def model_of(name: str) -> tuple[str, str]:
    from renderer.config.load import load_fleet
    from renderer.config.resolve import resolve

    d = next(d for d in resolve(load_fleet([str(REPO / "deployments")])).deployments if d.name == name)
    return d.model.id, d.model.revision


def marker_of(name: str) -> str:
    repo, revision = model_of(name)
    return f"fleetform-staged/models--{repo.replace('/', '--')}/{revision}.json"


def test_stage_runs_a_cpu_function_per_deployment_then_finds_the_markers(plane, fleet):
    result, doc = stage(plane, fleet)
    assert result.returncode == 0, result.stdout + result.stderr
    assert doc["ok"] is True
    assert {r["name"]: r["status"] for r in doc["deployments"]} == {SMALL: "staged", LARGE: "staged"}
    assert markers(plane) == sorted([marker_of(SMALL), marker_of(LARGE)])
    # one ephemeral app per deployment, named after it, in the Modal environment of --env
    created = {m.description for m in plane.messages("AppCreate")}
    assert {c.rsplit("-run-", 1)[0] for c in created} == {f"{SMALL}-stage", f"{LARGE}-stage"}
    assert all(m.environment_name == "ff-dev" for m in plane.messages("AppCreate"))
    assert [m.app_state for m in plane.messages("AppPublish")] == [api_pb2.APP_STATE_EPHEMERAL] * 2
    # the function: no GPU, 4 CPUs, the deployment's HF cache Volume at the app's path, its Secret
    functions = {plane.functions[fid].function_name: plane.functions[fid] for fid in plane.functions}
    assert list(functions) == ["stage"]
    for m in plane.messages("FunctionCreate"):
        f = m.function
        assert f.function_type == api_pb2.Function.FUNCTION_TYPE_GENERATOR
        assert not f.resources.gpu_config.gpu_type and f.resources.milli_cpu == 4000
        (mount,) = f.volume_mounts
        assert mount.mount_path == HF
        assert plane.volume_names[mount.volume_id] == ("ff-dev", "huggingface-cache")
    secrets = {r.message.deployment_name for r in plane.calls("SecretGetOrCreate")}
    assert secrets == {"huggingface-secret"}  # the 70B deployment's; the 7B has none
    # called once each, then the apps stopped (the client disconnected)
    assert len(plane.messages("FunctionMap")) == 2
    stopped = {m.app_id for m in plane.messages("AppClientDisconnect")}
    assert all(plane.apps[a].state == api_pb2.APP_STATE_STOPPED for a in stopped) and len(stopped) == 2

    plane.clear()
    result, doc = stage(plane, fleet)
    assert result.returncode == 0 and {r["status"] for r in doc["deployments"]} == {"already staged"}
    assert plane.calls("AppCreate") == []  # nothing started
    assert {m.path for m in plane.messages("VolumeListFiles2")} == {
        "fleetform-staged/models--" + model_of(n)[0].replace("/", "--") for n in (SMALL, LARGE)
    }

    plane.clear()
    result, doc = stage(plane, fleet, SMALL, "--force")
    assert result.returncode == 0 and [r["name"] for r in doc["deployments"]] == [SMALL]
    assert len(plane.messages("FunctionMap")) == 1 and plane.calls("VolumeListFiles2") == []


def test_the_sequence_of_modal_calls(plane, fleet):
    """The RPCs one `fleetform stage NAME` makes, in order (docs/deploying.md lists them)."""
    result, _ = stage(plane, fleet, SMALL)
    assert result.returncode == 0, result.stderr
    methods = [r.method for r in plane.calls() if r.method not in ("AppHeartbeat", "ClientHello")]
    # the markers: Volume.from_name (no create) and its listdir; nothing staged yet
    assert methods[:3] == ["VolumeGetOrCreate", "VolumeListFiles2", "AppCreate"]
    # App.run(): the app's objects (image, mounts, the Volume, Secrets), the function, then publish
    middle = methods[3 : methods.index("AppPublish")]
    assert middle[0] == "EnvironmentGetOrCreate" and middle[-1] == "FunctionCreate"
    assert set(middle) <= {
        "EnvironmentGetOrCreate", "FunctionPrecreate", "MountGetOrCreate", "VolumeGetOrCreate", "SecretGetOrCreate",
        "ImageGetOrCreate", "MountBatchedCheckExistence", "MountPutFile", "FunctionCreate",
    }  # fmt: skip
    creates = [m.object_creation_type for m in plane.messages("VolumeGetOrCreate")]
    assert creates == [api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED, api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING]
    # stage.remote_gen(): the call, its end and its items; then the client disconnects: the app stops
    tail = methods[methods.index("AppPublish") :]
    assert tail[:2] == ["AppPublish", "FunctionMap"] and tail[-1] == "AppClientDisconnect"
    assert sorted(tail[2:-1]) == ["FunctionCallGetDataOut", "FunctionGetOutputs"]


def test_a_failed_stage_is_one_line_and_exit_1(plane, fleet):
    plane.stage_error = "Qwen/Qwen2.5-7B-Instruct@a09a354: 1 of 4 files do not match the Hub: config.json is missing"
    result, doc = stage(plane, fleet, SMALL)
    assert result.returncode == 1 and doc["ok"] is False
    (row,) = doc["deployments"]
    assert row["status"] == "failed"
    assert row["error"] == f"stage {SMALL}: {plane.stage_error}"
    assert markers(plane) == []
    text = cli(plane, fleet, "stage", SMALL, "--env", "dev")
    assert text.returncode == 1 and "Traceback" not in text.stderr + text.stdout
    assert f"{SMALL}: stage {SMALL}: {plane.stage_error}" in " ".join(text.stdout.split())


def test_stage_without_credentials_and_with_an_unknown_name(plane, fleet):
    result = run_cli("stage", "--env", "dev", cwd=fleet, env={"HOME": str(fleet)})
    assert result.returncode == 1 and "no Modal credentials found" in result.stderr
    result = cli(plane, fleet, "stage", "no-such-model", "--env", "dev")
    assert result.returncode == 2 and "no deployment named 'no-such-model'" in result.stderr


def test_deploy_stages_first_and_skips_what_is_staged(plane, fleet):
    result = cli(
        plane, fleet, "deploy", "--env", "dev", "--yes", "--skip-smoke-test", "--only", SMALL, "--format", "json"
    )
    doc = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = doc["deployments"]
    assert row["staging"]["status"] == "staged" and row["status"] == "deployed"
    calls = [r.method for r in plane.calls()]
    assert calls.index("FunctionMap") < max(i for i, m in enumerate(calls) if m == "AppPublish")
    assert markers(plane) == [marker_of(SMALL)]
    plan = json.loads(cli(plane, fleet, "plan", "--env", "dev", "--format", "json").stdout)
    assert {s["name"]: s["staged"] for s in plan["staging"]} == {SMALL: True, LARGE: False}

    path = fleet / "deployments" / f"{SMALL}.yaml"
    path.write_text(path.read_text().replace("max_concurrency: 64", "max_concurrency: 48"))
    plane.clear()
    result = cli(
        plane, fleet, "deploy", "--env", "dev", "--yes", "--skip-smoke-test", "--only", SMALL, "--format", "json"
    )
    (row,) = json.loads(result.stdout)["deployments"]
    assert row["staging"]["status"] == "already staged" and row["status"] == "deployed"
    assert plane.calls("FunctionMap") == []


def test_a_failed_stage_deploys_nothing_and_leaves_the_live_app(plane, fleet):
    base = ("deploy", "--env", "dev", "--yes", "--skip-smoke-test", "--only", SMALL, "--format", "json")
    assert cli(plane, fleet, *base, "--no-stage").returncode == 0
    assert plane.calls("FunctionMap") == [] and markers(plane) == []  # --no-stage: no staging at all
    live = plane.app(SMALL, "ff-dev")
    path = fleet / "deployments" / f"{SMALL}.yaml"
    path.write_text(path.read_text().replace("max_concurrency: 64", "max_concurrency: 48"))
    plane.stage_error = "Qwen/Qwen2.5-7B-Instruct@a09a354: RepositoryNotFoundError: 401 Unauthorized"
    result = cli(plane, fleet, *base)
    assert result.returncode == 1
    (row,) = json.loads(result.stdout)["deployments"]
    assert row["status"] == "failed" and row["staging"]["status"] == "failed"
    assert row["error"] == f"staging the weights failed, nothing deployed: stage {SMALL}: {plane.stage_error}"
    assert len(live.history) == 1 and live.live == 1  # the live version untouched
