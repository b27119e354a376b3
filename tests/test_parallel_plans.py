"""Every rank of a context-parallel run runs the same memory plan, whatever its own card has free (issue 21, 6).

Two real gloo processes under torchrun; each is told a different free memory (one card drives a display).
Chosen rank by rank, one would batch guidance and the other not, and their collectives would stop lining up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two torchrun processes

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import skyreels_cli.core.model as M
    from skyreels_cli.models.naming import resolve_model
    from skyreels_cli.run_options import LoadOptions
    from skyreels_cli.runtime.parallel import init_parallel

    parallel = init_parallel("cpu", watchdog=False)
    free = {0: 80.0, 1: float(sys.argv[1])}[parallel.rank]  # GB each rank's card has free
    M.free_vram_gb = lambda device=None: free
    spec = resolve_model("df-1.3b-540p")
    plan, reason, budget = M.choose_plan(spec, torch.device("cuda"), None, LoadOptions(), parallel)
    alone, _ = M.resolve_plan(spec, torch.device("cuda"), free_gb=free)
    every = parallel.gather({"plan": repr(plan), "reason": reason, "budget": budget, "alone": repr(alone)})
    if parallel.is_main:
        print("RESULT " + json.dumps(every))
""")


def ranks(tmp_path, other_free: float) -> list[dict]:
    script = tmp_path / "plans.py"
    script.write_text(SCRIPT)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "skyreels_cli.runtime.torchrun", "--standalone",
                           "--nproc-per-node=2", str(script), str(other_free)],
                          env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_ranks_with_different_free_memory_run_the_plan_the_smallest_card_fits(tmp_path):
    first, second = ranks(tmp_path, other_free=12.0)
    assert first["alone"] != second["alone"], "the simulated cards must make different choices alone"
    assert first["plan"] == second["plan"] == second["alone"]  # the smallest card's choice, on both
    assert first["budget"] == second["budget"] == 12.0
    assert first["reason"] == second["reason"] and "of 12.0 GB free" in first["reason"]
