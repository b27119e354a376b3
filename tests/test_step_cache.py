"""The diffusion-forcing step cache: exact when off, close when skipping, and never skipping what it must compute."""

import numpy as np
import pytest
import torch

from skyreels_cli.forcing.engine import Conditioning, DiffusionForcingEngine, Sampling
from skyreels_cli.forcing.schedule import make_scheduler, step_matrix
from skyreels_cli.forcing.windows import plan_windows
from skyreels_cli.models.tiny import build_components
from skyreels_cli.runtime.step_cache import StepCache, relative_change

LATENT_HW = (8, 8)  # 64x64 pixels


class CachedEngine(DiffusionForcingEngine):
    """The engine with the step cache wired in, as the engine diff in the report does (a test double of it)."""

    cache: StepCache | None = None

    def denoise_window(self, latents, window, cond, sampling, generator, end_latent=None):
        if self.cache is not None:
            index, update = step_matrix(window.blocks, sampling.steps, sampling.ar_step, window.ready_blocks)
            self.cache.start_window(index, update, sampling.steps)
            self._row = 0
        return super().denoise_window(latents, window, cond, sampling, generator, end_latent)

    def velocity(self, latents, timesteps, cond, fps):
        if self.cache is not None:
            self.cache.start_row(self._row)
            self._row += 1  # velocity() runs once per step-matrix row
        return super().velocity(latents, timesteps, cond, fps)

    def _model(self, latents, timesteps, embeds, fps, name):
        def run():
            return super(CachedEngine, self)._model(latents, timesteps, embeds, fps, name)

        return run() if self.cache is None else self.cache.velocity(run, name=name, model_in=latents)


