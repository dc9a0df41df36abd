"""backend="cpu": the C++ kernels of ``cpp/`` through ``l2fast._core``, OpenBLAS for every GEMM.

Each call runs a whole epoch (or a whole-data pass) in C++ with the GIL released, on the threads that
``l2fast.threads`` chooses for its products and the load of the machine at that moment.
"""
from __future__ import annotations

import numpy as np

# Loads libscipy_openblas.so into the process before _core needs it (editable builds rely on this).
import scipy_openblas32  # noqa: F401

from l2fast import _core, _validate, threads  # threads loads _core first, with OpenBLAS's thread timeout
from l2fast.backends.numpy_ref import HostArrays

# Rows per block of the whole-data passes (predict, evaluate, gradients): cpp/network.cpp's kBlockRows.
_BLOCK_ROWS = 2048


def core_X(X):
    """X as ``_core`` takes it: the array itself, or a sparse X's CSR arrays (data, indices, indptr, shape)."""
    if isinstance(X, _validate.SparseFeatures):
        return X.data, X.indices, X.indptr, X.shape
    return X


def core_options(optimizer):
    """The keyword arguments of ``_core.train_epoch`` and ``_core.optimizer_step`` for an
    ``l2fast.optim`` spec."""
    options = {"optimizer": optimizer.name, "decoupled": optimizer.decoupled}
    if optimizer.name == "momentum":
        options.update(momentum=optimizer.momentum, nesterov=optimizer.nesterov)
    elif optimizer.name == "adam":
        options.update(beta1=optimizer.beta1, beta2=optimizer.beta2, eps=optimizer.eps, eps_on_v=optimizer.eps_on_v)
    return options


def _unscanned(X):
    """features()'s all_finite where the scan is left to the solve."""
    return True


def _sizes(weights):
    """[n_in, n_1, ..., n_out] of a network given as its weight matrices (n_out, n_in)."""
    return [weights[0].shape[1]] + [W.shape[0] for W in weights]


