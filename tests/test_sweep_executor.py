"""Sweeps on an executor: a process pool and a 2-worker Dask LocalCluster on the loopback interface give the
local sweep's results bit for bit, a task that raises on a worker raises here, and the threads of the
process that starts the cluster stay l2fast's."""
import concurrent.futures
import multiprocessing
import os
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from dask.distributed import Client, LocalCluster
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import l2fast
from l2fast.sklearn import L2LogisticRegression, L2MLPClassifier
from sweep_checks import LAMS, OPTIONS, assert_same_search, assert_same_sweep, problem

pytestmark = pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not the choice


@pytest.fixture(scope="module")
def process_pool():
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


# What a Dask Nanny sets in the environment of the process that starts it, for its workers: put back afterwards,
# so that the tests after these (and the subprocesses they start) see this process's own environment.
NANNY_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
                   "PYTHONHASHSEED")


@pytest.fixture(scope="module")
def dask_client():
    # dashboard_address=":0": any free port for the scheduler's HTTP server; with None it still takes 8787, and
    # warns (an error here) when another cluster on the machine holds that port
    with pytest.MonkeyPatch.context() as patch:
        for name in NANNY_VARIABLES:  # recorded now, restored when the context ends
            original = os.environ.get(name)
            patch.setenv(name, original or "")  # records the original, put back at the end (absent: deleted)
            if original is None:
                patch.delenv(name)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            yield client


def test_process_pool_sweep_equals_the_local_one(process_pool):
    X, y, X_dev, y_dev = problem()
    for kwargs in (dict(cv=3, chunk_size=3), dict(X_dev=X_dev, y_dev=y_dev, chunk_size=1), dict(chunk_size=2)):
        local = l2fast.select_lambda(X, y, lams=LAMS, **OPTIONS, **kwargs)
        pooled = l2fast.select_lambda(X, y, lams=LAMS, executor=process_pool, **OPTIONS, **kwargs)
        assert_same_sweep(local, pooled)
    # Datasets travel as their arrays; the default, training to convergence, too.
    local = l2fast.select_lambda(l2fast.Dataset(X, y), None, l2fast.Dataset(X_dev, y_dev), lams=LAMS, chunk_size=2,
                                 **{**OPTIONS, "epochs": None})
    pooled = l2fast.select_lambda(l2fast.Dataset(X, y), None, l2fast.Dataset(X_dev, y_dev), lams=LAMS, chunk_size=2,
                                  executor=process_pool, **{**OPTIONS, "epochs": None})
    assert_same_sweep(local, pooled)
    assert all(r.history.converged for r in pooled.results)


def test_a_search_over_architectures_and_seeds_on_a_process_pool_equals_the_local_one(process_pool):
    X, y, X_dev, y_dev = problem()
    options = {**OPTIONS, "architectures": [[6, 3], OPTIONS["layer_sizes"]], "seeds": [0, 1]}
    del options["layer_sizes"]
    for kwargs in (dict(cv=2, chunk_size=3), dict(X_dev=X_dev, y_dev=y_dev, chunk_size=2)):
        local = l2fast.select_network(X, y, lams=LAMS, **options, **kwargs)
        pooled = l2fast.select_network(X, y, lams=LAMS, executor=process_pool, **options, **kwargs)
        assert_same_search(local, pooled)


def test_progress_over_the_tasks_shows_the_best_development_loss_so_far(process_pool, capsys):
    X, y, X_dev, y_dev = problem()
    sweep = l2fast.select_lambda(X, y, X_dev, y_dev, LAMS, chunk_size=1, executor=process_pool,
                                 **{**OPTIONS, "progress": True})
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\r")[-1]
    best = min(sweep.results, key=lambda r: r.dev_loss)
    assert "4/4" in last and "task" in last and f"best dev_loss={best.dev_loss:.4g}" in last
    assert f"at lam={best.lam:g}" in last and err.endswith("\n")


def test_a_task_that_raises_on_a_process_raises_here(process_pool):
    X, y, _, _ = problem()
    with pytest.raises(l2fast.DivergenceError, match="training diverged .* for lam="):  # the network named
        l2fast.select_lambda(X, y, lams=[0.0, 30.0], executor=process_pool, cv=2, **{**OPTIONS, "lr": 1e9})


