"""Checkpoints: the kinds table, the registry, the Hub cache, loading, placement, checks and tiny random builds."""
