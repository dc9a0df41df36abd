"""``l2fast bench --configs T``: seconds to the answer, not seconds per epoch.

For convex problems (logistic and softmax regression, lambda = 1) each contender is timed until its
model's J is within 1e-6 |J*| of the optimum J*, which comes from very tight solves (the lower of
l2fast's L-BFGS at tol 1e-13 and scikit-learn's at tol 1e-12). A solver with a tolerance is run with
tol = 1e-3, 1e-4, ... until its answer is that close; the time of that run is its time to solution
(median over the repeats, contenders interleaved). l2fast's solvers are timed as its scikit-learn estimator
(``L2LogisticRegression``, which starts at zero weights as scikit-learn's ``LogisticRegression`` does), so both
sides pay their estimator's checks of X and y.

Each round takes the contenders in a new (seeded) order, and each fit starts after a pause of ``SETTLE_S``: a fit
that follows another one at once shares the cores with that one's BLAS threads, which spin for about 0.1 s after
their last product before they sleep (NumPy's OpenBLAS after a scikit-learn fit), and would pay for its
predecessor. First-order optimizers train epoch by epoch, checking J after each (the check is not timed), until
they get there or run out of time.
"""
from __future__ import annotations

import statistics
import time
import warnings

import numpy as np

import l2fast

TARGET = 1e-6
TOLS = [10.0**-k for k in range(3, 12)]
SETTLE_S = 0.25  # idle seconds before each timed fit (see above)


def synthetic(m, n):
    """A seeded binary problem: labels drawn from a logistic model, 5% of them flipped."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(m, n))
    p = 1 / (1 + np.exp(-(X @ (rng.normal(size=n) * 3 / np.sqrt(n)))))
    y = (rng.uniform(size=m) < p).astype(np.int64)
    flip = rng.uniform(size=m) < 0.05
    y[flip] = 1 - y[flip]
    return X, y


def problems(quick):
    """(name, X, y, n_out): a seeded 50k x 100 binary problem with label noise, standardised breast_cancer
    and standardised digits (softmax)."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.preprocessing import StandardScaler

    m, n = (2000, 20) if quick else (50_000, 100)
    X, y = synthetic(m, n)
    out = [(f"synthetic {m} x {n}", X, y, 1)]
    for name, loader, n_out in (("breast_cancer", load_breast_cancer, 1), ("digits", load_digits, 10)):
        Xd, yd = loader(return_X_y=True)
        out.append((f"{name} (standardised)", StandardScaler().fit_transform(Xd), yd, n_out))
    return out[:2] if quick else out


def _network(X, n_out, backend, dtype):
    return l2fast.Network([X.shape[1], n_out], loss="logistic" if n_out == 1 else "softmax", lam=1.0,
                          backend=backend, dtype=dtype, seed=0)


class Judge:
    """J of any linear model's coefficients on the problem, in float64 through the reference."""

    def __init__(self, X, y, n_out):
        self.X, self.y, self.n_out = X, y, n_out
        self.net = _network(X, n_out, "cpu", "float64")

    def cost(self, coef, intercept):
        coef = np.asarray(coef, dtype=np.float64).reshape(self.n_out, -1)
        self.net.set_parameters([coef], [np.asarray(intercept, dtype=np.float64).reshape(self.n_out)])
        return self.net.cost(self.X, self.y)


def optimum(X, y, n_out, judge):
    from sklearn.linear_model import LogisticRegression

    net = _network(X, n_out, "cpu", "float64")
    net.fit(X, y, epochs=100_000, optimizer=l2fast.LBFGS(tol=1e-13))
    theirs = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(X, y)
    return min(net.cost(X, y), judge.cost(theirs.coef_, theirs.intercept_))


def sklearn_fit(solver):
    def fit(X, y, n_out, tol):
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, solver=solver, tol=tol, max_iter=100_000).fit(X, y)
        return model.coef_, model.intercept_

    return fit


def l2fast_fit(backend, dtype):
    def fit(X, y, n_out, tol):
        from l2fast.sklearn import L2LogisticRegression

        model = L2LogisticRegression(lam=1.0, tol=tol, epochs=100_000, backend=backend, dtype=dtype).fit(
            X.astype(dtype, copy=False), y)
        return model.coef_, model.intercept_

    return fit


def timed(fit, X, y, n_out, tol, settle):
    """Seconds of one fit that starts after `settle` idle seconds."""
    time.sleep(settle)
    start = time.perf_counter()
    fit(X, y, n_out, tol)
    return time.perf_counter() - start


def seconds_with_tol(fit, X, y, n_out, judge, target):
    """The loosest tol of TOLS at which fit's answer is within target of J*, and that run's seconds."""
    for tol in TOLS:
        start = time.perf_counter()
        coef, intercept = fit(X, y, n_out, tol)
        seconds = time.perf_counter() - start
        if judge.cost(coef, intercept) <= target:
            return tol, seconds
    return None, None


