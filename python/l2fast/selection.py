"""Choosing lambda on a development set: train one network per lambda, compare them on data they did
not see, keep the best.

    sweep = l2fast.select_lambda(X_train, y_train, X_dev, y_dev, lams=[0, 0.1, 1, 10],
                                 layer_sizes=[64, 128, 10], lr=0.1, batch_size=32)
    print(sweep.table())
    net = sweep.best_network

Every network of a sweep starts from the same weights (one seed) and sees the records in the same
order, so lambda is the only difference between them. By default each one trains until its training
cost J has converged, so that what is compared is each lambda's minimiser of J, not how far a fixed
number of epochs took it. The losses compared are data losses, without the penalty: the penalty is
part of training, not of how well a network generalises.

The penalty is (lambda / 2m) sum ||W||^2, so what a lambda does depends on lambda / m: the same grid
of lambdas means less and less as the training set grows. Without ``lams``, the grid is
``lambda_grid(m)``, 0 and m times 1e-4 .. 0.1. When the development losses of the whole grid lie
within their noise of the best one, ``select_lambda`` warns (``NoisyChoiceWarning``).

A sweep is a list of tasks, each one stacked group of networks (a chunk of the lambdas, for one architecture,
seed and fold of the data) trained by ``_train_group``; they run here one after the other, or on any
``concurrent.futures.Executor`` (a Dask cluster's, a process pool, MPI's), with the same results. ``_Sweep``
holds a sweep's checked options and makes its tasks and Selections; ``l2fast.search.select_network`` runs
the sweeps of several architectures and seeds through it as one list of tasks.
"""
from __future__ import annotations

import concurrent.futures
import math
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from l2fast import _validate
from l2fast.dataset import Dataset
from l2fast.network import History, Network, _best_so_far, _progress_bar, fit_together

CRITERIA = ("loss", "accuracy")
LAMBDA_OVER_M = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # the default grid, in units of m
NOISE_CHUNKS = 20  # the development set is scored in this many parts to measure its noise
NOISE_SE = 2.0  # a difference of dev losses within this many standard errors is noise
EPOCH_CAP = 1000  # without epochs, each run trains to convergence within this many epochs
DEFAULT_TOL = 1e-4  # ... until its training cost has not fallen by more than this for n_iter_no_change epochs


class NoisyChoiceWarning(UserWarning):
    """Every lambda of a sweep scored within the noise of the best one on the development data: the
    choice says little. Train longer, widen the grid, or use more development records."""


def lambda_grid(m: int) -> List[float]:
    """The default lambdas for m training records: 0 and m times 1e-4, 3e-4, ..., 0.1.

    The penalty (lambda / 2m) sum ||W||^2 acts through lambda / m (each step shrinks W by lr lambda / m),
    so a grid that means the same at every m scales with m."""
    m = _validate.integer(m, "m", 1)
    return [0.0] + [float(f"{m * ratio:.6g}") for ratio in LAMBDA_OVER_M]


