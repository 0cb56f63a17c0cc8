"""The Modal boundary, against the real SDK as far as it goes offline.

Rendered modules are loaded into real `modal.App` objects; only the final network calls are
replaced (`modal.runner.deploy_app`, the server URL lookup, the gRPC stub), and the tests check
what fleetform hands them. With no credentials configured, the real SDK path is run to the point
where it gives up, and fleetform's one-line error is checked.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from renderer.codegen.render import render_fleet
from renderer.config import spec
from renderer.config.load import load_fleet
from renderer.config.resolve import gateway_from, resolve
from renderer.modal_api import (
    NO_CREDENTIALS,
    SERVER_NAME,
    AppNotFound,
    BackendError,
    CapacityError,
    CredentialsMissing,
    CredentialsRejected,
    DeployTimeout,
    EnvironmentNotFound,
    InvalidRequest,
    ModalBackend,
    NetworkError,
    Version,
    credentials_available,
    deployment_tag,
    effective_tags,
    load_app,
    module_name,
    translate,
    unload_app,
)

ROOT = Path(__file__).resolve().parent.parent
FLEET_ENV = "dev"  # the example fleet's `dev` environment (`--env dev`)...
MODAL_ENV = "llm-dev"  # ...deploys into this Modal environment: a mix-up of the two fails
CREDENTIAL_VARS = (
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "MODAL_PROFILE",
    "MODAL_CONFIG_PATH",
    "MODAL_OAUTH_REFRESH_TOKEN",
    "MODAL_OAUTH_CLIENT_ID",
    "MODAL_OAUTH_CLIENT_SECRET",
    "MODAL_IS_REMOTE",
)


@pytest.fixture(scope="module")
def apps():
    resolved = resolve(load_fleet([str(ROOT / "deployments")]), FLEET_ENV)
    assert resolved.ok
    return render_fleet(resolved.deployments)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No token in the environment and an empty home: as on a machine that never ran `modal token new`."""
    import modal.client
    import modal.config

    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # The SDK read ~/.modal.toml when it was imported; make its copy match the empty home too.
    monkeypatch.setattr(modal.config, "_user_config", {})
    monkeypatch.setattr(modal.client._Client, "_client_from_env", None)
    return tmp_path


# --- credentials ----------------------------------------------------------------------------------


def test_no_credentials_with_empty_home(no_credentials):
    assert credentials_available() is False
    assert ModalBackend().credentials_available() is False


def test_token_in_environment_counts(no_credentials, monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    assert credentials_available() is False  # the secret is missing
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    assert credentials_available() is True


def test_token_in_the_active_profile_counts(no_credentials, monkeypatch):
    (no_credentials / ".modal.toml").write_text(
        textwrap.dedent(
            """
            [other]
            token_id = "ak-o"

            [work]
            token_id = "ak-1"
            token_secret = "as-1"
            active = true
            """
        )
    )
    assert credentials_available() is True
    monkeypatch.setenv("MODAL_PROFILE", "other")  # a profile with half a token
    assert credentials_available() is False
    monkeypatch.setenv("MODAL_PROFILE", "work")
    assert credentials_available() is True


def test_config_path_variable_is_honoured(no_credentials, monkeypatch, tmp_path):
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    assert credentials_available() is False
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(cfg))
    assert credentials_available() is True


def test_real_sdk_deploy_without_credentials_is_one_line(apps, no_credentials):
    """Nothing replaced: the SDK builds the app, checks name and tag, then finds no token."""
    with pytest.raises(CredentialsMissing) as err:
        ModalBackend().deploy(apps[0], MODAL_ENV, deployment_tag(apps[0]))
    assert str(err.value) == NO_CREDENTIALS
    assert "\n" not in str(err.value) and "modal token new" in str(err.value)
    assert module_name(apps[0]) not in sys.modules  # unloaded even on failure


def test_real_sdk_reads_without_credentials_are_one_line(no_credentials):
    with pytest.raises(CredentialsMissing, match="MODAL_TOKEN_SECRET"):
        ModalBackend().list_apps(MODAL_ENV)


# --- loading rendered modules ---------------------------------------------------------------------


