"""The cuda backend's sparse X against the same X dense and the reference: training (SGD, momentum, Adam, minibatch
and full batch, weighted, batches of empty rows), cost, gradients, predictions, L-BFGS, NewtonCG, the stacked sweep
and the logistic regression estimator, on CSR with unsorted and duplicate indices and empty rows, every sparse format,
int64 indices and cupyx matrices already on the GPU; malformed matrices refused with the model unchanged. Each runs on
the host stand-in of the GPU (tests/cuda_emulation.py, with its stand-in for cupyx over scipy.sparse: "emulated") and
on a GPU ("gpu"); the "emulated" tests alone count what the stand-in records (captures, sparse products). Without a
usable GPU the "gpu" variants are left out and test_a_gpu_is_here skips, once, saying why: here none of this has run
on a GPU, and cupyx's products (cuSPARSE SpMM) and row indexing are SciPy's."""
import sys

import numpy as np
import pytest

import l2fast
from l2fast.backends import cuda as cuda_backend
from l2fast.backends import get_backend, numpy_ref
from l2fast.testing import assert_parity, parameters

from cuda_emulation import DeviceSparse, FakeStream, emulated_gpu
from test_cuda import GPU_MISSING
from test_sparse import BAD, CASES, assert_same_answers, bad_matrix, labels, messy_csr, model_labels


def test_a_gpu_is_here():
    if GPU_MISSING is not None:
        pytest.skip(f"no GPU for backend='cuda' here, so only the emulated variants of sparse X run: {GPU_MISSING}")
    import cupyx.scipy.sparse  # noqa: F401  (the real one: the gpu variants use it)


@pytest.fixture(params=["emulated"] + (["gpu"] if GPU_MISSING is None else []))
def device(request, monkeypatch, kernel_folder):
    """Where backend='cuda' runs in this test: "emulated" (the host stand-in) or "gpu"."""
    if request.param == "gpu":
        get_backend("cuda")  # binds the real CuPy again after an emulated test
        monkeypatch.setattr(cuda_backend, "_DEVICE_CSR", [])
        yield "gpu"
        return
    with emulated_gpu(monkeypatch, kernel_folder):
        yield "emulated"


def problem(loss, dtype, seed=3):
    X, dense = messy_csr(150, 25, seed, density=0.2, dtype=dtype)
    rng = np.random.default_rng(seed)
    n_out = 1 if loss == "logistic" else 4
    y = rng.integers(0, 2 if loss == "logistic" else n_out, 150) if loss != "squared_error" else \
        rng.normal(size=(150, n_out))
    return X, dense.astype(dtype), y, rng.uniform(0.5, 2, 150), n_out


