"""backend="cpu" against the NumPy reference: cost, gradients, predictions, parameters after fit."""
import numpy as np
import pytest

from l2fast.testing import assert_network_parity, assert_parity, make_problem, twin_networks

DTYPES = ["float64", "float32"]


def pair(sizes, activation, loss, dtype, lam=0.8):
    return twin_networks(sizes, activation, loss, dtype, "cpu", lam=lam)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cost_gradients_predictions_agree(activation, loss_out, dtype):
    loss, n_out = loss_out
    X, y = make_problem(loss, 6, n_out, m=41, seed=17)
    ref, fast = pair([6, 7, 5, n_out], activation, loss, dtype)
    assert_network_parity(fast, ref, X, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [[6, 7, 5], [6, 1, 3], [6]], ids=["hidden-7-5", "hidden-1-3", "no-hidden"])
def test_parameters_after_fit_agree(activation, loss_out, dtype, sizes):
    loss, n_out = loss_out
    X, y = make_problem(loss, 6, n_out, m=53, seed=23)  # 53 = 3 batches of 16 + a partial one of 5
    X_val, y_val = make_problem(loss, 6, n_out, m=11, seed=24)
    ref, fast = pair([*sizes, n_out], activation, loss, dtype)
    fit = dict(epochs=4, lr=0.05, batch_size=16, validation_data=(X_val, y_val))
    ref_history, history = ref.fit(X, y, **fit), fast.fit(X, y, **fit)
    for W, W_ref in zip(fast.weights + fast.biases, ref.weights + ref.biases):
        assert W.dtype == np.dtype(dtype)
        assert_parity(W, W_ref, dtype, "parameters after fit")
    for key in ("loss", "cost", "val_loss", "val_cost"):
        assert_parity(getattr(history, key), getattr(ref_history, key), dtype, f"history.{key}")
    assert history.accuracy == ref_history.accuracy
    assert history.val_accuracy == ref_history.val_accuracy


@pytest.mark.parametrize("dtype", DTYPES)
def test_unshuffled_full_batch_and_oversized_batch_agree(dtype):
    X, y = make_problem("softmax", 5, 4, m=30, seed=8)
    ref, fast = pair([5, 6, 4], "tanh", "softmax", dtype)
    ref.fit(X, y, epochs=3, lr=0.2, shuffle=False)
    fast.fit(X, y, epochs=3, lr=0.2, shuffle=False, batch_size=1000)  # larger than m: one full batch
    for W, W_ref in zip(fast.weights + fast.biases, ref.weights + ref.biases):
        assert_parity(W, W_ref, dtype, "parameters after full-batch fit")


def test_large_inputs_agree_across_blocks():
    # More records than one 2048-row block of the whole-data passes.
    X, y = make_problem("softmax", 8, 3, m=4500, seed=1)
    ref, fast = pair([8, 9, 3], "relu", "softmax", "float64")
    assert_parity(fast.cost(X, y), ref.cost(X, y), "float64", "cost")
    assert_parity(fast.predict_proba(X), ref.predict_proba(X), "float64", "predict_proba")
    for g, g_ref in zip(sum(fast.gradients(X, y), []), sum(ref.gradients(X, y), [])):
        assert_parity(g, g_ref, "float64", "gradients")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [0.7, 1.2], ids=["decay-0.7", "decay-past-1"])
def test_parameters_agree_under_heavy_decay(dtype, decay):
    # lr*lam/m = decay: the cpu backend's carried weight scale falls below 1/2 (0.7) or would turn
    # negative (1.2), so its other path, one GEMM with beta = the folded scale, runs too.
    X, y = make_problem("softmax", 5, 3, m=40, seed=3)
    lr = 0.1
    ref, fast = pair([5, 4, 3], "tanh", "softmax", dtype, lam=decay * 40 / lr)
    for net in (ref, fast):
        net.fit(X, y, epochs=2, lr=lr, batch_size=8)
    for W, W_ref in zip(fast.weights + fast.biases, ref.weights + ref.biases):
        assert_parity(W, W_ref, dtype, "parameters after fit")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in, loss, n_out, batch", [(37, "logistic", 1, 100), (131, "softmax", 3, 7),
                                                     (784, "softmax", 10, 64), (20, "squared_error", 2, 1),
                                                     (3, "logistic", 1, 40), (100, "softmax", 10, 256),
                                                     (9, "squared_error", 3, 150)])
def test_linear_model_sgd_epochs_agree(dtype, n_in, loss, n_out, batch):
    # One-layer networks trained with plain SGD take the cpu backend's one-read step (cpp/linear_step.cpp): rows
    # copied out of X a block at a time (8 records of 784 inputs, 32 of fewer), padded to whole vectors, with
    # partial groups, blocks and batches (203 records), sample weights, and the shuffled order.
    X, y = make_problem(loss, n_in, n_out, m=203, seed=n_in)
    weight = np.random.default_rng(n_in).uniform(0.0, 2.0, size=203)
    ref, fast = pair([n_in, n_out], "relu", loss, dtype)
    fit = dict(epochs=3, lr=0.01, batch_size=batch, sample_weight=weight)
    ref_history, history = ref.fit(X, y, **fit), fast.fit(X, y, **fit)
    for W, W_ref in zip(fast.weights + fast.biases, ref.weights + ref.biases):
        assert_parity(W, W_ref, dtype, "parameters after fit")
    assert_parity(history.loss, ref_history.loss, dtype, "history.loss")
    assert history.accuracy == ref_history.accuracy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out", [2, 7, 12])
def test_linear_softmax_ties_count_the_first_class(dtype, n_out):
    # Zero weights and biases: every logit of the one step ties, and both backends take the first class as the
    # prediction (NumPy's argmax), so the epoch's accuracy is the share of label 0, and the loss is log(n_out).
    X, y = make_problem("softmax", 40, n_out, m=203, seed=n_out)
    for net in pair([40, n_out], "relu", "softmax", dtype):
        net.set_parameters([np.zeros_like(W) for W in net.weights], [np.zeros_like(b) for b in net.biases])
        history = net.fit(X, y, epochs=1, lr=0.1, batch_size=203)
        assert history.accuracy == [np.mean(y == 0)]
        assert_parity(np.array(history.loss), np.array([np.log(n_out)]), dtype, "history.loss")
