"""``l2fast bench --configs M``: data-parallel scaling over MPI on B and C, and a cost model beyond this machine.

(a) Seconds per float32 epoch of B and C (``l2fast bench``'s networks and batches, on fewer records: ROWS) with
    backend="cpu", each layout launched with the mpich wheel's ``mpiexec``: one process on one thread (the fused
    epoch, no communicator), one rank through the data-parallel path (the per-step path alone, its allreduce
    a copy), two ranks of one thread, and one process on two threads. Layouts take turns, ``rounds`` launches
    each, every launch timing ``repeats`` epochs after a warm-up one; the figure is the median of the medians.
    Parallel efficiency is T(one process, one thread) / (2 T(two ranks)), and the same for two threads.
(b) alpha (latency) and beta (seconds per byte) of this machine's shared-memory allreduce between two ranks,
    fitted to the ring model from Allreduce timings of 8 B and 8 MiB.
(c) The ring allreduce model, T(N) = 2(N - 1) alpha + 2(N - 1)/N n beta for n gradient bytes (the float64 sums
    l2fast sends), and the efficiency it predicts with a fixed global batch, t / (N (t/N + T(N))) for a step's
    compute time t on one rank, at N = 2 ... 64: with this machine's alpha and beta and one core's t, and with
    the stated alpha and beta of 10 GbE, 100 GbE with RDMA and NVLink (STATED_LINKS). The model leaves out the
    per-step overhead that does not shrink with the local batch, and the overlap of the allreduce with the
    backward pass (on cpu each bucket's allreduce starts as soon as its layers are made, but MPICH moves it on
    only inside MPI calls, between the layers).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROWS = {"B": 12_800, "C": 5_120}  # records per epoch here: the full 60 000 of C take ~20 s an epoch on one core
QUICK_ROWS = {"B": 640}
RANKS = (2, 4, 8, 16, 32, 64)
# (alpha s, beta s/byte), round figures from the links' nominal rates: 10 Gb/s and 100 Gb/s Ethernet (TCP-like
# latency for the first, RDMA's for the second) and NVLink 4 (about 450 GB/s each way per GPU, NCCL's ring
# reaching some 300 GB/s; latency of NCCL's ring steps)
STATED_LINKS = {"10 GbE": (30e-6, 8 / 10e9), "100 GbE RDMA": (5e-6, 8 / 100e9), "NVLink 4": (5e-6, 1 / 300e9)}
LAYOUTS = [  # (name, ranks, threads, through the data-parallel path)
    ("1 process x 1 thread", 1, 1, False),
    ("1 rank x 1 thread, data-parallel path", 1, 1, True),
    ("2 ranks x 1 thread", 2, 1, True),
    ("1 process x 2 threads", 1, 2, False),
]


def ring_allreduce_seconds(n_bytes: float, ranks: int, alpha: float, beta: float) -> float:
    """A ring allreduce of n_bytes on `ranks` ranks: 2(N - 1) steps of latency alpha, and 2(N - 1)/N n_bytes
    through each rank's link at beta seconds a byte."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * n_bytes * beta


def predicted_efficiency(step_seconds: float, n_bytes: float, ranks: int, alpha: float, beta: float) -> float:
    """Efficiency with a fixed global batch: t / (N (t/N + T_allreduce(N))) for a step of t seconds on one rank."""
    return step_seconds / (ranks * (step_seconds / ranks + ring_allreduce_seconds(n_bytes, ranks, alpha, beta)))


def fit_alpha_beta(small, large, ranks=2):
    """(alpha, beta) of the ring model through two (bytes, seconds) points of an allreduce on `ranks` ranks."""
    steps, share = 2 * (ranks - 1), 2 * (ranks - 1) / ranks
    beta = max(large[1] - small[1], 0.0) / (share * (large[0] - small[0]))
    alpha = max(small[1] - share * small[0] * beta, 0.0) / steps
    return alpha, beta


# -- the ranks' side (python -m l2fast.bench_mpi ...) --------------------------------------------------------


