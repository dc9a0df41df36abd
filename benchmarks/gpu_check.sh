#!/usr/bin/env bash
# A GPU session in one call of the device tool, in under 8 minutes on an H100/H200 (benchmarks/README.md):
#   build    install the carried wheels (.whl/, from fetch_gpu_wheels.sh) and build l2fast into /tmp/site
#   device   the GPU, driver, CuPy and CUDA versions and the commit           -> gpu-device.txt
#   tests    tests/test_cuda.py and tests/test_sparse_cuda.py on the GPU (their host stand-in halves ran
#            in CI)                                                            -> gpu-tests.txt
#   parity   l2fast parity                                                     -> gpu-parity.txt
#   bench    C and D against PyTorch on the GPU and the cuBLAS GEMMs alone, a 16-lambda stacked sweep
#            against one run                                                   -> gpu-bench.{txt,json}
#            then P's sparse SGD epoch (binary TF-IDF-like 100k x 50k, uncaptured: cupyx products) against
#            the same rows dense, within 90 s                                  -> gpu-sparse.json
# Each part runs under `timeout` (the whole within GPU_CHECK_SECONDS, default 450); after each, gpu-check.txt
# and gpu-check.json record every part's status and seconds, so a part that hangs or a session cut short
# still leaves what was done. Without a usable GPU the GPU parts are recorded as skipped. Output goes to
# $OUT (the device tool's folder) or benchmarks/results/. The sources travel there without .git: give the
# commit as L2FAST_COMMIT=$(git rev-parse HEAD). GPU_CHECK_PARTS picks parts (default: all, in order).
# Exit status: 0 every part passed, 1 a part failed or timed out, 2 no GPU (GPU parts skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PARTS=${GPU_CHECK_PARTS:-build,device,tests,parity,bench}
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-450}))
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo "${L2FAST_COMMIT:-unknown}")
: > "$OUT/gpu-check.txt"
failed=0
skipped=0

write_record() {  # gpu-check.json from gpu-check.txt and gpu-device.txt
  python3 - "$OUT" "$COMMIT" <<'EOF'
import json, sys
from pathlib import Path
out, commit = Path(sys.argv[1]), sys.argv[2]
parts = {}
for line in (out / "gpu-check.txt").read_text().splitlines():
    name, status, seconds = line.split("\t")
    parts[name] = {"status": status, "seconds": float(seconds)}
device = out / "gpu-device.txt"
record = {"commit": commit, "parts": parts, "device": device.read_text() if device.exists() else None}
(out / "gpu-check.json").write_text(json.dumps(record, indent=1))
EOF
}

note() {  # part status seconds
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$OUT/gpu-check.txt"
  write_record
  echo "== gpu_check: $1 $2 (${3} s)"
}

run_part() {  # name limit_seconds log command...: runs it under timeout, its output teed to $OUT/log
  local name=$1 limit=$2 log=$3 start=$SECONDS rc
  shift 3
  [[ ",$PARTS," == *",$name,"* ]] || return 0
  local left=$((DEADLINE - SECONDS))
  if (( left < 3 )); then note "$name" "not run: out of time" 0; failed=1; return 0; fi
  (( limit > left )) && limit=$left
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
  rc=${PIPESTATUS[0]}
  if (( rc == 0 )); then note "$name" passed $((SECONDS - start))
  elif (( rc == 124 || rc == 137 )); then note "$name" "timed out after ${limit} s" $((SECONDS - start)); failed=1
  else note "$name" "failed (exit $rc)" $((SECONDS - start)); failed=1
  fi
}

build() {
  # l2fast goes beside the carried scipy-openblas32: its compiled module finds OpenBLAS at ../scipy_openblas32.
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  python3 -m pip install -q --no-build-isolation --no-deps --upgrade --target /tmp/site .
}

bench() {
  python3 -c 'import sys
from l2fast import bench
bench.run_gpu(json_path=sys.argv[1])' "$OUT/gpu-bench.json" || return $?
  timeout --kill-after=5 90 python3 -c 'import json, sys
from l2fast import bench_sparse
name, m, n, density, n_out, seed = bench_sparse.problems(quick=False)[0]
X, y = bench_sparse.tfidf_problem(m, n, density, n_out, seed)
print(f"P on the GPU: {name}, float32 SGD epochs, batch 256")
result = bench_sparse.bench_epochs(X, y, n_out, ["cuda"], 3, sys.stdout)
with open(sys.argv[1], "w") as f:
    json.dump({"problem": name, **result}, f, indent=1)' "$OUT/gpu-sparse.json"
  local rc=$?
  if (( rc == 124 || rc == 137 )); then echo "gpu_check: P's sparse epoch timed out after 90 s"; return 1; fi
  return $rc
}

device() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi: none here"
  echo "commit $COMMIT"
  python3 -c 'import json, l2fast
from l2fast.backends import cuda, get_backend
get_backend("cuda")
print(json.dumps(cuda.device_summary()))'
}

export -f build device bench
export OUT COMMIT PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
run_part build 240 gpu-build.txt bash -c build

if reason=$(python3 -c 'from l2fast.backends import BackendUnavailableError, get_backend
try:
    get_backend("cuda")
except BackendUnavailableError as exc:
    print(exc)' 2>&1) && [[ -z "$reason" ]]; then
  run_part device 60 gpu-device.txt bash -c device
  run_part tests 150 gpu-tests.txt python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
    tests/test_sparse_cuda.py -k "not emulated"
  run_part parity 90 gpu-parity.txt python3 -m l2fast parity
  run_part bench 270 gpu-bench.txt bash -c bench
else
  echo "GPU parts not run, backend='cuda' is unavailable: ${reason}" | tee "$OUT/gpu-device.txt"
  for part in device tests parity bench; do
    if [[ ",$PARTS," == *",$part,"* ]]; then note "$part" "skipped: no GPU" 0; fi
  done
  skipped=1
fi
(( failed )) && exit 1
(( skipped )) && exit 2
exit 0