def first_order_seconds(backend, optimizer, lr, batch, X, y, n_out, judge, target, budget):
    """Seconds of training (checks excluded) until J <= target, or None within budget seconds."""
    net = _network(X, n_out, backend, "float64")
    spent = 0.0
    while spent < budget:
        start = time.perf_counter()
        net.fit(X, y, epochs=1, lr=lr, batch_size=batch, optimizer=optimizer)
        spent += time.perf_counter() - start
        if net.cost(X, y) <= target:
            return spent
    return None


def run(backends, repeats, out, quick=False):
    """Prints and returns one row per problem: J*, and each contender's tol and median seconds."""
    rows = []
    settle = 0.0 if quick else SETTLE_S
    print(f"T: seconds until J - J* <= {TARGET:g} |J*| (lambda 1; median of {repeats}, contenders interleaved in "
          f"shuffled order, each fit after {settle:g} s idle)", file=out)
    for name, X, y, n_out in problems(quick):
        judge = Judge(X, y, n_out)
        J_star = optimum(X, y, n_out, judge)
        target = J_star + TARGET * abs(J_star)
        contenders = {"scikit-learn lbfgs": sklearn_fit("lbfgs"),
                      "scikit-learn newton-cholesky": sklearn_fit("newton-cholesky")}
        for backend in backends:
            contenders[f"l2fast {backend} lbfgs float64"] = l2fast_fit(backend, "float64")
        if "cpu" in backends:
            contenders["l2fast cpu lbfgs float32"] = l2fast_fit("cpu", "float32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loose tolerances and short budgets are the point here
            tols = {c: seconds_with_tol(f, X, y, n_out, judge, target)[0] for c, f in contenders.items()}
            times = {c: [] for c in contenders}
            order = np.random.default_rng(0)
            for _ in range(repeats):
                for c in order.permutation(list(contenders)):
                    if tols[c] is not None:
                        times[c].append(timed(contenders[c], X, y, n_out, tols[c], settle))
            budget = 2.0 if quick else 30.0
            first_order = {}
            for backend in [b for b in backends if b != "numpy"]:
                for optimizer, lr, batch in (("adam", 0.01, 1024), ("nesterov", 0.5, None)):
                    first_order[f"l2fast {backend} {optimizer} lr {lr} batch {batch or 'full'}"] = \
                        first_order_seconds(backend, optimizer, lr, batch, X, y, n_out, judge, target, budget)
        row = {"problem": name, "m": len(X), "n": X.shape[1], "classes": max(n_out, 2), "J_star": J_star,
               "results": {c: {"tol": tols[c], "median_s": statistics.median(times[c]) if times[c] else None,
                               "seconds": times[c]} for c in contenders}, "settle_s": settle,
               "first_order_s": first_order, "first_order_budget_s": budget}
        fastest_sklearn = min((r["median_s"] for c, r in row["results"].items()
                               if c.startswith("scikit-learn") and r["median_s"]), default=None)
        print(f"  {name}: {len(X)} x {X.shape[1]}, {max(n_out, 2)} classes, J* = {J_star:.10g}", file=out)
        for c, r in row["results"].items():
            if r["median_s"] is None:
                print(f"    {c:<40} did not get there", file=out)
                continue
            ratio = f"  ({fastest_sklearn / r['median_s']:.2f}x the faster scikit-learn)" \
                if fastest_sklearn and c.startswith("l2fast") else ""
            print(f"    {c:<40} {r['median_s']:8.4f} s at tol {r['tol']:g} (runs {min(r['seconds']):.4f}-"
                  f"{max(r['seconds']):.4f} s){ratio}", file=out)
        for c, s in first_order.items():
            print(f"    {c:<40} " + (f"{s:8.4f} s" if s is not None else f"not within {budget:g} s"), file=out)
        rows.append(row)
    return rows


GPU_LBFGS_SIZE = (50_000, 100)


def gpu_lbfgs(repeats, out):
    """For the GPU check: L-BFGS to tol 1e-6 on the synthetic problem, cuda against cpu (no scikit-learn
    needed); seconds (median) and how close each lands to J*."""
    m, n = GPU_LBFGS_SIZE
    X, y = synthetic(m, n)
    judge = Judge(X, y, 1)
    star = _network(X, 1, "cpu", "float64")
    star.fit(X, y, epochs=100_000, optimizer=l2fast.LBFGS(tol=1e-13))
    J_star = star.cost(X, y)
    rows = {}
    print(f"T (GPU): L-BFGS to tol 1e-6 on synthetic {m} x {n}, J* = {J_star:.10g}", file=out)
    contenders = {f"l2fast {b} lbfgs {d}": l2fast_fit(b, d) for b in ("cuda", "cpu") for d in ("float64", "float32")}
    times = {c: [] for c in contenders}
    answers = {}
    for _ in range(repeats):
        for c, fit in contenders.items():
            start = time.perf_counter()
            answers[c] = fit(X, y, 1, 1e-6)
            times[c].append(time.perf_counter() - start)
    for c in contenders:
        gap = (judge.cost(*answers[c]) - J_star) / abs(J_star)
        rows[c] = {"median_s": statistics.median(times[c]), "relative_gap": gap}
        print(f"  {c:<30} {rows[c]['median_s']:8.4f} s, (J - J*)/|J*| = {gap:.2e}", file=out)
    return {"J_star": J_star, "results": rows}