def test_dask_sweep_equals_the_local_one_with_the_data_scattered_once(dask_client, monkeypatch):
    X, y, X_dev, y_dev = problem()
    scattered = []
    scatter = dask_client.scatter

    def spy(data, **kwargs):
        scattered.append(kwargs)
        return scatter(data, **kwargs)

    monkeypatch.setattr(dask_client, "scatter", spy)
    local = l2fast.select_lambda(X, y, lams=LAMS, cv=3, chunk_size=2, **OPTIONS)
    on_dask = l2fast.select_lambda(X, y, lams=LAMS, cv=3, chunk_size=2, executor=dask_client.get_executor(), **OPTIONS)
    assert_same_sweep(local, on_dask)
    assert scattered == [{"broadcast": True}]  # once for the 6 tasks and the refit
    local = l2fast.select_lambda(X, y, X_dev, y_dev, LAMS, chunk_size=1, **OPTIONS)
    on_dask = l2fast.select_lambda(X, y, X_dev, y_dev, LAMS, chunk_size=1, executor=dask_client, **OPTIONS)  # a Client
    assert_same_sweep(local, on_dask)
    assert len(scattered) == 2


def test_a_task_that_raises_on_a_dask_worker_raises_here(dask_client):
    X, y, _, _ = problem()
    future = concurrent.futures.ThreadPoolExecutor(1).submit(
        l2fast.select_lambda, X, y, lams=[0.0, 30.0], executor=dask_client, cv=2, chunk_size=1,
        **{**OPTIONS, "lr": 1e9})
    with pytest.raises(l2fast.DivergenceError, match="training diverged"):
        future.result(timeout=60)  # an error, not a hang


def test_grid_search_under_joblibs_dask_backend_equals_a_sequential_search(dask_client):
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X[:400])
    y = y[:400]
    searches = [(L2MLPClassifier(hidden_layer_sizes=(16,), tol=1e-3, random_state=0), X.astype(np.float32)),
                (L2LogisticRegression(random_state=0), X)]  # float32: any thread count; float64: one BLAS thread
    for estimator, data in searches:
        with threadpool_limits(1):  # here too for the refit of the best, which runs here
            sequential = GridSearchCV(estimator, {"lam": [0.1, 10.0]}, cv=3).fit(data, y)
            with joblib.parallel_backend("dask"):
                on_dask = GridSearchCV(estimator, {"lam": [0.1, 10.0]}, cv=3, n_jobs=-1).fit(data, y)
        assert list(on_dask.cv_results_["mean_test_score"]) == list(sequential.cv_results_["mean_test_score"]), estimator
        assert on_dask.best_params_ == sequential.best_params_
        best, again = sequential.best_estimator_.network_, on_dask.best_estimator_.network_
        assert all(np.array_equal(p, q) for p, q in zip(best.weights + best.biases, again.weights + again.biases))


def test_an_executor_of_another_kind_is_refused_before_training():
    X, y, _, _ = problem()
    with pytest.raises(TypeError, match="executor: expected a concurrent.futures.Executor"):
        l2fast.select_lambda(X, y, lams=LAMS, executor=map, **OPTIONS)


THREADS = """
import os, sys
from dask.distributed import Client, LocalCluster

def main():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        import l2fast  # after the Nanny set OPENBLAS_NUM_THREADS=1 here
        from l2fast import threads
        workers = sorted(client.run(lambda: __import__("l2fast").get_num_threads()).values())
        print(os.environ["OPENBLAS_NUM_THREADS"], l2fast.get_num_threads(), threads.available_cpus(), *workers)

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("user_setting", [None, "1"])
def test_threads_of_the_process_that_starts_a_local_cluster(tmp_path, user_setting):
    script = tmp_path / "cluster_threads.py"
    script.write_text(textwrap.dedent(THREADS))
    env = {k: v for k, v in os.environ.items() if k not in NANNY_VARIABLES + ("GOTO_NUM_THREADS", "L2FAST_NUM_THREADS")}
    if user_setting is not None:
        env["OPENBLAS_NUM_THREADS"] = user_setting
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    variable, parent, cpus, *workers = map(int, run.stdout.split())
    assert variable == 1 and workers == [1, 1]  # the Nanny's setting, which the workers keep
    # The parent keeps l2fast's own default unless the user asked for one thread when it started.
    assert parent == (cpus if user_setting is None else 1)
