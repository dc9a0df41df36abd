"""The L2 convention, pinned: lam/m with m the training-set size, biases never penalised."""
import numpy as np
import pytest

import l2fast
from l2fast.testing import make_problem

BACKENDS = ["numpy", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_full_batch_step_differs_by_lr_lam_over_m_W(backend):
    X, y = make_problem("softmax", 4, 3, m=25, seed=0)
    lr, lam, m = 0.3, 1.7, 25
    plain = l2fast.Network([4, 5, 3], lam=0.0, backend=backend, dtype="float64", seed=9)
    penalised = l2fast.Network([4, 5, 3], lam=lam, backend=backend, dtype="float64", seed=9)
    W_start = plain.weights
    plain.fit(X, y, epochs=1, lr=lr, shuffle=False)
    penalised.fit(X, y, epochs=1, lr=lr, shuffle=False)
    for W0, W_plain, W_pen in zip(W_start, plain.weights, penalised.weights):
        np.testing.assert_allclose(W_plain - W_pen, lr * lam / m * W0, rtol=1e-10, atol=1e-15)
        assert not np.allclose(W_plain, W_pen, rtol=0, atol=1e-6)
    for b_plain, b_pen in zip(plain.biases, penalised.biases):
        np.testing.assert_array_equal(b_plain, b_pen)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minibatch_step_uses_lam_over_training_set_size(backend):
    X, y = make_problem("logistic", 3, 1, m=20, seed=5)
    lr, lam, batch = 0.5, 3.0, 8
    net = l2fast.Network([3, 4, 1], activation="tanh", loss="logistic", lam=lam, backend=backend,
                         dtype="float64", seed=2)
    # Replay the epoch by hand: batches X[0:8], X[8:16], X[16:20], each from the previous step's weights.
    scratch = l2fast.Network([3, 4, 1], activation="tanh", loss="logistic", lam=0.0, backend="numpy",
                             dtype="float64")
    weights, biases = net.weights, net.biases
    for start in range(0, 20, batch):
        scratch.set_parameters(weights, biases)
        dW, db = scratch.gradients(X[start:start + batch], y[start:start + batch])  # mean dL, no penalty
        weights = [W - lr * (g + lam / 20 * W) for W, g in zip(weights, dW)]
        biases = [b - lr * g for b, g in zip(biases, db)]
    net.fit(X, y, epochs=1, lr=lr, batch_size=batch, shuffle=False)
    for got, want in zip(net.weights + net.biases, weights + biases):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