@pytest.mark.parametrize("loss", ["logistic", "softmax", "squared_error"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_linear_pass_matches_the_reference_on_the_host(loss, dtype):
    """numpy_ref.linear_pass (the cuda backend's sparse pass, in array operations) against the reference's
    gradients-and-predict composition, on scipy.sparse and dense X."""
    X, dense, y, w, n_out = problem(loss, dtype)
    net = l2fast.Network([25, n_out], loss=loss, lam=0.9, backend="numpy", dtype=dtype, seed=1)
    X_b, y_b, w_b = net._data(X, y, w)
    backend = net._backend
    reference = backend.linear_gradient_curvature(net._weights[0], net._biases[0], X_b, y_b, 0.9 / 150, loss, w_b)
    for X_in in (X_b, backend.features(dense, 25, net.dtype)):
        ours = numpy_ref.linear_pass(net._weights[0], net._biases[0], X_in, y_b, 0.9 / 150, loss, w_b)
        for a, b in zip(ours, reference):
            if b is not None:
                assert_parity(a, b, dtype, "linear pass")


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_newton_cg_on_sparse_x_resident_on_the_gpu(device, loss, dtype):
    X, dense, y, w, n_out = problem(loss, dtype)
    tol = 1e-7 if dtype == "float64" else 1e-4
    fits = {}
    for name, backend, X_in in (("cuda sparse", "cuda", X), ("cuda dense", "cuda", dense), ("numpy", "numpy", X)):
        net = l2fast.Network([25, n_out], loss=loss, lam=0.9, backend=backend, dtype=dtype, seed=2)
        assert net.fit(X_in, y, epochs=50, optimizer=l2fast.NewtonCG(tol=tol), sample_weight=w).converged
        fits[name] = net
    assert cuda_backend._DEVICE_CSR, "the sparse X was not made a device CSR"
    for name in ("cuda sparse", "cuda dense"):
        for a, b in zip(fits[name].weights + fits[name].biases, fits["numpy"].weights + fits["numpy"].biases):
            assert_parity(a, b, "float32", f"{name} parameters")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes, loss", CASES + [([60, 5, 2], "squared_error")])
def test_sparse_x_gives_the_answers_of_the_same_x_dense(device, dtype, sizes, loss):
    """cost, cost_parts, gradients, predict_proba, predict and score, weighted and not."""
    X, dense = messy_csr(150, sizes[0], seed=1)
    y = labels(loss, 150, sizes[-1], seed=2) if loss != "squared_error" else \
        np.random.default_rng(2).normal(size=(150, sizes[-1]))
    net = l2fast.Network(sizes, loss=loss, lam=0.7, backend="cuda", dtype=dtype, seed=3)
    if loss == "squared_error":  # a regressor: no predict_proba
        for w in (None, np.random.default_rng(4).uniform(0, 2, 150)):
            assert_parity(net.cost(X, y, w), net.cost(dense, y, w), dtype, "cost")
            for g_sparse, g_dense in zip(sum(net.gradients(X, y, w), []), sum(net.gradients(dense, y, w), [])):
                assert_parity(g_sparse, g_dense, dtype, "gradients")
            assert_parity(net.predict(X), net.predict(dense), dtype, "predict")
            assert net.score(X, y, w) == pytest.approx(net.score(dense, y, w), rel=1e-6)
        return
    assert_same_answers(net, X, dense, y, dtype)
    assert_same_answers(net, X, dense, y, dtype, w=np.random.default_rng(4).uniform(0, 2, 150))
    reference = l2fast.Network(sizes, loss=loss, lam=0.7, backend="numpy", dtype=dtype, seed=3)
    assert_parity(net.cost(X, y), reference.cost(X, y), dtype, "cost against the reference")


def test_a_cupyx_sparse_x_is_taken_as_the_same_scipy_one(device):
    """A matrix already on the GPU (unsorted, with duplicates) is checked on the host like a scipy one, and the
    answers for it are CuPy arrays, as for a dense X on the GPU."""
    import cupy
    import cupyx.scipy.sparse

    X, dense = messy_csr(60, 20, seed=41)
    y = labels("softmax", 60, 3, seed=42)
    net = l2fast.Network([20, 3], lam=0.2, backend="cuda", dtype="float64", seed=43)
    on_gpu = cupyx.scipy.sparse.csr_matrix((cupy.asarray(X.data), cupy.asarray(X.indices), cupy.asarray(X.indptr)),
                                           shape=X.shape)
    assert net.cost(on_gpu, y) == pytest.approx(net.cost(dense, y), rel=1e-12)
    labels_on_gpu, proba_on_gpu = net.predict(on_gpu), net.predict_proba(on_gpu)
    assert isinstance(labels_on_gpu, cupy.ndarray) and isinstance(proba_on_gpu, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(labels_on_gpu), net.predict(dense))
    assert_parity(cupy.asnumpy(proba_on_gpu), net.predict_proba(dense), "float64", "predict_proba")
    bad = cupyx.scipy.sparse.csr_matrix((cupy.asarray(np.full(X.nnz, np.nan)), cupy.asarray(X.indices),
                                         cupy.asarray(X.indptr)), shape=X.shape)
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        net.predict(bad)


def test_passes_over_the_whole_data_go_block_by_block(device, monkeypatch):
    """More rows than a block: predict, cost and gradients on sparse X take its rows block by block, as on dense X."""
    monkeypatch.setattr(cuda_backend, "BLOCK_ROWS", 40)
    X, dense = messy_csr(150, 30, seed=30)
    y = labels("softmax", 150, 3, seed=31)
    net = l2fast.Network([30, 6, 3], lam=0.4, backend="cuda", dtype="float64", seed=32)
    assert_same_answers(net, X, dense, y, "float64")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer, batch_size, shuffle", [("sgd", 16, True), ("sgd", 16, False), ("adam", 32, True),
                                                            ("momentum", None, True), ("sgd", None, True)])