def spread(values) -> float:
    """The standard deviation (ddof=1) of a few repeated figures (folds, seeds); 0 for fewer than two."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass
class LambdaResult:
    """One lambda of a sweep: data losses (no penalty) and accuracies on training and development data.

    With cross-validation (``cv=k``) each figure is the mean over the k folds (training figures on each
    fold's training part), ``fold_dev_losses`` holds the k development losses, ``history`` is the first
    fold's and ``fold_histories`` all k."""

    lam: float
    train_loss: float
    dev_loss: float
    train_accuracy: Optional[float]
    dev_accuracy: Optional[float]
    history: History = field(repr=False)
    dev_loss_se: float = 0.0  # the standard error of dev_loss: a mean over development records, or over folds
    fold_dev_losses: List[float] = field(default_factory=list)  # cv: each fold's development loss
    fold_histories: List[History] = field(repr=False, default_factory=list)  # cv: each fold's History

    @property
    def gap(self) -> float:
        """Development loss minus training loss: how much the network overfits."""
        return self.dev_loss - self.train_loss

    @property
    def dev_loss_sd(self) -> float:
        """cv: the spread (standard deviation) of the development loss over the folds; 0 without cv."""
        return spread(self.fold_dev_losses)


@dataclass
class Selection:
    """The outcome of ``select_lambda``: every lambda's figures, the chosen lambda and its network.

    Without cv, ``networks`` holds one trained network per lambda and ``best_network`` is the chosen
    one's. With ``cv=k``, ``fold_networks[i]`` holds lambda i's k fold networks, ``networks`` is empty,
    and ``best_network`` is the chosen lambda refitted on all the training data (``refit=True``), or
    None (``refit=False``)."""

    results: List[LambdaResult]
    best_lam: float
    best_network: Optional[Network]
    criterion: str
    networks: List[Network] = field(repr=False, default_factory=list)  # one per lambda, in order
    meaningful: bool = True  # False when every lambda's dev loss lies within its noise of the best one
    fold_networks: List[List[Network]] = field(repr=False, default_factory=list)  # cv: per lambda, per fold

    def table(self) -> str:
        """The sweep as a text table, the chosen lambda marked with '*': per lambda the training and
        development data losses, the development loss's standard error (with cv: its spread over the
        folds, the loss being their mean), the gap between them and, for classification, the
        accuracies."""
        cv = bool(self.results[0].fold_dev_losses)
        lines = [table_head(self.results, "(sd)" if cv else "(se)")]
        for r in self.results:
            lines.append(table_row(r, r.dev_loss_sd if cv else r.dev_loss_se) + (" *" if r.lam == self.best_lam else ""))
        if cv:
            lines.append(f"(mean over {len(self.results[0].fold_dev_losses)} folds; sd: the spread over the folds)")
        return "\n".join(lines)


def table_head(results, spread):
    """The head of a sweep's table, for results of one kind (LambdaResults or the like); spread: its label."""
    head = f"{'lambda':>10} {'train loss':>11} {'dev loss':>9} {spread:>8} {'gap':>8}"
    return head + (f" {'train acc':>10} {'dev acc':>8}" if results[0].dev_accuracy is not None else "")


def table_row(r, spread):
    """One result's line of a sweep's table: its lambda, losses, the dev loss's spread, gap and accuracies."""
    line = f"{r.lam:>10.4g} {r.train_loss:>11.4f} {r.dev_loss:>9.4f} {f'({spread:.4f})':>8} {r.gap:>8.4f}"
    return line + (f" {r.train_accuracy:>10.3f} {r.dev_accuracy:>8.3f}" if r.dev_accuracy is not None else "")


def _hold_out_rows(m, fraction, seed):
    """A seeded split of m records into (training rows, development rows), fraction going to development."""
    n_dev = int(round(fraction * m))
    if not 1 <= n_dev < m:
        raise ValueError(f"validation_fraction: {fraction} of {m} records leaves no training or no "
                         "development records")
    order = np.random.default_rng(seed).permutation(m)
    return order[n_dev:], order[:n_dev]


def _cv_rows(y, k, seed, classify):
    """k seeded folds of the records as (training rows, development rows) pairs; for classification each
    fold holds each class in proportion (the records of a class dealt out in turn, in a seeded order)."""
    m = len(y)
    if k > m:
        raise ValueError(f"cv: {k} folds need at least {k} records, got {m}")
    order = np.random.default_rng(seed).permutation(m)
    if classify:
        labels = y.get() if hasattr(y, "__cuda_array_interface__") and hasattr(y, "get") else np.asarray(y)
        order = order[np.argsort(labels[order], kind="stable")]
    fold_of = np.empty(m, dtype=np.int64)
    fold_of[order] = np.arange(m) % k
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


def _checked_cv(cv, m):
    """cv as a list of (training rows, development rows) pairs: k folds from an integer k >= 2, or the
    pairs given (a scikit-learn splitter's ``split(X, y)``)."""
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, (bool, np.bool_)):
        _validate.integer(cv, "cv", 2)
        return None
    if not hasattr(cv, "__iter__") or isinstance(cv, (str, bytes)):
        raise TypeError(f"cv: expected a number of folds or (training rows, development rows) pairs, got {cv!r}")
    pairs = []
    for f, pair in enumerate(cv):
        if len(pair) != 2:
            raise ValueError(f"cv[{f}]: expected a pair (training rows, development rows)")
        rows = [np.asarray(part) for part in pair]
        for part, name in zip(rows, ("training", "development")):
            if part.ndim != 1 or part.size == 0 or not np.issubdtype(part.dtype, np.integer) \
                    or part.min() < 0 or part.max() >= m:
                raise ValueError(f"cv[{f}]: the {name} rows must be a non-empty list of row numbers below {m}")
        pairs.append(tuple(rows))
    if len(pairs) < 2:
        raise ValueError("cv: need at least two folds")
    return pairs


