"""`skyreels doctor`: what this machine offers for running the models."""

from __future__ import annotations

import shutil


def report() -> tuple[list[str], bool]:
    """Lines to print, and whether a GPU run can work here."""
    import torch

    lines, ok = [], True
    from .. import __version__

    lines.append(f"skyreels     {__version__}")
    lines.append(f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            name = torch.cuda.get_device_name(i)
            lines.append(f"GPU {i}        {name}, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
    else:
        ok = False
        lines.append("GPU          none visible: generation needs --device cpu (only practical with --model tiny)")
    lines.append(_version_line("diffusers"))
    lines.append(_version_line("transformers"))
    try:
        import imageio_ffmpeg

        lines.append(f"ffmpeg       {imageio_ffmpeg.get_ffmpeg_exe()} ({imageio_ffmpeg.get_ffmpeg_version()})")
    except (ImportError, RuntimeError) as exc:
        ok = False
        lines.append(f"ffmpeg       missing ({exc}): reinstall imageio-ffmpeg")
    from ..models.hub import hf_home, is_offline

    cache = hf_home()
    free = shutil.disk_usage(cache if cache.exists() else cache.parent).free if cache.parent.exists() else 0
    lines.append(f"model cache  {cache / 'hub'} ({free / 1e9:.0f} GB free){' [offline]' if is_offline() else ''}")
    for extra in ("xformers", "flash_attn", "sageattention"):
        lines.append(_version_line(extra))
    from ..models.check import problems
    from ..models.hub import cached_snapshot
    from ..models.registry import load_registry

    for alias, spec in load_registry().models.items():
        snapshot = cached_snapshot(spec)
        found = problems(snapshot) if snapshot else []
        if snapshot:
            lines.append(f"{alias:<12} cached, {'damaged: ' + found[0] if found else 'all files whole'}")
        if found:
            ok = False
            lines.append(f"{'':<12} repair with: skyreels download --force {alias}")
    return lines, ok


def _version_line(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"flash_attn": "flash-attn"}.get(module, module)
    try:
        return f"{module:<12} {version(dist)}"
    except PackageNotFoundError:
        return f"{module:<12} not installed"
