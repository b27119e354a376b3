"""Our engine against the diffusers SkyReels-V2 pipelines on the released full-size architectures (random weights).

The tiny oracle (test_oracle.py) cannot see a fault that shows only at full size: 12 heads of 128, dim 1536,
30 layers, the real RoPE split of a 128-wide head, the DF-1.3B fps embedding, the I2V image projections and
CLIP ViT-H/14's 257 tokens, the real Wan VAE (96 base channels). Here every component has the released
architecture, read from models/architectures.py by `tiny.save_checkpoint(kind, ..., arch="1.3b")`, except the
text encoder: UMT5-XXL's widths (d_model 4096, 64 heads of 64, d_ff 10240, gated-gelu) but one layer of its 24
and the tiny tokenizer's vocabulary. CLIP keeps all 32 layers.

Both checkpoints are written once per session to a temporary folder and read back by the real loading path
(`sk.load(folder)`); diffusers' pipelines are loaded from the same folder with `from_pretrained` after our
model is freed, so no two copies of a 1.3B transformer are ever in memory (peak about 11 GB, in the I2V case).
At 32x48 pixels (2x3 patches per latent frame: height and width differ, so a transposed RoPE axis would show),
2 steps, the official sigma grid and the same seed, our latents and diffusers' agree to 1e-4 of their largest
value in fp32, and the frames to a level:

- t2v: our `t2v` on the DF-1.3B checkpoint, with guidance (the registry's default model for t2v: it runs
  through our diffusion forcing engine) against `SkyReelsV2DiffusionForcingPipeline`. There is no released
  T2V-1.3B, and a T2V checkpoint is denoised by diffusers' own `SkyReelsV2Pipeline` inside our tool
  (core/clips.py), so it would hold only our prompt encoding and decoding against themselves.
- i2v: I2V-1.3B with the CLIP vision tower, with guidance, against `SkyReelsV2ImageToVideoPipeline` (our prompt
  encoding, image loading, sigma grid and streaming decode around diffusers' denoising loop).
- extend, two windows, synchronous (ar_step 0, no guidance), with tiled decode: our model loaded with
  `tiled_decode=True` and the VAE's tiles shrunk to 32 pixels (2x2 tiles), against the pipeline with
  `vae.enable_tiling` at the same sizes (our decode streams one causal cache per tile window by window;
  diffusers decodes the whole video once).
- extend, two windows, asynchronous (ar_step 1, causal blocks of 2) with causal attention and guidance: our
  per-call block-causal attention (on both calls of each row) against diffusers' dense block-causal mask.
- bf16: our per-frame modulation against diffusers' per-token forward, on the same loaded DF-1.3B transformer:
  bit for bit.
- 14B widths: one DF call of a transformer with the DF-14B's config (40 heads, dim 5120) in 2 of its 40 layers,
  built in memory: our per-frame modulation and mask-free block-causal attention against diffusers' forward and
  its dense mask.
- fp8 weight storage (one step): `sk.load(..., dtype="bf16", quantize="fp8")` against the pipeline in bf16 whose
  transformer stores the same weights the same way (`enable_layerwise_casting(float8_e4m3fn, bf16)`, the call
  our quantize="fp8" makes) and runs diffusers' own eager loop: fp8 is held to its own arithmetic, not to bf16
  (from which it differs by design, as shown), and that path runs our engine in bf16 end to end.

Each fp32 forward costs seconds on a CPU whatever the picture's size (the cross-attention over 512 text tokens
and the weights of 30 blocks), so the synchronous extend and fp8 cases run without guidance (one call per
row; guidance is held by the others), and the checks that inputs matter are cheap ones. Each comparison is
shown able to fail: the latents vary, another prompt or the fps index moves the transformer's output, a
mirrored image moves the latents, all by two orders of magnitude or more beyond the tolerance; tiling moves
pixels; fp8 moves the output.
Figures (errors, timings, peak memory) are printed at the end of the module and, with
SKYREELS_FULL_SIZE_FIGURES=path, written there as JSON (benchmarks/RESULTS.md records them).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from diffusers import SkyReelsV2DiffusionForcingPipeline, SkyReelsV2ImageToVideoPipeline
from PIL import Image

import skyreels_cli as sk
from skyreels_cli import DEFAULT_NEGATIVE_PROMPT
from skyreels_cli.cli.host_memory import release_freed_memory
from skyreels_cli.models.architectures import ARCHITECTURES, CLIP_H14, VaeArch
from skyreels_cli.models.tiny import FULL_SIZE_TEXT_LAYERS, save_checkpoint
from skyreels_cli.runtime.modulation import remove_per_frame_modulation

from .conftest import to_uint8
from .test_oracle import OfficialGrid

pytestmark = pytest.mark.slow

SEED = 7
HEIGHT, WIDTH = 32, 48  # 4x6 latents, 2x3 patches per latent frame
STEPS = 2
TOLERANCE = 1e-4  # of the largest latent, fp32
DETECTABLE = 20 * TOLERANCE  # what a wrong input must move for the comparisons to catch it with room to spare
PROMPT = "a red fox running through the snow"
OTHER_PROMPT = "the cat running through the snow"
# The VAE's tiles shrunk so that a 32x48 picture is cut in 2x2 tiles of at most 32 pixels, 8 pixels blended.
TILES = {"tile_sample_min_height": 32, "tile_sample_min_width": 32,
         "tile_sample_stride_height": 24, "tile_sample_stride_width": 24}

DF = {"guidance": 6.0, "shift": 8.0}
I2V = {"guidance": 5.0, "shift": 5.0}
# One model call per row instead of two where guidance adds nothing a case tests: each fp32 forward costs
# seconds here, most of it the cross-attention over 512 text tokens whatever the picture's size.
NO_GUIDANCE = {"guidance": 1.0, "shift": DF["shift"]}
# One window of 3 latent frames, with guidance (two calls per row), as `skyreels t2v` runs the DF-1.3B.
T2V = dict(prompt=PROMPT, frames=9, **DF)
# Windows of 2 latent frames overlapping by 1: 3 latent frames in two windows of 2 rows each.
SYNC = dict(prompt=PROMPT, frames=9, base_frames=5, overlap=1, addnoise=0, **NO_GUIDANCE)
# Windows of 4 latent frames in causal blocks of 2, overlapping by one block: 6 latent frames in two windows,
# 3 + 2 rows (the second block runs one step behind the first). With guidance: both calls of a row must see
# the block-causal mask.
ASYNC = dict(prompt=PROMPT, frames=21, base_frames=13, overlap=5, addnoise=0, ar_step=1, causal_block=2,
             causal_attention=True, **DF)
# One step: a bf16 call with 512 text positions costs about 20 s on a CPU without bf16 arithmetic, and the steps'
# arithmetic is held by the fp32 cases; this one holds fp8 storage and the engine in bf16 end to end.
FP8 = dict(prompt=PROMPT, frames=5, steps=1, **NO_GUIDANCE)

FIGURES: dict = {"size": f"{WIDTH}x{HEIGHT}", "steps": STEPS, "seconds": {}, "cpu_seconds": {}, "rss_gb": {},
                 "cases": {}}


# ------------------------------------------------------------------ helpers


def released() -> None:
    """What was freed goes back to the system now: glibc keeps large freed blocks for reuse, so one phase's
    leftovers would add to the next one's peak."""
    gc.collect()
    release_freed_memory()


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)


