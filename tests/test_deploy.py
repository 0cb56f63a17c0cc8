"""The deploy orchestrator against an in-memory backend: planning, parallelism, smoke-test
recovery, Ctrl-C, status, rollback and destroy. Nothing here talks to Modal."""

from __future__ import annotations

import _thread
import asyncio
import io
import json
import signal
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from renderer import modal_api
from renderer.codegen.render import render_fleet
from renderer.config.load import load_fleet
from renderer.config.resolve import gateway_from, resolve
from renderer.deploy.destroy import run_destroy
from renderer.deploy.progress import NullProgress, RichProgress
from renderer.deploy.rollback import run_rollback
from renderer.deploy.run import (
    DEPLOYED,
    FAILED,
    KEPT,
    PLANNED,
    ROLLED_BACK,
    SKIPPED,
    STOPPED,
    UNCHANGED,
    DeployOptions,
    run_deploy,
)
from renderer.deploy.smoke import ClientSmokeTester
from renderer.deploy.status import run_status
from renderer.modal_api import (
    NO_CREDENTIALS,
    CapacityError,
    EnvironmentNotFound,
    NetworkError,
    Version,
    deployment_tag,
)
from renderer.plan.live import Action, live_plan, modal_env_for, plan_exit_code, render_plan

from fake_backend import FakeBackend, FakeSmoke

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"
FLEET_ENV = "dev"  # the example fleet's `dev` environment (`--env dev`)...
MODAL_ENV = "llm-dev"  # ...deploys into this Modal environment: a mix-up of the two fails


@pytest.fixture(scope="module")
def apps():
    resolved = resolve(load_fleet([str(DEPLOYMENTS)]), FLEET_ENV)
    assert resolved.ok, resolved.diagnostics
    rendered = render_fleet(resolved.deployments)
    assert len(rendered) >= 4 and all(a.deployment.modal_env == MODAL_ENV for a in rendered)
    return rendered


def names(apps):
    return [a.deployment.name for a in apps]


def live_all(backend, apps, *, stale=()):
    """Make every app live: with its current tag, or an older one for the names in `stale`."""
    for a in apps:
        n = a.deployment.name
        backend.add_live(n, "ff-000000000000" if n in stale else deployment_tag(a), env=MODAL_ENV, versions=2)


def deploy(backend, apps, smoke=None, gateway=None, **options):
    options.setdefault("yes", True)
    return run_deploy(
        apps,
        backend,
        DeployOptions(**options),
        gateway=gateway,
        smoke_tester=smoke or FakeSmoke(),
        progress=NullProgress(),
    )


def text(report) -> str:
    out = io.StringIO()
    report.render(Console(file=out, width=200))
    return out.getvalue()


# --- planning -------------------------------------------------------------------------------------


def test_tag_is_the_short_hash_and_a_valid_modal_tag(apps):
    tag = deployment_tag(apps[0])
    assert tag == "ff-" + apps[0].short_hash
    assert len(tag) <= 50 and tag.replace("-", "").isalnum()


def test_live_plan_actions(apps):
    b = FakeBackend()
    a0, a1, a2, a3 = (a.deployment.name for a in apps[:4])
    b.add_live(a0, deployment_tag(apps[0]), env=MODAL_ENV)
    b.add_live(a1, "ff-000000000000", env=MODAL_ENV)
    b.add_live(a2, "hand-made", env=MODAL_ENV, managed=False)
    b.add_live("retired-model", "ff-111111111111", env=MODAL_ENV)
    b.add_live("someone-elses-app", "", env=MODAL_ENV, managed=False)
    rows = live_plan(apps, b)
    actions = {r.name: r.action for r in rows}
    assert actions == {
        a0: Action.UNCHANGED,
        a1: Action.UPDATE,
        a2: Action.CONFLICT,
        a3: Action.CREATE,
        "retired-model": Action.ORPHAN,
    }
    assert plan_exit_code(rows) == 2
    unchanged_only = [r for r in rows if r.action in (Action.UNCHANGED, Action.ORPHAN)]
    assert plan_exit_code(unchanged_only) == 0  # orphans alone are not changes `deploy` would make
    out = io.StringIO()
    render_plan(rows, Console(file=out, width=200))
    assert "retired-model" in out.getvalue() and "fleetform destroy retired-model" in out.getvalue()


# --- deploying ------------------------------------------------------------------------------------


def test_unchanged_deployments_cause_no_deploy_call(apps):
    b = FakeBackend()
    live_all(b, apps)
    report = deploy(b, apps)
    assert b.calls_of("deploy") == []
    assert report.names(UNCHANGED) == names(apps)
    assert report.exit_code == 0


