"""fleetform deploy, plan, status, rollback and destroy end to end: the real CLI (a subprocess) and
the real modal client, talking gRPC to the in-test control plane of modal_control_plane.py on
127.0.0.1. The smoke test reaches the OpenAI-compatible test server of openai_server.py, which the
plane hands out as every app's URL.

The fleet's `--env dev` deploys into Modal environment `ff-dev` (and `prod` into `ff-prod`): the
two names differ, so mixing up the fleet environment and the Modal environment fails a test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from modal_proto import api_pb2

from conftest import REPO, run_cli
from modal_control_plane import ControlPlane
from openai_server import ServerConfig, serve

FLEET_YAML = """\
defaults:
  engine:
    vllm_version: "0.26.0"
  auth:
    mode: proxy
environments:
  dev:
    modal_environment: ff-dev
    overrides:
      scaling:
        max_containers: 1
  prod:
    modal_environment: ff-prod
"""
SMALL, LARGE = "qwen2-5-7b-instruct", "llama-3-3-70b-fp8"
MODELS = ["qwen2.5-7b-instruct", "llama-3.3-70b-instruct"]  # their served names
PROXY = {"MODAL_PROXY_TOKEN_ID": "wk-e2e", "MODAL_PROXY_TOKEN_SECRET": "ws-e2e"}


@pytest.fixture
def fleet(tmp_path):
    """Two deployments of the example fleet: one GPU with a Secret added, and two H100s falling back to H200s."""
    root = tmp_path / "fleet"
    (root / "deployments").mkdir(parents=True)
    (root / "deployments" / "fleet.yaml").write_text(FLEET_YAML)
    small = (REPO / "deployments" / f"{SMALL}.yaml").read_text()
    (root / "deployments" / f"{SMALL}.yaml").write_text(small + "\nsecrets: [hf-read-token]\n")
    shutil.copy(REPO / "deployments" / f"{LARGE}.yaml", root / "deployments")
    return root


@pytest.fixture
def plane():
    with ControlPlane() as p:
        yield p


@pytest.fixture
def endpoint(plane):
    """The OpenAI test server, on the plane's event loop; every app's URL points at it, and it
    answers only with the proxy-auth headers the smoke test must send."""
    config = ServerConfig(
        models=list(MODELS),
        require_headers={"Modal-Key": PROXY["MODAL_PROXY_TOKEN_ID"], "Modal-Secret": PROXY["MODAL_PROXY_TOKEN_SECRET"]},
    )
    context = serve(config)
    server = plane.run(context.__aenter__())
    for name in (SMALL, LARGE):
        plane.urls[name] = server.url
    yield server
    plane.run(context.__aexit__(None, None, None))


def cli(plane, fleet, *args: str):
    """`fleetform ARGS` in the fleet's folder, with the modal client pointed at the plane."""
    return run_cli(*args, cwd=fleet, env={**plane.env(), **PROXY, "HOME": str(fleet)})


def deploy(plane, fleet, *args: str, env: str = "dev"):
    """`deploy --no-stage`: these tests count the deploy's own requests; staging before a deploy,
    through the same plane, is tested in test_stage_modal.py."""
    result = cli(plane, fleet, "deploy", "--env", env, "--yes", "--no-stage", "--format", "json", *args)
    return result, json.loads(result.stdout)


def creates(plane) -> list[str]:
    """The app names that got a FunctionCreate, through the app id the request names."""
    return [plane.apps[m.app_id].name for m in plane.messages("FunctionCreate")]


def assert_environment_everywhere(plane, modal_env: str) -> None:
    """Every request that names a Modal environment names `modal_env` (never the fleet's `dev`)."""
    named = [(r.method, r.environment) for r in plane.calls() if r.environment is not None]
    assert named and [n for n in named if n[1] != modal_env] == []
    apps = {
        r.message.app_id for r in plane.calls() if "app_id" in r.message.DESCRIPTOR.fields_by_name and r.message.app_id
    }
    assert all(plane.apps[a].environment == modal_env for a in apps)


def edit(fleet, name: str, old: str, new: str) -> None:
    path = fleet / "deployments" / f"{name}.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


# --- deploy: only what changed -----------------------------------------------------------------------


