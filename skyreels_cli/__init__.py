"""skyreels: turn the released SkyReels-V2 checkpoints into video files."""

__version__ = "0.1.0"
