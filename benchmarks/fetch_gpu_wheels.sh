#!/usr/bin/env bash
# Run here, before a GPU session: downloads into .whl/ (ignored by git) the wheel that the GPU machine
# lacks for benchmarks/gpu_check.sh. Its image has Python 3.12 with CuPy (cupy-cuda13x), pybind11,
# scikit-build-core, CMake, ninja, PyTorch, pytest, hypothesis, tqdm and scikit-learn, but not
# scipy-openblas32, where l2fast's cpu backend gets OpenBLAS (device tool: KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if info=$(git rev-parse --git-path info 2>/dev/null); then
  mkdir -p "$info"
  grep -qx '/.whl/' "$info/exclude" 2>/dev/null || echo '/.whl/' >> "$info/exclude"
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl scipy-openblas32
ls -la .whl
