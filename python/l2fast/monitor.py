"""What fit watches while it trains: when to stop (tolerance, patience) and when to warn that a fit failed.

The stopping rule is scikit-learn's: a figure to minimise (the training cost J, or with validation data
the validation loss) has "improved" in an epoch when it fell below the best so far by more than ``tol``;
after ``n_iter_no_change`` epochs in a row without improvement, training has converged and stops.
``patience`` (early stopping on validation data) is the same rule with ``tol=0``.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np


class ConvergenceWarning(UserWarning):
    """A fit ended on its epoch or iteration budget before its stopping rule was met, or a solver gave
    up; the model is usable but not converged. (The scikit-learn estimators emit scikit-learn's own
    ``sklearn.exceptions.ConvergenceWarning`` instead.)"""


class DivergenceWarning(ConvergenceWarning):
    """The cost rose during a fit: it ended above where it started or grew tenfold over its best. The
    message gives the learning rate and what to try (a smaller lr, standardised features)."""


class NoImprovement:
    """Counts epochs without an improvement by more than tol of a figure to minimise.

    ``update(value)`` returns True when the value is a new best (the caller may keep those parameters)
    and sets ``done`` once n epochs in a row have not improved.
    """

    def __init__(self, tol: float, n: int) -> None:
        self.tol, self.n = tol, n
        self.best = math.inf
        self.bad_epochs = 0
        self.done = False

    def update(self, value: float) -> bool:
        improved = value < self.best - self.tol
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.done = self.bad_epochs >= self.n
        new_best = value < self.best
        if new_best:
            self.best = value
        return new_best


def extreme_features(X, xp=np, limit: float = 10.0, most: int = 5):
    """Indices (at most ``most``, largest first) of the columns of X (m, n) whose mean or spread exceeds
    ``limit`` in absolute value: features that make gradient steps of one lr too large for them."""
    from l2fast import _validate

    X = X[: min(X.shape[0], 100_000)]  # a sample is enough to see the scale
    if not _validate.is_sparse(X) and hasattr(X, "tocsr"):  # cupyx.scipy.sparse (no std): the sample read on the host
        X = X.get()
    if _validate.is_sparse(X):  # the spread from E[x^2] - E[x]^2, zeros included, without densifying
        X = X.astype(np.float64)
        mean = np.asarray(X.mean(axis=0)).ravel()
        spread = np.sqrt(np.maximum(np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean * mean, 0))
        scale = np.maximum(np.abs(mean), spread)
    else:
        scale = xp.maximum(xp.abs(X.mean(axis=0, dtype=np.float64)), X.std(axis=0, dtype=np.float64))
    scale = np.asarray(scale.get() if hasattr(scale, "get") else scale)
    order = np.argsort(-scale)
    return [int(j) for j in order[:most] if scale[j] > limit]


def warn_if_rising(history, start_cost: float, exact_start: bool, X, xp=np, who: str = "fit") -> None:
    """DivergenceWarning when a fit's cost ended above where it started or grew tenfold over its best.

    ``start_cost`` is J when the fit began: exact for full-batch epochs (``exact_start``), else the first
    epoch's running loss (each minibatch scored before its step) plus the starting penalty, an estimate
    that minibatch noise moves by a few percent. So a rise counts above 0.1% for the exact start and
    above 10% for the estimate.
    """
    costs = history.cost
    if not costs or not all(math.isfinite(c) for c in costs) or not math.isfinite(start_cost):
        return
    best, peak_ratio = start_cost, 0.0
    for c in costs:
        if best > 0:
            peak_ratio = max(peak_ratio, c / best)
        best = min(best, c)
    ended_above = costs[-1] > start_cost * (1 + (1e-3 if exact_start else 0.1)) + 1e-12
    if not (ended_above or peak_ratio >= 10):
        return
    rates = sorted(set(history.lr))
    lr_text = f"lr={rates[0]:g}" if len(rates) == 1 else f"lr from {rates[0]:g} to {rates[-1]:g}"
    what = (f"ended above where it started ({start_cost:.4g} -> {costs[-1]:.4g})" if ended_above
            else f"grew {peak_ratio:.0f}-fold over its best ({max(costs):.4g} after {best:.4g})")
    advice = "try a smaller learning rate"
    wide = extreme_features(X, xp)
    if wide:
        advice += (f", and standardise X (e.g. sklearn.preprocessing.StandardScaler): features "
                   f"{', '.join(map(str, wide))} have a mean or spread above 10")
    warnings.warn(f"{who}: the training cost {what} with {lr_text}; {advice}.", DivergenceWarning, stacklevel=4)


def warn_not_converged(who: str, budget: str, rule: str, hint: str) -> None:
    warnings.warn(f"{who}: stopped at {budget} without converging ({rule}); {hint}.", ConvergenceWarning,
                  stacklevel=4)


def checked_tol(tol: Optional[float], n_iter_no_change: int):
    from l2fast import _validate

    if tol is not None:
        tol = _validate.real(tol, "tol", positive=False)
    return tol, _validate.integer(n_iter_no_change, "n_iter_no_change", 1)
