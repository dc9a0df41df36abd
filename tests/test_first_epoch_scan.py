"""fit leaves X's scan for NaN and infinity to the first epoch on the cpu backend (network._first_epoch_scans_X):
every epoch kernel (the linear step, the small-layer step, the GEMM step, the optimizers' steps, full batch, stacked
models) must carry a non-finite feature into the epoch's loss or weights whatever the record's gradient or weight,
so that fit then names X and leaves every network exactly as it was, as its own scan did before."""
import numpy as np
import pytest

import l2fast
from l2fast import _core, optim
from l2fast.backends import cpu
from l2fast.testing import make_problem

# (layer sizes, activation, loss, dtype, fit arguments): one case per epoch kernel
KERNELS = {
    "linear step": ([12, 1], "identity", "logistic", "float32", {"batch_size": 32}),
    "linear step float64, softmax": ([12, 3], "identity", "softmax", "float64", {"batch_size": 32}),
    "small-layer step": ([12, 32, 3], "relu", "softmax", "float32", {"batch_size": 16}),
    "GEMM step": ([12, 9, 1], "tanh", "logistic", "float32", {"batch_size": 32}),
    "GEMM step float64": ([12, 40, 4], "relu", "squared_error", "float64", {"batch_size": 64}),
    "adam": ([12, 32, 3], "relu", "softmax", "float64", {"batch_size": 32, "optimizer": "adam"}),
    "momentum": ([12, 32, 3], "relu", "softmax", "float32",
                 {"batch_size": 32, "optimizer": optim.Momentum(nesterov=True)}),
    "full batch": ([12, 9, 1], "relu", "logistic", "float32", {"batch_size": None}),
    "no shuffle": ([12, 1], "identity", "logistic", "float64", {"batch_size": 50, "shuffle": False}),
}


def problem(sizes, loss, dtype, m=200, seed=0):
    X, y = make_problem(loss, sizes[0], sizes[-1], m, seed)
    return np.ascontiguousarray(X, dtype=dtype), y


def state_of(net):
    state = net.optimizer_state
    return ([p.copy() for p in net.weights + net.biases], net._shuffle_rng.bit_generator.state,
            None if state is None else (state.step, state.epoch, [[s.copy() for s in slot] for slot in state.slots]))


def assert_same_state(a, b):
    assert all(np.array_equal(p, q) for p, q in zip(a[0], b[0]))
    assert a[1] == b[1]
    assert (a[2] is None) == (b[2] is None)
    if a[2] is not None:
        assert a[2][:2] == b[2][:2]
        assert all(np.array_equal(s, t) for u, v in zip(a[2][2], b[2][2]) for s, t in zip(u, v))


def network(sizes, activation, loss, dtype, seed=1):
    return l2fast.Network(sizes, activation=activation, loss=loss, dtype=dtype, backend="cpu", seed=seed, lam=0.3)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_non_finite_feature_is_named_and_changes_nothing(kernel, value, where):
    sizes, activation, loss, dtype, kwargs = KERNELS[kernel]
    X, y = problem(sizes, loss, dtype)
    row = {"first": 0, "middle": 117, "last": len(X) - 1}[where]
    X[row, 5] = value
    weights = np.ones(len(X))
    weights[row] = 0.0  # a record that counts for nothing still has its features read and multiplied
    net = network(sizes, activation, loss, dtype)
    net.fit(problem(sizes, loss, dtype, seed=3)[0], y, epochs=1, lr=0.05, **kwargs)  # an optimizer state to keep
    before = state_of(net)
    for sample_weight in (None, weights):
        with pytest.raises(ValueError, match="X: contains NaN or infinity"):
            net.fit(X, y, epochs=3, lr=0.05, sample_weight=sample_weight, **kwargs)
        assert_same_state(state_of(net), before)
    # and the network trains on as if the refused calls had never been made
    twin = network(sizes, activation, loss, dtype)
    twin.fit(problem(sizes, loss, dtype, seed=3)[0], y, epochs=1, lr=0.05, **kwargs)
    X[row, 5] = 0.5
    for a in (net, twin):
        a.fit(X, y, epochs=2, lr=0.05, **kwargs)
    assert_same_state(state_of(net), state_of(twin))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_stacked_networks_all_go_back(value):
    X, y = problem([12, 1], "logistic", "float32")
    X[42, 0] = value
    nets = [l2fast.Network([12, 1], loss="logistic", backend="cpu", seed=s, lam=lam) for s, lam in ((1, 0.1), (2, 3.0))]
    before = [state_of(n) for n in nets]
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        l2fast.fit_together(nets, X, y, epochs=2, lr=0.1, batch_size=32)
    for net, state in zip(nets, before):
        assert_same_state(state_of(net), state)


@pytest.fixture
def scans(monkeypatch):
    """The sizes of the arrays the cpu backend scans for NaN and infinity with _core.all_finite."""
    sizes, real = [], _core.all_finite
    monkeypatch.setattr(cpu._core, "all_finite", lambda a: sizes.append(np.asarray(a).size) or real(a))
    return sizes


def test_a_clean_fit_never_scans_X_and_a_bad_one_scans_it_after_the_first_epoch(scans):
    X, y = problem([12, 1], "logistic", "float32", m=300)
    net = network([12, 1], "identity", "logistic", "float32")
    net.fit(X, y, epochs=3, lr=0.1, batch_size=32)
    assert X.size not in scans
    X[7, 3] = np.nan
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        net.fit(X, y, epochs=3, lr=0.1, batch_size=32)
    assert scans.count(X.size) == 1


@pytest.mark.filterwarnings("ignore::l2fast.monitor.ConvergenceWarning")  # two L-BFGS iterations
@pytest.mark.parametrize("case", ["float64 X, float32 network", "Fortran order", "no epochs", "lbfgs"])
def test_fit_scans_X_itself_where_no_epoch_will(scans, case):
    X, y = problem([12, 9, 1], "logistic", "float64", m=300)
    dtype, kwargs = "float64", {"epochs": 2, "batch_size": 32}
    if case == "float64 X, float32 network":  # the cast could overflow: fit's scan names that
        dtype = "float32"
    elif case == "Fortran order":
        X = np.asfortranarray(X)
    elif case == "no epochs":
        kwargs["epochs"] = 0
    else:
        kwargs = {"epochs": 2, "optimizer": "lbfgs"}
    network([12, 9, 1], "relu", "logistic", dtype).fit(X, y, lr=0.1, **kwargs)
    assert X.size in scans


def test_finite_data_that_diverges_is_still_a_divergence():
    X, y = problem([12, 1], "logistic", "float64")
    X *= 1e300
    net = network([12, 1], "identity", "logistic", "float64")
    before = state_of(net)
    with pytest.raises(l2fast.DivergenceError):
        net.fit(X, y, epochs=2, lr=1e10, batch_size=32)
    assert all(np.array_equal(p, q) for p, q in zip(state_of(net)[0], before[0]))
