"""scikit-learn estimators over ``l2fast.Network``: drop-in classifiers and regressors for pipelines,
grid searches and validation curves over ``lam``.

    from l2fast.sklearn import L2MLPClassifier
    clf = L2MLPClassifier(hidden_layer_sizes=(64,), lam=1.0).fit(X, y)

``lam`` is the lambda of J = mean loss + (lam / 2m) sum ||W||_F^2 with m the training-set size, for
every minibatch too. scikit-learn's ``MLPClassifier(alpha=...)`` divides its penalty by the batch
size b instead, so the same steps need ``alpha = lam * b / m`` (on a short last batch of b' records
scikit-learn uses alpha / b', l2fast still lam / m). For ``L2LogisticRegression``,
``lam = 1 / C`` matches scikit-learn's ``LogisticRegression(C=...)`` (whose default C=1 is lam=1).

Defaults follow scikit-learn's: ``L2LogisticRegression`` minimises J with L-BFGS to ``tol`` (at most
``epochs`` = 100 iterations), the MLPs train with Adam (batches of 200) until the training cost has not
improved by ``tol`` = 1e-4 for ``n_iter_no_change`` = 10 epochs, at most ``epochs`` = 200. The classifier's
lr is 0.01, not scikit-learn's 0.001: with l2fast's lam = 1 (scikit-learn's alpha is 1e-4) the penalty's
slow directions need it to converge within 200 epochs on standardised data (digits: 67 epochs; at 0.001
it ran out of epochs); the regressor keeps 0.001, its targets' scale being unknown.
A fit that ends on its budget first, or whose cost rises, emits scikit-learn's ``ConvergenceWarning``.
``fit`` takes ``sample_weight`` and the classifiers ``class_weight`` ("balanced" or {label: weight}),
as scikit-learn's do.

Needs scikit-learn (``pip install "l2fast[sklearn]"``).
"""
from __future__ import annotations

import numbers
import warnings
from typing import Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.class_weight import compute_sample_weight
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:
    raise ModuleNotFoundError(f"l2fast.sklearn needs scikit-learn >= 1.6: pip install \"l2fast[sklearn]\" ({exc})",
                              name=exc.name) from exc

from l2fast import monitor, solvers
from l2fast.dataset import Dataset
from l2fast.network import History, Network

__all__ = ["L2MLPClassifier", "L2MLPRegressor", "L2LogisticRegression"]

_SPARSE = ("csr", "csc", "coo")  # scipy.sparse X: the network converts it to CSR once (see Network)