def test_rendered_module_loads_into_a_real_app(apps, tmp_path):
    import modal

    app = apps[0]
    try:
        modal_app = load_app(app, tmp_path)
        assert isinstance(modal_app, modal.App)
        assert modal_app.name == app.deployment.name
        # The App tag that marks it as ours (read from the SDK's local state: it is not running).
        assert modal_app._local_state.tags == {"managed-by": "fleetform"}
        module = sys.modules[module_name(app)]
        assert Path(module.__file__).read_text() == app.text  # exactly what was rendered
        # The server is defined in a file Modal will mount and import in the container, not pickled.
        from modal._utils.async_utils import synchronizer

        fn = synchronizer._translate_in(modal_app._local_state.functions[SERVER_NAME])
        info = fn._source_info
        assert not info.is_serialized()
        assert info.module_name == module_name(app)
        assert list(info.get_entrypoint_mount()) == [module_name(app)]
    finally:
        unload_app(app)
    assert module_name(app) not in sys.modules


def test_module_name_cannot_shadow_a_python_module(apps):
    assert all("-" in module_name(a) and not module_name(a).isidentifier() for a in apps)


# --- deploying through the SDK entry point --------------------------------------------------------


class FakeDeployApp:
    """Stands in for `modal.runner.deploy_app`: records the call, checks the app, returns a result."""

    def __init__(self, delay: float = 0.0, error: BaseException | None = None):
        self.calls: list[tuple] = []
        self.delay, self.error = delay, error
        self.cancelled = False

    async def aio(self, app, name=None, *, environment_name=None, tag="", deployment_strategy="rolling"):
        import modal

        assert isinstance(app, modal.App)
        module = sys.modules[module_name_of(app)]
        assert Path(module.__file__).is_file()  # the file Modal will upload still exists
        self.calls.append((app.name, name, environment_name, tag, deployment_strategy))
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error:
            raise self.error
        from modal.runner import DeployResult

        return DeployResult(app_id="ap-123", app_page_url="https://modal.com/apps/x", app_logs_url=None, warnings=[])

    def __call__(self, *args, **kwargs):  # the blocking form must not be used: it cannot be timed out
        raise AssertionError("blocking deploy_app called")


def module_name_of(app) -> str:
    return f"fleetform-{app.name}"


@pytest.fixture
def fake_sdk(monkeypatch):
    import modal
    import modal.runner

    deploy_app = FakeDeployApp()
    monkeypatch.setattr(modal.runner, "deploy_app", deploy_app)
    urls = []

    class FakeServer:
        def __init__(self, app_name, name, environment_name):
            urls.append((app_name, name, environment_name))
            self.get_url = SimpleNamespace(aio=self._url)
            self.app_name = app_name

        async def _url(self):
            return f"https://{self.app_name}.modal.run"

    monkeypatch.setattr(
        modal.Server,
        "from_name",
        staticmethod(lambda a, n, *, environment_name=None: FakeServer(a, n, environment_name)),
    )
    return SimpleNamespace(deploy_app=deploy_app, urls=urls)


@pytest.mark.parametrize("strategy", ["rolling", "recreate"])
def test_deploy_calls_the_sdk_with_name_environment_tag_and_strategy(apps, fake_sdk, strategy):
    app = apps[1]
    tag = deployment_tag(app)
    outcome = ModalBackend(strategy=strategy).deploy(app, MODAL_ENV, tag)
    name = app.deployment.name
    assert fake_sdk.deploy_app.calls == [(name, name, MODAL_ENV, tag, strategy)]
    assert fake_sdk.urls == [(name, SERVER_NAME, MODAL_ENV)]
    assert outcome.app_id == "ap-123" and outcome.url == f"https://{name}.modal.run"
    assert module_name(app) not in sys.modules


