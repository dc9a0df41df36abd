"""The NumPy reference's dJ/dW and dJ/db against central finite differences of J itself."""
import numpy as np
import pytest

import l2fast
from l2fast.testing import make_problem


def numeric_gradients(net, X, y, h=1e-6):
    weights, biases = net.weights, net.biases
    params = weights + biases
    grads = []
    for k, P in enumerate(params):
        G = np.zeros_like(P)
        for idx in np.ndindex(P.shape):
            values = []
            for sign in (1, -1):
                trial = [Q.copy() for Q in params]
                trial[k][idx] += sign * h
                net.set_parameters(trial[: len(weights)], trial[len(weights) :])
                values.append(net.cost(X, y))
            G[idx] = (values[0] - values[1]) / (2 * h)
        grads.append(G)
    net.set_parameters(weights, biases)
    return grads[: len(weights)], grads[len(weights) :]


@pytest.mark.parametrize("hidden", [[5, 4], []], ids=["two-hidden", "no-hidden"])
def test_reference_gradients_match_finite_differences(activation, loss_out, hidden):
    loss, n_out = loss_out
    X, y = make_problem(loss, 3, n_out, m=7, seed=11)
    net = l2fast.Network([3, *hidden, n_out], activation=activation, loss=loss, lam=0.7,
                         backend="numpy", dtype="float64", seed=5)
    # Non-zero biases so that the bias gradient is tested away from the initial point.
    rng = np.random.default_rng(3)
    net.set_parameters(net.weights, [rng.normal(scale=0.3, size=b.shape) for b in net.biases])
    dW, db = net.gradients(X, y)
    num_dW, num_db = numeric_gradients(net, X, y)
    for analytic, numeric in zip(dW + db, num_dW + num_db):
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_penalty_gradient_is_lam_over_m_times_W():
    X, y = make_problem("softmax", 3, 3, m=9, seed=2)
    plain = l2fast.Network([3, 4, 3], lam=0.0, backend="numpy", dtype="float64", seed=1)
    penalised = l2fast.Network([3, 4, 3], lam=2.5, backend="numpy", dtype="float64", seed=1)
    (dW0, db0), (dW1, db1) = plain.gradients(X, y), penalised.gradients(X, y)
    for W, g0, g1 in zip(plain.weights, dW0, dW1):
        np.testing.assert_allclose(g1 - g0, 2.5 / 9 * W, rtol=1e-12, atol=1e-15)
    for g0, g1 in zip(db0, db1):
        np.testing.assert_array_equal(g0, g1)
