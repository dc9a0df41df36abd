"""Data-parallel training over MPI (l2fast.distributed): ranks launched with the mpich wheel's mpiexec, two of
them, one OpenBLAS thread each, against single-process fits in this process. Every launch has a timeout, so a
rank left waiting fails the test instead of hanging it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import l2fast
from l2fast import distributed

TIMEOUT = 60  # seconds for one mpiexec launch; each takes a few on a quiet machine
HERE = Path(__file__).resolve().parent


def mpiexec():
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    assert found, 'mpiexec is missing: pip install "l2fast[test]" installs the mpich wheel that brings it'
    return found


def launch(tmp_path, body, ranks=2, check=True, module=()):
    """Runs the script `body` on `ranks` ranks in tmp_path (the script sees OUT, that folder, and comm); with
    ``module=("-m", name)``, as ``python -m name script``."""
    script = tmp_path / "ranks.py"
    script.write_text("import sys\nfrom pathlib import Path\nimport numpy as np\nfrom mpi4py import MPI\n"
                      "import l2fast\ncomm = MPI.COMM_WORLD\nOUT = Path(sys.argv[1])\n" + textwrap.dedent(body))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(HERE))
    env.pop("L2FAST_NUM_THREADS", None)
    process = subprocess.Popen([mpiexec(), "-n", str(ranks), sys.executable, *module, str(script), str(tmp_path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # mpiexec and every rank it started
        stdout, stderr = process.communicate()
        pytest.fail(f"the ranks were still running after {TIMEOUT} s:\n{stdout}{stderr}")
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def problem(m=203, n_x=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n_x))
    y = rng.integers(0, classes, m)
    return X, y


def assert_same_network(net, weights, biases, atol):
    for got, want in zip(list(weights) + list(biases), net.weights + net.biases):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


REPLICATED = """
data = np.load(OUT / "data.npz")
X, y, w, X_val, y_val = (data[k] for k in ("X", "y", "w", "X_val", "y_val"))
results = {"starts_in_backward": 0, "starts_after": 0}
if SMALL_BUCKETS:
    import inspect
    from l2fast import distributed

    distributed.BUCKET_BYTES = 100  # the numpy backend's buckets: one layer each
    start = distributed.Communicator._start

    def counted(self, grads, b):
        inside = inspect.stack()[1].function == "done"  # called back by the backward pass
        results["starts_in_backward" if inside else "starts_after"] += 1
        return start(self, grads, b)

    distributed.Communicator._start = counted
for backend, dtype, optimizer in CASES:
    net = l2fast.Network([6, 8, 5, 3], lam=0.5, backend=backend, dtype=dtype, seed=1)
    history = net.fit(X, y, epochs=3, lr=0.05, batch_size=32, optimizer=optimizer, comm=comm, sample_weight=w,
                      validation_data=(X_val, y_val))
    key = f"{backend}-{dtype}-{optimizer}"
    results.update({f"{key}-W{l}": W for l, W in enumerate(net.weights)})
    results.update({f"{key}-b{l}": b for l, b in enumerate(net.biases)})
    for name in ("loss", "accuracy", "val_loss", "cost"):
        results[f"{key}-{name}"] = np.array(getattr(history, name))
together = [l2fast.Network([6, 8, 5, 3], lam=lam, dtype="float64", seed=2) for lam in (0.1, 2.0)]
if not SMALL_BUCKETS:  # whose counts are the CASES' alone
    histories = l2fast.fit_together(together, X, y, epochs=2, lr=0.05, batch_size=40, optimizer="momentum",
                                    comm=comm)
    for k, (net, history) in enumerate(zip(together, histories)):
        results.update({f"together{k}-W{l}": W for l, W in enumerate(net.weights)})
        results[f"together{k}-loss"] = np.array(history.loss)
if comm.Get_rank() == 0:
    np.savez(OUT / "result.npz", **results)
else:  # every rank ends with rank 0's network
    np.savez(OUT / "rank1.npz", **results)
