"""Staging: download a deployment's pinned weights into the Hugging Face cache before any GPU starts.

`fleetform deploy` and `fleetform stage` run this on a CPU-only Modal function (the stage module,
rendered by `renderer.codegen.stage`) with the deployment's Hugging Face cache Volume mounted where
the app mounts it, so the GPU containers find every file in place and download nothing. The
rendered module copies the `stage` section below verbatim (its imports go to the module's top), and
the tests run the same code in-process against a fake Hub on 127.0.0.1: what is tested is what runs.

It must therefore use the standard library only, plus `huggingface_hub`, imported where it is used
(the stage image installs it; fleetform itself does not need it to render), in Python 3.10 syntax.

For each repository (the model, then each LoRA adapter), at its pinned revision:

1. ask the Hub which files that revision has and their sizes (`HfApi.model_info(files_metadata=True)`);
2. download, with `hf_hub_download`, each file that is missing or has another size where the app
   will look for it (a truncated or mismatched file is downloaded again, `force_download`);
3. verify: every file of the revision exists there and has the Hub's size, else fail with the
   files that do not;
4. commit the Volume, then write a marker (JSON: repository, revision, files, bytes, when verified)
   under `fleetform-staged/` that `plan` and `deploy` read to know the revision is staged, and
   commit again.

The model goes into the Hub cache layout (`hub/models--ORG--NAME/snapshots/REVISION/`), where vLLM
looks for it. An adapter goes into its own folder (`spec.LoraAdapter.path`), with the
`.fleetform-revision` marker that `runtime.fetch_adapters` trusts: the app then skips it.
"""

import datetime
import json
import os

# ---- stage: download a pinned revision into the Hugging Face cache, verify it, mark it staged --------

# Markers of staged revisions, relative to the Hugging Face cache (the root of its Volume).
STAGED_DIR = "fleetform-staged"
# The file an adapter's folder holds once fetched at a revision (runtime.fetch_adapters reads it).
REVISION_MARKER = ".fleetform-revision"


class StageError(RuntimeError):
    """A revision could not be staged: the Hub refused, or the files do not match its metadata."""


def repo_folder(repo_id):
    """The Hub cache's folder name of a model repository: `models--ORG--NAME`."""
    return "models--" + repo_id.replace("/", "--")


def marker_folder(repo_id):
    """The folder of a repository's markers, one per staged revision, relative to the cache."""
    return STAGED_DIR + "/" + repo_folder(repo_id)


def marker_path(repo_id, revision):
    """Where the marker of a staged revision lives, relative to the cache (the Volume's root)."""
    return marker_folder(repo_id) + "/" + revision + ".json"


def hub_files(repo_id, revision, endpoint=None, token=None):
    """{file name: size in bytes} of every file of the repository at `revision`, from the Hub."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True)
    if info.sha and info.sha != revision:
        raise StageError(f"{repo_id}: revision {revision} is the commit {info.sha}; pin the full commit")
    files = {}
    for sibling in info.siblings or []:
        if sibling.size is None:
            raise StageError(f"{repo_id}@{revision}: the Hub gave no size for {sibling.rfilename}")
        files[sibling.rfilename] = sibling.size
    if not files:
        raise StageError(f"{repo_id}@{revision}: the Hub lists no files")
    return files


def _size(path):
    """Bytes of the file at `path` (through a symlink), or None when there is none."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def mismatched(folder, files):
    """The files of `files` that `folder` lacks or holds with another size, in name order."""
    return [name for name in sorted(files) if _size(os.path.join(folder, name)) != files[name]]


