"""Choosing lambda on a development set: train one network per lambda, compare them on data they did
not see, keep the best.

    sweep = l2fast.select_lambda(X_train, y_train, X_dev, y_dev, lams=[0, 0.1, 1, 10],
                                 layer_sizes=[64, 128, 10], epochs=100, lr=0.1, batch_size=32)
    print(sweep.table())
    net = sweep.best_network

Every network of a sweep starts from the same weights (one seed) and sees the records in the same
order, so lambda is the only difference between them. The losses compared are data losses, without
the penalty: the penalty is part of training, not of how well a network generalises.

The penalty is (lambda / 2m) sum ||W||^2, so what a lambda does depends on lambda / m: the same grid
of lambdas means less and less as the training set grows. Without ``lams``, the grid is
``lambda_grid(m)``, 0 and m times 1e-4 .. 0.1. When the development losses of the whole grid lie
within their noise of the best one, ``select_lambda`` warns (``NoisyChoiceWarning``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from l2fast import _validate
from l2fast.network import History, Network, _best_so_far, _progress_bar, fit_together

CRITERIA = ("loss", "accuracy")
LAMBDA_OVER_M = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # the default grid, in units of m
NOISE_CHUNKS = 20  # the development set is scored in this many parts to measure its noise
NOISE_SE = 2.0  # a difference of dev losses within this many standard errors is noise


class NoisyChoiceWarning(UserWarning):
    """Every lambda of a sweep scored within the noise of the best one on the development data: the
    choice says little. Train longer, widen the grid, or use more development records."""


def lambda_grid(m: int) -> List[float]:
    """The default lambdas for m training records: 0 and m times 1e-4, 3e-4, ..., 0.1.

    The penalty (lambda / 2m) sum ||W||^2 acts through lambda / m (each step shrinks W by lr lambda / m),
    so a grid that means the same at every m scales with m."""
    m = _validate.integer(m, "m", 1)
    return [0.0] + [float(f"{m * ratio:.6g}") for ratio in LAMBDA_OVER_M]


@dataclass
class LambdaResult:
    """One lambda of a sweep: data losses (no penalty) and accuracies on training and development data."""

    lam: float
    train_loss: float
    dev_loss: float
    train_accuracy: Optional[float]
    dev_accuracy: Optional[float]
    history: History = field(repr=False)
    dev_loss_se: float = 0.0  # the standard error of dev_loss, a mean over the development records

    @property
    def gap(self) -> float:
        """Development loss minus training loss: how much the network overfits."""
        return self.dev_loss - self.train_loss


@dataclass
class Selection:
    """The outcome of ``select_lambda``: every lambda's figures, the chosen lambda and its network."""

    results: List[LambdaResult]
    best_lam: float
    best_network: Network
    criterion: str
    networks: List[Network] = field(repr=False, default_factory=list)  # one per lambda, in order
    meaningful: bool = True  # False when every lambda's dev loss lies within its noise of the best one

    def table(self) -> str:
        """The sweep as a text table, the chosen lambda marked with '*': per lambda the training and
        development data losses, the development loss's standard error, the gap between them and, for
        classification, the accuracies."""
        classify = self.results[0].dev_accuracy is not None
        head = f"{'lambda':>10} {'train loss':>11} {'dev loss':>9} {'(se)':>8} {'gap':>8}"
        head += f" {'train acc':>10} {'dev acc':>8}" if classify else ""
        lines = [head]
        for r in self.results:
            se = f"({r.dev_loss_se:.4f})"
            line = f"{r.lam:>10.4g} {r.train_loss:>11.4f} {r.dev_loss:>9.4f} {se:>8} {r.gap:>8.4f}"
            line += f" {r.train_accuracy:>10.3f} {r.dev_accuracy:>8.3f}" if classify else ""
            lines.append(line + (" *" if r.lam == self.best_lam else ""))
        return "\n".join(lines)


def _hold_out(X, y, fraction, seed):
    """A seeded split of (X, y) into training and development parts, fraction going to development."""
    m = X.shape[0]
    n_dev = int(round(fraction * m))
    if not 1 <= n_dev < m:
        raise ValueError(f"validation_fraction: {fraction} of {m} records leaves no training or no "
                         "development records")
    order = np.random.default_rng(seed).permutation(m)
    return X[order[n_dev:]], y[order[n_dev:]], X[order[:n_dev]], y[order[:n_dev]]


