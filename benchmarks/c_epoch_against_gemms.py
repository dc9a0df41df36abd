"""Config C's epoch (784-1024-1024-10, batch 256, float32, 60 000 records, plain SGD) as `_core.train_epoch` runs
it, against its GEMMs alone (`_core.gemm_only_epoch_seconds`), the two taking turns in one process: the
measurement behind benchmarks/README.md's Targets, session 22. Without `l2fast bench`'s other contenders (the
NumPy reference and scikit-learn, whose OpenBLAS threads poll about 0.1 s after their epoch, beside the next
contender's), so that two builds compare on l2fast's own passes alone: run it under each, alternating, e.g.

    PYTHONPATH=/tmp/old-build .venv/bin/python benchmarks/c_epoch_against_gemms.py
    .venv/bin/python benchmarks/c_epoch_against_gemms.py

Prints each round's epoch and GEMM-only seconds, then the median ratio and the build's commit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from l2fast import _core

SIZES, M, BATCH = [784, 1024, 1024, 10], 60_000, 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(M, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], M)
    W = [(rng.normal(size=(o, i)) * np.sqrt(2 / i)).astype(np.float32) for i, o in zip(SIZES, SIZES[1:])]
    b = [np.zeros(o, np.float32) for o in SIZES[1:]]
    _core.set_num_threads(2)

    def epoch():
        order = rng.permutation(M).astype(np.int64)
        began = time.perf_counter()
        _core.train_epoch(W, b, X, y, order, BATCH, 0.01, 1 / M, "relu", "softmax", share_threads=2,
                          check_finite=False)
        return time.perf_counter() - began

    def gemms():
        return _core.gemm_only_epoch_seconds(SIZES, M, BATCH, "float32")

    epoch(), gemms()  # warm-up: threads, page faults
    ratios = []
    for _ in range(args.rounds):
        e, g = epoch(), gemms()
        ratios.append(e / g)
        print(f"  epoch {e:.3f} s, GEMMs alone {g:.3f} s: {e / g:.3f} x", flush=True)
    print(f"{_core.build_commit[:7]}: median {statistics.median(ratios):.3f} x, load average "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
