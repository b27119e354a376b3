"""Checkpoints: the kinds table, the registry, the Hub cache, naming, loading, LoRAs, the architectures as data, checks and tiny random builds."""
