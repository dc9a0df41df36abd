"""NewtonCG, the truncated Newton solver for linear models: the reference Hessian-vector product against finite
differences of the gradient, the cpu and cuda (host stand-in) products against the reference, dense and CSR X,
and the optimum against scikit-learn's LogisticRegression."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

import l2fast
from l2fast import _core, solvers
from l2fast.backends import get_backend
from l2fast.testing import assert_parity

from cuda_emulation import emulated_gpu
from test_sparse import messy_csr

LOSSES = ["logistic", "softmax", "squared_error"]


def problem(loss, m=150, n=40, n_out=3, seed=0, sparse=False, dtype="float64"):
    """(network of [n, n_out] (1 output for logistic), X dense or messy CSR, y, sample weights) on the reference."""
    rng = np.random.default_rng(seed)
    n_out = 1 if loss == "logistic" else n_out
    if sparse:
        X, _ = messy_csr(m, n, seed, density=0.2, dtype=dtype)
    else:
        X = rng.normal(size=(m, n)).astype(dtype)
    y = {"logistic": rng.integers(0, 2, m), "softmax": rng.integers(0, n_out, m),
         "squared_error": rng.normal(size=(m, n_out))}[loss]
    net = l2fast.Network([n, n_out], loss=loss, lam=0.7, backend="numpy", dtype=dtype, seed=seed)
    net.set_parameters([rng.normal(size=(n_out, n)) * 0.3], [rng.normal(size=n_out)])
    return net, X, y, rng.uniform(0.5, 2.0, m)


def flat_gradient(net, X, y, w, x):
    """dJ/dparameters at the flat vector x, float64, through the network's own gradients."""
    flat = solvers.FlatParameters(net)
    saved = net.weights, net.biases
    weights, biases = flat.arrays(x)
    net.set_parameters(weights, biases)
    dW, db = net.gradients(X, y, w)
    net.set_parameters(*saved)
    return flat.flatten_gradients(dW, db)


def reference_hessian(net, X, y, w):
    """A LinearHessian of the network over (X, y, w) on its own backend, with the data as the backend takes them."""
    X_b, y_b, *w_b = net._data(X, y, w)
    return solvers.LinearHessian(solvers.LinearObjective(net, X_b, y_b, w_b[0] if w_b else None))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_reference_product_matches_finite_differences_of_the_gradient(loss, sparse, weighted):
    net, X, y, w = problem(loss, sparse=sparse)
    w = w if weighted else None
    hessian = reference_hessian(net, X, y, w)
    x = hessian.objective.flat.vector()
    rng = np.random.default_rng(5)
    for _ in range(3):
        v = rng.normal(size=x.shape)
        eps = 1e-5
        fd = (flat_gradient(net, X, y, w, x + eps * v) - flat_gradient(net, X, y, w, x - eps * v)) / (2 * eps)
        Hv = hessian(x, v)
        np.testing.assert_allclose(Hv, fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max())