"""

CASES = [("cpu", "float64", "sgd"), ("cpu", "float64", "momentum"), ("cpu", "float64", "adam"),
         ("numpy", "float64", "adam"), ("cpu", "float32", "sgd")]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("replicated")
    X, y = problem()
    X_val, y_val = problem(50, seed=1)
    w = np.random.default_rng(3).uniform(0.5, 1.5, len(X))
    np.savez(tmp_path / "data.npz", X=X, y=y, w=w, X_val=X_val, y_val=y_val)
    launch(tmp_path, f"CASES = {CASES!r}\nSMALL_BUCKETS = False\n" + REPLICATED)
    return (X, y, w, X_val, y_val), np.load(tmp_path / "result.npz"), np.load(tmp_path / "rank1.npz")


@pytest.mark.parametrize("backend, dtype, optimizer", CASES)
def test_every_rank_holding_all_of_X_equals_one_process_with_the_global_batch(replicated, backend, dtype, optimizer):
    (X, y, w, X_val, y_val), result, rank1 = replicated
    net = l2fast.Network([6, 8, 5, 3], lam=0.5, backend=backend, dtype=dtype, seed=1)
    history = net.fit(X, y, epochs=3, lr=0.05, batch_size=32, optimizer=optimizer, sample_weight=w,
                      validation_data=(X_val, y_val))
    key = f"{backend}-{dtype}-{optimizer}"
    atol = 1e-10 if dtype == "float64" else 1e-5
    assert_same_network(net, [result[f"{key}-W{l}"] for l in range(3)], [result[f"{key}-b{l}"] for l in range(3)],
                        atol)
    for name in ("loss", "val_loss", "cost"):
        np.testing.assert_allclose(result[f"{key}-{name}"], getattr(history, name), rtol=atol, atol=0)
    np.testing.assert_array_equal(result[f"{key}-accuracy"], history.accuracy)
    for name in result.files:  # rank 1 ends where rank 0 does, bit for bit
        np.testing.assert_array_equal(rank1[name], result[name])


def test_fit_together_trains_each_network_data_parallel(replicated):
    (X, y, *_), result, _ = replicated
    together = [l2fast.Network([6, 8, 5, 3], lam=lam, dtype="float64", seed=2) for lam in (0.1, 2.0)]
    histories = l2fast.fit_together(together, X, y, epochs=2, lr=0.05, batch_size=40, optimizer="momentum")
    for k, (net, history) in enumerate(zip(together, histories)):
        for l, W in enumerate(net.weights):
            np.testing.assert_allclose(result[f"together{k}-W{l}"], W, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result[f"together{k}-loss"], history.loss, rtol=1e-10)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_per_layer_buckets_start_inside_the_backward_pass_and_give_the_same_steps(tmp_path, backend):
    """With one bucket per layer each bucket's allreduce but the last starts inside the backward pass: the numpy
    backend's, and the cpu backend's through _core.gradients' on_layer call back."""
    X, y = problem()
    X_val, y_val = problem(50, seed=1)
    np.savez(tmp_path / "data.npz", X=X, y=y, w=np.ones(len(X)), X_val=X_val, y_val=y_val)
    launch(tmp_path, f"CASES = {[(backend, 'float64', 'momentum')]!r}\nSMALL_BUCKETS = True\n" + REPLICATED)
    result = np.load(tmp_path / "result.npz")
    net = l2fast.Network([6, 8, 5, 3], lam=0.5, backend=backend, dtype="float64", seed=1)
    net.fit(X, y, epochs=3, lr=0.05, batch_size=32, optimizer="momentum", sample_weight=np.ones(len(X)),
            validation_data=(X_val, y_val))
    key = f"{backend}-float64-momentum"
    assert_same_network(net, [result[f"{key}-W{l}"] for l in range(3)], [result[f"{key}-b{l}"] for l in range(3)],
                        1e-10)
    steps = 3 * -(-len(X) // 32)
    # Three buckets a step: the two upper layers' start while the backward pass goes on below them.
    assert (int(result["starts_in_backward"]), int(result["starts_after"])) == (2 * steps, steps)


SHARDED = """
data = np.load(OUT / "data.npz")
rank = comm.Get_rank()
part = slice(0, 90) if rank == 0 else slice(90, None)  # unequal shards
val = slice(0, 20) if rank == 0 else slice(20, None)
X, y, w = data["X"][part], data["y"][part], data["w"][part]
results = {}
for optimizer, batch_size, shuffle in (("momentum", 32, True), ("adam", None, True), ("sgd", 50, False)):
    net = l2fast.Network([6, 8, 5, 3], lam=0.5, dtype="float64", seed=4)
    history = net.fit(X, y, epochs=3, lr=0.05, batch_size=batch_size, shuffle=shuffle, optimizer=optimizer,
                      sample_weight=w, validation_data=(data["X_val"][val], data["y_val"][val]), comm=comm,
                      sharded=True)
    results.update({f"{optimizer}-W{l}": W for l, W in enumerate(net.weights)})
    results.update({f"{optimizer}-b{l}": b for l, b in enumerate(net.biases)})
    for name in ("loss", "accuracy", "val_loss", "val_cost", "cost"):
        results[f"{optimizer}-{name}"] = np.array(getattr(history, name))
if rank == 0:
    np.savez(OUT / "result.npz", **results)
"""


def test_sharded_data_equal_one_process_on_the_shards_concatenated_in_rank_order(tmp_path):
    X, y = problem(230)
    X_val, y_val = problem(50, seed=1)
    w = np.random.default_rng(5).uniform(0.5, 1.5, len(X))
    np.savez(tmp_path / "data.npz", X=X, y=y, w=w, X_val=X_val, y_val=y_val)
    launch(tmp_path, SHARDED)
    result = np.load(tmp_path / "result.npz")
    for optimizer, batch_size, shuffle in (("momentum", 32, True), ("adam", None, True), ("sgd", 50, False)):
        net = l2fast.Network([6, 8, 5, 3], lam=0.5, dtype="float64", seed=4)
        history = net.fit(X, y, epochs=3, lr=0.05, batch_size=batch_size, shuffle=shuffle, optimizer=optimizer,
                          sample_weight=w, validation_data=(X_val, y_val))
        assert_same_network(net, [result[f"{optimizer}-W{l}"] for l in range(3)],
                            [result[f"{optimizer}-b{l}"] for l in range(3)], 1e-10)
        for name in ("loss", "val_loss", "val_cost", "cost"):  # m and the penalty's lam/m are the whole set's
            np.testing.assert_allclose(result[f"{optimizer}-{name}"], getattr(history, name), rtol=1e-10)
        np.testing.assert_array_equal(result[f"{optimizer}-accuracy"], history.accuracy)


FAILURES = """
import json
rank = comm.Get_rank()
X = np.random.default_rng(0).normal(size=(64, 4))
y = (X[:, 0] > 0).astype(int)
seen = {}

def attempt(name, **kwargs):
    net = l2fast.Network([4, 3, 2], dtype="float64", seed=0)
    before = net.weights
    try:
        net.fit(kwargs.pop("X", X), y, epochs=2, batch_size=16, comm=comm, **kwargs)
    except Exception as exc:
        seen[name] = [type(exc).__name__, str(exc), all(np.array_equal(a, b) for a, b in zip(before, net.weights))]

bad = X.copy()
if rank == 1:
    bad[3, 2] = np.nan
attempt("argument", X=bad)
attempt("settings", lr=0.1 if rank == 0 else 0.2)
(OUT / f"rank{rank}.json").write_text(json.dumps(seen))

# A rank whose kernel raises in the third step of a fit: left uncaught, it ends every rank with an error.
net = l2fast.Network([4, 3, 2], dtype="float64", seed=0)
if rank == 1:
    real, calls = net._backend.gradients, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected kernel failure")
        return real(*args, **kwargs)

    net._backend.gradients = failing
net.fit(X, y, epochs=2, batch_size=16, comm=comm)
"""


def test_a_rank_that_raises_stops_the_others_with_its_error(tmp_path):
    result = launch(tmp_path, FAILURES, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # Rank 1's X holds a NaN: it raises its own ValueError, rank 0 a RankError naming it; neither trained.
    assert rank1["argument"][0] == "ValueError" and "X" in rank1["argument"][1]
    assert rank0["argument"][0] == "RankError" and rank0["argument"][1].startswith("rank 1 of 2 raised ValueError")
    assert rank0["argument"][2] and rank1["argument"][2]
    # Settings that differ between ranks are refused on every rank, naming the setting.
    for seen in (rank0, rank1):
        assert seen["settings"][0] == "ValueError" and "same lr" in seen["settings"][1]
        assert seen["settings"][2]
    # The failure inside training: rank 1 with its own exception, rank 0 with a RankError naming it.
    assert "RuntimeError: injected kernel failure" in result.stderr
    assert "RankError: rank 1 of 2 raised RuntimeError: injected kernel failure" in result.stderr


UNILATERAL = """
X = np.random.default_rng(0).normal(size=(64, 4))
y = (X[:, 0] > 0).astype(int)
net = l2fast.Network([4, 3, 2], dtype="float64", seed=0)
if comm.Get_rank() == 1:  # fails scoring the validation data after the first epoch, outside any collective
    evaluate = net._backend.evaluate

    def failing(weights, biases, X, *args, **kwargs):
        if len(X) == 64:  # the validation data (the steps score their batches with it too)
            raise MemoryError("injected validation failure")
        return evaluate(weights, biases, X, *args, **kwargs)

    net._backend.evaluate = failing
net.fit(X, y, epochs=3, batch_size=16, comm=comm, validation_data=(X, y), sharded=True)
(OUT / f"finished{comm.Get_rank()}").write_text("")
"""


def test_a_failure_the_others_cannot_learn_of_aborts_the_job(tmp_path):
    result = launch(tmp_path, UNILATERAL, check=False)
    assert result.returncode != 0
    assert ("l2fast: rank 1 raised during a data-parallel fit (MemoryError: injected validation failure)"
            in result.stderr)
    assert "aborting the MPI job" in result.stderr
    assert not list(tmp_path.glob("finished*"))


OUTPUT = """
import warnings
X = np.random.default_rng(0).normal(size=(64, 4))
y = (X[:, 0] > 0).astype(int)
warnings.simplefilter("always")
net = l2fast.Network([4, 3, 2], dtype="float64", seed=0)
net.fit(X, y, epochs=2, batch_size=16, comm=comm, progress=True, tol=1e-12, n_iter_no_change=5)
"""


def test_rank_0_alone_shows_the_progress_bar_and_the_warnings(tmp_path):
    result = launch(tmp_path, OUTPUT)
    assert result.stderr.count("ConvergenceWarning") == 1, result.stderr
    assert result.stderr.count("0/2 [") == 1, result.stderr  # the one bar's first state


def test_data_parallel_arguments_are_checked_before_anything_starts():
    X, y = problem(20)
    net = l2fast.Network([6, 3], dtype="float64", seed=0)
    before = net.weights
    with pytest.raises(TypeError, match="comm: expected an mpi4py communicator"):
        net.fit(X, y, comm=object())
    with pytest.raises(ValueError, match="sharded: a sharded data set needs comm"):
        net.fit(X, y, sharded=True)
    for got, want in zip(net.weights, before):
        np.testing.assert_array_equal(got, want)


def test_each_rank_takes_its_share_of_the_cores_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr(l2fast.threads, "available_cpus", lambda: 16)
    assert distributed.threads_per_rank(4, environ={}) == 4
    assert distributed.threads_per_rank(3, environ={}) == 5
    assert distributed.threads_per_rank(32, environ={}) == 1
    assert distributed.threads_per_rank(4, environ={"L2FAST_NUM_THREADS": "3"}) == 3
    assert distributed.threads_per_rank(4, environ={"OPENBLAS_NUM_THREADS": "2"}) == 2


def test_local_rows_split_each_batch_between_the_ranks():
    class Comm:  # just enough of a communicator for the row arithmetic
        def __init__(self, rank):
            self.rank = rank

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return 3

    backend = l2fast.backends.get_backend("numpy")
    chunk = np.array([9, 0, 4, 7, 1, 12, 5])
    replicated = [distributed.Communicator(Comm(r), backend, False, [13, 13, 13]).local_rows(chunk) for r in range(3)]
    assert [list(rows) for rows in replicated] == [[9, 0], [4, 7], [1, 12, 5]]
    sharded = [distributed.Communicator(Comm(r), backend, True, [5, 3, 5]) for r in range(3)]
    assert [list(c.local_rows(chunk)) for c in sharded] == [[0, 4, 1], [2, 0], [1, 4]]
    assert [c.m for c in sharded] == [13] * 3


class OneRank:
    """Just enough of a communicator for a Communicator's arithmetic: rank `rank` of `size`."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_data_parallel_step_on_cpu_reuses_its_buffers(dtype):
    """The step's local gradient sums land in the allreduce buffer, bit for bit those of a call of _core.gradients
    with new arrays, and after the first step a step allocates no array: the rows it gathers, the gradients and the
    backward pass's scratch memory are the fit's own buffers."""
    import tracemalloc
    import types

    from l2fast import _core

    X, y = problem(300, n_x=20)
    w = np.random.default_rng(6).uniform(0.5, 1.5, len(X))
    net = l2fast.Network([20, 64, 32, 3], dtype=dtype, seed=3)
    run = types.SimpleNamespace(X=X.astype(dtype), y=y, sample_weight=w.astype(dtype), batch_size=64)
    communicator = distributed.Communicator(OneRank(1, 2), net._backend, False, [len(X)] * 2)
    grads = communicator._buffer(net)
    order = np.random.default_rng(7).permutation(len(X))
    step_bytes = sum(W.size + b.size for W, b in zip(net.weights, net.biases)) * 8 + run.X[:32].nbytes
    peaks = []
    for start in range(0, len(X), run.batch_size):
        rows = communicator.local_rows(order[start:start + run.batch_size])
        tracemalloc.start()
        try:
            loss_sum, correct = communicator._local_sums(net, run, rows, grads, [False])
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        dW, db, want_loss, want_correct = _core.gradients(net._weights, net._biases, run.X[rows], y[rows], 0.0,
                                                          "relu", "softmax", sample_weight=run.sample_weight[rows],
                                                          with_correct=True)
        for got, mean in zip(grads.dW + grads.db, dW + db):
            np.testing.assert_array_equal(got, mean * len(rows))
        assert (loss_sum, correct) == (want_loss, want_correct)
    # The first step makes the buffers (the gathered rows and the scratch memory); after it, a step's Python
    # objects (views, tuples) take a few hundred bytes, against the 30 kB of new gradient arrays a step once made.
    assert peaks[0] > run.X[:64].nbytes and max(peaks[1:]) < 4096 < step_bytes // 7, (peaks, step_bytes)
    assert grads.workspace.times_grown == 1


def test_gradients_write_into_the_arrays_given_and_refuse_wrong_ones():
    from l2fast import _core

    X, y = problem(50)
    net = l2fast.Network([6, 8, 3], dtype="float64", seed=0)
    W, b = net._weights, net._biases
    out = ([np.empty(M.shape) for M in W], [np.empty(v.shape) for v in b])
    dW, db, _ = _core.gradients(W, b, X, y, 0.1, "relu", "softmax", out=out)
    assert dW is out[0] and db is out[1]
    fresh = _core.gradients(W, b, X, y, 0.1, "relu", "softmax")
    assert all(np.array_equal(p, q) for p, q in zip(fresh[0] + fresh[1], dW + db))
    with pytest.raises(TypeError, match=r"out dW\[0\]: expected dtype float64"):
        _core.gradients(W, b, X, y, 0.1, "relu", "softmax", out=([M.astype(np.float32) for M in out[0]], out[1]))
    with pytest.raises(ValueError, match=r"out db\[1\]: expected shape"):
        _core.gradients(W, b, X, y, 0.1, "relu", "softmax", out=(out[0], [out[1][0], np.empty(4)]))
    with pytest.raises(ValueError, match="out: two arrays written in place share memory"):
        _core.gradients(W, b, X, y, 0.1, "relu", "softmax", out=(out[0], [out[1][0], out[0][1][0, :3]]))
    with pytest.raises(ValueError, match="out: an array shares memory with the weights or data"):
        _core.gradients(W, b, X, y, 0.1, "relu", "softmax", out=([W[0], out[0][1]], out[1]))  # W[0] is float64
    with pytest.raises(TypeError, match="workspace: expected a GradientsWorkspace"):
        _core.gradients(W, b, X, y, 0.1, "relu", "softmax", workspace=object())


@pytest.mark.parametrize("dtype, m", [("float32", 300), ("float64", 300), ("float64", 5000)])  # 5000: 3 blocks
def test_gradients_call_back_each_layer_once_it_is_final_from_the_last_down(dtype, m):
    from l2fast import _core

    X, y = problem(m, n_x=20)
    net = l2fast.Network([20, 16, 8, 3], lam=1.0, dtype=dtype, seed=2)
    W, b = net._weights, net._biases
    X = X.astype(dtype)
    want = _core.gradients(W, b, X, y, 0.01, "relu", "softmax")
    out = ([np.full(M.shape, np.nan) for M in W], [np.full(v.shape, np.nan) for v in b])
    seen = []

    def on_layer(layer):
        # this layer is final already, the ones below not yet touched by the last block
        seen.append((layer, out[0][layer].copy(), out[1][layer].copy(), out[0][0].copy()))

    got = _core.gradients(W, b, X, y, 0.01, "relu", "softmax", out=out, on_layer=on_layer,
                          workspace=_core.GradientsWorkspace())
    assert [layer for layer, *_ in seen] == [2, 1, 0]
    for layer, dW, db, first in seen:
        np.testing.assert_array_equal(dW, want[0][layer])
        np.testing.assert_array_equal(db, want[1][layer])
        if layer > 0:
            assert not np.array_equal(first, want[0][0])  # the first layer's gradient was still to come
    assert all(np.array_equal(p, q) for p, q in zip(got[0] + got[1], want[0] + want[1])) and got[2] == want[2]

    def failing(layer):
        raise KeyError(f"no bucket for layer {layer}")

    with pytest.raises(KeyError, match="no bucket for layer 2"):
        _core.gradients(W, b, X, y, 0.01, "relu", "softmax", on_layer=failing)
    with pytest.raises(TypeError, match="on_layer: expected a function"):
        _core.gradients(W, b, X, y, 0.01, "relu", "softmax", on_layer=3)


# -- sweeps on mpi4py.futures ---------------------------------------------------------------------------------

POOL = """
import json
import os
import warnings

from mpi4py.futures import MPIPoolExecutor
from sweep_checks import LAMS, OPTIONS, assert_same_search, assert_same_sweep, problem

if __name__ == "__main__":  # rank 0; the workers serve the pool
    warnings.simplefilter("ignore", l2fast.NoisyChoiceWarning)  # mechanics, not the choice
    X, y, X_dev, y_dev = problem()
    with MPIPoolExecutor(**POOL_OPTIONS) as pool:
        workers = pool.num_workers
        for kwargs in (dict(cv=3, chunk_size=3), dict(X_dev=X_dev, y_dev=y_dev, chunk_size=1)):
            local = l2fast.select_lambda(X, y, lams=LAMS, **OPTIONS, **kwargs)
            pooled = l2fast.select_lambda(X, y, lams=LAMS, executor=pool, **OPTIONS, **kwargs)
            assert_same_sweep(local, pooled)  # an AssertionError ends the job with a non-zero status
        search = dict(lams=LAMS[:2], architectures=[[6, 3], [6, 12, 3]], seeds=[0, 1], cv=2, epochs=5, progress=False)
        assert_same_search(l2fast.select_network(X, y, **search), l2fast.select_network(X, y, executor=pool, **search))
        try:
            l2fast.select_lambda(X, y, lams=[0.0, 30.0], executor=pool, cv=2, **{**OPTIONS, "lr": 1e9})
            error = None
        except l2fast.DivergenceError as exc:
            error = str(exc)
    (OUT / "pool.json").write_text(json.dumps(dict(workers=workers, error=error, pid=os.getpid())))
"""


@pytest.mark.parametrize("ranks, module, options", [
    (3, ("-m", "mpi4py.futures"), {}),  # rank 0 runs the script, ranks 1 and 2 serve the pool
    # The pool spawns its two workers (MPI_Comm_spawn needs mpiexec's launcher), which need not run this script.
    (1, (), {"max_workers": 2, "main": False}),
], ids=["mpi4py.futures", "spawned"])
def test_a_sweep_on_an_mpi_pool_equals_the_local_one(tmp_path, ranks, module, options):
    launch(tmp_path, f"POOL_OPTIONS = {options!r}\n" + POOL, ranks=ranks, module=module)
    seen = json.loads((tmp_path / "pool.json").read_text())
    assert seen["workers"] == 2
    assert seen["error"] is not None and "training diverged" in seen["error"]  # a worker's error, raised here


# -- cuda: NCCL through CuPy ---------------------------------------------------------------------------------

EMULATED_CUDA = """
import ctypes
import types

import pytest
from cuda_emulation import emulated_gpu

rank, results, calls = comm.Get_rank(), {}, []


class HostNccl:
    # cupy.cuda.nccl.NcclCommunicator's calls as l2fast makes them, the sum done by MPI on the host buffer.
    def __init__(self, ranks, uid, rank):
        assert (ranks, uid, rank) == (comm.Get_size(), b"unique id from rank 0", comm.Get_rank())

    def allReduce(self, send, receive, count, dtype, op, stream):
        assert send == receive and dtype == nccl.NCCL_FLOAT64 and op == nccl.NCCL_SUM
        buffer = np.ctypeslib.as_array((ctypes.c_double * count).from_address(receive))
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        calls.append(count)


nccl = types.SimpleNamespace(available=True, NCCL_FLOAT64=8, NCCL_SUM=0, NcclCommunicator=HostNccl,
                             get_unique_id=lambda: b"unique id from rank 0" if rank == 0 else b"wrong")
data = np.load(OUT / "data.npz")
folder = OUT / f"kernels{rank}"
folder.mkdir(exist_ok=True)
with pytest.MonkeyPatch.context() as monkeypatch, emulated_gpu(monkeypatch, folder):
    import sys as _sys

    _sys.modules["cupy"].cuda.nccl = nccl
    for optimizer in ("sgd", "adam"):
        net = l2fast.Network([6, 8, 3], lam=0.5, backend="cuda", dtype="float64", seed=1)
        net.fit(data["X"], data["y"], epochs=2, lr=0.05, batch_size=32, optimizer=optimizer, comm=comm)
        results.update({f"{optimizer}-W{l}": W for l, W in enumerate(net.weights)})
        results.update({f"{optimizer}-b{l}": b for l, b in enumerate(net.biases)})
results["allreduce_counts"] = np.array(calls)
if rank == 0:
    np.savez(OUT / "result.npz", **results)
"""


def test_the_cuda_path_with_nccl_runs_on_the_host_stand_in(tmp_path):
    """The cuda backend's data-parallel path (gradient sums on the "device", NCCL's calls, the update on device
    arrays) on tests/cuda_emulation.py's host stand-in, with NCCL's allreduce done by MPI: two ranks equal one
    emulated process with the global batch. CuPy, NCCL and a GPU take no part: see test_nccl_on_a_gpu."""
    X, y = problem(100)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    launch(tmp_path, EMULATED_CUDA)
    result = np.load(tmp_path / "result.npz")
    n_parameters = 6 * 8 + 8 + 8 * 3 + 3
    steps = 2 * -(-len(X) // 32)
    np.testing.assert_array_equal(result["allreduce_counts"], [n_parameters + 1] * (2 * steps))  # + the status
    for optimizer in ("sgd", "adam"):
        net = l2fast.Network([6, 8, 3], lam=0.5, backend="numpy", dtype="float64", seed=1)
        net.fit(X, y, epochs=2, lr=0.05, batch_size=32, optimizer=optimizer)
        assert_same_network(net, [result[f"{optimizer}-W{l}"] for l in range(2)],
                            [result[f"{optimizer}-b{l}"] for l in range(2)], 1e-10)


def gpu_missing():
    """None where backend='cuda' runs on a real GPU with NCCL, else why not."""
    try:
        l2fast.backends.get_backend("cuda")
        distributed.nccl_module()
    except (l2fast.BackendUnavailableError, ImportError) as exc:
        return str(exc)
    return None


GPU_NCCL = """
X, y = np.load(OUT / "data.npz")["X"], np.load(OUT / "data.npz")["y"]
net = l2fast.Network([6, 8, 3], lam=0.5, backend="cuda", dtype="float64", seed=1)
net.fit(X, y, epochs=2, lr=0.05, batch_size=32, optimizer="adam", comm=comm)
np.savez(OUT / "result.npz", *net.weights, *net.biases)
"""


def test_nccl_on_a_gpu(tmp_path):
    """The NCCL path on a real GPU at world size 1 (one rank: NCCL's allreduce is then a copy)."""
    reason = gpu_missing()
    if reason is not None:
        pytest.skip(f"no GPU with NCCL here, so NCCL never ran: {reason}")
    X, y = problem(100)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    launch(tmp_path, GPU_NCCL, ranks=1)
    result = np.load(tmp_path / "result.npz")
    net = l2fast.Network([6, 8, 3], lam=0.5, backend="cuda", dtype="float64", seed=1)
    net.fit(X, y, epochs=2, lr=0.05, batch_size=32, optimizer="adam")
    assert_same_network(net, [result[f"arr_{i}"] for i in range(2)], [result[f"arr_{i}"] for i in range(2, 4)], 1e-10)


# -- the scaling benchmark (l2fast bench --configs M) ------------------------------------------------------------


def test_the_ring_model_and_its_fit():
    from l2fast import bench_mpi

    alpha, beta, n = 3e-6, 2e-10, 1 << 20
    assert bench_mpi.ring_allreduce_seconds(n, 1, alpha, beta) == 0
    assert bench_mpi.ring_allreduce_seconds(n, 2, alpha, beta) == pytest.approx(2 * alpha + n * beta)
    assert bench_mpi.ring_allreduce_seconds(n, 4, alpha, beta) == pytest.approx(6 * alpha + 1.5 * n * beta)
    points = [(b, bench_mpi.ring_allreduce_seconds(b, 2, alpha, beta)) for b in (8, 8 << 20)]
    assert bench_mpi.fit_alpha_beta(*points) == pytest.approx((alpha, beta))
    efficiency = [bench_mpi.predicted_efficiency(1e-3, n, N, alpha, beta) for N in bench_mpi.RANKS]
    assert all(0 < e < 1 for e in efficiency) and efficiency == sorted(efficiency, reverse=True)
    assert bench_mpi.predicted_efficiency(1e-3, n, 2, 0, 0) == pytest.approx(1.0)


def test_the_scaling_benchmark_runs_its_layouts():
    import io

    from l2fast import bench_mpi

    out = io.StringIO()
    record = bench_mpi.run(repeats=1, out=out, quick=True, rounds=1)
    summary = record["configs"]["B"]
    assert set(summary) == {name for name, *_ in bench_mpi.LAYOUTS}
    two = summary["2 ranks x 1 thread"]
    assert two["epoch_seconds"] > 0 and two["allreduce_seconds"] > 0 and two["threads"] == 1
    assert summary["1 process x 2 threads"]["threads"] == 2
    assert summary["1 process x 1 thread"]["allreduce_seconds"] == 0
    assert record["shared_memory"]["alpha"] >= 0 and record["shared_memory"]["beta"] > 0
    assert len(record["model"]["B"]["efficiency"]["10 GbE"]) == len(bench_mpi.RANKS)
    assert "2 ranks x 1 thread" in out.getvalue() and "N=64" in out.getvalue()
