"""Values at the edges of what the types allow (issue 18, items 6, 8, 9 and 10): each is refused with a
clear message before anything changes, or handled the same way on every backend."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import l2fast
from l2fast import optim
from l2fast.testing import make_problem

BACKENDS = ["numpy", "cpu"]


def snapshot(net):
    return [p.copy() for p in net.weights + net.biases], net.optimizer_state


def assert_unchanged(net, before):
    params, state = before
    assert all(np.array_equal(p, q) for p, q in zip(net.weights + net.biases, params))
    after = net.optimizer_state
    assert (after is None) == (state is None)
    if state is not None:
        assert (after.optimizer, after.schedule, after.step, after.epoch) == \
            (state.optimizer, state.schedule, state.step, state.epoch)
        assert all(np.array_equal(a, b) for s, t in zip(after.slots, state.slots) for a, b in zip(s, t))


# -- finite float64 values beyond float32's range (item 6) ---------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", ["predict_proba", "predict", "cost", "score", "gradients", "fit"])
def test_float64_values_that_overflow_float32_are_refused(backend, call):
    X, y = make_problem("softmax", 4, 3, m=12, seed=0)
    X = X.astype(np.float64)
    X[3, 2] = 1e300
    net = l2fast.Network([4, 5, 3], backend=backend, dtype="float32", seed=0)
    net.fit(np.ones((2, 4)), [0, 1], optimizer="adam")
    before = snapshot(net)
    args = (X,) if call.startswith("predict") else (X, y)
    with pytest.raises(ValueError, match=r"X: has values beyond the range of float32 \(\+-3.4e\+38\)"):
        getattr(net, call)(*args)
    assert_unchanged(net, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_networks_take_the_same_values(backend):
    X, y = make_problem("softmax", 4, 3, m=12, seed=0)
    X = X.astype(np.float64)
    X[3, 2] = 1e300
    net = l2fast.Network([4, 5, 3], activation="tanh", backend=backend, dtype="float64", seed=0)
    assert np.isfinite(net.predict_proba(X)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_regression_targets_and_parameters_beyond_float32_are_refused(backend):
    X, _ = make_problem("squared_error", 4, 2, m=12, seed=0)
    y = np.zeros((12, 2))
    y[5, 1] = -1e39
    net = l2fast.Network([4, 5, 2], loss="squared_error", backend=backend, dtype="float32", seed=0)
    before = snapshot(net)
    with pytest.raises(ValueError, match="y: has values beyond the range of float32"):
        net.fit(X, y)
    weights, biases = net.weights, net.biases
    weights[1] = weights[1].astype(np.float64)
    weights[1][0, 0] = 1e300
    with pytest.raises(ValueError, match=r"weights\[1\]: has values beyond the range of float32"):
        net.set_parameters(weights, biases)
    assert_unchanged(net, before)


# -- the architecture cannot be changed behind the parameters' back (item 9) ----------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, value", [("activation", "gelu"), ("activation", "tanh"), ("loss", "logistic"),
                                         ("dtype", np.float64), ("layer_sizes", (4, 5, 2))])
def test_architecture_attributes_are_read_only(backend, name, value):
    X, y = make_problem("softmax", 4, 3, m=12, seed=0)
    net = l2fast.Network([4, 5, 3], backend=backend, seed=0)
    net.fit(X, y, optimizer="momentum")
    before = snapshot(net)
    old = getattr(net, name)
    with pytest.raises(AttributeError):
        setattr(net, name, value)
    assert getattr(net, name) == old
    assert_unchanged(net, before)
    net.fit(X, y, optimizer="momentum")  # trains on as before
    assert net.optimizer_state.step == 2


@pytest.mark.parametrize("dtype", [">f4", ">f8", np.dtype("float64").newbyteorder()])
def test_only_native_byte_order_dtypes_are_accepted(dtype):
    with pytest.raises(ValueError, match="dtype: expected the machine's native byte order"):
        l2fast.Network([4, 3], dtype=dtype)
    assert l2fast.Network([4, 3], dtype="=f4").dtype == np.float32


def test_pickles_keep_working_with_read_only_attributes():
    import pickle

    net = l2fast.Network([4, 5, 3], activation="tanh", loss="softmax", dtype="float64", seed=0)
    back = pickle.loads(pickle.dumps(net))
    assert (back.layer_sizes, back.activation, back.loss, back.dtype) == ((4, 5, 3), "tanh", "softmax", np.float64)
    old_style = net.__getstate__()  # how a pickle from before the properties stored them
    for name in ("layer_sizes", "activation", "loss", "dtype"):
        old_style[name] = old_style.pop("_" + name)
    revived = l2fast.Network.__new__(l2fast.Network)
    revived.__setstate__(old_style)
    assert revived.activation == "tanh" and revived.dtype == np.float64
    np.testing.assert_array_equal(revived.weights[0], net.weights[0])


# -- numbers beyond the types (item 10) ----------------------------------------------------------

@pytest.mark.parametrize("value", [10**400, -10**400])
def test_lam_beyond_float64_is_a_value_error(value):
    net = l2fast.Network([2, 2], lam=0.5)
    with pytest.raises(ValueError, match="lam: must be a finite number >= 0, got (-)?inf"):
        net.lam = value
    assert net.lam == 0.5
    with pytest.raises(ValueError, match="lam"):
        l2fast.Network([2, 2], lam=value)
    with pytest.raises(ValueError, match="beta1"):
        l2fast.Adam(beta1=10**400)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels, shown", [
    (np.array([0, 1, 2**64 - 1, 0], dtype=np.uint64), "18446744073709551615"),
    (np.array([0, 1, 2**63, 0], dtype=np.uint64), "9223372036854775808"),
    (np.array([0, 1, 1e30, 0]), "1e\\+30"),
    (np.array([0, 1, -1e30, 0]), "-1e\\+30"),
])
def test_labels_out_of_range_are_reported_as_given(backend, labels, shown):
    net = l2fast.Network([2, 3], backend=backend, seed=0)
    with pytest.raises(ValueError, match=rf"y: class labels must lie in \[0, 2\], got {shown} at index 2"):
        net.fit(np.ones((4, 2)), labels)


def test_a_network_that_cannot_fit_in_memory_is_refused_before_allocating():
    with pytest.raises(MemoryError, match=r"layer_sizes: the parameters need 4\.1e\+03 GiB, more than the"):
        l2fast.Network([2**20, 2**20, 10])  # 2**40 float32 weights: 4 TiB


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_weights_drawn_in_chunks_are_the_draws_of_one_call(activation):
    # [3000, 700, 5]: the first layer's 2.1M weights take three chunks; the values are those of one draw.
    net = l2fast.Network([3000, 700, 5], activation=activation, dtype="float32", seed=3)
    init_seq, _ = np.random.SeedSequence(3).spawn(2)
    rng = np.random.default_rng(init_seq)
    if activation == "relu":
        W0 = rng.normal(0.0, np.sqrt(2.0 / 3000), size=(700, 3000))
    else:
        W0 = rng.uniform(-np.sqrt(6.0 / 3700), np.sqrt(6.0 / 3700), size=(700, 3000))
    W1 = rng.uniform(-np.sqrt(6.0 / 705), np.sqrt(6.0 / 705), size=(5, 700))
    np.testing.assert_array_equal(net.weights[0], W0.astype(np.float32))
    np.testing.assert_array_equal(net.weights[1], W1.astype(np.float32))


PEAK_SCRIPT = textwrap.dedent("""
    import resource
    import l2fast
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    net = l2fast.Network([4000, 8000, 10], dtype="float32", seed=0)  # 128 MB of float32 weights
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(peak / (4000 * 8000 * 4))
""")


def test_initialisation_peaks_near_the_parameters_size():
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # Drawing a whole layer in float64 first peaked at 3x the float32 parameters.
    assert float(result.stdout) < 1.3


# -- learning-rate schedules stay valid however long they run (item 8) ---------------------------

@pytest.mark.parametrize("schedule", [optim.InverseScaling(power=1000), optim.ExponentialDecay(gamma=1e-200),
                                      optim.StepDecay(step_size=1, gamma=1e-300)])
def test_schedules_that_underflow_train_on_at_the_floor_on_every_backend(schedule):
    X, y = make_problem("softmax", 4, 3, m=24, seed=0)
    nets = {b: l2fast.Network([4, 5, 3], backend=b, dtype="float64", seed=0) for b in BACKENDS}
    histories = {b: net.fit(X, y, epochs=5, lr=0.1, batch_size=8, schedule=schedule) for b, net in nets.items()}
    rates = histories["numpy"].lr
    assert rates == histories["cpu"].lr
    assert rates[0] == 0.1 and all(0 < r <= 0.1 for r in rates) and rates[-1] == optim.MIN_LR
    for p, q in zip(nets["numpy"].weights, nets["cpu"].weights):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)


def test_the_floor_never_raises_a_smaller_base_rate():
    state = optim.OptimizerState(optim.SGD(), optim.ExponentialDecay(0.5), epoch=10**400)
    assert state.lr(1e-40) == 1e-40
    assert state.lr(0.1) == optim.MIN_LR
    assert optim.InverseScaling(2.0).factor(10**400) == 0.0


@pytest.mark.parametrize("make", [lambda: optim.ExponentialDecay(gamma=1.5), lambda: optim.StepDecay(2, gamma=2)])
def test_growing_schedules_are_refused(make):
    with pytest.raises(ValueError, match=r"gamma: must be <= 1 \(a decay\)"):
        make()
