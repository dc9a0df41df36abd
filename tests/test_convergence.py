"""Training to the answer: L-BFGS on J, stopping on convergence, warnings when a fit fails, sample weights."""
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import l2fast
from l2fast import solvers
from l2fast.sklearn import L2LogisticRegression, L2MLPClassifier
from l2fast.testing import assert_parity

BACKENDS = ["numpy", "cpu"]


def standardised(loader):
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def sklearn_optimum(X, y, lam, **kwargs):
    return LogisticRegression(C=1 / lam, tol=1e-12, max_iter=20000, **kwargs).fit(X, y)


def l2fast_optimum(X, y, lam, backend, n_out, sample_weight=None, epochs=5000, tol=1e-10):
    loss = "logistic" if n_out == 1 else "softmax"
    net = l2fast.Network([X.shape[1], n_out], loss=loss, lam=lam, backend=backend, dtype="float64", seed=0)
    history = net.fit(X, y, epochs=epochs, optimizer=l2fast.LBFGS(tol=tol), sample_weight=sample_weight)
    return net, history


def assert_close_to(net, theirs, rtol):
    W, b = net.weights[0], net.biases[0]
    scale = np.abs(theirs.coef_).max()
    assert np.abs(W - theirs.coef_).max() <= rtol * scale, np.abs(W - theirs.coef_).max() / scale
    assert np.abs(b - theirs.intercept_).max() <= rtol * max(np.abs(theirs.intercept_).max(), scale)


