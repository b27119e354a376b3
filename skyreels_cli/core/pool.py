"""Loaded models kept for the jobs that follow: each checkpoint, with its load options, loads once.

    pool = sk.ModelPool()
    for job in sk.read_batch("jobs.toml"):
        sk.run(job, pool=pool)

A job whose model and load options are those of a model held gets that model. Another is loaded; first
the models held longest unused are freed while the new one would not fit beside them (its weights against
the free memory of the device it loads on: the GPU's, or the host's for the CPU).
"""

from __future__ import annotations

import gc
import json
import threading
from collections import OrderedDict

import torch

from ..models.hub import cached_snapshot, disk_size
from ..models.loading import check_device
from ..models.registry import ModelSpec
from ..run_options import LoadOptions
from .model import Model, load
from .request import Request


class ModelPool:
    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress
        self.loads = 0  # models loaded so far
        self._held: OrderedDict[tuple, Model] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec, options: LoadOptions, plan_for: Request | None = None) -> Model:
        """The model for `spec` loaded with `options`: one held, or loaded now (its memory plan made for
        `plan_for`, the first job's request)."""
        # an accelerator's LoRA strength follows the steps (models/accelerators.py): part of what was loaded
        key = (spec.repo, spec.revision, str(spec.local_path), spec.kind, spec.accelerator_strength,
               json.dumps(options.to_dict(), sort_keys=True))
        with self._lock:
            if key in self._held:
                self._held.move_to_end(key)
                return self._held[key]
            self._make_room(spec, options)
            model = load(spec, options=options, plan_for=plan_for, progress=self.progress, parallel=False)
            self._held[key] = model
            self.loads += 1
            return model

    @property
    def models(self) -> list[Model]:
        """The models held, least recently used first."""
        return list(self._held.values())

    def make_room(self, spec: ModelSpec, options: LoadOptions) -> None:
        """Free the models held longest unused while `spec` would not fit beside them (before loading it
        elsewhere: a context-parallel run loads its own)."""
        with self._lock:
            self._make_room(spec, options)

    def clear(self) -> None:
        """Free every model held."""
        with self._lock:
            while self._held:
                self._free_oldest()

    def _make_room(self, spec: ModelSpec, options: LoadOptions) -> None:
        device = check_device(options.device, spec)
        need = _weight_bytes(spec)
        while self._held and need > _free_bytes(device):
            self._free_oldest()

    def _free_oldest(self) -> None:
        self._held.popitem(last=False)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _weight_bytes(spec: ModelSpec) -> int:
    """The checkpoint's size on disk (what loading it puts in memory, about); 0 when not downloaded yet."""
    folder = cached_snapshot(spec)
    return disk_size(folder) if folder is not None else 0


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 1 << 62  # unknown: keep what is held
