"""Bad input to every public function: a clear exception naming the argument, and nothing changed."""
import re

import numpy as np
import pytest

import l2fast
from l2fast.backends.cpu import _core
from l2fast.testing import make_problem

BACKENDS = ["numpy", "cpu"]


# -- the constructor ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layer_sizes=[4]), ValueError, "layer_sizes"),
    (dict(layer_sizes=[4, 0, 3]), ValueError, r"layer_sizes\[1\]"),
    (dict(layer_sizes=[4, -2, 3]), ValueError, r"layer_sizes\[1\]"),
    (dict(layer_sizes=[4, 2.5, 3]), TypeError, r"layer_sizes\[1\]"),
    (dict(layer_sizes="43"), TypeError, "layer_sizes"),
    (dict(layer_sizes=5), TypeError, "layer_sizes"),
    (dict(activation="softplus"), ValueError, "activation"),
    (dict(loss="hinge"), ValueError, "loss"),
    (dict(loss="logistic"), ValueError, "layer_sizes"),  # 3 outputs for a logistic loss
    (dict(layer_sizes=[4, 1], loss="softmax"), ValueError, "layer_sizes"),
    (dict(lam=-0.1), ValueError, "lam"),
    (dict(lam=float("nan")), ValueError, "lam"),
    (dict(lam=float("inf")), ValueError, "lam"),
    (dict(lam="big"), TypeError, "lam"),
    (dict(backend="tpu"), ValueError, "backend"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(dtype="int32"), ValueError, "dtype"),
    (dict(dtype="complex128"), ValueError, "dtype"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
])
def test_constructor_refuses(kwargs, error, match):
    args = dict(layer_sizes=[4, 5, 3])
    args.update(kwargs)
    with pytest.raises(error, match=match):
        l2fast.Network(**args)


def test_lam_setter_refuses_and_keeps_value():
    net = l2fast.Network([2, 2], lam=0.5)
    with pytest.raises(ValueError, match="lam"):
        net.lam = -1
    assert net.lam == 0.5


# -- data given to the model's methods ---------------------------------------------------------

X_OK, Y_OK = make_problem("softmax", 4, 3, m=10, seed=0)
BAD_X = [
    (X_OK[:, :3], ValueError, "X: expected 4 features"),
    (X_OK[0], ValueError, "X: expected a 2-D"),
    (X_OK[None], ValueError, "X: expected a 2-D"),
    (X_OK[:0], ValueError, "X: no records"),
    (np.where(np.eye(10, 4) > 0, np.nan, X_OK), ValueError, "X: contains NaN"),
    (np.where(np.eye(10, 4) > 0, np.inf, X_OK), ValueError, "X: contains NaN or infinity"),
    (X_OK.astype(np.complex128), TypeError, "X: expected real numbers"),
    (X_OK > 0, TypeError, "X: expected real numbers"),
    (X_OK.astype(str), TypeError, "X: expected real numbers"),
    ([[1.0, 2.0], [3.0]], TypeError, "X: cannot be read"),
]
BAD_Y_SOFTMAX = [
    (Y_OK[:9], ValueError, "y: expected 10 class labels"),
    (Y_OK[:, None], ValueError, "y: expected 10 class labels"),
    (np.where(np.arange(10) == 3, 3, Y_OK), ValueError, r"y: class labels must lie in \[0, 2\], got 3 at index 3"),
    (np.where(np.arange(10) == 0, -1, Y_OK), ValueError, "y: class labels must lie"),
    (Y_OK + 0.5, ValueError, "y: class labels must be integers"),
    (np.where(np.arange(10) == 0, np.nan, Y_OK), ValueError, "y: contains NaN"),
    (Y_OK.astype(bool), TypeError, "y: expected real numbers"),
    (Y_OK.astype(str), TypeError, "y: expected real numbers"),
]


def snapshot(net):
    return [p.copy() for p in net.weights + net.biases]


def assert_unchanged(net, before):
    for p, q in zip(net.weights + net.biases, before):
        np.testing.assert_array_equal(p, q)