@contextmanager
def phase(name: str):
    """Time a phase, free what it left, record the memory figures."""
    started, cpu = time.perf_counter(), time.process_time()
    yield
    FIGURES["seconds"][name] = round(time.perf_counter() - started, 1)
    FIGURES["cpu_seconds"][name] = round(time.process_time() - cpu, 1)
    released()
    FIGURES["rss_gb"][name] = {"peak so far": peak_rss_gb(), "after": round(psutil.Process().memory_info().rss / 1e9, 2)}


@dataclass
class Compared:
    ours: torch.Tensor  # model-space latents of the whole video
    theirs: torch.Tensor
    our_frames: np.ndarray  # uint8 (T, H, W, 3)
    their_frames: np.ndarray

    def latent_error(self) -> float:
        """Max abs difference relative to the largest latent."""
        assert self.ours.shape == self.theirs.shape, (self.ours.shape, self.theirs.shape)
        return (self.ours - self.theirs).abs().max().item() / self.theirs.abs().max().item()

    def levels(self) -> np.ndarray:
        assert self.our_frames.shape == self.their_frames.shape, (self.our_frames.shape, self.their_frames.shape)
        return np.abs(self.our_frames.astype(int) - self.their_frames.astype(int))

    def record(self, name: str) -> None:
        levels = self.levels()
        FIGURES["cases"][name] = {
            "latents": list(self.ours.shape), "frames": int(len(self.our_frames)),
            "latent_err_rel": float(f"{self.latent_error():.3g}"), "latent_std": round(self.theirs.std().item(), 3),
            "frames_max_levels": int(levels.max()), "frames_mean_levels": round(float(levels.mean()), 4),
            "frame_values_differing": f"{int((levels > 0).sum())} of {levels.size}",
        }


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() / b.float().abs().max().item()


