"""The model: an L2-regularised dense network, its parameters, cost, prediction and training.

    J(W, b) = (1/m) sum_i L(yhat_i, y_i) + (lam / 2m) sum_l ||W[l]||_F^2

with m the number of records and biases never penalised. Every computation is delegated to the
backend chosen by name; this file holds what is the same on all of them.
"""
from __future__ import annotations

import contextlib
import functools
import numbers
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from l2fast import _validate, monitor, optim, shuffling, solvers
from l2fast.backends import get_backend
from l2fast.dataset import Dataset

FloatArray = NDArray[np.floating]


class CostParts(NamedTuple):
    """The two terms of J: the mean data loss and the L2 penalty (lam / 2m) sum ||W||_F^2."""

    data_loss: float
    penalty: float


@dataclass
class History:
    """Per-epoch figures from ``Network.fit``.

    ``loss`` and ``accuracy`` are the running figures of each epoch, as Keras and scikit-learn report
    them: every minibatch is scored just before its own update. ``cost`` adds the L2 penalty at the
    end of the epoch (m = training-set size). The ``val_`` lists are exact evaluations of the
    validation data after each epoch, ``val_cost`` being ``Network.cost`` on it. Accuracy lists stay
    empty for regression. ``seconds`` is the wall time of each epoch's training (shuffle and steps),
    without the validation scoring. ``lr`` is the learning rate each epoch ran with (see the
    ``schedule`` of ``fit``). With early stopping, ``best_epoch`` (counted from 1) is the epoch
    of the lowest validation loss and ``stopped_early`` tells whether patience ran out.

    ``n_iter`` counts the epochs run (L-BFGS: its iterations); ``converged`` is True when the stopping
    rule ended the fit (``tol`` / ``patience``) or L-BFGS met its tolerance, False when the budget ran out
    first or no rule was set. With L-BFGS every list holds one entry per iteration, ``accuracy`` and
    ``lr`` stay empty, and ``message`` gives SciPy's reason for stopping.
    """

    loss: List[float] = field(default_factory=list)
    cost: List[float] = field(default_factory=list)
    accuracy: List[float] = field(default_factory=list)
    val_loss: List[float] = field(default_factory=list)
    val_cost: List[float] = field(default_factory=list)
    val_accuracy: List[float] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)
    lr: List[float] = field(default_factory=list)
    best_epoch: Optional[int] = None
    stopped_early: bool = False
    n_iter: int = 0
    converged: bool = False
    message: str = ""


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite cost or weight; the network keeps the parameters of the
    last epoch that stayed finite. ``history`` holds the epochs completed before it."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history

    def __reduce__(self):  # pickled whole, so that it crosses from a worker process to the caller as itself
        return type(self), (self.args[0], self.history)


def _serialised(method):
    """Runs the method under the network's lock: calls on one network from several threads take
    turns instead of racing on its parameters (separate networks still run in parallel)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _progress_bar(total, show, unit="epoch"):
    """A tqdm bar over `total` units, or None when not shown (tqdm is imported only then)."""
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit)  # left on its own line when done: a log file reads cleanly after it


def _best_so_far(networks, histories):
    """The progress bar's figures for several networks: the lowest latest validation loss and its lambda."""
    loss, lam = min((h.val_loss[-1], net.lam) for net, h in zip(networks, histories) if h.val_loss)
    return {"best val_loss": f"{loss:.4g}", "at lam": f"{lam:g}"}


_DRAW_CHUNK = 1 << 20  # float64 entries drawn at a time: initialisation peaks at the parameters + 8 MiB


