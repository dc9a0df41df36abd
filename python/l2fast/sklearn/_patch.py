"""``patch()``: unchanged scikit-learn code gets l2fast's drop-ins from ``sklearn.neural_network`` and
``sklearn.linear_model``; ``unpatch()`` puts scikit-learn's classes back.

The patched classes take their ``backend`` from the environment variable ``L2FAST_BACKEND`` (default
"cpu") unless given one. What l2fast does not fit (L1 or elastic-net penalties, liblinear, multilabel
targets, the Poisson loss) runs scikit-learn's own code instead, and one line on stderr
says so: a script written for scikit-learn keeps working, and never runs elsewhere than asked unannounced.
"""
from __future__ import annotations

import importlib

from l2fast.sklearn import _dropin

_TARGETS = {"sklearn.neural_network": ("MLPClassifier", "MLPRegressor"), "sklearn.linear_model": ("LogisticRegression",)}
_originals: dict = {}


class LogisticRegression(_dropin.LogisticRegression):
    """The drop-in ``LogisticRegression``, handing the penalties and solvers it refuses to scikit-learn."""

    _refuse = False


_PATCHED = {"MLPClassifier": _dropin.MLPClassifier, "MLPRegressor": _dropin.MLPRegressor,
            "LogisticRegression": LogisticRegression}


def patch() -> None:
    """Replaces scikit-learn's MLPClassifier, MLPRegressor and LogisticRegression in ``sklearn.neural_network``
    and ``sklearn.linear_model`` by l2fast's; code importing them afterwards gets l2fast's. Idempotent."""
    for module_name, names in _TARGETS.items():
        module = importlib.import_module(module_name)
        for name in names:
            _originals.setdefault((module_name, name), getattr(module, name))
            setattr(module, name, _PATCHED[name])


def unpatch() -> None:
    """Puts scikit-learn's own classes back."""
    for (module_name, name), original in list(_originals.items()):
        setattr(importlib.import_module(module_name), name, original)
        del _originals[(module_name, name)]


def is_patched() -> bool:
    return bool(_originals)