@pytest.fixture(scope="module")
def df():
    torch.set_num_threads(1)
    c = build_components("df")
    parts = (c["transformer"], c["vae"], make_scheduler(c["scheduler"].config, 8.0), torch.device("cpu"))

    def embed(text):
        ids = c["tokenizer"](text, padding="max_length", max_length=512, return_tensors="pt")
        with torch.no_grad():
            out = c["text_encoder"](ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        return out * ids.attention_mask[..., None]

    cond = Conditioning(embed("a red fox running through snow"), embed("blurry noise"), 6.0)
    return {"separate": CachedEngine(*parts), "batched": CachedEngine(*parts, cfg="batched")}, cond


SYNC = {"plan": plan_windows(9, base=9, overlap=2), "sampling": Sampling(steps=30)}
# Two windows, blocks of 5 latent frames, asynchronous: the active frames change every 5 rows.
ASYNC = {"plan": plan_windows(25, base=15, overlap=5, causal_block=5), "sampling": Sampling(steps=30, ar_step=5)}


def generate(df, cache, plan, sampling, cfg="separate"):
    engine, cond = df[0][cfg], df[1]
    engine.cache = cache
    outs = list(engine.run(plan, lambda i: cond, sampling, torch.Generator().manual_seed(1), LATENT_HW))
    return np.concatenate([o.frames for o in outs]), torch.cat([o.latents for o in outs], dim=2)


@pytest.fixture(scope="module")
def plain(df):
    return {name: generate(df, None, **run) for name, run in (("sync", SYNC), ("async", ASYNC))}


def levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.slow
def test_threshold_zero_is_exactly_no_cache(df, plain):
    frames, latents = generate(df, StepCache(0.0), **SYNC)
    cache = df[0]["separate"].cache
    assert np.array_equal(frames, plain["sync"][0]) and torch.equal(latents, plain["sync"][1])
    assert cache.skipped == 0 and cache.calls == 2 * 30  # one row per step, cond and uncond


def test_skipping_stays_close_to_the_uncached_output(df, plain):
    ref = plain["sync"][0]
    assert ref.std() > 10 and levels(ref[1:], ref[:-1]) > 5, "frames flat or static: the comparison proves nothing"
    frames, _ = generate(df, StepCache(0.05, max_skips=2), **SYNC)
    cache = df[0]["separate"].cache
    # Measured: 34 of 60 calls skipped, 2.2 levels mean difference. For scale, the same run with 29
    # steps instead of 30 differs from it by 4.0 levels (the tiny random model is chaotic).
    assert cache.skipped >= 20
    assert 0 < levels(frames, ref) < 3.5


def test_async_skips_only_rows_with_the_cached_active_frames(df, plain):
    frames, _ = generate(df, StepCache(1e9, max_skips=10**6), **ASYNC)
    cache = df[0]["separate"].cache
    plan, steps = ASYNC["plan"], ASYNC["sampling"].steps
    assert len(cache.windows) == len(plan.windows) == 2
    for window, count in zip(plan.windows, cache.windows):
        index, update = step_matrix(window.blocks, steps, ASYNC["sampling"].ar_step, window.ready_blocks)
        assert count.calls == 2 * len(update), "counts are per window"
        assert count.skipped > 0
        for row, _ in count.skipped_rows:
            assert 0 < row < len(update) - 1, "first and last rows are always computed"
            assert torch.equal(update[row], update[row - 1]), f"row {row} skipped with new active frames"
            assert not (update[row] & (index[row] == steps)).any(), f"row {row} holds a final step"
    # Skipping every call it may (no threshold, no limit in a row), measured 6.6 levels.
    assert levels(frames, plain["async"][0]) < 8


@pytest.mark.slow
def test_async_counts_and_difference_at_a_moderate_threshold(df, plain):
    frames, _ = generate(df, StepCache(0.02, max_skips=2), **ASYNC)
    stats = df[0]["separate"].cache.stats()
    assert stats["calls"] == sum(w["calls"] for w in stats["windows"]) == 2 * (40 + 35)
    assert stats["skipped"] == sum(w["skipped"] for w in stats["windows"]) > 0
    assert 0 < levels(frames, plain["async"][0]) < 3  # measured 1.7 levels, 60 of 150 calls skipped


def test_batched_guidance_is_one_cached_pass(df, plain):
    frames, _ = generate(df, StepCache(0.0), **SYNC, cfg="batched")
    cache = df[0]["batched"].cache
    assert cache.calls == 30 and cache.skipped == 0  # one batch-2 call per row
    assert levels(frames, plain["sync"][0]) < 0.5  # batch 2 may round differently from two calls
    frames, _ = generate(df, StepCache(0.05, max_skips=2), **SYNC, cfg="batched")
    cache = df[0]["batched"].cache
    assert {name for _, name in cache.windows[0].skipped_rows} == {"cfg"} and cache.skipped >= 10
    assert 0 < levels(frames, plain["sync"][0]) < 3.5


# Unit tests on a scripted model: `compute` counts calls and returns a marker per pass.

def scripted(blocks=(2, 2, 2), steps=6, ar_step=0, ready=0, threshold=1.0, max_skips=10):
    index, update = step_matrix(blocks, steps, ar_step, ready)
    cache = StepCache(threshold, max_skips)
    cache.start_window(index, update, steps)
    return cache, index, update


def call(cache, name, model_in, value):
    computed = []

    def compute():
        computed.append(True)
        return torch.full_like(model_in, value)

    out = cache.velocity(compute, name=name, model_in=model_in)
    return out, bool(computed)


def test_counters_and_state_reset_per_window():
    cache, index, update = scripted()
    x = torch.ones(1, 4, 6, 2, 2)
    for row in range(3):
        cache.start_row(row)
        call(cache, "cond", x, row)
    assert cache.windows[-1].skipped == 2
    cache.start_window(index, update, 6)
    cache.start_row(1)  # not the first row, nothing changed: only an emptied cache forces the call
    out, computed = call(cache, "cond", x, 7.0)
    assert computed and out.eq(7).all()
    assert [(w.calls, w.skipped) for w in cache.windows] == [(3, 2), (1, 0)]


def test_max_skips_first_and_last_rows():
    cache, _, update = scripted(max_skips=2)
    x = torch.ones(1, 4, 6, 2, 2)
    pattern = []
    for row in range(len(update)):
        cache.start_row(row)
        pattern.append(call(cache, "cond", x, row)[1])
    assert pattern == [True, False, False, True, False, True]  # row 5 is the last: computed despite no change


def test_changed_active_frames_are_never_skipped():
    cache, _, update = scripted(blocks=(2, 2, 2), steps=6, ar_step=2)
    x = torch.ones(1, 4, 6, 2, 2)
    for row in range(len(update)):
        cache.start_row(row)
        _, computed = call(cache, "cond", x, row)
        changed = row == 0 or not torch.equal(update[row], update[row - 1])
        if changed:
            assert computed, f"row {row}: active frames changed but the call was skipped"
    assert cache.skipped > 0, "with no input change, rows with unchanged active frames are skipped"


def test_change_is_measured_on_active_frames_only():
    # Asynchronous rows update one block while the rest stand still: a whole-tensor measure is diluted.
    index, update = step_matrix((1,) * 10, 10, 10)
    row = 11
    assert update[row].sum() == 1 and torch.equal(update[row], update[row - 1])
    x0 = torch.randn(1, 4, 10, 2, 2, generator=torch.Generator().manual_seed(0))
    x1 = x0.clone()
    x1[:, :, update[row]] *= 1.1  # the active frame moves by 10%, the tensor as a whole by about 1%
    assert relative_change(x1, x0, torch.ones(10, dtype=torch.bool)) < 0.02 < relative_change(x1, x0, update[row])
    cache = StepCache(0.02)
    cache.start_window(index, update, 10)
    cache.start_row(row - 1)
    call(cache, "cond", x0, 0.0)
    cache.start_row(row)
    assert call(cache, "cond", x1, 1.0)[1], "a 10% move of the only active frame was skipped"


def test_cond_and_uncond_are_kept_apart_and_batched_passes_work():
    cache, _, _ = scripted()
    x = torch.ones(1, 4, 6, 2, 2)
    for row in range(2):
        cache.start_row(row)
        cond, _ = call(cache, "cond", x, 10.0 + row)
        uncond, _ = call(cache, "uncond", x, 20.0 + row)
    assert cache.skipped == 2 and cond.eq(10).all() and uncond.eq(20).all()
    # One batch-2 pass (cond and uncond together): the largest change in the batch decides.
    cache, _, _ = scripted(threshold=0.05)
    pair = torch.ones(2, 4, 6, 2, 2)
    cache.start_row(0)
    call(cache, "cfg", pair, 0.0)
    moved = pair.clone()
    moved[1] *= 1.08  # 8% in one half of the batch: 4% on average, below the threshold
    cache.start_row(1)
    assert call(cache, "cfg", moved, 1.0)[1], "an 8% change in one half of the batch was skipped"
    cache.start_row(2)
    out, computed = call(cache, "cfg", moved, 2.0)
    assert not computed and out.shape == pair.shape and out.eq(1).all()


def test_settings_are_checked_and_reported():
    with pytest.raises(ValueError):
        StepCache(-0.1)
    cache, _, _ = scripted()
    cache.start_row(0)
    call(cache, "cond", torch.ones(1, 4, 6, 2, 2), 0.0)
    assert cache.stats() == {"threshold": 1.0, "max_skips": 10, "calls": 1, "skipped": 0,
                             "windows": [{"calls": 1, "skipped": 0}]}
    assert "skipped 0 of 1" in cache.summary()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_works_on_cuda_tensors():
    cache, _, _ = scripted(threshold=0.05)
    x = torch.ones(1, 4, 6, 2, 2, device="cuda")
    for row, expect_computed in ((0, True), (1, False)):
        cache.start_row(row)
        out, computed = call(cache, "cond", x, 0.0)
        assert computed == expect_computed and out.device == x.device