def initial_parameters(sizes, activation, dtype, rng):
    """He-normal weights N(0, 2/n_in) before relu layers, Glorot-uniform U(+-sqrt(6/(n_in+n_out)))
    elsewhere (tanh, sigmoid, identity and the output layer); zero biases. Drawn in float64 from rng,
    then cast, so that a seed gives the same network on every backend. The draws go a block of rows at
    a time into the dtype's array (a generator's stream does not depend on how it is split), so no
    float64 copy of a whole layer is ever held."""
    weights, biases = [], []
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = layer < len(sizes) - 2
        if hidden and activation == "relu":
            draw = functools.partial(rng.normal, 0.0, np.sqrt(2.0 / n_in))
        else:
            limit = np.sqrt(6.0 / (n_in + n_out))
            draw = functools.partial(rng.uniform, -limit, limit)
        W = np.empty((n_out, n_in), dtype=dtype)
        rows = max(1, _DRAW_CHUNK // n_in)
        for start in range(0, n_out, rows):
            block = W[start:start + rows]
            block[...] = draw(size=block.shape)
        weights.append(W)
        biases.append(np.zeros(n_out, dtype=dtype))
    return weights, biases


class Network:
    """A dense network trained on the L2-regularised cost J.

    A network may be used from several threads: its methods take turns on a lock. Separate networks
    train in parallel; the cpu backend releases the GIL in its kernels.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_x, n_1, ..., n_out]``; ``[n_x, 1]`` with ``loss="logistic"`` is logistic regression.
    activation : {"relu", "tanh", "sigmoid", "identity"}
        Activation of the hidden layers.
    loss : {"softmax", "logistic", "squared_error"}
        softmax: cross-entropy over n_out >= 2 classes, integer labels 0..n_out-1.
        logistic: one sigmoid output, labels 0/1. squared_error: L = 1/2 sum_k (yhat_k - y_k)^2.
    lam : float
        lambda >= 0 of the penalty (lam / 2m) sum ||W||_F^2.
    backend : {"cpu", "numpy", "cuda"}
        Where the work runs; all compute the same thing. "cpu" (the default) is the compiled C++/OpenBLAS
        backend; "numpy" is the plain reference it is checked against.
    dtype : {"float32", "float64"}
        The dtype of parameters, computation and results.
    seed : int or None
        Seeds the initial weights and the shuffling in ``fit``.
    """

    def __init__(self, layer_sizes: Sequence[int], activation: str = "relu", loss: str = "softmax",
                 lam: float = 0.0, backend: str = "cpu", dtype: DTypeLike = "float32",
                 seed: Optional[int] = None) -> None:
        self._configure(layer_sizes, activation, loss, lam, dtype, seed)
        _validate.fits_in_memory(_validate.parameter_count(self.layer_sizes) * self._dtype.itemsize,
                                 "layer_sizes: the parameters")
        self._backend = get_backend(backend)
        init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
        weights, biases = initial_parameters(self.layer_sizes, self.activation, self.dtype,
                                             np.random.default_rng(init_seq))
        self._weights, self._biases = self._to_backend(weights), self._to_backend(biases)
        self._shuffle_rng = np.random.default_rng(shuffle_seq)

    def _configure(self, layer_sizes, activation, loss, lam, dtype, seed) -> None:
        """Checks and sets the constructor's arguments but the backend; no parameters yet."""
        self._layer_sizes = _validate.layer_sizes(layer_sizes)
        self._activation = _validate.choice(activation, "activation", _validate.ACTIVATIONS)
        self._loss = _validate.choice(loss, "loss", _validate.LOSSES)
        if loss == "logistic" and self.layer_sizes[-1] != 1:
            raise ValueError(f"layer_sizes: the logistic loss needs one output unit, got {self.layer_sizes[-1]}")
        if loss == "softmax" and self.layer_sizes[-1] < 2:
            raise ValueError("layer_sizes: the softmax loss needs at least two output units; "
                             "use loss='logistic' for two classes with one unit")
        self.lam = lam
        self._dtype = _validate.float_dtype(dtype)
        if seed is not None:
            _validate.integer(seed, "seed", 0)
        self.seed = seed
        self._optimizer_state: Optional[optim.OptimizerState] = None
        self._lock = threading.RLock()

    @classmethod
    def _holding(cls, layer_sizes: Sequence[int], activation: str, loss: str, backend: str, dtype: DTypeLike,
                 weights: Sequence[ArrayLike], biases: Sequence[ArrayLike]) -> "Network":
        """``Network(layer_sizes, activation, loss, backend=backend, dtype=dtype)`` holding copies of weights[l] (n_l,
        n_{l-1}) and biases[l] (n_l,), checked as ``set_parameters`` checks them, without drawing initial
        parameters first (the scikit-learn drop-ins make one each fit from scikit-learn's initial weights: the
        draws and the memory check were 0.2 ms of a 20 ms fit). Its shuffling generator is seeded by the OS."""
        net = cls.__new__(cls)
        net._configure(layer_sizes, activation, loss, 0.0, dtype, None)
        net._backend = get_backend(backend)
        weights, biases = _validate.parameters(weights, biases, net.layer_sizes, net.dtype)
        net._weights, net._biases = net._to_backend(weights), net._to_backend(biases)
        net._shuffle_rng = np.random.default_rng()
        return net

    # -- parameters -------------------------------------------------------------------------------

    # The architecture is fixed at construction: changing one of these would leave parameters, optimizer
    # state and backend arrays that no longer fit it. Build a new Network instead.
    @property
    def layer_sizes(self) -> Tuple[int, ...]:
        """``(n_x, n_1, ..., n_out)``, fixed at construction."""
        return self._layer_sizes

    @property
    def activation(self) -> str:
        """The hidden layers' activation, fixed at construction."""
        return self._activation

    @property
    def loss(self) -> str:
        """The loss, fixed at construction."""
        return self._loss

    @property
    def dtype(self) -> np.dtype:
        """The dtype of parameters and computation, fixed at construction."""
        return self._dtype

    @property
    def backend(self) -> str:
        """The backend's name."""
        return self._backend.name

    @property
    def lam(self) -> float:
        """lambda of the L2 penalty; may be changed between calls to ``fit``."""
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        self._lam = _validate.real(value, "lam", positive=False)

    def _to_backend(self, arrays):
        return [self._backend.from_host(a) for a in arrays]

    def _to_host(self, arrays):
        """NumPy copies of backend arrays."""
        return [np.array(self._backend.to_host(a), copy=True) for a in arrays]

    @property
    @_serialised
    def weights(self) -> List[FloatArray]:
        """NumPy copies of W[l], shape (n_l, n_{l-1}), on every backend; change them with
        ``set_parameters``."""
        return self._to_host(self._weights)

    @property
    @_serialised
    def biases(self) -> List[FloatArray]:
        """NumPy copies of b[l], shape (n_l,)."""
        return self._to_host(self._biases)

    @_serialised
    def set_parameters(self, weights: Sequence[ArrayLike], biases: Sequence[ArrayLike]) -> None:
        """Copy validated values into the network: weights[l] (n_l, n_{l-1}), biases[l] (n_l,). The
        optimizer's state (velocities, moments, schedule) starts afresh with the next ``fit``."""
        weights, biases = _validate.parameters(weights, biases, self.layer_sizes, self.dtype)
        self._weights, self._biases = self._to_backend(weights), self._to_backend(biases)
        self._optimizer_state = None

    @property
    @_serialised
    def optimizer_state(self) -> Optional[optim.OptimizerState]:
        """A copy of the state ``fit`` resumes from (optimizer, schedule, velocities or moments, step
        and epoch counts), or None before the first ``fit`` and after ``reset_optimizer``."""
        return None if self._optimizer_state is None else self._optimizer_state.copy()

    def _host_optimizer_state(self):
        """optimizer_state with its arrays as NumPy arrays (for saving and pickling)."""
        state = self._optimizer_state
        if state is None:
            return None
        state = state.copy()
        state.slots = [self._to_host(slot) for slot in state.slots]
        return state

    def _restore_optimizer_state(self, state):
        """Takes a state whose arrays are NumPy arrays (from a file or a pickle)."""
        if state is not None:
            state.slots = [self._to_backend(slot) for slot in state.slots]
        self._optimizer_state = state

    @_serialised
    def reset_optimizer(self) -> None:
        """Forgets the optimizer's state: the next ``fit`` starts with zero velocities or moments, step
        0 and the schedule at its first epoch."""
        self._optimizer_state = None

    @_serialised
    def penalty(self, m: int) -> float:
        """(lam / 2m) sum_l ||W[l]||_F^2 for a data set of m records, summed in float64."""
        m = _validate.integer(m, "m", 1)
        squares = sum(self._backend.sum_squares(W) for W in self._weights)
        return self._lam / (2 * m) * squares

    # -- evaluation ---------------------------------------------------------------------------------

    def _data(self, X, y, sample_weight=None, scan_X=True):
        """X, y and sample_weight checked and converted in the backend's memory (sample_weight None: all ones);
        a ``Dataset`` in place of X brings its own, converted once. ``scan_X=False`` leaves X's scan for NaN and
        infinity to a solver that finds them itself (``solvers.scans_X_itself``)."""
        if isinstance(X, Dataset):
            if y is not None or sample_weight is not None:
                raise ValueError("y: a Dataset brings its own y and sample_weight; pass neither beside it")
            return X.data_for(self._backend, self.layer_sizes[0], self.loss, self.layer_sizes[-1], self.dtype)
        if y is None:
            raise TypeError("y: targets are required (or pass an l2fast.Dataset(X, y) as X)")
        X = (self._backend.features(X, self.layer_sizes[0], self.dtype) if scan_X else
             self._backend.features(X, self.layer_sizes[0], self.dtype, check_finite=False))
        y = self._backend.targets(y, len(X), self.loss, self.layer_sizes[-1], self.dtype)
        if sample_weight is None:
            return X, y
        return X, y, self._backend.sample_weights(sample_weight, len(X), self.dtype)

    @_serialised
    def cost_parts(self, X: ArrayLike, y: Optional[ArrayLike] = None, sample_weight: Optional[ArrayLike] = None) -> CostParts:
        """J's two terms on (X (m, n_x), y): CostParts(data_loss, penalty), m = len(X). With
        ``sample_weight`` (m,) the data loss is (1/m) sum_i w_i L_i (m still the number of records)."""
        X, y, *w = self._data(X, y, sample_weight)
        loss_sum, _ = self._backend.evaluate(self._weights, self._biases, X, y, self.activation, self.loss, *w)
        return CostParts(loss_sum / len(X), self.penalty(len(X)))

    @_serialised
    def cost(self, X: ArrayLike, y: Optional[ArrayLike] = None, sample_weight: Optional[ArrayLike] = None) -> float:
        """J = mean data loss + (lam / 2m) sum ||W||_F^2 over (X (m, n_x), y), as a Python float; with
        ``sample_weight`` (m,), J = (1/m) sum_i w_i L_i + (lam / 2m) sum ||W||_F^2."""
        return float(sum(self.cost_parts(X, y, sample_weight)))

    @_serialised
    def gradients(self, X: ArrayLike, y: Optional[ArrayLike] = None,
                  sample_weight: Optional[ArrayLike] = None) -> Tuple[List[FloatArray], List[FloatArray]]:
        """dJ/dW[l] (n_l, n_{l-1}) and dJ/db[l] (n_l,) over all of (X, y) (weighted by ``sample_weight``
        (m,) when given): two lists of NumPy arrays in the network's dtype, summed in float64."""
        X, y, *w = self._data(X, y, sample_weight)
        dW, db, _ = self._backend.gradients(
            self._weights, self._biases, X, y, self._lam / len(X), self.activation, self.loss, *w
        )
        return ([np.asarray(self._backend.to_host(g), dtype=self.dtype) for g in dW],
                [np.asarray(self._backend.to_host(g), dtype=self.dtype) for g in db])

    def _output(self, X):
        """The backend's output for X, in the backend's array type."""
        if isinstance(X, Dataset):
            X = X.features_for(self._backend, self.layer_sizes[0], self.dtype)
        else:
            X = self._backend.features(X, self.layer_sizes[0], self.dtype)
        return self._backend.predict(self._weights, self._biases, X, self.activation, self.loss)

    @_serialised
    def predict_proba(self, X: ArrayLike) -> FloatArray:
        """Class probabilities (m, n_classes) for X (m, n_x); (m, 2) = [P(0), P(1)] for logistic. The
        array type is X's: NumPy, or CuPy for GPU arrays on the cuda backend."""
        if self.loss == "squared_error":
            raise TypeError("predict_proba: this network is a regressor (loss='squared_error'); use predict")
        out = self._output(X)
        if self.loss == "logistic":
            out = self._backend.xp.concatenate([1 - out, out], axis=1)
        return self._backend.like_input(out, X)

    @_serialised
    def predict(self, X: ArrayLike) -> Union[NDArray[np.int64], FloatArray]:
        """Class labels (m,) int64 for classification; values (m,) or (m, n_out) for regression. The
        array type is X's: NumPy, or CuPy for GPU arrays on the cuda backend."""
        out = self._output(X)
        if self.loss == "softmax":
            out = out.argmax(axis=1)
        elif self.loss == "logistic":
            out = (out[:, 0] >= 0.5).astype(np.int64)
        elif out.shape[1] == 1:
            out = out[:, 0]
        return self._backend.like_input(out, X)

    @_serialised
    def score(self, X: ArrayLike, y: Optional[ArrayLike] = None, sample_weight: Optional[ArrayLike] = None) -> float:
        """Accuracy for classification; R^2 (averaged over outputs) for regression; both weighted by
        ``sample_weight`` (m,) when given, as scikit-learn's ``accuracy_score`` and ``r2_score`` do."""
        X, y_kernel, *w = self._data(X, y, sample_weight)
        if self.loss != "squared_error" and not w:
            _, correct = self._backend.evaluate(self._weights, self._biases, X, y_kernel, self.activation,
                                                self.loss)
            return correct / len(X)
        weights = np.ones(len(X)) if not w else self._backend.to_host(w[0]).astype(np.float64)
        if self.loss != "squared_error":
            truth = self._backend.to_host(y_kernel)
            truth = truth if self.loss == "softmax" else truth[:, 0].astype(np.int64)
            right = self._backend.to_host(self._backend.xp.asarray(self.predict(X))) == truth
            return float(np.sum(weights * right) / np.sum(weights))
        pred = self._backend.to_host(self._output(X)).astype(np.float64)
        truth = self._backend.to_host(y_kernel).astype(np.float64)
        mean = np.average(truth, axis=0, weights=weights)
        residual = (weights[:, None] * (truth - pred) ** 2).sum(axis=0)
        spread = (weights[:, None] * (truth - mean) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(spread > 0, 1 - residual / spread, np.where(residual == 0, 1.0, 0.0))
        return float(r2.mean())

    # -- training -----------------------------------------------------------------------------------

    @_serialised
    def fit(self, X: ArrayLike, y: Optional[ArrayLike] = None, epochs: int = 1, lr: float = 0.1, batch_size: Optional[int] = None,
            shuffle: bool = True, validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None,
            patience: Optional[int] = None, restore_best: bool = True, progress: bool = False,
            optimizer: Union[str, optim.OptimizerSpec, solvers.LBFGS] = "sgd",
            schedule: Union[None, str, optim.ScheduleSpec] = None, tol: Optional[float] = None,
            n_iter_no_change: int = 10, sample_weight: Optional[ArrayLike] = None, comm=None,
            sharded: bool = False) -> History:
        """Minibatch gradient descent on J over X (m, n_x) and y, or L-BFGS on J itself.

        Each step: W <- W - lr (mean over the batch of dL/dW + (lam/m) W), b <- b - lr mean dL/db, with
        m = len(X), the whole training set. ``optimizer`` ("sgd", "momentum", "nesterov", "adam",
        "adamw" or an ``l2fast.SGD``, ``Momentum`` or ``Adam``) replaces that step by its own, with the
        same (lam/m) W term, coupled or decoupled (see ``l2fast.optim``); ``schedule`` (None for
        constant, "invscaling", "step", "exponential", "plateau" or an instance) sets each epoch's
        learning rate from ``lr``. Their state (velocities, moments, step and epoch counts) is kept
        on the network, so a second ``fit`` with the same optimizer and schedule goes on where the
        first stopped, as one longer call would (``save`` keeps it too); another optimizer starts
        afresh. ``batch_size=None`` is full batch; the last batch of an
        epoch may be smaller. ``shuffle`` draws a fresh seeded order each epoch (``l2fast.shuffling``).
        ``validation_data`` is an ``(X_val, y_val)`` pair scored after every epoch. Returns a ``History``.

        ``optimizer="lbfgs"`` (or an ``l2fast.LBFGS``) minimises J over the whole training set with
        SciPy's L-BFGS-B instead (see ``l2fast.solvers``): ``epochs`` is then its iteration budget, ``tol``
        its gradient tolerance, and ``lr``, ``batch_size``, ``shuffle``, ``schedule`` and ``patience`` do
        not apply (a ``batch_size``, ``schedule`` or ``patience`` is refused). It converges to J's
        minimum in far fewer passes over the data when the whole set fits in memory.

        Stopping: with ``tol``, training stops once the training cost J (with ``validation_data``: the
        validation loss) has not fallen below its best by more than ``tol`` for ``n_iter_no_change``
        epochs in a row (scikit-learn's rule), and ``History.converged`` is set. ``patience`` (needs
        ``validation_data``) is that rule with tol=0 on the validation loss. Watching validation data,
        ``restore_best`` puts the network back to the parameters of its best epoch
        (``History.best_epoch``). A fit with a stopping rule that runs out of epochs first emits
        ``l2fast.ConvergenceWarning``; without ``tol`` or ``patience`` every epoch runs and nothing is
        judged. Whatever the rule, a training cost that ends above where it started or grows tenfold
        over its best emits ``l2fast.DivergenceWarning`` with advice. ``progress=True`` shows a tqdm
        progress bar on stderr.

        X may be an ``l2fast.Dataset`` (then without y and sample_weight): its arrays are checked and
        converted once for all the calls that use it (``validation_data`` may be one too).

        ``sample_weight`` (m,) weights each record's loss: J = (1/m) sum_i w_i L_i + (lam/2m) sum ||W||^2
        with m still the number of records, so J has the minimiser of unweighted training on the records
        repeated w_i times (J is only rescaled) and of scikit-learn's ``LogisticRegression(C=1/lam)``
        with the same weights. A zero weight drops its record. Weights of 1 give the same result as no
        weights, bit for bit on cpu.

        ``comm`` (an mpi4py communicator such as ``MPI.COMM_WORLD``, with every rank of ``mpiexec -n N``
        calling ``fit``) trains data-parallel: each rank works out the gradient of its part of every minibatch
        and the ranks add them up (see ``l2fast.distributed``). Every rank holds all of X and y, or, with
        ``sharded=True``, its own shard of them (the fit then equals one on the shards concatenated in rank
        order). Rank 0's parameters are broadcast first; every rank ends with the same network.

        Every argument is checked before the first step: a refused call leaves the network unchanged.
        A NaN or infinite cost or weight raises ``DivergenceError`` and a Ctrl-C ``KeyboardInterrupt``
        (the cpu backend notices it within 10 ms); either way the network is left with the parameters
        and optimizer state it had after the last complete epoch.
        """
        return fit_together([self], X, y, epochs=epochs, lr=lr, batch_size=batch_size, shuffle=shuffle,
                            validation_data=validation_data, patience=patience, restore_best=restore_best,
                            progress=progress, optimizer=optimizer, schedule=schedule, tol=tol,
                            n_iter_no_change=n_iter_no_change, sample_weight=sample_weight, comm=comm,
                            sharded=sharded)[0]

    @_serialised
    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the network (architecture, lambda, dtype, parameters) to ``path``: a versioned ``.npz``
        without pickle, read back exactly by ``l2fast.load``. See ``l2fast.io`` for the format."""
        from l2fast import io

        io.save(self, path)

    def __getstate__(self):
        # Pickling (scikit-learn clones and caches estimators) keeps the backend by name, not the lock,
        # and the arrays as NumPy arrays.
        state = self.__dict__.copy()
        state["_backend"] = self._backend.name
        state["_weights"], state["_biases"] = self._to_host(self._weights), self._to_host(self._biases)
        state["_optimizer_state"] = self._host_optimizer_state()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        for name in ("layer_sizes", "activation", "loss", "dtype"):  # pickles from before these were read-only
            if name in state:
                state["_" + name] = state.pop(name)
        state["_backend"] = get_backend(state["_backend"])
        optimizer_state = state.pop("_optimizer_state", None)
        self.__dict__.update(state)
        self._weights, self._biases = self._to_backend(self._weights), self._to_backend(self._biases)
        self._restore_optimizer_state(optimizer_state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"Network({list(self.layer_sizes)}, activation={self.activation!r}, loss={self.loss!r}, "
                f"lam={self._lam}, backend={self.backend!r}, dtype={self.dtype.name!r})")


def fit_together(networks: Sequence[Network], X: ArrayLike, y: Optional[ArrayLike] = None, epochs: int = 1, lr: float = 0.1,
                 batch_size: Optional[int] = None, shuffle: bool = True,
                 validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None, patience: Optional[int] = None,
                 restore_best: bool = True, progress: bool = False,
                 optimizer: Union[str, optim.OptimizerSpec, solvers.LBFGS] = "sgd",
                 schedule: Union[None, str, optim.ScheduleSpec] = None, tol: Optional[float] = None,
                 n_iter_no_change: int = 10, sample_weight: Optional[ArrayLike] = None,
                 watch: Optional[str] = None, comm=None, sharded: bool = False) -> List[History]:
    """``Network.fit`` for several networks of one architecture, dtype and backend at once, which may
    differ in lam and in their parameters: one shuffled order per epoch (drawn from the first
    network's generator) and one gathered minibatch serve them all, and the backend trains them as
    one stacked model (``train_epoch_stacked``) while they step with plain SGD at one learning rate;
    other optimizers train them one after another on the same batches (L-BFGS: one solve each). Each
    network ends where its own ``fit`` with the same order would take it, up to rounding. Returns one
    History per network. With ``tol`` or ``patience`` each network stops on its own; a diverging
    network raises ``DivergenceError`` naming its lambda. ``watch`` is the figure ``tol`` watches: None
    is ``fit``'s rule (the validation loss with ``validation_data``, else the training cost J), "cost" the
    training cost J even with validation data (which is then only recorded): training to convergence. ``comm`` and ``sharded`` train data-parallel over
    MPI as in ``Network.fit`` (each network with its own steps, on the same batches).
    """
    networks = list(networks)
    if not networks or not all(isinstance(n, Network) for n in networks):
        raise TypeError("networks: expected a non-empty sequence of l2fast.Network")
    first = networks[0]
    for k, net in enumerate(networks[1:], start=1):
        if (net.layer_sizes, net.activation, net.loss, net.dtype, net.backend) != \
                (first.layer_sizes, first.activation, first.loss, first.dtype, first.backend):
            raise ValueError(f"networks[{k}]: every network needs the architecture, dtype and backend of networks[0]")
        if any(net is other for other in networks[:k]):
            raise ValueError(f"networks[{k}]: the same network appears twice")
    with contextlib.ExitStack() as locks:
        for net in sorted(networks, key=id):  # one order for every caller: no deadlock between two of them
            locks.enter_context(net._lock)
        check = functools.partial(_checked_run, first, X, y, epochs, lr, batch_size, shuffle, validation_data,
                                  patience, restore_best, progress, optimizer, schedule, tol, n_iter_no_change,
                                  sample_weight, comm is None)
        if watch is not None:
            _validate.choice(watch, "watch", ("cost",))
            if patience is not None:
                raise ValueError("watch: patience watches the validation loss; give tol to watch the cost")
            check = functools.partial(_watching_cost, check)
        if comm is None:
            if sharded is not False:
                raise ValueError("sharded: a sharded data set needs comm, the MPI communicator of its ranks")
            run = check()
        else:  # data-parallel: see l2fast.distributed
            from l2fast import distributed

            run = distributed.checked_run(comm, sharded, batch_size, networks, check)
            return run.comm.train(networks, run, _train)
        if isinstance(run.optimizer, solvers.FULL_BATCH):
            return [_solve(net, run) for net in networks]
        return _train(networks, run)


@dataclass
class _Run:
    """One fit's arguments, checked and converted (data in the backend's memory)."""

    X: object
    y: object
    sample_weight: object
    epochs: int
    lr: float
    batch_size: int
    shuffle: bool
    validation: Optional[tuple]
    restore_best: bool
    progress: bool
    optimizer: object
    schedule: object
    stopping: Optional[Tuple[float, int]]  # (tol, n) of the no-improvement rule, or None
    comm: object = None  # a data-parallel fit's distributed.Communicator
    X_scanned: bool = True  # False: the first epoch finds a NaN or infinity in X (_first_epoch_scans_X)

    @property
    def m(self) -> int:
        """The training set's records: X's, or all the ranks' together in a sharded data-parallel fit."""
        return len(self.X) if self.comm is None else self.comm.m
    watch_cost: bool = False  # the rule watches the training cost even with validation data


def _watching_cost(check):
    """check()'s run, its stopping rule watching the training cost even with validation data."""
    return replace(check(), watch_cost=True)


def _checked_run(first, X, y, epochs, lr, batch_size, shuffle, validation_data, patience, restore_best, progress,
                 optimizer, schedule, tol, n_iter_no_change, sample_weight, single_process=True):
    epoch_scans = single_process and _first_epoch_scans_X(optimizer, first, X, epochs)
    X, y, *w = first._data(X, y, sample_weight,
                           scan_X=not (epoch_scans or solvers.scans_X_itself(optimizer, first, X, epochs)))
    m = len(X)
    epochs = _validate.integer(epochs, "epochs", 0)
    lr = _validate.real(lr, "lr", positive=True)
    lbfgs = solvers.requested(optimizer)
    if lbfgs and batch_size is not None:
        raise ValueError("batch_size: L-BFGS works on the whole training set; leave batch_size=None")
    batch_size = m if batch_size is None else min(_validate.integer(batch_size, "batch_size", 1), m)
    for name, flag in (("shuffle", shuffle), ("restore_best", restore_best), ("progress", progress)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    validation = None
    if isinstance(validation_data, Dataset):
        validation = first._data(validation_data, None)[:2]
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data: expected a pair (X_val, y_val) or an l2fast.Dataset")
        validation = first._data(*validation_data)
    tol, n_iter_no_change = monitor.checked_tol(tol, n_iter_no_change)
    stopping = None if tol is None else (tol, n_iter_no_change)
    if patience is not None:
        patience = _validate.integer(patience, "patience", 1)
        if validation_data is None:
            raise ValueError("patience: early stopping watches validation_data, which is missing")
        if tol is not None:
            raise ValueError("patience: give either patience (tol=0 on the validation loss) or tol, not both")
        stopping = (0.0, patience)
    if lbfgs:
        if patience is not None or schedule is not None:
            raise ValueError(f"{'patience' if patience is not None else 'schedule'}: L-BFGS is a full-batch solver "
                             "with its own stopping rule (tol); it takes no patience or schedule")
        optimizer = solvers.resolve(optimizer, first)
        if tol is not None:
            optimizer = replace(optimizer, tol=tol)
    else:
        optimizer = optim.resolve_optimizer(optimizer)
        schedule = optim.resolve_schedule(schedule)
        if isinstance(schedule, optim.ReduceOnPlateau) and validation_data is None:
            raise ValueError("schedule: ReduceOnPlateau watches the validation cost; pass validation_data")
    return _Run(X, y, w[0] if w else None, epochs, lr, batch_size, bool(shuffle), validation, bool(restore_best),
                bool(progress), optimizer, schedule, stopping, X_scanned=not epoch_scans)


def _first_epoch_scans_X(optimizer, net, X, epochs) -> bool:
    """Whether fit may leave X's scan for NaN and infinity to the first epoch, as L-BFGS leaves it to its first pass
    (``solvers.scans_X_itself``), which saves a read of X per fit call (1.3 ms of a 100 000 x 100 logistic
    regression's 6-7 ms epoch). Every epoch reads every record, and a NaN or infinity among a record's features makes the
    first layer's weight gradient d x^T non-finite whatever d (a zero d, a dead ReLU or a zero sample weight
    multiplies; no kernel skips a record), so the first epoch ends with a non-finite loss or weight, and
    ``_scan_X_after_first_epoch`` then scans X and, when X holds one, puts every network back as it was and raises
    fit's own error. Served where that is tested for every epoch kernel: minibatch or full-batch gradient steps
    (not the solvers) on the cpu backend, with epochs to train, on a dense X the network takes as it is (a
    C-contiguous array of its dtype: a cast could also overflow, which fit's scan names), in one process."""
    return (net.backend == "cpu" and not solvers.requested(optimizer) and isinstance(epochs, numbers.Integral)
            and epochs > 0 and isinstance(X, np.ndarray) and X.dtype == net.dtype and X.flags.c_contiguous)


def _scan_X_after_first_epoch(networks, run, active, stats, saved, shuffle_states):
    """After a first epoch that ran on an unscanned X (``_first_epoch_scans_X``): when a loss or weight came out
    non-finite, X is scanned, and if it holds a NaN or infinity, every network gets its parameters, optimizer state
    and shuffle generator back and the scan's ValueError (naming X) is raised, as fit's own scan would have before
    anything changed. Otherwise (X is finite: the training diverged) the epoch's record raises DivergenceError."""
    backend = networks[0]._backend
    if all(np.isfinite(loss_sum) and backend.all_finite(networks[k]._weights + networks[k]._biases)
           for k, (loss_sum, _) in zip(active, stats)):
        return
    first = networks[0]
    try:
        backend.features(run.X, first.layer_sizes[0], first.dtype)
    except ValueError:
        for k in active:
            _restore(networks[k], saved[k])
        for net, state in zip(networks, shuffle_states):
            net._shuffle_rng.bit_generator.state = state
        raise


def _solve(net, run):
    """One network's fit with a full-batch solver (L-BFGS): its History, a ConvergenceWarning when the
    solver stopped short of its tolerance."""
    history = History()
    if run.epochs == 0:
        return history
    net._optimizer_state = None  # the solver keeps no state between fits
    saved = (net._weights, net._biases)
    bar = _progress_bar(run.epochs, run.progress, unit="iteration")
    try:
        result = solvers.solve(net, run.X, run.y, run.sample_weight, run.epochs, run.optimizer, run.validation, bar,
                               history)
    except FloatingPointError as exc:
        net._weights, net._biases = saved
        raise DivergenceError(f"fit: {exc}; the parameters are unchanged", history) from None
    finally:
        if bar is not None:
            bar.close()
    history.n_iter = int(result.nit)
    history.converged = result.status == 0
    history.message = str(result.message)
    if not net._backend.all_finite(net._weights + net._biases):
        net._weights, net._biases = saved
        raise DivergenceError("fit: L-BFGS produced a weight that is not finite; the parameters are unchanged",
                              history)
    if not history.converged:
        budget = (f"its iteration budget (epochs={run.epochs})" if result.nit >= run.epochs
                  else f"its evaluation budget (max_fun={run.optimizer.max_fun})" if result.status == 1
                  else f"iteration {result.nit}")
        monitor.warn_not_converged(
            f"fit ({run.optimizer.name})", budget, f"{history.message.strip()}; largest gradient entry still above "
            f"tol={run.optimizer.tol:g}" if result.status == 1 else history.message.strip(),
            "give it more epochs, standardise X, or raise tol")
    return history


def _optimizer_states(networks, optimizer, schedule):
    """Each network's state for this fit: its own where the optimizer (and schedule) are unchanged,
    a fresh one otherwise. Nothing is stored on the networks here."""
    states = []
    for net in networks:
        state = net._optimizer_state
        if state is None or state.optimizer != optimizer:
            state = optim.OptimizerState.fresh(optimizer, schedule, net._weights, net._biases,
                                               net._backend.xp.zeros_like)
        else:
            state = state.copy()
        if state.schedule != schedule:
            state.restart_schedule(schedule)
        states.append(state)
    return states


def _snapshot(net, state):
    """A network's parameters and optimizer state (None: none), copied: what a roll-back or restore_best
    puts back."""
    return [W.copy() for W in net._weights], [b.copy() for b in net._biases], None if state is None else state.copy()


def _restore(net, snapshot):
    net._weights, net._biases, net._optimizer_state = snapshot
    return snapshot[2]


def _run_epoch(networks, run, active, states, rates, m):
    """One epoch's steps for the active networks: stacked when they all step with plain SGD at one rate.
    Returns [(loss_sum, correct)] in the order of ``active``."""
    first = networks[0]
    backend = first._backend
    order = None
    if run.shuffle and run.batch_size < m:  # one full batch: the order only changes the summation order
        order = shuffling.epoch_order(first._shuffle_rng, m)
        for k in active[1:]:
            networks[k]._shuffle_rng.bit_generator.state = first._shuffle_rng.bit_generator.state
    if run.comm is not None:
        return run.comm.run_epoch(networks, run, active, states, rates, order)
    stepper = None if run.optimizer.name == "sgd" else run.optimizer  # backends: None is the fused SGD step
    # run.X came through features() or a Dataset, which scanned it for NaN and infinity (or the first epoch finds
    # them: _first_epoch_scans_X): not again per epoch
    # (a NaN written into the caller's array meanwhile by another thread makes the cost non-finite, which
    # ends the fit with DivergenceError, never a crash)
    if len(active) == 1 or stepper is not None or len(set(rates.values())) > 1:
        return [backend.train_epoch(networks[k]._weights, networks[k]._biases, run.X, run.y, order, run.batch_size,
                                    rates[k], networks[k]._lam / m, first.activation, first.loss, stepper,
                                    states[k].slots, states[k].step, sample_weight=run.sample_weight,
                                    check_finite=False)
                for k in active]
    return backend.train_epoch_stacked(
        [networks[k]._weights for k in active], [networks[k]._biases for k in active], run.X, run.y, order,
        run.batch_size, rates[active[0]], [networks[k]._lam / m for k in active], first.activation, first.loss,
        sample_weight=run.sample_weight, check_finite=False)


def _train(networks, run):
    """The epoch loop: steps, bookkeeping, stopping, roll-back on Ctrl-C or divergence, warnings."""
    first = networks[0]
    m = run.m
    if run.epochs == 0:  # nothing to train: the optimizer state stays as it was
        return [History() for _ in networks]
    previous = [net._optimizer_state for net in networks]  # what a roll-back in the first epoch puts back
    states = _optimizer_states(networks, run.optimizer, run.schedule)
    for net, state in zip(networks, states):
        net._optimizer_state = state
    steps_per_epoch = -(-m // run.batch_size)
    backend = first._backend
    histories = [History() for _ in networks]
    start_penalty = [net.penalty(m) for net in networks]
    watch_validation = run.validation is not None and not run.watch_cost
    rules = [None if run.stopping is None else monitor.NoImprovement(*run.stopping) for _ in networks]
    best = [None] * len(networks)  # per network, watching validation data: the snapshot of its best epoch
    active = list(range(len(networks)))
    bar = _progress_bar(run.epochs, run.progress if run.comm is None else run.comm.show_progress(run.progress))
    shuffle_states = None if run.X_scanned else [net._shuffle_rng.bit_generator.state for net in networks]
    try:
        for epoch in range(run.epochs):
            if not active:
                break
            # The epoch's starting point: a Ctrl-C (until the epoch is recorded) or a divergence puts a
            # network back to it, optimizer state and schedule included.
            saved = {k: _snapshot(networks[k], states[k] if epoch else previous[k]) for k in active}
            rates = {k: states[k].lr(run.lr) for k in active}
            try:
                start = time.perf_counter()
                stats = _run_epoch(networks, run, active, states, rates, m)
                seconds = time.perf_counter() - start
                if epoch == 0 and not run.X_scanned:
                    _scan_X_after_first_epoch(networks, run, active, stats, saved, shuffle_states)
                for k, (loss_sum, correct) in zip(list(active), stats):
                    _record_epoch(networks[k], histories[k], states[k], saved[k], run, epoch, loss_sum, correct,
                                  seconds, rates[k], steps_per_epoch, len(networks) > 1)
            except KeyboardInterrupt:
                for k in active:
                    states[k] = _restore(networks[k], saved[k])
                raise
            for k in list(active):
                history, rule = histories[k], rules[k]
                history.n_iter += 1
                if rule is None:
                    continue
                if rule.update(history.val_loss[-1] if watch_validation else history.cost[-1]) and watch_validation:
                    best[k] = _snapshot(networks[k], states[k])
                    history.best_epoch = epoch + 1
                if rule.done:
                    history.stopped_early = history.converged = True
                    active.remove(k)
            if bar is not None:
                bar.update(1)
                last = histories[0]
                if len(networks) > 1 and last.val_loss:
                    bar.set_postfix(_best_so_far(networks, histories))
                else:
                    bar.set_postfix(cost=f"{last.cost[-1]:.4g}",
                                    **({"val_loss": f"{last.val_loss[-1]:.4g}"} if last.val_loss else {}))
    finally:
        if bar is not None:
            bar.close()
    for k, (net, history) in enumerate(zip(networks, histories)):
        if run.restore_best and best[k] is not None:
            states[k] = _restore(net, best[k])
        who = "fit" + (f" (lam={net.lam:g})" if len(networks) > 1 else "")
        if history.loss:
            monitor.warn_if_rising(history, history.loss[0] + start_penalty[k], steps_per_epoch == 1, run.X,
                                   backend.xp, who)
        if rules[k] is not None and not history.converged and run.epochs > 0:
            tol, n = run.stopping
            watched = "validation loss" if watch_validation else "training cost"
            monitor.warn_not_converged(
                who, f"its epoch budget (epochs={run.epochs})",
                f"the {watched} still fell by more than tol={tol:g} within the last n_iter_no_change={n} epochs",
                "give it more epochs, a larger learning rate or another optimizer, or raise tol")
    return histories


def _record_epoch(net, history, state, saved, run, epoch, loss_sum, correct, seconds, lr, steps, name_lam):
    """Appends an epoch's figures to the history (scoring validation data), checks for divergence and moves
    the optimizer's step and schedule on."""
    m = run.m
    history.seconds.append(seconds)
    history.lr.append(lr)
    backend = net._backend
    if not (np.isfinite(loss_sum) and backend.all_finite(net._weights + net._biases)):
        _restore(net, saved)
        raise DivergenceError(
            f"fit: training diverged in epoch {epoch + 1} (the cost became "
            f"{'NaN' if np.isnan(loss_sum) else loss_sum / m} or a weight stopped being finite) "
            f"with lr={lr}" + (f" for lam={net.lam}" if name_lam else "") +
            f"; the parameters are those after epoch {epoch}. Try a smaller learning rate.", history)
    history.loss.append(loss_sum / m)
    history.cost.append(loss_sum / m + net.penalty(m))
    if net.loss != "squared_error":
        history.accuracy.append(correct / m)
    if run.validation is not None:
        X_val, y_val = run.validation
        val_sum, val_correct = backend.evaluate(net._weights, net._biases, X_val, y_val, net.activation, net.loss,
                                                check_finite=False)  # checked by the fit's _data, as run.X
        n_val = len(X_val)
        if run.comm is not None:
            val_sum, val_correct, n_val = run.comm.validation_sums(val_sum, val_correct, n_val)
        history.val_loss.append(val_sum / n_val)
        history.val_cost.append(val_sum / n_val + net.penalty(n_val))
        if net.loss != "squared_error":
            history.val_accuracy.append(val_correct / n_val)
    state.step += steps
    state.end_epoch(history.val_cost[-1] if run.validation is not None else None)