def test_only_changed_deployments_are_deployed_with_their_tag(apps):
    b = FakeBackend()
    live_all(b, apps[1:], stale=[apps[1].deployment.name])
    smoke = FakeSmoke()
    report = deploy(b, apps, smoke, strategy="recreate")
    deployed = {c[1]: c for c in b.calls_of("deploy")}
    assert set(deployed) == {apps[0].deployment.name, apps[1].deployment.name}
    for a in apps[:2]:
        assert deployed[a.deployment.name] == ("deploy", a.deployment.name, MODAL_ENV, deployment_tag(a), "recreate")
    assert {r.name: r.action for r in report.results if r.status == DEPLOYED} == {
        apps[0].deployment.name: Action.CREATE,
        apps[1].deployment.name: Action.UPDATE,
    }
    assert sorted(n for n, _ in smoke.tested) == sorted(deployed)
    assert report.exit_code == 0
    assert b.get_app(apps[1].deployment.name, MODAL_ENV).tag == deployment_tag(apps[1])


def test_two_changed_deployments_deploy_in_parallel(apps):
    delay = 0.4
    b = FakeBackend(deploy_delay=delay)
    live_all(b, apps[2:])  # the first two are new
    t0 = time.monotonic()
    report = deploy(b, apps, parallel=4)
    wall = time.monotonic() - t0
    assert report.names(DEPLOYED) == names(apps[:2])
    assert b.max_concurrent == 2
    assert wall < delay * 1.6, f"two deploys took {wall:.2f}s: not parallel"


def test_parallel_one_deploys_one_at_a_time(apps):
    delay = 0.15
    b = FakeBackend(deploy_delay=delay)
    t0 = time.monotonic()
    deploy(b, apps[:3], parallel=1)
    assert time.monotonic() - t0 >= 3 * delay
    assert b.max_concurrent == 1


def test_smoke_failure_rolls_back_that_app_only(apps):
    b = FakeBackend()
    live_all(b, apps, stale=names(apps[:2]))
    bad, good = apps[0].deployment.name, apps[1].deployment.name
    report = deploy(b, apps, FakeSmoke(failing={bad}))
    assert b.calls_of("rollback") == [("rollback", bad, MODAL_ENV, 2)]  # the version live before
    assert b.calls_of("stop") == []
    by_name = {r.name: r for r in report.results}
    assert by_name[bad].status == FAILED and by_name[bad].recovery == ROLLED_BACK
    assert by_name[good].status == DEPLOYED
    assert b.get_app(bad, MODAL_ENV).tag == "ff-000000000000"  # the rollback restored the old tag
    assert report.exit_code == 1
    out = text(report)
    assert "rolled back to v2" in out and "smoke test failed" in out
    assert f"1 deployed ({good})" in out and f"1 failed ({bad})" in out


def test_first_deploy_that_fails_its_smoke_test_is_stopped(apps):
    b = FakeBackend()
    name = apps[0].deployment.name
    report = deploy(b, apps[:1], FakeSmoke(failing={name}))
    assert b.calls_of("stop") == [("stop", name, MODAL_ENV)]
    assert b.calls_of("rollback") == []
    assert report.results[0].recovery == STOPPED
    assert b.get_app(name, MODAL_ENV) is None
    assert report.exit_code == 1


def test_no_rollback_keeps_the_failing_version(apps):
    b = FakeBackend()
    live_all(b, apps[:1], stale=names(apps[:1]))
    report = deploy(b, apps[:1], FakeSmoke(failing=set(names(apps[:1]))), rollback=False)
    assert b.calls_of("rollback") == [] and b.calls_of("stop") == []
    assert report.results[0].recovery == KEPT
    assert b.get_app(apps[0].deployment.name, MODAL_ENV).tag == deployment_tag(apps[0])
    assert "--no-rollback" in text(report)
    assert report.exit_code == 1


def _summary_version(report, name) -> str:
    """The Version cell of `name`'s row in the text summary."""
    row = next(line for line in text(report).splitlines() if line.strip("│ ").startswith(name))
    return [cell.strip() for cell in row.split("│")][5]


@pytest.mark.parametrize(
    "rollback, failing, shown",
    [
        (False, True, "new"),  # --no-rollback: the failing new version stays live
        (True, True, "old"),  # rolled back
        (True, False, "new"),  # deployed
    ],
)
def test_summary_version_is_the_one_live_after_the_run(apps, rollback, failing, shown):
    b = FakeBackend()
    name = apps[0].deployment.name
    live_all(b, apps[:1], stale=[name])
    report = deploy(b, apps[:1], FakeSmoke(failing={name} if failing else set()), rollback=rollback)
    expected = {"new": deployment_tag(apps[0]), "old": "ff-000000000000"}[shown]
    assert b.get_app(name, MODAL_ENV).tag == expected  # what Modal runs...
    assert _summary_version(report, name) == expected  # ...is what the table says
    assert report.to_dict()["deployments"][0]["tag"] == deployment_tag(apps[0])


def test_summary_version_after_a_stopped_first_deploy_is_none(apps):
    b = FakeBackend()
    name = apps[0].deployment.name
    report = deploy(b, apps[:1], FakeSmoke(failing={name}))
    assert report.results[0].recovery == STOPPED and _summary_version(report, name) == "-"


def test_failed_rollback_is_reported(apps):
    b = FakeBackend()
    live_all(b, apps[:1], stale=names(apps[:1]))
    b.rollback_error = NetworkError("roll back x: cannot reach Modal (boom): check the network connection and retry")
    report = deploy(b, apps[:1], FakeSmoke(failing=set(names(apps[:1]))))
    assert report.results[0].recovery == "recovery_failed"
    assert "rollback FAILED" in text(report)