def test_training_on_sparse_x_ends_where_dense_training_does(device, dtype, optimizer, batch_size, shuffle):
    """Minibatch epochs (shuffled: each batch gathered from X as a small CSR; in order: row slices, with a smaller
    last batch) and full batches, weighted, with validation data, against the same X dense on the GPU and the
    reference on sparse X."""
    X, dense = messy_csr(130, 60, seed=5)
    y = labels("softmax", 130, 3, seed=6)
    w = np.random.default_rng(7).uniform(0.5, 1.5, 130)
    nets = [l2fast.Network([60, 12, 3], activation="tanh", lam=0.5, backend=backend, dtype=dtype, seed=8)
            for backend in ("cuda", "cuda", "numpy")]
    histories = [net.fit(data, y, epochs=4, lr=0.05, batch_size=batch_size, optimizer=optimizer, sample_weight=w,
                         shuffle=shuffle, validation_data=(data[:40], y[:40]))
                 for net, data in zip(nets, (X, dense, X))]
    for other, what in ((1, "dense on the GPU"), (2, "the reference on sparse X")):
        assert_parity(histories[0].val_loss, histories[other].val_loss, dtype, f"validation loss against {what}")
        assert_parity(histories[0].cost, histories[other].cost, dtype, f"training cost against {what}")
        for p_sparse, p_other in zip(parameters(nets[0]), parameters(nets[other])):
            assert_parity(p_sparse, p_other, dtype, f"parameters after training against {what}")
    assert np.abs(nets[0].weights[0] - l2fast.Network([60, 12, 3], seed=8, dtype=dtype).weights[0]).max() > 1e-3


@pytest.mark.parametrize("shuffle", [True, False])
def test_emulated_batches_are_cut_from_chunks_of_gathered_rows(emulated, monkeypatch, shuffle):
    """SPARSE_CHUNK_ROWS at a time (rounded down to whole batches) gathered in the epoch's order, the batches cut from
    them on the host's offsets: one row gather per chunk when shuffled, none in order; the same training as dense."""
    from l2fast.backends import cuda

    from l2fast import shuffling

    monkeypatch.setattr(cuda, "SPARSE_CHUNK_ROWS", 40)  # 32 rows a chunk: 5 chunks of 130 rows, the last of 2
    orders, draw = [], shuffling.epoch_order
    monkeypatch.setattr(shuffling, "epoch_order", lambda rng, m: orders.append(draw(rng, m)) or orders[-1])
    X, dense = messy_csr(130, 30, seed=53)
    y = labels("softmax", 130, 3, seed=54)
    nets = [l2fast.Network([30, 6, 3], lam=0.3, backend="cuda", dtype="float64", seed=55) for _ in range(2)]
    for net, data in zip(nets, (X, dense)):
        net.fit(data, y, epochs=2, lr=0.1, batch_size=16, shuffle=shuffle)
    assert DeviceSparse.row_gathers == (2 * 5 if shuffle else 0)
    # two epochs of 9 steps, each two SpMMs, but for a batch whose rows are all empty (none)
    entries = np.diff(X.indptr)
    epoch_orders = orders[:2] if shuffle else [np.arange(130)] * 2
    assert DeviceSparse.products == sum(2 * bool(entries[order[start:start + 16]].any())
                                        for order in epoch_orders for start in range(0, 130, 16))
    for p, q in zip(parameters(nets[0]), parameters(nets[1])):
        assert_parity(p, q, "float64", "parameters")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batches_of_empty_rows_step_as_dense_ones_do(device, optimizer):
    """One record per step, in order: every 7th row of X is empty, so some batches hold no entries at all (no
    SpMM on them); alone and stacked."""
    X, dense = messy_csr(28, 15, seed=44)
    assert (np.diff(X.indptr) == 0).sum() == 4
    y = labels("softmax", 28, 3, seed=45)
    runs = []
    for data in (X, dense):
        nets = [l2fast.Network([15, 4, 3], lam=lam, backend="cuda", dtype="float64", seed=46) for lam in (0.1, 1.0)]
        nets[0].fit(data, y, epochs=2, lr=0.1, batch_size=1, shuffle=False, optimizer=optimizer)
        if optimizer == "sgd":
            l2fast.fit_together(nets, data, y, epochs=2, lr=0.1, batch_size=1, shuffle=False)
        runs.append(nets)
    for a, b in zip(*runs):
        for p, q in zip(parameters(a), parameters(b)):
            assert_parity(p, q, "float64", f"{optimizer}, lam={a.lam}")