# -- L-BFGS reaches scikit-learn's optimum ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loader, n_out", [(load_breast_cancer, 1), (load_digits, 10)])
def test_lbfgs_reaches_scikit_learns_optimum(backend, loader, n_out):
    X, y = standardised(loader)
    lam = 1.0
    net, history = l2fast_optimum(X, y, lam, backend, n_out)
    assert history.converged and 0 < history.n_iter < 5000
    assert_close_to(net, sklearn_optimum(X, y, lam), 1e-5)
    assert len(history.cost) == history.n_iter and np.all(np.diff(history.cost) <= 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lbfgs_numpy_and_cpu_agree_iteration_by_iteration(dtype):
    X, y = standardised(load_breast_cancer)
    nets = [l2fast.Network([30, 8, 1], activation="tanh", loss="logistic", lam=0.5, backend=b, dtype=dtype, seed=3)
            for b in BACKENDS]
    histories = []
    for net in nets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", l2fast.ConvergenceWarning)  # 10 iterations: not converged, on purpose
            histories.append(net.fit(X, y, epochs=10, optimizer="lbfgs"))
    assert histories[0].n_iter == histories[1].n_iter == 10
    assert_parity(histories[1].cost, histories[0].cost, dtype, "costs")
    for W_cpu, W_ref in zip(nets[1].weights, nets[0].weights):
        assert_parity(W_cpu, W_ref, dtype, "weights")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_objective_lbfgs_sees_is_the_references_cost_and_gradient(backend):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 5))
    y = rng.integers(0, 3, size=300)
    w = rng.uniform(0, 2, size=300)
    net = l2fast.Network([5, 6, 3], activation="tanh", lam=2.0, backend=backend, dtype="float64", seed=1)
    reference = l2fast.Network([5, 6, 3], activation="tanh", lam=2.0, backend="numpy", dtype="float64", seed=1)
    objective = solvers.Objective(net, *net._data(X, y, w))
    x = objective.flat.vector() + rng.normal(scale=0.1, size=objective.flat.vector().shape)
    J, g = objective(x)
    reference.set_parameters(*objective.flat.arrays(x))
    assert J == pytest.approx(reference.cost(X, y, sample_weight=w), rel=1e-12)
    dW, db = reference.gradients(X, y, sample_weight=w)
    expected = np.concatenate([part for W, b in zip(dW, db) for part in (W.ravel(), b)])
    np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12)
    # and the gradient is J's: central differences along random directions
    for _ in range(3):
        d = rng.normal(size=x.shape)
        h = 1e-5
        slope = (objective(x + h * d)[0] - objective(x - h * d)[0]) / (2 * h)
        assert slope == pytest.approx(g @ d, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss, n_out, sparse", [("logistic", 1, False), ("softmax", 4, False),
                                                 ("squared_error", 2, False), ("softmax", 3, True),
                                                 ("softmax", 70_000 // 7, False)])  # past the one-read pass's bound
def test_the_one_call_objective_of_linear_models_is_the_references_cost_and_gradient(dtype, loss, n_out, sparse):
    import scipy.sparse

    rng = np.random.default_rng(3)
    m, n_in = 257, 7  # 257 records: the last of the pass's 16 slices is short, and blocks of 32 leave a tail
    X = rng.normal(size=(m, n_in))
    if sparse:
        X = scipy.sparse.random(m, n_in, density=0.4, format="csr", random_state=1) * 2.0
    y = rng.integers(0, n_out, size=m) if loss == "softmax" else (rng.integers(0, 2, size=(m, 1)) if n_out == 1
                                                                   else rng.normal(size=(m, n_out)))
    w = rng.uniform(0, 2, size=m)
    net = l2fast.Network([n_in, n_out], loss=loss, lam=1.5, dtype=dtype, seed=2)
    reference = l2fast.Network([n_in, n_out], loss=loss, lam=1.5, backend="numpy", dtype="float64", seed=2)
    objective = solvers.FlatObjective(net, *net._data(X, y, w))
    x = objective.flat.vector() + rng.normal(scale=0.3, size=objective.flat.vector().shape)
    J, g = objective(x)
    assert g.dtype == np.float64 and objective.evaluations == 1
    weights, biases = objective.flat.arrays(x)  # x rounded to the network's dtype
    reference.set_parameters([weights[0].astype(np.float64)], [biases[0].astype(np.float64)])
    rtol = 1e-10 if dtype == "float64" else 1e-5
    assert J == pytest.approx(reference.cost(X, y, sample_weight=w), rel=rtol)
    assert objective.at(x)[0] == pytest.approx(reference.cost_parts(X, y, sample_weight=w).data_loss, rel=rtol)
    dW, db = reference.gradients(X, y, sample_weight=w)
    np.testing.assert_allclose(g, np.concatenate([dW[0].ravel(), db[0]]), rtol=rtol, atol=rtol * 1e-2)
    # the gradient, bit for bit, of the general pass at the same parameters (the same pass for dense X)
    X_core, y_core, w_core = net._data(X, y, w)
    dW_core, db_core, _ = net._backend.gradients(weights, biases, X_core, y_core, 1.5 / m, "identity", loss, w_core)
    assert np.array_equal(g, np.concatenate([dW_core[0].ravel(), db_core[0]]))
    # the network's arrays at an evaluated point are x's, made when asked for
    assert all(np.array_equal(a, b) for a, b in zip(objective.parameters_at(x)[0], weights))
    if dtype == "float64" and n_out < 100:
        for _ in range(2):  # and it is J's gradient: central differences along random directions
            d = rng.normal(size=x.shape)
            slope = (objective(x + 1e-5 * d)[0] - objective(x - 1e-5 * d)[0]) / 2e-5
            assert slope == pytest.approx(g @ d, rel=1e-6, abs=1e-9)


def test_the_one_call_objective_allocates_nothing_per_evaluation_and_gives_the_same_bits_again():
    from l2fast import _core

    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(5000, 20)), rng.integers(0, 3, size=5000)
    objective = _core.LinearObjective(X, y, 3, "softmax", 1.0)
    assert objective.n_params == 63 and objective.m == 5000
    x = rng.normal(size=63)
    first, grad = np.empty(63), np.empty(63)
    J, loss_sum = objective.evaluate(x, first)
    for _ in range(3):
        assert objective.evaluate(x, grad) == (J, loss_sum)
        assert np.array_equal(grad, first)
    assert J == pytest.approx(loss_sum / 5000 + 1.0 / 10000 * float(x[:60] @ x[:60]), rel=1e-14)


def test_the_one_call_objective_refuses_bad_arguments_naming_them():
    from l2fast import _core

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 2, size=(50, 1)).astype(np.float64)
    bad_X = X.copy()
    bad_X[3, 1] = np.nan
    for args, kwargs, error, name in [
            ((bad_X, y, 1, "logistic", 1.0), {}, ValueError, "X: contains NaN"),
            ((X.astype(np.float16), y, 1, "logistic", 1.0), {}, TypeError, "X: expected dtype"),
            ((X[:, ::2], y, 1, "logistic", 1.0), {}, ValueError, "X: array must be C-contiguous"),
            ((X, y[:10], 1, "logistic", 1.0), {}, ValueError, "y: expected shape"),
            ((X, y * 2, 1, "logistic", 1.0), {}, ValueError, "y: logistic labels must be 0 or 1"),
            ((X, y, 1, "logistic", -1.0), {}, ValueError, "lam must be a finite number"),
            ((X, y, 0, "logistic", 1.0), {}, ValueError, "n_out must be >= 1"),
            ((X, y, 1, "hinge", 1.0), {}, ValueError, "hinge"),
            ((X, np.full(50, 5), 3, "softmax", 1.0), {}, ValueError, "label"),
            ((X, y, 1, "logistic", 1.0), {"sample_weight": -np.ones(50)}, ValueError, "sample_weight"),
            ((X, None, 1, "logistic", 1.0), {}, ValueError, "y: targets are required")]:
        with pytest.raises(error, match=name):
            _core.LinearObjective(*args, **kwargs)
    assert _core.LinearObjective(bad_X, y, 1, "logistic", 1.0, check_X=False).m == 50  # a fit's X, checked before
    objective = _core.LinearObjective(X, y, 1, "logistic", 1.0)
    x, grad = np.zeros(5), np.zeros(5)
    for x_bad, grad_bad, error, name in [
            (np.zeros(4), grad, ValueError, "x: expected shape"),
            (x.astype(np.float32), grad, TypeError, "x: expected dtype"),
            ([0.0] * 5, grad, TypeError, "x: expected a numpy.ndarray"),
            (x, np.zeros(6), ValueError, "grad: expected shape"),
            (x, np.zeros(10)[::2], ValueError, "grad: array must be C-contiguous"),
            (x, np.zeros(5, dtype=np.float32), TypeError, "grad: expected dtype"),
            (x, x, ValueError, "grad: shares memory"),  # written while x is read
            (x, X.ravel()[:5], ValueError, "grad: shares memory")]:  # ... or X
        grad_before = grad.copy()
        with pytest.raises(error, match=name):
            objective.evaluate(x_bad, grad_bad)
        assert np.array_equal(grad, grad_before)
    read_only = np.zeros(5)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="grad: array is read-only"):
        objective.evaluate(x, read_only)


