"""Host memory of the memory plans (issue 21, item 5): group offload holds the transformer once in host memory,
and the planner predicts each plan's peak host memory.

Pinned memory needs CUDA; here pinning is simulated (a pinned tensor is a copy remembered as pinned, and
pinning a pinned one returns it, as torch does), and diffusers' own code decides what it copies.
"""

from __future__ import annotations

import copy

import pytest
import torch

from skyreels_cli.models.tiny import build_components
from skyreels_cli.runtime import memory as M


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    return build_components("df")["transformer"]


@pytest.fixture
def simulated_pinning(monkeypatch) -> set:
    pinned: set[int] = set()

    def pin_memory(self, device=None):
        if self.data_ptr() in pinned:
            return self
        copy_ = self.clone()
        pinned.add(copy_.data_ptr())
        return copy_

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, device=None: self.data_ptr() in pinned)
    return pinned


def host_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_streamed_offload_on_cuda_holds_the_weights_once_in_host_memory(transformer, simulated_pinning,
                                                                        monkeypatch):
    from diffusers.hooks.group_offloading import ModuleGroup

    model = copy.deepcopy(transformer)
    weights = host_bytes(model.parameters())
    seen = {}

    def enable_group_offload(**kwargs):
        # What diffusers does first with a stream: a host copy of every weight to transfer from, pinned
        # unless low_cpu_mem_usage (its own ModuleGroup._to_cpu).
        seen.update(kwargs)
        seen["copies"] = [ModuleGroup._to_cpu(p, kwargs["low_cpu_mem_usage"]) for p in model.parameters()]

    monkeypatch.setattr(model, "enable_group_offload", enable_group_offload)
    assert M.apply_offload_hooks(model, "group", torch.device("cuda"))
    assert seen["use_stream"] and seen["record_stream"], "a stream, and no synchronise after every block"
    assert not seen["low_cpu_mem_usage"], "pinned once, not again on every transfer"
    held = host_bytes([*model.parameters(), *seen["copies"]])
    assert held == weights, f"the host holds {held / weights:.2f}x the transformer's weights"
    assert all(p.is_pinned() for p in model.parameters())


def test_pinning_in_place_is_what_keeps_one_copy(transformer, simulated_pinning):
    """The check above can fail: without pinning in place diffusers' copies are a second transformer."""
    from diffusers.hooks.group_offloading import ModuleGroup

    model = copy.deepcopy(transformer)
    copies = [ModuleGroup._to_cpu(p, False) for p in model.parameters()]
    assert host_bytes([*model.parameters(), *copies]) == 2 * host_bytes(model.parameters())


def test_streams_only_on_cuda():
    assert M.stream_settings(torch.device("cpu")) == {"use_stream": False, "record_stream": False,
                                                      "low_cpu_mem_usage": False}


def test_storage_applied_at_load_is_not_applied_twice(transformer):
    model = M.apply_quantization(copy.deepcopy(transformer), "fp8")
    stored = {n: p.dtype for n, p in model.named_parameters()}
    hooks = len(model._diffusers_hook.hooks) if hasattr(model, "_diffusers_hook") else 0
    assert M.apply_quantization(model, "fp8") is model
    assert {n: p.dtype for n, p in model.named_parameters()} == stored
    assert (len(model._diffusers_hook.hooks) if hasattr(model, "_diffusers_hook") else 0) == hooks
