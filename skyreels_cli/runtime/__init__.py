"""How a loaded model runs on a device: memory plans, attention kernels, modulation, caching, compilation."""