def test_one_failing_deployment_does_not_stop_the_others(apps):
    b = FakeBackend()
    bad = apps[1].deployment.name
    b.deploy_errors[bad] = CapacityError(f"deploy {bad}: Modal refused for lack of quota or capacity (no H100)")
    report = deploy(b, apps, parallel=1)
    assert report.names(FAILED) == [bad]
    assert report.names(DEPLOYED) == [n for n in names(apps) if n != bad]
    assert b.calls_of("rollback") == [] and b.calls_of("stop") == []  # nothing was published
    summary = report.to_dict()["summary"]
    assert summary["failed"] == [bad] and bad not in summary["deployed"]
    assert "quota" in report.results[1].error
    json.dumps(report.to_dict())  # serializable


def test_fail_fast_starts_nothing_after_a_failure(apps):
    b = FakeBackend()
    first = apps[0].deployment.name
    b.deploy_errors[first] = CapacityError("no GPUs")
    report = deploy(b, apps, parallel=1, fail_fast=True)
    assert b.started == [first]
    assert report.names(SKIPPED) == names(apps[1:])
    assert report.stopped_early and report.exit_code == 1
    assert "--fail-fast" in text(report)


def test_dry_run_deploys_nothing(apps):
    b = FakeBackend()
    live_all(b, apps[1:], stale=names(apps[1:2]))
    report = deploy(b, apps, dry_run=True)
    assert b.calls_of("deploy") == []
    assert report.names(PLANNED) == names(apps[:2])
    assert report.exit_code == 0


def test_only_limits_the_deploy_and_rejects_unknown_names(apps):
    b = FakeBackend()
    target = apps[2].deployment.name
    b.add_live("retired-model", "ff-1", env=MODAL_ENV)
    report = deploy(b, apps, only=(target,))
    assert [c[1] for c in b.calls_of("deploy")] == [target]
    assert report.orphans == []  # a partial deploy says nothing about the rest of the environment
    bad = deploy(FakeBackend(), apps, only=("nope",))
    assert bad.exit_code == 2 and "nope" in bad.error  # a usage error


def test_unmanaged_app_of_the_same_name_is_not_overwritten(apps):
    b = FakeBackend()
    name = apps[0].deployment.name
    b.add_live(name, "", env=MODAL_ENV, managed=False)
    report = deploy(b, apps[:1])
    assert b.calls_of("deploy") == []
    assert report.results[0].status == FAILED and "does not manage" in report.results[0].error
    assert "deploy with --adopt to take it over" in report.results[0].error  # the flag that does it
    assert plan_exit_code(live_plan(apps[:1], b)) == 2


def test_adopt_takes_over_an_unmanaged_app_of_the_same_name(apps):
    b = FakeBackend()
    name = apps[0].deployment.name
    b.add_live(name, "", env=MODAL_ENV, managed=False, versions=2)
    adopted = deploy(b, apps[:1], adopt=True)
    assert adopted.names(DEPLOYED) == [name] and adopted.results[0].action == Action.UPDATE
    assert b.calls_of("deploy") == [("deploy", name, MODAL_ENV, deployment_tag(apps[0]), "rolling")]
    assert b.get_app(name, MODAL_ENV).managed  # the module's App tag makes it ours from now on
    assert live_plan(apps[:1], b)[0].action == Action.UNCHANGED
    assert deploy(b, apps[:1]).names(UNCHANGED) == [name]


def test_adopted_app_that_fails_its_smoke_test_goes_back_to_the_version_taken_over(apps):
    b = FakeBackend()
    name = apps[0].deployment.name
    b.add_live(name, "hand-made", env=MODAL_ENV, managed=False, versions=2)
    report = deploy(b, apps[:1], FakeSmoke(failing={name}), adopt=True)
    assert report.results[0].recovery == ROLLED_BACK and b.calls_of("rollback") == [("rollback", name, MODAL_ENV, 2)]
    assert b.calls_of("stop") == []  # never stopped: it was someone's running app


def test_credentials_missing_gives_one_line_error(apps):
    b = FakeBackend(credentials=False)
    report = deploy(b, apps)
    assert report.error == NO_CREDENTIALS and report.exit_code == 1
    assert b.calls == []  # nothing was asked of Modal
    out = text(report).strip()
    assert out.count("\n") == 0 and "modal token new" in out and "MODAL_TOKEN_ID" in out
    assert run_status(apps, b).error == NO_CREDENTIALS
    assert run_rollback("x", b).message == NO_CREDENTIALS
    assert run_destroy("x", b, yes=True).message == NO_CREDENTIALS


def test_wrong_environment_is_one_clear_line(apps):
    b = FakeBackend()
    b.list_error = EnvironmentNotFound("Modal environment 'dev' does not exist: check `modal environment list`")
    report = deploy(b, apps)
    assert report.exit_code == 1 and report.results == []
    assert text(report).strip() == f"error: {b.list_error}"


