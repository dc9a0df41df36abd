"""Adam epochs of small one-hidden-layer networks as the cpu backend runs them (OpenBLAS on one thread, the steps'
two parts on `share_threads`), shape by shape: the measurements behind ``_core.partial_output_fits``' bounds
(benchmarks/README.md, R, session 21). The choice between the two ways of cutting a step (by hidden units with
partial outputs, PartialOutputEpoch, or in two shares of records, OptimizerStep) is made in the C++, so the two are
compared across builds: run this script under a build before and after a change, alternating, e.g.

    PYTHONPATH=/tmp/old-build .venv/bin/python benchmarks/partial_output_shapes.py
    .venv/bin/python benchmarks/partial_output_shapes.py

Prints, per shape (each one optimizer_step_shares cuts), the median epoch on two threads and on one, and whether this
build's partial_output_fits takes it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from l2fast import _core

SHAPES = [  # (layer sizes, batch, records, dtype)
    ([64, 64, 10], 200, 20000, "float64"), ([64, 64, 10], 200, 20000, "float32"),
    ([64, 64, 10], 64, 20000, "float64"), ([64, 100, 10], 200, 10000, "float64"),
    ([64, 256, 10], 200, 10000, "float64"), ([128, 64, 10], 200, 20000, "float64"),
    ([64, 16, 10], 200, 20000, "float64"), ([784, 100, 10], 200, 10000, "float64"),
    ([784, 128, 10], 200, 10000, "float32"),
]


def epoch_seconds(sizes, batch, m, dtype, threads, count):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(m, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], m)
    params = [(rng.normal(size=(o, i)) * 0.1).astype(dtype) for i, o in zip(sizes, sizes[1:])]
    params += [np.zeros(o, dtype=dtype) for o in sizes[1:]]
    slots = [[np.zeros_like(a) for a in params] for _ in range(2)]
    times = []
    for step in range(count + 1):  # the first a warm-up
        order = rng.permutation(m).astype(np.int64)
        began = time.perf_counter()
        _core.train_epoch(params[:2], params[2:], X, y, order, batch, 0.001, 1e-4, "relu", "softmax", optimizer="adam",
                          slots=slots, step=step * -(-m // batch), eps_on_v=True, with_norms=True,
                          share_threads=threads)
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=9)
    args = parser.parse_args()
    before = _core.get_num_threads()
    _core.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}")
    for sizes, batch, m, dtype in SHAPES:
        assert _core.optimizer_step_shares(sizes, batch)
        two, one = (epoch_seconds(sizes, batch, m, dtype, n, args.epochs) for n in (2, 1))
        fits = getattr(_core, "partial_output_fits", lambda *_: False)(sizes, batch)
        print(f"{'-'.join(map(str, sizes)):>12} batch {batch:>3} {dtype}: two threads {two * 1e3:7.2f} ms, one "
              f"{one * 1e3:7.2f} ms ({'partial outputs' if fits else 'two shares'})", flush=True)
    _core.set_num_threads(before)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
