"""scikit-learn's penalty strengths (``alpha``, ``C``) as l2fast's lambda: the one place they are converted.

l2fast's cost J = (1/m) sum_i w_i L_i + (lam / 2m) sum ||W||^2 gives every minibatch step the decay term
(lam/m) W. scikit-learn's MLP adds alpha/(2b) ||W||^2 to the mean loss of each batch of b records, a step
term (alpha/b) W; with sample weights it divides by the batch's weight sum instead of b. Its
``LogisticRegression`` minimises (1/s) sum_i w_i L_i + 1/(2 C s) ||W||^2 with s the weight sum (m
without weights).

The drop-ins hand l2fast the weights rescaled to mean 1, w'_i = w_i m / s (so that l2fast's (1/m) sum w'_i L_i
is scikit-learn's weighted mean), and then

    lam / m = alpha / b * (m / s)      (MLP, per batch of b records; L-BFGS: b = m)
    lam     = m / (C s)                (LogisticRegression; 0 for C = inf or no penalty)

Without weights (s = m) these are lam = alpha m / b and lam = 1 / C. With weights the MLP's per-batch
weight sums are replaced by b s / m, their expectation: exact for L-BFGS, close for minibatches.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def unit_mean_weights(sample_weight: Optional[np.ndarray]):
    """(weights rescaled to mean 1 or None, m / s): what l2fast is given for scikit-learn's weights."""
    if sample_weight is None:
        return None, 1.0
    total = float(np.sum(sample_weight, dtype=np.float64))
    if not total > 0:
        raise ValueError("sample_weight: the weights must have a positive sum")
    scale = len(sample_weight) / total
    return (sample_weight * scale).astype(sample_weight.dtype, copy=False), scale


def lam_over_m_from_alpha(alpha: float, batch: int, scale: float = 1.0) -> float:
    """l2fast's per-step decay lam/m for scikit-learn's MLP ``alpha`` on a batch of ``batch`` records
    (the whole training set for L-BFGS); ``scale`` = m / s from ``unit_mean_weights``."""
    return alpha * scale / batch


def lam_from_alpha(alpha: float, m: int, batch: int, scale: float = 1.0) -> float:
    """lam = alpha m / b (times m / s with sample weights): the lambda whose steps are those of ``alpha``."""
    return lam_over_m_from_alpha(alpha, batch, scale) * m


def lam_from_C(C: float, scale: float = 1.0) -> float:
    """lam for ``LogisticRegression(C=...)``: 1/C times m / s; C = inf (no penalty) is lam = 0."""
    return 0.0 if math.isinf(C) else scale / C
