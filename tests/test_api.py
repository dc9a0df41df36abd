"""The model's contract: initialisation, parameters, dtypes, history, learning, the private module's stub."""
import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import l2fast
from l2fast.backends.cpu import _core
from l2fast.testing import make_problem

BACKENDS = ["numpy", "cpu"]


def test_same_seed_same_network_on_every_backend():
    nets = [l2fast.Network([6, 8, 3], backend=b, seed=42) for b in BACKENDS]
    nets.append(l2fast.Network([6, 8, 3], backend="numpy", seed=42))
    for other in nets[1:]:
        for p, q in zip(nets[0].weights + nets[0].biases, other.weights + other.biases):
            np.testing.assert_array_equal(p, q)
    different = l2fast.Network([6, 8, 3], seed=43)
    assert not np.array_equal(nets[0].weights[0], different.weights[0])


def test_initialisation_rule():
    relu = l2fast.Network([400, 300, 200], activation="relu", dtype="float64", seed=0)
    tanh = l2fast.Network([400, 300, 200], activation="tanh", dtype="float64", seed=0)
    # He normal before relu layers: std sqrt(2/n_in).
    assert relu.weights[0].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    # Glorot uniform elsewhere, output layer included: bound sqrt(6/(n_in+n_out)).
    for net in (relu, tanh):
        W = net.weights[1]
        limit = np.sqrt(6 / 500)
        assert np.abs(W).max() <= limit and np.abs(W).max() > 0.99 * limit
    assert np.abs(tanh.weights[0]).max() <= np.sqrt(6 / 700)
    assert all(not b.any() for b in relu.biases)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_in_dtype_out(backend, dtype):
    X, y = make_problem("softmax", 4, 3, m=12, seed=0)
    net = l2fast.Network([4, 5, 3], backend=backend, dtype=dtype, seed=0)
    net.fit(X, y, epochs=1, batch_size=5)
    assert all(p.dtype == np.dtype(dtype) for p in net.weights + net.biases)
    assert net.predict_proba(X).dtype == np.dtype(dtype)
    assert all(g.dtype == np.dtype(dtype) for g in sum(net.gradients(X, y), []))
    assert net.predict(X).dtype == np.int64
    assert isinstance(net.cost(X, y), float)