class _L2Estimator(BaseEstimator):
    """What the three estimators share: data checks, the network's life cycle, one epoch per partial_fit."""

    _loss_for_outputs = None  # set by the subclasses

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _hidden(self):
        return tuple(self.hidden_layer_sizes)

    def _seed(self):
        if self.random_state is None or isinstance(self.random_state, numbers.Integral):
            return None if self.random_state is None else int(self.random_state) % 2**32
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _dtype(self, X):
        if self.dtype is not None:
            return self.dtype
        return "float32" if X.dtype == np.float32 else "float64"

    def _new_network(self, n_features, n_outputs, loss, X):
        sizes = [n_features, *self._hidden(), n_outputs]
        return Network(sizes, activation=self._activation(), loss=loss, lam=self.lam, backend=self.backend,
                       dtype=self._dtype(X), seed=self._seed())

    def _activation(self):
        return self.activation

    def _lbfgs(self):
        return solvers.requested(self.optimizer)

    def _inputs(self, X, y, sample_weight, reset, **checks):
        """(X, y, sample_weight, dataset) of one fit or partial_fit call. X and y pass scikit-learn's checks of
        shape, dtype and feature names but not its pass over every value of X: the network's conversion of X
        makes that one (``Network.fit``), so that a call reads X once. An ``l2fast.Dataset`` in X brings y and
        sample_weight and comes back as ``dataset``: its X is checked and converted once, for all the calls
        that pass it (a snapshot: changes to the arrays it was made from do not reach it)."""
        dataset = None
        if isinstance(X, Dataset):
            if y is not None or sample_weight is not None:
                raise ValueError("y: an l2fast.Dataset brings its own y and sample_weight; pass neither beside it")
            if X.y is None:
                raise ValueError("X: this Dataset has no y; build it as l2fast.Dataset(X, y)")
            dataset, X, y, sample_weight = X, X.X, X.y, X.sample_weight
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], accept_sparse=_SPARSE, reset=reset,
                             ensure_all_finite=False, **checks)
        return X, y, sample_weight, dataset

    def _train(self, X, y_kernel, n_outputs, loss, epochs, reuse, sample_weight=None, stop=True, dataset=None):
        """Trains self.network_ (made anew unless reuse allows and it fits the data) for at most epochs, with
        the tolerance rule when ``stop``; l2fast's convergence warnings become scikit-learn's. ``dataset``: the
        ``l2fast.Dataset`` X came in, whose conversion of X is used (and kept) instead of converting X."""
        net = getattr(self, "network_", None)
        lbfgs = self._lbfgs()
        if not (reuse and net is not None and net.layer_sizes[0] == X.shape[1] and net.layer_sizes[-1] == n_outputs
                and net.loss == loss):
            net = self._new_network(X.shape[1], n_outputs, loss, X)
            if lbfgs and not self._hidden():
                # J is convex without a hidden layer: the solver starts where scikit-learn's does, at zero
                # (random weights only cost it iterations), so a fit does not depend on random_state
                net.set_parameters([np.zeros(net.layer_sizes[::-1])], [np.zeros(n_outputs)])
        net.lam = self.lam
        batch = None if self.batch_size is None or lbfgs else min(self.batch_size, X.shape[0])
        tol = self.tol if stop or lbfgs else None
        if lbfgs and sample_weight is not None:
            # scikit-learn's J divides the weighted loss sum and the penalty by the weights' sum, l2fast's by the
            # record count: the same minimiser, and with tol scaled as J the same stopping test on the gradient, so
            # that weights of 2 stop where repeating each record twice does (and where scikit-learn stops)
            tol = (solvers.resolve(self.optimizer, net).tol if tol is None else tol) \
                * float(np.sum(sample_weight)) / X.shape[0]
        if dataset is not None:  # X converted in the Dataset (once), handed on with the encoded targets
            dataset.features_for(net._backend, X.shape[1], net.dtype)
            X, y_kernel, sample_weight = dataset.with_targets(y_kernel, sample_weight), None, None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", monitor.ConvergenceWarning)
            history = net.fit(X, y_kernel, epochs=epochs, lr=self.lr, batch_size=batch, shuffle=self.shuffle,
                              optimizer=self.optimizer, tol=tol,
                              n_iter_no_change=self.n_iter_no_change, sample_weight=sample_weight)
        for w in caught:
            if issubclass(w.category, monitor.ConvergenceWarning):
                warnings.warn(f"{type(self).__name__}: {w.message}", ConvergenceWarning, stacklevel=3)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.network_ = net
        if not reuse or not hasattr(self, "loss_curve_"):
            self.loss_curve_ = []
            self.n_iter_ = 0
        self.loss_curve_ += history.cost
        self.n_iter_ += history.n_iter
        self.history_: History = history
        return self

    def _stochastic(self):
        if self._lbfgs():
            raise AttributeError("partial_fit is only available for stochastic optimizers; "
                                 f"optimizer={self.optimizer!r} is not one")
        return True

    def _sample_weight(self, X, sample_weight):
        return None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=X.dtype)

    def _check_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32], accept_sparse=_SPARSE)


