#!/usr/bin/env bash
# Everything a GPU session does, in one call of the device tool (see benchmarks/README.md):
# install the carried wheels, build l2fast on the GPU machine, run the CUDA tests, the parity tool and
# the benchmark, and leave every output in $OUT (benchmarks/results/ when OUT is unset). The sources
# travel there without .git: give the commit as L2FAST_COMMIT=$(git rev-parse HEAD) in the command.
set -euo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# l2fast goes beside the carried scipy-openblas32: its compiled module finds OpenBLAS at ../scipy_openblas32.
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
python3 -m pip install -q --no-build-isolation --no-deps --upgrade --target /tmp/site .
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi: none here"
  git log -1 --format='commit %H' 2>/dev/null || echo "commit ${L2FAST_COMMIT:-unknown}"; } | tee "$OUT/gpu-device.txt"
python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_cuda_host.py tests/test_parity.py \
  tests/test_optim.py tests/test_stacked.py 2>&1 | tee "$OUT/gpu-tests.txt" || echo "SOME TESTS FAILED"
python3 -m l2fast parity 2>&1 | tee "$OUT/gpu-parity.txt" || echo "PARITY FAILED"
python3 -m l2fast bench --configs "${BENCH_CONFIGS:-A,B,C,D,S,O}" --json "$OUT/gpu-bench.json" 2>&1 \
  | tee "$OUT/gpu-bench.txt"