# n_out 3, 10 and 17: rows of 4, 12 and n_out doubles in the cpu passes (logistic has one output whatever n_out)
@pytest.mark.parametrize("loss, n_out", [("logistic", 1)] + [(loss, n) for loss in LOSSES[1:] for n in (3, 10, 17)])
@pytest.mark.parametrize("sparse, index", [(False, None), (True, np.int32), (True, np.int64)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_product_matches_the_reference(loss, n_out, sparse, index, dtype):
    net, X, y, w = problem(loss, m=300, sparse=sparse, dtype=dtype, seed=2, n_out=n_out)
    if sparse:
        X.sort_indices()
        X = sp.csr_matrix((X.data, X.indices.astype(index), X.indptr.astype(index)), shape=X.shape)
    reference = reference_hessian(net, X, y, w)
    x = reference.objective.flat.vector()
    fast_net = l2fast.Network(net.layer_sizes, loss=loss, lam=net.lam, backend="cpu", dtype=dtype)
    fast_net.set_parameters(net.weights, net.biases)
    fast = reference_hessian(fast_net, X, y, w)
    rng = np.random.default_rng(3)
    for _ in range(2):
        v = rng.normal(size=x.shape)
        assert_parity(fast(x, v), reference(x, v), "float64" if dtype == "float64" else "float32", "Hv")
    assert fast.products == 2
    for a, b in zip(fast.objective(x), reference.objective(x)):  # J and its gradient, from the fused pass on cpu
        assert_parity(a, b, dtype, "J and gradient")
    for a, b in zip(fast.objective.curvature_at(x), reference.objective.curvature_at(x)):
        if b is not None:
            assert_parity(a, b, dtype, "curvature")


def test_cpu_product_splits_rows_between_threads_to_the_same_sums():
    """Enough work for every thread: the per-thread sums added up give the one-thread answer to rounding."""
    net, X, y, w = problem("softmax", m=6000, n=60, sparse=True, seed=4)
    X.sort_indices()
    backend = get_backend("cpu")
    c, P = np.ones(X.shape[0]), np.full((X.shape[0], 3), 1 / 3)
    V, v_b = np.random.default_rng(0).normal(size=(3, 60)), np.ones(3)
    features = backend.features(X, 60, np.float64)
    many = _core.linear_hessian_product((features.data, features.indices, features.indptr, X.shape), V, v_b, c, P,
                                        0.1)
    one = l2fast.get_num_threads()
    l2fast.set_num_threads(1)
    try:
        single = _core.linear_hessian_product((features.data, features.indices, features.indptr, X.shape), V, v_b, c,
                                              P, 0.1)
    finally:
        l2fast.set_num_threads(one)
    for a, b in zip(many, single):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_core_product_refuses_bad_arguments():
    X = np.ones((4, 3))
    V, v_b, c = np.ones((2, 3)), np.ones(2), np.ones(4)
    with pytest.raises(ValueError, match="v_b: expected shape"):
        _core.linear_hessian_product(X, V, np.ones(3), c, None, 0.1)
    with pytest.raises(ValueError, match="c: expected shape"):
        _core.linear_hessian_product(X, V, v_b, np.ones(5), None, 0.1)
    with pytest.raises(ValueError, match="P: expected shape"):
        _core.linear_hessian_product(X, V, v_b, c, np.ones((4, 3)), 0.1)
    with pytest.raises(ValueError, match="X: expected shape"):
        _core.linear_hessian_product(np.ones((4, 5)), V, v_b, c, None, 0.1)
    with pytest.raises(TypeError, match="V: expected dtype float64"):
        _core.linear_hessian_product(X, V.astype(np.float32), v_b, c, None, 0.1)
    with pytest.raises(ValueError, match="lam_over_m"):
        _core.linear_hessian_product(X, V, v_b, c, None, -1.0)
    bad = sp.csr_matrix(np.eye(4, 3))
    with pytest.raises(ValueError, match="indptr"):
        _core.linear_hessian_product((bad.data, bad.indices, bad.indptr[::-1].copy(), (4, 3)), V, v_b, c, None, 0.1)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("sparse", [False, True])
def test_hessian_diagonal_is_the_diagonal_of_the_products(loss, sparse):
    """The diagonal that scales NewtonCG's parameters: e_k . H e_k for every unit vector, on numpy and cpu."""
    net, X, y, w = problem(loss, m=80, n=7, sparse=sparse)
    for backend in ("numpy", "cpu"):
        other = l2fast.Network(net.layer_sizes, loss=loss, lam=net.lam, backend=backend, dtype="float64")
        other.set_parameters(net.weights, net.biases)
        hessian = reference_hessian(other, X, y, w)
        x = hessian.objective.flat.vector()
        unit = np.eye(len(x))
        expected = np.array([hessian(x, e) @ e for e in unit])
        np.testing.assert_allclose(hessian.diagonal(x), expected, rtol=1e-12, atol=1e-15)


def test_unchecked_calls_stay_within_a_malformed_csr():
    """check_X=False skips X's O(nnz) checks; column indices out of range and row pointers beyond the entries are
    then skipped and clamped, never followed: the process survives (run in a child) and the answers are finite."""
    code = """
import numpy as np
from l2fast import _core
data = np.ones(6)
indices = np.array([0, 99, -5, 2, 1, 2**31 - 1], dtype=np.int32)
indptr = np.array([0, 3, 2, 60, 6], dtype=np.int32)  # decreasing, beyond nnz
X = (data, indices, indptr, (4, 3))
V, v_b, c = np.ones((2, 3)), np.ones(2), np.ones(4)
HV, Hv_b = _core.linear_hessian_product(X, V, v_b, c, np.full((4, 2), 0.5), 0.1, check_X=False)
dW, db, loss, c2, P = _core.linear_gradient_curvature(np.ones((2, 3)), np.zeros(2), X, np.array([0, 1, 1, 0]), 0.1,
                                                      "softmax", check_X=False)
diag_W, diag_b = _core.linear_hessian_diagonal(X, c, np.full((4, 2), 0.5), 3, check_X=False)
assert np.isfinite(HV).all() and np.isfinite(dW).all() and np.isfinite(loss) and P.shape == (4, 2)
assert np.isfinite(diag_W).all() and diag_W.shape == (2, 3) and diag_b.shape == (2,)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_core_hessian_diagonal_refuses_bad_arguments():
    X, c = np.ones((4, 3)), np.ones(4)
    with pytest.raises(ValueError, match="c: expected shape"):
        _core.linear_hessian_diagonal(X, np.ones(5), None, 3)
    with pytest.raises(ValueError, match="P: expected shape"):
        _core.linear_hessian_diagonal(X, c, np.ones((5, 2)), 3)
    with pytest.raises(ValueError, match="P: expected"):
        _core.linear_hessian_diagonal(X, c, np.ones(4), 3)
    with pytest.raises(ValueError, match="X: expected shape"):
        _core.linear_hessian_diagonal(X, c, None, 2)
    with pytest.raises(ValueError, match="n_in"):
        _core.linear_hessian_diagonal(X, c, None, 0)
    with pytest.raises(TypeError, match="c: expected dtype float64"):
        _core.linear_hessian_diagonal(X, c.astype(np.float32), None, 3)
    with pytest.raises(ValueError, match="X"):
        _core.linear_hessian_diagonal(np.full((4, 3), np.inf), c, None, 3)


@pytest.mark.parametrize("outputs", [1, 2, 3, 5, 10, 14, 20])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_core_hessian_diagonal_matches_the_reference_for_every_row_width(outputs, dtype):
    """The cpu pass lays each column's outputs out in rows of 1, 2, 4, 8, 12, 16 or n_out doubles: every layout
    gives the reference's diagonal, sparse (messy CSR, checked) and dense, with and without P."""
    from l2fast.backends import numpy_ref

    rng = np.random.default_rng(outputs)
    X, _ = messy_csr(120, 30, outputs, density=0.3, dtype=dtype)
    features = get_backend("cpu").features(X, 30, np.dtype(dtype))
    c = rng.uniform(0.1, 2.0, 120)
    P = rng.dirichlet(np.ones(outputs), size=120) if outputs > 1 else None
    expected = numpy_ref.linear_hessian_diagonal(features, c, P)
    for got in (get_backend("cpu").linear_hessian_diagonal(features, c, P),
                _core.linear_hessian_diagonal(features.toarray(), c, P, 30)):
        for a, b in zip(got, expected):
            assert_parity(a, np.asarray(b).reshape(a.shape), dtype, "Hessian diagonal")


def test_core_gradient_curvature_refuses_bad_arguments():
    X, y = np.ones((4, 3)), np.array([0, 1, 2, 1])
    W, b = np.ones((3, 3)), np.zeros(3)
    with pytest.raises(ValueError, match="label"):
        _core.linear_gradient_curvature(W, b, X, np.array([0, 1, 3, 1]), 0.1, "softmax")
    with pytest.raises(TypeError, match="b: expected dtype float64"):
        _core.linear_gradient_curvature(W, b.astype(np.float32), X, y, 0.1, "softmax")
    with pytest.raises(ValueError, match="X: expected shape"):
        _core.linear_gradient_curvature(W, b, np.ones((4, 2)), y, 0.1, "softmax")
    with pytest.raises(ValueError, match="X"):
        _core.linear_gradient_curvature(W, b, np.full((4, 3), np.nan), y, 0.1, "softmax")
    with pytest.raises(ValueError, match="sample_weight"):
        _core.linear_gradient_curvature(W, b, X, y, 0.1, "softmax", sample_weight=-np.ones(4))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("sparse", [False, True])
def test_newton_cg_reaches_scikit_learns_optimum(backend, n_classes, sparse):
    rng = np.random.default_rng(n_classes)
    m, n, lam = 400, 30, 2.0
    X = rng.normal(size=(m, n)) * (rng.uniform(size=(m, n)) < 0.3)
    y = (X @ rng.normal(size=(n, n_classes)) + rng.gumbel(size=(m, n_classes))).argmax(axis=1)
    X_in = sp.csr_array(X) if sparse else X
    binary = n_classes == 2
    net = l2fast.Network([n, 1 if binary else n_classes], loss="logistic" if binary else "softmax", lam=lam,
                         backend=backend, dtype="float64", seed=0)
    history = net.fit(X_in, y, epochs=100, optimizer=l2fast.NewtonCG(tol=1e-9))
    assert history.converged and 0 < history.n_iter < 100
    assert len(history.cost) == history.n_iter and history.cost[-1] <= history.cost[0]
    model = LogisticRegression(C=1 / lam, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(net.weights[0], model.coef_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.biases[0], model.intercept_, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["trust-ncg", "trust-krylov"])
def test_newton_cg_matches_lbfgs_with_sample_weights_in_float32(method):
    net, X, y, w = problem("softmax", m=300, n=20, seed=6, sparse=True, dtype="float32")
    newton = l2fast.Network(net.layer_sizes, loss="softmax", lam=0.7, backend="cpu", dtype="float32", seed=1)
    lbfgs = l2fast.Network(net.layer_sizes, loss="softmax", lam=0.7, backend="cpu", dtype="float32", seed=1)
    assert newton.fit(X, y, epochs=50, optimizer=l2fast.NewtonCG(tol=1e-5, method=method), sample_weight=w).converged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", l2fast.ConvergenceWarning)  # float32 cannot meet tol 1e-7 everywhere
        lbfgs.fit(X, y, epochs=2000, optimizer=l2fast.LBFGS(tol=1e-7), sample_weight=w)
    assert newton.cost(X, y, w) <= lbfgs.cost(X, y, w) * (1 + 1e-5)
    np.testing.assert_allclose(newton.weights[0], lbfgs.weights[0], rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("radius", [1.0, 0.02])
def test_lean_trust_ncg_follows_scipys_trust_ncg(loss, dtype, radius):
    """The default "trust-ncg", written out over a few vectors updated in place, takes SciPy's steps (same costs,
    iterations and answer, to rounding) with one Hessian product fewer per iteration (its model decrease comes from
    the CG residual). A small first radius makes the early steps end on the trust region's boundary."""
    from l2fast.network import History

    net, X, y, w = problem(loss, m=400, n=60, sparse=True, dtype=dtype, seed=3)
    spec = l2fast.NewtonCG(tol=1e-8 if dtype == "float64" else 1e-4, initial_trust_radius=radius)
    runs = []
    for solve in (solvers.newton_cg, solvers.scipy_newton_cg):
        other = l2fast.Network(net.layer_sizes, loss=loss, lam=net.lam, backend="cpu", dtype=dtype)
        other.set_parameters(net.weights, net.biases)
        history = History()
        result = solve(other, *other._data(X, y, w), 100, spec, None, None, history)
        runs.append((result, history, other.weights[0], other.biases[0]))
    (lean, lean_history, *lean_parameters), (scipy, scipy_history, *scipy_parameters) = runs
    assert lean.status == scipy.status == 0 and 2 <= lean.nit == scipy.nit
    assert lean.hessian_products == scipy.hessian_products - scipy.nit
    rtol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(lean_history.cost, scipy_history.cost, rtol=rtol)
    for a, b in zip(lean_parameters, scipy_parameters):
        np.testing.assert_allclose(a, b, rtol=rtol * 100, atol=rtol * 100)


def test_newton_cg_by_name_and_its_refusals_leave_the_network_unchanged():
    X = np.random.default_rng(0).normal(size=(50, 4))
    y = (X[:, 0] > 0).astype(int)
    net = l2fast.Network([4, 1], loss="logistic", lam=1.0, backend="cpu", dtype="float64", seed=0)
    history = net.fit(X, y, epochs=30, optimizer="newton-cg", tol=1e-7)
    assert history.converged
    assert np.linalg.norm(np.concatenate([g.ravel() for g in sum(net.gradients(X, y), [])])) <= 1e-7
    deep = l2fast.Network([4, 3, 1], loss="logistic", backend="cpu", seed=0)
    before = deep.weights
    with pytest.raises(ValueError, match="optimizer: newton-cg serves linear models"):
        deep.fit(X, y, epochs=5, optimizer="newton-cg")
    for a, b in zip(deep.weights, before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="batch_size"):
        net.fit(X, y, optimizer="newton-cg", batch_size=10)
    with pytest.raises(ValueError, match="method: expected"):
        l2fast.NewtonCG(method="newton")
    with pytest.raises(ValueError, match="initial_trust_radius"):
        l2fast.NewtonCG(initial_trust_radius=0)


def test_newton_cg_stops_at_its_iteration_budget_with_a_warning():
    net, X, y, _ = problem("softmax", m=200, n=30, seed=8)
    with pytest.warns(l2fast.ConvergenceWarning, match="newton-cg"):
        history = net.fit(X, y, epochs=1, optimizer=l2fast.NewtonCG(tol=1e-14))
    assert not history.converged and history.n_iter == 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_backend_product_and_fit_on_the_host_stand_in(monkeypatch, tmp_path, dtype):
    """The cuda backend's Hessian-vector product (the reference's array code on CuPy) and a whole newton-cg fit
    on the host stand-in of the GPU match the reference. Never run on a GPU here."""
    net, X, y, w = problem("softmax", m=120, n=16, seed=9, dtype=dtype)
    reference = reference_hessian(net, X, y, w)
    x = reference.objective.flat.vector()
    v = np.random.default_rng(1).normal(size=x.shape)
    with emulated_gpu(monkeypatch, tmp_path):
        gpu = l2fast.Network(net.layer_sizes, loss="softmax", lam=net.lam, backend="cuda", dtype=dtype)
        gpu.set_parameters(net.weights, net.biases)
        assert_parity(reference_hessian(gpu, X, y, w)(x, v), reference(x, v), dtype, "Hv")
        gpu.fit(X, y, epochs=50, optimizer=l2fast.NewtonCG(tol=1e-7 if dtype == "float64" else 1e-4),
                sample_weight=w)
        net.fit(X, y, epochs=50, optimizer=l2fast.NewtonCG(tol=1e-7 if dtype == "float64" else 1e-4),
                sample_weight=w)
        assert_parity(gpu.weights[0], net.weights[0], "float32", "weights after newton-cg")


def test_l2_logistic_regression_takes_newton_cg_on_sparse_x():
    from l2fast.sklearn import L2LogisticRegression

    rng = np.random.default_rng(11)
    X = sp.random(300, 40, density=0.2, format="csr", random_state=11)
    y = (X @ rng.normal(size=(40, 3))).argmax(axis=1)
    ours = L2LogisticRegression(lam=0.5, optimizer="newton-cg", tol=1e-9, dtype="float64").fit(X, y)
    theirs = LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000).fit(X, y)
    # max |gradient| <= 1e-9 with curvature lam/m = 0.0017 at the least leaves coefficients within ~6e-7
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-6, atol=2e-6)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