def verify(folder, files, what):
    """Raise StageError unless every file exists in `folder` with the Hub's size."""
    problems = []
    for name in mismatched(folder, files):
        have = _size(os.path.join(folder, name))
        if have is None:
            problems.append(f"{name} is missing")
        else:
            problems.append(f"{name} has {have} bytes, the Hub says {files[name]}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StageError(f"{what}: {len(problems)} of {len(files)} files do not match the Hub: {shown}")


def _has_revision(folder, revision):
    try:
        with open(os.path.join(folder, REVISION_MARKER)) as fh:
            return fh.read().strip() == revision
    except OSError:
        return False


def stage_repo(repo_id, revision, cache_root, local_dir=None, endpoint=None, token=None):
    """Download and verify one repository at `revision`; yields progress events (dicts).

    Without `local_dir` the files go into the Hub cache under `cache_root` (as vLLM finds them);
    with it, into that folder, which then gets the `.fleetform-revision` marker once verified.
    """
    from huggingface_hub import hf_hub_download

    what = f"{repo_id}@{revision}"
    files = hub_files(repo_id, revision, endpoint=endpoint, token=token)
    if local_dir is None:
        folder = os.path.join(cache_root, "hub", repo_folder(repo_id), "snapshots", revision)
    else:
        folder = local_dir
    todo = mismatched(folder, files)
    total = sum(files.values())
    todo_bytes = sum(files[name] for name in todo)
    yield {
        "event": "start",
        "repo": repo_id,
        "revision": revision,
        "files": len(files),
        "bytes": total,
        "download_files": len(todo),
        "download_bytes": todo_bytes,
    }
    if local_dir is not None and (todo or not _has_revision(folder, revision)):
        try:  # not trusted by the app until verified again
            os.remove(os.path.join(folder, REVISION_MARKER))
        except OSError:
            pass
    done = 0
    for name in todo:
        hf_hub_download(
            repo_id,
            name,
            revision=revision,
            cache_dir=os.path.join(cache_root, "hub") if local_dir is None else None,
            local_dir=local_dir,
            force_download=os.path.lexists(os.path.join(folder, name)),  # there, but not the Hub's size
            endpoint=endpoint,
            token=token,
        )
        done += files[name]
        yield {"event": "file", "repo": repo_id, "file": name, "done_bytes": done, "download_bytes": todo_bytes}
    verify(folder, files, what)
    if local_dir is not None and not _has_revision(folder, revision):
        with open(os.path.join(folder, REVISION_MARKER), "w") as fh:
            fh.write(revision)
    yield {
        "event": "verified",
        "repo": repo_id,
        "revision": revision,
        "files": len(files),
        "bytes": total,
        "downloaded_bytes": done,
    }


def write_marker(cache_root, repo_id, revision, files, size):
    """Record that `repo_id@revision` is staged and verified; returns the marker's content."""
    marker = {
        "repo": repo_id,
        "revision": revision,
        "files": files,
        "bytes": size,
        "verified_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (3.10)
    }
    path = os.path.join(cache_root, marker_path(repo_id, revision))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(marker, fh, sort_keys=True)
    os.replace(path + ".tmp", path)
    return marker


def stage_weights(model_id, revision, adapters=(), cache_root="", commit=None, endpoint=None, token=None):
    """Stage the model and each adapter (dicts with id, revision and path); yields progress events.

    The last event is `{"event": "staged", "repos": [marker, ...], "downloaded_bytes": N}` or, when anything failed,
    `{"event": "failed", "error": "..."}` (one line). `commit` persists the cache (a Modal Volume's
    `commit`): called after the downloads, failed or not, so a later run resumes, and after the
    markers are written.
    """
    repos = [(model_id, revision, None)] + [(a["id"], a["revision"], a["path"]) for a in adapters]
    verified = []
    error = None
    for repo_id, rev, local_dir in repos:
        try:
            for event in stage_repo(repo_id, rev, cache_root, local_dir, endpoint=endpoint, token=token):
                if event["event"] == "verified":
                    verified.append(event)
                yield event
        except Exception as exc:  # noqa: BLE001 (the Hub's errors included: reported, never raised out of the container)
            message = " ".join(str(exc).split()) or type(exc).__name__
            error = message if isinstance(exc, StageError) else f"{repo_id}@{rev}: {type(exc).__name__}: {message}"
            break
    if commit is not None:
        commit()
    if error is not None:
        yield {"event": "failed", "error": error}
        return
    markers = [write_marker(cache_root, e["repo"], e["revision"], e["files"], e["bytes"]) for e in verified]
    if commit is not None:
        commit()
    yield {"event": "staged", "repos": markers, "downloaded_bytes": sum(e["downloaded_bytes"] for e in verified)}
