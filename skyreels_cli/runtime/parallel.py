"""Context parallelism: one transformer call spread over N processes by splitting its token sequence.

Built on diffusers' own machinery (`ContextParallelConfig`, `ModelMixin.enable_parallelism`): a plan says,
as data, where the sequence is split and gathered; diffusers' hooks do the splitting and its attention
dispatcher runs Ulysses (all-to-all across heads) or ring attention (key/value blocks passed round,
merged by their log-sum-exp). diffusers 0.42 has a plan for Wan's transformer but none for SkyReels-V2's;
`context_parallel_plan` is ours. What differs from Wan:

* Per-frame modulation (diffusion forcing, runtime/modulation.py). Blocks get a table of one row per latent
  frame, (B, 6, F, 1, dim), and view their tokens as (B, rows, tokens/rows, dim). We split the tokens
  evenly (as Wan does: 25 latent frames do not divide by 2, 4 or 8, but 25 x 2040 tokens do), so a rank's
  tokens may begin or end mid-frame. Each rank therefore gets a table of *groups*: with `g = gcd(h*w,
  tokens per rank)` tokens per group, every group lies inside one frame, and repeating each frame's row
  h*w/g times then taking this rank's equal share gives exactly the rows of its tokens. The block code is
  unchanged (it already broadcasts "one row per equal run of tokens"); the table stays at most F rows.
* The output modulation is per frame too and our forward applies it to the whole sequence, so the gather
  is at `norm_out` (elementwise, so gathering its output equals running it whole), not at `proj_out`.
  Clip models (t2v/i2v, one timestep per sample) use Wan's plan: gather at `proj_out`.
* The fps embedding is added to the modulation before the blocks: one value per sample, the same on every
  rank, nothing to split.
* Text and I2V image tokens (512 + 257) stay whole on every rank, as in Wan's plan. diffusers' SkyReels
  processor passes the parallel config to cross-attention too, which would all-to-all the replicated keys
  (right numbers, N times the traffic); we clear it on `attn2`, so cross-attention runs locally on each
  rank's queries against all text/image keys.
* Block-causal attention (`--causal-attention`, forcing/causal_attention.py) cuts self-attention into one call per
  query block over the keys that block may see, which needs every key. `whole_sequence_attention` gives
  it them: Ulysses' all-to-all as diffusers does it, then under ring an all-gather of keys and values (as
  diffusers' ring attention gathers them too), and each rank runs the blocks of its own queries.

Processes: `init_parallel` joins the group torchrun describes (NCCL on CUDA, gloo on the CPU), builds the
("ring", "ulysses") device mesh itself (diffusers builds it for an accelerator: on the CPU it divides by a
device count of 0), and starts a watchdog so that when one rank dies the others stop within seconds, and when
every rank is stuck (one stalled, the others waiting for it in a collective) the run stops after `stall_after_s`.
Rank 0 encodes the prompt and images, decodes and writes, and shares embeddings and latents; the others read
only the transformer's weights (`FOLLOWER_READS`). Every rank draws the same noise from the request's seed.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ModelError, PeerLost, UsageError, kept_after_stop, setting
from ..models.loading import auto_device
from .attention import RETURNS_LSE, runs_layout
from .launch import check_gpus

# How long a collective may wait for a slow rank (rank 0 decoding a window while the others wait at the
# next one), not how fast a dead rank is noticed: the watchdog and torchrun do that in seconds.
COLLECTIVE_TIMEOUT_S = 1800
HEARTBEAT_S = 1.0
DEAD_AFTER_S = 10.0
# A rank alive but stuck (a kernel or a file system that never returns) keeps beating while the others wait in a
# collective until its timeout. So each beat carries the rank's progress (its transformer calls and steps), and
# when no rank's progress has moved for this long during a run, the run stops, naming the rank that is behind.
# Generous: longer than any step or window decode a real GPU takes (a 14B step with offload, a 720p window's
# decode on rank 0 while the others wait); $SKYREELS_STALL_S sets it (the tests set a few seconds).
STALL_AFTER_S = 600.0
STALL_ENV = "SKYREELS_STALL_S"
# The rendezvous store's key where the first watchdog to stop the run posts why, for the others to repeat.
STOPPED_KEY = "skyreels/stopped"
# What a rank but the first reads from the checkpoint: rank 0 encodes the prompt and images and decodes,
# and shares embeddings and latents, so the others never load the text encoder (UMT5-XXL, 11 GB in bf16),
# the VAE or the image encoder (models/loading.py builds a weightless VAE for its config).
FOLLOWER_READS = ("transformer", "scheduler")
# Attention kernels that return the log-sum-exp ring attention merges partial results with (runtime/attention.py
# reads which from diffusers). Self-attention on another one moves to torch's flash kernel for ring. None of diffusers'
# backends returns it on the CPU ("native" refuses, "_native_flash" calls a CUDA-only op), so on the CPU
# `_native_flash`'s forward op is routed to torch's CPU flash kernel, which returns it (fp32 too).
RING_BACKENDS = RETURNS_LSE
RING_FALLBACK = "_native_flash"


# ------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Layout:
    """How N ranks share attention: Ulysses across heads, ring across the sequence, or both (N = u x r)."""

    ulysses: int
    ring: int

    @property
    def world(self) -> int:
        return self.ulysses * self.ring

    @property
    def kind(self) -> str:
        """As runtime/attention.py's LAYOUTS name it: which attention kernels can run it depends on this."""
        return "ring" if self.ring > 1 else "ulysses" if self.ulysses > 1 else "one"

    def describe(self) -> str:
        parts = [f"ulysses {self.ulysses}" if self.ulysses > 1 else "", f"ring {self.ring}" if self.ring > 1 else ""]
        return " x ".join(p for p in parts if p) or "one process"

    def flags(self) -> str:
        return f"{setting('ulysses', self.ulysses)} {setting('ring', self.ring)}"


