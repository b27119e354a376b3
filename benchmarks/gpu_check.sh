#!/usr/bin/env bash
# The GPU check, in one call on a machine with a CUDA GPU and no network:
# every command on CUDA in bf16, with tiny weights and with random weights of the
# real 1.3B architecture (no downloads), then the memory benchmark.
#
# On the lent device (its image lacks diffusers and ftfy, and imageio-ffmpeg is too big
# to carry, so outputs are PNG frames), first, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 ftfy==6.3.1 wcwidth
# then run, carrying .whl:   bash benchmarks/gpu_check.sh [PART]
# PART: commands (every command, tiny and real 1.3B weights), tests (the CUDA tests), speed (seconds per step,
# DF-1.3B, option by option, against diffusers), speed14b (DF-14B in 24 GB against unlimited); default: all, which
# is more than one 10-minute call: run the parts one call each.
# Each run's settings.json records timings and peak VRAM; they are printed at the end. Figures land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export HF_HOME="${HF_HOME_CHECK:-$(mktemp -d)}"
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
part="${1:-all}"
sk() { python3 -m skyreels_cli "$@" --device cuda --dtype bf16 -q --overwrite; }
want() { [ "$part" = all ] || [ "$part" = "$1" ]; }

if want tests; then
  echo "== CUDA tests (each skips without a GPU; here they run)"
  python3 -m pytest -q -p no:cacheprovider tests/test_memory_plans.py tests/test_tiling.py tests/test_attention.py \
    tests/test_solver.py tests/test_step_cache.py tests/test_modulation.py tests/test_api.py -k "cuda or gpu" || true
fi
if want speed; then
  echo "== seconds per step, DF-1.3B-540P"
  python3 benchmarks/gpu_speed.py --model df-1.3b-540p || true
fi
if want speed14b; then
  echo "== DF-14B-540P: the planner's 24 GB plan against unlimited"
  python3 benchmarks/gpu_speed.py --model df-14b-540p --variants diffusers,all,plan --vram 24 --steps 2 || true
fi
want commands || exit 0

python3 -m skyreels_cli doctor || true
python3 - "$out/start.png" <<'PY'
import sys, numpy as np
from PIL import Image
y, x = np.mgrid[0:544, 0:960]
Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(sys.argv[1])
PY

echo "== tiny weights"
sk t2v "a red fox" -m tiny -o "$out/tiny-t2v/"
sk i2v "$out/start.png" "waves" -m tiny -o "$out/tiny-i2v/"
sk extend "a red fox" -m tiny --frames 149 -o "$out/tiny-extend/"
python3 -m pytest -q tests/test_api.py -k cuda || true  # two requests on CUDA, the text encoder stepping aside
sk extend "a red fox" -m tiny --frames 101 --base-frames 41 --overlap 9 --ar-step 2 --causal-block 3 \
  --causal-attention --image "$out/start.png" -o "$out/tiny-async/" || true  # prints why if refused

echo "== random weights, real 1.3B architecture"
python3 -m skyreels_cli.models.tiny 1.3b df "$HF_HOME/df-1.3b"
python3 -m skyreels_cli.models.tiny 1.3b i2v "$HF_HOME/i2v-1.3b"
sk t2v "a red fox" -m "$HF_HOME/df-1.3b" --steps 4 -o "$out/real-t2v/"
sk i2v "$out/start.png" "waves" -m "$HF_HOME/i2v-1.3b" --steps 4 -o "$out/real-i2v/"
sk extend "a red fox" -m "$HF_HOME/df-1.3b" --steps 4 --frames 257 -o "$out/real-extend/"
sk extend "a red fox" -m "$HF_HOME/df-1.3b" --steps 4 --frames 257 --ar-step 5 --causal-block 5 \
  --base-frames 97 --overlap 17 -o "$out/real-async/"

for f in "$out"/*/settings.json; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['run']; print(sys.argv[1], r['frames_written'], 'frames', r['timings_s'], 'peak VRAM', r['peak_vram_gb'], 'GB')" "$f"
done

echo "== benchmark"
python3 benchmarks/extend_memory.py --quick || true

# ---- few steps (issue 22), a separate addition: one 97-frame DF-1.3B window (real architecture, random
# weights) at the default 30 UniPC steps with guidance against 4 Euler steps at guidance 1 (an accelerator's
# settings; no real LoRA here: the time, not the quality), to hold the benchmarks/few_steps.py prediction
# (under 10 s a window) against a GPU.
echo "== few steps: default vs 4 Euler steps, guidance 1"
sk t2v "a red fox" -m "$HF_HOME/df-1.3b" -o "$out/few-default/"
sk t2v "a red fox" -m "$HF_HOME/df-1.3b" --sampler euler --sigmas 1.0,0.9375,0.8333,0.625 --guidance 1 \
  -o "$out/few-euler/"
for f in "$out"/few-*/settings.json; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['run']; print(sys.argv[1], r['timings_s'], 'peak VRAM', r['peak_vram_gb'], 'GB')" "$f"
done
