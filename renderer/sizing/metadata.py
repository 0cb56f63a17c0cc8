"""A model's config.json and weight sizes: from a folder, the local Hugging Face cache, or the Hub."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from renderer.sizing.common import SizingError
from renderer.sizing.shape import ModelShape, shape_from_config

# --- reading the model's metadata ---------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors",)
LEGACY_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelMetadata:
    """A model's shape and weight size, and where each came from (for the user to judge)."""

    config: dict
    shape: ModelShape
    weights_bytes: int | None  # size of the checkpoint's weights; None: unknown
    config_source: str  # "--from-dir", "Hugging Face cache", "Hugging Face Hub"
    weights_source: str


def read_config(path: Path) -> dict:
    """Parse a config.json; every failure is one line naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SizingError(f"{path.name}: not found in {path.parent.name or '.'}") from None
    except OSError as exc:
        raise SizingError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SizingError(f"{path.name} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SizingError(f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise SizingError(f"{path.name} should hold a JSON object, got {type(data).__name__}")
    return data


def _index_total(path: Path) -> int | None:
    try:
        total = json.loads(path.read_text(encoding="utf-8"))["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


def weights_in_dir(folder: Path) -> tuple[int, str] | None:
    """(bytes, how) of the weights in a checkpoint folder: the safetensors files' sizes on disk,
    else the safetensors index's `metadata.total_size`, else legacy PyTorch files; None if none."""

    def sizes(suffixes: tuple[str, ...]) -> list[int]:
        out = []
        for p in sorted(folder.iterdir()):
            if p.name.endswith(suffixes) and not p.name.startswith(("training_args", "optimizer")):
                try:
                    out.append(p.stat().st_size)
                except OSError:  # a dangling cache symlink: that file was never downloaded
                    return []
        return out

    if not folder.is_dir():
        return None
    found = sizes(WEIGHT_SUFFIXES)
    index = _index_total(folder / INDEX_FILE)
    if found and (index is None or sum(found) >= index):
        return sum(found), f"{len(found)} safetensors file(s) on disk"
    if index is not None:
        return index, f"{INDEX_FILE} metadata.total_size"
    legacy = sizes(LEGACY_WEIGHT_SUFFIXES)
    if legacy:
        return sum(legacy), f"{len(legacy)} PyTorch weight file(s) on disk"
    return None


def metadata_from_dir(folder: str | Path) -> ModelMetadata:
    folder = Path(folder)
    if not folder.is_dir():
        raise SizingError(f"--from-dir {folder}: not a directory")
    config = read_config(folder / "config.json")
    shape = shape_from_config(config)
    weights = weights_in_dir(folder)
    return ModelMetadata(
        config, shape, weights[0] if weights else None, "--from-dir", weights[1] if weights else "not found"
    )


def metadata_from_cache(model_id: str, revision: str, cache_dir: str | Path | None = None) -> ModelMetadata | None:
    """The model at this commit from the local Hugging Face cache, or None if it is not there.

    A cached snapshot folder holds links to every file downloaded for that commit, so its
    safetensors sizes are the weights' sizes once the weights were fetched; a cache holding only
    config.json and the index still gives the index's total.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json", cache_dir=cache_dir, revision=revision)
    except (OSError, ValueError) as exc:  # a cache folder that is a file, unreadable, or garbled
        where = getattr(exc, "filename", None) or cache_dir or constants.HF_HUB_CACHE
        why = getattr(exc, "strerror", None) or exc
        raise SizingError(f"cannot read the Hugging Face cache at {where}: {why}") from None
    if not isinstance(found, str):
        return None
    path = Path(found)
    try:
        config = read_config(path)
        shape = shape_from_config(config)
    except SizingError as exc:
        raise SizingError(f"{exc} (the Hugging Face cache's {path})") from None
    weights = weights_in_dir(path.parent)
    return ModelMetadata(
        config,
        shape,
        weights[0] if weights else None,
        "Hugging Face cache",
        weights[1] if weights else "not in the cache",
    )


def _hub_unreachable(endpoint: str, timeout: float = 5.0) -> str | None:
    """Why a TCP connection to the Hub fails (None: it connects, or a proxy is in the way and decides).

    huggingface_hub retries a failed connection five times with back-off (20-odd seconds of
    "Retrying" lines); one quick probe first makes an offline `new` fail at once.
    """
    import socket
    from urllib.parse import urlsplit

    if any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    url = urlsplit(endpoint)
    try:
        socket.create_connection(
            (url.hostname or "", url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def metadata_from_hub(model_id: str, revision: str) -> ModelMetadata:
    """config.json and file sizes from the Hugging Face Hub (network; a token for gated models)."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    why = _hub_unreachable(constants.ENDPOINT)
    if why:
        raise SizingError(
            f"{model_id}@{revision[:12]}: cannot reach the Hub at {constants.ENDPOINT} ({why}): "
            "pass --from-dir DIR to size it offline"
        )
    try:
        path = hf_hub_download(model_id, "config.json", revision=revision)
        info = HfApi().model_info(model_id, revision=revision, files_metadata=True)
    except OfflineModeIsEnabled:
        raise SizingError(
            f"{model_id}@{revision[:12]} is not in the local Hugging Face cache and the Hub is "
            "offline (HF_HUB_OFFLINE): pass --from-dir DIR"
        ) from None
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SizingError(f"{model_id}@{revision[:12]}: the Hub refused: {first}") from None
    except (OSError, ValueError) as exc:
        raise SizingError(
            f"{model_id}@{revision[:12]}: cannot reach the Hub ({type(exc).__name__}): "
            "pass --from-dir DIR to size it offline"
        ) from None
    config = read_config(Path(path))
    shape = shape_from_config(config)
    files = [(s.rfilename, s.size) for s in (info.siblings or []) if s.size]
    st = [size for name, size in files if name.endswith(WEIGHT_SUFFIXES)]
    legacy = [size for name, size in files if name.endswith(LEGACY_WEIGHT_SUFFIXES)]
    chosen, how = (st, "safetensors") if st else (legacy, "PyTorch")
    return ModelMetadata(
        config,
        shape,
        sum(chosen) if chosen else None,
        "Hugging Face Hub",
        f"{len(chosen)} {how} file(s) listed on the Hub" if chosen else "not listed on the Hub",
    )


def load_metadata(
    model_id: str,
    revision: str,
    *,
    from_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_network: bool = True,
) -> ModelMetadata:
    """From `from_dir` if given; else the local cache; else the Hub (unless offline). Raises SizingError."""
    if from_dir is not None:
        return metadata_from_dir(from_dir)
    cached = metadata_from_cache(model_id, revision, cache_dir)
    if cached is not None and (cached.weights_bytes is not None or not allow_network):
        return cached
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not allow_network or offline:
        if cached is not None:
            return cached
        raise SizingError(
            f"{model_id}@{revision[:12]} is not in the local Hugging Face cache and the Hub is "
            "offline: pass --from-dir DIR"
        )
    return metadata_from_hub(model_id, revision)


def metadata_offline(
    model_id: str, revision: str, cache_dir: str | Path | None = None, problems: list[str] | None = None
) -> ModelMetadata | None:
    """What `validate` can know without a network: the cached model with its weight size, or None.

    Never raises: a model missing from the cache means the fit is simply not checked; a cache or
    cached config.json sizing cannot read means the same, and its message (naming the file) is
    appended to `problems` so the caller can warn.
    """
    try:
        found = metadata_from_cache(model_id, revision, cache_dir)
    except SizingError as exc:
        if problems is not None:
            problems.append(str(exc))
        return None
    return found if found is not None and found.weights_bytes is not None else None