def test_deploy_the_gateway_module_and_find_its_asgi_url(apps, fake_sdk, monkeypatch):
    """The gateway is an ASGI function, not an `@app.server`: no server URL, so its web URL is used."""
    import modal

    from renderer.codegen.gateway import render_gateway

    gateway = render_gateway([a.deployment for a in apps], gateway_from({"enabled": True}))
    looked_up = []

    class FakeFunction:
        def __init__(self, app_name, name, environment_name):
            looked_up.append((app_name, name, environment_name))
            self.get_web_url = SimpleNamespace(aio=self._url)

        async def _url(self):
            return "https://ws--fleetform-gateway-serve.modal.run"

    async def no_server_url():
        return None

    monkeypatch.setattr(
        modal.Server,
        "from_name",
        staticmethod(
            lambda a, n, *, environment_name=None: SimpleNamespace(get_url=SimpleNamespace(aio=no_server_url))
        ),
    )
    monkeypatch.setattr(
        modal.Function,
        "from_name",
        staticmethod(lambda a, n, *, environment_name=None: FakeFunction(a, n, environment_name)),
    )
    outcome = ModalBackend().deploy(gateway, MODAL_ENV, deployment_tag(gateway))
    assert fake_sdk.deploy_app.calls == [(gateway.name, gateway.name, MODAL_ENV, deployment_tag(gateway), "rolling")]
    assert looked_up == [(gateway.name, SERVER_NAME, MODAL_ENV)]
    assert outcome.url == "https://ws--fleetform-gateway-serve.modal.run" and outcome.warnings == ()
    assert module_name(gateway) not in sys.modules


def test_deploy_strategy_per_call_overrides_the_default(apps, fake_sdk):
    ModalBackend().deploy(apps[0], None, deployment_tag(apps[0]), strategy="recreate")
    assert fake_sdk.deploy_app.calls[0][2:] == (None, deployment_tag(apps[0]), "recreate")


def test_deploy_timeout_cancels_the_sdk_call(apps, fake_sdk):
    fake_sdk.deploy_app.delay = 5.0
    with pytest.raises(DeployTimeout, match=r"not finished after 0.2s"):
        ModalBackend().deploy(apps[0], MODAL_ENV, deployment_tag(apps[0]), timeout=0.2)
    assert fake_sdk.deploy_app.cancelled


def test_deploy_maps_sdk_errors(apps, fake_sdk):
    from modal.exception import ResourceExhaustedError

    fake_sdk.deploy_app.error = ResourceExhaustedError("GPU quota exceeded for H100")
    with pytest.raises(CapacityError) as err:
        ModalBackend().deploy(apps[0], MODAL_ENV, deployment_tag(apps[0]))
    msg = str(err.value)
    assert apps[0].deployment.name in msg and "GPU quota exceeded" in msg and "\n" not in msg


def test_invalid_tag_is_refused_before_the_sdk(apps, fake_sdk):
    with pytest.raises(InvalidRequest):
        ModalBackend().deploy(apps[0], MODAL_ENV, "not a tag!")
    assert fake_sdk.deploy_app.calls == []


def test_unknown_strategy_is_refused():
    with pytest.raises(InvalidRequest):
        ModalBackend(strategy="blue-green")


# --- error translation ----------------------------------------------------------------------------


def _sdk_errors():
    import modal.exception as me

    return [
        (me.AuthError("Token missing. Could not authenticate client."), CredentialsMissing, "modal token new"),
        (me.AuthError("Token is invalid"), CredentialsRejected, "modal token new"),
        (me.NotFoundError("Environment 'nope' not found"), EnvironmentNotFound, "modal environment list"),
        (me.NotFoundError("App 'x' not found"), AppNotFound, "App 'x' not found"),
        (me.ResourceExhaustedError("no GPUs available"), CapacityError, "no GPUs available"),
        (me.ConnectionError("Could not connect to the Modal server."), NetworkError, "network"),
        (OSError(101, "Network is unreachable"), NetworkError, "Network is unreachable"),
        (TimeoutError(), DeployTimeout, "timed out"),
        (me.InvalidError("bad\nmulti-line\n  message"), InvalidRequest, "bad multi-line message"),
        (me.Error("something else"), BackendError, "something else"),
        (RuntimeError("weird"), BackendError, "RuntimeError: weird"),
    ]


def test_translate_maps_each_failure_to_one_clear_line():
    for exc, cls, text in _sdk_errors():
        got = translate(exc, modal_env="nope", action="deploy x")
        assert type(got) is cls, (exc, got)
        assert text in str(got) and "\n" not in str(got)