def run_ours(model, **request) -> tuple[torch.Tensor, np.ndarray]:
    """Latents and frames of our whole video through the Python API."""
    request = {"seed": SEED, "height": HEIGHT, "width": WIDTH, "steps": STEPS, **request}
    windows = list(model.stream(sk.Request(**request)))
    return torch.cat([w.latents for w in windows], dim=2).float(), np.concatenate([w.frames for w in windows])


def pipeline(cls, folder: Path, shift: float, dtype=torch.float32):
    pipe = cls.from_pretrained(folder, dtype=dtype)
    pipe.scheduler = OfficialGrid.from_config(pipe.scheduler.config, flow_shift=shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()  # as in __call__: with autograd on, the CPU's bf16 kernels round differently
def their_embeds(pipe, prompt: str, guidance: float) -> dict:
    """The pipeline's own `encode_prompt`, as its __call__ runs it (once per prompt here, not once per call)."""
    positive, negative = pipe.encode_prompt(prompt=prompt, negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                                            do_classifier_free_guidance=guidance > 1, max_sequence_length=512,
                                            device=torch.device("cpu"))
    return {"prompt": None, "prompt_embeds": positive, "negative_prompt_embeds": negative, "guidance": guidance}


def run_theirs(pipe, *args, guidance: float, steps: int = STEPS, **kwargs) -> tuple[torch.Tensor, np.ndarray]:
    """diffusers' latents (`output_type="latent"`) and the frames its last step makes of them."""
    latents = pipe(*args, height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", **kwargs).frames
    return latents.float(), their_frames(pipe, latents)


@torch.no_grad()
def their_frames(pipe, latents: torch.Tensor) -> np.ndarray:
    """The pipelines' own last step (`if not output_type == "latent":` in pipeline_skyreels_v2*.py) verbatim,
    then rounded to levels as we write them."""
    vae = pipe.vae
    latents = latents.to(vae.dtype)
    latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                                latents.dtype)
    latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                                   latents.dtype)
    latents = latents / latents_std + latents_mean
    video = vae.decode(latents, return_dict=False)[0]
    return to_uint8(pipe.video_processor.postprocess_video(video, output_type="np")[0])


