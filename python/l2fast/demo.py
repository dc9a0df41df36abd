"""``l2fast demo``: L2 regularisation at work on scikit-learn's bundled handwritten digits.

A network with two wide hidden layers is trained on only 100 digits, enough to learn them by heart.
A sweep over lambda on a development set shows the training/development gap closing as lambda
grows; the lambda with the lowest development loss is kept and scored on a test set it never saw.
Plots: the validation curve (training and development loss against lambda) and the learning curves
of lambda = 0 and of the chosen lambda. Needs scikit-learn and matplotlib
(``pip install "l2fast[demo]"``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import l2fast
from l2fast import _plotting

FULL = dict(hidden=[256, 256], epochs=800, lams=[0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
QUICK = dict(hidden=[128, 128], epochs=300, lams=[0.0, 0.3, 3.0, 30.0])
N_TRAIN, N_DEV = 100, 700


def digits_splits(seed=0):
    """Digits (1797 x 64) split into 100 training, 700 development and 997 test records,
    standardised with the training records' statistics."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit(f"l2fast demo needs scikit-learn: pip install \"l2fast[demo]\" ({exc})")
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    train, dev, test = np.split(order, [N_TRAIN, N_TRAIN + N_DEV])
    mean, spread = X[train].mean(axis=0), X[train].std(axis=0) + 1.0
    X = (X - mean) / spread
    return (X[train], y[train]), (X[dev], y[dev]), (X[test], y[test])


def run(backend="cpu", quick=False, out_dir=".", progress=True, out=None):
    """Runs the demo; returns (selection, test accuracy of the chosen lambda, of lambda = 0, plot paths)."""
    out = out or sys.stdout
    plan = QUICK if quick else FULL
    pyplot = _plotting.pyplot("l2fast demo", "demo")
    (X_train, y_train), (X_dev, y_dev), (X_test, y_test) = digits_splits()
    sizes = [X_train.shape[1], *plan["hidden"], 10]
    print(f"digits: {len(X_train)} training, {len(X_dev)} development, {len(X_test)} test records; network "
          f"{'-'.join(map(str, sizes))} relu softmax, {plan['epochs']} epochs, backend={backend!r}", file=out)
    sweep = l2fast.select_lambda(X_train, y_train, X_dev, y_dev, plan["lams"], layer_sizes=sizes, backend=backend,
                                 dtype="float32", seed=0, epochs=plan["epochs"], lr=0.05, batch_size=20,
                                 progress=progress)
    print(sweep.table(), file=out)
    unregularised = next(r for r in sweep.results if r.lam == 0.0)
    best = next(r for r in sweep.results if r.lam == sweep.best_lam)
    zero_net = sweep.networks[sweep.results.index(unregularised)]
    test_best, test_zero = sweep.best_network.score(X_test, y_test), zero_net.score(X_test, y_test)
    print(f"chosen lambda = {sweep.best_lam:g}: development loss {best.dev_loss:.4f} against "
          f"{unregularised.dev_loss:.4f} at lambda = 0; test accuracy {test_best:.3f} against {test_zero:.3f}",
          file=out)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_validation_curve(pyplot, sweep, out_dir / "validation_curve.png"),
             _learning_curves(pyplot, unregularised, best, out_dir / "learning_curves.png")]
    print("plots: " + ", ".join(str(p) for p in paths), file=out)
    return sweep, test_best, test_zero, paths


def _validation_curve(plt, sweep, path):
    lams = np.array([r.lam for r in sweep.results])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lams, [r.train_loss for r in sweep.results], "o-", label="training loss")
    ax.plot(lams, [r.dev_loss for r in sweep.results], "s-", label="development loss")
    ax.axvline(sweep.best_lam, color="gray", linestyle=":", label=f"chosen lambda = {sweep.best_lam:g}")
    # symlog: lambda = 0 has its own place at the left, the positive values are on a log scale.
    linthresh = min(l for l in lams if l > 0)
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlim(-0.1 * linthresh, 1.5 * lams.max())
    ax.set_xlabel("lambda")
    ax.set_ylabel("data loss (cross-entropy, no penalty)")
    ax.set_title("Validation curve: the gap closes as lambda grows")
    ax.legend()
    return _plotting.save(plt, fig, path)


def _learning_curves(plt, zero, best, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for result, colour in ((zero, "tab:red"), (best, "tab:blue")):
        epochs = np.arange(1, len(result.history.loss) + 1)
        ax.plot(epochs, result.history.loss, "--", color=colour, label=f"training, lambda = {result.lam:g}")
        ax.plot(epochs, result.history.val_loss, "-", color=colour, label=f"development, lambda = {result.lam:g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("data loss")
    ax.set_title("Learning curves with and without the chosen lambda")
    ax.legend()
    return _plotting.save(plt, fig, path)
