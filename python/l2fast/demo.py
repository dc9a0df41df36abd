"""``l2fast demo``: L2 regularisation at work.

It trains the same network at several values of lambda on a small, noisy training set, shows
the gap between training and development loss closing as lambda grows, and times one training
epoch on each available backend side by side.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import l2fast


def make_classification(m, n_features, n_classes, rng, label_noise=0.15):
    """Records around random class centres in a few informative directions, plus noise features and
    a share of flipped labels, so that a small training set is easy to overfit."""
    n_informative = min(8, n_features)
    centres = rng.normal(scale=1.2, size=(n_classes, n_informative))
    y = rng.integers(0, n_classes, size=m)
    X = rng.normal(size=(m, n_features))
    X[:, :n_informative] += centres[y]
    flip = rng.random(m) < label_noise
    y[flip] = rng.integers(0, n_classes, size=int(flip.sum()))
    return X, y


def lambda_sweep(backend, quick, out=None):
    out = out or sys.stdout
    rng = np.random.default_rng(0)
    n_features, n_classes = 40, 4
    X, y = make_classification(200 + 2000, n_features, n_classes, rng)
    X_train, y_train, X_dev, y_dev = X[:200], y[:200], X[200:], y[200:]
    lams = [0.0, 1.0, 3.0, 10.0, 30.0] if quick else [0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    epochs = 150 if quick else 400
    print(f"lambda sweep: {n_features}-128-{n_classes} relu softmax, {len(X_train)} training and "
          f"{len(X_dev)} development records, {epochs} epochs, backend={backend!r}", file=out)
    print(f"{'lambda':>8} {'train loss':>11} {'dev loss':>9} {'gap':>7} {'train acc':>10} {'dev acc':>8}", file=out)
    results = []
    for lam in lams:
        net = l2fast.Network([n_features, 128, n_classes], lam=lam, backend=backend, seed=0)
        net.fit(X_train, y_train, epochs=epochs, lr=0.05, batch_size=32)
        train_loss = net.cost_parts(X_train, y_train).data_loss
        dev_loss = net.cost_parts(X_dev, y_dev).data_loss
        results.append((lam, dev_loss))
        print(f"{lam:>8g} {train_loss:>11.4f} {dev_loss:>9.4f} {dev_loss - train_loss:>7.3f} "
              f"{net.score(X_train, y_train):>10.3f} {net.score(X_dev, y_dev):>8.3f}", file=out)
    best_lam, best_dev = min(results, key=lambda r: r[1])
    print(f"best lambda on the development set: {best_lam:g} (dev loss {best_dev:.4f}, "
          f"lambda=0 gives {results[0][1]:.4f})", file=out)
    return results


def epoch_timing(quick, out=None):
    out = out or sys.stdout
    sizes, m, batch = ([64, 64, 10], 20000, 32) if quick else ([784, 256, 10], 20000, 128)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(m, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=m)
    print(f"\none epoch of {'-'.join(map(str, sizes))}, {m} records, batch {batch}, float32:", file=out)
    times = {}
    for backend in l2fast.available_backends():
        net = l2fast.Network(sizes, lam=1.0, backend=backend, seed=0)
        net.fit(X[: 4 * batch], y[: 4 * batch], epochs=1, lr=0.01, batch_size=batch)  # warm-up
        start = time.perf_counter()
        net.fit(X, y, epochs=1, lr=0.01, batch_size=batch)
        times[backend] = time.perf_counter() - start
    for backend, seconds in times.items():
        print(f"  {backend:>6}: {seconds:.3f} s  ({times['numpy'] / seconds:.1f}x the NumPy reference)", file=out)
    return times
