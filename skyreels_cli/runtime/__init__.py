"""How a loaded model runs on a device: memory plans and their placement per phase, the planner, attention
kernels, per-frame modulation, the step cache, compilation, context parallelism."""
