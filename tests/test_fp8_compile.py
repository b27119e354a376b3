"""fp8 storage under --compile (issue 21, item 7): the compiled region is as whole as without fp8.

diffusers' layerwise casting rewrites a layer's parameters before and after each call, which dynamo cannot
trace (a `Parameter` built inside the compiled region): 25 graph breaks and 12 graphs for the tiny model's
two blocks, against one graph without fp8. Counted with dynamo's own counters; the `eager` backend traces
exactly what inductor would be given, without generating code.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch._dynamo.utils import counters

from skyreels_cli.models.tiny import build_components
from skyreels_cli.runtime.compile import compile_blocks
from skyreels_cli.runtime.memory import apply_quantization

from .test_memory_plans import forward, inputs


@pytest.fixture(scope="module")
def bf16() -> torch.nn.Module:
    return build_components("df", arch="tiny")["transformer"].to(torch.bfloat16)


def compiled_counts(model: torch.nn.Module, monkeypatch) -> tuple[int, int, torch.Tensor]:
    """(graphs, graph breaks, output) of one forward of `model` compiled block by block as --compile does."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compile_blocks(model, torch.device("cpu"))
    torch._dynamo.reset()
    counters.clear()
    out = forward(model, inputs())
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), out


def test_fp8_compiles_to_as_few_graphs_as_bf16_with_no_breaks(bf16, monkeypatch):
    plain_graphs, plain_breaks, _ = compiled_counts(copy.deepcopy(bf16), monkeypatch)
    fp8 = apply_quantization(copy.deepcopy(bf16), "fp8")
    eager = forward(fp8, inputs())
    graphs, breaks, out = compiled_counts(fp8, monkeypatch)
    assert (plain_graphs, plain_breaks) == (1, 0)
    assert (graphs, breaks) == (plain_graphs, 0), f"fp8: {graphs} graphs, {breaks} breaks"
    assert torch.equal(out, eager)


def test_fp8_computes_exactly_as_diffusers_layerwise_casting(bf16):
    ours = apply_quantization(copy.deepcopy(bf16), "fp8")
    theirs = copy.deepcopy(bf16)
    theirs.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in theirs.named_parameters()}
    assert any(p.dtype == torch.float8_e4m3fn for p in ours.parameters())
    a, b = forward(ours, inputs()), forward(theirs, inputs())
    assert torch.equal(a, b)
    assert not torch.equal(a, forward(bf16, inputs()))  # fp8 storage does change the numbers: the check can fail