def valid_layouts(heads: int, world: int) -> list[Layout]:
    """Every layout of `world` ranks for `heads` attention heads, the most Ulysses first."""
    return [Layout(u, world // u) for u in range(world, 0, -1) if world % u == 0 and heads % u == 0]


def choose_layout(heads: int, world: int, ulysses: int | None = None, ring: int | None = None) -> Layout:
    """The layout asked for (`--ulysses`, `--ring`, either may be left out), or the default: as much Ulysses
    as the head count allows (one all-to-all per attention, no extra kernel calls), ring for the rest."""
    choices = valid_layouts(heads, world)
    listed = ", ".join(c.flags() for c in choices)
    if ulysses is None and ring is None:
        return choices[0]
    if ulysses is None:
        ulysses = world // ring if ring and world % ring == 0 else 0
    ring = world // ulysses if ring is None and ulysses and world % ulysses == 0 else ring
    picked = Layout(ulysses or 0, ring or 0)
    if picked not in choices:
        why = (f"{heads} heads do not split {ulysses} ways" if ulysses and heads % ulysses
               else f"{setting('ulysses')} x {setting('ring')} must equal the {world} processes")
        raise UsageError(f"cannot run {setting('ulysses', ulysses)} {setting('ring', ring)} on {world} processes: {why}; "
                         f"valid choices: {listed}")
    return picked


def check_layout_options(ulysses: int | None, ring: int | None, parallel: Parallel | None) -> None:
    """--ulysses and --ring describe how several processes share a run: on one process they mean nothing."""
    if parallel is None and (ulysses is not None or ring is not None):
        given = " ".join(f"--{name} {value}" for name, value in (("ulysses", ulysses), ("ring", ring))
                         if value is not None)
        raise UsageError(f"{given} splits a run over several processes, but this is one: add --gpus N (or start it "
                         "with torchrun --nproc-per-node N)")


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class FrameRows:
    """Plan entry of ours: a per-frame table (rows along `frame_dim`) handed to each rank as the rows of
    its own tokens (see the module docstring). `source` names the rotary embedding argument, already split,
    from which the local token count is read."""

    frame_dim: int = 2
    expected_dims: int = 5
    source: str = "rotary_emb"


def context_parallel_plan(per_frame: bool) -> dict[str, Any]:
    """The plan for `SkyReelsV2Transformer3DModel`: diffusers' entries, plus our `FrameRows` under
    per-frame modulation. Keys are module names, as in diffusers' `_cp_plan`."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    plan: dict[str, Any] = {
        # RoPE is computed for the whole grid, then each rank keeps its tokens' rows: (1, S, 1, D)
        "rope": {0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
                 1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)},
        # tokens split once, entering the first block; text/image tokens stay whole (see docstring)
        "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
    }
    if per_frame:
        plan["blocks.*"] = {"temb": FrameRows()}
        plan["norm_out"] = ContextParallelOutput(gather_dim=1, expected_dims=3)
    else:
        plan["proj_out"] = ContextParallelOutput(gather_dim=1, expected_dims=3)
    return plan


def frame_rows(table: torch.Tensor, local_tokens: int, world: int, rank: int, dim: int = 2) -> torch.Tensor:
    """The rows of `table` (one per frame along `dim`) for this rank's `local_tokens` consecutive tokens."""
    frames = table.shape[dim]
    per_frame, rest = divmod(local_tokens * world, frames)
    if rest:
        raise ValueError(f"{local_tokens * world} tokens are not {frames} whole frames")
    group = math.gcd(per_frame, local_tokens)  # every group of `group` tokens lies inside one frame
    rows = table.repeat_interleave(per_frame // group, dim=dim) if group < per_frame else table
    return rows.chunk(world, dim=dim)[rank]


class _FrameRowsHook:
    """Forward pre-hook on each block: replaces the per-frame table by this rank's rows, computed once per
    model call (every block gets the same table object)."""

    def __init__(self, entry: FrameRows, name: str, world: int, rank: int, position: int) -> None:
        self.entry, self.name, self.world, self.rank, self.position = entry, name, world, rank, position
        self._source: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None

    def __call__(self, module, args, kwargs):
        args = list(args)
        table = kwargs[self.name] if self.name in kwargs else args[self.position]
        if not torch.is_tensor(table) or table.dim() != self.entry.expected_dims:
            return None
        if table is not self._source:
            rotary = kwargs.get(self.entry.source, args[3] if len(args) > 3 else None)
            self._source = table
            self._rows = frame_rows(table, rotary[0].shape[1], self.world, self.rank, self.entry.frame_dim)
        if self.name in kwargs:
            kwargs[self.name] = self._rows
        else:
            args[self.position] = self._rows
        return tuple(args), kwargs


# ------------------------------------------------------------------ applying it to a model


def enable_context_parallel(transformer, layout: Layout, device: torch.device, per_frame: bool) -> dict[str, Any]:
    """Split `transformer`'s calls over the process group as `layout` says; returns the plan applied.

    Call after the attention backend is set (ring needs one that returns the log-sum-exp: switched to
    one if not) and after per-frame modulation is installed (`per_frame`).
    """
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    if transformer.config.num_frame_per_block > 1:
        raise UsageError("a checkpoint with num_frame_per_block > 1 builds a dense causal mask: "
                         "it cannot run with context parallelism; run on one GPU")
    heads = transformer.config.num_attention_heads
    if layout not in valid_layouts(heads, layout.world):
        raise UsageError(f"{heads} heads cannot run {layout.flags()}; valid choices: "
                         + ", ".join(c.flags() for c in valid_layouts(heads, layout.world)))
    if layout.ring > 1:
        _ring_backend(transformer)
    _check_backend(transformer, layout)
    plan = context_parallel_plan(per_frame)
    ours = {name: entry for name, entry in plan.items() if isinstance(entry, dict)
            and any(isinstance(v, FrameRows) for v in entry.values())}
    mesh = _mesh(device, layout)
    config = ContextParallelConfig(ring_degree=layout.ring, ulysses_degree=layout.ulysses, mesh=mesh)
    rank, world = dist.get_rank(), dist.get_world_size()

    def resolve(self, _config):  # diffusers' resolver picks `accelerator:rank % count`: wrong on the CPU
        parallel = ParallelConfig(context_parallel_config=config)
        parallel.setup(rank, world, device, mesh=mesh)
        self._parallel_config = parallel
        return parallel

    transformer._resolve_parallel_config = types.MethodType(resolve, transformer)
    try:
        with _quiet_diffusers():
            transformer.enable_parallelism(config=config, cp_plan={k: v for k, v in plan.items() if k not in ours})
    finally:
        del transformer._resolve_parallel_config
    for block in transformer.blocks:  # cross-attention: local queries against whole text/image keys
        block.attn2.processor = _own_processor(block)
        block.attn2.processor._parallel_config = None
    for name, entry in ours.items():
        _add_frame_rows(transformer, name, entry, world, config._flattened_mesh.get_local_rank())
    return plan


def _own_processor(block):
    """attn2's processor, copied if attn1 shares the same object (clearing it must not reach attn1)."""
    import copy

    processor = block.attn2.processor
    return copy.copy(processor) if processor is block.attn1.processor else processor


def _add_frame_rows(transformer, name: str, entry: dict, world: int, rank: int) -> None:
    import inspect

    from diffusers.hooks.context_parallel import _get_submodule_by_name

    modules = _get_submodule_by_name(transformer, name)
    for module in modules if isinstance(modules, list) else [modules]:
        params = list(inspect.signature(type(module).forward).parameters)[1:]
        for arg, spec in entry.items():
            hook = _FrameRowsHook(spec, arg, world, rank, params.index(arg))
            module.register_forward_pre_hook(hook, with_kwargs=True)


def _ring_backend(transformer) -> None:
    """Ring attention merges partial results by their log-sum-exp: SDPA's math/efficient paths do not
    return it, so self-attention moves to a kernel that does."""
    for block in transformer.blocks:
        processor = block.attn1.processor
        backend = getattr(processor, "_attention_backend", None)
        backend = getattr(backend, "value", backend)
        if backend not in RING_BACKENDS:
            processor = _own_attn1(block)
            processor._attention_backend = RING_FALLBACK
    _route_native_flash_on_cpu()


def _check_backend(transformer, layout: Layout) -> None:
    """Self-attention's backend runs `layout`, or a one-line error naming those that do (diffusers would raise a
    bare ValueError from `enable_parallelism`). `attention.apply_backend` with the layout chooses one that does."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    kind = "ring" if layout.ring > 1 else "ulysses"
    backend = getattr(transformer.blocks[0].attn1.processor, "_attention_backend", None) \
        or _AttentionBackendRegistry._active_backend
    backend = getattr(backend, "value", backend)
    if not runs_layout(backend, kind):
        able = sorted(b for b in _AttentionBackendRegistry._supports_context_parallel if runs_layout(b, kind))
        raise UsageError(f"the attention backend {backend} cannot run {layout.describe()} in diffusers; "
                         f"backends that can: {', '.join(able)}")


def _route_native_flash_on_cpu() -> None:
    """`_native_flash`'s context-parallel forward op, for CPU tensors, on torch's CPU flash kernel (which
    returns the log-sum-exp); CUDA tensors go to diffusers' own, with the head size padded to a multiple of 8
    (the CUDA flash kernel refuses others; the tiny models have 12). Process-wide, installed once."""
    from diffusers.models import attention_dispatch as ad

    original = ad._native_flash_attention_forward_op
    if getattr(original, "_skyreels_cpu", False):
        return
    cuda_op = padded_head_dim(original)

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        if query.device.type != "cpu":
            return cuda_op(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                           return_lse, _save_ctx, _parallel_config)
        q, k, v = (x.transpose(1, 2).contiguous() for x in (query, key, value))  # (B, H, S, D) for the kernel
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal,
                                                                              scale=scale)
        out, lse = out.transpose(1, 2).contiguous(), lse.transpose(1, 2).contiguous()  # model layout
        return (out, lse) if return_lse else out

    forward_op._skyreels_cpu = True
    ad._native_flash_attention_forward_op = forward_op


HEAD_DIM_MULTIPLE = 8  # torch's CUDA flash kernel takes head sizes that are multiples of 8 only


def padded_head_dim(op):
    """`op` (a diffusers forward op on (B, S, H, D) tensors) run with D padded by zeros to a multiple of 8 and the
    output cut back. Zeros add nothing to q.k (the scale stays that of D) nor to the softmax, so the output's
    first D columns and the log-sum-exp are unchanged."""

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        dim = query.shape[-1]
        pad = -dim % HEAD_DIM_MULTIPLE
        if pad:
            scale = dim ** -0.5 if scale is None else scale
            query, key, value = (torch.nn.functional.pad(x, (0, pad)) for x in (query, key, value))
        result = op(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                    _save_ctx, _parallel_config)
        if not pad:
            return result
        if return_lse:
            out, lse = result
            return out[..., :dim], lse
        return result[..., :dim]

    return forward_op


def _own_attn1(block):
    import copy

    if block.attn1.processor is block.attn2.processor:
        block.attn1.processor = copy.copy(block.attn1.processor)
    return block.attn1.processor


def whole_sequence_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, parallel_config,
                             attend) -> torch.Tensor:
    """Self-attention that needs every key at once (block-causal attention), under context parallelism.

    Each process holds a run of the tokens, (B, S/N, H, D). Ulysses swaps sequence for heads as diffusers
    does (all-to-all: the ring group's run of tokens, H/u heads); ring then all-gathers the keys and values
    of the whole sequence (as diffusers' ring attention does before its loop: the same bytes and memory).
    `attend(q, k, v, query_start)` gets this process's queries, which start at token `query_start`, with
    all keys; its output goes back the way the queries came.
    """
    from diffusers.models.attention_dispatch import _all_to_all_dim_exchange

    cp = parallel_config.context_parallel_config
    ulysses = cp._ulysses_mesh.get_group() if cp.ulysses_degree > 1 else None
    if ulysses is not None:  # (B, S/N, H, D) -> (B, S/r, H/u, D)
        query, key, value = (_all_to_all_dim_exchange(x.contiguous(), 2, 1, ulysses) for x in (query, key, value))
    start = 0
    if cp.ring_degree > 1:  # (B, S/r, H/u, D) keys and values -> the whole sequence, in ring order
        group = cp._ring_mesh.get_group()
        key, value = (_all_gather_tokens(x, group) for x in (key, value))
        start = cp._ring_local_rank * query.shape[1]
    out = attend(query, key, value, start)
    if ulysses is not None:  # back: (B, S/r, H/u, D) -> (B, S/N, H, D)
        out = _all_to_all_dim_exchange(out.contiguous(), 1, 2, ulysses)
    return out


def _all_gather_tokens(x: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed._functional_collectives as funcol

    # A functional collective, as diffusers' own hooks use (benchmarks/parallel_scaling.py counts them);
    # `all_gather_single` is the newer name of `all_gather_tensor`, which warns from torch 2.10 on.
    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
    gathered = gather(x.contiguous(), 1, group)
    return gathered.wait() if isinstance(gathered, funcol.AsyncCollectiveTensor) else gathered


def _mesh(device: torch.device, layout: Layout):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (layout.ring, layout.ulysses), mesh_dim_names=("ring", "ulysses"))


class _quiet_diffusers:
    """diffusers warns that `enable_parallelism` is experimental on every call: once per rank is noise. Its hooks
    also call torch's deprecated `all_gather_tensor` (a FutureWarning per rank and run that no user can act on)."""

    def __enter__(self):
        import logging
        import warnings

        warnings.filterwarnings("ignore", message=r".*all_gather_tensor.* is deprecated", category=FutureWarning)

        self.logger = logging.getLogger("diffusers.models.modeling_utils")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


# ------------------------------------------------------------------ processes


@dataclass
class Parallel:
    """This process's place in a context-parallel run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    layout: Layout | None = None
    started: float = field(default_factory=time.perf_counter)
    shared_job: bool = False  # rank 0 has told the others what to run (the CLI's bookkeeping)
    _watchdog: Watchdog | None = None
    _waits: int = 0  # calls of `main_first` so far
    progress: Progress = field(default_factory=lambda: Progress())

    def startup_s(self) -> float:
        """Seconds since this process joined the group (start-up: loading, splitting, first collectives)."""
        return time.perf_counter() - self.started

    @property
    def is_main(self) -> bool:
        """Rank 0 encodes the prompt, decodes, and writes the output, sidecar and resume state."""
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """`value` from rank 0 on every rank (any picklable object; tensors come back on the CPU)."""
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def main_first(self, name: str, work: Callable[[], Any]) -> Any:
        """`work()` on rank 0, then on the others (a download or build they then find in the cache).

        The others wait in the rendezvous store, not in a collective, so a download may take as long as it
        takes; if rank 0's `work` fails, they stop too (rank 0 says why)."""
        store = dist.distributed_c10d._get_default_store()
        self._waits += 1  # every rank calls in the same order: the n-th call of each shares one key
        key = f"skyreels/main-first/{self._waits}"
        if self.is_main:
            try:
                result = work()
            except BaseException:
                store.set(key, "failed")
                raise
            store.set(key, "done")
            return result
        store.wait([key], timedelta(days=7))
        if store.get(key) != b"done":
            raise ModelError(f"the first process could not {name} (it says why); this one stops too")
        return work()

    @contextmanager
    def peers_lost_as_errors(self, kept: str) -> Iterator[None]:
        """A collective that fails because another process is gone (gloo notices at once; NCCL waits, and the
        watchdog stops this process instead) becomes one `PeerLost` line; `kept` says what is left."""
        try:
            yield
        except RuntimeError as exc:
            if not (isinstance(exc, dist.DistError) or "/gloo/" in str(exc)):
                raise
            if why := stop_reason():  # the process that stopped first said why: every rank says the same
                raise PeerLost(f"{why}; stopping this rank ({kept})") from None
            raise PeerLost(f"another process of this run stopped ({_first_sentence(exc)}); {kept}") from None

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """Rank 0's tensor (or None) on every rank, on this rank's device: shape first, then the data."""
        meta = self.share(None if tensor is None else (tuple(tensor.shape), tensor.dtype))
        if meta is None:
            return None
        shape, dtype = meta
        buffer = tensor.to(self._comm_device) if self.is_main else torch.empty(shape, dtype=dtype,
                                                                               device=self._comm_device)
        dist.broadcast(buffer, src=0)
        return buffer.to(self.device)

    def check_same(self, tensor: torch.Tensor, what: str) -> None:
        """Raise on every rank if `tensor` differs between ranks (one float64 checksum, min and max)."""
        total = tensor.double().sum().reshape(1).to(self._comm_device)
        low, high = total.clone(), total.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"{what}: the processes made different latents (checksums {low.item()} to "
                               f"{high.item()}); their noise or inputs differ")

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the group: say so to the others' watchdogs, stop ours, free the backend's threads. Run at exit
        (init_parallel registers it): a group left to the interpreter's teardown can abort the process (gloo's
        threads destroyed while joinable: `terminate called without an active exception`)."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if dist.is_initialized():
            dist.destroy_process_group()


def _first_sentence(exc: Exception) -> str:
    """The gist of a backend error: of gloo's `[.../pair.cc:553] Connection closed by peer [127.0.0.1]:41371.
    This is typically caused by...`, `Connection closed by peer [127.0.0.1]:41371`."""
    import re

    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return text.split(". ")[0].rstrip(".")[:160]


def from_rank_0(compute: Callable, parallel: Parallel) -> Callable:
    """`compute` run by rank 0 only; every rank gets its result (a tensor, None, or a tuple of them) on its
    device. For what only rank 0 loads: prompt embeddings (the text encoder is the slowest thing to start),
    image latents (the VAE's encoder), I2V image embeddings."""

    def shared(*args, **kwargs):
        result = compute(*args, **kwargs) if parallel.is_main else None
        count = parallel.share(len(result) if isinstance(result, tuple) else None)  # a tuple's length, or None
        if count is None:
            return parallel.broadcast(result)
        return tuple(parallel.broadcast(result[i] if parallel.is_main else None) for i in range(count))

    return shared


def share_image_inputs(pipe, parallel: Parallel) -> None:
    """A T2V/I2V pipeline whose image inputs rank 0 computes and the others receive: the CLIP image
    embeddings and the latents with the VAE-encoded first frame (`prepare_latents` also draws the noise,
    which every rank would draw the same). The other ranks then need neither image encoder nor VAE."""
    for name in ("encode_image", "prepare_latents"):
        original = getattr(pipe, name, None)
        if original is not None:
            setattr(pipe, name, from_rank_0(original, parallel))


def init_parallel(device: str | torch.device = "auto", *, timeout_s: float = COLLECTIVE_TIMEOUT_S,
                  watchdog: bool = True) -> Parallel:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    NCCL with one GPU per local rank on CUDA, gloo on the CPU. More local ranks than GPUs is refused.
    """
    stall_after_s = stall_bound(os.environ.get(STALL_ENV))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    want = auto_device(device)
    if want.type == "cuda":
        check_gpus(local_world)
        torch.cuda.set_device(local)
        want = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s),
                                **({"device_id": want} if want.type == "cuda" else {}))
    parallel = Parallel(rank, world, local, want)
    if watchdog:
        parallel._watchdog = Watchdog(rank, world, parallel.progress, stall_after_s=stall_after_s)
    atexit.register(parallel.close)
    return parallel


def stall_bound(value: str | None) -> float:
    """$SKYREELS_STALL_S read: seconds without progress on any rank before a run is stopped."""
    if value is None or value == "":
        return STALL_AFTER_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise UsageError(f"{STALL_ENV}={value!r} is not a number of seconds above 0; set it to one (default "
                         f"{STALL_AFTER_S:.0f}) or unset it")
    return seconds


class Progress:
    """What this rank has done in the run under way, as its beats tell the others' watchdogs.

    `count` moves at every transformer call and every finished step; `busy` is set from the start of a run to its
    end, so a rank waiting for the next request (or rank 0 downloading, enhancing a prompt) is never stalled."""

    def __init__(self) -> None:
        self.count = 0
        self.busy = False
        self.last = "starting the run"
        self.inside = False  # in a transformer call after `last`
        self.kept = kept_after_stop(False)  # what the run under way leaves if stopped, in its caller's spelling

    def start(self, kept: str | None = None) -> None:
        self.busy, self.last, self.inside = True, "starting the run", False
        self.kept = kept_after_stop(False) if kept is None else kept
        self.count += 1

    def step(self, what: str) -> None:
        self.last, self.inside = what, False
        self.count += 1

    def transformer_call(self) -> None:
        self.inside = True
        self.count += 1

    def end(self) -> None:
        self.busy = False
        self.count += 1

    def describe(self) -> str:
        return f"{self.last}, then in the transformer" if self.inside else self.last

    def beat(self) -> str:
        """time|count|busy|what: the time makes every beat differ (liveness), the rest is progress."""
        return f"{time.time()}|{self.count}|{int(self.busy)}|{self.describe()}"


def read_beat(value: bytes) -> tuple[int, bool, str] | None:
    """(count, busy, what) of a beat; None for no beat yet, LEFT, or another format."""
    parts = value.decode(errors="replace").split("|", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2] == "1", parts[3]


def stalled_ranks(beats: dict[int, tuple[int, bool, str]], still_for_s: float, bound_s: float) -> str | None:
    """The one-line reason to stop a run whose ranks (`beats`: each rank's count, busy, what) have all been busy
    with none moving for `still_for_s`, once that passes `bound_s`; None otherwise. The rank behind the others (the
    fewest calls and steps) is the stalled one; the others wait for it in a collective. All level: all named."""
    if len(beats) < 2 or still_for_s <= bound_s or not all(busy for _, busy, _ in beats.values()):
        return None
    least = min(count for count, _, _ in beats.values())
    behind = sorted(rank for rank, (count, _, _) in beats.items() if count == least)
    waiting = sorted(set(beats) - set(behind))
    who = f"rank {behind[0]}" if len(behind) == 1 else "ranks " + ", ".join(map(str, behind))
    doing = "; ".join(f"rank {r}: {beats[r][2]}" for r in behind) if len(behind) > 1 else beats[behind[0]][2]
    others = f"while rank{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))} waited for it" \
        if waiting else "all in the same step"
    return (f"{who} made no progress for {still_for_s:.0f} s ({doing}) {others}; raise ${STALL_ENV} (now "
            f"{bound_s:g} s) if a step can take longer")


class Watchdog:
    """A thread that beats in the rendezvous store and ends this process when another rank stops beating, or
    when every rank is busy in a run and none has made progress for `stall_after_s` (one stuck, the others
    waiting for it in a collective: NCCL and gloo would wait for their 30-minute timeout).

    A collective blocked on a dead peer may wait for its timeout (NCCL never notices a peer vanish);
    this stops every survivor within seconds, so resources are freed and the last saved window stays.
    A rank that leaves normally writes LEFT as its last beat, so the others do not take it for dead while
    they finish (rank 0 still decoding and writing the last window).
    """

    LEFT = b"left"

    def __init__(self, rank: int, world: int, progress: Progress | None = None, every_s: float = HEARTBEAT_S,
                 dead_after_s: float = DEAD_AFTER_S, stall_after_s: float = STALL_AFTER_S):
        self.rank, self.world, self.every_s, self.dead_after_s = rank, world, every_s, dead_after_s
        self.progress = progress or Progress()
        self.stall_after_s = stall_after_s
        self.store = dist.distributed_c10d._get_default_store()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skyreels-watchdog", daemon=True)
        self._thread.start()

    def _key(self, rank: int) -> str:
        return f"skyreels/beat/{rank}"

    def _run(self) -> None:
        seen: dict[int, tuple[bytes, float]] = {}
        counts: tuple = ()
        moved = time.monotonic()  # when any rank's progress last moved
        while not self._stop.is_set():
            try:
                mine = self.progress.beat()
                self.store.set(self._key(self.rank), mine)
                beats = {self.rank: read_beat(mine.encode())}
                for other in range(self.world):
                    if other == self.rank:
                        continue
                    key = self._key(other)
                    value = self.store.get(key) if self.store.check([key]) else b""
                    beats[other] = read_beat(value)
                    last = seen.get(other)
                    now = time.monotonic()
                    if last is None or last[0] != value:
                        seen[other] = (value, now)
                    elif now - last[1] > self.dead_after_s and value not in (b"", self.LEFT):
                        self._die(f"rank {other} stopped responding")
                now = time.monotonic()
                if any(b is None for b in beats.values()):  # one has not beaten yet or has left: no stall
                    counts, moved = (), now
                elif (new := tuple(beats[r][:2] for r in sorted(beats))) != counts:
                    counts, moved = new, now
                elif why := stalled_ranks(beats, now - moved, self.stall_after_s):
                    self._die(why)
            except Exception as exc:  # noqa: BLE001  the store lives with torchrun's agent or rank 0: gone means they are
                if self._stop.is_set():
                    return
                self._die(f"lost the process group ({type(exc).__name__})")
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        """Stop beating, after a last beat that says this rank left on purpose."""
        self._stop.set()
        self._thread.join()
        try:
            self.store.set(self._key(self.rank), self.LEFT)
        except Exception:  # noqa: BLE001  the store may be gone already: the others are finishing too
            pass


    def _die(self, why: str) -> None:
        """End this process (its main thread may be blocked in native code) with one line: the reason the first
        rank to stop gave, so every rank of the run says the same thing."""
        try:
            why = self.store.compare_set(STOPPED_KEY, "", why).decode(errors="replace")
        except Exception:  # noqa: BLE001  the store is gone with its host: this rank's own reason
            pass
        print(f"error: {why}; stopping this rank ({self.progress.kept})", file=sys.stderr, flush=True)
        os._exit(1)


def stop_reason() -> str | None:
    """Why another rank's watchdog stopped the run, if one did (the first reason posted; None if none was)."""
    try:
        store = dist.distributed_c10d._get_default_store()
        return store.get(STOPPED_KEY).decode(errors="replace") if store.check([STOPPED_KEY]) else None
    except Exception:  # noqa: BLE001  the store went with the process that hosted it
        return None


# ------------------------------------------------------------------ launching


