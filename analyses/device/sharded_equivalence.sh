#!/usr/bin/env bash
# FSDP2 and DeepSpeed ZeRO-2/3 against a plain run, on one GPU: the same loss trajectory and weights.
# Two CPU processes (gloo) check the same in tests/unit/test_distill_ddp.py; this is the GPU (NCCL) half.
# With one GPU the world size is 1: the check covers the shipped configs' wrapping, the sharded teacher,
# DeepSpeed's batch / accumulation / clipping settings and the gathered checkpoint, not cross-GPU reduction.
#   here, once:   bash analyses/device/sharded_equivalence.sh prepare     # deepspeed and its needs into .gpu/ds
#   device call:  carry [".gpu/ds"], timeout_s 420:  bash analyses/device/sharded_equivalence.sh run
# About 3 minutes on an H200 (5 launches of a tiny model). Results: $OUT/sharded.json and $OUT/log;
# paste the table into benchmarks/RESULTS.md.
set -uo pipefail
MODE=${1:?usage: sharded_equivalence.sh prepare|run}
cd "$(dirname "$0")/../.."
if [ "$MODE" = prepare ]; then
  set -e
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  EXCLUDE=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$EXCLUDE")" && touch "$EXCLUDE"
  grep -qx '/.gpu/' "$EXCLUDE" || echo '/.gpu/' >> "$EXCLUDE"
  rm -rf .gpu/ds && mkdir -p .gpu/ds/src
  # PyPI has deepspeed as a source archive only: build a pure-Python wheel here (ops compile on use, none
  # is used with accelerate's client AdamW); the GPU image (Python 3.12) lacks hjson and pydantic
  "$PY" -m pip download -q --no-deps --no-binary=:all: -d .gpu/ds/src deepspeed==0.19.8
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/ds .gpu/ds/src/deepspeed-*.tar.gz
  rm -rf .gpu/ds/src
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/ds \
      hjson==3.1.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  du -sh .gpu/ds && ls .gpu/ds
  exit 0
fi
[ "$MODE" = run ] || { echo "unknown mode $MODE: prepare or run" >&2; exit 2; }
OUTDIR=${OUT:-/tmp/sharded_out}; W=/tmp/sharded; mkdir -p "$OUTDIR" && rm -rf "$W" && mkdir -p "$W"
exec > >(tee "$OUTDIR/log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$W/site" .gpu/ds/*.whl || exit 4
export PYTHONPATH=$W/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 KDLENS_CACHE=$W/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, accelerate, deepspeed, transformers; print('torch', torch.__version__, 'accelerate', accelerate.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
python3 - "$W/arith.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(64):
        f.write(json.dumps({"instruction": f"What is {i} + 3?", "input": "", "answer": str(i + 3),
                            "output": f"{i} plus 3 is {i + 3}. The answer is {i + 3}"}) + "\n")
PY
# fp32 (mixed_precision=no) so that the runs can agree to float tolerance; grad_accum 2 exercises DeepSpeed's
# accumulation boundary, max_grad_norm 0.05 its clipping (the tiny model's norms are above it)
RUN="teacher=tiny student=prune:1 tasks=$W/arith.jsonl method=word_kd loss=forward_kl steps=12 batch_size=8
     grad_accum=2 lr=1e-2 max_grad_norm=0.05 device=cuda mixed_precision=no save_every=0"
rc=0
python3 -m kdlens distill $RUN output_dir=$W/plain || rc=1
for NAME in fsdp fsdp_offload deepspeed_zero2 deepspeed_zero3; do
  echo "== $NAME"
  timeout 150 python3 -m accelerate.commands.launch --config_file kdlens/configs/accelerate/$NAME.yaml \
    --num_processes 1 --num_machines 1 -m kdlens distill $RUN output_dir=$W/$NAME || { echo "$NAME failed"; rc=1; }
done
python3 - "$W" "$OUTDIR/sharded.json" <<'PY' || rc=1
import json, sys
from pathlib import Path
from safetensors.torch import load_file
root, out = Path(sys.argv[1]), sys.argv[2]
def run(name):
    d = root / name
    if not (d / "done").is_file():
        return None
    log = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
    return log, load_file(str(d / "checkpoint" / "model.safetensors")), json.loads((d / "manifest.json").read_text())
plain = run("plain")
rows, ok = [], plain is not None
for name in ("fsdp", "fsdp_offload", "deepspeed_zero2", "deepspeed_zero3"):
    other = run(name)
    if plain is None or other is None:
        rows.append({"config": name, "finished": False}); ok = False; continue
    loss = max(abs(a["loss"] - b["loss"]) for a, b in zip(other[0], plain[0], strict=True))
    norm = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(other[0], plain[0], strict=True))
    weights = max(float((other[1][k].float() - plain[1][k].float()).abs().max()) for k in plain[1])
    same = other[1].keys() == plain[1].keys() and loss < 1e-5 and weights < 1e-4
    ok &= same
    rows.append({"config": name, "finished": True, "max_abs_loss_diff": loss, "max_abs_grad_norm_diff": norm,
                 "max_abs_weight_diff": weights, "same": same, "distributed": other[2]["distributed"],
                 "wall_s": other[2]["final"]["wall_s"], "plain_wall_s": plain[2]["final"]["wall_s"]})
for r in rows:
    print(json.dumps(r))
Path(out).write_text(json.dumps(rows, indent=1))
print("ALL EQUAL" if ok else "SOME DIFFER OR FAILED")
sys.exit(0 if ok else 1)
PY
exit $rc