CALLS_XY = {
    "cost": lambda net, X, y: net.cost(X, y),
    "cost_parts": lambda net, X, y: net.cost_parts(X, y),
    "gradients": lambda net, X, y: net.gradients(X, y),
    "score": lambda net, X, y: net.score(X, y),
    "fit": lambda net, X, y: net.fit(X, y, epochs=2, lr=0.1, batch_size=3),
    "fit validation_data": lambda net, X, y: net.fit(X_OK, Y_OK, epochs=2, validation_data=(X, y)),
}
CALLS_X = {
    "predict": lambda net, X: net.predict(X),
    "predict_proba": lambda net, X: net.predict_proba(X),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", list(CALLS_XY))
@pytest.mark.parametrize("bad_x, error, match", BAD_X)
def test_bad_X_refused_by_methods_taking_X_and_y(backend, call, bad_x, error, match):
    net = l2fast.Network([4, 5, 3], backend=backend, seed=0)
    before = snapshot(net)
    with pytest.raises(error, match=match):
        CALLS_XY[call](net, bad_x, Y_OK[: len(bad_x)] if hasattr(bad_x, "__len__") else Y_OK)
    assert_unchanged(net, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", list(CALLS_X))
@pytest.mark.parametrize("bad_x, error, match", BAD_X)
def test_bad_X_refused_by_prediction(backend, call, bad_x, error, match):
    net = l2fast.Network([4, 5, 3], backend=backend, seed=0)
    with pytest.raises(error, match=match):
        CALLS_X[call](net, bad_x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", list(CALLS_XY))
@pytest.mark.parametrize("bad_y, error, match", BAD_Y_SOFTMAX)
def test_bad_softmax_labels_refused(backend, call, bad_y, error, match):
    net = l2fast.Network([4, 5, 3], backend=backend, seed=0)
    before = snapshot(net)
    with pytest.raises(error, match=match):
        CALLS_XY[call](net, X_OK, bad_y)
    assert_unchanged(net, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss, n_out, bad_y, match", [
    ("logistic", 1, np.full(10, 2), "y: logistic labels must be 0 or 1"),
    ("logistic", 1, np.full(10, 0.5), "y: logistic labels must be 0 or 1"),
    ("logistic", 1, np.zeros((10, 2)), r"y: expected shape \(10,\) or \(10, 1\)"),
    ("squared_error", 2, np.zeros(10), r"y: expected shape \(10, 2\)"),
    ("squared_error", 2, np.zeros((9, 2)), r"y: expected shape \(10, 2\)"),
    ("squared_error", 2, np.full((10, 2), np.inf), "y: contains NaN or infinity"),
])
def test_bad_logistic_and_regression_targets_refused(backend, loss, n_out, bad_y, match):
    net = l2fast.Network([4, n_out], loss=loss, backend=backend, seed=0)
    before = snapshot(net)
    with pytest.raises(ValueError, match=match):
        net.fit(X_OK, bad_y)
    assert_unchanged(net, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=0.0), ValueError, "lr"),
    (dict(lr=-0.1), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr="fast"), TypeError, "lr"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.0), TypeError, "batch_size"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(epochs=1.5), TypeError, "epochs"),
    (dict(shuffle="yes"), TypeError, "shuffle"),
    (dict(validation_data=X_OK), TypeError, "validation_data"),
    (dict(validation_data=(X_OK[:, :2], Y_OK)), ValueError, "X: expected 4 features"),
])
def test_bad_fit_options_refused(backend, kwargs, error, match):
    net = l2fast.Network([4, 5, 3], backend=backend, seed=0)
    before = snapshot(net)
    with pytest.raises(error, match=match):
        net.fit(X_OK, Y_OK, **kwargs)
    assert_unchanged(net, before)


def test_predict_proba_refused_for_regression():
    with pytest.raises(TypeError, match="predict_proba"):
        l2fast.Network([4, 1], loss="squared_error").predict_proba(X_OK)


@pytest.mark.parametrize("weights, biases, error, match", [
    ([np.zeros((5, 4))], [np.zeros(5), np.zeros(3)], ValueError, "weights: expected a list of 2"),
    ([np.zeros((5, 4)), np.zeros((3, 4))], [np.zeros(5), np.zeros(3)], ValueError, r"weights\[1\]: expected shape \(3, 5\)"),
    ([np.zeros((5, 4)), np.zeros((3, 5))], [np.zeros(5), np.zeros(4)], ValueError, r"biases\[1\]: expected shape \(3,\)"),
    ([np.full((5, 4), np.nan), np.zeros((3, 5))], [np.zeros(5), np.zeros(3)], ValueError, r"weights\[0\]: contains NaN"),
    ([np.zeros((5, 4), complex), np.zeros((3, 5))], [np.zeros(5), np.zeros(3)], TypeError, r"weights\[0\]"),
    (np.zeros((2, 5, 4)), [np.zeros(5), np.zeros(3)], ValueError, "weights"),
])
def test_set_parameters_refuses_and_keeps_parameters(weights, biases, error, match):
    net = l2fast.Network([4, 5, 3], seed=0)
    before = snapshot(net)
    with pytest.raises(error, match=match):
        net.set_parameters(weights, biases)
    assert_unchanged(net, before)


