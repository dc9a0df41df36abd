"""``l2fast bench --configs P``: sparse X, a seeded TF-IDF-like matrix, for logistic and 10-class softmax regression.

(a) Seconds per SGD epoch (batch 256) on the CSR matrix against the same rows densified, on a block of rows
    whose dense copy stays under DENSE_BYTES (the whole matrix dense would not fit), and on the whole matrix sparse.
(b) Seconds until J - J* <= 1e-6 |J*| (lambda 1, scikit-learn's C = 1) for l2fast's NewtonCG and L-BFGS (from zero
    weights, as scikit-learn starts) against scikit-learn's ``LogisticRegression`` lbfgs, saga and newton-cg on the same
    CSR matrix, by the method of ``bench_solution`` (each solver at the loosest tol of 1e-3, 1e-4, ... whose answer is
    that close; J* the lowest J of a NewtonCG solve at tol 1e-10 and of every contender's answer), each run in a fresh
    process that reports the seconds of its fit, its peak RSS and the RSS it had with the data loaded before the fit
    (the difference is the solver's own memory); after the search, the contenders that got there are run again in
    turn, alternating, and the median reported.

The matrix: rows of Poisson length (mean density x n), columns drawn from power-law frequencies (the k-th most
frequent with probability proportional to 1 / (k + 10)^1.1, the ranks scattered over the columns), entries
tf x idf with each row scaled to unit length, as scikit-learn's TfidfTransformer makes them. Labels come from a
sparse true model (2% of the columns) with noise: 5% of the binary labels flipped; Gumbel noise on the 10 scores.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TARGET = 1e-6
TOLS = [10.0**-k for k in range(3, 12)]
DENSE_BYTES = 1 << 30  # the densified block of (a) stays under 1 GiB


def tfidf_problem(m, n, density, n_classes, seed):
    """(X CSR float64 (m, n), y int64 (m,)) as described in the module's docstring."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    lengths = np.maximum(rng.poisson(density * n, size=m), 1)
    frequency = 1.0 / (np.arange(n) + 10.0) ** 1.1
    frequency = frequency[rng.permutation(n)]
    columns = rng.choice(n, size=int(lengths.sum()), p=frequency / frequency.sum())
    rows = np.repeat(np.arange(m), lengths)
    counts = sp.csr_matrix((np.ones(len(columns)), (rows, columns)), shape=(m, n))  # duplicates summed: tf
    counts.sum_duplicates()
    document_frequency = np.bincount(counts.indices, minlength=n)
    idf = np.log((1 + m) / (1 + document_frequency)) + 1
    X = counts @ sp.diags(idf)
    X = sp.csr_matrix(sp.diags(1 / np.sqrt(X.multiply(X).sum(axis=1).A.ravel())) @ X)
    X.sort_indices()
    truth = np.zeros((n, n_classes))
    support = rng.choice(n, size=max(1, n // 50), replace=False)
    truth[support] = rng.normal(size=(len(support), n_classes)) * 8
    scores = X @ truth
    if n_classes == 1:
        y = (scores[:, 0] > np.median(scores[:, 0])).astype(np.int64)
        flip = rng.uniform(size=m) < 0.05
        y[flip] = 1 - y[flip]
    else:
        y = (scores + rng.gumbel(size=scores.shape)).argmax(axis=1).astype(np.int64)
    return X.astype(np.float64), y


def problems(quick):
    """(name, m, n, density, n_out, seed) of the two problems."""
    m, n = (3000, 2000) if quick else (100_000, 50_000)
    density = 0.005 if quick else 0.001
    return [(f"TF-IDF-like {m} x {n}, binary", m, n, density, 1, 0),
            (f"TF-IDF-like {m} x {n}, 10 classes", m, n, density, 10, 1)]


def _network(n, n_out, backend, dtype, zero=False):
    """The linear model; ``zero``: all parameters 0, the start of scikit-learn's solvers (from random weights the
    many rarely seen columns, whose curvature is little more than lambda / m, take L-BFGS far longer to settle)."""
    import l2fast

    net = l2fast.Network([n, n_out], loss="logistic" if n_out == 1 else "softmax", lam=1.0, backend=backend,
                         dtype=dtype, seed=0)
    if zero:
        net.set_parameters([np.zeros((n_out, n))], [np.zeros(n_out)])
    return net


def epoch_seconds(X, y, n_out, backend, repeats):
    """Median seconds of one SGD epoch (batch 256, lr 0.5) on X, after one warm-up epoch."""
    net = _network(X.shape[1], n_out, backend, "float32")
    net.fit(X, y, epochs=1, lr=0.5, batch_size=256)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net.fit(X, y, epochs=1, lr=0.5, batch_size=256)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_epochs(X, y, n_out, backends, repeats, out):
    """(a): sparse against dense on a block of rows, and sparse on the whole matrix."""
    import scipy.sparse as sp

    rows = min(X.shape[0], DENSE_BYTES // (4 * X.shape[1]))
    block = sp.csr_matrix(X[:rows], dtype=np.float32)
    dense = block.toarray()
    result = {"dense_rows": rows}
    for backend in backends:
        # alternate the contenders: sparse, dense, sparse, dense...
        pairs = [(epoch_seconds(block, y[:rows], n_out, backend, 1), epoch_seconds(dense, y[:rows], n_out, backend, 1))
                 for _ in range(3)]
        sparse_s, dense_s = (statistics.median(p[k] for p in pairs) for k in (0, 1))
        whole = epoch_seconds(X.astype(np.float32), y, n_out, backend, 3)
        result[backend] = {"sparse_block_s": sparse_s, "dense_block_s": dense_s, "sparse_whole_s": whole}
        print(f"    (a) {backend}: epoch of {rows} rows: sparse {sparse_s:.4f} s, dense {dense_s:.4f} s "
              f"({dense_s / sparse_s:.1f}x); all {X.shape[0]} rows sparse {whole:.4f} s", file=out)
    del dense
    return result


# -- (b): each solve in a child process: `python -m l2fast.bench_sparse CHILD problem.npz spec.json out.npz` --

def _rss_mib():
    """This process's peak RSS in MiB: VmHWM, which starts afresh at exec (ru_maxrss keeps the forking parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(problem_path, spec_path, out_path):
    import scipy.sparse as sp

    spec = json.loads(Path(spec_path).read_text())
    with np.load(problem_path) as f:
        X = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
        y = f["y"]
    n_out = int(spec["n_out"])
    if spec["who"] == "l2fast":
        import scipy.optimize  # noqa: F401  (imported before the clock starts, as scikit-learn's import does)

        import l2fast

        # X as scikit-learn gets it (float64): fit converts it to the network's dtype, inside the timed fit
        net = _network(X.shape[1], n_out, spec["backend"], spec["dtype"], zero=True)
        rss_loaded = _rss_mib()
        start = time.perf_counter()
        solver = l2fast.NewtonCG(tol=spec["tol"]) if spec["solver"] == "newton-cg" else l2fast.LBFGS(tol=spec["tol"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net.fit(X, y, epochs=spec["max_iter"], optimizer=solver)
        seconds = time.perf_counter() - start
        coef, intercept = net.weights[0], net.biases[0]
    else:
        from sklearn.linear_model import LogisticRegression

        rss_loaded = _rss_mib()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(C=1.0, solver=spec["solver"], tol=spec["tol"], max_iter=spec["max_iter"])
            model.fit(X, y)
        seconds = time.perf_counter() - start
        coef, intercept = model.coef_, model.intercept_
    np.savez(out_path, coef=coef, intercept=intercept, seconds=seconds, rss=_rss_mib(), rss_loaded=rss_loaded)


def solve_in_child(problem_path, spec, workdir, timeout):
    """(seconds, peak RSS MiB, RSS MiB with the data loaded, coef, intercept) of one solve in a fresh process, or
    None when it takes more than timeout seconds."""
    spec_path, out_path = Path(workdir) / "spec.json", Path(workdir) / "out.npz"
    spec_path.write_text(json.dumps(spec))
    try:
        subprocess.run([sys.executable, "-m", "l2fast.bench_sparse", "CHILD", str(problem_path), str(spec_path),
                        str(out_path)], check=True, env=dict(os.environ, PYTHONWARNINGS="ignore"), timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    with np.load(out_path) as f:
        return float(f["seconds"]), float(f["rss"]), float(f["rss_loaded"]), f["coef"], f["intercept"]


class Judge:
    """J of linear coefficients on the problem, float64, on the cpu backend (sparse X)."""

    def __init__(self, X, y, n_out):
        self.X, self.y, self.n_out = X, y, n_out
        self.net = _network(X.shape[1], n_out, "cpu", "float64")

    def cost(self, coef, intercept):
        self.net.set_parameters([np.asarray(coef, dtype=np.float64).reshape(self.n_out, -1)],
                                [np.asarray(intercept, dtype=np.float64).reshape(self.n_out)])
        return self.net.cost(self.X, self.y)


def bench_solution(X, y, n_out, backends, repeats, out, quick):
    """(b): J* and each contender's tol, median seconds, peak RSS."""
    import l2fast

    judge = Judge(X, y, n_out)
    tight = _network(X.shape[1], n_out, "cpu", "float64", zero=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tight.fit(X, y, epochs=1000, optimizer=l2fast.NewtonCG(tol=1e-10))
    J_star = tight.cost(X, y)
    max_iter = 100_000
    contenders = {f"scikit-learn {solver}": {"who": "sklearn", "solver": solver}
                  for solver in ("lbfgs", "saga", "newton-cg")}
    for backend in backends:
        contenders[f"l2fast {backend} newton-cg float64"] = {"who": "l2fast", "backend": backend, "dtype": "float64",
                                                             "solver": "newton-cg"}
    if "cpu" in backends:
        contenders["l2fast cpu newton-cg float32"] = {"who": "l2fast", "backend": "cpu", "dtype": "float32",
                                                      "solver": "newton-cg"}
        for dtype in ("float64", "float32"):
            contenders[f"l2fast cpu lbfgs {dtype}"] = {"who": "l2fast", "backend": "cpu", "dtype": dtype,
                                                       "solver": "lbfgs"}
    answers = {}  # (name, tol) -> J of its answer
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        problem_path = Path(workdir) / "problem.npz"
        np.savez(problem_path, data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape), y=y)
        budget = 60.0 if quick else float(os.environ.get("L2FAST_BENCH_P_BUDGET", 300))  # s per contender's search
        runs = {}  # name -> [(tol, seconds, rss, rss_loaded, J)] of the search, loosest tol first
        for name, spec in contenders.items():  # the loosest tol that gets there; one run's time
            runs[name] = []
            start = time.perf_counter()
            for tol in TOLS:
                solved = solve_in_child(problem_path, dict(spec, tol=tol, n_out=n_out, max_iter=max_iter), workdir,
                                        budget - (time.perf_counter() - start))
                if solved is None:
                    break
                seconds, rss, rss_loaded, coef, intercept = solved
                J = judge.cost(coef, intercept)
                J_star = min(J_star, J)
                runs[name].append((tol, seconds, rss, rss_loaded, J))
                if J <= J_star + TARGET * abs(J_star) or time.perf_counter() - start > budget:
                    break
        target = J_star + TARGET * abs(J_star)
        for name, tried in runs.items():  # the loosest tol whose answer is within the target of the final J*
            results[name] = {"tol": None, "times": [], "rss_mib": None, "rss_loaded_mib": None}
            for tol, seconds, rss, rss_loaded, J in tried:
                if J <= target:
                    results[name].update(tol=tol, times=[seconds], rss_mib=rss, rss_loaded_mib=rss_loaded)
                    break
        for _ in range(repeats - 1):  # interleaved repeats
            for name, spec in contenders.items():
                if results[name]["tol"] is not None:
                    seconds, rss, *_ = solve_in_child(
                        problem_path, dict(spec, tol=results[name]["tol"], n_out=n_out, max_iter=max_iter), workdir,
                        None)
                    results[name]["times"].append(seconds)
                    results[name]["rss_mib"] = max(results[name]["rss_mib"], rss)
    rows = {}
    fastest = min((statistics.median(r["times"]) for n, r in results.items() if n.startswith("scikit") and r["times"]),
                  default=None)
    print(f"    (b) J* = {J_star:.10g}; seconds to J - J* <= {TARGET:g} |J*| (median of {repeats}), peak RSS "
          "(RSS with the data loaded):", file=out)
    for name, r in results.items():
        median = statistics.median(r["times"]) if r["times"] else None
        rows[name] = {"tol": r["tol"], "median_s": median, "times_s": r["times"], "rss_mib": r["rss_mib"],
                      "rss_loaded_mib": r["rss_loaded_mib"]}
        if median is None:
            print(f"      {name:<32} did not get there", file=out)
            continue
        ratio = f" ({fastest / median:.2f}x the fastest scikit-learn)" if fastest and name.startswith("l2fast") else ""
        print(f"      {name:<32} {median:8.3f} s at tol {r['tol']:g}{ratio}; peak RSS {r['rss_mib']:.0f} MiB "
              f"({r['rss_loaded_mib']:.0f} loaded)", file=out)
    return {"J_star": J_star, "results": rows}


def run(backends, repeats, out, quick=False):
    """Prints and returns one entry per problem: the matrix, (a) and (b)."""
    backends = [b for b in backends if b in ("numpy", "cpu")]  # cuda's sparse epoch is timed by gpu_check.sh
    repeats = max(1, min(repeats, 3))
    print(f"P: sparse X (TF-IDF-like), lambda 1; load average {os.getloadavg()[0]:.1f} at the start", file=out)
    entries = []
    for name, m, n, density, n_out, seed in problems(quick):
        start = time.perf_counter()
        X, y = tfidf_problem(m, n, density, n_out, seed)
        print(f"  {name}: {X.nnz} stored entries ({X.nnz / (m * n):.2%}), made in "
              f"{time.perf_counter() - start:.1f} s", file=out)
        entry = {"problem": name, "m": m, "n": n, "nnz": int(X.nnz), "classes": max(n_out, 2),
                 "epochs": bench_epochs(X, y, n_out, backends, repeats, out),
                 "solution": bench_solution(X, y, n_out, backends, repeats, out, quick)}
        entry["load_average_end"] = os.getloadavg()[0]
        entries.append(entry)
    return entries


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "CHILD":
    child(*sys.argv[2:])
