"""`skyreels doctor`: what this machine offers for running the models, and a summary line of what works here.

Exit code: 0 when everything this machine can do works: the tiny models on the CPU always, and the released
models when a CUDA GPU is visible. A machine without a GPU is not broken: it says so in the summary and exits 0.
1 when something that should work does not: ffmpeg or a required package missing, a visible GPU that cannot be
queried, or a model in the cache that is damaged (each line says how to repair it).
"""

from __future__ import annotations

import shutil

REQUIRED = ("diffusers", "transformers")  # without these no model loads, tiny or released


def report() -> tuple[list[str], bool]:
    """Lines to print, the last one a summary of what works here; and whether all this machine can do works."""
    import torch

    lines: list[str] = []
    broken: list[str] = []  # what should work here and does not, as the summary names it
    from .. import __version__

    lines.append(f"skyreels     {__version__}")
    lines.append(f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    gpus = 0
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            try:
                free, total = torch.cuda.mem_get_info(i)
                name = torch.cuda.get_device_name(i)
            except RuntimeError as exc:
                broken.append(f"GPU {i} cannot be queried")
                lines.append(f"GPU {i}        cannot be queried ({str(exc).splitlines()[0] if str(exc) else exc!r}): "
                             "check the driver with nvidia-smi")
                continue
            gpus += 1
            lines.append(f"GPU {i}        {name}, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
    else:
        lines.append("GPU          none visible: the released models need a CUDA GPU; the tiny models run on the CPU "
                     "(--model tiny)")
    for module in REQUIRED:
        line = _version_line(module)
        lines.append(line + (f": pip install {module}" if line.endswith("not installed") else ""))
        if line.endswith("not installed"):
            broken.append(f"{module} is not installed")
    try:
        import imageio_ffmpeg

        lines.append(f"ffmpeg       {imageio_ffmpeg.get_ffmpeg_exe()} ({imageio_ffmpeg.get_ffmpeg_version()})")
    except (ImportError, RuntimeError) as exc:
        broken.append("ffmpeg is missing")
        lines.append(f"ffmpeg       missing ({exc}): reinstall imageio-ffmpeg")
    from ..models.hub import hf_home, is_offline, tiny_root

    cache = hf_home()
    lines.append(f"model cache  {cache / 'hub'} ({_free_gb(cache):.0f} GB free){' [offline]' if is_offline() else ''}")
    lines.append(f"tiny models  {tiny_root()} (built there on first use, no download)")
    from ..runtime.attention import kernel_status, pick_backend

    for kernel, status in kernel_status():  # optional: SDPA runs without any of them
        lines.append(f"{kernel:<12} {status}")
    if gpus:
        lines.append(f"attention    auto on GPU 0: {_auto_kernel(pick_backend)} (bf16)")
    from ..models.check import problems
    from ..models.hub import cached_snapshot
    from ..models.registry import load_registry

    for alias, spec in load_registry().models.items():
        snapshot = cached_snapshot(spec)
        found = problems(snapshot) if snapshot else []
        if snapshot:
            where = "built" if spec.is_tiny else "cached"
            lines.append(f"{alias:<12} {where}, {'damaged: ' + found[0] if found else 'all files whole'}")
        if found:
            broken.append(f"model {alias} is damaged")
            lines.append(f"{'':<12} repair with: skyreels download --force {alias}")
    lines.append(summary(gpus, broken))
    return lines, not broken


def summary(gpus: int, broken: list[str]) -> str:
    """One line: what runs here and what does not (and why)."""
    if broken:
        return f"not ready: {'; '.join(broken)} (see above for the fix)"
    if gpus:
        return f"ready for the released models on {gpus} GPU{'s' if gpus > 1 else ''} and the tiny models on the CPU"
    return "ready for the tiny models on the CPU; no GPU: the released models need CUDA"


def _free_gb(folder) -> float:
    """Free space where `folder` is, or would be made (its nearest existing parent)."""
    for place in (folder, *folder.parents):
        if place.exists():
            return shutil.disk_usage(place).free / 1e9
    return 0.0


def _auto_kernel(pick_backend) -> str:
    import torch

    try:
        return pick_backend("auto", torch.device("cuda", 0), torch.bfloat16)
    except (RuntimeError, AssertionError) as exc:  # a GPU that cannot say its generation
        return f"unknown ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def _version_line(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{module:<12} {version(module)}"
    except PackageNotFoundError:
        return f"{module:<12} not installed"
