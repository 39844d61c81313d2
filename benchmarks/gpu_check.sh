#!/usr/bin/env bash
# The GPU check in one command, on a GPU host with no network: installs the wheels that
# benchmarks/gpu_pack.sh packed into .gpu/, puts the offline assets in place, then runs the gpu
# test tier (tests/test_gpu.py) and benchmarks/bench_gpu.py. Logs and figures go to $OUT
# (default gpu_out/): test_gpu.log, bench_gpu.log, bench_gpu.json. Arguments are passed to
# bench_gpu.py. Planned for under 8 minutes on one H100/H200.
#
#   benchmarks/gpu_check.sh                                   # on the GPU host
#   CEM_GPU_TIER_DEVICE=cpu benchmarks/gpu_check.sh --smoke --device cpu   # its dry run, no GPU
#
# .gpu/a/ may have been uploaded earlier and copied to $CEM_GPU_STASH (default /tmp/cem-gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_out}
STASH=${CEM_GPU_STASH:-/tmp/cem-gpu}
SITE=${CEM_GPU_SITE:-/tmp/cem-site}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false CEM_CACHE=${CEM_CACHE:-/tmp/cem-cache}
mkdir -p "$OUT" "$CEM_CACHE/wheels"
step() { echo "=== $* ($(date +%T))"; }

step host
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import sys, torch, transformers, peft, lightning as L; print(sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'lightning', L.__version__)" || exit 1

step wheels
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .gpu/b/wheels/*.whl || exit 1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

step assets
cp .gpu/b/assets/*.whl "$CEM_CACHE/wheels/"
for part in .gpu/b/assets/*.part01; do
  name=$(basename "$part" .part01)
  first=$(ls "$STASH/$name.part00" ".gpu/a/$name.part00" 2>/dev/null | head -1)
  [[ -n $first ]] || { echo "missing $name.part00: upload .gpu/a (benchmarks/gpu_pack.sh)"; exit 1; }
  cat "$first" "$part" > "$CEM_CACHE/wheels/$name"
done
"$PY" -m cem assets fetch smollm2-135m-instruct wiki-summaries-en countryinfo || exit 1

step "gpu test tier"
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
tier=${PIPESTATUS[0]}

step bench_gpu
"$PY" benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json" "$@" 2>&1 | tee "$OUT/bench_gpu.log"
bench=${PIPESTATUS[0]}

step "done: test tier exit $tier, bench exit $bench"
exit $(( tier || bench ))
