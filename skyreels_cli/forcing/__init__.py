"""Diffusion forcing: frame arithmetic, schedule, windows, the engine, block-causal attention, streaming decode, resume state."""
