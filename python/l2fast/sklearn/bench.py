"""The drop-ins against scikit-learn's own classes on the same settings: ``l2fast bench --configs R`` (or
``python -m l2fast.sklearn.bench``).

Each case fits scikit-learn's class and l2fast's drop-in with the same arguments and random_state, so both
take the same steps (to rounding) and end at the same loss: the MLPs run a fixed number of epochs
(``tol=0``), LogisticRegression runs lbfgs to the same ``tol``. The table gives each one's seconds (median of
``repeats`` fits after a warm-up fit of each, the contenders alternating and taking turns to go first), the
ratio, the ratio of their CPU times (``time.process_time``, every thread of the process: on a shared machine
the wall time counts other processes' turns on the cores too), both final losses (which show that the two did
the same work) and the issue's target ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

# the targets on cpu: Python overhead per step dominates scikit-learn's small networks; both reach
# BLAS on the wide one; LogisticRegression is one convex solve
TARGETS = {"small": 5.0, "wide": 1.3, "logistic": 1.5}
PAUSE = 0.25  # seconds idle before each timed fit, as bench T waits


def _cases(quick):
    """(name, class name, parameters, X, y, target key)."""
    from sklearn.datasets import load_digits, make_classification
    from sklearn.preprocessing import StandardScaler

    X_digits, y_digits = load_digits(return_X_y=True)
    X_digits = StandardScaler().fit_transform(X_digits)
    rng = np.random.default_rng(0)
    m64, m784 = (5000, 2500) if quick else (20000, 10000)
    X64 = rng.standard_normal((m64, 64))
    y64 = (X64[:, :10] @ rng.standard_normal((10, 10))).argmax(axis=1)
    X784 = rng.standard_normal((m784, 784)).astype(np.float32)
    y784 = (X784[:, :20] @ rng.standard_normal((20, 10))).argmax(axis=1)
    X_lr, y_lr = make_classification(n_samples=10000 if quick else 50000, n_features=100, n_informative=30,
                                     random_state=0)
    epochs = 5 if quick else 20
    mlp = dict(max_iter=epochs, tol=0.0, n_iter_no_change=10**6, random_state=0)
    cases = []
    for solver in ("adam", "sgd"):
        cases += [
            (f"MLP {solver}, standardised digits 1797x64, 64-64-10", "MLPClassifier",
             dict(hidden_layer_sizes=(64,), solver=solver, **mlp), X_digits, y_digits, "small"),
            (f"MLP {solver}, synthetic {m64}x64, 64-64-10", "MLPClassifier",
             dict(hidden_layer_sizes=(64,), solver=solver, **mlp), X64, y64, "small"),
            (f"MLP {solver}, synthetic {m784}x784 float32, 784-256-10", "MLPClassifier",
             dict(hidden_layer_sizes=(256,), solver=solver, **{**mlp, "max_iter": max(epochs // 2, 1)}), X784, y784,
             "wide"),
        ]
    cases.append((f"LogisticRegression lbfgs, {len(X_lr)}x100", "LogisticRegression", dict(max_iter=1000), X_lr, y_lr,
                  "logistic"))
    return cases


def _final_loss(est, X, y):
    if hasattr(est, "loss_"):
        return float(est.loss_)
    from sklearn.metrics import log_loss

    return float(log_loss(y, est.predict_proba(X)) + 0.5 * np.sum(est.coef_.astype(np.float64) ** 2) / len(X))


def run(quick=False, repeats=3, backend="cpu", only=None):
    """Yields one row per case as it is measured: (name, scikit-learn s, l2fast s, speed-up, scikit-learn loss,
    l2fast loss, target, scikit-learn CPU s, l2fast CPU s, CPU speed-up). only: the cases whose name contains
    it."""
    import sklearn.linear_model
    import sklearn.neural_network

    from l2fast.sklearn import _dropin

    for name, cls, params, X, y, target in _cases(quick):
        if only is not None and only not in name:
            continue
        theirs_cls = getattr(sklearn.neural_network if cls.startswith("MLP") else sklearn.linear_model, cls)
        ours_cls = getattr(_dropin, cls)
        contenders = {"scikit-learn": lambda: theirs_cls(**params),
                      "l2fast": lambda: ours_cls(**params, backend=backend)}
        times = {who: [] for who in contenders}
        cpu_times = {who: [] for who in contenders}
        losses = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for make in contenders.values():  # warm-up: thread pools, first calls, caches
                make().fit(X[:200], y[:200])
            for repeat in range(repeats):
                for who in (list(contenders) if repeat % 2 == 0 else list(contenders)[::-1]):
                    est = contenders[who]()
                    time.sleep(PAUSE)  # the previous fit's BLAS threads spin a moment before they sleep (bench T)
                    start, cpu_start = time.perf_counter(), time.process_time()
                    est.fit(X, y)
                    times[who].append(time.perf_counter() - start)
                    cpu_times[who].append(time.process_time() - cpu_start)
                    losses[who] = _final_loss(est, X, y)
        sk, l2 = statistics.median(times["scikit-learn"]), statistics.median(times["l2fast"])
        sk_cpu, l2_cpu = statistics.median(cpu_times["scikit-learn"]), statistics.median(cpu_times["l2fast"])
        yield (name, sk, l2, sk / l2, losses["scikit-learn"], losses["l2fast"], TARGETS[target], sk_cpu, l2_cpu,
               sk_cpu / l2_cpu)


def report(quick=False, repeats=3, backend="cpu", out=None, only=None):
    """Runs the cases, prints the table with the load average before and after; returns a JSON-able record."""
    out = out or sys.stdout
    load_before = os.getloadavg()[0]
    print(f"\nscikit-learn drop-ins (R), backend {backend}, median of {repeats}; load average before: "
          f"{load_before:.1f}", file=out)
    print(f"{'case':58} {'sklearn s':>10} {'l2fast s':>9} {'speed-up':>9} {'CPU s':>13} {'CPU ratio':>9} "
          f"{'target':>7} {'sklearn loss':>13} {'l2fast loss':>12}", file=out)
    rows = []
    for row in run(quick, repeats, backend, only):
        name, sk, l2, ratio, loss_sk, loss_l2, target, sk_cpu, l2_cpu, cpu_ratio = row
        print(f"{name:58} {sk:10.3f} {l2:9.3f} {ratio:8.1f}x {sk_cpu:6.3f}/{l2_cpu:6.3f} {cpu_ratio:8.1f}x "
              f"{target:6.1f}x {loss_sk:13.6f} {loss_l2:12.6f}", file=out, flush=True)
        rows.append(row)
    load_after = os.getloadavg()[0]
    print(f"load average after: {load_after:.1f}", file=out)
    return {"backend": backend, "load_average": [load_before, load_after],
            "cases": [dict(zip(("case", "sklearn_s", "l2fast_s", "speed_up", "sklearn_loss", "l2fast_loss", "target",
                                "sklearn_cpu_s", "l2fast_cpu_s", "cpu_speed_up"), row)) for row in rows]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets and fewer epochs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    args = parser.parse_args(argv)
    report(args.quick, args.repeat, args.backend, only=args.only)


if __name__ == "__main__":
    main()
