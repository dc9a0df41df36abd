"""Config A's linear epochs in fresh processes, alternating builds (issue 19 item 3; benchmarks/README.md, A).

    python benchmarks/linear_a_rounds.py --python old=/path/.venv/bin/python --python new=.venv/bin/python --rounds 5

runs, per round, one fresh process of each build and each model (100 -> 1 logistic, 100 -> 10 softmax), in turn,
on A's data (100k x 100 float32, batch 256, plain SGD, shuffled), and prints each process's figures and the
ratios first / each other build per round. A child (``--child K``) times ``fit(epochs=1)`` ``--calls`` times (the
epoch as ``History.seconds`` gives it, the call's wall time, the calling thread's CPU time and the process's CPU
time, which counts the helper thread too), then one ``fit(epochs=15)`` (its epochs' seconds), then the floors as
bench A measures them (``_core.shuffled_read_seconds``, the median of nine single reads: the rows read once, and the
issue's floor, each batch of 256 gathered once and then read twice) and the epoch over each; then the same two ratios
from nine pairs taken back to back (an epoch and the two floors, which first in turn), the median of the pairs'
ratios (``*_paired``): the host's speed moves within seconds, and the separate medians carry that into their ratio.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time


def child(k, calls):
    import numpy as np
    import l2fast

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 100)).astype(np.float32)
    if k == 1:  # the targets without NumPy's BLAS (its threads would spin into the timed epochs)
        w = rng.normal(size=100).astype(np.float32)
        y = (np.einsum("ij,j->i", X, w) > 0).astype(np.int64)
    else:
        y = rng.integers(0, k, size=100_000)
    loss = "logistic" if k == 1 else "softmax"
    net = l2fast.Network([100, k], activation="identity", loss=loss, lam=1.0, backend="cpu", dtype="float32", seed=0)
    net.fit(X, y, epochs=1, lr=0.01, batch_size=256)  # warm-up
    epoch, wall, thread, process = [], [], [], []
    for _ in range(calls):
        t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        history = net.fit(X, y, epochs=1, lr=0.01, batch_size=256)
        wall.append(time.perf_counter() - t0)
        thread.append(time.thread_time() - c0)
        process.append(time.process_time() - p0)
        epoch.append(history.seconds[0])
    history = net.fit(X, y, epochs=15, lr=0.01, batch_size=256)
    ms = lambda v: 1e3 * statistics.median(v)
    # the floor as bench A takes it: X's rows read once in a shuffled order, the median of single reads (a build
    # without the measure gives nan)
    try:
        from l2fast import _core
        read = getattr(_core, "shuffled_read_seconds", None)
    except ImportError:
        read = None
    floor = ms([read(X, 1) for _ in range(9)]) if read is not None else float("nan")
    # the issue's floor: each batch gathered once, then read twice from cache (builds before session 15: nan)
    try:
        issue_floor = ms([read(X, 1, 256) for _ in range(9)]) if read is not None else float("nan")
    except TypeError:
        issue_floor = float("nan")
    # the same ratios in pairs taken back to back (an epoch, then the two floors, or the floors first, in turn): the
    # host's speed moves by tens of percent from one second to the next, and an epoch and a floor measured seconds
    # apart carry that into their ratio; the median of nine pairs
    paired_floor, paired_issue = [], []
    if not math.isnan(issue_floor):
        floors = lambda: (read(X, 1), read(X, 1, 256))
        for i in range(9):
            floors_first = i % 2 == 1
            if floors_first:
                once, by_batch = floors()
            seconds = net.fit(X, y, epochs=1, lr=0.01, batch_size=256).seconds[0]
            if not floors_first:
                once, by_batch = floors()
            paired_floor.append(seconds / once)
            paired_issue.append(seconds / by_batch)
    median_or_nan = lambda v: statistics.median(v) if v else float("nan")
    print(json.dumps({"fit1": ms(epoch), "fit1_min": 1e3 * min(epoch), "fit15": ms(history.seconds),
                      "wall1": ms(wall), "thread1": ms(thread), "process1": ms(process), "floor": floor,
                      "fit1_floor": ms(epoch) / floor, "issue_floor": issue_floor,
                      "fit1_issue_floor": ms(epoch) / issue_floor, "fit1_floor_paired": median_or_nan(paired_floor),
                      "fit1_issue_floor_paired": median_or_nan(paired_issue)}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", action="append", default=[], help="name=interpreter, the first the reference")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--child", type=int)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.calls)
    builds = [p.split("=", 1) for p in args.python]
    keys = ["fit1", "fit1_min", "fit15", "wall1", "thread1", "process1", "floor", "fit1_floor", "issue_floor",
            "fit1_issue_floor", "fit1_floor_paired", "fit1_issue_floor_paired"]
    kinds = ("floor", "issue_floor", "floor_paired", "issue_floor_paired")
    ratios = {k: {name: [] for name, _ in builds[1:]} for k in (1, 10)}
    floors = {(k, f): {name: [] for name, _ in builds} for k in (1, 10) for f in kinds}
    load = lambda: open("/proc/loadavg").read().split()[:3]
    print("load", *load(), flush=True)
    for rnd in range(args.rounds):
        for k in (1, 10):
            got = {}
            for name, python in builds:
                out = subprocess.run([python, os.path.abspath(__file__), "--child", str(k), "--calls", str(args.calls)],
                                     capture_output=True, text=True, check=True, cwd="/tmp")
                got[name] = json.loads(out.stdout.strip().splitlines()[-1])
                for f in kinds:
                    floors[k, f][name].append(got[name].get(f"fit1_{f}", float("nan")))
                print(f"round {rnd} 100->{k:<2} {name:>6} "
                      + " ".join(f"{key} {got[name].get(key, float('nan')):6.2f}" for key in keys), flush=True)
            ref = builds[0][0]
            for name, _ in builds[1:]:
                r = {key: got[ref][key] / got[name][key] for key in ("fit1", "fit15", "wall1", "process1")}
                ratios[k][name].append(r)
                print(f"round {rnd} 100->{k:<2} {ref}/{name} " + " ".join(f"{key} {v:.2f}x" for key, v in r.items()),
                      f"load {' '.join(load())}", flush=True)
    for k in (1, 10):
        for f in kinds:
            for name, per_round in floors[k, f].items():
                if per_round and not math.isnan(per_round[0]):  # a build without the floor measure gives nan
                    print(f"100->{k:<2} {name} epoch of fit(epochs=1) / {f}: median {statistics.median(per_round):.2f}x "
                          f"min {min(per_round):.2f}x max {max(per_round):.2f}x  per round "
                          + " ".join(f"{x:.2f}" for x in per_round))
        for name, rs in ratios[k].items():
            for key in ("fit1", "fit15", "wall1", "process1"):
                v = [r[key] for r in rs]
                print(f"100->{k:<2} {builds[0][0]}/{name} {key}: median {statistics.median(v):.2f}x "
                      f"min {min(v):.2f}x max {max(v):.2f}x  per round " + " ".join(f"{x:.2f}" for x in v))
    print("load", *load())


if __name__ == "__main__":
    sys.exit(main())
