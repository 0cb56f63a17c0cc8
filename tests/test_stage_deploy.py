"""Staging inside `deploy`, and `run_stage`, against the in-memory backend of fake_backend.py:
each deployment is staged in its own worker before its GPU app, a staged one is skipped, a failed
one deploys nothing, and progress reports a line per model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from renderer.codegen.render import render_fleet
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve
from renderer.deploy.progress import NullProgress
from renderer.deploy.run import DeployOptions, run_deploy
from renderer.deploy.stage import ALREADY, FAILED, STAGED, run_stage, stage_one
from renderer.modal_api import CapacityError, StageFailed, deployment_tag

from fake_backend import FakeBackend, FakeSmoke

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"
REPO_DEPLOYMENTS = DEPLOYMENTS
MODAL_ENV = "llm-dev"  # the example fleet's `--env dev` deploys here


class Recorder(NullProgress):
    def __init__(self) -> None:
        self.updates: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def update(self, name: str, stage: str, detail: str = "") -> None:
        with self._lock:
            self.updates.append((name, stage, detail))


@pytest.fixture(scope="module")
def apps():
    resolved = resolve(load_fleet([str(DEPLOYMENTS)]), "dev")
    assert resolved.ok, resolved.diagnostics
    return render_fleet(resolved.deployments)


def deploy(backend, apps, progress=None, **options):
    options.setdefault("yes", True)
    return run_deploy(
        apps, backend, DeployOptions(**options), smoke_tester=FakeSmoke(), progress=progress or NullProgress()
    )


def test_deploy_stages_each_deployment_before_its_gpu_app(apps):
    backend = FakeBackend()
    progress = Recorder()
    report = deploy(backend, apps, progress)
    assert report.ok
    staged = [c[1] for c in backend.stage_calls if c[0] == "stage"]
    assert sorted(staged) == sorted(a.name for a in apps)
    assert all(c[2] == MODAL_ENV for c in backend.stage_calls)
    for r in report.results:
        assert r.staging is not None and r.staging.status == STAGED
        assert r.to_dict()["staging"]["repos"] == [f"{r.staging.repos[0]}"]
    # per model: the checks, then the function's lines, then the deploy
    for a in apps:
        mine = [(stage, detail) for name, stage, detail in progress.updates if name == a.name]
        assert mine[0] == ("staging", f"checking huggingface-cache for {a.deployment.model.id}")
        assert mine[1] == ("staging", f"{a.deployment.model.id}: starting a CPU container")
        repo = f"{a.deployment.model.id}@{a.deployment.model.revision[:7]}"
        assert mine[2] == ("staging", f"{repo}: downloading 2 of 2 files (0.00 GB)")
        assert mine[3][0] == "deploying"


def test_a_staged_revision_is_not_staged_again(apps):
    backend = FakeBackend()
    assert deploy(backend, apps).ok
    for a in apps:
        backend.add_live(a.name, "ff-000000000000", env=MODAL_ENV)  # stale: every app deploys again
    backend.stage_calls.clear()
    report = deploy(backend, apps)
    assert report.ok and [c[0] for c in backend.stage_calls] == ["staged"] * len(apps)
    assert {r.staging.status for r in report.results} == {ALREADY}


def test_a_failed_stage_fails_that_deployment_only_and_leaves_its_live_app(apps):
    backend = FakeBackend()
    victim = apps[0].name
    for a in apps:
        backend.add_live(a.name, "ff-000000000000", env=MODAL_ENV)
    backend.stage_errors[victim] = StageFailed(f"stage {victim}: org/m@abc: 1 of 3 files do not match the Hub")
    report = deploy(backend, apps)
    assert not report.ok
    results = {r.name: r for r in report.results}
    assert results[victim].status == "failed" and results[victim].staging.status == FAILED
    assert results[victim].error == (
        f"staging the weights failed, nothing deployed: stage {victim}: org/m@abc: 1 of 3 files do not match the Hub"
    )
    assert victim not in [c[1] for c in backend.calls_of("deploy")]
    assert backend.get_app(victim, MODAL_ENV).tag == "ff-000000000000"  # the live version untouched
    assert all(r.status == "deployed" for n, r in results.items() if n != victim)


def test_no_stage_stages_nothing(apps):
    backend = FakeBackend()
    report = deploy(backend, apps, stage=False)
    assert report.ok and backend.stage_calls == []
    assert all(r.staging is None and r.to_dict()["staging"] is None for r in report.results)


def test_a_dry_run_and_unchanged_apps_stage_nothing(apps):
    backend = FakeBackend()
    assert deploy(backend, apps, dry_run=True).ok and backend.stage_calls == []
    for a in apps:
        backend.add_live(a.name, deployment_tag(a), env=MODAL_ENV)
    assert deploy(backend, apps).ok and backend.stage_calls == []


def test_run_stage_runs_in_parallel_and_reports_each(apps):
    backend = FakeBackend()
    backend.stage_errors[apps[1].name] = CapacityError("stage x: Modal refused for lack of quota or capacity")
    d = [a.deployment for a in apps]
    report = run_stage(d, backend, Recorder(), parallel=4)
    assert not report.ok and report.exit_code == 1
    status = {r.name: r.status for r in report.results}
    assert status[apps[1].name] == FAILED and [s for n, s in status.items() if n != apps[1].name] == [STAGED] * (
        len(apps) - 1
    )
    doc = report.to_dict()
    assert doc["deployments"][0]["volume"] == "huggingface-cache" and doc["deployments"][0]["bytes"] == 2000
    again = run_stage(d, backend, NullProgress())
    assert {r.name: r.status for r in again.results if r.name != apps[1].name} == {
        a.name: ALREADY for a in apps if a.name != apps[1].name
    }
    forced = run_stage(d[:1], backend, NullProgress(), force=True)
    assert forced.results[0].status == STAGED


def test_run_stage_without_credentials(apps):
    report = run_stage([apps[0].deployment], FakeBackend(credentials=False), NullProgress())
    assert report.exit_code == 1 and "no Modal credentials" in report.error


def test_a_crash_in_the_backend_is_a_result_not_an_exception(apps):
    class Broken(FakeBackend):
        def staged(self, *a):
            raise RuntimeError("boom")

    r = stage_one(apps[0].deployment, Broken(), NullProgress())
    assert r.status == FAILED and r.error == "unexpected RuntimeError: boom"


def test_a_cancel_starts_no_new_stage_run(apps):
    cancel = threading.Event()

    class Cancelling(FakeBackend):
        def stage(self, module, env, on_event):
            cancel.set()  # Ctrl-C while the first one runs
            return super().stage(module, env, on_event)

    backend = Cancelling()
    report = run_stage([a.deployment for a in apps], backend, NullProgress(), parallel=1, cancel=cancel)
    assert [r.status for r in report.results] == [STAGED] + ["skipped"] * (len(apps) - 1)
    assert [c[0] for c in backend.stage_calls].count("stage") == 1 and not report.ok


def test_the_text_report_names_each_model_at_its_short_revision_and_each_failure(apps):
    import io

    from rich.console import Console

    backend = FakeBackend()
    victim = apps[0].name
    backend.stage_errors[victim] = StageFailed(f"stage {victim}: org/m@abc: config.json is missing")
    report = run_stage([a.deployment for a in apps], backend, NullProgress())
    out = io.StringIO()
    report.render(Console(file=out, width=250))
    text = out.getvalue()
    for a in apps:
        m = a.deployment.model
        assert f"{m.id}@{m.revision[:7]} " in text and m.revision not in text
    assert f"{victim}: stage {victim}: org/m@abc: config.json is missing" in text
    assert text.count(" staged ") == len(apps) - 1 and text.count(" failed ") == 1


def test_two_deployments_of_one_model_on_one_volume_download_it_once(tmp_path):
    base = (REPO_DEPLOYMENTS / "qwen2-5-7b-instruct.yaml").read_text()
    (tmp_path / "a.yaml").write_text(base.replace("name: qwen2-5-7b-instruct", "name: small"))
    big = base.replace("name: qwen2-5-7b-instruct", "name: big").replace("[qwen2.5-7b-instruct]", "[qwen-big]")
    (tmp_path / "b.yaml").write_text(big)
    fleet = resolve(load_fleet([str(tmp_path)]))
    assert fleet.ok, fleet.diagnostics

    class Slow(FakeBackend):
        def stage(self, module, env, on_event):
            import time

            time.sleep(0.2)  # both workers are running by now
            return super().stage(module, env, on_event)

    backend = Slow()
    report = run_stage(fleet.deployments, backend, NullProgress(), parallel=2)
    assert sorted(r.status for r in report.results) == [ALREADY, STAGED]
    assert [c[0] for c in backend.stage_calls].count("stage") == 1
