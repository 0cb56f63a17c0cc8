"""The fleet as it was at a git commit, loaded exactly as the working tree is.

`fleetform plan --against REF` compares two fleets; the one at REF must go through the very same
`discover` / `load_fleet` / `resolve` as the working tree, or the comparison would show
differences of the loader rather than of the YAML. So the files the user's paths name are copied
out of git (`git ls-tree` + `git cat-file`, read-only: the user's checkout, index and branches are
never touched) into a temporary folder laid out like the repository, loaded from there with
`load_fleet`, and every file name is then put back to what the same path names in the working
tree, so diagnostics and `Deployment.source` read `deployments/x.yaml`, not a temporary path.

A path that does not exist at REF is simply absent there: a fleet folder added since REF loads
as an empty fleet, and every deployment in it shows as new.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from renderer.config.load import FLEET_FILE, YAML_SUFFIXES, Document, LoadedFleet, Node, load_fleet
from renderer.diagnostics import Diagnostic, Mark

# Plain files only: symlinks (120000) and submodules (160000) are not followed at a past commit.
_FILE_MODES = ("100644", "100755")


class GitError(Exception):
    """A one-line, user-facing reason why the fleet at REF cannot be read."""


@dataclass(frozen=True)
class FleetAtRef:
    ref: str  # as the user wrote it
    commit: str  # the full commit id it named
    loaded: LoadedFleet

    @property
    def short(self) -> str:
        return self.commit[:7]


@dataclass(frozen=True)
class _Entry:
    mode: str
    kind: str  # blob | tree | commit
    oid: str
    path: str  # repository-relative, with forward slashes


# --- talking to git --------------------------------------------------------------------------------


def _git(args: Sequence[str], cwd: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=stdin,
            capture_output=True,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_LITERAL_PATHSPECS": "1", "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise GitError("git is not installed, and --against reads the fleet from git") from None


def repo_root(cwd: str | Path = ".") -> Path:
    """The top folder of the work tree that holds `cwd`."""
    result = _git(["rev-parse", "--show-toplevel"], cwd)
    if result.returncode != 0 or not result.stdout.strip():
        raise GitError(f"{Path(cwd).resolve()} is not inside a git repository; --against needs one")
    return Path(result.stdout.decode().strip()).resolve()


def resolve_commit(ref: str, root: str | Path) -> str:
    """The full commit id `ref` names (a branch, tag, remote branch, sha, `HEAD~1`, ...)."""
    if not ref or ref.startswith("-") or any(c in ref for c in "\n\0"):
        raise GitError(f"not a git revision: {ref!r}")
    result = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root)  # no option: no leading "-"
    if result.returncode != 0:
        hint = ""
        if "/" in ref and not ref.startswith("refs/"):
            remote, _, branch = ref.partition("/")
            hint = (
                f" (fetch it first: `git fetch {remote} {branch}`; in GitHub Actions check out with `fetch-depth: 0`)"
            )
        raise GitError(f"unknown git revision {ref!r}: no commit of that name in this repository{hint}")
    return result.stdout.decode().strip()


def _ls_tree(commit: str, rel: str, root: Path) -> list[_Entry]:
    """Entries `git ls-tree` lists for one repository-relative pathspec at `commit`."""
    args = ["ls-tree", "-z", "--full-tree", commit]
    if rel:
        args += ["--", rel]
    result = _git(args, root)
    if result.returncode != 0:
        raise GitError(f"git ls-tree failed at {commit[:7]}: {result.stderr.decode(errors='replace').strip()}")
    entries = []
    for record in result.stdout.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, kind, oid = meta.decode().split()
        entries.append(_Entry(mode, kind, oid, path.decode("utf-8", errors="surrogateescape")))
    return entries


def _read_blobs(oids: Sequence[str], root: Path) -> dict[str, bytes]:
    """The contents of several blobs through one `git cat-file --batch`."""
    if not oids:
        return {}
    result = _git(["cat-file", "--batch"], root, stdin="".join(f"{o}\n" for o in oids).encode())
    if result.returncode != 0:
        raise GitError(f"git cat-file failed: {result.stderr.decode(errors='replace').strip()}")
    out, pos, blobs = result.stdout, 0, {}
    while pos < len(out):
        end = out.index(b"\n", pos)
        header = out[pos:end].decode().split()
        if len(header) != 3:
            raise GitError(f"git cat-file could not read object {header[0] if header else '?'}")
        oid, _, size = header
        blobs[oid] = out[end + 1 : end + 1 + int(size)]
        pos = end + 1 + int(size) + 1
    return blobs


# --- which files the user's paths name at the commit ----------------------------------------------------


def _repo_relative(path: str, root: Path) -> str:
    """`path` (relative to the working directory, or absolute) relative to the repository top, posix."""
    absolute = Path(os.path.abspath(path))
    try:
        rel = absolute.relative_to(root)
    except ValueError:
        # The working directory may be reached through a symlink; compare real paths too.
        try:
            rel = absolute.resolve().relative_to(root)
        except ValueError:
            raise GitError(f"{path} is outside the git repository at {root}") from None
    return "" if rel == Path(".") else rel.as_posix()


def _wanted(commit: str, rel: str, root: Path) -> list[_Entry]:
    """The files `discover` would read for one path, as they were at `commit`.

    A folder: its YAML files (not recursive, like `discover`). A file: itself and the
    `fleet.yaml` beside it, which `discover` picks up when only files are named.
    """
    if rel:
        own = [e for e in _ls_tree(commit, rel, root) if e.path == rel]
        if not own:
            return []
        kind = own[0].kind
    else:
        kind = "tree"
    if kind == "tree":
        children = _ls_tree(commit, f"{rel}/" if rel else "", root)
        return [e for e in children if e.kind == "blob" and e.mode in _FILE_MODES and e.path.endswith(YAML_SUFFIXES)]
    if kind != "blob" or own[0].mode not in _FILE_MODES:
        return []
    parent = rel.rpartition("/")[0]
    beside = f"{parent}/{FLEET_FILE}" if parent else FLEET_FILE
    fleet = (
        [e for e in _ls_tree(commit, beside, root) if e.path == beside and e.kind == "blob" and e.mode in _FILE_MODES]
        if beside != rel
        else []
    )
    return [own[0], *fleet]


# --- putting the user's names back ------------------------------------------------------------------------


def _renamer(pairs: list[tuple[str, str]], tmp: Path, root: Path) -> Callable[[str], str]:
    """Maps a file name under `tmp` to the name the same file has when loaded from the working tree.

    `pairs` are (temporary path, the user's path) for each path given and each named file's folder;
    the longest matching prefix wins, so names are joined exactly as `discover` joins them.
    """
    ordered = sorted(pairs, key=lambda p: len(p[0]), reverse=True)

    def rename(name: str) -> str:
        for tmp_prefix, user_prefix in ordered:
            if name == tmp_prefix:
                return user_prefix
            if name.startswith(tmp_prefix + os.sep):
                return str(Path(user_prefix) / name[len(tmp_prefix) + 1 :])
        try:
            return os.path.relpath(root / Path(name).relative_to(tmp))
        except ValueError:
            return name

    return rename


def _relabel_node(node: Node, file: str) -> Node:
    value = node.value
    if isinstance(value, dict):
        value = {k: _relabel_node(v, file) for k, v in value.items()}
    elif isinstance(value, list):
        value = [_relabel_node(v, file) for v in value]
    marks = None if node.key_marks is None else {k: Mark(file, m.line, m.col) for k, m in node.key_marks.items()}
    return Node(value, Mark(file, node.mark.line, node.mark.col), marks)


def _relabel_doc(doc: Document, rename: Callable[[str], str]) -> Document:
    name = rename(doc.path)
    return Document(name, _relabel_node(doc.root, name))


def _relabel(loaded: LoadedFleet, rename: Callable[[str], str]) -> LoadedFleet:
    def diag(d: Diagnostic) -> Diagnostic:
        return replace(d, mark=Mark(rename(d.mark.file), d.mark.line, d.mark.col))

    return LoadedFleet(
        None if loaded.fleet is None else _relabel_doc(loaded.fleet, rename),
        tuple(_relabel_doc(d, rename) for d in loaded.deployments),
        tuple(diag(d) for d in loaded.diagnostics),
        None if loaded.fleet_path is None else rename(loaded.fleet_path),
        tuple(diag(d) for d in loaded.warnings),
    )


# --- the entry point ------------------------------------------------------------------------------------------


def load_fleet_at(ref: str, paths: Sequence[str], cwd: str | Path = ".") -> FleetAtRef:
    """Load the fleet that `paths` named at git `ref`, as `load_fleet(paths)` loads the working tree.

    `paths` are interpreted as on the command line (relative to `cwd`, which must be the process's
    working directory for the names to match). Raises GitError with a one-line reason.
    """
    root = repo_root(cwd)
    commit = resolve_commit(ref, root)
    with tempfile.TemporaryDirectory(prefix="fleetform-ref-") as tmp_name:
        tmp = Path(tmp_name)
        present: list[str] = []
        pairs: list[tuple[str, str]] = []
        entries: dict[str, _Entry] = {}
        for p in paths:
            rel = _repo_relative(p, root)
            found = _wanted(commit, rel, root)
            if not found:
                continue  # absent at REF: nothing to load
            stand_in = str(tmp / rel) if rel else str(tmp)
            present.append(stand_in)
            pairs.append((str(Path(stand_in)), str(Path(p))))
            pairs.append((str(Path(stand_in).parent), str(Path(p).parent)))
            for e in found:
                entries[e.path] = e
        blobs = _read_blobs(sorted({e.oid for e in entries.values()}), root)
        for e in entries.values():
            target = tmp / e.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blobs[e.oid])
        loaded = load_fleet(present) if present else LoadedFleet(None, (), ())
        return FleetAtRef(ref, commit, _relabel(loaded, _renamer(pairs, tmp, root)))