@pytest.mark.parametrize("sizes, loss", [([40, 1], "logistic"), ([40, 7, 3], "softmax")])
def test_emulated_sparse_epoch_runs_uncaptured_and_never_densifies_x(emulated, sizes, loss):
    """The README's account: a sparse epoch's steps launch one by one (cupyx allocates), their first-layer products
    are cupyx's, and no dense copy of X or of a batch of it is made; a dense epoch after it is captured as before."""
    X, dense = messy_csr(100, sizes[0], seed=33)
    y = labels(loss, 100, sizes[-1], seed=34)
    net = l2fast.Network(sizes, loss=loss, lam=0.3, backend="cuda", dtype="float32", seed=35)
    net.fit(X, y, epochs=2, lr=0.1, batch_size=10)
    workspace = net._backend._workspace
    assert FakeStream.captures == 0 and net._backend.captures == 0
    assert DeviceSparse.products == 2 * 10 * 2  # per step: Z = X W^T and (X^T dZ)^T
    assert workspace.xb.size == 1, "a dense batch buffer of X was made for sparse X"
    net.fit(dense, y, epochs=2, lr=0.1, batch_size=10)
    assert FakeStream.captures > 0 and net._backend._workspace.xb.shape == (10, sizes[0])


@pytest.mark.filterwarnings("ignore::l2fast.ConvergenceWarning")  # 30 iterations: the same path is the point
@pytest.mark.parametrize("n_out", [1, 3])
def test_lbfgs_on_sparse_x_ends_where_it_does_on_dense_x(device, n_out):
    X, dense = messy_csr(200, 40, seed=18, density=0.1)
    y = model_labels(X, n_out, seed=19)
    loss = "logistic" if n_out == 1 else "softmax"
    fits = []
    for backend, data in (("cuda", X), ("cuda", dense), ("numpy", X)):
        net = l2fast.Network([40, 5, n_out], loss=loss, lam=0.5, backend=backend, dtype="float64", seed=0)
        net.fit(data, y, epochs=30, optimizer=l2fast.LBFGS(tol=1e-10))
        fits.append(net)
    for other in fits[1:]:
        for p, q in zip(parameters(fits[0]), parameters(other)):
            assert_parity(p, q, "float64", f"L-BFGS parameters against {other.backend}")


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # a short sweep: the choice is not the point
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stacked_sweep_on_sparse_x_matches_separate_dense_fits(device, dtype):
    """fit_together: one gathered sparse minibatch and one SpMM each way for all K networks."""
    X, dense = messy_csr(120, 50, seed=11)
    y = labels("softmax", 120, 4, seed=12)
    lams = [0.0, 0.5, 5.0]

    def nets():
        return [l2fast.Network([50, 10, 4], lam=lam, backend="cuda", dtype=dtype, seed=13) for lam in lams]

    stacked, alone = nets(), nets()
    l2fast.fit_together(stacked, X, y, epochs=3, lr=0.1, batch_size=16, sample_weight=np.linspace(0.5, 1.5, 120))
    for net in alone:
        net.fit(dense, y, epochs=3, lr=0.1, batch_size=16, sample_weight=np.linspace(0.5, 1.5, 120))
    for a, b in zip(stacked, alone):
        for p, q in zip(parameters(a), parameters(b)):
            assert_parity(p, q, dtype, f"lam={a.lam}")
    sweep = l2fast.select_lambda(X, y, lams=lams, layer_sizes=[50, 10, 4], backend="cuda", epochs=2, lr=0.1,
                                 batch_size=16, seed=0, progress=False)
    assert sweep.best_lam in lams and all(np.isfinite(r.dev_loss) for r in sweep.results)


@pytest.mark.parametrize("kind, error, message", BAD)
def test_malformed_sparse_x_is_refused_and_the_model_is_unchanged(device, kind, error, message):
    X = bad_matrix(kind)
    y = labels("logistic", X.shape[0], 1, seed=22)
    net = l2fast.Network([20, 4, 1], loss="logistic", lam=1.0, backend="cuda", dtype="float32", seed=23)
    before = parameters(net)
    for call in (lambda: net.fit(X, y, epochs=2, lr=0.1, batch_size=8), lambda: net.fit(X, y, optimizer="lbfgs"),
                 lambda: net.cost(X, y), lambda: net.predict(X), lambda: net.gradients(X, y),
                 lambda: l2fast.fit_together([net], X, y, epochs=1)):
        with pytest.raises(error, match=message):
            call()
    for p, q in zip(before, parameters(net)):
        np.testing.assert_array_equal(p, q)


