#!/usr/bin/env bash
# GPU figures of benchmarks/bench_vs_trl.py (issue 16): kdlens's word_kd step (default kd_path, and
# kd_path=plain) vs TRL's GKDTrainer and DistillationTrainer vs the floor, bf16 autocast on float32
# master weights, SmolLM2-135M's architecture with random weights (nothing to download) and a 4-layer
# prune, batch 8 x 1024 tokens, at V = 49,152 (SmolLM2) and V = 151,936 (Qwen2.5). On CUDA the bench
# measures memory inline (torch.cuda.max_memory_allocated growth over the allocation at each reset, one
# variant after another) and then times the steps interleaved in the same process (medians of 10): one
# process per vocabulary. About 2 minutes on an H200 (the wheel install, two imports of torch+TRL, two
# random 135M-shaped teachers, 2 x 5 variants x 22 steps); each vocabulary is cut off at 85 s.
#
#   here, once per session:  bash analyses/device/bench_vs_trl.sh --prepare   # TRL's wheels into .whl/
#   the device call:         carry [".whl"], timeout_s 300,
#                            command "bash analyses/device/bench_vs_trl.sh"
#   back here:               gpu_v49152.json, gpu_v151936.json and log from files_at; their ratios go
#                            into benchmarks/RESULTS.md ("GPU" under "KD step vs TRL")
#   dry run on a CPU:        bash analyses/device/bench_vs_trl.sh --cpu   # the same commands, --quick shapes
#
# The device image has torch, transformers, accelerate, peft, pandas, pyarrow, xxhash and fsspec but not
# trl, datasets, dill or multiprocess: those travel as wheels (the versions of this checkout's environment).
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--prepare" ]; then
  ROOT=$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null | xargs -r dirname)
  PY=${PYTHON:-$(for p in .venv/bin/python "$ROOT/.venv/bin/python"; do [ -x "$p" ] && { echo "$p"; break; }; done)}
  PY=${PY:-python3}
  "$PY" -c "import trl, datasets" || { echo "bench_vs_trl.sh: $PY has no trl/datasets (pip install -e .[bench])"; exit 2; }
  EXCLUDE=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$EXCLUDE")" && touch "$EXCLUDE"
  grep -qx '/.whl/' "$EXCLUDE" || echo '/.whl/' >> "$EXCLUDE"
  rm -rf .whl && mkdir .whl
  version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  specs=""
  for name in trl datasets dill multiprocess; do specs="$specs $name==$(version $name)"; done
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl $specs || exit 2
  ls .whl && du -sh .whl
  exit 0
fi

OUTDIR=${OUT:-/tmp/bench_vs_trl}
mkdir -p "$OUTDIR"
exec > >(tee "$OUTDIR/log") 2>&1  # the log comes back even when the call times out
if [ "${1:-}" = "--cpu" ]; then  # the dry run: this machine's Python, the quick shapes, inline memory
  ROOT=$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null | xargs -r dirname)
  PY=${PYTHON:-$(for p in .venv/bin/python "$ROOT/.venv/bin/python"; do [ -x "$p" ] && { echo "$p"; break; }; done)}
  export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
  "${PY:-python3}" benchmarks/bench_vs_trl.py --device cpu --memory inline --precision bf16 --quick \
      --json "$OUTDIR/cpu_quick.json"
  exit $?
fi
ls .whl/*.whl > /dev/null 2>&1 || { echo "bench_vs_trl.sh: no .whl/: run --prepare here and carry .whl"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
       TRANSFORMERS_VERBOSITY=error KDLENS_CACHE=/tmp/kdlens_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
rc=0
for V in 49152 151936; do
  echo "[$(date -u +%T)] V=$V"
  timeout 85 python3 benchmarks/bench_vs_trl.py --device cuda --precision bf16 --vocab "$V" --layers 4 \
      --batch 8 --seq 1024 --repeats 10 --json "$OUTDIR/gpu_v$V.json" || { rc=$?; echo "V=$V stopped ($rc)"; }
done
echo "[$(date -u +%T)] done"
exit $rc