# -- unusual but valid arrays are accepted and read right ----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_fortran_readonly_and_list_inputs_give_the_same_answer(backend):
    net = l2fast.Network([4, 5, 3], backend=backend, dtype="float64", seed=0)
    want = net.cost(X_OK, Y_OK)
    wide = np.zeros((10, 8))
    wide[:, ::2] = X_OK
    readonly = X_OK.copy()
    readonly.flags.writeable = False
    for X in (wide[:, ::2], np.asfortranarray(X_OK), readonly, X_OK.tolist(), X_OK.astype(np.float32)):
        assert net.cost(X, Y_OK) == pytest.approx(want, rel=1e-6)
    assert net.cost(X_OK, Y_OK.astype(np.float64)) == want
    assert net.cost(X_OK, Y_OK.astype(np.uint8)) == want


# -- the compiled module checks for itself -------------------------------------------------------

def core_args(dtype=np.float64):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(5, 4)).astype(dtype), rng.normal(size=(3, 5)).astype(dtype)]
    biases = [np.zeros(5, dtype), np.zeros(3, dtype)]
    return weights, biases, X_OK.astype(dtype), Y_OK.astype(np.int64)


def train(weights, biases, X, y, order=None, batch_size=4, lr=0.1, lam_over_m=0.01,
          activation="relu", loss="softmax"):
    return _core.train_epoch(weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss)


@pytest.mark.parametrize("mutate, error, match", [
    (lambda a: a.update(X=a["X"].astype(np.float32)), TypeError, "X: expected dtype float64"),
    (lambda a: a.update(X=np.asfortranarray(a["X"])), ValueError, "X: array must be C-contiguous"),
    (lambda a: a.update(X=a["X"][:, :3]), ValueError, r"X: expected shape \(any, 4\)"),
    (lambda a: a.update(X=a["X"].tolist()), TypeError, "X: expected a numpy.ndarray"),
    (lambda a: a.update(X=a["X"][:0]), ValueError, "X: no records"),
    (lambda a: a.update(y=a["y"].astype(np.int32)), TypeError, "y: expected dtype int64"),
    (lambda a: a.update(y=a["y"][:5]), ValueError, r"y: expected shape \(10,\)"),
    (lambda a: a.update(y=np.full(10, 3, np.int64)), ValueError, "y: label 3 at index 0"),
    (lambda a: a.update(y=None), ValueError, "y: targets are required"),
    (lambda a: a.update(order=np.array([0, 10], np.int64)), ValueError, "order: index 10"),
    (lambda a: a.update(order=np.array([0, 1], np.int32)), TypeError, "order: expected dtype int64"),
    (lambda a: a.update(batch_size=0), ValueError, "batch_size"),
    (lambda a: a.update(lr=0.0), ValueError, "lr"),
    (lambda a: a.update(lr=float("nan")), ValueError, "lr"),
    (lambda a: a.update(lam_over_m=-1.0), ValueError, "lam_over_m"),
    (lambda a: a.update(activation="elu"), ValueError, "activation"),
    (lambda a: a.update(loss="hinge"), ValueError, "loss"),
    (lambda a: a.update(loss="logistic"), ValueError, "layer_sizes"),
    (lambda a: a["weights"].__setitem__(1, a["weights"][1][:, :4].copy()), ValueError, r"weights\[1\]: expected shape \(3, 5\)"),
    (lambda a: a["weights"].__setitem__(1, a["weights"][1].astype(np.float32)), TypeError, r"weights\[1\]: expected dtype float64"),
    (lambda a: a["weights"].__setitem__(0, a["weights"][0].astype(np.float16)), TypeError, r"weights\[0\]: expected dtype float32 or float64"),
    (lambda a: a["weights"].__setitem__(1, np.asfortranarray(a["weights"][1])), ValueError, r"weights\[1\]: array must be C-contiguous"),
    (lambda a: a["weights"].__setitem__(0, "W"), TypeError, r"weights\[0\]: expected a numpy.ndarray"),
    (lambda a: a["weights"][0].setflags(write=False), ValueError, r"weights\[0\]: array is read-only"),
    (lambda a: a["biases"].pop(), ValueError, "biases: expected 2 arrays"),
    (lambda a: a["biases"][1].setflags(write=False), ValueError, r"biases\[1\]: array is read-only"),
    (lambda a: a.update(weights=[], biases=[]), ValueError, "weights: need at least one layer"),
])
def test_core_train_epoch_validates_before_touching_memory(mutate, error, match):
    weights, biases, X, y = core_args()
    args = dict(weights=weights, biases=biases, X=X, y=y)
    mutate(args)
    arrays = [p for p in args["weights"] + args["biases"] if isinstance(p, np.ndarray)]
    before = [p.copy() for p in arrays]
    with pytest.raises(error, match=match):
        train(**args)
    for p, q in zip(arrays, before):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("at", [0, 5, 63, 64, 999, 1000, 1036])
