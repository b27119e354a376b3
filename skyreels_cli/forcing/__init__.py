"""Diffusion forcing: frame arithmetic, schedule, windows, the engine, attention, streaming decode, resume state."""