def test_float32_lbfgs_sums_in_float64_and_still_converges():
    X, y = standardised(load_breast_cancer)
    net = l2fast.Network([30, 1], loss="logistic", lam=1.0, backend="cpu", dtype="float32", seed=0)
    dW, _ = net.gradients(X, y)
    assert dW[0].dtype == np.float32
    history = net.fit(X, y, epochs=500, optimizer=l2fast.LBFGS(tol=1e-6))
    assert history.converged and net.weights[0].dtype == np.float32
    assert_close_to(net, sklearn_optimum(X, y, 1.0), 1e-3)


def test_lbfgs_refuses_what_does_not_apply_and_changes_nothing():
    X, y = standardised(load_breast_cancer)
    net = l2fast.Network([30, 1], loss="logistic", backend="cpu", seed=0)
    before = net.weights[0]
    for kwargs, name in ((dict(batch_size=32), "batch_size"), (dict(patience=3, validation_data=(X, y)), "patience"),
                         (dict(schedule="step"), "schedule")):
        with pytest.raises(ValueError, match=name):
            net.fit(X, y, epochs=5, optimizer="lbfgs", **kwargs)
    for bad, error in ((dict(memory=0), ValueError), (dict(tol=-1.0), ValueError), (dict(max_fun=1.5), TypeError)):
        with pytest.raises(error):
            l2fast.LBFGS(**bad)
    np.testing.assert_array_equal(net.weights[0], before)


def test_lbfgs_with_validation_data_records_every_iteration():
    X, y = standardised(load_digits)
    net = l2fast.Network([64, 10], lam=1.0, backend="cpu", dtype="float64", seed=0)
    history = net.fit(X[:1200], y[:1200], epochs=300, optimizer="lbfgs", validation_data=(X[1200:], y[1200:]))
    assert history.converged
    assert len(history.val_loss) == len(history.val_accuracy) == len(history.cost) == history.n_iter
    assert history.val_accuracy[-1] > 0.9
    assert net.cost(X[1200:], y[1200:]) == pytest.approx(history.val_cost[-1], rel=1e-12)


def test_fit_together_solves_each_network():
    X, y = standardised(load_breast_cancer)
    nets = [l2fast.Network([30, 1], loss="logistic", lam=lam, backend="cpu", dtype="float64", seed=0)
            for lam in (0.1, 10.0)]
    histories = l2fast.fit_together(nets, X, y, epochs=1000, optimizer=l2fast.LBFGS(tol=1e-10))
    for net, history, lam in zip(nets, histories, (0.1, 10.0)):
        assert history.converged
        assert_close_to(net, sklearn_optimum(X, y, lam), 1e-5)


# -- stopping on convergence ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_tolerance_stops_a_converged_fit_early(backend):
    X, y = standardised(load_breast_cancer)
    net = l2fast.Network([30, 1], loss="logistic", lam=1.0, backend=backend, dtype="float64", seed=0)
    history = net.fit(X, y, epochs=2000, lr=0.5, tol=1e-6, n_iter_no_change=5)
    assert history.converged and history.stopped_early
    assert history.n_iter == len(history.cost) < 2000
    # the rule: none of the last 5 epochs improved on the best before it by more than tol
    best = min(history.cost[:-5])
    for cost in history.cost[-5:]:
        assert cost > best - 1e-6
        best = min(best, cost)


def test_a_budget_too_small_warns():
    X, y = standardised(load_breast_cancer)
    net = l2fast.Network([30, 1], loss="logistic", lam=1.0, backend="cpu", seed=0)
    with pytest.warns(l2fast.ConvergenceWarning, match="epochs=3"):
        history = net.fit(X, y, epochs=3, lr=0.01, tol=1e-6)
    assert not history.converged and history.n_iter == 3
    with pytest.warns(l2fast.ConvergenceWarning, match="lbfgs"):
        assert not net.fit(X, y, epochs=2, optimizer="lbfgs").converged


