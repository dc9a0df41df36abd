"""``l2fast parity``: every available backend against the NumPy reference on standard problems.

For each backend, dtype and problem it compares the cost, the gradients and the parameters after a
few epochs of ``fit`` from the same seed and batch order, and reports the worst errors.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

import l2fast
from l2fast.testing import TOLERANCES, make_problem, out_of_tolerance, worst_errors

# (name, layer sizes, activation, loss): every loss and activation, a zero-hidden-layer model and n=1 layers.
PROBLEMS = [
    ("softmax relu", [12, 16, 9, 4], "relu", "softmax"),
    ("softmax tanh", [12, 16, 4], "tanh", "softmax"),
    ("logistic sigmoid", [12, 7, 1, 1], "sigmoid", "logistic"),
    ("logistic regression", [12, 1], "identity", "logistic"),
    ("squared_error identity", [12, 8, 3], "identity", "squared_error"),
    ("squared_error relu", [12, 1, 2], "relu", "squared_error"),
]


@dataclass
class ParityRow:
    backend: str
    dtype: str
    problem: str
    quantity: str
    abs_error: float
    rel_error: float
    passed: bool


def _compare(rows, backend, dtype, problem, quantity, actual, reference):
    actual = np.concatenate([np.ravel(a) for a in actual])
    reference = np.concatenate([np.ravel(r) for r in reference])
    abs_error, rel_error = worst_errors(actual, reference)
    passed = not out_of_tolerance(actual, reference, dtype).any()
    rows.append(ParityRow(backend, dtype, problem, quantity, abs_error, rel_error, passed))


def check_backend(backend, dtype, m=203, epochs=3, batch_size=32, lam=0.5, seed=0):
    """Parity rows of one backend in one dtype over every standard problem."""
    rows = []
    for index, (problem, sizes, activation, loss) in enumerate(PROBLEMS):
        X, y = make_problem(loss, sizes[0], sizes[-1], m, seed=seed + index)
        ref, fast = (l2fast.Network(sizes, activation=activation, loss=loss, lam=lam, backend=name, dtype=dtype,
                                    seed=seed) for name in ("numpy", backend))
        _compare(rows, backend, dtype, problem, "cost", [fast.cost(X, y)], [ref.cost(X, y)])
        _compare(rows, backend, dtype, problem, "gradients", sum(fast.gradients(X, y), []),
                 sum(ref.gradients(X, y), []))
        for net in (ref, fast):
            net.fit(X, y, epochs=epochs, lr=0.05, batch_size=batch_size)
        _compare(rows, backend, dtype, problem, f"parameters after {epochs} epochs", fast.weights + fast.biases,
                 ref.weights + ref.biases)
    # Every optimizer, with its state, on the first problem.
    problem, sizes, activation, loss = PROBLEMS[0]
    X, y = make_problem(loss, sizes[0], sizes[-1], m, seed=seed)
    for optimizer in ("momentum", "nesterov", "adam", "adamw"):
        ref, fast = (l2fast.Network(sizes, activation=activation, loss=loss, lam=lam, backend=name, dtype=dtype,
                                    seed=seed) for name in ("numpy", backend))
        for net in (ref, fast):
            net.fit(X, y, epochs=epochs, lr=0.005, batch_size=batch_size, optimizer=optimizer)
        state, ref_state = fast.optimizer_state, ref.optimizer_state
        _compare(rows, backend, dtype, problem, f"{optimizer}: parameters, state",
                 fast.weights + fast.biases + sum(state.slots, []), ref.weights + ref.biases + sum(ref_state.slots, []))
    return rows


def run(backends=None, dtypes=("float64", "float32"), out=None):
    """Prints the parity table; returns the rows. ``backends`` defaults to every available one."""
    out = out or sys.stdout
    backends = [b for b in (backends or l2fast.available_backends()) if b != "numpy"]
    rows = [row for backend in backends for dtype in dtypes for row in check_backend(backend, dtype)]
    print(f"{'backend':<8} {'dtype':<8} {'problem':<24} {'quantity':<28} {'worst abs':>10} {'worst rel':>10}  "
          f"tolerance", file=out)
    for r in rows:
        tol = TOLERANCES[np.dtype(r.dtype)]
        verdict = "ok" if r.passed else "FAIL"
        print(f"{r.backend:<8} {r.dtype:<8} {r.problem:<24} {r.quantity:<28} {r.abs_error:>10.2e} "
              f"{r.rel_error:>10.2e}  {verdict} (rtol {tol['rtol']:g}, atol {tol['atol']:g})", file=out)
    failed = sum(not r.passed for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed", file=out)
    return rows
