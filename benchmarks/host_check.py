"""The planner's predicted host-memory load peak against a real load on the CPU (issue 21, item 5).

The prediction (runtime/plan.py `host_memory`, phase "load") is the larger of the transformer as read (bf16)
and every component as stored (the transformer given its storage before the others are read). Here a random
checkpoint of the released DF-1.3B architecture (its text encoder one layer deep: models/tiny.py) is loaded
by `sk.load` on the CPU in bf16, once per storage, each in a fresh process; the process's peak resident set
(VmHWM) above what it held before loading is set beside the prediction for the same architecture.

    python benchmarks/host_check.py [--folder DIR]     # builds the checkpoint there first if it is missing
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1e9
CHILD = """
import json, sys
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
import torch, diffusers, transformers, skyreels_cli as sk
before = hwm()
model = sk.load(sys.argv[1], device="cpu", dtype="bf16", quantize=sys.argv[2], progress=False)
print(json.dumps({"before": before, "peak": hwm()}))
"""


def predicted(quantize: str) -> dict:
    from skyreels_cli.models.architectures import architecture
    from skyreels_cli.models.tiny import FULL_SIZE_TEXT_LAYERS, VOCAB
    from skyreels_cli.runtime.plan import Shape, predict

    arch = architecture("df", "1.3B")
    arch = replace(arch, text_encoder=replace(arch.text_encoder, layers=FULL_SIZE_TEXT_LAYERS, vocab=len(VOCAB)))
    (p,) = predict(arch, Shape.window(64, 64, 17), quantize=quantize, offload="none", cfg="separate",
                   tiled_decode=False, text_encoder_device="auto")
    return p.host_phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "skyreels-df-1.3b-random")
    args = parser.parse_args()
    if not (args.folder / "model_index.json").exists():
        from skyreels_cli.models.tiny import save_checkpoint

        save_checkpoint("df", args.folder, arch="1.3b")
    rows = []
    for quantize in ("none", "fp8"):
        done = subprocess.run([sys.executable, "-c", CHILD, str(args.folder), quantize], capture_output=True,
                              text=True, check=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        grew = (measured["peak"] - measured["before"]) / GB
        load = predicted(quantize)["load"] / GB
        rows.append({"quantize": quantize, "measured_gb": round(grew, 2), "predicted_gb": round(load, 2),
                     "ratio": round(load / grew, 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "rows": rows}))


if __name__ == "__main__":
    main()
