"""scipy.sparse X on the numpy and cpu backends: the same numbers as the same X dense, the same optimum as
scikit-learn's LogisticRegression on the same matrix, and malformed matrices refused before anything changes."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

import l2fast
from l2fast import _core, _validate, monitor
from l2fast.testing import assert_parity, parameters, twin_networks

BACKENDS = ["numpy", "cpu"]


def messy_csr(m, n, seed, density=0.05, dtype=np.float64):
    """A (m, n) CSR matrix with unsorted column indices, duplicate entries (summed by scipy) and empty rows,
    and the same matrix dense."""
    rng = np.random.default_rng(seed)
    rows, cols, vals = [], [], []
    for i in range(m):
        if i % 7 == 3:
            continue  # an empty row
        k = max(1, rng.binomial(n, density))
        picked = rng.choice(n, size=k, replace=False)
        picked = np.concatenate([picked, picked[:1]])  # one duplicate per row
        rows += [i] * len(picked)
        cols += list(picked[::-1])  # unsorted
        vals += list(rng.normal(size=len(picked)))
    indptr = np.searchsorted(np.asarray(rows), np.arange(m + 1))
    X = sp.csr_matrix((np.asarray(vals, dtype=dtype), np.asarray(cols, dtype=np.int32), indptr), shape=(m, n))
    assert not X.has_canonical_format
    dense = np.zeros((m, n))
    np.add.at(dense, (np.asarray(rows), np.asarray(cols)), vals)
    return X, dense


def labels(loss, m, n_out, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, m) if loss == "logistic" else rng.integers(0, n_out, m)


def model_labels(X, n_out, seed):
    """Labels of X from a random linear model: its sign for one output, its largest score for more."""
    scores = X @ np.random.default_rng(seed).normal(size=(X.shape[1], n_out)) * 2
    return (scores[:, 0] > 0).astype(int) if n_out == 1 else scores.argmax(axis=1)


CASES = [([60, 12, 3], "softmax"), ([60, 1], "logistic")]


def assert_same_answers(net, X_sparse, X_dense, y, dtype, w=None):
    """net answers on sparse X as on the same X dense: cost, its parts, gradients, predictions, score."""
    assert_parity(net.cost(X_sparse, y, w), net.cost(X_dense, y, w), dtype, "cost")
    assert_parity(net.cost_parts(X_sparse, y, w), net.cost_parts(X_dense, y, w), dtype, "cost parts")
    for g_sparse, g_dense in zip(sum(net.gradients(X_sparse, y, w), []), sum(net.gradients(X_dense, y, w), [])):
        assert g_sparse.dtype == np.dtype(dtype)
        assert_parity(g_sparse, g_dense, dtype, "gradients")
    assert_parity(net.predict_proba(X_sparse), net.predict_proba(X_dense), dtype, "predict_proba")
    np.testing.assert_array_equal(net.predict(X_sparse), net.predict(X_dense))
    assert net.score(X_sparse, y, w) == pytest.approx(net.score(X_dense, y, w), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes, loss", CASES)
def test_sparse_x_gives_the_answers_of_the_same_x_dense(backend, dtype, sizes, loss):
    X, dense = messy_csr(150, sizes[0], seed=1)
    y = labels(loss, 150, sizes[-1], seed=2)
    net = l2fast.Network(sizes, loss=loss, lam=0.7, backend=backend, dtype=dtype, seed=3)
    assert_same_answers(net, X, dense, y, dtype)
    assert_same_answers(net, X, dense, y, dtype, w=np.random.default_rng(4).uniform(0, 2, 150))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer, batch_size", [("sgd", 16), ("adam", 32), ("momentum", None), ("sgd", None)])
def test_training_on_sparse_x_ends_where_dense_training_does(backend, dtype, optimizer, batch_size):
    X, dense = messy_csr(130, 60, seed=5)
    y = labels("softmax", 130, 3, seed=6)
    w = np.random.default_rng(7).uniform(0.5, 1.5, 130)
    nets = [l2fast.Network([60, 12, 3], activation="tanh", lam=0.5, backend=backend, dtype=dtype, seed=8)
            for _ in range(2)]
    histories = [net.fit(data, y, epochs=4, lr=0.05, batch_size=batch_size, optimizer=optimizer, sample_weight=w,
                         validation_data=(data[:40], y[:40])) for net, data in zip(nets, (X, dense))]
    assert_parity(histories[0].val_loss, histories[1].val_loss, dtype, "validation loss")
    assert_parity(histories[0].cost, histories[1].cost, dtype, "training cost")
    for p_sparse, p_dense in zip(parameters(nets[0]), parameters(nets[1])):
        assert_parity(p_sparse, p_dense, dtype, "parameters after training")
    assert np.abs(nets[0].weights[0] - l2fast.Network([60, 12, 3], seed=8, dtype=dtype).weights[0]).max() > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_training_on_sparse_x_matches_the_reference(dtype):
    X, _ = messy_csr(130, 60, seed=9)
    y = labels("logistic", 130, 1, seed=10)
    ref, net = twin_networks([60, 8, 1], "relu", "logistic", dtype, "cpu")
    for model in (ref, net):
        model.fit(X, y, epochs=3, lr=0.1, batch_size=10)
    for p, p_ref in zip(parameters(net), parameters(ref)):
        assert_parity(p, p_ref, dtype, "cpu against numpy on sparse X")


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # a short sweep: the choice is not the point
@pytest.mark.parametrize("backend", BACKENDS)
def test_stacked_sweep_on_sparse_x_matches_separate_dense_fits(backend):
    X, dense = messy_csr(120, 50, seed=11)
    y = labels("softmax", 120, 4, seed=12)
    lams = [0.0, 0.5, 5.0]

    def nets():
        return [l2fast.Network([50, 10, 4], lam=lam, backend=backend, dtype="float64", seed=13) for lam in lams]

    stacked, alone = nets(), nets()
    l2fast.fit_together(stacked, X, y, epochs=3, lr=0.1, batch_size=16)
    for net in alone:
        net.fit(dense, y, epochs=3, lr=0.1, batch_size=16)
    for a, b in zip(stacked, alone):
        for p, q in zip(parameters(a), parameters(b)):
            assert_parity(p, q, "float64", f"lam={a.lam}")
    sweep = l2fast.select_lambda(X, y, lams=lams, layer_sizes=[50, 10, 4], backend=backend, epochs=2, lr=0.1,
                                 batch_size=16, seed=0, progress=False)
    assert sweep.best_lam in lams and all(np.isfinite(r.dev_loss) for r in sweep.results)


@pytest.mark.parametrize("make", [sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.lil_matrix, sp.csr_array,
                                  sp.csc_array, sp.coo_array, sp.dok_array])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_sparse_format_and_index_type_is_taken(make, backend):
    X, dense = messy_csr(40, 30, seed=14)
    y = labels("logistic", 40, 1, seed=15)
    net = l2fast.Network([30, 1], loss="logistic", lam=1.0, backend=backend, dtype="float64", seed=16)
    want = net.cost(dense, y)
    assert net.cost(make(X), y) == pytest.approx(want, rel=1e-12)
    wide = sp.csr_matrix((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)), shape=X.shape)
    assert net.cost(wide, y) == pytest.approx(want, rel=1e-12)
    assert net.cost(sp.csr_matrix(np.round(dense * 10).astype(np.int64)), y) == \
        pytest.approx(net.cost(np.round(dense * 10), y), rel=1e-12)


def test_the_callers_matrix_is_never_changed():
    X, _ = messy_csr(30, 20, seed=17)
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    converted = _validate.sparse_features(X, 20, np.float64)
    assert converted.has_canonical_format and converted.indices.dtype == np.int32 and len(converted) == 30
    for a, b in zip(before, (X.data, X.indices, X.indptr)):
        np.testing.assert_array_equal(a, b)


def test_a_canonical_csr_in_another_dtype_gets_new_values_only():
    """float64 CSR for a float32 network: the values are converted, the index arrays used as they are (no copy of
    X's structure); a non-canonical one is copied whole before its duplicates are summed, the caller's unchanged."""
    X, dense = messy_csr(30, 20, seed=21)
    clean = sp.csr_matrix(dense)
    converted = _validate.sparse_features(clean, 20, np.float32)
    assert converted.data.dtype == np.float32
    np.testing.assert_array_equal(converted.data, clean.data.astype(np.float32))
    assert np.shares_memory(converted.indices, clean.indices) and np.shares_memory(converted.indptr, clean.indptr)
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    messy = _validate.sparse_features(X, 20, np.float32)
    assert messy.has_canonical_format and not np.shares_memory(messy.indices, X.indices)
    np.testing.assert_allclose(messy.toarray(), dense.astype(np.float32), rtol=1e-6)
    for a, b in zip(before, (X.data, X.indices, X.indptr)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_out", [1, 3])
def test_lbfgs_on_sparse_x_reaches_scikit_learns_optimum(backend, n_out):
    X, _ = messy_csr(400, 80, seed=18, density=0.1)
    y = model_labels(X, n_out, seed=19)
    lam = 0.5
    theirs = LogisticRegression(C=1 / lam, tol=1e-10, max_iter=10_000).fit(X, y)
    net = l2fast.Network([80, n_out], loss="logistic" if n_out == 1 else "softmax", lam=lam, backend=backend,
                         dtype="float64", seed=0)
    history = net.fit(X, y, epochs=5000, optimizer=l2fast.LBFGS(tol=1e-10))
    assert history.converged
    coef = net.weights[0]
    if n_out > 1:  # softmax is defined up to a shift; scikit-learn's penalised optimum has zero-mean columns
        coef = coef - coef.mean(axis=0)
    np.testing.assert_allclose(coef, theirs.coef_, rtol=1e-5, atol=1e-6)
    judge = l2fast.Network([80, n_out], loss=net.loss, lam=lam, dtype="float64")
    judge.set_parameters([theirs.coef_], [theirs.intercept_])
    assert net.cost(X, y) == pytest.approx(judge.cost(X, y), rel=1e-9)


def test_a_first_layer_far_wider_than_memory_allows_dense_trains():
    """1000 x 1,000,000: densified, X alone would take 4 GB in float32; sparse it is 20 kB of entries."""
    m, n = 1000, 1_000_000
    rng = np.random.default_rng(20)
    X = sp.random(m, n, density=5e-6, format="csr", dtype=np.float32, random_state=rng)
    y = rng.integers(0, 2, m)
    for backend in BACKENDS:
        net = l2fast.Network([n, 1], loss="logistic", lam=1.0, backend=backend, dtype="float32", seed=0)
        net.fit(X, y, epochs=2, lr=0.5, batch_size=100)
        assert net.predict(X).shape == (m,) and np.isfinite(net.cost(X, y))


BAD = [
    ("nan", ValueError, "X: contains NaN or infinity"),
    ("inf", ValueError, "X: contains NaN or infinity"),
    ("width", ValueError, "X: expected 20 features per record, got 21"),
    ("rows", ValueError, "X: no records"),
    ("bool", TypeError, "X: expected real numbers"),
    ("complex", TypeError, "X: expected real numbers"),
]


def bad_matrix(kind):
    X, _ = messy_csr(30, 20, seed=21)
    X.sum_duplicates()
    if kind in ("nan", "inf"):
        X.data[3] = np.nan if kind == "nan" else -np.inf
    elif kind == "width":
        X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(30, 21))
    elif kind == "rows":
        X = sp.csr_matrix((0, 20))
    elif kind == "bool":
        X = X.astype(bool)
    else:
        X = X.astype(np.complex128)
    return X


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, error, message", BAD)
def test_malformed_sparse_x_is_refused_and_the_model_is_unchanged(backend, kind, error, message):
    X = bad_matrix(kind)
    y = labels("logistic", X.shape[0], 1, seed=22)
    net = l2fast.Network([20, 4, 1], loss="logistic", lam=1.0, backend=backend, dtype="float32", seed=23)
    before = parameters(net)
    for call in (lambda: net.fit(X, y, epochs=2, lr=0.1, batch_size=8), lambda: net.fit(X, y, optimizer="lbfgs"),
                 lambda: net.cost(X, y), lambda: net.predict(X), lambda: net.gradients(X, y)):
        with pytest.raises(error, match=message):
            call()
    for p, q in zip(before, parameters(net)):
        np.testing.assert_array_equal(p, q)


def test_the_bindings_check_every_csr_array_before_reading_it():
    X, _ = messy_csr(10, 8, seed=24)
    X.sum_duplicates()
    W, b = [np.zeros((1, 8))], [np.zeros(1)]
    y = np.zeros((10, 1))

    def call(data, indices, indptr, shape=(10, 8)):
        return _core.gradients(W, b, (data, indices, indptr, shape), y, 0.0, "relu", "logistic")

    dW, db, loss_sum = call(X.data, X.indices, X.indptr)
    dW64, db64, loss_sum64 = call(X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64))
    np.testing.assert_array_equal(dW64[0], dW[0])
    assert loss_sum64 == loss_sum and np.abs(dW[0]).max() > 0
    spoilt = [
        (lambda d, i, p: (d, i, np.concatenate([[1], p[1:]]).astype(p.dtype)), ValueError, "indptr\\[0\\] must be 0"),
        (lambda d, i, p: (d, i, p[::-1].copy()), ValueError, "X: indptr"),
        (lambda d, i, p: (d, np.where(np.arange(len(i)) == 2, 8, i).astype(i.dtype), p), ValueError,
         "column index 8 .* outside \\[0, 8\\)"),
        (lambda d, i, p: (d, np.where(np.arange(len(i)) == 2, -1, i).astype(i.dtype), p), ValueError,
         "column index -1"),
        (lambda d, i, p: (d, i[::-1].copy(), p), ValueError, "unsorted or repeat"),
        (lambda d, i, p: (d, i.astype(np.int16), p), TypeError, "X.indices: expected dtype int32 or int64"),
        (lambda d, i, p: (d, i, p.astype(np.int64)), TypeError, "X.indptr: expected dtype int32"),
        (lambda d, i, p: (d.astype(np.float32), i, p), TypeError, "X.data: expected dtype float64"),
        (lambda d, i, p: (d, i[:-1].copy(), p), ValueError, "X.indices: expected shape"),
        (lambda d, i, p: (d, i, p[:-1].copy()), ValueError, "X.indptr: expected shape"),
    ]
    for spoil, error, message in spoilt:
        with pytest.raises(error, match=message):
            call(*spoil(X.data, X.indices, X.indptr))
    with pytest.raises(ValueError, match="X: expected a sparse shape \\(m, 8\\)"):
        call(X.data, X.indices, X.indptr, shape=(10, 9))


def test_the_dense_check_refuses_sparse_x_by_name():
    X, _ = messy_csr(5, 4, seed=25)
    with pytest.raises(TypeError, match="X: a scipy.sparse X is taken through sparse_features"):
        _validate.features(X, 4, np.float32)


def test_feature_scale_advice_reads_sparse_x_as_dense():
    X, dense = messy_csr(200, 30, seed=26)
    X = X.tocsr() * 1.0
    X[:, 5] = X[:, 5] * 50
    dense[:, 5] *= 50
    sparse_answer = monitor.extreme_features(_validate.sparse_features(X, 30, np.float64))
    assert sparse_answer == monitor.extreme_features(dense) and 5 in sparse_answer


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_estimators_take_sparse_x(backend):
    from l2fast.sklearn import L2LogisticRegression, L2MLPClassifier

    X, dense = messy_csr(200, 40, seed=27)
    y = np.where(labels("softmax", 200, 3, seed=28) == 0, "a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short budgets: convergence warnings are not the point
        for make in (lambda: L2LogisticRegression(backend=backend, epochs=2000, tol=1e-10),
                     lambda: L2MLPClassifier(hidden_layer_sizes=(8,), epochs=3, backend=backend, random_state=0)):
            on_sparse, on_dense = make().fit(sp.csc_matrix(X), y), make().fit(dense, y)
            np.testing.assert_allclose(on_sparse.predict_proba(X), on_dense.predict_proba(dense), rtol=1e-5,
                                       atol=1e-7)
            assert on_sparse.score(sp.coo_array(X), y) == on_dense.score(dense, y)
