"""The cpu backend's paths for small networks give the reference's training: layers trained on a transposed copy
of W (float32 SGD) in slices of its rows, the softmax loss with its vectorised exp, and the next minibatch's rows and
labels prefetched; and the same bits on any thread count."""
import numpy as np
import pytest

import l2fast
from l2fast.testing import assert_parity, make_problem


@pytest.mark.parametrize("sizes, batch, activation", [
    ([64, 64, 10], 32, "relu"),     # the first layer trains transposed (C = 32 x 64 > 1200), the output layer on W
    ([20, 16, 4], 8, "relu"),       # every layer transposed (inner dimensions below 32)
    ([300, 128, 10], 16, "relu"),   # transposed, W^T's products in 5 slices of 60 rows (each slice in L1)
    ([784, 128, 10], 64, "relu"),   # transposed only since its products go in slices (13 of 60 rows)
    # The demo's network: products past OpenBLAS's small-matrix range stay on W. tanh, not relu: over 50 float32
    # steps through two ReLU layers, exponentials that differ in the last bit (glibc's, libmvec's, NumPy's) can
    # switch one hidden unit on for one record in one backend only, which leaves that unit's row of W[0] 1e-3 off.
    ([64, 256, 256, 10], 20, "tanh"),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_networks_train_as_the_reference_does(sizes, batch, activation, dtype):
    X, y = make_problem("softmax", sizes[0], sizes[-1], m=500, seed=7)
    w = np.random.default_rng(8).uniform(0.5, 1.5, size=len(X))
    nets = [l2fast.Network(sizes, activation=activation, lam=2.0, backend=backend, dtype=dtype, seed=0)
            for backend in ("cpu", "numpy")]
    histories = [net.fit(X, y, epochs=2, lr=0.05, batch_size=batch, sample_weight=w) for net in nets]
    assert_parity(histories[0].cost, histories[1].cost, dtype, "cost per epoch")
    for a, b in zip(nets[0].weights + nets[0].biases, nets[1].weights + nets[1].biases):
        assert_parity(a, b, dtype, "parameters")


def test_softmax_of_logits_far_apart_stays_finite_and_exact():
    """Logits more than 87 apart: the smaller ones' exp is 0 in the vectorised exp (below float's normal range),
    as good as the reference's denormal; loss and gradients agree and nothing is NaN."""
    X, y = make_problem("softmax", 5, 3, m=64, seed=1)
    X = (X * 40).astype(np.float32)
    nets = [l2fast.Network([5, 3], lam=0.0, backend=backend, dtype="float32", seed=0) for backend in ("cpu", "numpy")]
    for net in nets:
        net.set_parameters([np.array([[3, 0, 0, 0, 0], [0, -3, 0, 0, 0], [0, 0, 1, 0, 0]], np.float32)],
                           [np.zeros(3, np.float32)])
    (cost, (dW, db)), (cost_ref, (dW_ref, db_ref)) = [(net.cost(X, y), net.gradients(X, y)) for net in nets]
    assert np.isfinite(cost) and cost > 50
    assert cost == pytest.approx(cost_ref, rel=1e-5)
    assert_parity(dW[0], dW_ref[0], "float32", "dW")
    assert_parity(db[0], db_ref[0], "float32", "db")


@pytest.mark.parametrize("sizes, batch", [([784, 64, 10], 32), ([784, 128, 10], 64), ([64, 128, 10], 8)])
def test_sliced_transposed_layers_give_the_same_bits_on_one_thread_and_on_two(sizes, batch):
    X, y = make_problem("softmax", sizes[0], sizes[-1], m=700, seed=5)
    before = l2fast.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            l2fast.set_num_threads(n, adaptive=False)
            net = l2fast.Network(sizes, lam=1.0, backend="cpu", dtype="float32", seed=0)
            cost = net.fit(X, y, epochs=2, lr=0.05, batch_size=batch).cost
            results.append([np.asarray(cost)] + net.weights + net.biases)
    finally:
        l2fast.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(*results))


# Networks the small-layer kernels train (float32 plain SGD, dense X, hidden layers of 16-128 units, ReLU or identity;
# cpp/small_dense.*, on machines with AVX-512): widths at and around a register's 16 floats and the 64-unit panels,
# a batch of 1, a last batch shorter than the rest, a narrow output layer (through OpenBLAS) and a wide one.
SMALL_KERNEL_NETWORKS = [
    ([64, 64, 10], 32, "relu"),
    ([37, 16, 3], 1, "relu"),         # batch 1
    ([20, 17, 5], 7, "relu"),         # 500 records: a last batch of 3; one register and one lane
    ([50, 65, 33, 4], 16, "relu"),    # two panels (64 + 1 units); a hidden layer's input gradient in the kernels
    ([30, 128, 24], 9, "identity"),   # the widest layer taken; an output layer of 24 units in the kernels
    ([100, 48, 2], 500, "relu"),      # one full batch
]


@pytest.mark.parametrize("sizes, batch, activation", SMALL_KERNEL_NETWORKS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_kernel_networks_train_as_the_reference_does(sizes, batch, activation, dtype):
    X, y = make_problem("softmax", sizes[0], sizes[-1], m=500, seed=11)
    nets = [l2fast.Network(sizes, activation=activation, lam=2.0, backend=backend, dtype=dtype, seed=0)
            for backend in ("cpu", "numpy")]
    histories = [net.fit(X, y, epochs=2, lr=0.05, batch_size=batch) for net in nets]
    assert_parity(histories[0].cost, histories[1].cost, dtype, "cost per epoch")
    for a, b in zip(nets[0].weights + nets[0].biases, nets[1].weights + nets[1].biases):
        assert_parity(a, b, dtype, "parameters")


@pytest.mark.parametrize("sizes, batch, activation", SMALL_KERNEL_NETWORKS)
def test_small_kernel_networks_give_the_same_bits_on_one_thread_and_on_two(sizes, batch, activation):
    X, y = make_problem("softmax", sizes[0], sizes[-1], m=500, seed=12)
    before = l2fast.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            l2fast.set_num_threads(n, adaptive=False)
            net = l2fast.Network(sizes, activation=activation, lam=1.0, backend="cpu", dtype="float32", seed=0)
            cost = net.fit(X, y, epochs=2, lr=0.05, batch_size=batch).cost
            results.append([np.asarray(cost)] + net.weights + net.biases)
    finally:
        l2fast.set_num_threads(before)
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


# Softmax output layers narrower than a register (2-15 classes) go through kernels of their own, the loss fused into
# the forward product and the softmax taken a register of records at a time; a squared-error output layer of the
# same width stays on OpenBLAS. Training, with sample weights and the running loss and accuracy, as the reference's.
@pytest.mark.parametrize("sizes, batch, loss", [
    ([64, 64, 10], 32, "softmax"),
    ([30, 16, 15], 17, "softmax"),        # one lane short of a register; blocks of 16 records and a last one of 1
    ([30, 40, 2], 40, "softmax"),         # two classes; 500 records: a last batch of 20
    ([30, 16, 24, 7], 16, "softmax"),     # a hidden layer below it that is not the first
    ([30, 32, 10], 16, "squared_error"),  # on OpenBLAS
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_narrow_output_layers_train_as_the_reference_does(sizes, batch, loss, dtype):
    X, y = make_problem(loss, sizes[0], sizes[-1], m=500, seed=13)
    w = np.random.default_rng(14).uniform(0.5, 1.5, size=len(X))
    nets = [l2fast.Network(sizes, loss=loss, lam=2.0, backend=backend, dtype=dtype, seed=0)
            for backend in ("cpu", "numpy")]
    histories = [net.fit(X, y, epochs=2, lr=0.05, batch_size=batch, sample_weight=w) for net in nets]
    for name in ("cost", "loss", "accuracy"):
        assert_parity(getattr(histories[0], name), getattr(histories[1], name), dtype, name)
    for a, b in zip(nets[0].weights + nets[0].biases, nets[1].weights + nets[1].biases):
        assert_parity(a, b, dtype, "parameters")
