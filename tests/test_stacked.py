"""Training several networks as one stacked model equals training each alone, on every backend."""
import numpy as np
import pytest

import l2fast
from l2fast.backends.cpu import _core
from l2fast.testing import assert_parity, make_problem

LAMS = [0.0, 0.5, 3.0, 150.0]  # the last decays lr*lam/m past 1/2 per step: the cpu backend's other path


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss, n_out", [("softmax", 3), ("logistic", 1), ("squared_error", 2)])
def test_stacked_equals_separate_runs(backend, dtype, loss, n_out):
    X, y = make_problem(loss, 5, n_out, m=45, seed=1)  # 45 = 2 batches of 16 + a partial one of 13
    X_val, y_val = make_problem(loss, 5, n_out, m=20, seed=2)

    def make(lam):
        return l2fast.Network([5, 8, 6, n_out], activation="tanh", loss=loss, lam=lam, backend=backend,
                              dtype=dtype, seed=3)

    fit = dict(epochs=3, lr=0.05, batch_size=16, validation_data=(X_val, y_val))
    together = [make(lam) for lam in LAMS]
    histories = l2fast.fit_together(together, X, y, **fit)
    for net, history, lam in zip(together, histories, LAMS):
        alone = make(lam)
        alone_history = alone.fit(X, y, **fit)
        for p, q in zip(net.weights + net.biases, alone.weights + alone.biases):
            assert_parity(p, q, dtype, f"parameters, lam={lam}")
        assert_parity(history.loss, alone_history.loss, dtype, "history.loss")
        assert_parity(history.val_loss, alone_history.val_loss, dtype, "history.val_loss")
    assert not np.allclose(together[0].weights[0], together[2].weights[0])


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_stacked_early_stopping_stops_each_network_on_its_own(backend):
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(40, 10)), rng.integers(0, 3, size=40)
    X_val, y_val = rng.normal(size=(100, 10)), rng.integers(0, 3, size=100)
    lams = [0.0, 20.0]

    def make(lam):
        return l2fast.Network([10, 32, 3], lam=lam, backend=backend, dtype="float64", seed=0)

    fit = dict(epochs=200, lr=0.1, batch_size=8, validation_data=(X_val, y_val), patience=4)
    together = [make(lam) for lam in lams]
    histories = l2fast.fit_together(together, X, y, **fit)
    for net, history, lam in zip(together, histories, lams):
        alone = make(lam)
        alone_history = alone.fit(X, y, **fit)
        assert history.best_epoch == alone_history.best_epoch
        assert len(history.loss) == len(alone_history.loss)
        for p, q in zip(net.weights, alone.weights):
            np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not whether the choice means much
def test_select_lambda_stacked_or_not_gives_the_same_sweep():
    X, y = make_problem("softmax", 6, 3, m=80, seed=5)
    X_dev, y_dev = make_problem("softmax", 6, 3, m=40, seed=6)
    opts = dict(layer_sizes=[6, 12, 3], backend="cpu", dtype="float64", epochs=15, lr=0.1, batch_size=16,
                progress=False)
    a = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 1.0, 10.0], stacked=True, **opts)
    b = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 1.0, 10.0], stacked=False, **opts)
    assert a.best_lam == b.best_lam
    for r, s in zip(a.results, b.results):
        assert r.dev_loss == pytest.approx(s.dev_loss, rel=1e-10)


def test_fit_together_refuses_mixed_networks():
    X, y = make_problem("softmax", 4, 3, m=10, seed=0)
    net = l2fast.Network([4, 3], backend="cpu", seed=0)
    with pytest.raises(ValueError, match=r"networks\[1\]: every network needs the architecture"):
        l2fast.fit_together([net, l2fast.Network([4, 5, 3], backend="cpu")], X, y)
    with pytest.raises(ValueError, match=r"networks\[1\]: every network needs"):
        l2fast.fit_together([net, l2fast.Network([4, 3], backend="numpy")], X, y)
    with pytest.raises(ValueError, match="appears twice"):
        l2fast.fit_together([net, net], X, y)
    with pytest.raises(TypeError, match="networks"):
        l2fast.fit_together([], X, y)


def test_core_stacked_checks_its_arguments():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 4)), rng.integers(0, 3, size=10).astype(np.int64)

    def model():
        return [rng.normal(size=(5, 4)), rng.normal(size=(3, 5))], [np.zeros(5), np.zeros(3)]

    (W1, b1), (W2, b2) = model(), model()
    before = [w.copy() for w in W1 + W2]

    def call(weights, biases, lams=(0.1, 0.1)):
        return _core.train_epoch_stacked(weights, biases, X, y, None, 4, 0.1, list(lams), "relu", "softmax")

    with pytest.raises(ValueError, match="share memory"):
        call([W1, [W2[0], W1[1]]], [b1, b2])
    with pytest.raises(ValueError, match="lam_over_m: expected one value per model"):
        call([W1, W2], [b1, b2], lams=(0.1,))
    with pytest.raises(ValueError, match=r"weights\[1\]: every model needs the layer sizes"):
        call([W1, [rng.normal(size=(6, 4)), rng.normal(size=(3, 6))]], [b1, [np.zeros(6), np.zeros(3)]])
    with pytest.raises(TypeError, match="one list of arrays per model"):
        call([W1[0], W1[1]], [b1, b2])
    for w, w0 in zip(W1 + W2, before):
        np.testing.assert_array_equal(w, w0)
    stats = call([W1, W2], [b1, b2])
    assert len(stats) == 2 and all(s[0] > 0 for s in stats)
