"""Getting checkpoints onto this machine: the Hugging Face cache, and the local tiny builds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelError
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


def looks_like_repo_id(name: str, *, with_file: bool = False) -> bool:
    """`org/name` (with `with_file`, also `org/name/path/in/repo`), not a local path: what the Hub could hold."""
    parts = name.split("/")
    if name.startswith((".", "/", "~")) or "\\" in name or any(not part.strip() for part in parts):
        return False
    return len(parts) == 2 or (with_file and len(parts) > 2)


def hf_home() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def tiny_root() -> Path:
    """Where the tiny random checkpoints are built: beside the Hub cache (in HF_HOME), not in it."""
    return hf_home() / "skyreels-tiny"


def tiny_path(spec: ModelSpec) -> Path:
    return tiny_root() / spec.kind


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def ensure_model(spec: ModelSpec, progress: bool = True, force: bool = False) -> Path:
    """Local folder of the checkpoint: the given folder, a tiny build, or a Hub snapshot (downloaded if needed,
    again with `force`), checked to be whole: a missing, truncated or corrupt file is a ModelError saying how
    to repair it."""
    if spec.local_path is not None:
        folder = spec.local_path
    elif spec.is_tiny:
        folder = _ensure_tiny(spec, force)
    else:
        folder = _snapshot(spec, progress, force)
    verify(spec, folder)
    return folder


def verify(spec: ModelSpec, folder: Path) -> None:
    from .check import problems

    found = problems(folder)
    if not found:
        return
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    if spec.local_path is not None:
        fix = "replace the file, or download the checkpoint again"
    else:
        fix = f"run `skyreels download --force {spec.alias}` to fetch it again"
    raise ModelError(f"model {spec.alias} is damaged: {found[0]}{more}; {fix}")


def _ensure_tiny(spec: ModelSpec, force: bool) -> Path:
    import shutil

    from ..quiet import third_party_quiet
    from .tiny import save_checkpoint

    path = tiny_path(spec)
    try:
        if force and path.exists():
            shutil.rmtree(path)
        if not (path / "model_index.json").is_file():
            with third_party_quiet():  # a second's build: transformers' "Writing model shards" bars are noise
                save_checkpoint(spec.kind, path)
    except OSError as err:
        raise ModelError(f"cannot build the tiny model in {path} ({err.strerror or err}); set HF_HOME to a "
                         "writable folder") from None
    return path


def _snapshot(spec: ModelSpec, progress: bool, force: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    with hub_errors(f"model {spec.alias}", spec.repo, spec.revision, fetch=f"run `skyreels download {spec.alias}`",
                    missing="run `skyreels models` for the known ones",
                    entry="has no model_index.json: it is not a Diffusers checkpoint"):
        return Path(snapshot_download(spec.repo, revision=spec.revision, allow_patterns=ALLOW_PATTERNS,
                                      force_download=force))


@contextmanager
def hub_errors(what: str, repo: str, revision: str = "main", *, fetch: str, missing: str = "",
               entry: str = "") -> Iterator[None]:
    """The Hub's exceptions as one-line ModelErrors that say what to do: the one translation for models, LoRAs
    and prompt enhancers. `what` names the thing ("model df-1.3b-540p"), `fetch` how to get it where there is a
    network ("run `skyreels download df-1.3b-540p`"), `missing` what to do about a repo that is not there,
    `entry` what a missing file inside it means."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except LocalEntryNotFoundError:
        if is_offline():
            raise ModelError(f"{what} is not in the cache ({hf_home() / 'hub'}) and HF_HUB_OFFLINE is set; "
                             f"{fetch} with network access first") from None
        raise ModelError(f"could not download {repo}: the Hub is unreachable; check the network or {fetch} where "
                         "there is one") from None
    except GatedRepoError:
        raise ModelError(f"{repo} needs you to accept its terms on huggingface.co and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelError(f"no {repo} on the Hugging Face Hub (or it is private: set HF_TOKEN)"
                         + (f"; {missing}" if missing else "")) from None
    except RevisionNotFoundError:
        raise ModelError(f"{repo} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise ModelError(f"{repo} {entry or 'lacks a file skyreels needs'}") from None


def hub_mismatches(spec: ModelSpec, folder: Path) -> list[str] | None:
    """Local files whose size or sha256 differs from what the Hub lists for them; None when the Hub
    cannot be asked (offline, unreachable, or a local or tiny model)."""
    if spec.local_path is not None or spec.is_tiny or is_offline():
        return None
    try:
        facts = hub_facts(spec)
    except (OSError, ValueError):  # huggingface-hub's HTTP errors are OSErrors
        return None
    found = []
    for name, (size, sha256) in sorted(facts.items()):
        local = folder / name
        if not local.is_file():
            continue  # not a file skyreels fetches
        if size is not None and local.stat().st_size != size:
            found.append(f"{local} has {local.stat().st_size} bytes where the Hub lists {size}")
        elif sha256 and sha256_of(local) != sha256:
            found.append(f"{local} differs from the Hub's copy (sha256)")
    return found


def hub_facts(spec: ModelSpec) -> dict[str, tuple[int | None, str | None]]:
    """Size and (for large files) sha256 of every file of the repo, as the Hub lists them."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(spec.repo, revision=spec.revision, files_metadata=True)
    return {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}


def sha256_of(path: Path) -> str:
    """The file's sha256 as the Hub lists it (huggingface_hub's own chunked hashing)."""
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as fh:
        return sha_fileobj(fh).hex()


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