# ------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="session")
def full_size():
    """DF-1.3B and I2V-1.3B random checkpoints in the released layout, built once, removed after the session."""
    root = Path(tempfile.mkdtemp(prefix="skyreels-full-size-"))
    try:
        with phase("build checkpoints (df, i2v)"):
            folders = {kind: save_checkpoint(kind, root / kind, seed=0, arch="1.3b") for kind in ("df", "i2v")}
        yield folders
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A start image at the output size (so no fitting), and the same mirrored."""
    folder = tmp_path_factory.mktemp("full-size-images")
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 5, y * 7, (x * y) % 255], axis=-1).clip(0, 255).astype(np.uint8)
    paths = {"image": folder / "start.png", "mirrored": folder / "mirrored.png"}
    Image.fromarray(rgb).save(paths["image"])
    Image.fromarray(rgb[:, ::-1]).save(paths["mirrored"])
    return paths


@pytest.fixture(scope="module", autouse=True)
def report():
    """The module's figures, printed (pytest -s) and written where SKYREELS_FULL_SIZE_FIGURES says."""
    started, cpu = time.perf_counter(), time.process_time()
    yield
    FIGURES["seconds"]["module"] = round(time.perf_counter() - started, 1)
    FIGURES["cpu_seconds"]["module"] = round(time.process_time() - cpu, 1)
    FIGURES["peak_rss_gb"] = peak_rss_gb()
    text = json.dumps(FIGURES, indent=1)
    print("\nfull-size oracle:", text)
    if os.environ.get("SKYREELS_FULL_SIZE_FIGURES"):
        Path(os.environ["SKYREELS_FULL_SIZE_FIGURES"]).write_text(text)


# ------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def df_fp32(full_size) -> dict:
    """t2v, sync extend (tiled decode) and async extend, ours then diffusers', in fp32."""
    folder = full_size["df"]
    ours = {}
    with phase("df fp32: ours (t2v, async; reload, sync tiled)"):
        model = sk.load(str(folder), device="cpu", progress=False)
        assert model.spec.kind == "df" and model.dtype == torch.float32
        ours["t2v"] = run_ours(model, **T2V)
        ours["async"] = run_ours(model, **ASYNC)
        del model
        released()
        model = sk.load(str(folder), device="cpu", progress=False, tiled_decode=True)
        model.components["vae"].enable_tiling(**TILES)
        ours["sync"] = run_ours(model, **SYNC)
        del model
        released()
    theirs = {}
    with phase("df fp32: diffusers (t2v, sync tiled, async)"):
        pipe = pipeline(SkyReelsV2DiffusionForcingPipeline, folder, shift=DF["shift"])
        guided = their_embeds(pipe, PROMPT, DF["guidance"])
        theirs["t2v"] = run_theirs(pipe, num_frames=9, **guided)
        pipe.vae.enable_tiling(**TILES)
        theirs["sync"] = run_theirs(pipe, num_frames=9, base_num_frames=5, overlap_history=1, addnoise_condition=0,
                                    **their_embeds(pipe, PROMPT, NO_GUIDANCE["guidance"]))
        pipe.vae.disable_tiling()
        untiled = their_frames(pipe, theirs["sync"][0])
        # Last: a causal block size rewrites the transformer's config for good (diffusers' way).
        theirs["async"] = run_theirs(pipe, num_frames=21, base_num_frames=13, overlap_history=5,
                                     addnoise_condition=0, ar_step=1, causal_block_size=2, **guided)
        del pipe
        released()
    cases = {name: Compared(ours[name][0], theirs[name][0], ours[name][1], theirs[name][1]) for name in ours}
    for name, case in cases.items():
        case.record(name)
    return {**cases, "sync untiled frames": untiled}


@pytest.fixture(scope="module")
def i2v_fp32(full_size, images) -> dict:
    folder = full_size["i2v"]
    request = dict(prompt=PROMPT, frames=9, **I2V)
    with phase("i2v fp32: ours (image; image and mirrored, short)"):
        model = sk.load(str(folder), device="cpu", progress=False)
        assert model.spec.kind == "i2v"
        ours = run_ours(model, image=str(images["image"]), **request)
        # The image's pull, measured cheaply: 5 frames, one step without guidance, the image against its mirror.
        quick = {**request, "frames": 5, "steps": 1, "guidance": 1.0}
        pull = [run_ours(model, image=str(images[name]), **quick)[0] for name in ("image", "mirrored")]
        del model
        released()
    with phase("i2v fp32: diffusers"):
        pipe = pipeline(SkyReelsV2ImageToVideoPipeline, folder, shift=I2V["shift"])
        theirs = run_theirs(pipe, Image.open(images["image"]), PROMPT, negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                            num_frames=9, guidance=I2V["guidance"])
        del pipe
        released()
    case = Compared(ours[0], theirs[0], ours[1], theirs[1])
    case.record("i2v")
    return {"i2v": case, "pull": pull}


