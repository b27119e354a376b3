"""Options shared by the generating commands: declared once, used by each."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Registry alias, Hub repo id or local folder.")]
Output = Annotated[Optional[str], typer.Option("--output", "-o", help="NAME.mp4, or DIR/ for PNG frames.")]
Seed = Annotated[Optional[int], typer.Option("--seed", "-s", help="Random seed (default: drawn and reported).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Denoising steps (model default).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", "-g", help="Classifier-free guidance scale.")]
Shift = Annotated[Optional[float], typer.Option("--shift", help="Flow-matching time shift.")]
Height = Annotated[Optional[int], typer.Option("--height", "-H", help="Height in pixels, a multiple of 16.")]
Width = Annotated[Optional[int], typer.Option("--width", "-W", help="Width in pixels, a multiple of 16.")]
Frames = Annotated[Optional[int], typer.Option("--frames", "-f", help="Number of frames, any positive count (model default: 97 at 540P).")]
Seconds = Annotated[Optional[float], typer.Option("--seconds", help="Length in seconds instead of --frames (at --fps).")]
Fps = Annotated[Optional[float], typer.Option("--fps", help="Frames per second of the output (24; a continued video keeps its own).")]
Negative = Annotated[Optional[str], typer.Option("--negative-prompt", "-n", help="What to avoid (official list by default).")]
Device = Annotated[str, typer.Option("--device", "-d", help="auto (CUDA when visible; the CPU for tiny models), cuda, cuda:N or cpu.")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="bf16, fp16 or fp32 (default bf16 on CUDA, fp32 on CPU).")]
Grid = Annotated[Optional[str], typer.Option("--sigma-grid", help="official (SkyReels-V2 sampler, default) or diffusers (as shipped).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check every setting and print what would be made; load and write nothing.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages; print only the output path.")]

# How the model runs (not what it makes): memory plan, kernels, compilation. `skyreels plan` shows the choices.
Offload = Annotated[str, typer.Option("--offload", help="Memory plan: auto (the fastest that fits the GPU), none, model, group or sequential; see `skyreels plan`.")]
Quantize = Annotated[str, typer.Option("--quantize", help="Transformer weights: auto (bf16 unless only fp8 keeps them on the GPU), none (bf16), fp8 (stored in fp8, computed in bf16) or int8 (torchao).")]
Attention = Annotated[str, typer.Option("--attention", help="Attention kernel: auto (fastest installed), sdpa, flash, flash3, sage or xformers.")]
TextEncoderDevice = Annotated[Optional[str], typer.Option("--text-encoder-device", help="Where the text encoder runs: the run's device (default, only while it encodes) or cpu.")]
Cfg = Annotated[str, typer.Option("--cfg", help="Guidance passes: auto, batched (one forward of two, faster, more memory) or separate.")]
TiledDecode = Annotated[Optional[bool], typer.Option("--tiled-decode/--no-tiled-decode", help="Decode in spatial tiles (default: only when the whole frame would not fit).")]
Compile = Annotated[bool, typer.Option("--compile", help="Compile the transformer's blocks with torch.compile (slow first window, faster after).")]
Cache = Annotated[Optional[float], typer.Option("--cache", help="Skip transformer calls whose input barely changed, at this threshold (e.g. 0.05; off by default). Changes the frames a little; the skipped calls are counted in the sidecar.")]

# Film-making inputs: what the model is adapted with, and who writes the prompt.
Lora = Annotated[list[str] | None, typer.Option("--lora", help="A LoRA for the transformer: FILE.safetensors, a folder or a Hub repo id, with :SCALE to weight it (e.g. style.safetensors:0.8); repeatable. Refused whole if any layer does not fit the model.")]
Enhance = Annotated[bool, typer.Option("--enhance", help="Rewrite the prompt into a detailed cinematic description with a local LLM first (printed, and recorded beside the original).")]
Enhancer = Annotated[str | None, typer.Option("--enhancer", help="LLM for --enhance (implies it): qwen2.5-1.5b (default), qwen2.5-3b, qwen2.5-7b, another instruction-tuned Hub repo id, or a local folder.")]

# The size by shape, and running a recorded video's settings again.
Resolution = Annotated[Optional[str], typer.Option("--resolution", help="540p (544x960) or 720p (720x1280) at --aspect: sets height and width (default: the model's own size).")]
Aspect = Annotated[Optional[str], typer.Option("--aspect", help="16:9, 9:16, 1:1, 4:3 or 3:4 at about the model's pixel count (default: the start image's, else the model's); a --height or --width given sets that side.")]
From = Annotated[Optional[str], typer.Option("--from", help="Run again with the settings recorded in this skyreels video, PNG folder or settings JSON (same seed: same frames); options given here override them.")]

# Several GPUs (context parallelism): how many processes, and how they share attention.
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="Run on this many GPUs of this machine (starts torchrun for you; with --device cpu, that many CPU processes).")]
Ulysses = Annotated[Optional[int], typer.Option("--ulysses", help="Processes sharing attention heads (Ulysses); default: as many as the head count allows.")]
Ring = Annotated[Optional[int], typer.Option("--ring", help="Processes passing keys and values round (ring attention); --ulysses x --ring = processes.")]