def _worker_epochs(key, rows, repeats, data_parallel, threads, quick):
    """Runs in every rank: `repeats` timed epochs after one warm-up; rank 0 prints a JSON line."""
    import l2fast
    from l2fast import bench, distributed

    l2fast.set_num_threads(threads, adaptive=False)  # the layout's count, whatever the load
    config = replace(next(c for c in (bench.QUICK_CONFIGS if quick else bench.CONFIGS) if c.key == key), m=rows)
    X, y = bench.make_data(config)
    net = l2fast.Network(config.sizes, activation=config.activation, loss=config.loss, lam=config.lam,
                         dtype="float32", seed=0)
    comm, made = None, []
    if data_parallel:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        make = distributed.Communicator.__init__

        def recording(self, *args, **kwargs):  # keeps each fit's communicator for its allreduce seconds
            make(self, *args, **kwargs)
            made.append(self)

        distributed.Communicator.__init__ = recording
    seconds, reducing = [], []
    for epoch in range(repeats + 1):
        history = net.fit(X, y, epochs=1, lr=config.lr, batch_size=config.batch, comm=comm)
        if epoch:
            seconds.append(history.seconds[0])
            reducing.append(made[-1].seconds_reducing if made else 0.0)
    rank = 0 if comm is None else comm.Get_rank()
    if rank == 0:
        n_parameters = sum(a * b + b for a, b in zip(config.sizes[:-1], config.sizes[1:]))
        print(json.dumps({"seconds": seconds, "allreduce_seconds": reducing, "steps": -(-rows // config.batch),
                          "gradient_bytes": 8 * (n_parameters + 1), "threads": l2fast.get_num_threads()}))


def _worker_alpha_beta(repeats):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    points = []
    for n_bytes in (8, 8 << 20):
        buffer = np.ones(n_bytes // 8)
        times = []
        for _ in range(repeats + 3):
            comm.Barrier()
            start = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            times.append(time.perf_counter() - start)
        points.append((n_bytes, statistics.median(times[3:])))
    if comm.Get_rank() == 0:
        print(json.dumps({"points": points}))


# -- the driver -----------------------------------------------------------------------------------------------


def _mpiexec():
    import shutil

    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if not found:
        raise RuntimeError('l2fast bench --configs M needs mpiexec: pip install "l2fast[mpi]"')
    return found


def _launch(ranks, threads, args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), L2FAST_NUM_THREADS=str(threads))
    command = [_mpiexec(), "-n", str(ranks), sys.executable, "-m", "l2fast.bench_mpi", *map(str, args)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(repeats=3, out=None, quick=False, rounds=2):
    """Runs (a), (b) and (c), prints their tables and returns the record."""
    out = out or sys.stdout
    rows_of = QUICK_ROWS if quick else ROWS
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nData-parallel training over MPI (float32, cpu backend; load average {load:.2f} at the start)", file=out)
    record = {"rows": rows_of, "load_average": load, "configs": {}}
    for key, rows in rows_of.items():
        runs = {name: [] for name, *_ in LAYOUTS}
        for _ in range(rounds):
            for name, ranks, threads, data_parallel in LAYOUTS:
                runs[name].append(_launch(ranks, threads, ["epochs", key, rows, repeats, int(data_parallel), threads,
                                                                        int(quick)]))
        summary = {}
        for name, results in runs.items():
            summary[name] = {
                "epoch_seconds": statistics.median(statistics.median(r["seconds"]) for r in results),
                "allreduce_seconds": statistics.median(statistics.median(r["allreduce_seconds"]) for r in results),
                "steps": results[0]["steps"], "gradient_bytes": results[0]["gradient_bytes"],
                "threads": results[0]["threads"], "runs": results}
        base = summary["1 process x 1 thread"]["epoch_seconds"]
        for name, ranks, threads, _ in LAYOUTS:
            summary[name]["efficiency"] = base / (max(ranks, threads) * summary[name]["epoch_seconds"])
        record["configs"][key] = summary
        print(f"\n{key} ({rows} records, {summary[LAYOUTS[0][0]]['steps']} steps an epoch, "
              f"{summary[LAYOUTS[0][0]]['gradient_bytes'] / 2**20:.2f} MiB of gradient sums a step)", file=out)
        print(f"  {'layout':40} {'epoch s':>9} {'allreduce s':>12} {'efficiency':>11}", file=out)
        for name, *_ in LAYOUTS:
            s = summary[name]
            print(f"  {name:40} {s['epoch_seconds']:9.3f} {s['allreduce_seconds']:12.4f} {s['efficiency']:11.2f}",
                  file=out)
    points = _launch(2, 1, ["alpha-beta", 20 if not quick else 3])["points"]
    alpha, beta = fit_alpha_beta(*points)
    record["shared_memory"] = {"points": points, "alpha": alpha, "beta": beta}
    rate = 1 / beta / 1e9 if beta else float("inf")
    print(f"\nAllreduce between 2 ranks here: {points[0][1] * 1e6:.1f} us for 8 B, {points[1][1] * 1e3:.2f} ms for "
          f"8 MiB: alpha {alpha * 1e6:.2f} us, beta {beta * 1e9:.3f} ns/B ({rate:.1f} GB/s)", file=out)
    links = {"shared memory (measured)": (alpha, beta), **STATED_LINKS}
    record["model"] = {}
    for key, summary in record["configs"].items():
        single = summary["1 process x 1 thread"]
        step = single["epoch_seconds"] / single["steps"]
        n_bytes = single["gradient_bytes"]
        table = {link: [predicted_efficiency(step, n_bytes, N, a, b) for N in RANKS] for link, (a, b) in links.items()}
        record["model"][key] = {"step_seconds": step, "gradient_bytes": n_bytes, "ranks": list(RANKS),
                                "efficiency": table}
        print(f"\n{key}: predicted efficiency, one core's step of {step * 1e3:.2f} ms, {n_bytes / 2**20:.2f} MiB",
              file=out)
        print(f"  {'link':26}" + "".join(f"{'N=' + str(N):>8}" for N in RANKS), file=out)
        for link, values in table.items():
            print(f"  {link:26}" + "".join(f"{v:8.2f}" for v in values), file=out)
    return record


def main(argv):
    if argv[0] == "epochs":
        key, rows, repeats, threads = argv[1], int(argv[2]), int(argv[3]), int(argv[5])
        _worker_epochs(key, rows, repeats, argv[4] == "1", threads, argv[6] == "1")
    elif argv[0] == "alpha-beta":
        _worker_alpha_beta(int(argv[1]))
    else:
        record = run(quick="--quick" in argv)
        if "--json" in argv:
            Path(argv[argv.index("--json") + 1]).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