@pytest.mark.parametrize("what, bad, match", [
    ("labels", -1, "y: label -1 at index {at}"),
    ("labels", 3, "y: label 3 at index {at}"),
    ("binary", 0.5, "y: logistic labels must be 0 or 1, found 0.500000 at index {at}"),
    ("binary", -1.0, "y: logistic labels must be 0 or 1, found -1.000000 at index {at}"),
    ("weights", -0.25, "sample_weight: weights must be finite and >= 0, found -0.250000 at index {at}"),
    ("weights", np.nan, "sample_weight: weights must be finite and >= 0, found nan at index {at}"),
    ("weights", np.inf, "sample_weight: weights must be finite and >= 0, found inf at index {at}"),
    ("order", -5, "order: index -5 at position {at}"),
    ("order", 1037, "order: index 1037 at position {at}"),
])
def test_core_checks_name_the_first_bad_entry_wherever_it_is(dtype, at, what, bad, match):
    # the label, target, weight and order checks take one vectorised pass over the whole array, then look for
    # the entry: the first bad one is named wherever it sits (in a vector, in the tail, last), and a second
    # bad entry after it does not change which
    m, rng = 1037, np.random.default_rng(at)
    X = rng.normal(size=(m, 4)).astype(dtype)
    n_out, loss = (1, "logistic") if what == "binary" else (3, "softmax")
    weights = [rng.normal(size=(n_out, 4)).astype(dtype)]
    biases = [np.zeros(n_out, dtype)]
    y = (rng.random((m, 1)) > 0.5).astype(dtype) if n_out == 1 else rng.integers(0, 3, size=m)
    order, sample_weight = rng.permutation(m), np.ones(m, dtype)
    target = {"labels": y, "binary": y.reshape(-1), "weights": sample_weight, "order": order}[what]
    target[at] = bad
    if at + 1 < m:
        target[m - 1] = bad
    before = weights[0].copy()
    with pytest.raises(ValueError, match=re.escape(match.format(at=at))):
        _core.train_epoch(weights, biases, X, y, order, 64, 0.1, 0.0, "identity", loss, sample_weight=sample_weight)
    np.testing.assert_array_equal(weights[0], before)


def test_core_train_epoch_writes_into_the_callers_arrays():
    weights, biases, X, y = core_args(np.float32)
    ids = [id(p) for p in weights + biases]
    before = [p.copy() for p in weights + biases]
    train(weights, biases, X, y)
    assert [id(p) for p in weights + biases] == ids
    for p, q in zip(weights + biases, before):
        assert not np.array_equal(p, q)


def test_core_read_only_passes_accept_read_only_parameters():
    weights, biases, X, y = core_args()
    for p in weights + biases:
        p.setflags(write=False)
    assert _core.predict(weights, biases, X, "relu", "softmax").shape == (10, 3)
    loss_sum, correct = _core.evaluate(weights, biases, X, y, "relu", "softmax")
    assert loss_sum > 0 and 0 <= correct <= 10


def test_core_thread_count_checks_its_argument():
    with pytest.raises(ValueError, match="n must be >= 1"):
        _core.set_num_threads(0)
    assert _core.get_num_threads() >= 1


@pytest.mark.parametrize("m, error", [(0, ValueError), (-3, ValueError), (1.5, TypeError), ("10", TypeError)])
def test_penalty_refuses_bad_m(m, error):
    with pytest.raises(error, match="m"):
        l2fast.Network([4, 3], lam=1.0).penalty(m)


def test_set_parameters_reads_any_layout_right():
    net = l2fast.Network([4, 5, 3], dtype="float64", seed=0)
    want_W, want_b = net.weights, net.biases
    readonly = want_W[1].copy()
    readonly.flags.writeable = False
    wide = np.zeros((5, 8))
    wide[:, ::2] = want_W[0]
    for W0, W1 in ((np.asfortranarray(want_W[0]), readonly), (wide[:, ::2], want_W[1].tolist())):
        other = l2fast.Network([4, 5, 3], dtype="float64", seed=1)
        other.set_parameters([W0, W1], want_b)
        for p, q in zip(other.weights, want_W):
            np.testing.assert_array_equal(p, q)
        assert other.cost(X_OK, Y_OK) == net.cost(X_OK, Y_OK)