def test_smoke_preflight_failure_deploys_nothing_for_that_app(apps):
    b = FakeBackend()
    blocked = apps[0].deployment.name
    report = deploy(b, apps[:2], FakeSmoke(preflight_failing={blocked}))
    assert [c[1] for c in b.calls_of("deploy")] == [apps[1].deployment.name]
    assert report.results[0].status == FAILED and report.results[0].error.startswith("not deployed:")


def test_confirmation_declined_deploys_nothing(apps):
    b = FakeBackend()
    asked = []
    report = run_deploy(
        apps[:1],
        b,
        DeployOptions(),
        smoke_tester=FakeSmoke(),
        progress=NullProgress(),
        confirm=lambda q: asked.append(q) or False,
    )
    assert asked and apps[0].deployment.name in asked[0]
    assert b.calls_of("deploy") == [] and report.aborted and report.exit_code == 1


def test_without_yes_and_without_a_terminal_deploy_refuses(apps, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    b = FakeBackend()
    report = run_deploy(apps[:1], b, DeployOptions(), smoke_tester=FakeSmoke(), progress=NullProgress())
    assert b.calls_of("deploy") == [] and "--yes" in report.error


# --- Ctrl-C ---------------------------------------------------------------------------------------


def test_cancel_event_stops_new_deploys_and_lets_running_ones_finish(apps):
    b = FakeBackend(deploy_delay=0.2)
    cancel = threading.Event()
    b.on_deploy = lambda name: cancel.set()  # "Ctrl-C" as soon as the first deploy starts
    smoke = FakeSmoke()
    report = run_deploy(
        apps, b, DeployOptions(yes=True, parallel=1), smoke_tester=smoke, progress=NullProgress(), cancel=cancel
    )
    first = apps[0].deployment.name
    assert b.started == [first] and b.finished == [first]
    assert smoke.tested == [(first, f"https://{first}.example.test")]  # it went on to its smoke test
    assert report.names(DEPLOYED) == [first]
    assert report.names(SKIPPED) == names(apps[1:])
    assert report.interrupted and report.exit_code == 1
    assert "Interrupted" in text(report)


def test_sigint_during_deploys(apps):
    """A real SIGINT (as Ctrl-C sends) while two deploys run: both finish, the rest never start."""
    b = FakeBackend(deploy_delay=0.3)

    def interrupt_when_second_starts(name):
        if len(b.started) == 2:
            _thread.interrupt_main()  # delivers SIGINT to the main thread's handler

    b.on_deploy = interrupt_when_second_starts
    out = io.StringIO()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background shell
    report = run_deploy(
        apps,
        b,
        DeployOptions(yes=True, parallel=2),
        smoke_tester=FakeSmoke(),
        progress=RichProgress(Console(file=out, width=200)),
    )
    assert len(b.started) == 2 and sorted(b.finished) == sorted(b.started)
    assert sorted(report.names(DEPLOYED)) == sorted(b.started)
    assert sorted(report.names(SKIPPED)) == sorted(set(names(apps)) - set(b.started))
    assert report.interrupted and report.exit_code == 1
    assert "Interrupted" in out.getvalue()
    assert signal.getsignal(signal.SIGINT) is before  # handler put back


# --- progress and output --------------------------------------------------------------------------


def test_progress_lines_without_a_terminal(apps):
    b = FakeBackend()
    out = io.StringIO()
    run_deploy(apps[:1], b, DeployOptions(yes=True), smoke_tester=FakeSmoke(), progress=RichProgress(Console(file=out)))
    lines = out.getvalue()
    name = apps[0].deployment.name
    assert f"{name}: deploying" in lines and f"{name}: smoke test" in lines and f"{name}: deployed" in lines


def test_json_report(apps):
    b = FakeBackend()
    live_all(b, apps, stale=names(apps[:1]))
    b.add_live("retired-model", "ff-1", env=MODAL_ENV)
    report = deploy(b, apps, format="json")
    assert report.exit_code == 0
    doc = json.loads(json.dumps(report.to_dict()))  # the document the CLI's JSON reporter writes
    assert doc["summary"]["deployed"] == names(apps[:1])
    assert doc["summary"]["unchanged"] == names(apps[1:])
    assert [o["name"] for o in doc["orphans"]] == ["retired-model"]
    assert doc["deployments"][0]["tag"] == deployment_tag(apps[0])


def test_json_format_keeps_stdout_for_the_document(apps, capsys):
    b = FakeBackend()
    report = run_deploy(apps[:1], b, DeployOptions(yes=True, format="json"), smoke_tester=FakeSmoke())
    progress = capsys.readouterr()
    assert progress.out == "" and f"{apps[0].deployment.name}: deployed" in progress.err
    assert report.to_dict()["summary"]["deployed"] == names(apps[:1])


# --- status ---------------------------------------------------------------------------------------


def test_status_reports_sync_drift_absence_and_orphans(apps):
    b = FakeBackend()
    a0, a1, a2 = (a.deployment.name for a in apps[:3])
    b.add_live(a0, deployment_tag(apps[0]), env=MODAL_ENV)
    b.add_live(a1, "ff-000000000000", env=MODAL_ENV, versions=3)
    b.add_live("retired-model", "ff-111111111111", env=MODAL_ENV)
    report = run_status(apps, b, MODAL_ENV)
    rows = {r.name: r for r in report.rows}
    assert rows[a0].state == "in_sync" and rows[a0].url == f"https://{a0}.example.test"
    assert (rows[a1].state, rows[a1].live_version, rows[a1].live_tag) == ("drifted", 3, "ff-000000000000")
    assert rows[a2].state == "not_deployed" and rows[a2].url is None
    assert rows["retired-model"].state == "orphan"
    assert report.exit_code == 0
    assert json.loads(json.dumps(report.to_dict()))["deployments"][0]["name"] == a0


@pytest.mark.parametrize("entry_tag", ["", "ff-000000000000", "something-else"])
def test_status_recognises_rolled_back_content_whatever_the_entry_is_tagged(apps, entry_tag):
    """After `rollback`, Modal's new history entry may carry another tag (here the replaced
    version's): what runs is the content of the version rolled back to, so status is in sync."""
    b = FakeBackend()
    b.rollback_tag = entry_tag
    name, tag = apps[0].deployment.name, deployment_tag(apps[0])
    fake = b.add_live(name, tag, env=MODAL_ENV)
    fake.versions.append(Version(2, "ff-000000000000"))  # a newer, different module went live
    fake.live = 2
    assert run_status(apps[:1], b, MODAL_ENV).rows[0].state == "drifted"
    assert run_rollback(name, b, modal_env=MODAL_ENV).ok
    row = run_status(apps[:1], b, MODAL_ENV).rows[0]
    assert (row.state, row.live_version, row.live_tag) == ("in_sync", 3, tag)
    assert live_plan(apps[:1], b)[0].action == Action.UNCHANGED


# --- rollback and destroy -------------------------------------------------------------------------


def test_rollback_to_previous_version(apps):
    b = FakeBackend()
    b.add_live("m", "ff-new", env=MODAL_ENV, versions=3)  # v1 ff-old1, v2 ff-old2, v3 ff-new
    report = run_rollback("m", b, modal_env=MODAL_ENV)
    assert report.ok, report.message
    assert b.calls_of("rollback") == [("rollback", "m", MODAL_ENV, 2)]
    assert "from v3 (ff-new) to v2 (ff-old2)" in report.message
    assert b.get_app("m", MODAL_ENV).tag == "ff-old2"


@pytest.mark.parametrize("to, version", [("v1", 1), ("1", 1), ("ff-old1", 1)])
def test_rollback_to_a_given_version_or_tag(to, version):
    b = FakeBackend()
    b.add_live("m", "ff-new", env=MODAL_ENV, versions=3)
    assert run_rollback("m", b, modal_env=MODAL_ENV, to=to).ok
    assert b.calls_of("rollback") == [("rollback", "m", MODAL_ENV, version)]


def test_rollback_refusals():
    b = FakeBackend()
    b.add_live("m", "ff-new", env=MODAL_ENV, versions=2)
    b.add_live("theirs", "x", env=MODAL_ENV, managed=False, versions=2)
    assert "no version 'v9'" in run_rollback("m", b, modal_env=MODAL_ENV, to="v9").message
    assert "already the live version" in run_rollback("m", b, modal_env=MODAL_ENV, to="v2").message
    assert "does not manage" in run_rollback("theirs", b, modal_env=MODAL_ENV).message
    assert "no deployed app named ghost" in run_rollback("ghost", b, modal_env=MODAL_ENV).message
    assert b.calls_of("rollback") == []


def test_destroy_asks_and_refuses_unmanaged_apps():
    b = FakeBackend()
    b.add_live("m", "ff-new", env=MODAL_ENV)
    b.add_live("theirs", "x", env=MODAL_ENV, managed=False)
    declined = run_destroy("m", b, modal_env=MODAL_ENV, confirm=lambda q: False)
    assert not declined.ok and b.calls_of("stop") == []
    refused = run_destroy("theirs", b, modal_env=MODAL_ENV, yes=True)
    assert not refused.ok and "does not manage" in refused.message and b.calls_of("stop") == []
    asked = []
    done = run_destroy("m", b, modal_env=MODAL_ENV, confirm=lambda q: asked.append(q) or True)
    assert done.ok and b.calls_of("stop") == [("stop", "m", MODAL_ENV)] and "m" in asked[0]
    assert b.get_app("m", MODAL_ENV) is None


def test_modal_env_for(apps):
    assert modal_env_for(apps[0].deployment.name, apps) == MODAL_ENV
    assert modal_env_for("retired-model", apps, "prod") == "prod"


# --- the gateway: a member of the fleet, never an orphan -------------------------------------------


@pytest.fixture(scope="module")
def gateway(apps):
    from renderer.codegen.gateway import render_gateway

    return render_gateway([a.deployment for a in apps], gateway_from({"enabled": True}))  # name: fleetform-gateway


def test_a_gateway_deployed_as_documented_is_a_member_not_an_orphan(apps, gateway):
    """`modal deploy build/fleetform-gateway.py` by hand: a managed app (the module's App tag), no ff- tag."""
    b = FakeBackend()
    live_all(b, apps)
    b.add_live(gateway.name, "", env=MODAL_ENV)
    rows = live_plan(apps, b, MODAL_ENV, gateway)
    (row,) = [r for r in rows if r.name == gateway.name]
    assert row.gateway and row.action == Action.UPDATE and row.desired_tag == deployment_tag(gateway)
    assert [r.action for r in rows if r.action == Action.ORPHAN] == []
    out = io.StringIO()
    render_plan(rows, Console(file=out, width=200))
    assert "orphan" not in out.getvalue() and "destroy" not in out.getvalue()
    assert f"{gateway.name} (gateway)" in out.getvalue()
    status = run_status(apps, b, MODAL_ENV, gateway)
    assert {r.name: r.state for r in status.rows}[gateway.name] == "drifted"
    report = deploy(b, apps, dry_run=True, modal_env=MODAL_ENV, gateway=gateway)
    assert report.orphans == [] and report.names(PLANNED) == [gateway.name]


def test_gateway_compared_by_content_hash(apps, gateway):
    b = FakeBackend()
    live_all(b, apps)
    b.add_live(gateway.name, deployment_tag(gateway), env=MODAL_ENV)
    rows = live_plan(apps, b, MODAL_ENV, gateway)
    assert {r.name: r.action for r in rows}[gateway.name] == Action.UNCHANGED and plan_exit_code(rows) == 0
    status = run_status(apps, b, MODAL_ENV, gateway)
    row = next(r for r in status.rows if r.name == gateway.name)
    assert (row.state, row.gateway, row.url) == ("in_sync", True, f"https://{gateway.name}.example.test")
    assert "fleetform-gateway (gateway)" in text(status)
    other = FakeBackend()  # a gateway rendered for another fleet (other routes): other content
    live_all(other, apps)
    other.add_live(gateway.name, "ff-0123456789ab", env=MODAL_ENV)
    assert {r.name: r.action for r in live_plan(apps, other, MODAL_ENV, gateway)}[gateway.name] == Action.UPDATE


def test_deploy_deploys_the_gateway_after_the_deployments_it_routes_to(apps, gateway):
    b = FakeBackend(deploy_delay=0.05)
    live_all(b, apps, stale=names(apps[:2]))
    finished_when_gateway_started = []
    b.on_deploy = lambda name: finished_when_gateway_started.extend(b.finished) if name == gateway.name else None
    smoke = FakeSmoke()
    report = deploy(b, apps, smoke, modal_env=MODAL_ENV, gateway=gateway, parallel=4)
    assert report.exit_code == 0 and report.names(DEPLOYED) == [*names(apps[:2]), gateway.name]
    assert b.started[-1] == gateway.name
    assert sorted(finished_when_gateway_started) == sorted(names(apps[:2]))
    assert b.calls_of("deploy")[-1] == ("deploy", gateway.name, MODAL_ENV, deployment_tag(gateway), "rolling")
    assert smoke.tested[-1] == (gateway.name, f"https://{gateway.name}.example.test")
    assert deploy(b, apps, modal_env=MODAL_ENV, gateway=gateway).names(UNCHANGED) == [*names(apps), gateway.name]


def test_gateway_is_not_deployed_when_a_deployment_fails(apps, gateway):
    b = FakeBackend()
    bad = apps[0].deployment.name
    live_all(b, apps, stale=[bad])
    report = deploy(b, apps, FakeSmoke(failing={bad}), modal_env=MODAL_ENV, gateway=gateway)
    by_name = {r.name: r for r in report.results}
    assert by_name[bad].recovery == ROLLED_BACK
    assert by_name[gateway.name].status == SKIPPED and bad in by_name[gateway.name].error
    assert gateway.name not in b.started and report.exit_code == 1


def test_gateway_failing_its_smoke_test_is_stopped_or_rolled_back(apps, gateway):
    b = FakeBackend()
    live_all(b, apps)
    report = deploy(b, apps, FakeSmoke(failing={gateway.name}), modal_env=MODAL_ENV, gateway=gateway)
    assert report.results[-1].recovery == STOPPED and b.calls_of("stop") == [("stop", gateway.name, MODAL_ENV)]
    b.add_live(gateway.name, "ff-0123456789ab", env=MODAL_ENV, versions=2)
    report = deploy(b, apps, FakeSmoke(failing={gateway.name}), modal_env=MODAL_ENV, gateway=gateway)
    assert report.results[-1].recovery == ROLLED_BACK and b.calls_of("rollback") == [
        ("rollback", gateway.name, MODAL_ENV, 2)
    ]


def test_only_without_the_gateway_leaves_it_alone(apps, gateway):
    b = FakeBackend()
    target = apps[0].deployment.name
    report = deploy(b, apps, only=(target,), modal_env=MODAL_ENV, gateway=gateway)
    assert [c[1] for c in b.calls_of("deploy")] == [target] and report.names(DEPLOYED) == [target]
    report = deploy(b, apps, only=(gateway.name,), modal_env=MODAL_ENV, gateway=gateway)
    assert report.names(DEPLOYED) == [gateway.name]


def test_rollback_and_destroy_the_gateway_in_its_environment(apps, gateway):
    b = FakeBackend()
    b.add_live(gateway.name, deployment_tag(gateway), env=MODAL_ENV, versions=2)
    env = modal_env_for(gateway.name, apps, MODAL_ENV)  # the gateway deploys where --env points
    assert env == MODAL_ENV
    assert run_rollback(gateway.name, b, modal_env=env).ok
    assert run_destroy(gateway.name, b, modal_env=env, yes=True).ok
    assert b.calls_of("rollback") == [("rollback", gateway.name, MODAL_ENV, 1)]
    assert b.calls_of("stop") == [("stop", gateway.name, MODAL_ENV)]


# --- the real smoke tester against a local OpenAI-compatible server --------------------------------


class _LocalServer:
    """/health, /v1/models and /v1/chat/completions (plain and streamed), on a thread of its own."""

    def __init__(self, models, chat_status=200):
        from aiohttp import web

        self.models, self.chat_status, self.seen_headers = models, chat_status, []
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._app, self._ready = app, threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self._app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _health(self, request):
        from aiohttp import web

        self.seen_headers.append(dict(request.headers))
        return web.Response(text="")

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def _chat(self, request):
        from aiohttp import web

        body = await request.json()
        if self.chat_status != 200:
            return web.json_response({"error": {"message": "engine dead"}}, status=self.chat_status)
        if not body.get("stream"):
            return web.json_response(
                {
                    "object": "chat.completion",
                    "choices": [{"message": {"role": "assistant", "content": "ready"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "ready"}, "index": 0}]}
        usage = {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        }
        for data in (chunk, usage):
            await resp.write(f"data: {json.dumps(data)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def test_client_smoke_tester_passes_against_a_healthy_server(apps):
    app = apps[0]
    assert app.deployment.auth.mode == "proxy"
    env = {"MODAL_PROXY_TOKEN_ID": "wk-test", "MODAL_PROXY_TOKEN_SECRET": "ws-test"}
    with _LocalServer(list(app.deployment.model.names)) as server:
        outcome = ClientSmokeTester(environ=env)(app, server.url)
    assert outcome.ok, outcome.detail
    assert server.seen_headers[0]["Modal-Key"] == "wk-test"  # the deployment's auth mode was used


def test_client_smoke_tester_fails_on_a_broken_chat(apps):
    app = apps[0]
    env = {"MODAL_PROXY_TOKEN_ID": "wk-test", "MODAL_PROXY_TOKEN_SECRET": "ws-test"}
    with _LocalServer(list(app.deployment.model.names), chat_status=500) as server:
        outcome = ClientSmokeTester(environ=env)(app, server.url)
    assert not outcome.ok and "engine dead" in outcome.detail


def test_client_smoke_tester_fails_when_a_served_name_is_missing(apps):
    app = apps[0]
    env = {"MODAL_PROXY_TOKEN_ID": "wk-test", "MODAL_PROXY_TOKEN_SECRET": "ws-test"}
    with _LocalServer(["some-other-model"]) as server:
        outcome = ClientSmokeTester(environ=env)(app, server.url)
    assert not outcome.ok and app.deployment.model.served_model_names[0] in outcome.detail


def test_client_smoke_tester_preflight_names_missing_proxy_tokens(apps):
    why = ClientSmokeTester(environ={}).preflight(apps[0])
    assert why and "MODAL_PROXY_TOKEN_ID" in why
    assert (
        ClientSmokeTester(environ={"MODAL_PROXY_TOKEN_ID": "a", "MODAL_PROXY_TOKEN_SECRET": "b"}).preflight(apps[0])
        is None
    )


def test_client_smoke_tester_checks_the_gateway_lists_every_served_name(apps, gateway):
    env = {"FLEETFORM_GATEWAY_API_KEY": "gk-test"}
    with _LocalServer(list(gateway.routes)) as server:
        outcome = ClientSmokeTester(environ=env)(gateway, server.url)
    assert outcome.ok, outcome.detail
    assert server.seen_headers[0]["Authorization"] == "Bearer gk-test"
    some = list(gateway.routes)[1:]
    with _LocalServer(some) as server:
        outcome = ClientSmokeTester(environ=env)(gateway, server.url)
    assert not outcome.ok and list(gateway.routes)[0] in outcome.detail


def test_client_smoke_tester_preflight_for_the_gateway_needs_its_key(gateway):
    why = ClientSmokeTester(environ={}).preflight(gateway)
    assert why and "FLEETFORM_GATEWAY_API_KEY" in why
    assert ClientSmokeTester(environ={"FLEETFORM_GATEWAY_API_KEY": "k"}).preflight(gateway) is None


# --- text from Modal and servers is printed literally ------------------------------------------------------

MARKUP = "[/bold][link=https://evil.example]click[/link] [red]x"


def test_markup_in_what_modal_and_servers_say_is_printed_literally(apps):
    """Tags, error messages and URLs come from Modal or the deployed server: a `[` in them is text,
    never rich markup that would crash the report or hide part of it."""
    b = FakeBackend()
    live_all(b, apps[1:])
    b.add_live("retired-model", f"ff-{MARKUP}", env=MODAL_ENV)
    failing = apps[0].deployment.name
    b.deploy_errors[failing] = modal_api.BackendError(f"deploy refused: {MARKUP}")
    report = deploy(b, apps, modal_env=MODAL_ENV)
    shown = text(report)
    assert f"deploy refused: {MARKUP}" in shown and f"ff-{MARKUP}" in shown

    rows = live_plan(apps, b, MODAL_ENV)
    out = io.StringIO()
    render_plan(rows, Console(file=out, width=400))
    assert f"v1 ff-{MARKUP}" in out.getvalue()

    status = run_status(apps, b, MODAL_ENV)
    assert MARKUP in text(status)
    assert "no deployed app named nonexistent[/b]" in text(run_rollback("nonexistent[/b]", b, modal_env=MODAL_ENV))


# --- status: what the gateway routed (its /metrics) ---------------------------------------------------------


class _Req:
    """What the gateway's Metrics records of one finished request."""

    def __init__(self, model, upstream, status, ttft=0.05):
        self.model, self.upstream, self.status, self.ttft = model, upstream, status, ttft
        self.tpot = None  # not a streamed answer
        self.bytes_in, self.bytes_out = 100, 1000


def _gateway_metrics(now: float) -> str:
    """The text the real gateway app serves at /metrics, after some traffic."""
    from renderer.codegen.gateway_app import Metrics

    m = Metrics()
    m.started = now - 100.0
    m.container = 'ta-01"x'  # a label value with a quote, escaped as Prometheus does
    for status in (200, 200, 200, 503):
        m.enter("llm", "llama-3-1-8b-fp8")
        m.leave(_Req("llm", "llama-3-1-8b-fp8", status))
    m.enter("qwen2.5-7b-awq", "qwen2-5-7b-awq")  # one still in flight
    m.leave(_Req("nope", None, 404, ttft=None))  # an unknown model: no deployment's figure
    return m.text()


def test_gateway_metrics_parse_into_per_deployment_traffic():
    from renderer.deploy.traffic import parse

    now = 1_700_000_000.0
    traffic = parse(_gateway_metrics(now), now=now)
    assert (traffic.container, traffic.since) == ('ta-01"x', now - 100.0)
    llama = traffic.deployments["llama-3-1-8b-fp8"]
    assert (llama.requests, llama.server_errors, llama.in_flight) == (4, 1, 0)
    assert llama.per_second == pytest.approx(0.04)
    assert traffic.deployments["qwen2-5-7b-awq"].in_flight == 1
    assert set(traffic.deployments) == {"llama-3-1-8b-fp8", "qwen2-5-7b-awq"}


@pytest.fixture
def metrics_server():
    """A stand-in gateway URL serving the real app's /metrics text behind its key."""
    import http.server

    text = _gateway_metrics(time.time()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            ok = self.path == "/metrics" and self.headers.get("Authorization") == "Bearer gk-status"
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(text if ok else b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_status_shows_what_the_gateway_routed_to_each_deployment(apps, gateway, metrics_server):
    b = FakeBackend()
    live_all(b, apps)
    b.add_live(gateway.name, deployment_tag(gateway), env=MODAL_ENV)
    b.web_url = lambda name, env: metrics_server if name == gateway.name else f"https://{name}.example.test"

    report = run_status(apps, b, MODAL_ENV, gateway, environ={"FLEETFORM_GATEWAY_API_KEY": "gk-status"})
    doc = report.to_dict()["traffic"]
    assert doc["deployments"]["llama-3-1-8b-fp8"]["requests"] == 4
    assert doc["deployments"]["llama-3-1-8b-fp8"]["server_errors"] == 1
    shown = text(report)
    assert "Req/s" in shown and "routed since" in shown

    wrong = run_status(apps, b, MODAL_ENV, gateway, environ={"FLEETFORM_GATEWAY_METRICS_KEY": "wrong"})
    assert wrong.traffic is None and wrong.traffic_note == "the gateway answered /metrics with HTTP 401"
    assert wrong.exit_code == 0  # traffic is information: the status itself stands
    without = run_status(apps, b, MODAL_ENV, gateway, environ={})
    assert without.traffic is None and "FLEETFORM_GATEWAY_METRICS_KEY" in without.traffic_note
    assert "Traffic: set FLEETFORM_GATEWAY_METRICS_KEY" in text(without)


def test_status_without_a_live_gateway_reads_no_metrics(apps, gateway):
    b = FakeBackend()
    live_all(b, apps)
    report = run_status(apps, b, MODAL_ENV, gateway, environ={"FLEETFORM_GATEWAY_API_KEY": "gk"})
    assert report.traffic is None and report.traffic_note is None
    assert report.to_dict()["traffic"] is None
