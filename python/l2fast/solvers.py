"""Full-batch solvers: minimise J itself rather than step on minibatches.

``LBFGS`` hands J and its gradient over the whole training set to SciPy's L-BFGS-B
(``scipy.optimize.minimize(method="L-BFGS-B", jac=True)``). Each evaluation is one backend call
(``gradients``: the loss and every dJ/dW summed in float64 over blocks of records, the (lam/m) W term
added in the same pass); the parameters travel as one flat float64 vector
``[W[0].ravel(), b[0], W[1].ravel(), b[1], ...]``, cast to the network's dtype for each evaluation, so a
float32 network still computes in float32 with float64 sums. With the cuda backend the data stay on
the GPU and only that vector and the gradient cross per evaluation.

SciPy is imported here only, when a solver runs (``pip install scipy``, or the ``l2fast[lbfgs]`` extra).
"""
from __future__ import annotations

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


def requested(optimizer) -> bool:
    """Whether an ``optimizer=`` argument asks for L-BFGS: the name "lbfgs" or an ``LBFGS`` instance."""
    return optimizer == "lbfgs" if isinstance(optimizer, str) else isinstance(optimizer, LBFGS)


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
        weights, biases, at = [], [], 0
        for w_shape, b_shape in self.shapes:
            n_w, n_b = int(np.prod(w_shape)), b_shape[0]
            weights.append(backend.from_host(np.ascontiguousarray(x[at:at + n_w].reshape(w_shape), dtype=dtype)))
            biases.append(backend.from_host(np.ascontiguousarray(x[at + n_w:at + n_w + n_b], dtype=dtype)))
            at += n_w + n_b
        return weights, biases

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

    def __call__(self, x):
        seen = self._seen.get(x.tobytes())
        if seen is not None:  # SciPy starts by evaluating the point lbfgs() has just checked
            return seen[3], seen[4]
        net, backend = self.net, self.net._backend
        weights, biases = self.flat.arrays(x)
        # X is not scanned for NaN and infinity again on each pass: it came through the backend's features()
        # or a Dataset, which checked it (a NaN written into it since by another thread makes J infinite,
        # which L-BFGS-B backs away from, never a crash)
        dW, db, loss_sum = backend.gradients(weights, biases, self.X, self.y, net.lam / self.m, net.activation,
                                             net.loss, self.sample_weight, check_finite=False)
        penalty = net.lam / (2 * self.m) * sum(backend.sum_squares(W) for W in weights)
        data_loss = loss_sum / self.m
        J = data_loss + penalty
        self.evaluations += 1
        if len(self._seen) > 8:
            self._seen.pop(next(iter(self._seen)))
        J, g = (J, self.flat.flatten_gradients(dW, db)) if np.isfinite(J) else (np.inf, np.zeros_like(x))
        self._seen[x.tobytes()] = (data_loss, weights, biases, J, g)
        return J, g

    def at(self, x):
        """(data_loss, weights, biases, J, gradient) of an evaluated point, or None."""
        return self._seen.get(x.tobytes())


def lbfgs(net, X, y, sample_weight, max_iter, spec, validation, bar, history):
    """Minimises the network's J over (X, y) with L-BFGS-B from its current parameters, recording each
    iteration in ``history``; returns SciPy's OptimizeResult. The network holds the accepted iterate
    after every iteration, so a Ctrl-C or an error leaves it at the last complete one."""
    optimize = _scipy_optimize()
    objective = Objective(net, X, y, sample_weight)
    backend = net._backend
    classifier = net.loss != "squared_error"
    x0 = objective.flat.vector()
    J0, _ = objective(x0)
    if not np.isfinite(J0):
        raise FloatingPointError("the cost is not finite at the starting parameters")
    last = [time.perf_counter()]

    def record(intermediate_result):
        x, J = intermediate_result.x, float(intermediate_result.fun)
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
                                                    check_finite=False)
            history.val_loss.append(val_sum / len(X_val))
            history.val_cost.append(val_sum / len(X_val) + net.penalty(len(X_val)))
            if classifier:
                history.val_accuracy.append(val_correct / len(X_val))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cost=f"{J:.6g}")

    options = {"maxiter": max_iter, "maxfun": spec.max_fun, "maxcor": spec.memory, "maxls": spec.max_ls,
               "gtol": spec.tol, "ftol": 64 * np.finfo(float).eps}
    result = optimize.minimize(objective, x0, method="L-BFGS-B", jac=True, callback=record, options=options)
    seen = objective.at(result.x)
    if seen is not None:
        net._weights, net._biases = seen[1], seen[2]
    else:
        net._weights, net._biases = objective.flat.arrays(result.x)
    result.start_cost = float(J0)
    result.evaluations = objective.evaluations
    return result