def test_emulated_cupyx_refuses_what_cupyx_refuses(emulated):
    """The stand-in is held to cupyx's API: products with host arrays and sparse work inside a capture fail."""
    import cupy
    import cupyx.scipy.sparse

    X, dense = messy_csr(20, 6, seed=40)
    device_X = cupyx.scipy.sparse.csr_matrix((cupy.asarray(X.data), cupy.asarray(X.indices),
                                              cupy.asarray(X.indptr)), shape=X.shape)
    W = cupy.asarray(np.ones((6, 2)))
    Z = device_X @ W
    assert isinstance(Z, cupy.ndarray) and Z.flags.f_contiguous
    np.testing.assert_allclose(np.asarray(Z), dense @ np.ones((6, 2)))
    np.testing.assert_allclose(np.asarray(device_X.T @ Z), dense.T @ (dense @ np.ones((6, 2))))
    picked = device_X[cupy.asarray(np.array([3, 0, 3]))]
    assert cupyx.scipy.sparse.issparse(picked) and picked.shape == (3, 6)
    with pytest.raises(TypeError, match="must be a cupy.ndarray"):
        device_X @ np.ones((6, 2))
    stream = cupy.cuda.Stream()
    stream.begin_capture()
    try:
        with pytest.raises(AssertionError, match="no sparse product inside a stream capture"):
            device_X @ W
    finally:
        stream.end_capture()
    assert sys.modules["cupyx.scipy.sparse"] is cupyx.scipy.sparse


def test_a_rising_cost_on_sparse_x_warns_naming_the_wide_features(device):
    """The divergence warning reads the feature scales of the sparse X on the GPU (on the host, without densifying
    it), as it does for the same X dense."""
    X, dense = messy_csr(120, 10, seed=47, density=0.4)
    X = X.tocsr() * 1.0
    X[:, 3] = X[:, 3] * 40
    dense[:, 3] *= 40
    y = labels("logistic", 120, 1, seed=48)
    for data in (X, dense):
        net = l2fast.Network([10, 1], loss="logistic", lam=0.0, backend="cuda", dtype="float64", seed=49)
        with pytest.warns(l2fast.DivergenceWarning, match="features 3 have a mean or spread above 10"):
            net.fit(data, y, epochs=3, lr=0.5)


def test_data_parallel_training_refuses_sparse_x_on_the_gpu_by_name(device):
    class OneRank:  # one rank of an mpi4py-like communicator, enough for the checks before a data-parallel fit
        __module__ = "mpi4py.MPI"
        Iallreduce = None

        def allgather(self, value):
            return [value]

        def Get_rank(self):
            return 0

    X, _ = messy_csr(30, 8, seed=50)
    net = l2fast.Network([8, 2], backend="cuda", dtype="float32", seed=51)
    before = parameters(net)
    with pytest.raises(ValueError, match="X: data-parallel training takes dense X"):
        net.fit(X, labels("softmax", 30, 2, seed=52), batch_size=10, comm=OneRank())
    for p, q in zip(before, parameters(net)):
        np.testing.assert_array_equal(p, q)


def test_the_logistic_regression_estimator_takes_sparse_x_on_the_gpu(device):
    import scipy.sparse as sp

    from l2fast.sklearn import L2LogisticRegression

    X, dense = messy_csr(200, 40, seed=27)
    y = np.where(labels("softmax", 200, 3, seed=28) == 0, "a", "b")
    on_sparse = L2LogisticRegression(backend="cuda", epochs=2000, tol=1e-10).fit(sp.csc_matrix(X), y)
    on_dense = L2LogisticRegression(backend="cuda", epochs=2000, tol=1e-10).fit(dense, y)
    np.testing.assert_allclose(on_sparse.predict_proba(X), on_dense.predict_proba(dense), rtol=1e-5, atol=1e-7)
    assert on_sparse.score(sp.coo_array(X), y) == on_dense.score(dense, y)


@pytest.mark.parametrize("make", ["csr_matrix", "csc_matrix", "coo_array", "lil_matrix", "dok_array"])
def test_every_sparse_format_and_index_type_is_taken_on_the_gpu(device, make):
    import scipy.sparse as sp

    X, dense = messy_csr(40, 30, seed=14)
    y = labels("logistic", 40, 1, seed=15)
    net = l2fast.Network([30, 1], loss="logistic", lam=1.0, backend="cuda", dtype="float64", seed=16)
    want = net.cost(dense, y)
    assert net.cost(getattr(sp, make)(X), y) == pytest.approx(want, rel=1e-12)
    wide = sp.csr_matrix((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)), shape=X.shape)
    assert net.cost(wide, y) == pytest.approx(want, rel=1e-12)
    net.fit(wide, y, epochs=1, lr=0.1, batch_size=8)
    assert np.isfinite(net.cost(X, y))
