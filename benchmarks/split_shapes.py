"""Epochs cut by hidden units (UnitSplitEpoch, ``_core.split_step_fits``) against the same epochs on OpenBLAS's two
threads (the general step), float32 plain SGD, shape by shape: the measurements behind split_step_fits' bounds
(benchmarks/README.md, B, session 20).

Each round times one process's epochs both ways, alternating, after a warm-up epoch of each: the general step by
telling the cpu backend's thread rule that no epoch splits (``threads.two_share_epoch`` answers False, so OpenBLAS
keeps its threads), the split by its own rule. Prints, per shape, the general step's median epoch over the split's
in each round, and the load average around the run.

    .venv/bin/python benchmarks/split_shapes.py [--rounds 3] [--epochs 4]
"""
from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

import l2fast
from l2fast import _core, threads

SHAPES = [  # (layer sizes, batch, records)
    ([784, 256, 10], 128, 30000), ([784, 256, 10], 64, 20000), ([784, 256, 10], 32, 20000),
    ([784, 256, 10], 16, 20000), ([300, 300, 10], 16, 40000), ([200, 200, 10], 32, 60000),
    ([150, 300, 10], 32, 60000), ([256, 512, 10], 64, 40000), ([784, 200, 10], 200, 40000),
    ([2000, 300, 5], 100, 10000), ([1000, 1000, 10], 100, 10000), ([784, 1024, 10], 128, 20000),
    ([784, 1024, 10], 256, 20000), ([100, 256, 10], 128, 60000),
]


def median_epoch(sizes, batch, X, y, split, epochs):
    rule = threads.two_share_epoch
    if not split:
        threads.two_share_epoch = lambda *args, **kwargs: False
    try:
        net = l2fast.Network(sizes, activation="relu", loss="softmax", lam=1.0, backend="cpu", dtype="float32",
                             seed=0)
        net.fit(X, y, epochs=1, lr=0.01, batch_size=batch)
        return statistics.median(net.fit(X, y, epochs=epochs, lr=0.01, batch_size=batch).seconds)
    finally:
        threads.two_share_epoch = rule


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}; l2fast threads: {l2fast.get_num_threads()}")
    print(f"{'shape':16} {'batch':>5} {'M mult-adds':>11} {'splits':>6}  general / split per round   general s")
    rng = np.random.default_rng(0)
    for sizes, batch, m in SHAPES:
        X = rng.standard_normal((m, sizes[0]), dtype=np.float32)
        y = rng.integers(0, sizes[-1], m)
        ratios = []
        for _ in range(args.rounds):
            general = median_epoch(sizes, batch, X, y, False, args.epochs)
            ratios.append(general / median_epoch(sizes, batch, X, y, True, args.epochs))
        fits = _core.split_step_fits(sizes, batch, "relu")
        print(f"{'-'.join(map(str, sizes)):16} {batch:5} {batch * sizes[0] * sizes[1] / 1e6:11.1f} {fits!s:>6}  "
              f"{' '.join(f'{r:.3f}' for r in ratios):26} {general:.4f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