def test_no_rule_no_warning_and_patience_is_tol_zero_on_validation():
    X, y = standardised(load_digits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = l2fast.Network([64, 10], backend="cpu", seed=0).fit(X, y, epochs=3, lr=0.1, batch_size=64)
    assert not history.converged and history.n_iter == 3
    runs = []
    for kwargs in (dict(patience=2), dict(tol=0.0, n_iter_no_change=2)):
        net = l2fast.Network([64, 32, 10], lam=0.0, backend="cpu", dtype="float64", seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", l2fast.ConvergenceWarning)
            runs.append((net.fit(X[:300], y[:300], epochs=200, lr=0.5, batch_size=16,
                                 validation_data=(X[300:], y[300:]), **kwargs), net.weights[0]))
    (h1, W1), (h2, W2) = runs
    assert h1.stopped_early and h1.converged and h1.n_iter < 200
    assert (h1.n_iter, h1.best_epoch) == (h2.n_iter, h2.best_epoch)
    np.testing.assert_array_equal(W1, W2)
    with pytest.raises(ValueError, match="patience"):
        l2fast.Network([64, 10], seed=0).fit(X, y, patience=2, tol=1e-3, validation_data=(X, y))


def test_raw_data_default_fits_warn_instead_of_returning_silently():
    X, y = load_breast_cancer(return_X_y=True)
    with pytest.warns(SklearnConvergenceWarning):
        L2LogisticRegression(random_state=0).fit(X, y)
    X, y = load_digits(return_X_y=True)
    with pytest.warns(SklearnConvergenceWarning):
        L2MLPClassifier(epochs=5, random_state=0).fit(X, y)


def test_a_diverging_learning_rate_warns_with_its_rate_and_the_wide_features():
    X, y = load_breast_cancer(return_X_y=True)  # raw: some features are in the thousands
    net = l2fast.Network([30, 1], loss="logistic", backend="cpu", dtype="float64", seed=0)
    with pytest.warns(l2fast.DivergenceWarning, match=r"lr=100.*standardise X.*features 23, 3, 22") as caught:
        net.fit(X, y, epochs=5, lr=100.0)
    assert "smaller learning rate" in str(caught[0].message)
    X = StandardScaler().fit_transform(X)
    net = l2fast.Network([30, 1], loss="logistic", backend="cpu", dtype="float64", seed=0)
    with pytest.warns(l2fast.DivergenceWarning, match="lr=100") as caught:
        net.fit(X, y, epochs=5, lr=100.0)
    assert "standardise" not in str(caught[0].message)
    net = l2fast.Network([30, 1], loss="logistic", backend="cpu", dtype="float64", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X, y, epochs=5, lr=1.0)  # a sound rate: no warning


def test_epochs_zero_keeps_the_optimizer_state():
    X, y = standardised(load_digits)
    net = l2fast.Network([64, 10], backend="cpu", seed=0)
    net.fit(X, y, epochs=1, batch_size=64, optimizer="momentum")
    state = net.optimizer_state
    net.fit(X, y, epochs=0, optimizer="adam")
    assert net.optimizer_state.optimizer == l2fast.Momentum() and net.optimizer_state.step == state.step


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_batch_epochs_need_no_shuffle(backend):
    X, y = standardised(load_digits)
    weights = []
    for shuffle in (True, False):
        net = l2fast.Network([64, 16, 10], backend=backend, dtype="float64", seed=0)
        net.fit(X, y, epochs=3, lr=0.5, shuffle=shuffle)
        weights.append(net.weights)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_ctrl_c_while_scoring_validation_rolls_the_whole_epoch_back(monkeypatch):
    X, y = standardised(load_digits)
    net = l2fast.Network([64, 10], backend="cpu", dtype="float64", seed=0)
    net.fit(X, y, epochs=1, batch_size=64, optimizer="adam")
    weights, state = net.weights, net.optimizer_state
    backend = net._backend
    monkeypatch.setattr(type(backend), "evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=2, batch_size=64, optimizer="adam", validation_data=(X, y))
    after = net.optimizer_state
    assert after.step == state.step and after.epoch == state.epoch
    for a, b in zip(net.weights, weights):
        np.testing.assert_array_equal(a, b)
    for slot_after, slot_before in zip(after.slots, state.slots):
        for a, b in zip(slot_after, slot_before):
            np.testing.assert_array_equal(a, b)


# -- sample weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_weights_reach_the_optimum_of_repeated_rows_and_scikit_learns(backend):
    X, y = standardised(load_breast_cancer)
    w = np.random.default_rng(0).integers(0, 4, size=len(X))
    weighted, _ = l2fast_optimum(X, y, 1.0, backend, 1, sample_weight=w)
    repeated, _ = l2fast_optimum(np.repeat(X, w, axis=0), np.repeat(y, w), 1.0, backend, 1)
    np.testing.assert_allclose(weighted.weights[0], repeated.weights[0], rtol=1e-5, atol=1e-7)
    assert_close_to(weighted, sklearn_optimum(X, y, 1.0).fit(X, y, sample_weight=w), 1e-5)


def test_balanced_class_weight_matches_scikit_learn():
    X, y = standardised(load_digits)
    keep = (y < 3) | (np.arange(len(y)) % 5 == 0)  # unbalanced classes
    X, y = X[keep], y[keep]
    ours = L2LogisticRegression(lam=2.0, tol=1e-10, epochs=5000, class_weight="balanced").fit(X, y)
    theirs = sklearn_optimum(X, y, 2.0, class_weight="balanced")
    assert_close_to(ours.network_, theirs, 1e-5)
    by_dict = L2LogisticRegression(lam=2.0, tol=1e-10, epochs=5000, class_weight={0: 3.0}).fit(X, y)
    w = np.where(y == 0, 3.0, 1.0)
    assert_close_to(by_dict.network_, sklearn_optimum(X, y, 2.0).fit(X, y, sample_weight=w), 1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weights_of_one_are_bit_identical_to_no_weights_on_cpu(optimizer):
    X, y = standardised(load_digits)
    results = []
    for w in (None, np.ones(len(X))):
        net = l2fast.Network([64, 16, 10], backend="cpu", seed=0)
        history = net.fit(X, y, epochs=2, lr=0.01, batch_size=50, optimizer=optimizer, sample_weight=w)
        results.append((history.cost, net.weights))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss, n_out", [("softmax", 3), ("logistic", 1), ("squared_error", 2)])
def test_weighted_passes_agree_with_the_reference(dtype, loss, n_out):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(150, 4))
    y = {"softmax": rng.integers(0, 3, 150), "logistic": rng.integers(0, 2, 150),
         "squared_error": rng.normal(size=(150, 2))}[loss]
    w = rng.uniform(0, 3, size=150)
    w[::7] = 0
    nets = [l2fast.Network([4, 5, n_out], activation="tanh", loss=loss, lam=0.7, backend=b, dtype=dtype, seed=2)
            for b in BACKENDS]
    ref, cpu = nets
    assert_parity(cpu.cost(X, y, sample_weight=w), ref.cost(X, y, sample_weight=w), dtype, "cost")
    for g_cpu, g_ref in zip(cpu.gradients(X, y, w)[0], ref.gradients(X, y, w)[0]):
        assert_parity(g_cpu, g_ref, dtype, "gradients")
    for net in nets:
        net.fit(X, y, epochs=2, lr=0.05, batch_size=32, sample_weight=w)
    for W_cpu, W_ref in zip(cpu.weights, ref.weights):
        assert_parity(W_cpu, W_ref, dtype, "weights after weighted training")
    assert cpu.score(X, y, sample_weight=w) == pytest.approx(ref.score(X, y, sample_weight=w), abs=1e-6)


def test_weighted_cost_is_the_definition_and_zero_weights_drop_records():
    rng = np.random.default_rng(12)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    w = rng.uniform(0, 2, size=40)
    w[:10] = 0
    net = l2fast.Network([3, 1], loss="logistic", lam=1.5, backend="cpu", dtype="float64", seed=0)
    per_record = np.array([net.cost_parts(X[i:i + 1], y[i:i + 1]).data_loss for i in range(40)])
    parts = net.cost_parts(X, y, sample_weight=w)
    assert parts.data_loss == pytest.approx((w * per_record).sum() / 40, rel=1e-12)
    assert parts.penalty == net.penalty(40)
    dropped = net.gradients(X, y, sample_weight=w)[0][0] - 1.5 / 40 * net.weights[0]
    kept = net.gradients(X[10:], y[10:], sample_weight=w[10:])[0][0] - 1.5 / 30 * net.weights[0]
    np.testing.assert_allclose(dropped * 40, kept * 30, rtol=1e-10, atol=1e-14)
    assert net.score(X, y, sample_weight=w) == pytest.approx(
        np.sum(w * (net.predict(X) == y)) / w.sum(), rel=1e-12)


@pytest.mark.parametrize("bad, message", [
    (-np.ones(30), ">= 0"), (np.full(30, np.nan), "NaN"), (np.full(30, np.inf), "NaN or infinity"),
    (np.zeros(30), "every weight is zero"), (np.ones(29), "shape"), (np.ones((30, 1)), "shape"),
    (np.array(["a"] * 30), "real numbers")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_weights_are_refused_with_the_model_unchanged(backend, bad, message):
    rng = np.random.default_rng(13)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    net = l2fast.Network([3, 1], loss="logistic", backend=backend, seed=0)
    before = net.weights[0]
    for call in (lambda: net.fit(X, y, epochs=2, sample_weight=bad),
                 lambda: net.fit(X, y, epochs=2, optimizer="lbfgs", sample_weight=bad),
                 lambda: net.cost(X, y, sample_weight=bad), lambda: net.gradients(X, y, sample_weight=bad)):
        with pytest.raises((ValueError, TypeError), match=message) as raised:
            call()
        assert "sample_weight" in str(raised.value)
    np.testing.assert_array_equal(net.weights[0], before)
    assert net.optimizer_state is None


def test_the_core_refuses_bad_weights_itself():
    from l2fast import _core

    X, y = np.zeros((4, 2)), np.zeros(4, np.int64)
    W, b = [np.zeros((3, 2))], [np.zeros(3)]
    for bad in (np.array([1.0, -1.0, 1.0, 1.0]), np.array([1.0, np.nan, 1.0, 1.0]), np.ones(3),
                np.ones(4, np.float32)):
        with pytest.raises((ValueError, TypeError), match="sample_weight"):
            _core.evaluate(W, b, X, y, "relu", "softmax", sample_weight=bad)


# -- the estimators' two label bugs -----------------------------------------------------------------


def test_partial_fit_refuses_other_classes_and_warm_start_another_label_set():
    X, y = standardised(load_digits)
    clf = L2MLPClassifier(hidden_layer_sizes=(8,), random_state=0, tol=None)
    clf.partial_fit(X, y, classes=np.arange(10))
    clf.partial_fit(X, y, classes=np.arange(10))  # the same classes again: fine
    with pytest.raises(ValueError, match="not the same as on the first call"):
        clf.partial_fit(X, y, classes=np.arange(11))
    warm = L2LogisticRegression(warm_start=True).fit(X[y < 3], y[y < 3])
    for labels in (y < 3) & (y > 0), (y < 4) & (y > 0):  # same count of classes, then another count
        with pytest.raises(ValueError, match="warm_start"):
            warm.fit(X[labels], y[labels])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("m, n_in, n_out", [(5, 13, 1), (9000, 13, 1), (700, 13, 4), (3, 7, 1), (1001, 64, 3)])
def test_the_one_read_pass_of_linear_models_agrees_with_the_reference(dtype, m, n_in, n_out):
    # records eight (four without AVX-512) at a time and then one by one, features eight at a time and then one by one
    rng = np.random.default_rng(m)
    X = rng.normal(size=(m, n_in))
    y = rng.integers(0, max(n_out, 2), size=m)
    w = rng.uniform(0, 2, size=m)
    loss = "logistic" if n_out == 1 else "softmax"
    nets = [l2fast.Network([n_in, n_out], loss=loss, lam=0.3, backend=b, dtype=dtype, seed=4) for b in BACKENDS]
    for weights in (None, w):
        (dW_ref, db_ref), (dW_cpu, db_cpu) = [net.gradients(X, y, sample_weight=weights) for net in nets]
        assert_parity(dW_cpu[0], dW_ref[0], dtype, "weight gradient")
        assert_parity(db_cpu[0], db_ref[0], dtype, "bias gradient")
        assert_parity(nets[1].cost(X, y, weights), nets[0].cost(X, y, weights), dtype, "cost")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_one_read_pass_gives_the_same_bits_on_one_thread_and_on_two(dtype):
    # 20000 records: two threads take the 16 slices as they come, in whatever order the machine's load gives
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(20_000, 37)), rng.integers(0, 3, size=20_000)
    results = []
    before = l2fast.get_num_threads()
    try:
        for n in (1, 2, 2, 1):
            l2fast.set_num_threads(n, adaptive=False)
            net = l2fast.Network([37, 3], loss="softmax", lam=0.5, dtype=dtype, seed=1)
            (dW,), (db,) = net.gradients(X, y)
            results.append((dW, db, net.cost(X, y)))
    finally:
        l2fast.set_num_threads(before)
    for dW, db, cost in results[1:]:
        assert np.array_equal(dW, results[0][0]) and np.array_equal(db, results[0][1]) and cost == results[0][2]


@pytest.mark.parametrize("optimizer", ["lbfgs", "newton-cg"])
def test_the_solvers_run_the_other_blas_libraries_on_one_thread_meanwhile(monkeypatch, optimizer):
    import os

    import scipy_openblas32
    from threadpoolctl import threadpool_info, threadpool_limits

    from l2fast.backends import cpu

    ours = os.path.dirname(os.path.realpath(scipy_openblas32.__file__))

    def counts():
        return {("ours" if os.path.realpath(i["filepath"]).startswith(ours) else i["filepath"]): i["num_threads"]
                for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []
    for name in ("gradients", "linear_gradient_curvature"):  # the passes of newton-cg (and of lbfgs elsewhere)
        monkeypatch.setattr(cpu.CpuBackend, name, lambda *a, _pass=getattr(cpu.CpuBackend, name), **k:
                            seen.append(counts()) or _pass(*a, **k))
    make_objective = cpu.CpuBackend.linear_objective  # lbfgs's pass on a one-layer network

    def linear_objective(*a, **k):
        evaluate = make_objective(*a, **k)
        return lambda x, grad: seen.append(counts()) or evaluate(x, grad)

    monkeypatch.setattr(cpu.CpuBackend, "linear_objective", linear_objective)
    X, y = standardised(load_breast_cancer)
    with threadpool_limits(2, user_api="blas"):
        before = counts()
        l2fast.Network([X.shape[1], 1], loss="logistic", lam=1.0, seed=0, dtype="float64").fit(
            X, y, epochs=100, optimizer=optimizer)
        assert counts() == before
    assert seen and len(before) > 1
    for during in seen:
        assert during["ours"] == before["ours"]
        assert all(n == 1 for path, n in during.items() if path != "ours")


def test_lbfgs_scans_X_for_nan_once_per_fit_not_once_per_pass(monkeypatch):
    from l2fast.backends import cpu

    X, y = standardised(load_breast_cancer)
    scans, made, passes = [], [], []
    all_finite, LinearObjective = cpu._core.all_finite, cpu._core.LinearObjective

    class Counted:  # the one-layer network's passes: one _core.LinearObjective made per fit, evaluated per pass
        def __init__(self, *a, **k):
            made.append(k["check_X"])
            self.core = LinearObjective(*a, **k)

        def evaluate(self, x, grad):
            passes.append(x.shape)
            return self.core.evaluate(x, grad)

    monkeypatch.setattr(cpu._core, "all_finite", lambda a: scans.append(a.shape) or all_finite(a))
    monkeypatch.setattr(cpu._core, "LinearObjective", Counted)
    history = l2fast.Network([X.shape[1], 1], loss="logistic", lam=1.0, seed=0, dtype="float64").fit(
        X, y, epochs=100, optimizer="lbfgs")
    assert history.converged and len(passes) > 5
    assert scans == [] and made == [False]  # X taken as it is: the first pass is the scan (see the next test)
    # X cast to the network's dtype: scanned by fit, which names a value beyond float32's range as such
    l2fast.Network([X.shape[1], 1], loss="logistic", lam=1.0, seed=0, dtype="float32").fit(
        X, y, epochs=100, optimizer="lbfgs")
    assert scans == [X.shape] and made == [False, False]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("start", ["zero", "positive"])
def test_lbfgs_left_to_find_a_nan_in_X_names_X_and_changes_nothing(bad, start):
    X, y = standardised(load_breast_cancer)
    X[7, 3] = bad
    y = y.copy()
    y[7] = 1  # with positive weights and +inf, z = +inf: the loss is 0 and J finite, but dW's column is NaN
    net = l2fast.Network([X.shape[1], 1], loss="logistic", lam=1.0, seed=0, dtype="float64")
    if start == "positive":
        net.set_parameters([np.full((1, X.shape[1]), 0.1)], [np.zeros(1)])
    before = net.weights[0].copy(), net.biases[0].copy()
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        net.fit(X, y, epochs=100, optimizer="lbfgs")
    assert np.array_equal(net.weights[0], before[0]) and np.array_equal(net.biases[0], before[1])
    model = L2LogisticRegression().fit(np.nan_to_num(X, posinf=0, neginf=0), y)
    coef = model.coef_.copy()
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        model.fit(X, y)
    assert np.array_equal(model.coef_, coef)
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):  # no epochs, no solve: fit scans X
        net.fit(X, y, epochs=0, optimizer="lbfgs")


def test_epochs_scan_X_for_nan_once_per_fit_not_once_per_epoch(monkeypatch):
    from l2fast.backends import cpu

    X, y = standardised(load_digits)
    scans, epochs, scores = [], [], []
    all_finite, train_epoch, evaluate = cpu._core.all_finite, cpu._core.train_epoch, cpu._core.evaluate
    monkeypatch.setattr(cpu._core, "all_finite", lambda a: scans.append(a.shape) or all_finite(a))
    monkeypatch.setattr(cpu._core, "train_epoch", lambda *a, **k: epochs.append(k["check_finite"]) or train_epoch(*a, **k))
    monkeypatch.setattr(cpu._core, "evaluate", lambda *a, **k: scores.append(k["check_finite"]) or evaluate(*a, **k))
    net = l2fast.Network([64, 10], lam=1.0, seed=0)
    net.fit(X[:1000], y[:1000], epochs=4, lr=0.1, batch_size=100, validation_data=(X[1000:], y[1000:]))
    assert scans == [(1000, 64), (len(X) - 1000, 64)]
    assert epochs == [False] * 4 and scores == [False] * 4


@pytest.mark.parametrize("sizes, loss", [([9, 1], "logistic"), ([9, 4], "softmax"), ([9, 7, 4], "softmax"),
                                         ([9, 7, 1], "logistic"), ([9, 7, 3], "squared_error")])
def test_gradients_with_correct_counts_the_hits_evaluate_counts(sizes, loss):
    from l2fast.backends import cpu, numpy_ref

    rng = np.random.default_rng(len(sizes) * 10 + sizes[-1])
    X = rng.normal(size=(301, 9))
    y = {"logistic": rng.integers(0, 2, size=(301, 1)).astype(float), "softmax": rng.integers(0, sizes[-1], size=301),
         "squared_error": rng.normal(size=(301, 3))}[loss]
    w = rng.uniform(0.5, 1.5, size=301)
    weights = [rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(size=o) for o in sizes[1:]]
    for backend in (numpy_ref.NumpyBackend(), cpu.CpuBackend()):
        plain = backend.gradients(weights, biases, X, y, 0.1, "relu", loss, w)
        dW, db, loss_sum, correct = backend.gradients(weights, biases, X, y, 0.1, "relu", loss, w, with_correct=True)
        assert loss_sum == plain[2] and all(np.array_equal(a, b) for a, b in zip(dW + db, plain[0] + plain[1]))
        assert correct == backend.evaluate(weights, biases, X, y, "relu", loss, w)[1]
        assert (correct > 0) == (loss != "squared_error")


def test_a_pass_without_the_scan_gives_the_same_answer_and_a_nan_gives_a_nan_not_a_crash():
    from l2fast import _core

    rng = np.random.default_rng(2)
    for dtype in (np.float64, np.float32):
        X, y = rng.normal(size=(301, 9)).astype(dtype), rng.integers(0, 2, size=(301, 1)).astype(dtype)
        weights, biases = [rng.normal(size=(1, 9)).astype(dtype)], [np.zeros(1, dtype)]
        checked = _core.gradients(weights, biases, X, y, 0.1, "relu", "logistic")
        unchecked = _core.gradients(weights, biases, X, y, 0.1, "relu", "logistic", check_finite=False)
        assert np.array_equal(checked[0][0], unchecked[0][0]) and checked[2] == unchecked[2]
        X[7, 3] = np.nan
        with pytest.raises(ValueError, match="X: contains NaN"):
            _core.gradients(weights, biases, X, y, 0.1, "relu", "logistic")
        assert np.isnan(_core.gradients(weights, biases, X, y, 0.1, "relu", "logistic", check_finite=False)[2])
        assert np.isnan(_core.evaluate(weights, biases, X, y, "relu", "logistic", check_finite=False)[0])
        assert np.isnan(_core.train_epoch(weights, biases, X, y, None, 301, 0.1, 0.0, "relu", "logistic",
                                          check_finite=False)[0])


# -- l2fast.Dataset: inputs checked once ------------------------------------------------------------


def test_a_dataset_is_checked_once_and_trains_like_its_arrays(monkeypatch):
    from l2fast import _validate

    X, y = standardised(load_digits)
    w = np.random.default_rng(5).uniform(0.5, 1.5, size=len(X))
    data = l2fast.Dataset(X, y, sample_weight=w)
    nets = [l2fast.Network([64, 16, 10], backend="cpu", seed=0) for _ in range(2)]
    checks = []
    real = _validate.features
    monkeypatch.setattr(_validate, "features", lambda *a, **k: checks.append(1) or real(*a, **k))
    for _ in range(3):
        nets[0].fit(data, epochs=1, lr=0.1, batch_size=64, validation_data=l2fast.Dataset(X[:100], y[:100]))
    assert len(checks) == 1 + 3  # the training data once; each new validation Dataset once
    for _ in range(3):
        nets[1].fit(X, y, epochs=1, lr=0.1, batch_size=64, sample_weight=w, validation_data=(X[:100], y[:100]))
    for a, b in zip(nets[0].weights, nets[1].weights):
        np.testing.assert_array_equal(a, b)
    assert nets[0].cost(data) == nets[0].cost(X, y, sample_weight=w)
    assert nets[0].score(data) == nets[0].score(X, y, sample_weight=w)
    np.testing.assert_array_equal(nets[0].predict(data), nets[0].predict(X))


def test_a_dataset_never_reads_a_changed_array():
    X, y = standardised(load_breast_cancer)
    data = l2fast.Dataset(X, y)
    net = l2fast.Network([30, 1], loss="logistic", backend="cpu", dtype="float64", seed=0)
    before = net.cost(data)
    X[:] = 0.0  # the caller's array changes: the Dataset is a snapshot of its own
    assert net.cost(data) == before and net.cost(X, y) != before  # and plain arrays honour the change
    with pytest.raises(ValueError, match="read-only"):
        data.X[0, 0] = 1.0
    with pytest.raises(ValueError, match="Dataset brings its own"):
        net.fit(data, y)
    with pytest.raises(TypeError, match="targets are required"):
        net.fit(X)
    with pytest.raises(ValueError, match="no y"):
        net.fit(l2fast.Dataset(X))


def test_default_estimators_converge_on_standardised_data_and_say_so():
    X, y = standardised(load_digits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlp = L2MLPClassifier(random_state=0).fit(X, y)
        logistic = L2LogisticRegression().fit(X, y)
    for clf in (mlp, logistic):
        assert clf.history_.converged and clf.n_iter_ < clf.epochs and clf.score(X, y) > 0.97


@pytest.mark.parametrize("loader", [load_breast_cancer, load_digits])
def test_logistic_regression_starts_lbfgs_at_zero_and_follows_scikit_learns_iterates(loader):
    # the same J, the same L-BFGS-B options and the same start: the same iterations, even at scikit-learn's
    # default tol where the answer is still 1e-2 away from the optimum (from random weights it took others)
    X, y = standardised(loader)
    theirs = LogisticRegression().fit(X, y)
    ours = [L2LogisticRegression(random_state=seed, dtype="float64").fit(X, y) for seed in (0, 1)]
    for clf in ours:
        assert clf.n_iter_ == theirs.n_iter_[0]
        assert_close_to(clf.network_, theirs, 1e-9)
    np.testing.assert_array_equal(ours[0].coef_, ours[1].coef_)  # random_state no longer matters
    weights = np.random.default_rng(0).integers(0, 4, size=len(y))  # tol scaled as scikit-learn's J: same stops
    theirs = LogisticRegression().fit(X, y, sample_weight=weights)
    ours = L2LogisticRegression(dtype="float64").fit(X, y, sample_weight=weights)
    assert ours.n_iter_ == theirs.n_iter_[0]
    assert_close_to(ours.network_, theirs, 1e-9)
    warm = L2LogisticRegression(warm_start=True, dtype="float64").fit(X, y)
    before = warm.coef_.copy()
    n_iter = warm.n_iter_
    warm.fit(X, y)  # warm_start: from the fitted coefficients, which already meet tol
    assert warm.n_iter_ - n_iter <= 1 and np.abs(warm.coef_ - before).max() <= 1e-3 * np.abs(before).max()


def test_select_lambda_trains_each_run_until_its_tolerance():
    X, y = standardised(load_digits)
    sweep = l2fast.select_lambda(X[:600], y[:600], X[600:1200], y[600:1200], lams=[0.0, 1.0, 30.0],
                                 layer_sizes=[64, 16, 10], epochs=300, lr=0.1, batch_size=32, tol=1e-3,
                                 n_iter_no_change=3, progress=False)
    for result in sweep.results:
        assert result.history.converged and result.history.n_iter < 300


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 17, -1])
def test_the_cores_vectorised_finite_check_finds_any_bad_value(bad, where):
    from l2fast import _core

    X = np.random.default_rng(3).normal(size=(300_001, 10))  # 3M values: shared by the helper threads
    y = np.zeros(len(X), np.int64)
    W, b = [np.zeros((2, 10))], [np.zeros(2)]
    _core.evaluate(W, b, X, y, "relu", "softmax")  # all finite: accepted
    X.flat[where] = bad
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        _core.evaluate(W, b, X, y, "relu", "softmax")
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        _core.gradients([W[0].astype(np.float32)], [b[0].astype(np.float32)], X.astype(np.float32), y, 0.0, "relu",
                        "softmax")
