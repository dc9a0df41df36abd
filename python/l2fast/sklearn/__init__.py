"""l2fast for scikit-learn users.

- ``MLPClassifier``, ``MLPRegressor``, ``LogisticRegression``: drop-in replacements for scikit-learn's
  classes, with their exact parameters (``alpha``, ``C``, ``solver``, ...) plus ``backend=`` (``_dropin``).
- ``patch()`` / ``unpatch()``: unchanged scikit-learn code uses them (``_patch``; ``python -m l2fast.accel``).
- ``L2MLPClassifier``, ``L2MLPRegressor``, ``L2LogisticRegression``: estimators in l2fast's own terms
  (``lam``, ``epochs``, ``lr``, any l2fast optimizer) (``_estimators``).

``_penalty`` converts scikit-learn's ``alpha`` and ``C`` to l2fast's lambda. Needs scikit-learn
(``pip install "l2fast[sklearn]"``).
"""
# _estimators first: without scikit-learn its import error names the extra to install
from l2fast.sklearn._estimators import L2LogisticRegression, L2MLPClassifier, L2MLPRegressor  # noqa: I001
from l2fast.sklearn._dropin import LogisticRegression, MLPClassifier, MLPRegressor
from l2fast.sklearn._patch import patch, unpatch

__all__ = ["MLPClassifier", "MLPRegressor", "LogisticRegression", "patch", "unpatch", "L2MLPClassifier",
           "L2MLPRegressor", "L2LogisticRegression"]