# --- reads and writes through the gRPC stub -------------------------------------------------------


class FakeStub:
    """The few RPCs the backend uses, answering with real protobuf messages."""

    def __init__(self):
        from modal_proto import api_pb2

        self.pb = api_pb2
        self.requests: list[tuple[str, object]] = []
        self.rollback_entry_tag = ""  # the tag Modal puts on v3, the rollback entry

    async def AppList(self, req):
        self.requests.append(("AppList", req))
        pb = self.pb
        return pb.AppListResponse(
            apps=[
                pb.AppListResponse.AppListItem(app_id="ap-ours", name="ours", state=pb.APP_STATE_DEPLOYED),
                pb.AppListResponse.AppListItem(app_id="ap-theirs", name="theirs", state=pb.APP_STATE_DEPLOYED),
                pb.AppListResponse.AppListItem(app_id="ap-gone", name="gone", state=pb.APP_STATE_STOPPED),
                pb.AppListResponse.AppListItem(app_id="ap-eph", description="ephemeral", state=pb.APP_STATE_EPHEMERAL),
            ]
        )

    async def AppGetTags(self, req):
        tags = {"managed-by": "fleetform"} if req.app_id == "ap-ours" else {"team": "x"}
        return self.pb.AppGetTagsResponse(tags=tags)

    async def AppDeploymentHistory(self, req):
        pb = self.pb
        if req.app_id != "ap-ours":
            return pb.AppDeploymentHistoryResponse(app_deployment_histories=[pb.AppDeploymentHistory(version=1)])
        return pb.AppDeploymentHistoryResponse(
            app_deployment_histories=[
                # v3: a rollback to v1. `rollback_allowed` is left unset (false), as a server may send it.
                pb.AppDeploymentHistory(
                    version=3,
                    rollback_version=1,
                    tag=self.rollback_entry_tag,
                    deployment_type=pb.DEPLOYMENT_TYPE_ROLLBACK,
                ),
                pb.AppDeploymentHistory(version=2, tag="ff-bbbbbbbbbbbb"),
                pb.AppDeploymentHistory(version=1, tag="ff-aaaaaaaaaaaa"),
            ],
            production_app_version=3,
        )

    async def AppGetByDeploymentName(self, req):
        self.requests.append(("AppGetByDeploymentName", req))
        pb = self.pb
        if req.name == "ours":
            return pb.AppGetByDeploymentNameResponse(
                app_id="ap-ours",
                environment_name=req.environment_name,
                lifecycle=pb.AppLifecycle(app_state=pb.APP_STATE_DEPLOYED),
            )
        return pb.AppGetByDeploymentNameResponse(environment_name=req.environment_name)

    async def AppRollback(self, req):
        self.requests.append(("AppRollback", req))
        return self.pb.AppRollbackResponse(url="https://x")

    async def AppStop(self, req):
        self.requests.append(("AppStop", req))


@pytest.fixture
def stub(monkeypatch):
    fake = FakeStub()

    async def client(self):
        return SimpleNamespace(_stub=fake)

    monkeypatch.setattr(ModalBackend, "_client", client)
    return fake


def test_list_apps_reads_tags_and_live_version(stub):
    apps = {a.name: a for a in ModalBackend().list_apps(MODAL_ENV)}
    assert set(apps) == {"ours", "theirs"}  # stopped and ephemeral apps are not deployments
    ours = apps["ours"]
    assert ours.managed and ours.version == 3
    assert ours.tag == "ff-aaaaaaaaaaaa"  # the rollback entry runs v1's module
    assert not apps["theirs"].managed
    assert stub.requests[0][1].environment_name == MODAL_ENV


def test_get_app_and_history(stub):
    backend = ModalBackend()
    assert backend.get_app("missing", MODAL_ENV) is None
    assert backend.get_app("ours", MODAL_ENV).tag == "ff-aaaaaaaaaaaa"
    assert [(v.version, v.tag) for v in backend.history("ours", MODAL_ENV)] == [
        (3, "ff-aaaaaaaaaaaa"),
        (2, "ff-bbbbbbbbbbbb"),
        (1, "ff-aaaaaaaaaaaa"),
    ]
    with pytest.raises(AppNotFound, match="no deployed app named missing in Modal environment 'llm-dev'"):
        backend.history("missing", MODAL_ENV)