# The text positions a direct forward is given: the prompt's tokens and padding after them, not all 512. The
# modulation and the fps embedding do not depend on the text's length, and on a CPU without bf16 arithmetic the
# keys and values of 512 positions in 30 blocks are most of a bf16 forward's cost (15-20 s each here).
FORWARD_TEXT = 64


def forward_inputs(model, prompt: str = PROMPT) -> dict:
    """One DF call as the engine makes it: every latent frame at its own noise level, real prompt embeddings (the
    first FORWARD_TEXT positions)."""
    g = torch.Generator().manual_seed(SEED)
    embeds = model.conditioning(prompt, DEFAULT_NEGATIVE_PROMPT, NO_GUIDANCE["guidance"]).prompt_embeds
    embeds = embeds[:, :FORWARD_TEXT]
    return {"hidden_states": torch.randn(1, 16, 3, HEIGHT // 8, WIDTH // 8, generator=g).to(torch.bfloat16),
            "timestep": torch.tensor([[999, 640, 215]]), "encoder_hidden_states": embeds,
            "enable_diffusion_forcing": True, "fps": [1], "return_dict": False}


@pytest.fixture(scope="module")
def df_bf16(full_size) -> dict:
    """Per-frame modulation in bf16 (one forward, ours and diffusers'), what a wrong fps index or prompt would
    change, and t2v with fp8 weights, ours and diffusers'."""
    folder = full_size["df"]
    out = {}
    with phase("df bf16: forwards (per-frame, per-token, fps 16, other prompt)"), torch.no_grad():
        model = sk.load(str(folder), device="cpu", dtype="bf16", progress=False)
        transformer = model.components["transformer"]
        assert transformer.dtype == torch.bfloat16
        kwargs = forward_inputs(model)
        out["per-frame"] = transformer(**kwargs)[0]  # our modulation: installed by sk.load for DF checkpoints
        remove_per_frame_modulation(transformer)
        out["per-token"] = transformer(**kwargs)[0]  # diffusers' own forward on the same module
        out["fps 16"] = transformer(**{**kwargs, "fps": [0]})[0]
        out["other prompt"] = transformer(**forward_inputs(model, OTHER_PROMPT))[0]
        del model, transformer
        released()
    with phase("df fp8: ours (forward, t2v)"):
        model = sk.load(str(folder), device="cpu", dtype="bf16", quantize="fp8", progress=False)
        stored = {p.dtype for p in model.components["transformer"].parameters()}
        assert torch.float8_e4m3fn in stored, stored
        with torch.no_grad():
            out["fp8 forward"] = model.components["transformer"](**forward_inputs(model))[0]
        ours = run_ours(model, **FP8)
        del model
        released()
    with phase("df fp8: diffusers (t2v)"):
        pipe = pipeline(SkyReelsV2DiffusionForcingPipeline, folder, shift=DF["shift"],
                        dtype={"vae": torch.float32, "default": torch.bfloat16})
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        theirs = run_theirs(pipe, num_frames=5, steps=FP8["steps"],
                            **their_embeds(pipe, PROMPT, NO_GUIDANCE["guidance"]))
        del pipe
        released()
    out["fp8"] = Compared(ours[0], theirs[0], ours[1], theirs[1])
    out["fp8"].record("fp8 t2v")
    return out


def test_the_checkpoints_have_the_released_architectures(full_size):
    """One fact, one place: the sizes are architectures.py's (the text encoder cut in depth only)."""
    df = json.loads((full_size["df"] / "transformer" / "config.json").read_text())
    i2v = json.loads((full_size["i2v"] / "transformer" / "config.json").read_text())
    for config, kind in ((df, "df"), (i2v, "i2v")):
        expected = ARCHITECTURES[(kind, "1.3B")].transformer.config()
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in expected.items()} == \
            {k: config[k] for k in expected}
    assert df["inject_sample_info"] and df["num_attention_heads"] == 12 and df["num_layers"] == 30
    assert i2v["image_dim"] == CLIP_H14.hidden and i2v["in_channels"] == 36
    clip = json.loads((full_size["i2v"] / "image_encoder" / "config.json").read_text())
    assert {k: clip[k] for k in CLIP_H14.config()} == CLIP_H14.config()
    vae = json.loads((full_size["df"] / "vae" / "config.json").read_text())
    assert {k: vae[k] for k in VaeArch().config()} == VaeArch().config()
    text = json.loads((full_size["df"] / "text_encoder" / "config.json").read_text())
    widths = ARCHITECTURES[("df", "1.3B")].text_encoder.config()
    assert {k: text[k] for k in ("d_model", "d_kv", "d_ff", "num_heads", "feed_forward_proj")} == \
        {k: widths[k] for k in ("d_model", "d_kv", "d_ff", "num_heads", "feed_forward_proj")}
    assert text["num_layers"] == FULL_SIZE_TEXT_LAYERS