def select_lambda(X_train: ArrayLike, y_train: ArrayLike, X_dev: Optional[ArrayLike] = None,
                  y_dev: Optional[ArrayLike] = None, lams: Optional[Sequence[float]] = None, *,
                  layer_sizes: Sequence[int], activation: str = "relu", loss: str = "softmax",
                  backend: str = "cpu", dtype: str = "float32", seed: int = 0, epochs: int = 100,
                  lr: float = 0.1, batch_size: Optional[int] = None, shuffle: bool = True,
                  patience: Optional[int] = None, validation_fraction: float = 0.2, criterion: str = "loss",
                  stacked: bool = True, progress: bool = True, tol: Optional[float] = None,
                  n_iter_no_change: int = 10) -> Selection:
    """Trains one network per lambda in ``lams`` and picks the best on the development data.

    X_train (m, n_x) and y_train train every network; X_dev, y_dev judge them. Without a development
    set, a seeded ``validation_fraction`` of the training records is held out for it. ``lams=None`` is
    ``lambda_grid(m)`` for the m records trained on: 0 and m times 1e-4 .. 0.1. The network and
    training options are those of ``Network`` and ``Network.fit``; ``patience`` stops each run early on
    its development loss and keeps its best epoch; ``tol`` (with ``n_iter_no_change``) trains each run
    until its development loss has stopped improving by more than tol, within ``epochs`` (``fit``'s rule,
    which warns for a run that runs out of epochs first). ``criterion`` "loss" picks the lowest development
    data loss, "accuracy" the highest development accuracy (ties: the lower loss).

    ``stacked=True`` trains the networks together as one stacked model (``l2fast.fit_together``: one
    order, one gathered minibatch, each layer's products batched); ``False`` trains them one after the
    other. Both give the same networks up to rounding. ``progress`` shows a bar (over the epochs when
    stacked, over the lambdas otherwise) with the best development loss so far and its lambda.

    The development set is scored in parts to measure the noise of each development loss (its standard
    error, ``LambdaResult.dev_loss_se``); when every lambda's loss lies within two standard errors of
    the best one, a ``NoisyChoiceWarning`` says so and ``Selection.meaningful`` is False.
    """
    if lams is not None:
        lams = [_validate.real(lam, f"lams[{i}]", positive=False) for i, lam in enumerate(lams)]
        if not lams:
            raise ValueError("lams: need at least one value of lambda")
    criterion = _validate.choice(criterion, "criterion", CRITERIA)
    if criterion == "accuracy" and loss == "squared_error":
        raise ValueError("criterion: 'accuracy' needs a classification loss")
    if (X_dev is None) != (y_dev is None):
        raise ValueError("X_dev, y_dev: give both or neither")
    template = Network(layer_sizes, activation=activation, loss=loss, backend=backend, dtype=dtype, seed=seed)
    X_train, y_train = X_train if _validate.is_sparse(X_train) else np.asarray(X_train), np.asarray(y_train)
    if X_dev is None:
        _validate.real(validation_fraction, "validation_fraction", positive=True)
        X_train, y_train, X_dev, y_dev = _hold_out(X_train, y_train, validation_fraction, seed)
    if lams is None:
        lams = lambda_grid(len(X_train))
    # Checked once here, so that a bad array fails before any training.
    for names, (X, y) in (("X_train, y_train", (X_train, y_train)), ("X_dev, y_dev", (X_dev, y_dev))):
        try:
            template.cost(X, y)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{names}: {exc}") from exc

    def network(lam):
        return Network(layer_sizes, activation=activation, loss=loss, lam=lam, backend=backend, dtype=dtype,
                       seed=seed)

    # Every network trains with the same options.
    fit = dict(epochs=epochs, lr=lr, batch_size=batch_size, shuffle=shuffle, validation_data=(X_dev, y_dev),
               patience=patience, tol=tol, n_iter_no_change=n_iter_no_change)
    if not isinstance(stacked, bool):
        raise TypeError(f"stacked: expected True or False, got {stacked!r}")
    if stacked:
        networks = [network(lam) for lam in lams]
        histories = fit_together(networks, X_train, y_train, progress=progress, **fit)
    else:
        networks, histories = [], []
        bar = _progress_bar(len(lams), progress, unit="lambda")
        try:
            for lam in lams:
                networks.append(network(lam))
                histories.append(networks[-1].fit(X_train, y_train, **fit))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_best_so_far(networks, histories))
        finally:
            if bar is not None:
                bar.close()
    results = [_measure(net, lam, X_train, y_train, X_dev, y_dev, history)
               for net, lam, history in zip(networks, lams, histories)]
    if criterion == "loss":
        best = min(range(len(lams)), key=lambda k: results[k].dev_loss)
    else:
        best = min(range(len(lams)), key=lambda k: (-results[k].dev_accuracy, results[k].dev_loss))
    meaningful = _measure_noise(networks, results, best, X_dev, y_dev)
    if not meaningful and len(lams) > 1:
        warnings.warn(f"select_lambda: the development losses of every lambda ({min(lams):g} .. {max(lams):g}) lie "
                      f"within {NOISE_SE:g} standard errors of the best one, so the choice of lambda = "
                      f"{lams[best]:g} is not meaningful: train longer (more epochs or a larger lr), widen the "
                      "grid, or use more development records", NoisyChoiceWarning, stacklevel=2)
    return Selection(results, lams[best], networks[best], criterion, networks, meaningful)


def _measure_noise(networks, results, best, X_dev, y_dev):
    """Sets each result's dev_loss_se, the standard error of its development loss, from the spread of
    the loss over NOISE_CHUNKS parts of the development set; returns whether some lambda's loss is
    above the best one by more than NOISE_SE of its standard errors."""
    # Row slices of the arrays as given: NumPy, GPU arrays where they lie, scipy.sparse as CSR; pandas as NumPy.
    X_dev, y_dev = (a.tocsr() if _validate.is_sparse(a) else a if hasattr(a, "__cuda_array_interface__")
                    else np.asarray(a) for a in (X_dev, y_dev))
    rows = X_dev.shape[0]
    bounds = np.linspace(0, rows, min(NOISE_CHUNKS, rows) + 1).astype(int)
    parts = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
    if len(parts) < 2:
        return True  # one development record: no noise to measure
    meaningful = False
    for net, result in zip(networks, results):
        losses = np.array([net.cost_parts(X_dev[p], y_dev[p]).data_loss for p in parts])
        result.dev_loss_se = float(losses.std(ddof=1) / np.sqrt(len(parts)))
        if result.dev_loss - results[best].dev_loss > NOISE_SE * result.dev_loss_se:
            meaningful = True
    return meaningful


def _measure(net, lam, X_train, y_train, X_dev, y_dev, history):
    classify = net.loss != "squared_error"
    return LambdaResult(
        lam=lam,
        train_loss=net.cost_parts(X_train, y_train).data_loss,
        dev_loss=net.cost_parts(X_dev, y_dev).data_loss,
        train_accuracy=net.score(X_train, y_train) if classify else None,
        dev_accuracy=net.score(X_dev, y_dev) if classify else None,
        history=history,
    )