def test_deploy_then_nothing_to_do(plane, fleet, endpoint):
    result, doc = deploy(plane, fleet)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(doc["summary"]["deployed"]) == sorted([SMALL, LARGE])
    assert sorted(creates(plane)) == sorted([SMALL, LARGE])
    published = {m.name: m for m in plane.messages("AppPublish")}
    for r in doc["deployments"]:
        assert published[r["name"]].deployment_tag == r["tag"] and r["tag"].startswith("ff-")
        assert dict(published[r["name"]].tags) == {"managed-by": "fleetform"}
        assert r["smoke_test"]["ok"] and r["url"] == endpoint.url
    assert endpoint.state.chat_count >= 2  # both smoke tests chatted (the server 401s without proxy-auth headers)
    assert_environment_everywhere(plane, "ff-dev")

    plane.clear()
    result, doc = deploy(plane, fleet)
    assert result.returncode == 0 and sorted(doc["summary"]["unchanged"]) == sorted([SMALL, LARGE])
    assert plane.calls("FunctionCreate", "AppPublish", "AppCreate") == []  # an unchanged fleet deploys nothing
    plan = cli(plane, fleet, "plan", "--env", "dev", "--detailed-exitcode", "--format", "json")
    assert plan.returncode == 0, plan.stderr
    assert {r["action"] for r in json.loads(plan.stdout)["live"]["rows"]} == {"unchanged"}
    status = cli(plane, fleet, "status", "--env", "dev", "--format", "json")
    rows = json.loads(status.stdout)["deployments"]
    assert {(r["name"], r["state"], r["modal_env"], r["url"]) for r in rows} == {
        (SMALL, "in_sync", "ff-dev", endpoint.url),
        (LARGE, "in_sync", "ff-dev", endpoint.url),
    }
    assert_environment_everywhere(plane, "ff-dev")


def test_one_change_one_function_create(plane, fleet, endpoint):
    assert deploy(plane, fleet)[0].returncode == 0
    before = {a.name: a.history[-1].tag for a in plane.apps.values()}
    edit(fleet, SMALL, "max_concurrency: 64", "max_concurrency: 48")
    plan = cli(plane, fleet, "plan", "--env", "dev", "--detailed-exitcode", "--format", "json")
    assert plan.returncode == 2
    assert {r["name"]: r["action"] for r in json.loads(plan.stdout)["live"]["rows"]} == {
        SMALL: "update",
        LARGE: "unchanged",
    }
    plane.clear()
    result, doc = deploy(plane, fleet)
    assert result.returncode == 0, result.stdout
    assert creates(plane) == [SMALL]
    (fn,) = plane.messages("FunctionCreate")
    functions, _ = ranked(fn)
    assert functions[0].max_concurrent_inputs == 48  # the change itself reached Modal
    (published,) = plane.messages("AppPublish")
    assert published.name == SMALL and published.deployment_tag != before[SMALL]
    assert next(d for d in doc["deployments"] if d["name"] == SMALL)["tag"] == published.deployment_tag
    assert plane.app(LARGE, "ff-dev").live == 1  # untouched


@pytest.mark.parametrize("strategy, old_containers_left", [("rolling", 1), ("recreate", 0)])
def test_strategy_reaches_modal(plane, fleet, endpoint, strategy, old_containers_left):
    assert deploy(plane, fleet, "--only", SMALL)[0].returncode == 0
    edit(fleet, SMALL, "max_concurrency: 64", "max_concurrency: 48")
    plane.clear()
    result, doc = deploy(plane, fleet, "--only", SMALL, "--strategy", strategy)
    assert result.returncode == 0 and doc["deployments"][0]["warnings"] == [], doc
    assert len(plane.app(SMALL, "ff-dev").containers) == 1 + old_containers_left  # recreate stopped v1's
    assert bool(plane.calls("TaskList")) == (strategy == "recreate")
    assert_environment_everywhere(plane, "ff-dev")


# --- what Modal is asked to run ----------------------------------------------------------------------


def ranked(req) -> tuple[list, object]:
    """A FunctionCreateRequest's functions, best GPU first, and its autoscaler settings (one GPU type
    comes as `function`, several as ranked `function_data`)."""
    if not req.HasField("function_data"):
        return [req.function], req.function.autoscaler_settings
    data = req.function_data
    return [r.function for r in sorted(data.ranked_functions, key=lambda r: r.rank)], data.autoscaler_settings


