"""Full-batch solvers: minimise J itself rather than step on minibatches.

``LBFGS`` hands J and its gradient over the whole training set to SciPy's L-BFGS-B
(``scipy.optimize.minimize(method="L-BFGS-B")``). Each evaluation is one backend call
(``gradients``: the loss and every dJ/dW summed in float64 over blocks of records, the (lam/m) W term
added in the same pass; for a one-layer network on the cpu backend ``linear_objective``, the same pass taking
and giving the flat vectors, with X and y checked once per fit); the parameters travel as one flat float64 vector
``[W[0].ravel(), b[0], W[1].ravel(), b[1], ...]``, cast to the network's dtype for each evaluation, so a
float32 network still computes in float32 with float64 sums. With the cuda backend the data stay on
the GPU and only that vector and the gradient cross per evaluation.

``NewtonCG`` (linear models only) minimises the same J with a trust-region Newton-CG, SciPy's trust-ncg written out
over a few flat vectors updated in place (or SciPy's own trust-krylov): the backend computes J's gradient with the
loss's curvature at a point in one pass (``linear_gradient_curvature``) and each Hessian-vector product in another
(``linear_hessian_product``), in parameters scaled by the Hessian's diagonal at the start
(``linear_hessian_diagonal``).

SciPy is imported here only, when a solver runs (``pip install scipy``, or the ``l2fast[lbfgs]`` extra).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class LBFGS:
    """Limited-memory BFGS on J over the whole training set (scikit-learn's ``solver="lbfgs"``).

    memory : int
        Correction pairs kept (L-BFGS-B's ``maxcor``).
    tol : float
        Converged when the largest entry of the gradient of J is at most tol (``gtol``); the relative
        decrease test (``ftol``) is set to 64 machine epsilons so that tol decides, as scikit-learn's
        ``LogisticRegression`` does.
    max_fun : int
        At most this many evaluations of J and its gradient (line searches included).
    max_ls : int
        At most this many line-search steps per iteration.

    ``fit``'s ``epochs`` is the iteration budget (scikit-learn's ``max_iter``); a ``tol`` given to
    ``fit`` replaces this one.
    """

    memory: int = 10
    tol: float = 1e-4
    max_fun: int = 15000
    max_ls: int = 50
    name: ClassVar[str] = "lbfgs"

    def __post_init__(self):
        from l2fast import _validate

        object.__setattr__(self, "memory", _validate.integer(self.memory, "memory", 1))
        object.__setattr__(self, "tol", _validate.real(self.tol, "tol", positive=False))
        object.__setattr__(self, "max_fun", _validate.integer(self.max_fun, "max_fun", 1))
        object.__setattr__(self, "max_ls", _validate.integer(self.max_ls, "max_ls", 1))


@dataclass(frozen=True)
class NewtonCG:
    """Truncated Newton on J over the whole training set, for linear models (no hidden layer): the trust-region
    Newton-CG of SciPy's ``minimize(method="trust-ncg")`` (Steihaug's conjugate gradients inside a trust region, as
    liblinear's TRON), written out here over a few vectors updated in place so that its memory stays a handful of
    parameter vectors (``_LeanTrustNewton``), or SciPy's ``"trust-krylov"``, fed with Hessian-vector products of J
    that the backend computes in one read of X (``linear_hessian_product``) at curvature taken once per iterate
    (scikit-learn's ``solver="newton-cg"`` is the line-search form). On an ill-conditioned problem, such as sparse
    TF-IDF features with a small lam/m, it needs far fewer passes over X than L-BFGS.

    The problem is solved in parameters scaled by the inverse square root of the Hessian's diagonal at the start
    (one more read of X), so that the trust region and the conjugate gradients see a problem whose curvature is
    about 1 in every direction, the diagonal (Jacobi) preconditioning that makes rare sparse columns cheap.

    tol : float
        Converged when the largest entry of the gradient of J is at most tol, as for ``LBFGS``.
    method : str
        "trust-ncg" or "trust-krylov".
    initial_trust_radius : float
        The first step's largest length in the scaled parameters (the region grows as steps succeed).

    ``fit``'s ``epochs`` is the iteration budget; a ``tol`` given to ``fit`` replaces this one.
    """

    tol: float = 1e-4
    method: str = "trust-ncg"
    initial_trust_radius: float = 1.0
    name: ClassVar[str] = "newton-cg"

    def __post_init__(self):
        from l2fast import _validate

        object.__setattr__(self, "tol", _validate.real(self.tol, "tol", positive=False))
        if self.method not in ("trust-ncg", "trust-krylov"):
            raise ValueError(f"method: expected 'trust-ncg' or 'trust-krylov', got {self.method!r}")
        object.__setattr__(self, "initial_trust_radius",
                           _validate.real(self.initial_trust_radius, "initial_trust_radius", positive=True))


FULL_BATCH = (LBFGS, NewtonCG)  # the solver specs that fit runs in place of the epoch loop


def requested(optimizer) -> bool:
    """Whether an ``optimizer=`` argument asks for a full-batch solver: the name "lbfgs" or "newton-cg", or an
    ``LBFGS`` or ``NewtonCG`` instance."""
    if isinstance(optimizer, str):
        return optimizer in ("lbfgs", "newton-cg")
    return isinstance(optimizer, FULL_BATCH)


def scans_X_itself(optimizer, net, X, epochs) -> bool:
    """Whether the solve that ``optimizer`` asks for finds a NaN or infinity in X by itself, so that fit need not
    read X once more to scan it first: L-BFGS on a one-layer network whose backend evaluates J at the flat vector
    (``FlatObjective``), on an X that the network takes as it is (a C-contiguous array of its dtype, so that the
    error names X as fit's own scan would). A non-finite value in a record makes the first pass's J or gradient
    non-finite (its column's dW gets d * x, NaN or infinite whatever d, and no record is skipped: a zero weight
    multiplies), and lbfgs then scans X (``check_data``) before the network changes. With no epochs there is no
    solve, and fit scans X."""
    lbfgs = optimizer == "lbfgs" if isinstance(optimizer, str) else isinstance(optimizer, LBFGS)
    return (lbfgs and isinstance(epochs, numbers.Integral) and epochs > 0 and _evaluates_flat(net)
            and isinstance(X, np.ndarray) and X.dtype == net.dtype and X.flags.c_contiguous)


def _evaluates_flat(net) -> bool:
    """Whether the network's backend evaluates its J at the flat parameter vector itself (``FlatObjective``): a
    one-layer network on a backend with ``linear_objective`` (cpu)."""
    return len(net.layer_sizes) == 2 and hasattr(net._backend, "linear_objective")


def resolve(optimizer, net):
    """The solver spec of an ``optimizer=`` argument that ``requested`` accepts; a NewtonCG for a network with a
    hidden layer is refused (ValueError) before anything changes."""
    if isinstance(optimizer, str):
        optimizer = LBFGS() if optimizer == "lbfgs" else NewtonCG()
    if isinstance(optimizer, NewtonCG) and len(net.layer_sizes) != 2:
        raise ValueError(f"optimizer: newton-cg serves linear models (layer_sizes [n_in, n_out]), not "
                         f"{list(net.layer_sizes)}; use 'lbfgs' for a network with hidden layers")
    return optimizer


def solve(net, X, y, sample_weight, max_iter, spec, validation, bar, history):
    """The full-batch solve that ``spec`` names (``lbfgs`` or ``newton_cg``), the process's other BLAS libraries on
    one thread meanwhile (``other_blas_on_one_thread``); returns SciPy's OptimizeResult."""
    run = newton_cg if isinstance(spec, NewtonCG) else lbfgs
    with other_blas_on_one_thread(net._backend.name):
        return run(net, X, y, sample_weight, max_iter, spec, validation, bar, history)


_other_blas = None  # threadpoolctl's controller of the BLAS libraries other than l2fast's own, made once


def other_blas_on_one_thread(backend_name):
    """A context in which every BLAS library of the process but l2fast's own (NumPy's, SciPy's) runs on one thread,
    for a solve on the cpu backend (elsewhere, or without threadpoolctl, it changes nothing). SciPy's L-BFGS-B calls
    BLAS and LAPACK on vectors and matrices of the parameters' size and the memory's, where threads gain nothing;
    their pools' threads, waking and spinning after each call, took the cores from l2fast's passes: on the loaded
    2-core machine a standardised breast_cancer fit took 205 ms instead of 21 ms (median of 20, load 9), and 50k x
    100 2.2x its time."""
    global _other_blas
    if backend_name != "cpu":
        return contextlib.nullcontext()
    if _other_blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn and the test extra
            return contextlib.nullcontext()
        import scipy_openblas32  # l2fast's own OpenBLAS, which keeps its threads

        controller, ours = ThreadpoolController(), os.path.dirname(os.path.realpath(scipy_openblas32.__file__))
        _other_blas = controller.select(filepath=[lib.filepath for lib in controller.lib_controllers
                                                  if not os.path.realpath(lib.filepath).startswith(ours)])
    return _other_blas.limit(limits=1)


def _scipy_optimize():
    try:
        from scipy import optimize
    except ImportError as exc:  # pragma: no cover - scipy is installed wherever the tests run
        raise ImportError('optimizer="lbfgs" needs SciPy: pip install scipy (or "l2fast[lbfgs]")') from exc
    return optimize


class FlatParameters:
    """The network's parameters as one float64 vector and back, in the backend's arrays and dtype."""

    def __init__(self, net):
        self.net = net
        self.shapes = [(W.shape, b.shape) for W, b in zip(net._weights, net._biases)]
        self.ranges = []  # per layer: where its weights start, where its biases start and where they end in x
        at = 0
        for w_shape, b_shape in self.shapes:
            n_w = int(np.prod(w_shape))
            self.ranges.append((at, at + n_w, at + n_w + b_shape[0]))
            at += n_w + b_shape[0]

    def vector(self):
        backend = self.net._backend
        parts = []
        for W, b in zip(self.net._weights, self.net._biases):
            parts += [np.asarray(backend.to_host(W), dtype=np.float64).ravel(),
                      np.asarray(backend.to_host(b), dtype=np.float64)]
        return np.concatenate(parts)

    def arrays(self, x):
        """(weights, biases) from x, cast to the network's dtype, in the backend's memory."""
        backend, dtype = self.net._backend, self.net.dtype
        weights, biases = [], []
        for (w_shape, _), (w_at, b_at, end) in zip(self.shapes, self.ranges):
            weights.append(backend.from_host(np.ascontiguousarray(x[w_at:b_at].reshape(w_shape), dtype=dtype)))
            biases.append(backend.from_host(np.ascontiguousarray(x[b_at:end], dtype=dtype)))
        return weights, biases

    def weights_sum_squares(self, x, weights):
        """The sum of the squared weights (not biases) of the parameters x, whose arrays are `weights`: from x itself
        for a float64 network (the same values, no pass over the backend's arrays), else from the arrays (x's values
        rounded to the network's dtype)."""
        if self.net.dtype == np.float64:
            return sum(float(np.dot(x[w_at:b_at], x[w_at:b_at])) for w_at, b_at, _ in self.ranges)
        return sum(self.net._backend.sum_squares(W) for W in weights)

    def flatten_gradients(self, dW, db):
        backend = self.net._backend
        parts = []
        for gW, gb in zip(dW, db):
            parts += [np.asarray(backend.to_host(gW), dtype=np.float64).ravel(),
                      np.asarray(backend.to_host(gb), dtype=np.float64)]
        return np.concatenate(parts)


class Objective:
    """J and dJ over the whole data at a flat parameter vector, remembering the last few evaluations so
    that the iteration callback can report the data loss of the accepted point without a new pass."""

    def __init__(self, net, X, y, sample_weight):
        self.net, self.X, self.y, self.sample_weight = net, X, y, sample_weight
        self.flat = FlatParameters(net)
        self.m = len(X)
        self.evaluations = 0
        self._seen = {}

    def value(self, x):
        """J at x (SciPy's ``fun``; ``gradient`` then finds the evaluation remembered, as ``jac=True``'s memo would
        but without its copies and comparisons of x)."""
        return self(x)[0]

    def gradient(self, x):
        """dJ at x, a flat float64 vector (SciPy's ``jac``)."""
        return self(x)[1]

    def __call__(self, x):
        seen = self._seen.get(x.tobytes())
        if seen is not None:  # SciPy starts by evaluating the point lbfgs() has just checked
            return seen[3], seen[4]
        net = self.net
        weights, biases = self.flat.arrays(x)
        dW, db, loss_sum = self._gradients(weights, biases)
        penalty = net.lam / (2 * self.m) * self.flat.weights_sum_squares(x, weights)
        data_loss = loss_sum / self.m
        J = data_loss + penalty
        self.evaluations += 1
        if len(self._seen) > self.keep:
            self._seen.pop(next(iter(self._seen)))
        J, g = (J, self.flat.flatten_gradients(dW, db)) if np.isfinite(J) else (np.inf, np.zeros_like(x))
        self._seen[x.tobytes()] = (data_loss, weights, biases, J, g)
        return J, g

    keep = 8  # evaluations remembered beyond the newest

    def _gradients(self, weights, biases):
        """(dJ/dW list, dJ/db list, loss_sum) at these parameters: one backend pass. X is not scanned for NaN
        and infinity again on each pass: it came through the backend's features() or a Dataset, which checked it
        (a NaN written into it since by another thread makes J infinite, which the solver backs away from, never
        a crash)."""
        net = self.net
        return net._backend.gradients(weights, biases, self.X, self.y, net.lam / self.m, net.activation, net.loss,
                                      self.sample_weight, check_finite=False)

    def check_data(self):
        """Nothing: fit scanned X for NaN and infinity (see FlatObjective's)."""

    def at(self, x):
        """(data_loss, weights, biases, J, gradient) of an evaluated point, or None."""
        return self._seen.get(x.tobytes())

    def parameters_at(self, x):
        """(weights, biases) at x in the backend's arrays: those of the evaluation, if x was evaluated."""
        seen = self.at(x)
        return (seen[1], seen[2]) if seen is not None else self.flat.arrays(x)


class FlatObjective(Objective):
    """The Objective of a one-layer network on a backend that evaluates J at the flat parameter vector itself
    (``linear_objective``: on the cpu backend one ``_core`` call per evaluation, X, y and sample_weight checked once
    per fit, the penalty summed in the same call, the gradient written straight into the flat vector). The network's
    arrays are made only for the points the solver asks for (``at``), the iterates it accepts."""

    def __init__(self, net, X, y, sample_weight):
        super().__init__(net, X, y, sample_weight)
        self._evaluate = net._backend.linear_objective(X, y, net.layer_sizes[-1], net.loss, net.lam, sample_weight)

    def __call__(self, x):
        key = x.tobytes()
        seen = self._seen.get(key)
        if seen is not None:
            return seen[3], seen[4]
        x = x.astype(np.float64)  # the point's own copy: the arrays ``at`` makes are views of it
        g = np.empty_like(x)
        J, loss_sum = self._evaluate(x, g)
        self.evaluations += 1
        if len(self._seen) > self.keep:
            self._seen.pop(next(iter(self._seen)))
        if not math.isfinite(J):
            J, g = np.inf, np.zeros_like(x)
        self._seen[key] = [loss_sum / self.m, None, None, J, g, x]
        return J, g

    def check_data(self):
        """Scans X for NaN and infinity, as fit does (ValueError naming X): after a first pass whose J or gradient is
        not finite, where fit left the scan to the solve (``scans_X_itself``)."""
        self.net._backend.features(self.X, self.net.layer_sizes[0], self.net.dtype)

    def at(self, x):
        seen = self._seen.get(x.tobytes())
        if seen is not None and seen[1] is None:
            seen[1], seen[2] = self.flat.arrays(seen[5])
        return seen


def lbfgs(net, X, y, sample_weight, max_iter, spec, validation, bar, history):
    """Minimises the network's J over (X, y) with L-BFGS-B from its current parameters, recording each
    iteration in ``history``; returns SciPy's OptimizeResult. The network holds the accepted iterate
    after every iteration, so a Ctrl-C or an error leaves it at the last complete one."""
    optimize = _scipy_optimize()
    objective = (FlatObjective if _evaluates_flat(net) else Objective)(net, X, y, sample_weight)
    x0 = objective.flat.vector()
    J0, g0 = objective(x0)
    if not (math.isfinite(J0) and np.isfinite(g0).all()):
        objective.check_data()  # a NaN in X is the caller's error, named as such, before anything changes
    if not np.isfinite(J0):
        raise FloatingPointError("the cost is not finite at the starting parameters")
    record_iterate = _recorder(net, objective, validation, bar, history)

    def record(intermediate_result):
        record_iterate(intermediate_result.x, float(intermediate_result.fun))

    options = {"maxiter": max_iter, "maxfun": spec.max_fun, "maxcor": spec.memory, "maxls": spec.max_ls,
               "gtol": spec.tol, "ftol": 64 * np.finfo(float).eps}
    result = optimize.minimize(objective.value, x0, method="L-BFGS-B", jac=objective.gradient, callback=record,
                               options=options)
    net._weights, net._biases = objective.parameters_at(result.x)
    result.start_cost = float(J0)
    result.evaluations = objective.evaluations
    return result


class LinearObjective(Objective):
    """The Objective of a one-layer network whose every evaluation also keeps the loss's curvature at its point,
    from the same read of X (the backend's ``linear_gradient_curvature``), for ``LinearHessian``."""

    keep = 1  # two points remembered: a trust-region step needs the current one and the trial one

    def __init__(self, net, X, y, sample_weight):
        super().__init__(net, X, y, sample_weight)
        self._curvature = {}
        self._last = None

    def _gradients(self, weights, biases):
        net = self.net
        dW, db, loss_sum, c, P = net._backend.linear_gradient_curvature(
            weights[0], biases[0], self.X, self.y, net.lam / self.m, net.loss, self.sample_weight)
        self._last = (c, P)
        return [dW], [db], loss_sum

    def __call__(self, x):
        self._last = None
        result = super().__call__(x)
        if self._last is not None:
            if len(self._curvature) > self.keep:
                self._curvature.pop(next(iter(self._curvature)))
            self._curvature[x.tobytes()] = self._last
        return result

    def curvature_at(self, x):
        """(c, P) at x (see ``numpy_ref.curvature_rows``), evaluating J there first if it was not."""
        if x.tobytes() not in self._curvature:
            self._seen.pop(x.tobytes(), None)  # a fresh evaluation, not the remembered J and gradient alone
            self(x)
        return self._curvature[x.tobytes()]


class LinearHessian:
    """SciPy's ``hessp(x, v)`` for a one-layer network: the Hessian of J at x times v, both flat float64
    vectors, from the curvature its LinearObjective kept at x; each product is one backend call."""

    def __init__(self, objective):
        self.objective = objective
        self.n_out, self.n_in = objective.flat.shapes[0][0]
        self.products = 0

    def diagonal(self, x):
        """The diagonal of J's Hessian at x as a flat float64 vector (one more read of X)."""
        objective = self.objective
        return _hessian_diagonal(objective.net, objective.X, *objective.curvature_at(x))

    def __call__(self, x, v):
        net = self.objective.net
        backend = net._backend
        c, P = self.objective.curvature_at(x)
        size = self.n_out * self.n_in
        V = backend.from_host(np.ascontiguousarray(v[:size], dtype=np.float64).reshape(self.n_out, self.n_in))
        v_b = backend.from_host(np.ascontiguousarray(v[size:], dtype=np.float64))
        HV, Hv_b = backend.linear_hessian_product(self.objective.X, c, P, V, v_b, net.lam / self.objective.m)
        self.products += 1
        return np.concatenate([np.asarray(backend.to_host(HV)).ravel(), np.asarray(backend.to_host(Hv_b))])


def _recorder(net, objective, validation, bar, history):
    """record(x, J) for each iteration: puts the accepted iterate x into the network and records it in history."""
    backend = net._backend
    classifier = net.loss != "squared_error"
    last = [time.perf_counter()]

    def record(x, J):
        seen = objective.at(x)
        if seen is None:  # not the last point evaluated: one more pass (rare)
            objective(x)
            seen = objective.at(x)
        data_loss, weights, biases = seen[:3]
        net._weights, net._biases = weights, biases
        now = time.perf_counter()
        history.seconds.append(now - last[0])
        last[0] = now
        history.loss.append(data_loss)
        history.cost.append(J)
        if validation is not None:
            X_val, y_val = validation
            val_sum, val_correct = backend.evaluate(weights, biases, X_val, y_val, net.activation, net.loss,
                                                    check_finite=False)  # checked by the fit's _data
            history.val_loss.append(val_sum / len(X_val))
            history.val_cost.append(val_sum / len(X_val) + net.penalty(len(X_val)))
            if classifier:
                history.val_accuracy.append(val_correct / len(X_val))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cost=f"{J:.6g}")

    return record


def _hessian_diagonal(net, X, c, P):
    """The diagonal of J's Hessian, as a flat float64 vector, at the point of curvature (c, P) (one read of X)."""
    backend = net._backend
    m = len(X)
    diag_W, diag_b = backend.linear_hessian_diagonal(X, c, P)
    shape = net._weights[0].shape  # without P the outputs share one diagonal: (1, n_in), (1,)
    diag_W = np.broadcast_to(np.asarray(backend.to_host(diag_W)), shape)
    diag_b = np.broadcast_to(np.asarray(backend.to_host(diag_b)), shape[:1])
    return np.concatenate([diag_W.ravel() / m + net.lam / m, diag_b / m])


def _jacobi_scale(diagonal, n_out):
    """The scale of NewtonCG's parameters, 1/sqrt of the Hessian's diagonal (1 where it is not positive), in place
    of ``diagonal``. One scale for all biases: J does not change when a softmax's biases move together, and its
    gradient has no part along that move; scaled alike, the steps keep none either, so the biases stay where
    scikit-learn's (and an unscaled solve's) end, rather than drifting along a direction of zero curvature."""
    diagonal[-n_out:] = diagonal[-n_out:].mean()
    positive = diagonal > 0
    diagonal[~positive] = 1.0
    np.sqrt(diagonal, out=diagonal)
    np.divide(1.0, diagonal, out=diagonal)
    return diagonal


def newton_cg(net, X, y, sample_weight, max_iter, spec, validation, bar, history):
    """Minimises a one-layer network's J over (X, y) with a trust-region Newton-CG (``spec.method``) from its current
    parameters, in parameters scaled by the Hessian's diagonal there (see ``NewtonCG``), recording each iteration in
    ``history``; returns an OptimizeResult (with ``evaluations`` and ``hessian_products`` added). The network holds
    the accepted iterate after every iteration."""
    optimize = _scipy_optimize()
    if spec.method == "trust-ncg":
        return _LeanTrustNewton(net, X, y, sample_weight).solve(max_iter, spec, validation, bar, history, optimize)
    return scipy_newton_cg(net, X, y, sample_weight, max_iter, spec, validation, bar, history)


def scipy_newton_cg(net, X, y, sample_weight, max_iter, spec, validation, bar, history):
    """``newton_cg`` through ``scipy.optimize.minimize(method=spec.method)`` with a LinearObjective and its
    LinearHessian: the path of "trust-krylov", and for "trust-ncg" the reference that the lean loop is tested
    against."""
    optimize = _scipy_optimize()
    objective = LinearObjective(net, X, y, sample_weight)
    hessian = LinearHessian(objective)
    x0 = objective.flat.vector()
    J0, g0 = objective(x0)
    if not np.isfinite(J0):
        raise FloatingPointError("the cost is not finite at the starting parameters")
    scale = _jacobi_scale(hessian.diagonal(x0), hessian.n_out)

    def fun(z):
        J, g = objective(scale * z)
        return J, scale * g

    def hessp(z, v):
        return scale * hessian(scale * z, scale * v)

    record = _recorder(net, objective, validation, bar, history)
    converged = []

    def callback(intermediate_result):  # the stopping rule is tol on J's own gradient, not on the scaled one
        x = scale * intermediate_result.x
        record(x, float(intermediate_result.fun))
        if np.max(np.abs(objective.at(x)[4])) <= spec.tol:
            converged.append(True)
            raise StopIteration

    if np.max(np.abs(g0)) <= spec.tol:
        result = optimize.OptimizeResult(x=x0, fun=J0, status=0, success=True, nit=0,
                                         message="the gradient is within tol at the start")
    else:
        options = {"gtol": 0.0, "maxiter": max_iter, "initial_trust_radius": spec.initial_trust_radius,
                   "max_trust_radius": max(1000.0, 10 * spec.initial_trust_radius)}
        result = optimize.minimize(fun, x0 / scale, method=spec.method, jac=True, hessp=hessp, callback=callback,
                                   options=options)
        result.x = scale * result.x
        if converged:  # SciPy's own test (gtol 0) never ends it; the callback's StopIteration does
            result.status, result.success = 0, True
            result.message = _converged_message(spec)
    net._weights, net._biases = objective.parameters_at(result.x)
    result.start_cost = float(J0)
    result.evaluations = objective.evaluations
    result.hessian_products = hessian.products
    return result


def _converged_message(spec):
    return f"converged: the largest entry of the gradient is at most tol={spec.tol:g}"


@dataclass
class _LinearPoint:
    """One evaluated point of ``_LeanTrustNewton``: x (flat float64), J, the data loss, the network's arrays there
    (for a float64 network, views of x), J's gradient g (flat float64) and the loss's curvature (c, P)."""

    x: np.ndarray
    J: float
    data_loss: float
    weights: list
    biases: list
    g: np.ndarray
    c: object
    P: object


class _LeanTrustNewton:
    """``method="trust-ncg"``: SciPy's trust-ncg (Nocedal and Wright's algorithm 7.2, Steihaug's conjugate gradients
    in a trust region; the same tests and radius rules) written out over a handful of flat vectors updated in place,
    because on a large sparse problem SciPy's copies (x, its gradient and a Hessian product copied at every call,
    and new vectors at every CG step) held more memory than X itself. The model's decrease q(p) = g.p + p.Hp/2 comes
    from the CG residual r = g + Hp (as liblinear's TRON takes it), not from one more Hessian product per iteration
    as SciPy's does. Each point keeps its gradient and curvature from the one read of X that evaluated it (the
    current point and, while it is tried, the trial one); the CG vectors exist only while a step is computed."""

    eta = 0.15  # SciPy's acceptance threshold on actual / predicted decrease

    def __init__(self, net, X, y, sample_weight):
        self.net, self.X, self.y, self.sample_weight = net, X, y, sample_weight
        self.m = len(X)
        self.flat = FlatParameters(net)
        self.size = net._weights[0].size
        self.evaluations = self.products = 0
        self.point = None  # the accepted point: what _recorder asks for

    def evaluate(self, x):
        """The _LinearPoint at x: one backend pass; J is inf where it is not finite (the step is then refused)."""
        net, backend = self.net, self.net._backend
        weights, biases = self.flat.arrays(x)
        dW, db, loss_sum, c, P = backend.linear_gradient_curvature(weights[0], biases[0], self.X, self.y,
                                                                   net.lam / self.m, net.loss, self.sample_weight)
        self.evaluations += 1
        data_loss = loss_sum / self.m
        J = data_loss + net.lam / (2 * self.m) * backend.sum_squares(weights[0])
        g = np.empty_like(x)
        g[:self.size] = np.asarray(backend.to_host(dW)).ravel()
        g[self.size:] = np.asarray(backend.to_host(db))
        return _LinearPoint(x, float(J) if np.isfinite(J) else np.inf, data_loss, weights, biases, g, c, P)

    def at(self, x):
        """(data_loss, weights, biases) of the accepted point, which ``_recorder`` records."""
        point = self.point
        return point.data_loss, point.weights, point.biases

    def hessian_product(self, scale, d, out, work):
        """out <- scale * H (scale * d): the Hessian at the accepted point in the scaled parameters times d (one read
        of X); ``work`` (like d) is overwritten."""
        net, backend, point, size = self.net, self.net._backend, self.point, self.size
        np.multiply(scale, d, out=work)
        V = backend.from_host(work[:size].reshape(net._weights[0].shape))
        HV, Hv_b = backend.linear_hessian_product(self.X, point.c, point.P, V, backend.from_host(work[size:]),
                                                  net.lam / self.m)
        self.products += 1
        np.multiply(np.asarray(backend.to_host(HV)).ravel(), scale[:size], out=out[:size])
        np.multiply(np.asarray(backend.to_host(Hv_b)), scale[size:], out=out[size:])
        return out

    def steihaug(self, scale, radius):
        """(p, q(p), hits_boundary): Steihaug's CG for min q(p) = g.p + p.Hp/2 over |p| <= radius, g and H the
        accepted point's in the scaled parameters (SciPy's CGSteihaugSubproblem.solve)."""
        r = scale * self.point.g  # the residual g + Hp, p = 0
        g_norm = np.sqrt(_dot(r, r))
        tolerance = min(0.5, np.sqrt(g_norm)) * g_norm
        p = np.zeros_like(r)
        d, Bd, work = np.negative(r), np.empty_like(r), np.empty_like(r)
        q = 0.0
        while True:
            self.hessian_product(scale, d, Bd, work)
            dBd, rd = _dot(d, Bd), _dot(r, d)
            if dBd <= 0:  # negative curvature: to the boundary, whichever end the model prefers
                ta, tb = _boundary_steps(p, d, radius)
                q_a, q_b = (q + t * rd + 0.5 * t * t * dBd for t in (ta, tb))
                t, q = (ta, q_a) if q_a < q_b else (tb, q_b)
                p += np.multiply(d, t, out=work)
                return p, q, True
            r_squared = _dot(r, r)
            alpha = r_squared / dBd
            np.multiply(d, alpha, out=work)
            work += p
            if np.sqrt(_dot(work, work)) >= radius:
                _, tb = _boundary_steps(p, d, radius)
                q += tb * rd + 0.5 * tb * tb * dBd
                p += np.multiply(d, tb, out=work)
                return p, q, True
            p, work = work, p
            q += alpha * rd + 0.5 * alpha * alpha * dBd
            Bd *= alpha
            r += Bd
            r_next_squared = _dot(r, r)
            if np.sqrt(r_next_squared) < tolerance:
                return p, q, False
            d *= r_next_squared / r_squared
            d -= r

    def solve(self, max_iter, spec, validation, bar, history, optimize):
        net = self.net
        point = self.point = self.evaluate(self.flat.vector())
        if not np.isfinite(point.J):
            raise FloatingPointError("the cost is not finite at the starting parameters")
        J0 = point.J
        scale = _jacobi_scale(_hessian_diagonal(net, self.X, point.c, point.P), len(net._biases[0]))
        del point  # self.point alone holds the current point's vectors from here
        record = _recorder(net, self, validation, bar, history)
        radius, max_radius = spec.initial_trust_radius, max(1000.0, 10 * spec.initial_trust_radius)
        status, message, k = 1, "Maximum number of iterations has been exceeded.", 0
        if np.max(np.abs(self.point.g)) <= spec.tol:
            status, message = 0, "the gradient is within tol at the start"
        while status != 0 and k < max_iter:
            p, q, hits_boundary = self.steihaug(scale, radius)
            if q >= 0:  # the predicted decrease -q
                status, message = 2, "A bad approximation caused failure to predict improvement."
                break
            p *= scale
            p += self.point.x
            trial = self.evaluate(p)
            del p
            rho = (self.point.J - trial.J) / -q
            if rho < 0.25:
                radius *= 0.25
            elif rho > 0.75 and hits_boundary:
                radius = min(2 * radius, max_radius)
            if rho > self.eta:
                self.point = trial
            del trial
            k += 1
            record(self.point.x, self.point.J)
            if np.max(np.abs(self.point.g)) <= spec.tol:
                status, message = 0, _converged_message(spec)
        point = self.point
        net._weights, net._biases = point.weights, point.biases
        result = optimize.OptimizeResult(x=point.x, fun=point.J, status=status, success=status == 0, nit=k,
                                         message=message)
        result.start_cost = J0
        result.evaluations = self.evaluations
        result.hessian_products = self.products
        return result


def _boundary_steps(z, d, radius):
    """The two t, low then high, with |z + t d| = radius (SciPy's get_boundaries_intersections)."""
    a, b, c = _dot(d, d), 2 * _dot(z, d), _dot(z, z) - radius**2
    aux = b + np.copysign(np.sqrt(b * b - 4 * a * c), b)
    return tuple(sorted((-aux / (2 * a), -2 * c / aux)))


def _dot(a, b):
    """a . b of two flat float64 vectors, by NumPy's own loop rather than BLAS: NumPy's OpenBLAS splits a long dot
    product between threads that, on a busy machine, wait for a core (measured under load 9 on 2 cores: 200 dot
    products of 50 000 entries took 1.1 s through BLAS, 0.05 s this way), and the CG loop takes several per step."""
    return float(np.einsum("i,i->", a, b))