def _rows(arrays, rows):
    """The arrays (X, y, sample_weight: None stays None) restricted to rows; all of them when rows is None."""
    return arrays if rows is None else tuple(None if a is None else a[rows] for a in arrays)


def _row_ready(a):
    """An array in a form whose rows can be taken: NumPy, a GPU array where it lies, scipy.sparse as CSR."""
    if a is None or hasattr(a, "__cuda_array_interface__"):
        return a
    return a.tocsr() if _validate.is_sparse(a) else np.asarray(a)


def _data(X, y, name):
    """(X, y, sample_weight) from arrays or an ``l2fast.Dataset`` (whose y and weights come with it)."""
    if isinstance(X, Dataset):
        if y is not None:
            raise ValueError(f"{name}: a Dataset brings its own y; pass None beside it")
        if X.y is None:
            raise ValueError(f"{name}: this Dataset has no y; build it as l2fast.Dataset(X, y)")
        return _row_ready(X.X), _row_ready(X.y), _row_ready(X.sample_weight)
    if y is None:
        raise TypeError(f"{name}: targets are required (or pass an l2fast.Dataset(X, y) as X)")
    return _row_ready(X), _row_ready(y), None


def _noise_parts(dev):
    """The development rows cut into NOISE_CHUNKS Datasets (fewer for few records; none for one record)."""
    X, y = dev.X, dev.y
    rows = X.shape[0]
    bounds = np.linspace(0, rows, min(NOISE_CHUNKS, rows) + 1).astype(int)
    if len(bounds) < 3:
        return []
    return [Dataset(X[start:stop], y[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]


def _train_group(spec, data, rows, lams, progress=False):
    """One task of a sweep: the networks of ``lams`` trained together on one fold, and their figures.

    spec: the network's and fit's options; data: (X, y, w, X_dev, y_dev, w_dev) as host arrays (None
    where absent); rows: (training rows, development rows) of X, or None for X whole with the given
    development data (None too: a refit, scored on its training data only). Returns per lambda a dict of
    the trained network, its History, its figures and its development loss on NOISE_CHUNKS parts."""
    X, y, w, X_dev, y_dev, w_dev = data
    train_rows, dev_rows = (None, None) if rows is None else rows
    train = Dataset(*_rows((X, y, w), train_rows))
    if dev_rows is not None:
        dev = Dataset(*_rows((X, y, w), dev_rows))
    else:
        dev = None if X_dev is None else Dataset(X_dev, y_dev, w_dev)
    networks = [Network(lam=lam, **spec["network"]) for lam in lams]
    fit = dict(spec["fit"], validation_data=dev)
    if spec["stacked"]:
        histories = fit_together(networks, train, progress=progress, **fit)
    else:
        histories = []
        bar = _progress_bar(len(lams), progress, unit="lambda")
        try:
            for net in networks:
                histories += fit_together([net], train, **fit)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_best_so_far(networks[:len(histories)], histories))
        finally:
            if bar is not None:
                bar.close()
    parts = [] if dev is None else _noise_parts(dev)
    classify = networks[0].loss != "squared_error"
    return [dict(network=net, history=history,
                 train_loss=net.cost_parts(train).data_loss,
                 train_accuracy=net.score(train) if classify else None,
                 dev_loss=None if dev is None else net.cost_parts(dev).data_loss,
                 dev_accuracy=net.score(dev) if classify and dev is not None else None,
                 part_losses=np.array([net.cost_parts(part).data_loss for part in parts]))
            for net, history in zip(networks, histories)]


def _engine(executor):
    """(the executor to submit to, the Dask client behind it or None); a Dask ``Client`` gives its executor.
    Dask is recognised by its module's name: l2fast imports no engine."""
    if executor is None:
        return None, None
    if type(executor).__module__.split(".")[0] == "distributed":
        if hasattr(executor, "get_executor"):  # a distributed.Client
            return executor.get_executor(), executor
        return executor, getattr(executor, "_client", None)  # a ClientExecutor
    if not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(f"executor: expected a concurrent.futures.Executor (or a Dask Client), got "
                        f"{type(executor).__name__}")
    return executor, None


def _run_tasks(tasks, data, pool, progress):
    """Runs the tasks [(spec, rows, lams)] here (pool None) or on the pool; returns their outcomes in task order.
    The first task to raise cancels those not started and raises here, with its own error."""
    if pool is None and len(tasks) == 1:  # one group here: its own bar, over the epochs
        spec, rows, lams = tasks[0]
        return [_train_group(spec, data, rows, lams, progress)]
    outcomes = [None] * len(tasks)
    bar = _progress_bar(len(tasks), progress, unit="task")
    try:
        if pool is None:
            for t, (spec, rows, lams) in enumerate(tasks):
                outcomes[t] = _train_group(spec, data, rows, lams)
                _show(bar, outcomes)
            return outcomes
        futures = {pool.submit(_train_group, spec, data, rows, lams): t for t, (spec, rows, lams) in enumerate(tasks)}
        try:
            for future in concurrent.futures.as_completed(futures):
                outcomes[futures[future]] = future.result()
                _show(bar, outcomes)
        finally:
            for future in futures:
                future.cancel()
        return outcomes
    finally:
        if bar is not None:
            bar.close()


def _show(bar, outcomes):
    """The task bar moves on, showing the best development loss so far and its lambda."""
    if bar is None:
        return
    bar.update(1)
    done = [o for outcome in outcomes if outcome is not None for o in outcome if o["dev_loss"] is not None]
    if done:
        best = min(done, key=lambda o: o["dev_loss"])
        bar.set_postfix({"best dev_loss": f"{best['dev_loss']:.4g}", "at lam": f"{best['network'].lam:g}"})


def select_lambda(X_train: ArrayLike, y_train: Optional[ArrayLike] = None, X_dev: Optional[ArrayLike] = None,
                  y_dev: Optional[ArrayLike] = None, lams: Optional[Sequence[float]] = None, *,
                  layer_sizes: Sequence[int], activation: str = "relu", loss: str = "softmax",
                  backend: str = "cpu", dtype: str = "float32", seed: int = 0, epochs: Optional[int] = None,
                  lr: float = 0.1, batch_size: Optional[int] = None, shuffle: bool = True,
                  patience: Optional[int] = None, validation_fraction: float = 0.2, criterion: str = "loss",
                  stacked: bool = True, progress: bool = True, tol: Optional[float] = None,
                  n_iter_no_change: int = 10, cv=None, refit: bool = True, executor=None,
                  chunk_size: Optional[int] = None) -> Selection:
    """Trains one network per lambda in ``lams`` and picks the best on the development data.

    X_train (m, n_x) and y_train train every network; X_dev, y_dev judge them. Either may be an
    ``l2fast.Dataset`` in place of X (its y and sample weights come with it; then pass None for y).
    Without a development set, a seeded ``validation_fraction`` of the training records is held out
    for it. ``lams=None`` is ``lambda_grid(m)`` for the m records trained on (with cv: all m): 0 and m
    times 1e-4 .. 0.1. The network and training options are those of ``Network`` and ``Network.fit``.

    How long each run trains: without ``epochs``, to convergence: until its training cost J has not
    fallen by more than ``tol`` (default 1e-4) for ``n_iter_no_change`` epochs in a row, within 1000
    epochs (a run that runs out first warns, ``l2fast.ConvergenceWarning``). With ``epochs`` and no
    ``tol``, every run trains exactly that many epochs; with both, to convergence within ``epochs``.
    The development data are only recorded (``History.val_loss``), never stopped on: stopping on them
    would be early stopping, a regulariser of its own that blurs what lambda does. ``patience=k``
    asks for that instead: each run stops once its development loss has not improved for k epochs and
    keeps its best epoch.

    ``criterion`` "loss" picks the lowest development data loss, "accuracy" the highest development
    accuracy (ties: the lower loss). The development set is scored in parts to measure the noise of
    each development loss (its standard error, ``LambdaResult.dev_loss_se``); when every lambda's loss
    lies within two standard errors of the best one, a ``NoisyChoiceWarning`` says so and
    ``Selection.meaningful`` is False.

    Cross-validation, ``cv=k`` (no X_dev then), as scikit-learn's ``LogisticRegressionCV`` with
    lambda = 1/C: k seeded folds (stratified for classification; or ``cv`` = (training rows,
    development rows) pairs, such as a scikit-learn splitter's ``split(X, y)``); every lambda trains on
    each fold's training part and is scored on its development part; each figure is the mean over the
    folds, ``dev_loss_se`` their standard deviation / sqrt(k), and the best mean wins. With
    ``refit=True`` the chosen lambda is then trained on all the training data, with the same lambda (the
    penalty is a sum over the weights, like scikit-learn's 1/C, so lambda carries over unchanged) and
    the same options, and that network is ``best_network``; ``refit=False`` leaves it None (the fold
    networks are in ``Selection.fold_networks``). ``patience`` needs ``refit=False`` with cv: a refit
    has no development data to stop on.

    Tasks and executors: a sweep is split into tasks, each one stacked group (``l2fast.fit_together``:
    one order, one gathered minibatch, each layer's products batched) of ``chunk_size`` lambdas (default:
    all) for one fold. ``executor=None`` runs them here one after the other; any
    ``concurrent.futures.Executor`` runs them there: a Dask ``Client`` or its ``get_executor()``, a
    ``ProcessPoolExecutor``, ``mpi4py.futures.MPIPoolExecutor``. The results do not depend on where the
    tasks run (the same seeds give the same bits on cpu), only on ``chunk_size`` (stacked groups of other
    sizes agree to rounding). How the data travel: to a Dask cluster once, ``client.scatter(...,
    broadcast=True)`` to every worker, the tasks referring to them; other executors pickle the data with
    each task (k folds times the chunks), so for large data prefer Dask. A task that raises on a worker
    cancels the tasks not started and raises its error here. Workers use their own l2fast threads (Dask's
    set OPENBLAS_NUM_THREADS=1, so one thread each): float32 results are the same bits on any thread
    count, float64 ones need the same ``l2fast.get_num_threads()`` as the sweep compared with.

    ``stacked=False`` trains each task's networks one after the other instead (the same networks up to
    rounding). ``progress`` shows a bar: over the epochs for a sweep of one task run here, over the
    tasks otherwise, with the best development loss so far and its lambda.
    """
    sweep = _Sweep(X_train, y_train, X_dev, y_dev, lams, architectures=[layer_sizes], seeds=[seed],
                   activation=activation, loss=loss, backend=backend, dtype=dtype, epochs=epochs, lr=lr,
                   batch_size=batch_size, shuffle=shuffle, patience=patience, validation_fraction=validation_fraction,
                   criterion=criterion, stacked=stacked, progress=progress, tol=tol, n_iter_no_change=n_iter_no_change,
                   cv=cv, refit=refit, executor=executor, chunk_size=chunk_size)
    selection = sweep.selection(sweep.run(sweep.tasks(layer_sizes, seed)))
    if not selection.meaningful and len(sweep.lams) > 1:
        warn_noisy("select_lambda", f"every lambda ({min(sweep.lams):g} .. {max(sweep.lams):g})",
                   f"lambda = {selection.best_lam:g}")
    if sweep.cv and refit:
        selection.best_network = sweep.refit(layer_sizes, seed, selection.best_lam)
    return selection


def warn_noisy(caller, candidates, choice):
    """NoisyChoiceWarning, for the caller of select_lambda or select_network."""
    warnings.warn(f"{caller}: the development losses of {candidates} lie within {NOISE_SE:g} standard errors of "
                  f"the best one, so the choice of {choice} is not meaningful: train longer (more epochs or a larger lr), "
                  "widen the grid, or use more development records", NoisyChoiceWarning, stacklevel=3)


def best_index(results, criterion):
    """The index of the best of results (LambdaResults or the like): the lowest development loss, or the
    highest development accuracy and, among equals, the lowest loss."""
    if criterion == "loss":
        return min(range(len(results)), key=lambda k: results[k].dev_loss)
    return min(range(len(results)), key=lambda k: (-results[k].dev_accuracy, results[k].dev_loss))


def is_meaningful(results, best):
    """Whether some result's development loss lies more than NOISE_SE standard errors above the best one's."""
    return any(r.dev_loss - results[best].dev_loss > NOISE_SE * r.dev_loss_se for r in results)


class _Sweep:
    """A sweep's checked options and data, shared by ``select_lambda`` and ``l2fast.search.select_network``:
    the tasks of one (architecture, seed), running tasks here or on the executor, and the ``Selection`` of one
    (architecture, seed) made from its tasks' outcomes. Everything is checked when it is made, before any
    training. ``names[i]`` names architecture i in messages."""

    def __init__(self, X_train, y_train, X_dev, y_dev, lams, *, architectures, seeds, activation="relu",
                 loss="softmax", backend="cpu", dtype="float32", epochs=None, lr=0.1, batch_size=None, shuffle=True,
                 patience=None, validation_fraction=0.2, criterion="loss", stacked=True, progress=True, tol=None,
                 n_iter_no_change=10, cv=None, refit=True, executor=None, chunk_size=None, names=None):
        if lams is not None:
            lams = [_validate.real(lam, f"lams[{i}]", positive=False) for i, lam in enumerate(lams)]
            if not lams:
                raise ValueError("lams: need at least one value of lambda")
        self.criterion = _validate.choice(criterion, "criterion", CRITERIA)
        if criterion == "accuracy" and loss == "squared_error":
            raise ValueError("criterion: 'accuracy' needs a classification loss")
        if (X_dev is None) != (y_dev is None) and not isinstance(X_dev, Dataset):
            raise ValueError("X_dev, y_dev: give both or neither")
        for name, flag in (("stacked", stacked), ("refit", refit), ("progress", progress)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}: expected True or False, got {flag!r}")
        if chunk_size is not None:
            chunk_size = _validate.integer(chunk_size, "chunk_size", 1)
        self.pool, client = _engine(executor)  # a wrong one is refused here, before any training
        self.progress = progress
        network = dict(activation=activation, loss=loss, backend=backend, dtype=dtype)
        templates = [Network(sizes, seed=seeds[0], **network) for sizes in architectures]
        X, y, w = _data(X_train, y_train, "X_train")
        dev = (None, None, None) if X_dev is None else _data(X_dev, y_dev, "X_dev")
        self.cv = cv is not None
        self._pairs, self._k, self._fraction = None, None, None
        if self.cv:
            if X_dev is not None:
                raise ValueError("X_dev, y_dev: cv makes its development sets from the training data; give one or "
                                 "the other")
            if patience is not None and refit:
                raise ValueError("patience: a refit on all the training data has no development data to stop on; "
                                 "use tol (training to convergence) or refit=False")
            self._pairs = _checked_cv(cv, len(y))
            self._k = int(cv) if self._pairs is None else None
        elif X_dev is None:
            _validate.real(validation_fraction, "validation_fraction", positive=True)
            self._fraction = validation_fraction
        self._y, self._classify = y, loss != "squared_error"
        folds = self.folds(seeds[0])  # refuses more folds than records, a fraction that leaves no records
        if lams is None:
            lams = lambda_grid(len(y) if self.cv or X_dev is not None else len(folds[0][0]))
        self.lams = lams
        # Checked once here, so that a bad array fails before any training.
        names = names or ["layer_sizes"] * len(architectures)
        checks = [("X_train, y_train", (X, y, w))] + ([("X_dev, y_dev", dev)] if X_dev is not None else [])
        for template, name in zip(templates, names):
            for arrays, (X_check, y_check, w_check) in checks:
                try:
                    template.cost(X_check, y_check, w_check)
                except (ValueError, TypeError) as exc:
                    where = arrays if len(templates) == 1 else f"{arrays} for {name}"
                    raise type(exc)(f"{where}: {exc}") from exc
        if epochs is None:
            epochs = EPOCH_CAP
            if tol is None and patience is None:
                tol = DEFAULT_TOL
        self._network = network
        self._fit = dict(epochs=epochs, lr=lr, batch_size=batch_size, shuffle=shuffle, patience=patience, tol=tol,
                         n_iter_no_change=n_iter_no_change, watch="cost" if tol is not None else None)
        self._stacked = bool(stacked)
        size = chunk_size or len(lams)
        self._chunks = [lams[start:start + size] for start in range(0, len(lams), size)]
        self.data = (X, y, w) + tuple(dev)
        if client is not None:  # Dask: the data go to every worker once, and the tasks refer to them
            [self.data] = client.scatter([self.data], broadcast=True)

    def folds(self, seed):
        """The (training rows, development rows) pairs that seed draws (the pairs given as cv: those), or None
        for the training data whole with the development data given."""
        if self._pairs is not None:
            return self._pairs
        if self._k is not None:
            return _cv_rows(self._y, self._k, seed, self._classify)
        if self._fraction is not None:
            return [_hold_out_rows(len(self._y), self._fraction, seed)]
        return None

    def _spec(self, layer_sizes, seed):
        return dict(network=dict(self._network, layer_sizes=list(layer_sizes), seed=seed), fit=self._fit,
                    stacked=self._stacked)

    def tasks(self, layer_sizes, seed):
        """The tasks [(spec, rows, lams)] of one architecture and seed: for each fold, each chunk of the lambdas."""
        spec = self._spec(layer_sizes, seed)
        return [(spec, rows, chunk) for rows in (self.folds(seed) or [None]) for chunk in self._chunks]

    def run(self, tasks):
        """The tasks' outcomes, in task order, run here or on the executor."""
        return _run_tasks(tasks, self.data, self.pool, self.progress)

    def selection(self, outcomes):
        """The Selection of one architecture and seed from the outcomes of its tasks (``tasks``' order); with cv,
        its best_network is None (``refit`` makes one)."""
        n_folds = len(outcomes) // len(self._chunks)
        # per_fold[f][i]: fold f's outcome for lambda i
        per_fold = [[o for t in range(f * len(self._chunks), (f + 1) * len(self._chunks)) for o in outcomes[t]]
                    for f in range(n_folds)]
        results = [_result(lam, [fold[i] for fold in per_fold], self.cv) for i, lam in enumerate(self.lams)]
        best = best_index(results, self.criterion)
        meaningful = is_meaningful(results, best)
        if not self.cv and len(per_fold[0][0]["part_losses"]) < 2:
            meaningful = True  # one development record: no noise to measure
        if not self.cv:
            networks = [fold[0]["network"] for fold in zip(*per_fold)]
            return Selection(results, self.lams[best], networks[best], self.criterion, networks, meaningful)
        fold_networks = [[o["network"] for o in fold] for fold in zip(*per_fold)]
        return Selection(results, self.lams[best], None, self.criterion, [], meaningful, fold_networks)

    def refit(self, layer_sizes, seed, lam):
        """A network of lam trained on all the training data (no development data: cv made them from it)."""
        [[final]] = self.run([(self._spec(layer_sizes, seed), None, [lam])])
        return final["network"]


def _result(lam, outcomes, cv):
    """A LambdaResult from one lambda's outcomes, one per fold (one without cv)."""
    first = outcomes[0]

    def mean(key):
        return None if first[key] is None else float(np.mean([o[key] for o in outcomes]))

    if cv:
        fold_losses = [o["dev_loss"] for o in outcomes]
        se = float(np.std(fold_losses, ddof=1) / math.sqrt(len(outcomes)))
    else:
        fold_losses, parts = [], first["part_losses"]
        se = float(parts.std(ddof=1) / math.sqrt(len(parts))) if len(parts) > 1 else 0.0
    return LambdaResult(lam=lam, train_loss=mean("train_loss"), dev_loss=mean("dev_loss"),
                        train_accuracy=mean("train_accuracy"), dev_accuracy=mean("dev_accuracy"),
                        history=first["history"], dev_loss_se=se, fold_dev_losses=fold_losses,
                        fold_histories=[o["history"] for o in outcomes] if cv else [])
