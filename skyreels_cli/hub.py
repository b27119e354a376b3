"""Getting checkpoints onto this machine: the Hugging Face cache, and the local tiny builds."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError
from .registry import ModelSpec

# Only what the pipelines load: Diffusers-format weights and configs, never the
# original .pth checkpoints or sample media that some repos also hold.
ALLOW_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "image_processor/*.json",
]


def hf_home() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def tiny_path(spec: ModelSpec) -> Path:
    return hf_home() / "skyreels-tiny" / spec.kind


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def ensure_model(spec: ModelSpec, progress: bool = True) -> Path:
    """Local folder of the checkpoint: the given folder, a tiny build, or a Hub snapshot (downloaded if needed)."""
    if spec.local_path is not None:
        return spec.local_path
    if spec.is_tiny:
        return _ensure_tiny(spec)
    return _snapshot(spec, progress)


def _ensure_tiny(spec: ModelSpec) -> Path:
    from .tiny import save_checkpoint

    path = tiny_path(spec)
    if not (path / "model_index.json").is_file():
        save_checkpoint(spec.kind, path)
    return path


def _snapshot(spec: ModelSpec, progress: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        return Path(snapshot_download(spec.repo, revision=spec.revision, allow_patterns=ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        if is_offline():
            raise ModelError(
                f"model {spec.alias} is not in the cache ({hf_home() / 'hub'}) and HF_HUB_OFFLINE is set; "
                f"run `skyreels download {spec.alias}` with network access first"
            ) from None
        raise ModelError(
            f"could not download {spec.repo}: the Hub is unreachable; check the network or run "
            f"`skyreels download {spec.alias}` where there is one"
        ) from None
    except GatedRepoError:
        raise ModelError(f"{spec.repo} needs you to accept its terms on huggingface.co and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"no model {spec.repo} on the Hugging Face Hub (or it is private: set HF_TOKEN); "
            "run `skyreels models` for the known ones"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"{spec.repo} has no revision {spec.revision!r}") from None


def cached_snapshot(spec: ModelSpec) -> Path | None:
    """The cached snapshot folder of a checkpoint, or None if it was never downloaded (no network used)."""
    if spec.local_path is not None:
        return spec.local_path
    if spec.is_tiny:
        path = tiny_path(spec)
        return path if (path / "model_index.json").is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.repo, "model_index.json", revision=spec.revision)
    return Path(found).parent if isinstance(found, str) else None


def disk_size(folder: Path) -> int:
    """Bytes of the files a snapshot holds (the Hub cache links them to blobs)."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            total += path.stat().st_size
    return total
