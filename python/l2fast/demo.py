"""``l2fast demo``: L2 regularisation at work on scikit-learn's bundled handwritten digits.

A network with two wide hidden layers is trained on only 100 digits, enough to learn them by heart.
A sweep over lambda on a development set tells the story of L2: at lambda = 0 the network learns the
training digits by heart (training loss near 0) while its development loss rises; a moderate lambda
has the lowest development loss; too large a lambda underfits (both losses high). The chosen lambda
is scored on a test set it never saw. Plots: the validation curve (training and development loss
against lambda) and the learning curves of lambda = 0 beside the chosen lambda. Needs scikit-learn
and matplotlib (``pip install "l2fast[demo]"``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

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


class DemoResult(NamedTuple):
    """What ``run`` returns: the sweep, the test accuracies, the plots and the data drawn in them."""

    sweep: "l2fast.Selection"
    test_best: float  # test accuracy of the chosen lambda
    test_zero: float  # test accuracy of lambda = 0
    paths: List[Path]  # the PNG files
    plotted: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]]  # per file name: each labelled line's x, y


def run(backend="cpu", quick=False, out_dir=".", progress=True, out=None):
    """Runs the demo; returns a DemoResult (the sweep, test accuracies, plot paths and plotted data)."""
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
    largest = sweep.results[int(np.argmax([r.lam for r in sweep.results]))]
    zero_net = sweep.networks[sweep.results.index(unregularised)]
    test_best, test_zero = sweep.best_network.score(X_test, y_test), zero_net.score(X_test, y_test)
    for line in _story(unregularised, best, largest):
        print(line, file=out)
    print(f"chosen lambda = {sweep.best_lam:g}: development loss {best.dev_loss:.4f} against "
          f"{unregularised.dev_loss:.4f} at lambda = 0; test accuracy {test_best:.3f} against {test_zero:.3f}",
          file=out)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotted = {}
    paths = [_validation_curve(pyplot, sweep, out_dir / "validation_curve.png", plotted),
             _learning_curves(pyplot, unregularised, best, out_dir / "learning_curves.png", plotted)]
    print("plots: " + ", ".join(str(p) for p in paths), file=out)
    return DemoResult(sweep, test_best, test_zero, paths, plotted)


def _story(zero, best, largest):
    """The table's message in three lines: memorising, the best lambda, underfitting."""
    rise = zero.history.val_loss
    low = int(np.argmin(rise))
    after = "was still falling" if low == len(rise) - 1 else f"rose by {rise[-1] - rise[low]:.3f} after it"
    yield (f"lambda = 0 learns the training set by heart: training loss {zero.train_loss:.4f}, development loss "
           f"{zero.dev_loss:.4f} (gap {zero.gap:.3f}); its development loss was lowest, {rise[low]:.4f}, "
           f"at epoch {low + 1}, and {after}")
    yield (f"lambda = {best.lam:g} has the lowest development loss, {best.dev_loss:.4f} "
           f"(standard error {best.dev_loss_se:.4f}; gap {best.gap:.3f})")
    if largest is not best:
        yield (f"lambda = {largest.lam:g} underfits: training loss {largest.train_loss:.4f}, development loss "
               f"{largest.dev_loss:.4f} (gap {largest.gap:.3f})")


def _record(fig, path, plotted):
    """Keeps the x, y of every labelled line of fig under path's name (for checking what was drawn)."""
    plotted[path.name] = {line.get_label(): (np.asarray(line.get_xdata(), dtype=float),
                                             np.asarray(line.get_ydata(), dtype=float))
                          for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")}


def _validation_curve(plt, sweep, path, plotted):
    results = sweep.results
    lams = np.array([r.lam for r in results])
    train = np.array([r.train_loss for r in results])
    dev = np.array([r.dev_loss for r in results])
    se = np.array([r.dev_loss_se for r in results])
    # lambda = 0 gets its own place at the left of a log axis: the positions are the grid's indices,
    # labelled with the lambdas, so every point has its tick.
    x = np.arange(len(lams))
    fig, ax = plt.subplots(figsize=(7, 5))
    # The y range is that of the lambdas that learn something; the underfitting ones are marked at the top.
    fits = dev <= 2 * dev.min()
    top = 1.25 * max(dev[fits].max(), train[fits].max())
    ax.fill_between(x, train, dev, where=dev >= train, color="tab:orange", alpha=0.15, label="gap: overfitting")
    ax.plot(x, train, "o-", color="tab:blue", label="training loss")
    ax.plot(x, dev, "s-", color="tab:orange", label="development loss (\u00b1 2 standard errors)")
    ax.errorbar(x, dev, yerr=2 * se, fmt="none", ecolor="tab:orange", capsize=3)
    k = int(np.flatnonzero(lams == sweep.best_lam)[0])
    ax.plot([x[k]], [dev[k]], "*", color="black", markersize=16, label=f"chosen lambda = {sweep.best_lam:g}")
    above = [f"lambda = {lams[i]:g}: train {train[i]:.2f}, dev {dev[i]:.2f}" for i in np.flatnonzero(~fits)]
    if above:
        ax.text(0.99, 0.98, "\n".join(["above the axis \u2191"] + above), transform=ax.transAxes, ha="right",
                va="top", fontsize=8, bbox=dict(facecolor="white", alpha=0.9, edgecolor="none"))
    ax.annotate("learns the training\nset by heart", (x[0], train[0]), xytext=(8, 14), textcoords="offset points",
                fontsize=8)
    ax.set_ylim(0, top)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{lam:g}" for lam in lams])
    ax.set_xlabel("lambda")
    ax.set_ylabel("data loss (cross-entropy, no penalty)")
    ax.set_title(f"lambda = 0 overfits, lambda = {sweep.best_lam:g} generalises best, too large a lambda underfits",
                 fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8)  # below: no point hidden
    _record(fig, path, plotted)
    return _plotting.save(plt, fig, path)


def _learning_curves(plt, zero, best, path, plotted):
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    runs = ((zero, "lambda = 0: learns the training set by heart"),
            (best, f"lambda = {best.lam:g} (chosen): the lowest development loss"))
    # Linear losses from 0: the development losses are in view after the first few epochs.
    settled = [v for r, _ in runs for v in r.history.val_loss[len(r.history.val_loss) // 20:]]
    for panel, (ax, (result, title)) in enumerate(zip(axes, runs)):
        epochs = np.arange(1, len(result.history.loss) + 1)
        ax.plot(epochs, result.history.loss, color="tab:blue", label=f"training, lambda = {result.lam:g}")
        ax.plot(epochs, result.history.val_loss, color="tab:orange", label=f"development, lambda = {result.lam:g}")
        low = int(np.argmin(result.history.val_loss))
        ax.plot([epochs[low]], [result.history.val_loss[low]], "v", color="black",
                label=f"lowest development loss, lambda = {result.lam:g}")
        ax.axhline(best.dev_loss, color="gray", linestyle=":", linewidth=1,  # in the first legend only
                   label=f"{'' if panel == 0 else '_'}final development loss, lambda = {best.lam:g}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("data loss (cross-entropy, no penalty)")
    axes[0].set_ylim(0, 1.4 * max(settled))
    _record(fig, path, plotted)
    return _plotting.save(plt, fig, path)