def _ids(plane, method: str) -> dict[str, str]:
    """object id -> name, for the Secrets or Volumes the client looked up (ids are stable per name)."""
    return {
        oid: key
        for (kind, env, key), oid in plane.objects.items()
        if kind == {"SecretGetOrCreate": "st", "VolumeGetOrCreate": "vo"}[method]
    }


def test_function_create_carries_gpu_autoscaler_volumes_and_secrets(plane, fleet, endpoint):
    assert deploy(plane, fleet)[0].returncode == 0
    by_app = {plane.apps[m.app_id].name: m for m in plane.messages("FunctionCreate")}
    secrets, volumes = _ids(plane, "SecretGetOrCreate"), _ids(plane, "VolumeGetOrCreate")

    small, small_scaling = ranked(by_app[SMALL])
    assert [(f.resources.gpu_config.gpu_type, f.resources.gpu_config.count) for f in small] == [("L40S", 1)]
    assert (small_scaling.min_containers, small_scaling.max_containers) == (0, 1)  # dev caps at 1
    assert (small_scaling.scaledown_window, small_scaling.target_concurrency_float) == (600, 24)
    assert (small[0].max_concurrent_inputs, small[0].http_config.port) == (64, 8000)
    assert sorted(secrets[s] for s in small[0].secret_ids) == ["hf-read-token"]
    assert {m.mount_path: volumes[m.volume_id] for m in small[0].volume_mounts} == {
        "/root/.cache/huggingface": "huggingface-cache",
        "/root/.cache/vllm": "vllm-cache",
    }

    large, large_scaling = ranked(by_app[LARGE])
    gpus = [(f.resources.gpu_config.gpu_type, f.resources.gpu_config.count) for f in large]
    assert gpus == [("H100", 2), ("H200", 2)]  # ranked: H200 only when no H100 is free
    assert large_scaling.max_containers == 1 and large_scaling.scaledown_window == 1200
    assert sorted(secrets[s] for s in large[0].secret_ids) == ["huggingface-secret"]
    # Secrets and Volumes were looked up in the Modal environment, by name.
    looked_up = {(m.deployment_name, m.environment_name) for m in plane.messages("SecretGetOrCreate")}
    assert looked_up == {("hf-read-token", "ff-dev"), ("huggingface-secret", "ff-dev")}
    assert {(m.deployment_name, m.environment_name) for m in plane.messages("VolumeGetOrCreate")} == {
        ("huggingface-cache", "ff-dev"),
        ("vllm-cache", "ff-dev"),
    }


def test_the_module_modal_runs_is_the_rendered_one(plane, fleet, endpoint):
    result, doc = deploy(plane, fleet)
    assert result.returncode == 0
    tags = {r["name"]: r["tag"] for r in doc["deployments"]}
    for name in (SMALL, LARGE):
        fn = plane.live_function(name, "ff-dev")
        files = plane.mounted_files(fn)
        (module,) = [text for path, text in files.items() if path.endswith(f"fleetform-{name}.py")]
        assert fn.module_name == f"fleetform-{name}"
        header = next(line for line in module.decode().splitlines() if line.startswith("# fleetform-hash: sha256:"))
        assert tags[name] == "ff-" + header.split("sha256:", 1)[1][:12]  # the tag names the content uploaded


# --- smoke test failure, rollback, destroy -----------------------------------------------------------


def test_failed_smoke_test_rolls_back_and_status_sees_the_old_content(plane, fleet, endpoint):
    result, first = deploy(plane, fleet)
    assert result.returncode == 0
    old_tag = next(r["tag"] for r in first["deployments"] if r["name"] == SMALL)
    edit(fleet, SMALL, "max_concurrency: 64", "max_concurrency: 48")
    endpoint.config.models = MODELS[1:]  # the new version does not serve its name: the smoke test fails
    plane.rollback_tag = lambda target: "ff-failed00000"  # Modal tags the rollback entry with something else
    plane.clear()
    result, doc = deploy(plane, fleet)
    assert result.returncode == 1
    row = next(r for r in doc["deployments"] if r["name"] == SMALL)
    assert row["status"] == "failed" and row["recovery"] == "rolled_back" and "models" in row["error"]
    (rollback,) = plane.messages("AppRollback")
    app = plane.app(SMALL, "ff-dev")
    assert rollback.app_id == app.app_id and rollback.version == 1  # the version live before
    assert app.live == 3 and app.history[-1].rollback_of == 1
    status = cli(plane, fleet, "status", "--env", "dev", "--format", "json")
    small = next(r for r in json.loads(status.stdout)["deployments"] if r["name"] == SMALL)
    assert (small["state"], small["live_tag"], small["live_version"]) == ("drifted", old_tag, 3)
    text = cli(plane, fleet, "deploy", "--env", "dev", "--yes", "--dry-run")
    assert f"{old_tag} -> " in text.stdout  # what runs is v1's module, whatever tag Modal put on v3
    assert_environment_everywhere(plane, "ff-dev")