# ------------------------------------------------------------------ fp32: the engine equals diffusers


def assert_matches(case: Compared) -> None:
    assert case.theirs.std() > 0.5, "flat latents: the comparison would prove nothing"
    assert case.latent_error() <= TOLERANCE, f"latents differ by {case.latent_error():.2e} of their largest value"
    levels = case.levels()
    assert levels.max() <= 1, f"frames differ by {levels.max()} levels (mean {levels.mean():.4f})"
    assert case.their_frames.std() > 5, "flat frames: the comparison would prove nothing"


def test_t2v_on_df_1_3b_matches_diffusers(df_fp32):
    assert df_fp32["t2v"].ours.shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    assert_matches(df_fp32["t2v"])


def test_extend_two_windows_synchronous_tiled_decode_matches_diffusers(df_fp32):
    case = df_fp32["sync"]
    assert case.ours.shape[2] == 3 and len(case.our_frames) == 9
    assert_matches(case)


def test_tiled_decode_really_tiles(df_fp32):
    """The same latents decoded whole move pixels by several levels: the tiles were used (and both sides
    tiled alike, since they agree within a level)."""
    tiled, untiled = df_fp32["sync"].their_frames, df_fp32["sync untiled frames"]
    gap = np.abs(tiled.astype(int) - untiled.astype(int))
    FIGURES["tiling moves pixels (max, mean levels)"] = [int(gap.max()), round(float(gap.mean()), 3)]
    assert gap.max() > 2


def test_extend_two_windows_asynchronous_causal_attention_matches_diffusers(df_fp32):
    case = df_fp32["async"]
    assert case.ours.shape[2] == 6 and len(case.our_frames) == 21
    assert_matches(case)


def test_i2v_1_3b_with_clip_h14_matches_diffusers(i2v_fp32):
    assert_matches(i2v_fp32["i2v"])


def test_the_image_moves_the_latents_far_beyond_the_tolerance(i2v_fp32):
    """A run that read the wrong image (here its mirror) would fail the comparison by orders of magnitude."""
    moved = relative(*i2v_fp32["pull"])
    FIGURES["image moves latents (rel)"] = round(moved, 4)
    assert moved > DETECTABLE


# ------------------------------------------------------------------ bf16 and fp8


def test_per_frame_modulation_in_bf16_equals_diffusers_per_token(df_bf16):
    ours, reference = df_bf16["per-frame"], df_bf16["per-token"]
    assert ours.dtype == reference.dtype == torch.bfloat16
    FIGURES["bf16 per-frame vs per-token (rel)"] = relative(ours, reference)
    assert (reference[:, :, 0] - reference[:, :, -1]).abs().max() > 0.1, "frames alike: a frame mix-up would pass"
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)


def test_the_prompt_moves_the_output_far_beyond_the_tolerance(df_bf16):
    """Random weights at full size still listen to the text: a run that encoded the wrong prompt would fail."""
    moved = relative(df_bf16["other prompt"], df_bf16["per-token"])
    FIGURES["prompt moves forward (rel)"] = round(moved, 4)
    assert moved > DETECTABLE


