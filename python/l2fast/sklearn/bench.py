"""The drop-ins against scikit-learn's own classes on the same settings: ``python -m l2fast.sklearn.bench``.

Each case fits scikit-learn's class and l2fast's drop-in with the same arguments and random_state, so both
take the same steps (to rounding) and end at the same loss; the
table gives each one's seconds (median of ``--repeat`` fits, contenders alternating), the ratio and both
final losses, which show that the two did the same work. LogisticRegression: lbfgs to the same tol.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np


def _cases(quick):
    from sklearn.datasets import load_digits, make_classification
    from sklearn.preprocessing import StandardScaler

    X_digits, y_digits = load_digits(return_X_y=True)
    X_digits = StandardScaler().fit_transform(X_digits)
    rng = np.random.default_rng(0)
    m_syn = 5000 if quick else 20000
    X64 = rng.standard_normal((m_syn, 64))
    y64 = (X64[:, :10] @ rng.standard_normal((10, 10))).argmax(axis=1)
    X784 = rng.standard_normal((m_syn // 2, 784)).astype(np.float32)
    y784 = (X784[:, :20] @ rng.standard_normal((20, 10))).argmax(axis=1)
    X_lr, y_lr = make_classification(n_samples=10000 if quick else 50000, n_features=100, n_informative=30,
                                     random_state=0)
    epochs = 5 if quick else 20
    mlp = dict(max_iter=epochs, tol=0.0, n_iter_no_change=10**6, random_state=0)
    return [
        ("MLP adam, digits 64-64-10", "MLPClassifier", dict(hidden_layer_sizes=(64,), solver="adam", **mlp),
         X_digits, y_digits),
        ("MLP sgd, digits 64-64-10", "MLPClassifier", dict(hidden_layer_sizes=(64,), solver="sgd", **mlp),
         X_digits, y_digits),
        (f"MLP adam, synthetic {m_syn}x64, 64-64-10", "MLPClassifier",
         dict(hidden_layer_sizes=(64,), solver="adam", **mlp), X64, y64),
        (f"MLP sgd, synthetic {m_syn // 2}x784 float32, 784-256-10", "MLPClassifier",
         dict(hidden_layer_sizes=(256,), solver="sgd", **mlp), X784, y784),
        (f"LogisticRegression lbfgs, {len(X_lr)}x100", "LogisticRegression", dict(max_iter=1000), X_lr, y_lr),
    ]


def _final_loss(est, X, y):
    if hasattr(est, "loss_"):
        return float(est.loss_)
    from sklearn.metrics import log_loss

    return float(log_loss(y, est.predict_proba(X)) + 0.5 * np.sum(est.coef_.astype(np.float64) ** 2) / len(X))


def run(quick=False, repeat=3, backend="cpu"):
    import sklearn.linear_model
    import sklearn.neural_network

    from l2fast.sklearn import _dropin

    rows = []
    for name, cls, params, X, y in _cases(quick):
        theirs_cls = getattr(sklearn.neural_network if cls.startswith("MLP") else sklearn.linear_model, cls)
        ours_cls = getattr(_dropin, cls)
        times = {"scikit-learn": [], "l2fast": []}
        losses = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours_cls(**params, backend=backend).fit(X[:200], y[:200])  # warm-up: thread pools, first calls
            for _ in range(repeat):
                for who, make in (("scikit-learn", lambda: theirs_cls(**params)),
                                  ("l2fast", lambda: ours_cls(**params, backend=backend))):
                    est = make()
                    start = time.perf_counter()
                    est.fit(X, y)
                    times[who].append(time.perf_counter() - start)
                    losses[who] = _final_loss(est, X, y)
        sk, l2 = statistics.median(times["scikit-learn"]), statistics.median(times["l2fast"])
        rows.append((name, sk, l2, sk / l2, losses["scikit-learn"], losses["l2fast"]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets and fewer epochs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", default="cpu")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'case':58} {'sklearn s':>10} {'l2fast s':>9} {'speed-up':>9} {'sklearn loss':>13} {'l2fast loss':>12}")
    for name, sk, l2, ratio, loss_sk, loss_l2 in run(args.quick, args.repeat, args.backend):
        print(f"{name:58} {sk:10.3f} {l2:9.3f} {ratio:8.1f}x {loss_sk:13.6f} {loss_l2:12.6f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
