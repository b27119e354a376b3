"""The command line's flags, declared once: the request fields' (`REQUEST_FLAGS`, added to each command for
the fields its job takes, core/job.py `COMMAND_FIELDS`) and the job's own. The run options' flags come from
their table (cli/flags.py).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

COLOR_MATCH_HELP = ("Match each new window's colour (mean and spread of each channel) to the frames it "
                    "continues from, against brightness and colour drift. A correction, not a cure: it removes "
                    "a global shift per window, not local errors, and it also evens out a change of light the "
                    "prompt asks for.")

# Request field -> its flag (the prompt, and i2v's image, are each command's own arguments).
REQUEST_FLAGS = {
    "seed": Annotated[Optional[int], typer.Option("--seed", "-s", help="Random seed (default: drawn and reported).")],
    "steps": Annotated[Optional[int], typer.Option("--steps", help="Denoising steps (model default).")],
    "guidance": Annotated[Optional[float], typer.Option("--guidance", "-g", help="Classifier-free guidance scale.")],
    "shift": Annotated[Optional[float], typer.Option("--shift", help="Flow-matching time shift.")],
    "height": Annotated[Optional[int], typer.Option("--height", "-H", help="Height in pixels, a multiple of 16.")],
    "width": Annotated[Optional[int], typer.Option("--width", "-W", help="Width in pixels, a multiple of 16.")],
    "frames": Annotated[Optional[int], typer.Option("--frames", "-f", help="Number of frames, any positive count (model default: 97 at 540P).")],
    "seconds": Annotated[Optional[float], typer.Option("--seconds", help="Length in seconds instead of --frames (at --fps).")],
    "fps": Annotated[Optional[float], typer.Option("--fps", help="Frames per second of the output (24; a continued video keeps its own).")],
    "negative_prompt": Annotated[Optional[str], typer.Option("--negative-prompt", "-n", help="What to avoid (official list by default).")],
    "sigma_grid": Annotated[Optional[str], typer.Option("--sigma-grid", help="official (SkyReels-V2 sampler, default) or diffusers (as shipped).")],
    "sampler": Annotated[Optional[str], typer.Option("--sampler", help="unipc (the reference's, default) or euler (flow-matching Euler, what few-step LoRAs were distilled with).")],
    "sigmas": Annotated[Optional[str], typer.Option("--sigmas", help="The noise level each step starts from, e.g. 1.0,0.9375,0.8333,0.625: used as given (no shift), the last step goes to 0, one step each.")],
    "cache": Annotated[Optional[float], typer.Option("--cache", help="Skip transformer calls whose input barely changed, at this threshold (e.g. 0.05; off by default). Changes the frames a little; the skipped calls are counted in the sidecar.")],
    "resolution": Annotated[Optional[str], typer.Option("--resolution", help="540p (960x544) or 720p (1280x720) at --aspect: sets height and width (default: the model's own size).")],
    "aspect": Annotated[Optional[str], typer.Option("--aspect", help="16:9, 9:16, 1:1, 4:3 or 3:4 at about the model's pixel count (default: the start image's, else the model's); a --height or --width given sets that side.")],
    "image": Annotated[Optional[str], typer.Option("--image", help="Start frame.")],
    "end_image": Annotated[Optional[str], typer.Option("--end-image", help="Last frame.")],
    "video": Annotated[Optional[str], typer.Option("--video", help="Continue this video; --frames then counts new frames.")],
    "base_frames": Annotated[Optional[int], typer.Option("--base-frames", help="Window length in frames, 4k+1 (model default: 97 at 540P, 121 at 720P).")],
    "overlap": Annotated[Optional[int], typer.Option("--overlap", help="Frames each window shares with the one before, 4k+1 (17, less for short windows).")],
    "ar_step": Annotated[Optional[int], typer.Option("--ar-step", help="Asynchronous lag between causal blocks in steps (0: synchronous).")],
    "causal_block": Annotated[Optional[int], typer.Option("--causal-block", help="Latent frames per causal block (1; 5 with --ar-step 5).")],
    "addnoise": Annotated[Optional[float], typer.Option("--addnoise", help="Noise on the carried-over frames, 0-50 (20; reduces drift).")],
    "causal_attention": Annotated[Optional[bool], typer.Option("--causal-attention", help="Block-causal attention inside a window.")],
    "color_match": Annotated[bool, typer.Option("--color-match", help=COLOR_MATCH_HELP)],
    "live": Annotated[bool, typer.Option("--live", help="Make windows until Ctrl-C (--frames/--seconds: the most), watchable as made (NAME.hls/live.m3u8); each line on standard input is a new prompt from the next window.")],
}
# A flag whose value is not the field's: --color-match is on or off, the field names the mode.
FLAG_DEFAULTS = {"color_match": False, "live": False}

# The job's own flags.
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Registry alias, Hub repo id or local folder.")]
Output = Annotated[Optional[str], typer.Option("--output", "-o", help="NAME.mp4, or DIR/ for PNG frames.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run writing to the same -o.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check every setting and print what would be made; load and write nothing.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages; print only the output path.")]
Enhance = Annotated[bool, typer.Option("--enhance", help="Rewrite the prompt into a detailed cinematic description with a local LLM first (printed, and recorded beside the original).")]
Enhancer = Annotated[Optional[str], typer.Option("--enhancer", help="LLM for --enhance (implies it): qwen2.5-1.5b (default), qwen2.5-3b, qwen2.5-7b, another instruction-tuned Hub repo id, or a local folder.")]
From = Annotated[Optional[str], typer.Option("--from", help="Run again with the settings recorded in this skyreels video, PNG folder or settings JSON (same seed: same frames); options given here override them.")]
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="Run on this many GPUs of this machine (starts torchrun for you; with --device cpu, that many CPU processes).")]
Server = Annotated[Optional[str], typer.Option("--server", help="Submit the job to a running `skyreels serve` at this address (e.g. http://127.0.0.1:7860) instead of running it here: input files are uploaded, its progress followed, the video downloaded to -o. A token, if the service needs one: $SKYREELS_TOKEN.")]