@pytest.mark.parametrize("entry_tag", ["", "ff-bbbbbbbbbbbb", "rollback-of-v1"])
def test_a_rollback_entry_runs_the_content_of_the_version_it_restored(stub, entry_tag):
    """Whatever tag Modal puts on the rollback entry, the live content is v1's module."""
    stub.rollback_entry_tag = entry_tag
    backend = ModalBackend()
    assert backend.get_app("ours", MODAL_ENV).tag == "ff-aaaaaaaaaaaa"
    assert backend.history("ours", MODAL_ENV)[0].tag == "ff-aaaaaaaaaaaa"


def test_rollback_does_not_depend_on_rollback_allowed(stub, monkeypatch):
    """Modal's client never reads `rollback_allowed`; neither does fleetform: Modal decides."""
    from renderer.deploy.rollback import run_rollback

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    stub.rollback_entry_tag = "ff-aaaaaaaaaaaa"
    report = run_rollback("ours", ModalBackend(), modal_env=MODAL_ENV)
    assert report.ok, report.message
    assert (report.details["to_version"], report.details["to_tag"]) == (2, "ff-bbbbbbbbbbbb")
    report = run_rollback("ours", ModalBackend(), modal_env=MODAL_ENV, to="v1")
    assert report.ok, report.message
    assert [r.version for n, r in stub.requests if n == "AppRollback"] == [2, 1]


def test_rollback_and_stop_send_the_right_requests(stub):
    backend = ModalBackend()
    backend.rollback("ours", MODAL_ENV, 2)
    backend.rollback("ours", MODAL_ENV)
    backend.stop("ours", MODAL_ENV)
    sent = [(n, r) for n, r in stub.requests if n in ("AppRollback", "AppStop")]
    assert [(n, r.app_id) for n, r in sent] == [
        ("AppRollback", "ap-ours"),
        ("AppRollback", "ap-ours"),
        ("AppStop", "ap-ours"),
    ]
    assert [r.version for n, r in sent if n == "AppRollback"] == [2, -1]  # -1: Modal's "previous version"


def test_effective_tags_follow_rollback_chains():
    history = [
        Version(1, "ff-a"),
        Version(2, "ff-b"),
        Version(3, "", rollback_of=1),
        Version(4, "", rollback_of=3),
        Version(5, "", rollback_of=9),  # points at history Modal no longer returns
        Version(6, "ff-b", rollback_of=1),  # tagged by Modal with something else: runs v1's module all the same
        Version(7, "ff-c", rollback_of=9),  # the restored version is gone: its own tag is all there is
    ]
    assert [v.tag for v in effective_tags(history)] == ["ff-a", "ff-b", "ff-a", "ff-a", "", "ff-a", "ff-c"]


# --- staying fast ---------------------------------------------------------------------------------


def test_importing_the_deploy_stack_does_not_import_modal():
    code = (
        "import sys, renderer.deploy.run, renderer.deploy.status, renderer.deploy.rollback, renderer.deploy.destroy, "
        "renderer.plan.live, renderer.modal_api; sys.exit('modal' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env).returncode == 0


def test_a_canary_is_the_same_module_deployed_under_its_own_app_name(apps, fake_sdk):
    """`deploy(name=...)`: what `modal deploy --name` does: the module's App, published as another app."""
    app = apps[1]
    tag = deployment_tag(app)
    canary = spec.canary_app_name(app.deployment.name)
    outcome = ModalBackend().deploy(app, MODAL_ENV, tag, name=canary)
    assert fake_sdk.deploy_app.calls == [(app.deployment.name, canary, MODAL_ENV, tag, "rolling")]
    assert fake_sdk.urls == [(canary, SERVER_NAME, MODAL_ENV)]  # the canary's own URL, for its smoke test
    assert outcome.url == f"https://{canary}.modal.run"
