"""Canary rollouts end to end, offline: the orchestrator (`renderer.deploy.canary`, through `run_deploy`)
against the in-memory backend, with a real gateway in front of two local upstreams, the live app and
its canary, and load running through it. Each time the backend "deploys" the gateway module, the
harness builds a `GatewayApp` with that module's splits (a new container: its counters start at
zero), and the watch reads that gateway's real /metrics text. So a healthy canary, one that fails
requests and one that is slow are told apart by the same figures and the same judge that decide in
production; only Modal itself is the fake. Also: the judge alone, the window over several gateway
containers, Ctrl-C, and a rollout whose fleetform died, finished by `rollback` or by `deploy`."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import random
import threading
import time
from pathlib import Path

import pytest
from test_gateway import ENV, KEY, call

from renderer.codegen.gateway import render_gateway
from renderer.codegen.gateway_app import GatewayApp
from renderer.codegen.render import render_fleet
from renderer.config import spec
from renderer.config.load import load_fleet
from renderer.config.resolve import gateway_from, resolve
from renderer.deploy import traffic as gateway_traffic
from renderer.deploy.app import DEPLOYED, FAILED, ROLLED_BACK, SKIPPED, DeployOptions
from renderer.deploy.canary import abort, canary_traffic_source
from renderer.deploy.progress import NullProgress
from renderer.deploy.run import run_deploy
from renderer.deploy.status import CANARY, run_status
from renderer.deploy.traffic import Histogram, Traffic, Window
from renderer.deploy.verdict import INTERRUPTED, NOT_PROMOTED, PROMOTED, early_failure, judge
from renderer.modal_api import deployment_tag
from renderer.plan.live import Action, live_plan

from fake_backend import FakeBackend, FakeSmoke
from gateway_upstreams import UpstreamConfig, serve_upstream

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"
FLEET_ENV, MODAL_ENV = "dev", "llm-dev"
NAME = "llama-3-1-8b-fp8"
CANARY_APP = spec.canary_app_name(NAME)
MODEL = "llm"  # one of its served names
OLD_TAG = "ff-0ld0ld0ld0ld"


# --- the judge ---------------------------------------------------------------------------------------------


def traffic(requests: int, errors: int = 0, ttft: float | None = 0.04, client_errors: int = 0) -> Traffic:
    """`requests` answers, `errors` of them 503 and `client_errors` 400, each first byte at `ttft` seconds."""
    ok = requests - errors - client_errors
    statuses = {s: n for s, n in ((200, ok), (503, errors), (400, client_errors)) if n}
    hist = None
    if ttft is not None:
        bounds = (0.025, 0.05, 0.1, 0.25, 0.5, float("inf"))
        hist = Histogram(tuple((b, float(requests if ttft <= b else 0)) for b in bounds), ttft * requests)
    return Traffic(requests=requests, statuses=statuses, ttft=hist)


RULE = spec.PromoteIf()  # the schema's defaults: margin 1 point, TTFT p90 within 1.2x, 20 requests


def test_a_canary_like_the_live_version_is_promoted():
    v = judge(traffic(900, errors=9), traffic(100, errors=1), RULE)
    assert v.promote and v.reasons == ()


@pytest.mark.parametrize(
    "canary, reason",
    [
        (traffic(100, errors=3), "error rate 3.0% (3 of 100) is above the live version's 1.0% + the 1.0% margin"),
        (traffic(100, ttft=0.2), "TTFT p90 235 ms is above 1.2 x the live version's 48 ms"),
        (traffic(19), "only 19 request(s) reached the canary (promote_if.min_requests: 20): no evidence that it works"),
    ],
    ids=["errors", "slow", "untried"],
)
def test_a_canary_that_breaks_a_term_is_not_promoted_and_says_why(canary, reason):
    v = judge(traffic(900, errors=9), canary, RULE)
    assert not v.promote and v.reasons == (reason,)


def test_the_error_margin_is_inclusive_and_client_errors_do_not_count():
    # 2% against 1% + 1 point: exactly at the bound passes; a bad prompt (400) is the caller's, not the canary's
    assert judge(traffic(900, errors=9), traffic(100, errors=2, client_errors=30), RULE).promote
    assert not judge(traffic(900, errors=9), traffic(1000, errors=21), RULE).promote


def test_a_latency_term_without_figures_on_one_side_is_noted_not_passed_silently():
    v = judge(traffic(900, ttft=None), traffic(100), RULE)
    assert v.promote and v.notes == ("TTFT p90 not judged: the live version had no answer to measure it on",)
    tpot = spec.PromoteIf(tpot_p90_ratio=1.2)
    v = judge(traffic(900), traffic(100), tpot)
    assert "TPOT p90 not judged: the live version had no answer to measure it on" in v.notes


def test_min_requests_zero_promotes_an_untried_canary_and_early_failure_needs_requests():
    assert judge(traffic(10), traffic(0, ttft=None), spec.PromoteIf(min_requests=0)).promote
    assert early_failure(traffic(900), traffic(19, errors=19), RULE) is None  # 19 < min_requests
    assert early_failure(traffic(900), traffic(20, errors=20), RULE).startswith("error rate 100.0%")
    assert early_failure(traffic(900), traffic(100, ttft=5.0), RULE) is None  # latency waits for the end


# --- the window over the gateway's containers ----------------------------------------------------------------


def scrape(container: str, since: float, at: float, ok: int, errors: int = 0) -> gateway_traffic.GatewayTraffic:
    lines = [
        f'fleetform_gateway_info{{container="{container}"}} 1',
        f"fleetform_gateway_start_time_seconds {since}",
        f'fleetform_gateway_requests_total{{model="llm",upstream="{NAME}",status="200"}} {ok}',
        f'fleetform_gateway_requests_total{{model="llm",upstream="{NAME}",status="502"}} {errors}',
    ]
    return gateway_traffic.parse("\n".join(lines), now=at)


def test_the_window_counts_each_container_from_its_first_scrape_and_new_ones_whole():
    w = Window(start=1000.0)
    w.add(scrape("a", since=500.0, at=1001.0, ok=70))  # an old container: its 70 came before the window
    w.add(scrape("b", since=1002.0, at=1003.0, ok=5, errors=1))  # started in the window: all of it counts
    w.add(scrape("a", since=500.0, at=1010.0, ok=100, errors=2))
    w.add(scrape("b", since=1002.0, at=1011.0, ok=9, errors=1))
    live = w.upstream(NAME)
    assert (live.requests, live.errors, w.containers) == (30 + 2 + 9 + 1, 3, 2)
    # container a restarted (new start time): a new container, first met after the window started
    w.add(scrape("a", since=1012.0, at=1013.0, ok=4))
    assert w.upstream(NAME).requests == 42 + 4
    assert w.upstream(CANARY_APP).requests == 0


# --- the harness: a real gateway in front of local upstreams ---------------------------------------------------


class Harness:
    """The gateway the fake backend deploys: each deploy of the gateway module is a new `GatewayApp` (a new
    container) built with that module's splits, routing `MODEL` to the live upstream and, under a split,
    to the canary upstream. Load runs through whichever app is current; `source` scrapes its /metrics."""

    def __init__(self, live: UpstreamConfig, canary: UpstreamConfig, gateway_name: str):
        self.gateway_name = gateway_name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()
        self.live, self.canary = self._run(self._start(live, canary))
        self.apps: list[GatewayApp] = []
        self.app = self._build({})
        self.stopping = threading.Event()
        self.sent = 0
        self.load = asyncio.run_coroutine_threadsafe(self._load(), self.loop)

    def _run(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, live, canary):
        return (
            await self.stack.enter_async_context(serve_upstream(live)),
            await self.stack.enter_async_context(serve_upstream(canary)),
        )

    def _build(self, splits: dict) -> GatewayApp:
        table = {NAME: {"app": NAME, "url": self.live.url, "auth": "none"}}
        if splits:
            table[CANARY_APP] = {"app": CANARY_APP, "url": self.canary.url, "auth": "none"}
        app = GatewayApp.from_table(table, {MODEL: NAME}, splits=splits, rng=random.Random(7), environ=ENV)
        self.apps.append(app)
        return app

    def on_deploy(self, name: str, module) -> None:
        if name == self.gateway_name:
            time.sleep(0.01)  # a new container's start time differs from the last one's
            self.app = self._build(
                {s.deployment: [[s.deployment, 100 - s.weight], [s.canary, s.weight]] for s in module.splits}
            )

    async def _load(self) -> None:
        """Four callers, each sending one request after the other; bounded in count, and stopped by close()."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

        async def caller() -> None:
            while not self.stopping.is_set() and self.sent < 20000:
                self.sent += 1
                await call(self.app, "POST", "/v1/chat/completions", body)

        await asyncio.gather(*(caller() for _ in range(4)))

    def source(self) -> gateway_traffic.GatewayTraffic:
        answer = self._run(call(self.app, "GET", "/metrics", key=KEY))
        assert answer.status == 200, answer.body
        return gateway_traffic.parse(answer.body.decode())

    def close(self) -> None:
        self.stopping.set()
        self.load.result(20)

        async def shut():
            for app in self.apps:
                await app.aclose()
            await self.stack.aclose()

        self._run(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def fleet():
    resolved = resolve(load_fleet([str(DEPLOYMENTS)]), FLEET_ENV)
    assert resolved.ok, resolved.diagnostics
    apps = render_fleet(resolved.deployments)
    gateway = render_gateway(resolved.deployments, gateway_from({"enabled": True}))
    return apps, gateway


def live_fleet(fleet) -> FakeBackend:
    """Everything live at its rendered version (the gateway too), except NAME, which runs an older one."""
    apps, gateway = fleet
    b = FakeBackend()
    for a in apps:
        b.add_live(a.name, OLD_TAG if a.name == NAME else deployment_tag(a), env=MODAL_ENV, versions=2)
    b.add_live(gateway.name, deployment_tag(gateway), env=MODAL_ENV)
    return b


@pytest.fixture
def harness(fleet, request):
    live, canary = request.param if hasattr(request, "param") else (UpstreamConfig("live"), UpstreamConfig("canary"))
    h = Harness(live, canary, fleet[1].name)
    yield h
    h.close()


def deploy(fleet, backend, options: dict, **run):
    """run_deploy of the fleet's apps with its gateway, `--yes --only NAME` in MODAL_ENV and smoke tests
    that pass, unless `options` (DeployOptions) or `run` (run_deploy's keywords) say otherwise."""
    apps, gateway = fleet
    options = {"yes": True, "only": (NAME,), "modal_env": MODAL_ENV, **options}
    run = {"gateway": gateway, "smoke_tester": FakeSmoke(), "progress": NullProgress(), **run}
    return run_deploy(apps, backend, DeployOptions(**options), **run)


def rollout(fleet, backend, harness, *, cancel=None, **options):
    """A canary rollout against the harness: its upstreams answer, its gateway's /metrics is watched."""
    backend.on_deploy_module = harness.on_deploy
    options = {"canary_weight": 50, "canary_duration": 2, "watch_interval": 0.1, **options}
    return deploy(fleet, backend, options, traffic_source=harness.source, cancel=cancel)


def deploys(backend) -> list[tuple[str, str]]:
    return [(c[1], c[3]) for c in backend.calls_of("deploy")]


def live_tag(backend, name: str) -> str | None:
    app = backend.get_app(name, MODAL_ENV)
    return app.tag if app else None


HEALTHY = (UpstreamConfig("live", [MODEL], answer_delay=0.03), UpstreamConfig("canary", [MODEL], answer_delay=0.03))


@pytest.mark.parametrize("harness", [HEALTHY], indirect=True)
def test_a_healthy_canary_is_promoted(fleet, harness):
    apps, gateway = fleet
    app = next(a for a in apps if a.name == NAME)
    b = live_fleet(fleet)
    report = rollout(fleet, b, harness, canary_duration=2)
    r = report.results[0]
    assert (r.status, r.error) == (DEPLOYED, None), report.to_dict()
    c = r.canary
    assert c.outcome == PROMOTED and c.verdict.promote and c.stopped
    assert c.verdict.canary.requests >= 20 and c.verdict.live.requests >= 20
    split = gateway.with_splits([gateway_split(NAME, 50)])
    tag = deployment_tag(app)
    # the Modal calls, in order: the canary app, the split gateway, the live app, the plain gateway
    assert deploys(b) == [
        (CANARY_APP, tag),
        (gateway.name, deployment_tag(split)),
        (NAME, tag),
        (gateway.name, deployment_tag(gateway)),
    ]
    assert b.calls_of("stop") == [("stop", CANARY_APP, MODAL_ENV)]
    assert b.stage_calls[-1] == ("stage", NAME, MODAL_ENV)  # staged before any GPU app of it started
    assert (live_tag(b, NAME), live_tag(b, gateway.name), live_tag(b, CANARY_APP)) == (
        tag,
        deployment_tag(gateway),
        None,
    )
    # the canary app is the live app's module, byte for byte, under another name
    assert [m for n, m in b.deployed if n == CANARY_APP] == [app]
    assert report.exit_code == 0


def gateway_split(name, weight):
    from renderer.codegen.gateway import Split

    return Split(name, weight)


FAILING = (UpstreamConfig("live", [MODEL]), UpstreamConfig("canary", [MODEL], require_headers={"x-never": "sent"}))


@pytest.mark.parametrize("harness", [FAILING], indirect=True)
def test_a_canary_that_fails_requests_is_rolled_back_before_its_time_is_up(fleet, harness):
    _, gateway = fleet
    b = live_fleet(fleet)
    t0 = time.monotonic()
    report = rollout(fleet, b, harness, canary_duration=30)
    r = report.results[0]
    assert time.monotonic() - t0 < 15  # failed on its errors, not after the 30 s
    assert (r.status, r.recovery) == (FAILED, ROLLED_BACK)
    assert r.canary.outcome == NOT_PROMOTED and r.canary.stopped
    assert r.error.startswith("canary not promoted: error rate 100.0%")
    # the live app never changed; the gateway is back to its own module; the canary is gone
    assert NAME not in [n for n, _ in deploys(b)]
    assert (live_tag(b, NAME), live_tag(b, gateway.name), live_tag(b, CANARY_APP)) == (
        OLD_TAG,
        deployment_tag(gateway),
        None,
    )
    assert report.exit_code == 1
    assert "rolled back" in r.recovery_detail or "live version" in r.recovery_detail


SLOW = (UpstreamConfig("live", [MODEL], answer_delay=0.03), UpstreamConfig("canary", [MODEL], answer_delay=0.2))


@pytest.mark.parametrize("harness", [SLOW], indirect=True)
def test_a_slow_canary_is_rolled_back_at_the_end(fleet, harness):
    b = live_fleet(fleet)
    report = rollout(fleet, b, harness, canary_duration=2)
    r = report.results[0]
    assert (r.status, r.recovery, r.canary.outcome) == (FAILED, ROLLED_BACK, NOT_PROMOTED)
    assert any(reason.startswith("TTFT p90") for reason in r.canary.verdict.reasons), r.canary.verdict.reasons
    assert not any("error rate" in reason for reason in r.canary.verdict.reasons)
    assert r.canary.watched_seconds >= 2
    assert live_tag(b, NAME) == OLD_TAG and live_tag(b, CANARY_APP) is None


def test_ctrl_c_during_the_watch_promotes_nothing_and_returns_the_traffic(fleet, harness):
    _, gateway = fleet
    b = live_fleet(fleet)
    cancel = threading.Event()
    threading.Timer(0.8, cancel.set).start()
    report = rollout(fleet, b, harness, canary_duration=60, cancel=cancel)
    r = report.results[0]
    assert r.canary.outcome == INTERRUPTED and r.status == FAILED and r.recovery == ROLLED_BACK
    assert report.interrupted and report.exit_code == 1
    assert (live_tag(b, NAME), live_tag(b, gateway.name), live_tag(b, CANARY_APP)) == (
        OLD_TAG,
        deployment_tag(gateway),
        None,
    )


class Died(BaseException):
    """fleetform's process ending mid-rollout (a kill, a crash): nothing after it runs."""


def die_mid_watch(harness):
    real = harness.source
    calls = []

    def source():
        calls.append(1)
        if len(calls) > 3:
            raise Died()
        return real()

    return source


def test_a_rollout_whose_fleetform_died_shows_in_status_and_rollback_ends_it(fleet, harness, monkeypatch):
    apps, gateway = fleet
    b = live_fleet(fleet)
    harness_source = die_mid_watch(harness)
    monkeypatch.setattr(harness, "source", harness_source)
    with pytest.raises(Died):
        rollout(fleet, b, harness, canary_duration=60)
    # what Modal holds now: the canary beside the live app, the gateway splitting
    assert live_tag(b, CANARY_APP) == deployment_tag(next(a for a in apps if a.name == NAME))
    assert live_tag(b, gateway.name) != deployment_tag(gateway)
    rows = {r.name: r for r in live_plan(apps, b, MODAL_ENV, gateway)}
    assert rows[CANARY_APP].action == Action.CANARY and rows[CANARY_APP].canary_of == NAME
    status = run_status(apps, b, MODAL_ENV, gateway, environ={})
    row = next(r for r in status.rows if r.name == CANARY_APP)
    assert (row.state, row.canary_of) == (CANARY, NAME)
    ended = abort(NAME, MODAL_ENV, b, gateway, MODAL_ENV)
    assert ended.ok and "canary" in ended.message
    assert (live_tag(b, NAME), live_tag(b, gateway.name), live_tag(b, CANARY_APP)) == (
        OLD_TAG,
        deployment_tag(gateway),
        None,
    )
    assert abort(NAME, MODAL_ENV, b, gateway, MODAL_ENV) is None  # nothing left to end


@pytest.mark.parametrize("harness", [HEALTHY], indirect=True)
def test_deploy_canary_resumes_a_rollout_whose_fleetform_died(fleet, harness, monkeypatch):
    apps, gateway = fleet
    b = live_fleet(fleet)
    real_source = harness.source
    monkeypatch.setattr(harness, "source", die_mid_watch(harness))
    with pytest.raises(Died):
        rollout(fleet, b, harness, canary_duration=60)
    monkeypatch.setattr(harness, "source", real_source)
    before = len(deploys(b))
    report = rollout(fleet, b, harness, canary_duration=2)
    r = report.results[0]
    assert r.status == DEPLOYED and r.canary.resumed and r.canary.outcome == PROMOTED
    tag = deployment_tag(next(a for a in apps if a.name == NAME))
    # the canary already ran the wanted version and the gateway already split: neither is deployed again
    assert deploys(b)[before:] == [(NAME, tag), (gateway.name, deployment_tag(gateway))]
    assert live_tag(b, CANARY_APP) is None and live_tag(b, NAME) == tag


def test_a_plain_deploy_finishes_a_rollout_left_unfinished_the_yamls_way(fleet, harness, monkeypatch):
    apps, gateway = fleet
    b = live_fleet(fleet)
    monkeypatch.setattr(harness, "source", die_mid_watch(harness))
    with pytest.raises(Died):
        rollout(fleet, b, harness, canary_duration=60)
    report = deploy(fleet, b, {"only": ()})
    assert report.ok, report.to_dict()
    assert (live_tag(b, NAME), live_tag(b, gateway.name), live_tag(b, CANARY_APP)) == (
        deployment_tag(next(a for a in apps if a.name == NAME)),
        deployment_tag(gateway),
        None,
    )
    assert any(n.startswith(f"{CANARY_APP}: stopped the canary") for n in report.notes), report.notes


# --- refusals: nothing is deployed ------------------------------------------------------------------------------


def test_a_canary_without_the_gateway_is_refused_before_anything_deploys(fleet):
    b = live_fleet(fleet)
    report = deploy(fleet, b, {"canary_weight": 10, "modal_env": None}, gateway=None)
    assert report.error.startswith(f"a canary of {NAME} needs the fleet's gateway")
    assert "Modal's own URL has none" in report.error and not b.calls_of("deploy") and report.exit_code == 1


def test_a_canary_without_the_metrics_key_is_refused(fleet):
    b = live_fleet(fleet)
    report = deploy(fleet, b, {"canary_weight": 10}, environ={})
    assert "FLEETFORM_GATEWAY_METRICS_KEY" in report.error and not b.calls_of("deploy")


def test_a_canary_while_the_gateway_changes_too_is_refused(fleet):
    apps, gateway = fleet
    b = live_fleet(fleet)
    b.add_live(gateway.name, "ff-0thergateway", env=MODAL_ENV)
    report = deploy(
        fleet, b, {"only": (), "canary_weight": 10}, traffic_source=lambda: gateway_traffic.GatewayTraffic(None, None)
    )
    assert report.error.startswith(f"the gateway {gateway.name} changes too") and not b.calls_of("deploy")


def test_a_first_deploy_asked_as_a_canary_is_deployed_directly_and_says_so(fleet, harness):
    apps, gateway = fleet
    b = live_fleet(fleet)
    b.apps.pop((MODAL_ENV, NAME))
    report = rollout(fleet, b, harness)
    assert report.results[0].status == DEPLOYED and report.results[0].canary is None
    assert report.notes == [f"{NAME}: first deploy, so no canary (there is no live version to compare it with)"]
    assert CANARY_APP not in [n for n, _ in deploys(b)]


def test_a_canary_that_fails_its_smoke_test_never_gets_traffic(fleet, harness):
    apps, gateway = fleet
    b = live_fleet(fleet)
    b.on_deploy_module = harness.on_deploy
    smoke = FakeSmoke()
    real = smoke.__call__

    def failing_canary(app, url):
        return real(app, url) if "canary" not in url else type(real(app, url))(False, "health: not healthy")

    report = deploy(fleet, b, {"canary_weight": 10}, smoke_tester=failing_canary, traffic_source=harness.source)
    r = report.results[0]
    assert r.status == FAILED and r.error == "canary smoke test failed: health: not healthy"
    assert deploys(b) == [(CANARY_APP, deployment_tag(next(a for a in apps if a.name == NAME)))]  # no split
    assert live_tag(b, CANARY_APP) is None and live_tag(b, NAME) == OLD_TAG


def test_a_dry_run_shows_the_canary_it_would_run(fleet, harness):
    b = live_fleet(fleet)
    report = rollout(fleet, b, harness, dry_run=True, canary_weight=25, canary_duration=900)
    r = report.results[0]
    assert r.status == "planned" and r.canary.to_dict()["weight"] == 25 and r.canary.duration == 900
    assert not b.calls_of("deploy") and r.status != SKIPPED


# --- the real scrape ------------------------------------------------------------------------------------------


def test_the_traffic_source_scrapes_the_gateway_url_modal_reports_with_the_key():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = b'fleetform_gateway_info{container="ta-1"} 1\nfleetform_gateway_start_time_seconds 5\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        b = FakeBackend()
        b.add_live("gw", "ff-1", env=MODAL_ENV)
        b.web_url = lambda name, env: f"http://127.0.0.1:{server.server_address[1]}" if name == "gw" else None
        source = canary_traffic_source(b, "gw", MODAL_ENV, "secret-key")
        assert (source().container, source().since) == ("ta-1", 5.0)
        assert seen == [("/metrics", "Bearer secret-key")] * 2
        missing = canary_traffic_source(b, "no-such-gateway", MODAL_ENV, "k")
        with pytest.raises(OSError, match="Modal reports no URL for the gateway no-such-gateway"):
            missing()
    finally:
        server.shutdown()
        server.server_close()


# --- through the real CLI (in-process, the in-memory backend behind modal_api) -------------------------------


@pytest.fixture
def cli_backend(monkeypatch):
    from renderer import modal_api

    from conftest import REPO

    monkeypatch.chdir(REPO)
    fake = FakeBackend()
    monkeypatch.setattr(modal_api, "default_backend", lambda: fake)
    monkeypatch.setattr(modal_api, "credentials_available", lambda environ=None: True)
    return fake


def gateway_fleet(tmp_path: Path) -> Path:
    """The example fleet with the gateway enabled."""
    import shutil

    folder = tmp_path / "deployments"
    shutil.copytree(DEPLOYMENTS, folder)
    fleet_yaml = folder / "fleet.yaml"
    fleet_yaml.write_text(fleet_yaml.read_text() + "\ngateway:\n  enabled: true\n")
    return folder


def test_cli_deploy_canary_without_the_gateway_is_one_line_and_exit_1(cli_backend, capsys):
    from renderer import cli

    cli_backend.add_live(NAME, OLD_TAG, env=MODAL_ENV)
    code = cli.main(["deploy", "--env", FLEET_ENV, "--only", NAME, "--canary", "10%", "--yes"])
    _, err = capsys.readouterr()
    assert code == 1 and not cli_backend.calls_of("deploy")
    assert err.startswith(f"error: a canary of {NAME} needs the fleet's gateway") and "Traceback" not in err


def test_cli_rollback_ends_a_canary_left_running(cli_backend, capsys, tmp_path):
    from renderer import cli

    folder = gateway_fleet(tmp_path)
    resolved = resolve(load_fleet([str(folder)]), FLEET_ENV)
    gateway = render_gateway(resolved.deployments, resolved.gateway, source=resolved.fleet_file)
    app = next(a for a in render_fleet(resolved.deployments) if a.name == NAME)
    cli_backend.add_live(NAME, OLD_TAG, env=MODAL_ENV, versions=2)
    cli_backend.add_live(CANARY_APP, deployment_tag(app), env=MODAL_ENV)
    split = gateway.with_splits([gateway_split(NAME, 10)])
    cli_backend.add_live(gateway.name, deployment_tag(split), env=MODAL_ENV)
    code = cli.main(["rollback", NAME, str(folder), "--env", FLEET_ENV])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"ended the canary rollout of {NAME}" in " ".join(out.split())
    assert (live_tag(cli_backend, NAME), live_tag(cli_backend, gateway.name), live_tag(cli_backend, CANARY_APP)) == (
        OLD_TAG,
        deployment_tag(gateway),
        None,
    )
    assert not cli_backend.calls_of("rollback")  # the live app was not touched


def test_cli_status_shows_a_canary_in_progress_with_its_share(cli_backend, capsys, tmp_path, monkeypatch):
    from renderer import cli
    from renderer.deploy import traffic as traffic_mod

    folder = gateway_fleet(tmp_path)
    resolved = resolve(load_fleet([str(folder)]), FLEET_ENV)
    app = next(a for a in render_fleet(resolved.deployments) if a.name == NAME)
    cli_backend.add_live(NAME, OLD_TAG, env=MODAL_ENV)
    cli_backend.add_live(CANARY_APP, deployment_tag(app), env=MODAL_ENV)
    cli_backend.add_live(resolved.gateway.name, "ff-5p1175p1175p", env=MODAL_ENV)
    metrics = (
        f'fleetform_gateway_route_weight{{deployment="{NAME}",upstream="{NAME}"}} 90\n'
        f'fleetform_gateway_route_weight{{deployment="{NAME}",upstream="{CANARY_APP}"}} 10\n'
        f'fleetform_gateway_requests_total{{model="llm",upstream="{CANARY_APP}",status="200"}} 12\n'
    )
    monkeypatch.setattr(traffic_mod, "fetch", lambda url, key, timeout=10.0: traffic_mod.parse(metrics))
    monkeypatch.setenv("FLEETFORM_GATEWAY_METRICS_KEY", "k")
    assert cli.main(["status", str(folder), "--env", FLEET_ENV, "--format", "json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    row = next(r for r in doc["deployments"] if r["name"] == CANARY_APP)
    assert (row["state"], row["canary_of"]) == ("canary", NAME)
    assert doc["traffic"]["weights"][NAME] == {NAME: 90, CANARY_APP: 10}
    monkeypatch.setenv("COLUMNS", "300")  # the table's cells on one line each
    assert cli.main(["status", str(folder), "--env", FLEET_ENV]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"canary of {NAME} (10%)" in text and f"the gateway sends it 10% of {NAME}'s requests" in text


def test_a_canary_whose_gateway_smoke_test_cannot_pass_is_refused_before_anything_deploys(fleet, harness):
    _, gateway = fleet
    b = live_fleet(fleet)
    run = {"smoke_tester": FakeSmoke(preflight_failing={gateway.name}), "traffic_source": harness.source}
    report = deploy(fleet, b, {"canary_weight": 10}, **run)
    assert report.error == (
        f"a canary rollout deploys the gateway {gateway.name}, whose smoke test cannot pass: no proxy token"
    )
    assert not b.calls_of("deploy") and not b.stage_calls