def test_the_fps_embedding_moves_the_output(df_bf16):
    """The DF-1.3B fps embedding is live: a run that passed the wrong fps index would fail."""
    moved = relative(df_bf16["fps 16"], df_bf16["per-token"])
    FIGURES["fps index moves forward (rel)"] = round(moved, 4)
    assert moved > DETECTABLE


def test_fp8_storage_matches_diffusers_with_the_same_storage(df_bf16):
    case = df_bf16["fp8"]
    fp8_vs_bf16 = relative(df_bf16["fp8 forward"], df_bf16["per-frame"])
    FIGURES["fp8 vs bf16 forward (rel)"] = round(fp8_vs_bf16, 4)
    assert fp8_vs_bf16 > DETECTABLE, "fp8 storage changed nothing"
    assert case.theirs.std() > 0.5
    assert case.latent_error() <= TOLERANCE, f"latents differ by {case.latent_error():.2e} of their largest value"
    assert case.levels().max() <= 1


# ------------------------------------------------------------------ 14B widths: 40 heads of 128, dim 5120


@pytest.fixture(scope="module")
def wide_outputs() -> dict:
    """One DF call at the DF-14B transformer's widths (40 heads of 128, dim 5120, ffn 13824), in two of its 40
    layers (the whole 14B is 57 GB in fp32): diffusers' own forward, with and without its block-causal mask,
    against ours (per-frame modulation, and our mask-free block-causal attention). Built in memory, fp32."""
    from dataclasses import replace

    from diffusers import SkyReelsV2Transformer3DModel

    from skyreels_cli.forcing.causal_attention import causal_attention
    from skyreels_cli.runtime.modulation import install_per_frame_modulation

    arch = replace(ARCHITECTURES[("df", "14B")].transformer, layers=2)
    out = {}
    with phase("df-14b widths fp32: four forwards"), torch.no_grad():
        torch.manual_seed(SEED)
        transformer = SkyReelsV2Transformer3DModel(**arch.config()).eval()
        g = torch.Generator().manual_seed(SEED)
        frames, blocks = 4, (2, 2)
        kwargs = {"hidden_states": torch.randn(1, 16, frames, HEIGHT // 8, WIDTH // 8, generator=g),
                  "timestep": torch.tensor([[999, 999, 640, 640]]),
                  "encoder_hidden_states": torch.randn(1, 512, arch.text_dim, generator=g),
                  "enable_diffusion_forcing": True, "return_dict": False}
        tokens = (HEIGHT // 16) * (WIDTH // 16)
        out["diffusers"] = transformer(**kwargs)[0]
        transformer._set_ar_attention(blocks[0])  # diffusers' dense block-causal mask, built in its forward
        out["diffusers causal"] = transformer(**kwargs)[0]
        transformer.register_to_config(num_frame_per_block=1)
        install_per_frame_modulation(transformer)
        out["ours"] = transformer(**kwargs)[0]
        with causal_attention(transformer, blocks, tokens):
            out["ours causal"] = transformer(**kwargs)[0]
        out["heads"] = transformer.config.num_attention_heads
        out["dim"] = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        del transformer
        released()
    return out


def test_14b_widths_per_frame_modulation_and_causal_attention_equal_diffusers(wide_outputs):
    """A fault that showed only at 40 heads or dim 5120 (a head split, the modulation's layout) would fail here."""
    out = wide_outputs
    assert (out["heads"], out["dim"]) == (40, 5120)
    plain, causal = relative(out["ours"], out["diffusers"]), relative(out["ours causal"], out["diffusers causal"])
    moved = relative(out["diffusers causal"], out["diffusers"])
    FIGURES["14b widths: per-frame vs per-token, causal vs dense mask, mask moves (rel)"] = [plain, causal,
                                                                                            round(moved, 4)]
    assert out["diffusers"].std() > 0.1 and moved > DETECTABLE, "the mask changes nothing: the test proves nothing"
    assert plain <= TOLERANCE and causal <= TOLERANCE, (plain, causal)
