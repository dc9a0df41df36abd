"""Drop-in replacements for scikit-learn's ``MLPClassifier``, ``MLPRegressor`` and ``LogisticRegression``.

Each class is a subclass of scikit-learn's own, with its exact constructor (names, order, defaults) plus
``backend=`` ("cpu", "numpy" or "cuda") as the last keyword. scikit-learn's code still validates the
arguments, initialises the weights from ``random_state``, shuffles, splits off the early-stopping set, keeps
the learning-rate schedule, the stopping rule and every fitted attribute; l2fast runs the training itself:

- MLP, ``solver="sgd"``/``"adam"``: each epoch's minibatch steps run in the backend's ``train_epoch`` in
  scikit-learn's order of records, with ``alpha`` as the decay alpha/b of each batch of b records (the
  short last batch too, see ``_penalty``). From the same weights the steps are scikit-learn's, to
  rounding: Adam runs as ``l2fast.Adam(eps_on_v=True)`` (eps added to sqrt(v), scikit-learn's placement),
  and momentum's velocity, which holds gradients in l2fast and steps (-lr g) in scikit-learn, is rescaled
  by old rate / new rate when ``learning_rate`` ("invscaling", "adaptive") changes the rate.
- MLP, ``solver="lbfgs"``: SciPy's L-BFGS-B with scikit-learn's options on l2fast's J and gradient.
- ``LogisticRegression``: L-BFGS-B on J with lam from ``C`` (``_penalty``), scikit-learn's lbfgs
  options; newton-cg, newton-cholesky, sag and saga minimise the same strictly convex J, so they are
  served by the same solver (same optimum, other iteration counts). L1 and elastic-net penalties and the
  liblinear solver (which penalises the intercept) are refused with a ``ValueError``.

A scipy.sparse X is trained on as CSR by every backend (on cuda as a cupyx CSR). What l2fast does not compute
(multilabel targets, the Poisson loss) runs scikit-learn's own code, and one line on
stderr says so. ``predict`` and the other methods are scikit-learn's, on the
fitted ``coefs_`` / ``coef_``, which are scikit-learn's arrays in its layout and may be set by hand.

Threads on the cpu backend: small float64 networks train on one thread (``_ONE_THREAD_PRODUCT``), except the
epochs whose steps run in two shares of records (``_core.optimizer_step_shares``, ``_core.sgd_step_shares``; a small
hidden layer's in two parts by its units instead, ``_core.partial_output_fits``: the same bits on any count), which
take a second CPU when the machine has one free; an L-BFGS-B solve runs the process's other BLAS
libraries on one thread while it lasts (``_lbfgs``).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse
from numpy.random.bit_generator import ISpawnableSeedSequence
from sklearn import get_config, linear_model, neural_network
from sklearn.base import ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._logistic import _check_solver
from sklearn.model_selection import train_test_split
from sklearn.neural_network._multilayer_perceptron import _STOCHASTIC_SOLVERS
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._array_api import _is_numpy_namespace, get_namespace
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, validate_data

from l2fast import optim, solvers, threads
from l2fast.backends import BACKENDS
from l2fast.network import Network
from l2fast.sklearn import _penalty

__all__ = ["MLPClassifier", "MLPRegressor", "LogisticRegression"]

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_BACKEND_CONSTRAINT = {"backend": [StrOptions(set(BACKENDS)), None]}
_HOST_BACKENDS = ("numpy", "cpu")  # the backends that keep X in host memory, as NumPy arrays
_said = set()
# float64 epochs whose largest product (batch x n_in x n_out) is below this run on one thread. float64 cannot
# follow the machine's load as float32 does (threads.call_threads: its last bits depend on the thread count),
# so the count is chosen by shape alone: below ~1M multiply-adds a second thread gained nothing on the quiet
# 2-core machine (64-64-10, batch 200) and cost 2-3x when other processes held the cores (benchmarks/README.md).
_ONE_THREAD_PRODUCT = 1 << 20


def is_classifier(est) -> bool:
    """scikit-learn's ``is_classifier`` for the drop-ins, whose classifiers are its ClassifierMixin's subclasses (its
    version builds the estimator's tags each call: 10-20 us, several times a fit)."""
    return isinstance(est, ClassifierMixin)


def say_once(who: str, what: str) -> None:
    """One line on stderr per (who, what) and process: where scikit-learn's own code runs instead."""
    if (who, what) not in _said:
        _said.add((who, what))
        print(f"l2fast: {who} runs scikit-learn's own code: {what}", file=sys.stderr)


def backend_name(est) -> str:
    """The estimator's backend: its ``backend``, else the environment's ``L2FAST_BACKEND``, else "cpu"."""
    return est.backend if est.backend is not None else os.environ.get("L2FAST_BACKEND", "cpu")


def _features(backend, X, n_in, dtype):
    """X (validated by scikit-learn) in the backend. scikit-learn's checks have just read every value (2-D,
    float, finite), so the host backends take a dense X of the network's dtype as it is (C order), without a
    second pass; anything else (sparse X: to CSR once per fit; cuda) goes through the backend's conversion."""
    if backend.name in _HOST_BACKENDS and isinstance(X, np.ndarray) and X.dtype == dtype:
        return np.ascontiguousarray(X)
    return backend.features(X, n_in, dtype)


def _dense_inputs(est, X, y):
    """What ``validate_data(est, X, y, reset=True, multi_output=True, dtype=(float64, float32))`` returns for a NumPy
    float X (2-D, a row and a column at least, finite) and a 1-D NumPy integer y of its length: the two arrays
    themselves, est's ``n_features_in_`` set and ``feature_names_in_`` removed, without its generic checks (dataframe,
    array API and sparse detection: 0.3-0.5 ms of a small fit). None for any other input, which validate_data then
    takes, and refuses with its own messages."""
    if not (type(X) is np.ndarray and X.ndim == 2 and X.dtype in (np.float64, np.float32) and X.shape[0] >= 1
            and X.shape[1] >= 1 and type(y) is np.ndarray and y.ndim == 1 and y.dtype.kind in "iu"
            and len(y) == len(X)):
        return None
    config = get_config()
    if config["array_api_dispatch"]:
        return None
    if not config["assume_finite"]:
        with np.errstate(over="ignore"):  # scikit-learn's first test: a finite sum (else it looks for the value)
            if not np.isfinite(X.sum()):
                return None
    if hasattr(est, "feature_names_in_"):
        del est.feature_names_in_
    est.n_features_in_ = X.shape[1]
    return X, y


def _sorted_labels(y):
    """``np.unique(y)`` of 1-D integer labels; by counting where they are a few non-negative ones (50 -> 11 us)."""
    if len(y) and (y.dtype.kind == "i" or y.dtype.itemsize < 8) and y.min() >= 0 and y.max() <= 4 * len(y) + 256:
        return np.flatnonzero(np.bincount(y)).astype(y.dtype, copy=False)
    return np.unique(y)


def _lbfgs(backend, fun, x0, options):
    """SciPy's L-BFGS-B on fun (J and its gradient), with the process's other BLAS libraries on one thread meanwhile
    when the backend is cpu (``solvers.other_blas_on_one_thread``)."""
    with solvers.other_blas_on_one_thread(backend):
        return scipy.optimize.minimize(fun, x0, method="L-BFGS-B", jac=True, options=options)


def _lbfgs_options(max_fun, max_iter, tol, verbose):
    iprint = 1 if verbose is True or verbose >= 1 else -1
    return {"maxfun": max_fun, "maxiter": max_iter, "gtol": tol,
            **_get_additional_lbfgs_options_dict("iprint", iprint)}


_SCALARS = (int, float, str, bool, type(None))
_CHECKED_KEEP = 256  # parameter sets remembered per class as checked (a grid search's worth)


def _parameters_key(params):
    """A hashable key for an estimator's parameters whose values are all of the types above or tuples of them, which
    scikit-learn's constraints judge by type and value alone (so two equal keys pass or fail alike); else None. Types
    are in the key: 1, 1.0 and True are equal values that a constraint may tell apart."""
    key = []
    for name, value in params.items():
        kind = type(value)
        if kind is tuple:
            kind = (tuple, *map(type, value))
            if not all(t in _SCALARS for t in kind[1:]):
                return None
        elif kind not in _SCALARS:
            return None
        key.append((name, kind, value))
    return tuple(key)


class _ParametersChecked:
    """scikit-learn's check of the constructor's parameters, made once per class and set of values: a fit with
    parameters already found valid skips it (0.2-0.4 ms of a small fit, as much again for inspect.signature in
    ``get_params``). The parameter names are read from ``__init__``'s signature once per class."""

    _param_names_seen: dict = {}  # class -> (its __init__, its parameter names)
    _checked_seen: dict = {}  # class -> (its _parameter_constraints, the keys of parameter sets that passed them)

    @classmethod
    def _get_param_names(cls):
        seen = _ParametersChecked._param_names_seen.get(cls)
        if seen is None or seen[0] is not cls.__init__:
            seen = _ParametersChecked._param_names_seen[cls] = (cls.__init__,
                                                                 super(_ParametersChecked, cls)._get_param_names())
        return list(seen[1])

    def _validate_params(self):
        cls = type(self)
        key = _parameters_key(self.get_params(deep=False))
        seen = _ParametersChecked._checked_seen.get(cls)
        if seen is None or seen[0] is not cls._parameter_constraints:
            seen = _ParametersChecked._checked_seen[cls] = (cls._parameter_constraints, set())
        if key is not None and key in seen[1]:
            return
        super()._validate_params()
        if key is not None:
            if len(seen[1]) >= _CHECKED_KEEP:
                seen[1].clear()
            seen[1].add(key)


class _Trainer:
    """The l2fast side of one MLP: a Network mirroring ``coefs_``/``intercepts_`` and the optimizer's state
    (velocities or moments and the step count), kept across ``partial_fit`` calls."""

    def __init__(self, est, dtype):
        sizes = [est.coefs_[0].shape[0]] + [W.shape[1] for W in est.coefs_]
        self.loss = _l2fast_loss(est)
        self.net = Network._holding(sizes, _ACTIVATIONS[est.activation], self.loss, backend_name(est), dtype,
                                    [W.T for W in est.coefs_], est.intercepts_)
        if est.solver == "adam":
            self.spec = optim.Adam(est.beta_1, est.beta_2, est.epsilon, eps_on_v=True)
        elif est.momentum > 0:
            self.spec = optim.Momentum(est.momentum, nesterov=est.nesterovs_momentum)
        else:
            self.spec = optim.SGD()
        xp = self.net._backend.xp
        self.state = optim.OptimizerState.fresh(self.spec, optim.Constant(), self.net._weights, self.net._biases,
                                                xp.zeros_like)
        self.lr = None  # the rate of the last epoch: momentum's velocity is rescaled when the next one differs

    def fits(self, est, dtype):
        sizes = [est.coefs_[0].shape[0]] + [W.shape[1] for W in est.coefs_]
        net = self.net
        return (list(net.layer_sizes) == sizes and net.dtype == dtype and net.backend == backend_name(est)
                and net.activation == _ACTIVATIONS[est.activation] and net.loss == _l2fast_loss(est))

    def load(self, est):
        """The estimator's coefs_ and intercepts_ (perhaps set by hand) into the network; state kept."""
        net = self.net
        weights, biases = net._to_backend([np.ascontiguousarray(W.T, dtype=net.dtype) for W in est.coefs_]), \
            net._to_backend([np.ascontiguousarray(b, dtype=net.dtype) for b in est.intercepts_])
        net._weights, net._biases = weights, biases

    def store(self, est):
        """The network's parameters back into the estimator's arrays, (n_in, n_out) layout."""
        to_host = self.net._backend.to_host  # one copy, in scikit-learn's layout (np.array copies a contiguous W.T too)
        est.coefs_ = [np.array(to_host(W).T, order="C") for W in self.net._weights]
        est.intercepts_ = self.net._to_host(self.net._biases)

    def data(self, X, y, sample_weight):
        """X, y (scikit-learn's binarized targets) and unit-mean weights in the backend; m / s."""
        net = self.net
        backend = net._backend
        if self.loss == "softmax":
            y = np.argmax(y, axis=1)
        weights, scale = _penalty.unit_mean_weights(sample_weight)
        X = _features(backend, X, net.layer_sizes[0], net.dtype)
        y = backend.targets(y, len(X), self.loss, net.layer_sizes[-1], net.dtype)
        weights = None if weights is None else backend.sample_weights(weights, len(X), net.dtype)
        return X, y, weights, scale

    def threads(self, batch, dense):
        """The thread count for this network's epochs: one for small float64 ones (``_ONE_THREAD_PRODUCT``), unless
        their steps on dense X run in two shares of records (``threads.two_share_epoch``), whose bits are the same
        on any count: those follow the machine's load (``threads.call_threads``)."""
        net = self.net
        if (net.backend != "cpu" or net.dtype != np.float64 or threads._core is None
                or threads.largest_product(net.layer_sizes, batch) >= _ONE_THREAD_PRODUCT
                or threads.two_share_epoch(net.layer_sizes, batch, self.spec.name, dense, net.dtype,
                                           net.activation)):
            return contextlib.nullcontext()
        return threads._limit(threads._core, 1)

    def _new_rate(self, lr):
        """The coming epochs' rate, unlike the last's (None before the first)."""
        if self.spec.name == "momentum" and self.lr is not None:
            # scikit-learn's velocity holds steps (-lr g), l2fast's gradients (g): the same steps follow
            # a change of rate when l2fast's velocity is rescaled by the old rate over the new
            for V in self.state.slots[0]:
                V *= self.lr / lr
        self.lr = lr

    def epochs(self, X, y, weights, m, batch, alpha, scale):
        """``epoch(order, lr)``: one epoch of minibatch steps over ``order`` (m records): its full batches with the
        decay alpha/b, then the short last batch of b' records with alpha/b' (on cpu in the same call). Returns the
        summed (weighted) data loss and the sum over the steps of ||W||^2 at the weights each step's loss was
        computed with (scikit-learn adds alpha/2 of it to each batch's loss). What every epoch of the fit shares
        (the decays, the backend's call) is worked out here, once. Runs inside ``threads(batch)``, which the caller
        enters once for all its epochs."""
        net, state = self.net, self.state
        stepper = None if self.spec.name == "sgd" else self.spec
        n_short = m % batch
        lam_full = _penalty.lam_over_m_from_alpha(alpha, batch, scale)
        lam_short = _penalty.lam_over_m_from_alpha(alpha, max(n_short, 1), scale)
        steps = -(-m // batch)
        # X passed scikit-learn's check (or the backend's features) once per fit: check_finite=False
        if net.backend == "cpu":  # one call, the short batch's decay given beside (a call costs ~60 us of a 1 ms epoch)
            run = net._backend.epoch_runner(net._weights, net._biases, X, y, m, batch, net.activation, net.loss,
                                            stepper, state.slots, weights, check_finite=False, with_norms=True)
            short = lam_short if n_short else None

            def epoch(order, lr):
                if lr != self.lr:
                    self._new_rate(lr)
                loss_sum, _, norm_sum = run(order, lr, lam_full, state.step, short)
                state.step += steps
                return loss_sum, norm_sum
        else:
            def epoch(order, lr):
                if lr != self.lr:
                    self._new_rate(lr)
                loss_sum = norm_sum = 0.0
                for rows, lam in ((order[:m - n_short], lam_full), (order[m - n_short:], lam_short)):
                    if len(rows) == 0:
                        continue
                    part, _, norms = net._backend.train_epoch(
                        net._weights, net._biases, X, y, rows, batch, lr, lam, net.activation, net.loss, stepper,
                        state.slots, state.step, sample_weight=weights, with_norms=True, check_finite=False)
                    state.step += -(-len(rows) // batch)
                    loss_sum += part
                    norm_sum += norms
                return loss_sum, norm_sum

        return epoch


def shuffle_(order, random_state):
    """``order = sklearn.utils.shuffle(order, random_state=random_state)`` in place: the same draws, so the same order,
    without its checks of the arguments (1.3 ms an epoch). scikit-learn shuffles arange(n) and indexes order with it;
    ``RandomState.shuffle`` swaps positions whatever they hold, so shuffling order itself (a 1-D array, as arange)
    gives order[that permutation] without the two arrays."""
    random_state.shuffle(order)


_AHEAD_ENTRIES = 1 << 18  # the most entries (2 MiB of int64) of orders made ahead at once


class _Orders:
    """The epochs' orders of records, each scikit-learn's shuffle of the last (``shuffle_``, the same draws), made for
    as many coming epochs as will run for certain in one go: there the shuffles run warm, where after an epoch's kernel
    a shuffle of 1797 records took 36 us, 22 warm. ``rewind`` gives back the draws of orders made but not used (a fit
    ended by an exception or Ctrl-C), so that the random state ends where scikit-learn's does."""

    def __init__(self, m, random_state, shuffle):
        self._last = np.arange(m, dtype=np.int64)
        self._random_state, self._shuffle = random_state, shuffle
        self._ahead, self._used, self._before = (), 0, None

    def next(self, sure):
        """The coming epoch's order; ``sure`` of the coming epochs (this one too) run for certain."""
        if not self._shuffle:
            return self._last
        if self._used == len(self._ahead):
            count = max(1, min(sure, _AHEAD_ENTRIES // len(self._last)))
            self._before = self._random_state.get_state() if count > 1 else None
            self._ahead, self._used = np.empty((count, len(self._last)), dtype=np.int64), 0
            previous = self._last
            for order in self._ahead:
                order[...] = previous
                shuffle_(order, self._random_state)
                previous = order
        self._last = self._ahead[self._used]
        self._used += 1
        return self._last

    def rewind(self):
        """The random state back where the orders used so far leave it."""
        if self._used < len(self._ahead) and self._before is not None:
            self._random_state.set_state(self._before)
            scratch = np.empty(len(self._last), dtype=np.int64)  # a shuffle's draws depend on the length alone
            for _ in range(self._used):
                self._random_state.shuffle(scratch)
            self._ahead = self._ahead[:self._used]


def _l2fast_loss(est):
    if not is_classifier(est):
        return "squared_error"
    return "softmax" if est.out_activation_ == "softmax" else "logistic"


class _DroppedSeedSequence(ISpawnableSeedSequence):
    """The seed sequence of an MT19937 that is seeded the legacy way at once, which overwrites the state it gives and
    drops it: its words are zeros, not SeedSequence's hash of OS entropy (0.1-0.3 ms). A list, which MT19937 copies
    faster than an array."""

    def generate_state(self, n_words, dtype=np.uint32):
        return [0] * n_words

    def spawn(self, n_children):
        raise TypeError("this seed sequence is dropped by legacy seeding: nothing spawns from it")


def _seeded_legacy(seed):
    bit_generator = np.random.MT19937(_DroppedSeedSequence())
    bit_generator._legacy_seeding(seed)
    return np.random.RandomState(bit_generator)


@functools.lru_cache(maxsize=None)
def _legacy_seeding_is_randomstates():
    """Whether ``_seeded_legacy`` gives RandomState(seed)'s state with this NumPy: checked once per process."""
    try:
        for seed in (0, 2**32 - 1, 987654321):
            ours, theirs = _seeded_legacy(seed), np.random.RandomState(seed)
            mine, its = ours.get_state(), theirs.get_state()
            if ours._bit_generator._seed_seq is not None or not (np.array_equal(mine[1], its[1])
                                                                  and mine[2:] == its[2:]):
                return False
        return True
    except Exception:  # noqa: BLE001 (then scikit-learn's way)
        return False


def legacy_random_state(seed):
    """``check_random_state(seed)``; a plain int seed's ``RandomState(seed)`` made as RandomState makes it (an MT19937
    seeded the legacy way) without first seeding the MT19937 from the OS, which the legacy seeding overwrites (0.13 ms
    warm, 0.3 ms in a small fit)."""
    if type(seed) is not int or not 0 <= seed < 2**32 or not _legacy_seeding_is_randomstates():
        return check_random_state(seed)
    return _seeded_legacy(seed)


class _L2fastMLP(_ParametersChecked):
    """The training loops of scikit-learn's MLP run by l2fast; everything else is inherited."""

    _parameter_constraints: dict = {**neural_network.MLPClassifier._parameter_constraints, **_BACKEND_CONSTRAINT}

    def _unserved(self, X):
        """Why l2fast cannot train this fit (then scikit-learn's own code does), or None."""
        if is_classifier(self) and self.out_activation_ == "logistic" and self.n_outputs_ > 1:
            return "multilabel targets"
        if not is_classifier(self) and self.loss != "squared_error":
            return f"loss={self.loss!r}"
        return None

    def _fit(self, X, y, sample_weight=None, incremental=False):
        """scikit-learn's ``_fit``, step by step: its checks, initial weights, solver and final check; the random
        state of a plain int ``random_state`` made by ``legacy_random_state``."""
        hidden_layer_sizes = self.hidden_layer_sizes
        hidden_layer_sizes = list(hidden_layer_sizes if hasattr(hidden_layer_sizes, "__iter__") else
                                  [hidden_layer_sizes])
        if (any(size <= 0 for size in hidden_layer_sizes) if all(type(size) is int for size in hidden_layer_sizes)
                else np.any(np.array(hidden_layer_sizes) <= 0)):  # NumPy's test for anything but plain ints
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden_layer_sizes}.")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1]] + hidden_layer_sizes + [self.n_outputs_]
        self._random_state = legacy_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, X.dtype)
        # scikit-learn's solvers' buffers, which its own code (the fall-backs) fills
        activations = [X] + [None] * (len(layer_units) - 1)
        deltas = [None] * (len(activations) - 1)
        coef_grads = [np.empty((n_in, n_out), dtype=X.dtype) for n_in, n_out in zip(layer_units, layer_units[1:])]
        intercept_grads = [np.empty(n_out, dtype=X.dtype) for n_out in layer_units[1:]]
        if self.solver in _STOCHASTIC_SOLVERS:
            self._fit_stochastic(X, y, sample_weight, activations, deltas, coef_grads, intercept_grads, layer_units,
                                 incremental)
        elif self.solver == "lbfgs":
            self._fit_lbfgs(X, y, sample_weight, activations, deltas, coef_grads, intercept_grads, layer_units)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                             "and need to be preprocessed.")
        return self

    def _trainer(self, X, fresh):
        dtype = np.dtype(X.dtype)
        trainer = getattr(self, "_l2fast_trainer", None)
        if fresh or trainer is None or not trainer.fits(self, dtype):
            trainer = _Trainer(self, dtype)
        else:
            trainer.load(self)
        self._l2fast_trainer = trainer
        return trainer

    def _fit_lbfgs(self, X, y, sample_weight, activations, deltas, coef_grads, intercept_grads, layer_units):
        reason = self._unserved(X)
        if reason is not None:
            say_once(type(self).__name__, reason)
            return super()._fit_lbfgs(X, y, sample_weight, activations, deltas, coef_grads, intercept_grads,
                                      layer_units)
        trainer = self._trainer(X, fresh=True)
        X, y, weights, scale = trainer.data(X, y, sample_weight)
        net = trainer.net
        net.lam = _penalty.lam_from_alpha(self.alpha, len(X), len(X), scale)
        objective = solvers.Objective(net, X, y, weights)
        result = _lbfgs(net.backend, objective, objective.flat.vector(),
                        _lbfgs_options(self.max_fun, self.max_iter, self.tol, self.verbose))
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        net._weights, net._biases = objective.flat.arrays(result.x)
        trainer.store(self)
        data_loss = float(result.fun) - net.penalty(len(X))
        self.loss_ = data_loss / self._loss_outputs() + net.penalty(len(X))

    def _loss_outputs(self):
        """scikit-learn's squared loss is a mean over outputs too; l2fast's sums them."""
        return 1 if is_classifier(self) else self.n_outputs_

    def _fit_stochastic(self, X, y, sample_weight, activations, deltas, coef_grads, intercept_grads, layer_units,
                        incremental):
        reason = self._unserved(X)
        if reason is not None:
            say_once(type(self).__name__, reason)
            return super()._fit_stochastic(X, y, sample_weight, activations, deltas, coef_grads, intercept_grads,
                                           layer_units, incremental)
        fresh = not incremental or not hasattr(self, "_optimizer")
        if fresh:  # scikit-learn's optimizer object keeps the learning-rate schedule; l2fast does the steps
            params = self.coefs_ + self.intercepts_
            self._optimizer = (SGDOptimizer(params, self.learning_rate_init, self.learning_rate, self.momentum,
                                            self.nesterovs_momentum, self.power_t) if self.solver == "sgd" else
                               AdamOptimizer(params, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon))
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X_train, y_train, w_train, X_val, y_val, w_val = self._split(X, y, sample_weight)
        m = X_train.shape[0]
        if self.batch_size == "auto":
            batch = min(200, m)
        else:
            if self.batch_size > m:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            batch = int(np.clip(self.batch_size, 1, m))
        trainer = self._trainer(X, fresh)
        X_l2, y_l2, w_l2, scale = trainer.data(X_train, y_train, w_train)
        orders = _Orders(m, self._random_state, self.shuffle)
        loss_outputs = self._loss_outputs()
        # One thread count for all the epochs, set once (a float64 network's count fixes its last bits)
        with trainer.threads(batch, dense=isinstance(X_l2, np.ndarray)):
            epoch = trainer.epochs(X_l2, y_l2, w_l2, m, batch, self.alpha, scale)
            try:
                self.n_iter_ = 0
                for _ in range(self.max_iter):
                    # the epochs sure to run: no stop before the no-improvement count (+1 an epoch) passes its limit
                    sure = 1 if incremental else min(self.max_iter - self.n_iter_,
                                                     self.n_iter_no_change - self._no_improvement_count + 1)
                    order = orders.next(sure)
                    lr = self._optimizer.learning_rate_init if self.solver == "adam" else self._optimizer.learning_rate
                    loss_sum, norm_sum = epoch(order, lr)
                    # scikit-learn's per-batch loss (mean + alpha/(2b) ||W||^2) times b, summed, over m
                    self.loss_ = loss_sum / m / loss_outputs + 0.5 * self.alpha * scale * norm_sum / m
                    self.n_iter_ += 1
                    self.t_ += m
                    self.loss_curve_.append(self.loss_)
                    if self.verbose:
                        print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                    if self.early_stopping:
                        trainer.store(self)  # the validation score and the best snapshot read coefs_
                    self._update_no_improvement_count(self.early_stopping, X_val, y_val, w_val)
                    self._optimizer.iteration_ends(self.t_)
                    if self._no_improvement_count > self.n_iter_no_change:
                        watched = "Validation score" if self.early_stopping else "Training loss"
                        msg = (f"{watched} did not improve more than tol={self.tol:f} for "
                               f"{self.n_iter_no_change} consecutive epochs.")
                        if self._optimizer.trigger_stopping(msg, self.verbose):
                            break
                        self._no_improvement_count = 0
                    if incremental:
                        break
                    if self.n_iter_ == self.max_iter:
                        warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                                      "optimization hasn't converged yet.", ConvergenceWarning)
            except KeyboardInterrupt:
                warnings.warn("Training interrupted by user.")
            finally:
                orders.rewind()
        trainer.store(self)
        if self.early_stopping:
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts

    def _split(self, X, y, sample_weight):
        """(X, y, w) to train on and (X, y, w) to validate on (None without early stopping), split as
        scikit-learn splits them: stratified for one-output classifiers, from random_state."""
        if not self.early_stopping:
            return X, y, sample_weight, None, None, None
        stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
        arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
        parts = train_test_split(*arrays, random_state=self._random_state, test_size=self.validation_fraction,
                                 stratify=stratify)
        X_train, X_val, y_train, y_val = parts[:4]
        w_train, w_val = (None, None) if sample_weight is None else parts[4:]
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        if is_classifier(self):
            y_val = self._label_binarizer.inverse_transform(y_val)
        return X_train, y_train, w_train, X_val, y_val, w_val


class MLPClassifier(_L2fastMLP, neural_network.MLPClassifier):
    """scikit-learn's ``MLPClassifier``, trained by l2fast on ``backend`` (see the module's docstring)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend=None):
        super().__init__(hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
                         batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
                         power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, warm_start=warm_start, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, max_fun=max_fun)
        self.backend = backend

    def _validate_input(self, X, y, incremental, reset):
        """scikit-learn's, with its LabelBinarizer's findings made directly in the common case: a fresh fit on
        1-D integer labels of two classes or more. Their type of target is then "binary" or "multiclass", the
        classes the sorted distinct labels and the binarized y labels == classes (the last column alone for two
        classes): what the binarizer finds through four calls of ``type_of_target`` (1.5 ms of a digits fit). A
        plain NumPy X is taken as validate_data takes it, without its generic checks (``_dense_inputs``)."""
        fresh = not hasattr(self, "classes_") or (not self.warm_start and not incremental)
        if not (fresh and isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iu"):
            return super()._validate_input(X, y, incremental, reset)
        checked = _dense_inputs(self, X, y) if reset else None
        X, y = checked if checked is not None else validate_data(
            self, X, y, accept_sparse=["csr", "csc"], multi_output=True, dtype=(np.float64, np.float32), reset=reset)
        classes = _sorted_labels(y)
        if len(classes) < 2:
            return super()._validate_input(X, y, incremental, reset)
        binarizer = LabelBinarizer()
        binarizer.y_type_ = "binary" if len(classes) == 2 else "multiclass"
        binarizer.sparse_input_ = False
        binarizer.classes_ = classes
        self._label_binarizer, self.classes_ = binarizer, classes
        return X, y[:, None] == (classes[1:] if len(classes) == 2 else classes)

    def _score(self, X, y, sample_weight=None):
        """The early-stopping score of every epoch, scikit-learn's: the accuracy of its own predictions, as
        ``accuracy_score`` computes it (``np.average`` of the matches) once its checks have passed, which they do
        for labels that both came from the label binarizer (1-D, one dtype) and weights split from the validated
        ones. The checks cost 0.8 ms an epoch on digits, more than its steps; other inputs still take them."""
        if not (isinstance(y, np.ndarray) and y.ndim == 1 and
                (sample_weight is None or (isinstance(sample_weight, np.ndarray) and sample_weight.shape == y.shape
                                           and sample_weight.dtype.kind == "f"))):
            return super()._score(X, y, sample_weight)
        y_pred = self._predict(X, check_input=False)
        if y_pred.shape != y.shape or y_pred.dtype != y.dtype:
            return super()._score(X, y, sample_weight)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(np.average(y == y_pred, weights=sample_weight))


class MLPRegressor(_L2fastMLP, neural_network.MLPRegressor):
    """scikit-learn's ``MLPRegressor``, trained by l2fast on ``backend`` (see the module's docstring)."""

    _parameter_constraints: dict = {**neural_network.MLPRegressor._parameter_constraints, **_BACKEND_CONSTRAINT}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend=None):
        super().__init__(loss=loss, hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
                         alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
                         learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
                         momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, max_fun=max_fun)
        self.backend = backend


class LogisticRegression(_ParametersChecked, linear_model.LogisticRegression):
    """scikit-learn's ``LogisticRegression`` with the L2 penalty or none, fitted by l2fast on ``backend``
    (see the module's docstring)."""

    _parameter_constraints: dict = {**linear_model.LogisticRegression._parameter_constraints, **_BACKEND_CONSTRAINT}
    _refuse = True  # l2fast.sklearn.patch() installs a subclass that hands these cases to scikit-learn

    def __init__(self, penalty="deprecated", *, C=1.0, l1_ratio=0.0, dual=False, tol=1e-4, fit_intercept=True,
                 intercept_scaling=1, class_weight=None, random_state=None, solver="lbfgs", max_iter=100, verbose=0,
                 warm_start=False, n_jobs=None, backend=None):
        super().__init__(penalty=penalty, C=C, l1_ratio=l1_ratio, dual=dual, tol=tol, fit_intercept=fit_intercept,
                         intercept_scaling=intercept_scaling, class_weight=class_weight, random_state=random_state,
                         solver=solver, max_iter=max_iter, verbose=verbose, warm_start=warm_start, n_jobs=n_jobs)
        self.backend = backend

    def _penalty(self):
        """"l2" or None (no penalty) as scikit-learn resolves penalty, l1_ratio and C; or the refused one."""
        if self.penalty == "deprecated":
            if self.C == np.inf:
                return None
            return "l2" if self.l1_ratio in (0, None) else "l1" if self.l1_ratio == 1 else "elasticnet"
        return self.penalty

    def _unserved(self, X):
        """(reason, refused): why l2fast does not fit this, and whether that is an error; (None, False)."""
        penalty = self._penalty()
        if penalty in ("l1", "elasticnet"):
            return (f"penalty={penalty!r}: l2fast fits the L2 penalty or none; use scikit-learn's "
                    "LogisticRegression for L1 and elastic-net"), True
        if self.solver == "liblinear":
            return ("solver='liblinear' penalises the intercept, another problem than l2fast's; use solver='lbfgs' "
                    "(the same optimum as newton-cg, newton-cholesky, sag and saga)"), True
        if self.dual:
            return "dual=True (liblinear's dual formulation)", True
        if not scipy.sparse.issparse(X) and not _is_numpy_namespace(get_namespace(X)[0]):
            return "array API input other than NumPy's (array_api_dispatch=True)", False
        return None, False


    def _warn_like_scikit_learn(self, penalty):
        """scikit-learn's warnings about penalty, l1_ratio, C and n_jobs, as its fit gives them."""
        if self.penalty != "deprecated":
            warnings.warn("'penalty' was deprecated in version 1.8 and will be removed in 1.10. To avoid this "
                          "warning, leave 'penalty' set to its default value and use 'l1_ratio' or 'C' instead.",
                          FutureWarning)
        if penalty != "elasticnet" and self.l1_ratio is not None and 0 < self.l1_ratio < 1:
            warnings.warn(f"l1_ratio parameter is only used when penalty is 'elasticnet'. Got (penalty={penalty})")
        if (self.penalty == "l2" and self.l1_ratio != 0) or (self.penalty == "l1" and self.l1_ratio != 1):
            warnings.warn(f"Inconsistent values: penalty={self.penalty} with l1_ratio={self.l1_ratio}. penalty is "
                          "deprecated. Please use l1_ratio only.")
        if self.penalty == "deprecated" and self.l1_ratio is None:
            warnings.warn("'l1_ratio=None' was deprecated in version 1.8 and will trigger an error in 1.10. Use "
                          "0<=l1_ratio<=1 instead.", FutureWarning)
        if self.penalty is None and self.C != 1.0:
            warnings.warn("Setting penalty=None will ignore the C and l1_ratio parameters")
        if self.n_jobs is not None:
            warnings.warn(f"'n_jobs' has no effect since 1.8 and will be removed in 1.10. You provided "
                          f"'n_jobs={self.n_jobs}', please leave it unspecified.", FutureWarning)

    def fit(self, X, y, sample_weight=None):
        """Fits on X (n_samples, n_features) and labels y (n_samples,) with ``sample_weight`` (n_samples,)
        and ``class_weight``: L-BFGS-B on l2fast's J with lam from C."""
        self._validate_params()
        _check_solver(self.solver, self._penalty(), self.dual)  # scikit-learn's errors for its own combinations
        reason, refused = self._unserved(X)
        if reason is not None and not (refused and self._refuse):
            say_once(type(self).__name__, reason)
            return super().fit(X, y, sample_weight=sample_weight)
        penalty = self._penalty()
        self._warn_like_scikit_learn(penalty)
        if reason is not None:
            raise ValueError(f"{type(self).__name__}: {reason}")
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], order="C", accept_sparse="csr")
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError("This solver needs samples of at least 2 classes in the data, but the data contains "
                             f"only one class: {self.classes_[0]!r}")
        codes = np.searchsorted(self.classes_, y)
        weights = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        if self.class_weight is not None:
            per_class = compute_class_weight(self.class_weight, classes=self.classes_, y=y, sample_weight=weights)
            weights = weights * per_class[codes].astype(X.dtype)
        weights, scale = _penalty.unit_mean_weights(weights)
        binary = len(self.classes_) == 2
        n_out = 1 if binary else len(self.classes_)
        C = np.inf if penalty is None else self.C
        start_W = np.zeros((n_out, X.shape[1]), dtype=X.dtype)
        start_b = np.zeros(n_out, dtype=X.dtype)
        if self.warm_start and getattr(self, "coef_", None) is not None and self.coef_.shape == start_W.shape:
            start_W[...] = self.coef_
            start_b[...] = self.intercept_
        net = Network._holding([X.shape[1], n_out], "identity", "logistic" if binary else "softmax",
                               backend_name(self), X.dtype, [start_W], [start_b])
        net.lam = _penalty.lam_from_C(C, scale)
        backend = net._backend
        X_l2 = _features(backend, X, X.shape[1], net.dtype)
        y_l2 = backend.targets(codes, X.shape[0], net.loss, n_out, net.dtype)
        w_l2 = None if np.all(weights == 1) else backend.sample_weights(weights, X.shape[0], net.dtype)
        # one backend call per evaluation at the flat vector where the backend has it (cpu: _core.LinearObjective)
        objective = (solvers.FlatObjective if solvers._evaluates_flat(net) else solvers.Objective)(net, X_l2, y_l2,
                                                                                                   w_l2)
        n_W = X.shape[1] * n_out

        def J(x):  # without an intercept its gradient is held at 0: L-BFGS never moves it from 0
            value, grad = objective(x)
            if not self.fit_intercept:
                grad[n_W:] = 0.0
            return value, grad

        x, n_iter = objective.flat.vector(), 0
        if self.max_iter > 0:
            options = _lbfgs_options(15000, self.max_iter, self.tol, self.verbose)
            options.update(maxls=50, ftol=64 * np.finfo(float).eps)
            result = _lbfgs(net.backend, J, x, options)
            x, n_iter = result.x, result.nit
        if self.max_iter == 0 or result.status != 0:
            warnings.warn(self._not_converged(n_iter, "" if self.max_iter == 0 else result.message),
                          ConvergenceWarning, stacklevel=2)
        self.n_iter_ = np.asarray([n_iter], dtype=np.int32)
        self.coef_ = x[:n_W].reshape(n_out, X.shape[1]).astype(X.dtype)
        self.intercept_ = x[n_W:].astype(X.dtype)
        return self

    def _not_converged(self, n_iter, message):
        """scikit-learn's warning text for the solver asked for, saying that L-BFGS-B ran."""
        served = "" if self.solver == "lbfgs" else f" (l2fast serves solver={self.solver!r} with L-BFGS-B)"
        if self.solver in ("sag", "saga"):
            return f"The max_iter was reached which means the coef_ did not converge{served}"
        if self.solver == "newton-cholesky":
            return f"Newton solver did not converge after {n_iter} iterations{served}"
        if self.solver == "newton-cg":
            return f"newton-cg failed to converge{served}. Increase the number of iterations."
        return (f"{self.solver} failed to converge after {n_iter} iteration(s): {message}{served}\n"
                f"Increase the number of iterations to improve the convergence (max_iter={self.max_iter}).\n"
                "You might also want to scale the data as shown in:\n"
                "    https://scikit-learn.org/stable/modules/preprocessing.html")
