#!/usr/bin/env bash
# GPU figures of benchmarks/bench_vs_trl.py (issue 16): kdlens's word_kd step (default kd_path, and
# kd_path=plain) vs TRL's GKDTrainer and DistillationTrainer vs the floor, bf16 autocast on float32
# master weights, SmolLM2-135M's architecture with random weights (nothing to download) and a 4-layer
# prune, batch 8 x 1024 tokens, at V = 49,152 (SmolLM2) and V = 151,936 (Qwen2.5). Each variant's
# memory (torch.cuda.max_memory_allocated growth over setup) in its own process, then the step times
# interleaved in one process (medians of 10). About 4 minutes on an H100/H200.
#
#   here, once per session:  bash analyses/device/bench_vs_trl.sh --prepare   # TRL's wheels into .whl/
#   the device call:         carry [".whl"], timeout_s 420,
#                            command "bash analyses/device/bench_vs_trl.sh"
#   back here:               the JSON files (gpu_v49152.json, gpu_v151936.json) and log from files_at;
#                            put their ratios into benchmarks/RESULTS.md ("GPU" under "KD step vs TRL")
#
# The device image has torch, transformers, accelerate and peft but not trl or datasets: they travel
# as wheels (the versions of this checkout's virtual environment).
set -uo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"

if [ "${1:-}" = "--prepare" ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  mkdir -p .git/info && touch .git/info/exclude
  grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
  rm -rf .whl && mkdir .whl
  version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  specs=""
  for name in trl datasets dill multiprocess; do specs="$specs $name==$(version $name)"; done
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $specs || exit 2
  ls .whl && du -sh .whl
  exit 0
fi

OUTDIR=${OUT:-/tmp/bench_vs_trl}
mkdir -p "$OUTDIR"
exec > >(tee "$OUTDIR/log") 2>&1  # the log comes back even when the call times out
ls .whl/*.whl > /dev/null 2>&1 || { echo "bench_vs_trl.sh: no .whl/: run --prepare here and carry .whl"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
       TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
rc=0
for V in 49152 151936; do
  echo "[$(date -u +%T)] V=$V"
  timeout 190 python3 benchmarks/bench_vs_trl.py --device cuda --precision bf16 --vocab "$V" --layers 4 \
      --batch 8 --seq 1024 --repeats 10 --json "$OUTDIR/gpu_v$V.json" || { rc=$?; echo "V=$V stopped ($rc)"; }
done
exit $rc