class CpuBackend(HostArrays):
    """backend="cpu": parameters are NumPy arrays that the C++ kernels update in place."""

    name = "cpu"

    def features(self, X, n_in, dtype, check_finite=True):
        """As the numpy backend's, with X's scan for NaN and infinity done by ``_core.all_finite`` (one
        threaded pass, no temporary array); ``check_finite=False`` skips that scan of a dense X, for a solve that
        finds a non-finite value itself (``solvers.scans_X_itself``)."""
        if _validate.is_sparse(X):
            return _validate.sparse_features(X, n_in, dtype)
        return _validate.features(X, n_in, dtype, all_finite=_core.all_finite if check_finite else _unscanned)

    # check_finite=False (train_epoch, train_epoch_stacked, evaluate, gradients) skips _core's scan of X for
    # NaN and infinity: for the training loop's and the solver's calls, whose X came through features() or a
    # Dataset and was scanned there, once per fit rather than once per epoch.

    def train_epoch(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                    optimizer=None, slots=(), step=0, sample_weight=None, check_finite=True, with_norms=False,
                    short_lam_over_m=None):
        """The numpy backend's train_epoch; ``short_lam_over_m`` (cpu only), when given, is the decay of a step on
        fewer than ``batch_size`` records (the last) instead of ``lam_over_m``: the scikit-learn drop-ins take an
        epoch with its short last batch in one call."""
        records = X.shape[0] if order is None else len(order)
        run = self.epoch_runner(weights, biases, X, y, records, batch_size, activation, loss, optimizer, slots,
                                sample_weight, check_finite, with_norms)
        return run(order, lr, lam_over_m, step, short_lam_over_m)

    def epoch_runner(self, weights, biases, X, y, records, batch_size, activation, loss, optimizer=None, slots=(),
                     sample_weight=None, check_finite=True, with_norms=False):
        """``run(order, lr, lam_over_m, step=0, short_lam_over_m=None)``: ``train_epoch`` on these arrays (used in
        place: the lists of weights, biases and slots must keep their arrays) for epochs over ``records`` rows, with
        what is the same in every epoch (the thread rule's inputs, the keyword arguments) worked out once: the
        drop-ins' fits call it for each of their small epochs."""
        # a one-layer network with plain SGD on dense X: cpp/linear_step.cpp, which reads a step's rows on two
        # threads when a CPU is free
        sizes = _sizes(weights)
        dense = not isinstance(X, _validate.SparseFeatures)
        linear = optimizer is None and dense and _core.linear_step_fits(sizes)
        # an epoch whose steps run in two parts, one per thread when a CPU is free: two shares of records (an
        # optimizer's, float64 plain SGD's) or, one hidden layer wide enough, its units
        name = None if optimizer is None else optimizer.name
        two_shares = threads.two_share_epoch(sizes, min(batch_size, records), name, dense, X.dtype, activation)
        options = {"sample_weight": sample_weight, "check_finite": check_finite, "with_norms": with_norms}
        if optimizer is not None:
            options.update(slots=[list(slot) for slot in slots], **core_options(optimizer))
        X_core = core_X(X)
        kernel_threads = threads.KernelThreads(sizes, batch_size, X.dtype, memory_bound=linear, two_shares=two_shares)

        def run(order, lr, lam_over_m, step=0, short_lam_over_m=None):
            if optimizer is not None:
                options["step"] = step
            return kernel_threads.run(_core.train_epoch, weights, biases, X_core, y, order, batch_size, lr, lam_over_m,
                                      activation, loss, short_lam_over_m=short_lam_over_m, **options)

        return run

    def train_epoch_stacked(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                            sample_weight=None, check_finite=True):
        with threads.call_threads(_sizes(weights[0]), batch_size, X.dtype, models=len(weights)):
            return _core.train_epoch_stacked(weights, biases, core_X(X), y, order, batch_size, lr, list(lam_over_m),
                                             activation, loss, sample_weight=sample_weight, check_finite=check_finite)

    def predict(self, weights, biases, X, activation, loss):
        with threads.call_threads(_sizes(weights), min(len(X), _BLOCK_ROWS), X.dtype):
            return _core.predict(weights, biases, core_X(X), activation, loss)

    def evaluate(self, weights, biases, X, y, activation, loss, sample_weight=None, check_finite=True):
        with threads.call_threads(_sizes(weights), min(len(X), _BLOCK_ROWS), X.dtype):
            return _core.evaluate(weights, biases, core_X(X), y, activation, loss, sample_weight=sample_weight,
                                  check_finite=check_finite)

    def gradients(self, weights, biases, X, y, lam_over_m, activation, loss, sample_weight=None, check_finite=True,
                  with_correct=False, out=None, workspace=None, on_layer=None):
        """As the numpy backend's; ``out`` = (dW list, db list) of float64 arrays to write into, ``workspace``
        (a ``_core.GradientsWorkspace``) the scratch memory kept between calls, and ``on_layer(l)`` called as soon
        as layer l's gradient is final: a data-parallel step's. Without on_layer, where ``_core.gradients_shares``
        allows it (small networks: a solver's passes), the records are cut in two halves, one per thread with OpenBLAS
        on one (the same bits on any thread count); a data-parallel step keeps one pass, whose last block hands each
        layer on as soon as it is done."""
        sizes = _sizes(weights)
        options = {"sample_weight": sample_weight, "check_finite": check_finite, "with_correct": with_correct,
                   "out": out, "workspace": workspace, "on_layer": on_layer}
        dense = not isinstance(X, _validate.SparseFeatures)
        if on_layer is None and dense and _core.gradients_shares(sizes, len(X)):
            halves = threads.KernelThreads(sizes, min((len(X) + 1) // 2, _BLOCK_ROWS), X.dtype, two_shares=True)
            return halves.run(_core.gradients, weights, biases, core_X(X), y, lam_over_m, activation, loss, **options)
        with threads.call_threads(sizes, min(len(X), _BLOCK_ROWS), X.dtype):
            return _core.gradients(weights, biases, core_X(X), y, lam_over_m, activation, loss, **options)

    def linear_objective(self, X, y, n_out, loss, lam, sample_weight=None):
        """evaluate(x, grad) -> (J, loss_sum) of a one-layer network of n_out outputs at flat float64 parameters x =
        [W.ravel(), b], grad (x's shape) receiving dJ/dx: ``_core.LinearObjective``, which checks y and sample_weight
        once, here, and X's structure but not its values (``features`` scanned them)."""
        core = _core.LinearObjective(core_X(X), y, n_out, loss, lam, sample_weight=sample_weight, check_X=False)
        sizes, batch, dtype = [X.shape[1], n_out], min(len(X), _BLOCK_ROWS), X.dtype
        if dtype == np.float64:  # call_threads keeps float64 calls on the cap: nothing to choose per call
            return core.evaluate

        def evaluate(x, grad):
            with threads.call_threads(sizes, batch, dtype):
                return core.evaluate(x, grad)

        return evaluate

    # The two passes of l2fast.NewtonCG, each one read of X. X has passed ``features`` (checked there), and these
    # kernels never read outside its arrays whatever they hold, so its O(nnz) checks are not repeated per call.

    def linear_gradient_curvature(self, W, b, X, y, lam_over_m, loss, sample_weight=None):
        """(dW, db, loss_sum, c, P) of a one-layer network (see ``numpy_ref.linear_gradient_curvature``)."""
        with threads.call_threads([W.shape[1], W.shape[0]], min(len(X), _BLOCK_ROWS), X.dtype):
            return _core.linear_gradient_curvature(W, b, core_X(X), y, lam_over_m, loss, sample_weight=sample_weight,
                                                   check_X=False)

    def linear_hessian_product(self, X, c, P, V, v_b, lam_over_m):
        """(HV, Hv_b), float64, of a one-layer network (see ``numpy_ref.linear_hessian_product``)."""
        with threads.call_threads([V.shape[1], V.shape[0]], min(len(X), _BLOCK_ROWS), X.dtype):
            return _core.linear_hessian_product(core_X(X), V, v_b, c, P, lam_over_m, check_X=False)

    def linear_hessian_diagonal(self, X, c, P):
        """(diag_W, diag_b), float64 (see ``numpy_ref.linear_hessian_diagonal``), one read of X."""
        n_out = 1 if P is None else P.shape[1]
        with threads.call_threads([X.shape[1], n_out], min(len(X), _BLOCK_ROWS), X.dtype):
            return _core.linear_hessian_diagonal(core_X(X), c, P, X.shape[1], check_X=False)
