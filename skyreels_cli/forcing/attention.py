"""Block-causal attention inside a window, applied per call without touching the model's config."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def block_causal_mask(block_sizes: tuple[int, ...], tokens_per_frame: int, device, visible_tail: int = 0) -> torch.Tensor:
    """Attention mask letting each token see its own and earlier causal blocks (any block sizes).

    The last `visible_tail` frames (a clean end image appended after the window) are seen by every
    token: as the last block they would otherwise be seen by none, and the end image would be ignored.
    """
    block_of_frame = torch.repeat_interleave(
        torch.arange(len(block_sizes), device=device), torch.tensor(block_sizes, device=device)
    )
    frame_mask = block_of_frame.unsqueeze(0) <= block_of_frame.unsqueeze(1)
    if visible_tail:
        frame_mask[:, -visible_tail:] = True
    token_mask = frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
    return token_mask[None, None]


@contextmanager
def attention_mask_on(transformer, mask: torch.Tensor | None) -> Iterator[None]:
    """Feed `mask` to every transformer block for the calls inside; leaves the model as it was."""
    if mask is None:
        yield
        return

    def with_mask(_module, args):
        return (*args[:4], mask, *args[5:])

    handles = [block.register_forward_pre_hook(with_mask) for block in transformer.blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
