"""`fleetform run` through the real modal client (the CLI in a subprocess), against the in-test
control plane of modal_control_plane.py: the run creates an *ephemeral* app under its own name, in
the Modal environment of `--env`, creates the server function, reads its URL, and disconnects at
the end, which stops the app. The smoke test reaches the OpenAI test server the plane hands out."""

from __future__ import annotations

import json
import shutil

import pytest
from modal_proto import api_pb2

from conftest import REPO, run_cli
from modal_control_plane import ControlPlane
from openai_server import Fault, ServerConfig, serve

NAME = "qwen2-5-7b-instruct"
MODELS = ["qwen2.5-7b-instruct"]  # its served name
FLEET_YAML = """\
defaults:
  engine:
    vllm_version: "0.26.0"
  auth:
    mode: proxy
environments:
  dev:
    modal_environment: ff-dev
"""
PROXY = {"MODAL_PROXY_TOKEN_ID": "wk-run", "MODAL_PROXY_TOKEN_SECRET": "ws-run"}


@pytest.fixture
def fleet(tmp_path):
    root = tmp_path / "fleet"
    (root / "deployments").mkdir(parents=True)
    (root / "deployments" / "fleet.yaml").write_text(FLEET_YAML)
    shutil.copy(REPO / "deployments" / f"{NAME}.yaml", root / "deployments")
    return root


def the_run_name(fleet) -> str:
    from renderer.codegen.render import render_fleet
    from renderer.config.load import load_fleet
    from renderer.config.resolve import resolve
    from renderer.modal_api import run_name

    (app,) = render_fleet(resolve(load_fleet([str(fleet / "deployments")]), "dev").deployments)
    return run_name(app)


@pytest.fixture
def plane():
    with ControlPlane() as p:
        yield p


def start_server(plane, config: ServerConfig):
    context = serve(config)
    return context, plane.run(context.__aenter__())


def run(plane, fleet, *args: str):
    result = run_cli(
        "run", NAME, "--env", "dev", "--format", "json", "--max-tokens", "4", *args,
        cwd=fleet, env={**plane.env(), **PROXY, "HOME": str(fleet)},
    )  # fmt: skip
    return result, json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.mark.parametrize("fault, code", [(Fault.NONE, 0), (Fault.SERVER_ERROR, 1)])
def test_a_run_is_an_ephemeral_app_stopped_at_the_end(plane, fleet, fault, code):
    context, server = start_server(plane, ServerConfig(models=MODELS, fault=fault))
    name = the_run_name(fleet)
    plane.urls[name] = server.url
    try:
        result, doc = run(plane, fleet)
    finally:
        plane.run(context.__aexit__(None, None, None))
    assert result.returncode == code, result.stderr
    assert doc["outcome"] == ("passed" if code == 0 else "failed") and doc["url"] == server.url
    (create,) = plane.messages("AppCreate")
    assert create.app_state == api_pb2.APP_STATE_EPHEMERAL and create.description == name != NAME
    assert create.environment_name == "ff-dev" and dict(create.tags).get("managed-by") == "fleetform"
    (publish,) = plane.messages("AppPublish")
    assert publish.app_state == api_pb2.APP_STATE_EPHEMERAL and publish.name == ""  # no deployment name
    (fn,) = [m for m in plane.messages("FunctionCreate")]
    assert (fn.function_data.function_name or fn.function.function_name) == "serve"
    (disconnect,) = plane.messages("AppClientDisconnect")
    app = plane.apps[create_id := disconnect.app_id]
    assert app.state == api_pb2.APP_STATE_STOPPED and not app.containers and doc["app_id"] == create_id
    assert plane.calls("AppHeartbeat")  # the SDK keeps the run alive with heartbeats while it runs
    assert plane.messages("AppGetByDeploymentName") == []  # a run never looks up, nor touches, the live app
    assert doc["stop_command"] == f"modal app stop {create_id} --env ff-dev"


def test_a_start_failure_is_one_line_and_leaves_nothing_running(plane, fleet):
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    plane.fail["FunctionCreate"] = GRPCError(Status.RESOURCE_EXHAUSTED, "no B200 capacity")
    result, doc = run(plane, fleet)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "lack of quota or capacity" in doc["error"] and doc["stopped"] is False
    (create,) = plane.messages("AppCreate")
    assert [a.state for a in plane.apps.values()] == [api_pb2.APP_STATE_STOPPED]


def test_a_start_slower_than_the_startup_timeout_disconnects_and_stops_the_app(plane, fleet):
    plane.delay["FunctionCreate"] = 8.0  # e.g. an image build
    result, doc = run(plane, fleet, "--startup-timeout", "2")
    assert result.returncode == 1 and doc["outcome"] == "startup_timeout", result.stderr
    assert "Traceback" not in result.stderr and doc["total_s"] < 8
    (create,) = plane.calls("AppCreate")
    (disconnect,) = plane.messages("AppClientDisconnect")
    assert disconnect.reason == api_pb2.APP_DISCONNECT_REASON_KEYBOARD_INTERRUPT
    assert [a.state for a in plane.apps.values()] == [api_pb2.APP_STATE_STOPPED]
    assert plane.messages("AppPublish") == []
