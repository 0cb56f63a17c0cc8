"""The staging logic (renderer/codegen/staging.py), run in-process with the real huggingface_hub
against a fake Hub on 127.0.0.1: the code the rendered stage module runs on Modal."""

from __future__ import annotations

import json
import os

import pytest

from renderer.codegen import runtime, staging
from tests.fake_hub import FakeHub

MODEL = "acme/tiny-model"
REV = "a" * 40
ADAPTER = "acme/tiny-adapter"
ADAPTER_REV = "b" * 40
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model-00001-of-00002.safetensors": b"\x01" * 3000,
    "model-00002-of-00002.safetensors": b"\x02" * 2000,
    "tokenizer/tokenizer.json": b'{"vocab": {}}',
}
ADAPTER_FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"\x03" * 700}


@pytest.fixture
def hub(monkeypatch):
    for var in ("HF_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with FakeHub() as fake:
        fake.add(MODEL, REV, FILES)
        fake.add(ADAPTER, ADAPTER_REV, ADAPTER_FILES)
        yield fake


def run(hub, cache, adapters=(), commits=None):
    commit = (lambda: commits.append("commit")) if commits is not None else None
    return list(
        staging.stage_weights(MODEL, REV, adapters, cache_root=str(cache), commit=commit, endpoint=hub.url, token=False)
    )


def snapshot(cache):
    return cache / "hub" / staging.repo_folder(MODEL) / "snapshots" / REV


def test_first_stage_downloads_every_file_verifies_and_writes_the_marker(hub, tmp_path):
    commits = []
    events = run(hub, tmp_path, commits=commits)
    start = events[0]
    assert start["event"] == "start" and start["download_files"] == len(FILES)
    assert start["download_bytes"] == sum(len(v) for v in FILES.values())
    assert [e["file"] for e in events if e["event"] == "file"] == sorted(FILES)
    assert events[-1]["event"] == "staged", events[-1]
    for name, data in FILES.items():
        assert (snapshot(tmp_path) / name).read_bytes() == data
        assert hub.body_requests[(MODEL, name)] == 1
    marker = json.loads((tmp_path / staging.marker_path(MODEL, REV)).read_text())
    assert marker["repo"] == MODEL and marker["revision"] == REV
    assert marker["files"] == len(FILES) and marker["bytes"] == sum(len(v) for v in FILES.values())
    assert marker["verified_at"].endswith("+00:00")
    assert events[-1]["repos"] == [marker]
    assert events[-1]["downloaded_bytes"] == marker["bytes"]
    assert commits == ["commit", "commit"]  # after the downloads, after the markers


def test_second_stage_downloads_nothing(hub, tmp_path):
    run(hub, tmp_path)
    before = sum(hub.body_requests.values())
    events = run(hub, tmp_path)
    assert sum(hub.body_requests.values()) == before
    assert events[0]["download_files"] == 0 and events[0]["download_bytes"] == 0
    assert not [e for e in events if e["event"] == "file"]
    assert events[-1]["event"] == "staged" and events[-1]["downloaded_bytes"] == 0


def test_a_truncated_blob_is_downloaded_again(hub, tmp_path):
    run(hub, tmp_path)
    shard = "model-00001-of-00002.safetensors"
    blob = os.path.realpath(snapshot(tmp_path) / shard)
    with open(blob, "r+b") as fh:
        fh.truncate(1000)
    events = run(hub, tmp_path)
    assert [e["file"] for e in events if e["event"] == "file"] == [shard]
    assert hub.body_requests[(MODEL, shard)] == 2
    assert hub.body_requests[(MODEL, "config.json")] == 1
    assert (snapshot(tmp_path) / shard).read_bytes() == FILES[shard]
    assert events[-1]["event"] == "staged"


def test_a_file_missing_from_the_snapshot_is_downloaded(hub, tmp_path):
    run(hub, tmp_path)
    (snapshot(tmp_path) / "config.json").unlink()
    events = run(hub, tmp_path)
    assert [e["file"] for e in events if e["event"] == "file"] == ["config.json"]
    assert events[-1]["event"] == "staged"


def test_a_size_mismatch_after_download_fails_verification_and_writes_no_marker(hub, tmp_path):
    hub.listed_sizes[(MODEL, "model-00002-of-00002.safetensors")] = 2500
    commits = []
    events = run(hub, tmp_path, commits=commits)
    assert events[-1] == {
        "event": "failed",
        "error": f"{MODEL}@{REV}: 1 of 4 files do not match the Hub: "
        "model-00002-of-00002.safetensors has 2000 bytes, the Hub says 2500",
    }
    assert not (tmp_path / staging.marker_path(MODEL, REV)).exists()
    assert commits == ["commit"]  # what was downloaded is kept for the next run; no marker


def test_an_unknown_revision_fails_with_one_line(hub, tmp_path):
    events = list(staging.stage_weights(MODEL, "c" * 40, cache_root=str(tmp_path), endpoint=hub.url, token=False))
    assert len(events) == 1 and events[0]["event"] == "failed"
    assert events[0]["error"].startswith(f"{MODEL}@{'c' * 40}: RevisionNotFoundError")
    assert "\n" not in events[0]["error"]


def test_adapters_land_where_the_app_looks_with_the_revision_marker(hub, tmp_path, monkeypatch):
    path = tmp_path / "fleetform-lora" / f"tiny-{ADAPTER_REV[:12]}"
    adapter = {"name": "tiny", "id": ADAPTER, "revision": ADAPTER_REV, "path": str(path)}
    events = run(hub, tmp_path, adapters=[adapter])
    assert events[-1]["event"] == "staged"
    assert [m["repo"] for m in events[-1]["repos"]] == [MODEL, ADAPTER]
    for name, data in ADAPTER_FILES.items():
        assert (path / name).read_bytes() == data
    assert (path / ".fleetform-revision").read_text() == ADAPTER_REV
    assert (tmp_path / staging.marker_path(ADAPTER, ADAPTER_REV)).exists()

    # the app's own fetch skips the folder: it would import huggingface_hub to download anything
    fetched = []
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    runtime.fetch_adapters([adapter], log=fetched.append)
    assert fetched == []

    # a second stage downloads nothing; a truncated adapter file is fetched again, its marker kept
    before = sum(hub.body_requests.values())
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    run(hub, tmp_path, adapters=[adapter])
    assert sum(hub.body_requests.values()) == before
    with open(path / "adapter_model.safetensors", "r+b") as fh:
        fh.truncate(10)
    events = run(hub, tmp_path, adapters=[adapter])
    assert [e["file"] for e in events if e["event"] == "file"] == ["adapter_model.safetensors"]
    assert (path / "adapter_model.safetensors").read_bytes() == ADAPTER_FILES["adapter_model.safetensors"]
    assert (path / ".fleetform-revision").read_text() == ADAPTER_REV


def test_a_failed_adapter_loses_its_revision_marker(hub, tmp_path):
    path = tmp_path / "lora" / "tiny"
    adapter = {"name": "tiny", "id": ADAPTER, "revision": ADAPTER_REV, "path": str(path)}
    run(hub, tmp_path, adapters=[adapter])
    (path / "adapter_config.json").unlink()
    hub.listed_sizes[(ADAPTER, "adapter_config.json")] = 99
    events = run(hub, tmp_path, adapters=[adapter])
    assert events[-1]["event"] == "failed" and "adapter_config.json has 8 bytes, the Hub says 99" in events[-1]["error"]
    assert not (path / ".fleetform-revision").exists()  # the app fetches it itself rather than trust it


def test_the_marker_contract_matches_the_runtime():
    """The app (runtime.fetch_adapters) and staging agree on the adapter marker's name."""
    import inspect

    assert f'"{staging.REVISION_MARKER}"' in inspect.getsource(runtime)
