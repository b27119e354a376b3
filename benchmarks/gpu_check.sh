#!/usr/bin/env bash
# The GPU check: one part per call on a lent CUDA machine with no network, each well inside 10 minutes
# (aimed at < 4 min on an H100/H200). What must be shown is listed in benchmarks/RESULTS.md ("The GPU check").
#
#   bash benchmarks/gpu_check.sh PART      PART: tests | speed | speed14b | plans | commands | fewsteps
#
# tests     the CUDA tests (each skips without a GPU; here they run)
# speed     seconds per step of DF-1.3B-540P option by option against diffusers and the compute floor, with each
#           variant's peak VRAM beside the planner's prediction (benchmarks/gpu_speed.py)
# speed14b  DF-14B-540P: the planner's 24 GB plan (the process capped to 24 GB) against unlimited `all`
# plans     DF-1.3B-540P with random weights through the real command under every offload/quantize plan:
#           measured peak VRAM against the planner's prediction for each
# commands  every command on CUDA in bf16: tiny weights, then random weights of the real 1.3B architecture
# fewsteps  a DF-1.3B window at the default 30 UniPC steps with CFG against 4 Euler steps at guidance 1
#
# Only a small result comes back from $OUT (at most 8 files, 16 MiB each, 2 folders deep), so videos and
# frames go to $WORK (default /tmp/gpu-check) and $OUT gets summary-PART.json and summary-PART.txt (and, for
# commands, three small first-frame PNGs; for speed/speed14b gpu_speed's JSON).
#
# Carrying the wheels (the lent image has torch with CUDA, maybe nothing else of ours). Here, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     diffusers==0.42.1 transformers==5.25.0 accelerate==1.16.0 safetensors==0.8.0 huggingface_hub==2.4.0 \
#     tokenizers==0.23.3 ftfy==6.3.1 wcwidth==0.9.5 sentencepiece==0.2.3 typer==0.29.2 click==8.5.1 \
#     rich==15.0.0 shellingham==1.5.4 peft==0.21.2 regex==2026.12.2
# (what the device has already can be left out: `run` it with `python3 -c 'import diffusers'` first), then run
# with carry [".whl"]: the wheels are installed with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# No video encoder is needed: every output here is PNG frames (imageio-ffmpeg is not carried).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export HF_HOME="${HF_HOME_CHECK:-/tmp/gpu-check-hf}"
out="${OUT:-/tmp/gpu-check-out}"
work="${WORK:-/tmp/gpu-check}"
mkdir -p "$out" "$work" "$HF_HOME"
part="${1:?give a part: tests, speed, speed14b, plans, commands or fewsteps}"
log="$work/$part.log"
: > "$log"
sk() { python3 -m skyreels_cli "$@" --device cuda --dtype bf16 -q --overwrite >> "$log" 2>&1; echo "exit $? :: $*" >> "$log"; }
real13() {  # random weights of the released 1.3B architecture, built once per machine
  [ -d "$HF_HOME/$1-1.3b" ] || python3 -m skyreels_cli.models.tiny 1.3b "$1" "$HF_HOME/$1-1.3b" >> "$log" 2>&1
  echo "$HF_HOME/$1-1.3b"
}
if ! missing=$(python3 -c 'import torch, diffusers, transformers, typer; assert torch.cuda.is_available(), "no CUDA"' 2>&1); then
  echo "cannot start: ${missing##*$'\n'} (carry the wheels: the comment at the top)" | tee -a "$log"
  exit 1
fi

case "$part" in
tests)
  timeout 540 python3 -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_memory_plans.py \
    tests/test_tiling.py tests/test_attention.py tests/test_solver.py tests/test_step_cache.py \
    tests/test_modulation.py tests/test_api.py tests/test_gpu_paths.py >> "$log" 2>&1
  ;;
speed)
  timeout 540 python3 benchmarks/gpu_speed.py --model df-1.3b-540p --steps 2 >> "$log" 2>&1
  ;;
speed14b)
  timeout 540 python3 benchmarks/gpu_speed.py --model df-14b-540p --variants diffusers,all,plan --vram 24 \
    --steps 2 >> "$log" 2>&1
  ;;
plans)
  df=$(real13 df)
  for plan in "none none" "none fp8" "model none" "group none" "group fp8" "sequential none"; do
    set -- $plan
    sk extend "a red fox" -m "$df" --steps 2 --frames 97 --offload "$1" --quantize "$2" \
      -o "$work/plan-$1-$2/"
    python3 -m skyreels_cli plan "$df" --vram 80 --json 2>/dev/null > "$work/plan-$1-$2.json" || true
  done
  ;;
commands)
  python3 -m skyreels_cli doctor >> "$log" 2>&1
  python3 - "$work/start.png" <<'PY'
import sys, numpy as np
from PIL import Image
y, x = np.mgrid[0:544, 0:960]
Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(sys.argv[1])
PY
  sk t2v "a red fox" -m tiny -o "$work/tiny-t2v/"
  sk i2v "$work/start.png" "waves" -m tiny -o "$work/tiny-i2v/"
  sk extend "a red fox" -m tiny --frames 149 -o "$work/tiny-extend/"
  sk extend "a red fox" -m tiny --frames 101 --base-frames 41 --overlap 9 --ar-step 2 --causal-block 3 \
    --causal-attention --image "$work/start.png" -o "$work/tiny-async/"
  df=$(real13 df); i2v=$(real13 i2v)
  sk t2v "a red fox" -m "$df" --steps 4 -o "$work/real-t2v/"
  sk i2v "$work/start.png" "waves" -m "$i2v" --steps 4 -o "$work/real-i2v/"
  sk extend "a red fox" -m "$df" --steps 4 --frames 257 -o "$work/real-extend/"
  ;;
fewsteps)
  # one 97-frame DF-1.3B window (real architecture, random weights) at the default 30 UniPC steps with guidance
  # against 4 Euler steps at guidance 1 (an accelerator's settings; no real LoRA here: the time, not the quality),
  # to hold benchmarks/few_steps.py's prediction (under 10 s a window) against a GPU
  df=$(real13 df)
  sk t2v "a red fox" -m "$df" -o "$work/few-default/"
  sk t2v "a red fox" -m "$df" --sampler euler --sigmas 1.0,0.9375,0.8333,0.625 --guidance 1 -o "$work/few-euler/"
  ;;
*)
  echo "unknown part $part: tests, speed, speed14b, plans, commands or fewsteps"; exit 2
  ;;
esac
python3 benchmarks/gpu_summary.py "$part" "$work" "$out" "$log"
