"""The model: an L2-regularised dense network, its parameters, cost, prediction and training.

    J(W, b) = (1/m) sum_i L(yhat_i, y_i) + (lam / 2m) sum_l ||W[l]||_F^2

with m the number of records and biases never penalised. Every computation is delegated to the
backend chosen by name; this file holds what is the same on all of them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from l2fast import _validate, optim
from l2fast.backends import get_backend

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


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite cost or weight; the network keeps the parameters of the
    last epoch that stayed finite. ``history`` holds the epochs completed before it."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history


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


def initial_parameters(sizes, activation, dtype, rng):
    """He-normal weights N(0, 2/n_in) before relu layers, Glorot-uniform U(+-sqrt(6/(n_in+n_out)))
    elsewhere (tanh, sigmoid, identity and the output layer); zero biases. Drawn in float64 from rng,
    then cast, so that a seed gives the same network on every backend."""
    weights, biases = [], []
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = layer < len(sizes) - 2
        if hidden and activation == "relu":
            W = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_out, n_in))
        else:
            limit = np.sqrt(6.0 / (n_in + n_out))
            W = rng.uniform(-limit, limit, size=(n_out, n_in))
        weights.append(np.ascontiguousarray(W, dtype=dtype))
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
        self.layer_sizes = _validate.layer_sizes(layer_sizes)
        self.activation = _validate.choice(activation, "activation", _validate.ACTIVATIONS)
        self.loss = _validate.choice(loss, "loss", _validate.LOSSES)
        if loss == "logistic" and self.layer_sizes[-1] != 1:
            raise ValueError(f"layer_sizes: the logistic loss needs one output unit, got {self.layer_sizes[-1]}")
        if loss == "softmax" and self.layer_sizes[-1] < 2:
            raise ValueError("layer_sizes: the softmax loss needs at least two output units; "
                             "use loss='logistic' for two classes with one unit")
        self.lam = lam
        self.dtype = _validate.float_dtype(dtype)
        if seed is not None:
            _validate.integer(seed, "seed", 0)
        self.seed = seed
        self._backend = get_backend(backend)
        init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
        weights, biases = initial_parameters(self.layer_sizes, self.activation, self.dtype,
                                             np.random.default_rng(init_seq))
        self._weights, self._biases = self._to_backend(weights), self._to_backend(biases)
        self._shuffle_rng = np.random.default_rng(shuffle_seq)
        self._optimizer_state: Optional[optim.OptimizerState] = None
        self._lock = threading.RLock()

    # -- parameters -------------------------------------------------------------------------------

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

    def _data(self, X, y):
        X = self._backend.features(X, self.layer_sizes[0], self.dtype)
        return X, self._backend.targets(y, len(X), self.loss, self.layer_sizes[-1], self.dtype)

    @_serialised
    def cost_parts(self, X: ArrayLike, y: ArrayLike) -> CostParts:
        """J's two terms on (X (m, n_x), y): CostParts(data_loss, penalty), m = len(X)."""
        X, y = self._data(X, y)
        loss_sum, _ = self._backend.evaluate(self._weights, self._biases, X, y, self.activation, self.loss)
        return CostParts(loss_sum / len(X), self.penalty(len(X)))

    @_serialised
    def cost(self, X: ArrayLike, y: ArrayLike) -> float:
        """J = mean data loss + (lam / 2m) sum ||W||_F^2 over (X (m, n_x), y), as a Python float."""
        return float(sum(self.cost_parts(X, y)))

    @_serialised
    def gradients(self, X: ArrayLike, y: ArrayLike) -> Tuple[List[FloatArray], List[FloatArray]]:
        """dJ/dW[l] (n_l, n_{l-1}) and dJ/db[l] (n_l,) over all of (X, y): two lists of NumPy arrays."""
        X, y = self._data(X, y)
        dW, db, _ = self._backend.gradients(
            self._weights, self._biases, X, y, self._lam / len(X), self.activation, self.loss
        )
        return self._to_host(dW), self._to_host(db)

    def _output(self, X):
        """The backend's output for X, in the backend's array type."""
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
    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Accuracy for classification; R^2 (averaged over outputs) for regression."""
        X, y_kernel = self._data(X, y)
        if self.loss != "squared_error":
            _, correct = self._backend.evaluate(self._weights, self._biases, X, y_kernel, self.activation,
                                                self.loss)
            return correct / len(X)
        pred = self._backend.to_host(self._output(X)).astype(np.float64)
        truth = self._backend.to_host(y_kernel).astype(np.float64)
        residual = ((truth - pred) ** 2).sum(axis=0)
        spread = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(spread > 0, 1 - residual / spread, np.where(residual == 0, 1.0, 0.0))
        return float(r2.mean())

    # -- training -----------------------------------------------------------------------------------

    @_serialised
    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, lr: float = 0.1, batch_size: Optional[int] = None,
            shuffle: bool = True, validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None,
            patience: Optional[int] = None, restore_best: bool = True, progress: bool = False,
            optimizer: Union[str, optim.OptimizerSpec] = "sgd",
            schedule: Union[None, str, optim.ScheduleSpec] = None) -> History:
        """Minibatch gradient descent on J over X (m, n_x) and y.

        Each step: W <- W - lr (mean over the batch of dL/dW + (lam/m) W), b <- b - lr mean dL/db, with
        m = len(X), the whole training set. ``optimizer`` ("sgd", "momentum", "nesterov", "adam",
        "adamw" or an ``l2fast.SGD``, ``Momentum`` or ``Adam``) replaces that step by its own, with the
        same (lam/m) W term, coupled or decoupled (see ``l2fast.optim``); ``schedule`` (None for
        constant, "invscaling", "step", "exponential", "plateau" or an instance) sets each epoch's
        learning rate from ``lr``. Their state (velocities, moments, step and epoch counts) is kept
        on the network, so a second ``fit`` with the same optimizer and schedule goes on where the
        first stopped, as one longer call would (``save`` keeps it too); another optimizer starts
        afresh. ``batch_size=None`` is full batch; the last batch of an
        epoch may be smaller. ``shuffle`` draws a fresh seeded order each epoch. ``validation_data`` is
        an ``(X_val, y_val)`` pair scored after every epoch. Returns a ``History``.

        Early stopping: with ``patience`` (needs ``validation_data``), training stops once the
        validation data loss has not improved for that many epochs, and with ``restore_best`` the
        network goes back to the parameters of its best epoch (``History.best_epoch``).
        ``progress=True`` shows a tqdm progress bar on stderr.

        Every argument is checked before the first step: a refused call leaves the network unchanged.
        A NaN or infinite cost or weight raises ``DivergenceError`` and a Ctrl-C ``KeyboardInterrupt``
        (the cpu backend notices it within 10 ms); either way the network is left with the parameters
        it had after the last complete epoch.
        """
        return fit_together([self], X, y, epochs=epochs, lr=lr, batch_size=batch_size, shuffle=shuffle,
                            validation_data=validation_data, patience=patience, restore_best=restore_best,
                            progress=progress, optimizer=optimizer, schedule=schedule)[0]

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
        state["_backend"] = get_backend(state["_backend"])
        optimizer_state = state.pop("_optimizer_state", None)
        self.__dict__.update(state)
        self._weights, self._biases = self._to_backend(self._weights), self._to_backend(self._biases)
        self._restore_optimizer_state(optimizer_state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"Network({list(self.layer_sizes)}, activation={self.activation!r}, loss={self.loss!r}, "
                f"lam={self._lam}, backend={self.backend!r}, dtype={self.dtype.name!r})")


def fit_together(networks: Sequence[Network], X: ArrayLike, y: ArrayLike, epochs: int = 1, lr: float = 0.1,
                 batch_size: Optional[int] = None, shuffle: bool = True,
                 validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None, patience: Optional[int] = None,
                 restore_best: bool = True, progress: bool = False,
                 optimizer: Union[str, optim.OptimizerSpec] = "sgd",
                 schedule: Union[None, str, optim.ScheduleSpec] = None) -> List[History]:
    """``Network.fit`` for several networks of one architecture, dtype and backend at once, which may
    differ in lam and in their parameters: one shuffled order per epoch (drawn from the first
    network's generator) and one gathered minibatch serve them all, and the backend trains them as
    one stacked model (``train_epoch_stacked``) while they step with plain SGD at one learning rate;
    other optimizers train them one after another on the same batches. Each network ends where its
    own ``fit`` with the same order would take it, up to rounding. Returns one History per network. With ``patience`` each
    network stops on its own; a diverging network raises ``DivergenceError`` naming its lambda.
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
        return _train(networks, X, y, epochs, lr, batch_size, shuffle, validation_data, patience, restore_best,
                      progress, optimizer, schedule)


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


def _train(networks, X, y, epochs, lr, batch_size, shuffle, validation_data, patience, restore_best, progress,
           optimizer, schedule):
    first = networks[0]
    X, y = first._data(X, y)
    m = len(X)
    epochs = _validate.integer(epochs, "epochs", 0)
    lr = _validate.real(lr, "lr", positive=True)
    batch_size = m if batch_size is None else min(_validate.integer(batch_size, "batch_size", 1), m)
    for name, flag in (("shuffle", shuffle), ("restore_best", restore_best), ("progress", progress)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data: expected a pair (X_val, y_val)")
        X_val, y_val = first._data(*validation_data)
    if patience is not None:
        patience = _validate.integer(patience, "patience", 1)
        if validation_data is None:
            raise ValueError("patience: early stopping watches validation_data, which is missing")
    optimizer = optim.resolve_optimizer(optimizer)
    schedule = optim.resolve_schedule(schedule)
    if isinstance(schedule, optim.ReduceOnPlateau) and validation_data is None:
        raise ValueError("schedule: ReduceOnPlateau watches the validation cost; pass validation_data")
    states = _optimizer_states(networks, optimizer, schedule)
    for net, state in zip(networks, states):
        net._optimizer_state = state
    steps_per_epoch = -(-m // batch_size)
    stepper = None if optimizer.name == "sgd" else optimizer  # backends: None is the fused SGD step
    classifier = first.loss != "squared_error"
    backend = first._backend
    histories = [History() for _ in networks]
    best = [None] * len(networks)  # per network: (validation loss, weights, biases, state) of its best epoch
    active = list(range(len(networks)))
    bar = _progress_bar(epochs, progress)
    try:
        for epoch in range(epochs):
            if not active:
                break
            # The epoch's starting point: a Ctrl-C or a divergence puts a network back to it.
            saved = {k: ([W.copy() for W in networks[k]._weights], [b.copy() for b in networks[k]._biases],
                         states[k].copy()) for k in active}
            rates = {k: states[k].lr(lr) for k in active}
            start = time.perf_counter()
            try:
                order = first._shuffle_rng.permutation(m) if shuffle else None
                for k in active[1:] if shuffle else ():
                    networks[k]._shuffle_rng.bit_generator.state = first._shuffle_rng.bit_generator.state
                if len(active) == 1 or optimizer.name != "sgd" or len(set(rates.values())) > 1:
                    stats = []
                    for k in active:
                        net, state = networks[k], states[k]
                        stats.append(backend.train_epoch(
                            net._weights, net._biases, X, y, order, batch_size, rates[k], net._lam / m,
                            first.activation, first.loss, stepper, state.slots, state.step))
                else:
                    stats = backend.train_epoch_stacked(
                        [networks[k]._weights for k in active], [networks[k]._biases for k in active], X, y, order,
                        batch_size, rates[active[0]], [networks[k]._lam / m for k in active], first.activation,
                        first.loss)
            except KeyboardInterrupt:
                for k in active:
                    networks[k]._weights, networks[k]._biases, states[k] = saved[k]
                    networks[k]._optimizer_state = states[k]
                raise
            seconds = time.perf_counter() - start
            for k, (loss_sum, correct) in zip(list(active), stats):
                net, history = networks[k], histories[k]
                history.seconds.append(seconds)
                history.lr.append(rates[k])
                if not (np.isfinite(loss_sum) and backend.all_finite(net._weights + net._biases)):
                    net._weights, net._biases, states[k] = saved[k]
                    net._optimizer_state = states[k]
                    raise DivergenceError(
                        f"fit: training diverged in epoch {epoch + 1} (the cost became "
                        f"{'NaN' if np.isnan(loss_sum) else loss_sum / m} or a weight stopped being finite) "
                        f"with lr={rates[k]}" + (f" for lam={net.lam}" if len(networks) > 1 else "") +
                        f"; the parameters are those after epoch {epoch}. Try a smaller learning rate.", history)
                history.loss.append(loss_sum / m)
                history.cost.append(loss_sum / m + net.penalty(m))
                if classifier:
                    history.accuracy.append(correct / m)
                if validation_data is not None:
                    val_sum, val_correct = backend.evaluate(net._weights, net._biases, X_val, y_val, net.activation,
                                                            net.loss)
                    history.val_loss.append(val_sum / len(X_val))
                    history.val_cost.append(val_sum / len(X_val) + net.penalty(len(X_val)))
                    if classifier:
                        history.val_accuracy.append(val_correct / len(X_val))
                states[k].step += steps_per_epoch
                states[k].end_epoch(history.val_cost[-1] if validation_data is not None else None)
                if patience is not None:
                    if best[k] is None or history.val_loss[-1] < best[k][0]:
                        best[k] = (history.val_loss[-1], [W.copy() for W in net._weights],
                                   [b.copy() for b in net._biases], states[k].copy())
                        history.best_epoch = epoch + 1
                    elif epoch + 1 - history.best_epoch >= patience:
                        history.stopped_early = True
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
    if restore_best:
        for net, kept in zip(networks, best):
            if kept is not None:
                net._weights, net._biases, net._optimizer_state = kept[1], kept[2], kept[3]
    return histories