def test_weights_are_copies_and_set_parameters_copies_in():
    net = l2fast.Network([3, 4, 2], seed=0)
    W = net.weights
    W[0][:] = 7
    assert not (net.weights[0] == 7).any()
    new_W = [np.ones((4, 3)), np.full((2, 4), 2.0)]
    new_b = [np.arange(4.0), np.zeros(2)]
    net.set_parameters(new_W, new_b)
    new_W[0][:] = 5
    assert net.weights[0].dtype == np.float32
    np.testing.assert_array_equal(net.weights[0], np.ones((4, 3)))
    np.testing.assert_array_equal(net.biases[0], np.arange(4.0))
    assert [w.shape for w in net.weights] == [(4, 3), (2, 4)]
    assert [b.shape for b in net.biases] == [(4,), (2,)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cost_is_data_loss_plus_penalty(backend):
    X, y = make_problem("softmax", 4, 3, m=16, seed=1)
    net = l2fast.Network([4, 5, 3], lam=3.0, backend=backend, dtype="float64", seed=0)
    data_loss, penalty = net.cost_parts(X, y)
    squares = sum(float((W ** 2).sum()) for W in net.weights)
    assert penalty == pytest.approx(3.0 / (2 * 16) * squares, rel=1e-12)
    assert net.cost(X, y) == pytest.approx(data_loss + penalty, rel=1e-15)
    # The data loss is the mean cross-entropy of the predicted probabilities.
    p = net.predict_proba(X)
    assert data_loss == pytest.approx(-np.log(p[np.arange(16), y]).mean(), rel=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_history_records_every_epoch(backend):
    X, y = make_problem("softmax", 4, 3, m=30, seed=2)
    X_val, y_val = make_problem("softmax", 4, 3, m=10, seed=3)
    net = l2fast.Network([4, 6, 3], lam=0.5, backend=backend, seed=0)
    history = net.fit(X, y, epochs=4, lr=0.1, batch_size=7, validation_data=(X_val, y_val))
    for key in ("loss", "cost", "accuracy", "val_loss", "val_cost", "val_accuracy", "seconds"):
        assert len(getattr(history, key)) == 4, key
    assert all(c > l for c, l in zip(history.cost, history.loss))  # lam > 0 adds a positive penalty
    assert history.val_cost[-1] == pytest.approx(net.cost(X_val, y_val), rel=1e-5)
    assert history.val_accuracy[-1] == net.score(X_val, y_val)
    assert l2fast.Network([4, 6, 3], backend=backend).fit(X, y, epochs=0).loss == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_regression_history_has_no_accuracy_and_full_batch_is_the_first_step_cost(backend):
    X, y = make_problem("squared_error", 3, 1, m=20, seed=4)
    net = l2fast.Network([3, 4, 1], loss="squared_error", lam=0.2, backend=backend, dtype="float64", seed=0)
    start_loss = net.cost_parts(X, y).data_loss
    history = net.fit(X, y, epochs=2, lr=0.05)
    assert history.accuracy == [] and history.val_accuracy == []
    assert history.loss[0] == pytest.approx(start_loss, rel=1e-12)  # full batch: scored before the step
    assert net.predict(X).shape == (20,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epochs_zero_and_refusals_leave_parameters(backend):
    X, y = make_problem("softmax", 4, 3, m=10, seed=0)
    net = l2fast.Network([4, 3], backend=backend, seed=0)
    before = net.weights
    net.fit(X, y, epochs=0)
    np.testing.assert_array_equal(net.weights[0], before[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffling_is_seeded_and_changes_the_result(backend):
    X, y = make_problem("softmax", 4, 3, m=40, seed=5)
    runs = []
    for shuffle, seed in ((True, 1), (True, 1), (False, 1), (True, 2)):
        net = l2fast.Network([4, 5, 3], backend=backend, dtype="float64", seed=1)
        net._shuffle_rng = np.random.default_rng(seed)  # only the order differs between runs
        net.fit(X, y, epochs=2, lr=0.1, batch_size=8, shuffle=shuffle)
        runs.append(net.weights[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2]) and not np.allclose(runs[0], runs[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_learns_a_separable_problem(backend):
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4, size=(4, 5))
    y = rng.integers(0, 4, size=400)
    X = centres[y] + rng.normal(size=(400, 5))
    net = l2fast.Network([5, 16, 4], lam=0.1, backend=backend, seed=0)
    history = net.fit(X, y, epochs=20, lr=0.1, batch_size=32)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert net.score(X, y) > 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_logistic_regression(backend):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = (X @ np.array([2.0, -1.0, 0.5]) > 0).astype(int)
    net = l2fast.Network([3, 1], loss="logistic", backend=backend, seed=0)
    net.fit(X, y.astype(bool), epochs=30, lr=0.5, batch_size=50)
    proba = net.predict_proba(X)
    assert proba.shape == (300, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(net.predict(X), (proba[:, 1] >= 0.5).astype(int))
    assert net.score(X, y) > 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_regression_score_is_r2(backend):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 2))
    y = np.stack([X[:, 0] - X[:, 1], 2 * X[:, 0]], axis=1)
    net = l2fast.Network([2, 2], loss="squared_error", activation="identity", backend=backend,
                         dtype="float64", seed=0)
    net.fit(X, y, epochs=50, lr=0.1, batch_size=20)
    assert net.score(X, y) > 0.999
    assert net.predict(X).shape == (200, 2)
    zero = l2fast.Network([2, 2], loss="squared_error", backend=backend, dtype="float64", seed=0)
    zero.set_parameters([np.zeros((2, 2))], [y.mean(axis=0)])
    assert zero.score(X, y) == pytest.approx(0.0, abs=1e-12)  # predicting the mean scores R^2 = 0


def test_public_names():
    assert set(l2fast.__all__) == {"Network", "History", "CostParts", "DivergenceError", "load", "fit_together",
                                   "select_lambda", "lambda_grid", "NoisyChoiceWarning", "select_network",
                                   "NetworkSelection", "CandidateResult", "Selection", "LambdaResult", "available_backends", "BackendUnavailableError",
                                   "__version__",
                                   "SGD", "Momentum", "Adam", "OptimizerState", "Constant", "InverseScaling",
                                   "StepDecay", "ExponentialDecay", "ReduceOnPlateau", "LBFGS", "NewtonCG",
                                   "ConvergenceWarning", "DivergenceWarning", "Dataset", "set_num_threads",
                                   "get_num_threads"}
    assert l2fast.available_backends()[:2] == ["numpy", "cpu"]
    assert "backend='cpu'" in repr(l2fast.Network([2, 2], backend="cpu"))


def test_core_stub_matches_the_module():
    stub = Path(l2fast.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    stub_functions = {node.name: [a.arg for a in node.args.args] +
                      (["*"] + [a.arg for a in node.args.kwonlyargs] if node.args.kwonlyargs else [])
                      for node in tree.body if isinstance(node, ast.FunctionDef)}
    stub_classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    module_functions = {name for name, obj in vars(_core).items()
                        if callable(obj) and not name.startswith("_")}
    assert set(stub_functions) | stub_classes == module_functions
    for name, params in stub_functions.items():
        # pybind11 puts the signature in the first docstring line: name(arg: type, ...) -> ...
        signature = inspect.getdoc(getattr(_core, name)).splitlines()[0]
        assert [p.split(":")[0].strip() for p in signature[signature.index("(") + 1:
                signature.index(")")].split(",") if p.strip()] == params, name


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # one epoch: a flat grid
def test_the_compiled_backend_is_the_default_and_the_reference_one_string_away():
    assert l2fast.Network([3, 2]).backend == "cpu"
    assert l2fast.Network([3, 2], backend="numpy").backend == "numpy"
    X, y = make_problem("softmax", 3, 2, m=20, seed=0)
    sweep = l2fast.select_lambda(X, y, X, y, [0.0, 1.0], layer_sizes=[3, 2], epochs=1, progress=False)
    assert all(net.backend == "cpu" for net in sweep.networks)


def half_precision_inputs():
    """X and y of a regression in float16 and bfloat16 forms, and the same values in float32."""
    X, y = make_problem("squared_error", 4, 1, m=16, seed=0)
    X16, y16 = X.astype(np.float16), y.astype(np.float16)
    forms = {"float16": (X16, y16)}
    ml_dtypes = pytest.importorskip("ml_dtypes")
    forms["ml_dtypes.bfloat16"] = (X.astype(ml_dtypes.bfloat16), y.astype(ml_dtypes.bfloat16))
    exact = {name: (np.asarray(Xh).astype(np.float32), np.asarray(yh).astype(np.float32))
             for name, (Xh, yh) in forms.items()}
    return forms, exact


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_half_precision_inputs_are_converted(backend):
    forms, exact = half_precision_inputs()
    for name, (X, y) in forms.items():
        X32, y32 = exact[name]
        net = l2fast.Network([4, 3, 1], loss="squared_error", backend=backend, seed=0)
        twin = l2fast.Network([4, 3, 1], loss="squared_error", backend=backend, seed=0)
        assert net.cost(X, y) == twin.cost(X32, y32), name
        net.fit(X, y, epochs=2, batch_size=4)
        twin.fit(X32, y32, epochs=2, batch_size=4)
        assert all(np.array_equal(p, q) for p, q in zip(net.weights, twin.weights)), name
        assert net.predict(X).dtype == np.float32


def test_torch_bfloat16_tensors_are_converted():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install \".[test-peers]\")")
    X, y = make_problem("softmax", 4, 3, m=16, seed=0)
    X_bf16 = torch.from_numpy(X).to(torch.bfloat16)
    net = l2fast.Network([4, 3], seed=0)
    assert net.cost(X_bf16, y) == net.cost(X_bf16.float().numpy(), y)
    assert np.array_equal(net.predict(X_bf16), net.predict(X_bf16.float().numpy()))