def test_no_rollback_leaves_the_new_version_live(plane, fleet, endpoint):
    assert deploy(plane, fleet)[0].returncode == 0
    edit(fleet, SMALL, "max_concurrency: 64", "max_concurrency: 48")
    endpoint.config.models = MODELS[1:]
    result = cli(plane, fleet, "deploy", "--env", "dev", "--yes", "--no-rollback", "--only", SMALL)
    assert result.returncode == 1 and plane.calls("AppRollback") == []
    new_tag = plane.app(SMALL, "ff-dev").history[-1].tag
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"│ {SMALL}"))
    assert new_tag in row  # the summary shows what is live: the new version


def test_rollback_and_destroy_through_the_cli(plane, fleet, endpoint):
    assert deploy(plane, fleet)[0].returncode == 0
    edit(fleet, LARGE, "target_concurrency: 48", "target_concurrency: 40")
    assert deploy(plane, fleet)[0].returncode == 0
    app = plane.app(LARGE, "ff-dev")
    assert [v.tag for v in app.history][0] != app.history[1].tag
    # The plane never sets `rollback_allowed` on history entries, as a server may not.
    result = cli(plane, fleet, "rollback", LARGE, "--env", "dev", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert (doc["from_version"], doc["to_version"], doc["modal_env"]) == (2, 1, "ff-dev")
    assert [m.version for m in plane.messages("AppRollback")] == [1] and app.live == 3
    result = cli(plane, fleet, "destroy", LARGE, "--env", "dev", "--yes")
    assert result.returncode == 0 and result.stdout == f"stopped {LARGE} in Modal environment 'ff-dev'\n"
    (stop,) = plane.messages("AppStop")
    assert stop.app_id == app.app_id and app.state == api_pb2.APP_STATE_STOPPED
    status = json.loads(cli(plane, fleet, "status", "--env", "dev", "--format", "json").stdout)
    assert {r["name"]: r["state"] for r in status["deployments"]}[LARGE] == "not_deployed"
    assert_environment_everywhere(plane, "ff-dev")


# --- environments, orphans, credentials ----------------------------------------------------------------


def test_env_prod_goes_to_its_own_modal_environment(plane, fleet, endpoint):
    result, doc = deploy(plane, fleet, env="prod")
    assert result.returncode == 0 and {r["modal_env"] for r in doc["deployments"]} == {"ff-prod"}
    assert_environment_everywhere(plane, "ff-prod")
    plane.clear()
    status = json.loads(cli(plane, fleet, "status", "--env", "dev", "--format", "json").stdout)
    assert {r["state"] for r in status["deployments"]} == {"not_deployed"}  # nothing in ff-dev
    assert_environment_everywhere(plane, "ff-dev")


def test_an_app_no_yaml_describes_is_an_orphan(plane, fleet, endpoint):
    assert deploy(plane, fleet)[0].returncode == 0
    (fleet / "deployments" / f"{LARGE}.yaml").unlink()
    plan = cli(plane, fleet, "plan", "--env", "dev")
    assert plan.returncode == 0
    assert f"orphan: {LARGE} (v1, ff-" in plan.stdout and f"fleetform destroy {LARGE}" in plan.stdout
    status = json.loads(cli(plane, fleet, "status", "--env", "dev", "--format", "json").stdout)
    assert {r["name"]: r["state"] for r in status["deployments"]} == {SMALL: "in_sync", LARGE: "orphan"}


def test_rejected_credentials_are_one_line(plane, fleet):
    result = run_cli(
        "status", "--env", "dev", cwd=fleet, env={**plane.env(), "MODAL_TOKEN_SECRET": "as-wrong", "HOME": str(fleet)}
    )
    assert result.returncode == 1 and result.stdout == ""
    assert (
        result.stderr.startswith("error: list apps: Modal rejected the credentials") and result.stderr.count("\n") == 1
    )


# --- the gateway: a member of the fleet, through the CLI ------------------------------------------------------

GATEWAY = "fleetform-gateway"


def python(plane, fleet, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python ARGS` in the fleet's folder, with the modal client pointed at the plane."""
    full = {**os.environ, **plane.env(), **PROXY, "HOME": str(fleet), "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, *args], cwd=fleet, capture_output=True, text=True, env=full, timeout=120)


def cli_json(plane, fleet, *args: str, **env: str) -> dict:
    result = run_cli(
        *args, "--env", "dev", "--format", "json", cwd=fleet, env={**plane.env(), **PROXY, "HOME": str(fleet), **env}
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_gateway_deployed_as_documented_is_a_member_then_deployed_last(plane, fleet, endpoint):
    with (fleet / "deployments" / "fleet.yaml").open("a") as fh:
        fh.write("gateway:\n  enabled: true\n")
    config = ServerConfig(models=list(MODELS), require_headers={"Authorization": "Bearer gk-e2e"})
    context = serve(config)
    gateway_server = plane.run(context.__aenter__())
    plane.urls[GATEWAY] = gateway_server.url
    try:
        assert cli(plane, fleet, "render", "--env", "dev", "--out", "build").returncode == 0
        hand = python(plane, fleet, "-m", "modal", "deploy", "-e", "ff-dev", f"build/{GATEWAY}.py")
        assert hand.returncode == 0, hand.stderr
        assert plane.app(GATEWAY, "ff-dev").history[-1].tag == ""  # `modal deploy` records no tag

        rows = {r["name"]: r["action"] for r in cli_json(plane, fleet, "plan")["live"]["rows"]}
        assert rows == {SMALL: "create", LARGE: "create", GATEWAY: "update"}  # a member, never an orphan
        states = {r["name"]: r["state"] for r in cli_json(plane, fleet, "status")["deployments"]}
        assert states[GATEWAY] == "drifted"

        plane.clear()
        doc = cli_json(plane, fleet, "deploy", "--yes", FLEETFORM_GATEWAY_API_KEY="gk-e2e")
        assert doc["ok"] and doc["summary"]["deployed"][-1] == GATEWAY, doc
        published = [m.name for m in plane.messages("AppPublish") if m.name]
        stage_runs = [m for m in plane.messages("AppPublish") if m.app_state == api_pb2.APP_STATE_EPHEMERAL]
        assert len(stage_runs) == 2  # the weights of each deployment staged first; the gateway has none
        assert published[-1] == GATEWAY and sorted(published[:-1]) == sorted([SMALL, LARGE])  # the gateway last
        gateway_row = next(r for r in doc["deployments"] if r["name"] == GATEWAY)
        assert gateway_row["smoke_test"]["ok"] and gateway_row["url"] == gateway_server.url
        assert gateway_server.state.health_count >= 1  # through the gateway, which 401s without the Bearer key
        assert plane.app(GATEWAY, "ff-dev").history[-1].tag == gateway_row["tag"]
        assert {r["state"] for r in cli_json(plane, fleet, "status")["deployments"]} == {"in_sync"}
        assert_environment_everywhere(plane, "ff-dev")

        result = cli(plane, fleet, "destroy", GATEWAY, "--env", "dev", "--yes")
        assert result.returncode == 0 and result.stdout == f"stopped {GATEWAY} in Modal environment 'ff-dev'\n"
    finally:
        plane.run(context.__aexit__(None, None, None))


def test_modal_refusing_a_deploy_publishes_nothing_and_is_one_line(plane, fleet, endpoint):
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    plane.fail["FunctionCreate"] = GRPCError(Status.RESOURCE_EXHAUSTED, "GPU quota exceeded for H100")
    result, doc = deploy(plane, fleet, "--only", LARGE)
    assert result.returncode == 1
    (row,) = doc["deployments"]
    assert row["status"] == "failed" and row["recovery"] is None
    assert row["error"].startswith(f"deploy failed: deploy {LARGE}: Modal refused for lack of quota or capacity")
    assert "GPU quota exceeded for H100" in row["error"] and "\n" not in row["error"]
    assert plane.calls("AppPublish", "AppRollback", "AppStop") == []  # nothing went live, nothing to undo
    assert [m.reason for m in plane.messages("AppClientDisconnect")] == [
        api_pb2.APP_DISCONNECT_REASON_DEPLOYMENT_EXCEPTION
    ]


def test_an_rpc_the_plane_does_not_serve_fails_naming_it(plane, fleet):
    """What a new SDK call would look like: recorded, refused, named (so an upgrade cannot pass silently)."""
    code = "import modal; modal.Queue.from_name('q', environment_name='ff-dev', create_if_missing=True).hydrate()"
    result = python(plane, fleet, "-c", code)
    assert result.returncode != 0 and "QueueGetOrCreate is not served by the test control plane" in result.stderr
    assert [r.method for r in plane.calls()] == ["QueueGetOrCreate"]


def test_a_canary_rollout_through_the_real_sdk_makes_the_documented_modal_calls(plane, fleet, endpoint):
    """`deploy --canary` end to end: the real modal client against the control plane, the gateway's
    /metrics answered by a test server at the gateway's URL. The RPCs, in order: the canary app
    published under its own name with the new tag, the gateway with the split, the live app with the
    same tag, the gateway without the split (its plain tag again), then AppStop of the canary."""
    with (fleet / "deployments" / "fleet.yaml").open("a") as fh:
        fh.write("gateway:\n  enabled: true\n")
    canary = f"{SMALL}-canary"
    metrics = (  # what the split gateway reports: no request yet, so min_requests 0 lets the verdict pass
        'fleetform_gateway_info{container="ta-e2e"} 1\nfleetform_gateway_start_time_seconds 1\n'
        f'fleetform_gateway_route_weight{{deployment="{SMALL}",upstream="{SMALL}"}} 90\n'
        f'fleetform_gateway_route_weight{{deployment="{SMALL}",upstream="{canary}"}} 10\n'
    )
    config = ServerConfig(models=list(MODELS), require_headers={"Authorization": "Bearer gk-e2e"}, metrics_text=metrics)
    context = serve(config)
    gateway_server = plane.run(context.__aenter__())
    plane.urls[GATEWAY] = gateway_server.url
    plane.urls[canary] = endpoint.url
    env = {**plane.env(), **PROXY, "HOME": str(fleet), "FLEETFORM_GATEWAY_API_KEY": "gk-e2e"}

    def deploy_with_key(*args: str):
        result = run_cli("deploy", "--env", "dev", "--yes", "--no-stage", "--format", "json", *args, cwd=fleet, env=env)
        return result, json.loads(result.stdout)

    try:
        first, doc = deploy_with_key()
        assert first.returncode == 0 and doc["ok"], first.stderr
        plain_gateway_tag = plane.app(GATEWAY, "ff-dev").history[-1].tag
        edit(fleet, SMALL, "scaling:\n", "rollout:\n  promote_if:\n    min_requests: 0\nscaling:\n")
        edit(fleet, SMALL, "target_concurrency: 24", "target_concurrency: 20")
        plane.clear()
        result, doc = deploy_with_key(
            "--only",
            SMALL,
            "--canary",
            "10%",
            "--canary-duration",
            "10",
            "--watch-interval",
            "2",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (row,) = doc["deployments"]
        assert row["status"] == "deployed" and row["canary"]["outcome"] == "promoted", row
        assert row["canary"]["verdict"]["notes"] == [
            "TTFT p90 not judged: the live version had no answer to measure it on"
        ]
        published = [(m.name, m.deployment_tag) for m in plane.messages("AppPublish") if m.name]
        split_tag = published[1][1]
        assert (
            published
            == [
                (canary, row["tag"]),
                (GATEWAY, split_tag),
                (SMALL, row["tag"]),
                (GATEWAY, plain_gateway_tag),
            ]
            and split_tag != plain_gateway_tag
        )
        stopped = [plane.apps[m.app_id].name for m in plane.messages("AppStop")]
        assert stopped == [canary]
        assert gateway_server.state.metrics_count >= 5  # scraped through the gateway's URL, every 2 s for 10 s
        assert plane.app(SMALL, "ff-dev").history[-1].tag == row["tag"]
        assert_environment_everywhere(plane, "ff-dev")
        states = {r["name"]: r["state"] for r in cli_json(plane, fleet, "status")["deployments"]}
        assert set(states.values()) == {"in_sync"} and canary not in states
    finally:
        plane.run(context.__aexit__(None, None, None))