class _Classifier(ClassifierMixin, _L2Estimator):
    def _encode(self, y, classes=None, first=True):
        check_classification_targets(y)
        if not first and classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={list(np.unique(np.asarray(classes)))!r} is not the same as on the first "
                             f"call to partial_fit, {list(self.classes_)!r}")
        codes = None
        if first:
            if classes is None:  # the labels' codes come with their classes: all of y is in them
                classes, codes = np.unique(y, return_inverse=True)
            else:
                classes = np.unique(np.asarray(classes))
            if len(classes) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, but "
                                 f"the data contains only one class: {classes[0]!r}")
            old = getattr(self, "classes_", None)
            if self.warm_start and hasattr(self, "network_") and old is not None and not np.array_equal(old, classes):
                raise ValueError(f"warm_start can only be used where y has the same classes as in the previous "
                                 f"call to fit. Previously got {list(old)!r}, y has {list(classes)!r}")
            self.classes_ = classes
        if codes is not None:
            return codes.reshape(len(y))
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(f"y contains labels not in classes_: {np.unique(np.asarray(y)[unknown])[:5]!r}")
        return np.searchsorted(self.classes_, y)

    def _layout(self):
        two = len(self.classes_) == 2
        return (1, "logistic") if two else (len(self.classes_), "softmax")

    def _weights(self, X, y, sample_weight):
        """sample_weight times the class_weight of each record's label, or None when both are absent."""
        weights = self._sample_weight(X, sample_weight)
        if self.class_weight is not None:
            per_class = compute_sample_weight(self.class_weight, y)
            weights = per_class.astype(X.dtype) if weights is None else weights * per_class
        return weights

    def fit(self, X: ArrayLike, y: Optional[ArrayLike] = None,
            sample_weight: Optional[ArrayLike] = None) -> "_Classifier":
        """Trains on X (n_samples, n_features) and labels y (n_samples,) of any type, weighted by
        ``sample_weight`` (n_samples,) and ``class_weight``; at most ``epochs`` epochs (L-BFGS: iterations)
        until converged, from fresh weights unless ``warm_start`` and a fitted network of the same shape.
        X may be an ``l2fast.Dataset`` bringing y and sample_weight."""
        X, y, sample_weight, dataset = self._inputs(X, y, sample_weight, reset=True)
        codes = self._encode(y)
        n_outputs, loss = self._layout()
        return self._train(X, codes, n_outputs, loss, self.epochs, reuse=self.warm_start,
                           sample_weight=self._weights(X, y, sample_weight), dataset=dataset)

    @available_if(_L2Estimator._stochastic)
    def partial_fit(self, X: ArrayLike, y: Optional[ArrayLike] = None, classes: Optional[ArrayLike] = None,
                    sample_weight: Optional[ArrayLike] = None) -> "_Classifier":
        """One epoch over X, y; the first call needs ``classes``, every label there will ever be (a later
        call may repeat them, not change them). X may be an ``l2fast.Dataset`` bringing y and sample_weight:
        its X is then checked and converted on the first call only."""
        first = not hasattr(self, "network_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        X, y, sample_weight, dataset = self._inputs(X, y, sample_weight, reset=first)
        codes = self._encode(y, classes, first)
        n_outputs, loss = self._layout()
        return self._train(X, codes, n_outputs, loss, 1, reuse=not first,
                           sample_weight=self._weights(X, y, sample_weight), stop=False, dataset=dataset)

    def predict_proba(self, X: ArrayLike) -> NDArray[np.floating]:
        """Probabilities (n_samples, n_classes), columns in the order of ``classes_``."""
        X = self._check_X(X)
        return self.network_.predict_proba(X)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable label of ``classes_`` for each row of X (n_samples, n_features)."""
        X = self._check_X(X)
        return self.classes_[self.network_.predict(X)]


class L2MLPClassifier(_Classifier):
    """A dense classifier trained on the L2-regularised cross-entropy.

    Two classes get one logistic output unit, more get a softmax layer. Parameters: ``hidden_layer_sizes``
    (units per hidden layer), ``activation`` (relu, tanh, sigmoid, identity), ``lam`` (lambda of
    (lam / 2m) sum ||W||^2), ``optimizer`` ("adam", "sgd", "momentum", "nesterov", "adamw", "lbfgs" or an
    ``l2fast.optim`` / ``l2fast.LBFGS`` instance; its state carries over ``partial_fit`` and ``warm_start``),
    ``lr``, ``batch_size`` (None: full batch), ``epochs`` (the budget; L-BFGS: iterations), ``tol`` and
    ``n_iter_no_change`` (stop once the training cost has not improved by tol for that many epochs; None:
    run every epoch), ``shuffle``, ``class_weight``, ``backend`` ("cpu", "numpy" or "cuda"), ``dtype``
    (None: float32 for float32 input, else float64), ``random_state``, ``warm_start``. Fitted:
    ``classes_``, ``network_`` (the ``l2fast.Network``), ``loss_curve_`` (J per epoch), ``n_iter_``,
    ``history_``, ``n_features_in_``.
    """

    def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), activation: str = "relu", lam: float = 1.0,
                 lr: float = 0.01, batch_size: Optional[int] = 200, epochs: int = 200, shuffle: bool = True,
                 backend: str = "cpu", dtype: Optional[str] = None, random_state=None, warm_start: bool = False,
                 optimizer="adam", tol: Optional[float] = 1e-4, n_iter_no_change: int = 10, class_weight=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.lam = lam
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.warm_start = warm_start
        self.optimizer = optimizer
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight


class L2LogisticRegression(_Classifier):
    """Logistic regression (softmax regression for more than two classes) with the L2 penalty
    (lam / 2m) ||W||^2; lam = 1/C of scikit-learn's ``LogisticRegression``, whose optimum it reaches: by
    default L-BFGS on J to ``tol`` in at most ``epochs`` = 100 iterations, as scikit-learn's lbfgs solver, from
    zero weights as it (unless ``warm_start``), so that it takes scikit-learn's iterations. With ``sample_weight``
    or ``class_weight`` the solver's tol is scaled by (sum of the weights) / m, since scikit-learn's J is l2fast's
    J times m / (sum of the weights): the same stopping test, and weights of 2 stop where repeated records do.
    ``optimizer="newton-cg"`` (``l2fast.NewtonCG``) is a trust-region Newton solver instead, far quicker on
    ill-conditioned (sparse TF-IDF-like) data. Another ``optimizer`` ("sgd", "adam", ...) trains by minibatches
    of ``batch_size`` with ``lr`` instead.
    ``fit`` takes ``sample_weight``; ``class_weight`` as scikit-learn's. Other parameters and fitted
    attributes as ``L2MLPClassifier``, without hidden layers; ``coef_`` (n_classes or 1, n_features) and
    ``intercept_`` follow scikit-learn's layout."""

    def __init__(self, lam: float = 1.0, lr: float = 0.1, batch_size: Optional[int] = 32, epochs: int = 100,
                 shuffle: bool = True, backend: str = "cpu", dtype: Optional[str] = None, random_state=None,
                 warm_start: bool = False, optimizer="lbfgs", tol: Optional[float] = 1e-4, n_iter_no_change: int = 10,
                 class_weight=None):
        self.lam = lam
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.warm_start = warm_start
        self.optimizer = optimizer
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight

    def _hidden(self):
        return ()

    def _activation(self):
        return "identity"

    @property
    def coef_(self) -> NDArray[np.floating]:
        check_is_fitted(self)
        return self.network_.weights[0]

    @property
    def intercept_(self) -> NDArray[np.floating]:
        check_is_fitted(self)
        return self.network_.biases[0]


class L2MLPRegressor(RegressorMixin, _L2Estimator):
    """A dense regressor trained on the L2-regularised squared error, L = 1/2 sum_k (yhat_k - y_k)^2.

    Targets (n_samples,) or (n_samples, n_targets); parameters and fitted attributes as
    ``L2MLPClassifier`` (no ``classes_`` or ``class_weight``). ``score`` is R^2.
    """

    def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), activation: str = "relu", lam: float = 1.0,
                 lr: float = 0.001, batch_size: Optional[int] = 200, epochs: int = 200, shuffle: bool = True,
                 backend: str = "cpu", dtype: Optional[str] = None, random_state=None, warm_start: bool = False,
                 optimizer="adam", tol: Optional[float] = 1e-4, n_iter_no_change: int = 10):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.lam = lam
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.warm_start = warm_start
        self.optimizer = optimizer
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _targets(self, X, y, sample_weight, first):
        X, y, sample_weight, dataset = self._inputs(X, y, sample_weight, reset=first, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=X.dtype)
        if first:
            self._n_targets = 1 if y.ndim == 1 else y.shape[1]
        n_targets = 1 if y.ndim == 1 else y.shape[1]
        if n_targets != self._n_targets:
            raise ValueError(f"y has {n_targets} targets; this regressor was fitted with {self._n_targets}")
        return X, y.reshape(len(y), n_targets), self._sample_weight(X, sample_weight), dataset

    def fit(self, X: ArrayLike, y: Optional[ArrayLike] = None,
            sample_weight: Optional[ArrayLike] = None) -> "L2MLPRegressor":
        """Trains on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_targets), weighted by
        ``sample_weight`` (n_samples,) when given; or on an ``l2fast.Dataset`` in X."""
        X, y, sample_weight, dataset = self._targets(X, y, sample_weight, first=True)
        return self._train(X, y, y.shape[1], "squared_error", self.epochs, reuse=self.warm_start,
                           sample_weight=sample_weight, dataset=dataset)

    @available_if(_L2Estimator._stochastic)
    def partial_fit(self, X: ArrayLike, y: Optional[ArrayLike] = None,
                    sample_weight: Optional[ArrayLike] = None) -> "L2MLPRegressor":
        """One epoch over X, y (or an ``l2fast.Dataset`` in X, checked and converted once for every call)."""
        first = not hasattr(self, "network_")
        X, y, sample_weight, dataset = self._targets(X, y, sample_weight, first=first)
        return self._train(X, y, y.shape[1], "squared_error", 1, reuse=not first, sample_weight=sample_weight,
                           stop=False, dataset=dataset)

    def predict(self, X: ArrayLike) -> NDArray[np.floating]:
        """Predictions (n_samples,) for one target, (n_samples, n_targets) for several."""
        X = self._check_X(X)
        out = self.network_.predict(X)
        return out if self._n_targets > 1 else out.reshape(-1)
