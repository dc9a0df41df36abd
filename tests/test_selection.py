"""Choosing lambda: select_lambda on problems whose answer is known, hold-out, early stopping, progress."""
import numpy as np
import pytest

import l2fast
from l2fast.testing import make_problem

OPTIONS = dict(layer_sizes=[6, 16, 3], epochs=40, lr=0.1, batch_size=16, progress=False, dtype="float64")


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_development_set_equal_to_training_set_prefers_no_penalty(backend):
    X, y = make_problem("softmax", 6, 3, m=120, seed=0)
    sweep = l2fast.select_lambda(X, y, X, y, [10.0, 0.0, 1.0], backend=backend, **OPTIONS)
    assert sweep.best_lam == 0.0  # judged on its own training data, less penalty always fits better
    assert [r.lam for r in sweep.results] == [10.0, 0.0, 1.0]
    assert sweep.best_network is sweep.networks[1] and sweep.best_network.lam == 0.0


def test_development_labels_unrelated_to_inputs_prefer_the_largest_penalty():
    X, y = make_problem("softmax", 6, 3, m=120, seed=1)
    X_dev, _ = make_problem("softmax", 6, 3, m=300, seed=2)
    y_dev = np.random.default_rng(3).integers(0, 3, size=300)
    sweep = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 1.0, 100.0], backend="cpu", **OPTIONS)
    # Nothing learnable carries over: the flattest predictions (the strongest penalty) lose least.
    assert sweep.best_lam == 100.0
    assert sweep.results[0].gap > sweep.results[2].gap


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not whether the choice means much
def test_results_are_those_of_separate_runs():
    X, y = make_problem("softmax", 6, 3, m=90, seed=4)
    X_dev, y_dev = make_problem("softmax", 6, 3, m=40, seed=5)
    sweep = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 2.0], backend="cpu", seed=7, **OPTIONS)
    for result, net in zip(sweep.results, sweep.networks):
        alone = l2fast.Network(OPTIONS["layer_sizes"], lam=result.lam, backend="cpu", dtype="float64", seed=7)
        alone.fit(X, y, epochs=40, lr=0.1, batch_size=16)
        assert all(np.array_equal(p, q) for p, q in zip(alone.weights, net.weights))
        assert result.train_loss == alone.cost_parts(X, y).data_loss
        assert result.dev_loss == alone.cost_parts(X_dev, y_dev).data_loss
        assert result.dev_accuracy == alone.score(X_dev, y_dev)
    table = sweep.table()
    assert "lambda" in table and table.count("*") == 1


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not whether the choice means much
def test_hold_out_and_accuracy_criterion():
    X, y = make_problem("logistic", 6, 1, m=100, seed=6)
    sweep = l2fast.select_lambda(X, y, lams=[0.0, 1.0], loss="logistic", validation_fraction=0.25,
                                 criterion="accuracy", backend="cpu", layer_sizes=[6, 8, 1], epochs=5, lr=0.1,
                                 progress=False)
    best = max(sweep.results, key=lambda r: (r.dev_accuracy, -r.dev_loss))
    assert sweep.best_lam == best.lam and sweep.criterion == "accuracy"
    assert len(sweep.results[0].history.val_loss) == 5


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not whether the choice means much
def test_regression_sweep():
    X, y = make_problem("squared_error", 6, 1, m=80, seed=8)
    sweep = l2fast.select_lambda(X, y, lams=[0.0, 5.0], loss="squared_error", activation="tanh",
                                 layer_sizes=[6, 8, 1], epochs=10, lr=0.01, backend="cpu", progress=False)
    assert sweep.results[0].dev_accuracy is None and "acc" not in sweep.table()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lams=[]), ValueError, "lams"),
    (dict(lams=[1.0, -1.0]), ValueError, r"lams\[1\]"),
    (dict(criterion="f1"), ValueError, "criterion"),
    (dict(y_dev=None), ValueError, "X_dev, y_dev: give both or neither"),
    (dict(X_dev=np.zeros((3, 6))), ValueError, "X_dev, y_dev: y: expected 3 class labels"),
    (dict(validation_fraction=1.0, X_dev=None, y_dev=None), ValueError, "validation_fraction"),
    (dict(y_dev=np.full(40, 7)), ValueError, "X_dev, y_dev: y: class labels must lie"),
    (dict(X_train=np.zeros((60, 5))), ValueError, "X_train, y_train: X: expected 6 features"),
    (dict(loss="squared_error", criterion="accuracy"), ValueError, "criterion"),
])
def test_bad_arguments_are_refused_before_training(kwargs, error, match):
    X, y = make_problem("softmax", 6, 3, m=60, seed=9)
    X_dev, y_dev = make_problem("softmax", 6, 3, m=40, seed=10)
    args = dict(X_train=X, y_train=y, X_dev=X_dev, y_dev=y_dev, lams=[0.0, 1.0])
    args.update(kwargs)
    with pytest.raises(error, match=match):
        l2fast.select_lambda(**args, **{k: v for k, v in OPTIONS.items()})


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not whether the choice means much
def test_default_grid_scales_with_the_records_trained_on():
    assert l2fast.lambda_grid(1000) == [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    small, large = l2fast.lambda_grid(100), l2fast.lambda_grid(10_000)
    assert all(b == pytest.approx(100 * a) for a, b in zip(small, large))  # lambda / m is what acts
    X, y = make_problem("softmax", 6, 3, m=150, seed=12)
    sweep = l2fast.select_lambda(X, y, validation_fraction=0.2, backend="cpu", **OPTIONS)
    assert [r.lam for r in sweep.results] == l2fast.lambda_grid(120)  # the 120 records left for training
    with pytest.raises(ValueError, match="m: must be >= 1"):
        l2fast.lambda_grid(0)


def test_a_grid_within_its_noise_warns_and_a_clear_one_does_not():
    X = np.random.default_rng(13).normal(size=(400, 6))
    y = np.argmax(X[:, :3], axis=1)  # learnable: the largest of the first three features
    X, y, X_dev, y_dev = X[:200], y[:200], X[200:], y[200:]
    options = {**OPTIONS, "epochs": 1, "lr": 1e-4}  # hardly trained: lambda cannot matter yet
    with pytest.warns(l2fast.NoisyChoiceWarning, match="not meaningful"):
        flat = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 0.1, 1.0], backend="cpu", **options)
    assert not flat.meaningful
    best = min(r.dev_loss for r in flat.results)
    assert all(0 <= r.dev_loss - best <= 2 * r.dev_loss_se for r in flat.results)
    clear = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 1000.0], backend="cpu", **OPTIONS)  # no warning
    assert clear.meaningful and clear.best_lam == 0.0
    worst = clear.results[1]
    assert worst.dev_loss - clear.results[0].dev_loss > 2 * worst.dev_loss_se > 0
    # The standard error is that of a mean over 200 records: about their spread / sqrt(200).
    losses = [clear.networks[0].cost_parts(X_dev[i:i + 1], y_dev[i:i + 1]).data_loss for i in range(200)]
    assert clear.results[0].dev_loss_se == pytest.approx(np.std(losses) / np.sqrt(200), rel=0.5)


@pytest.mark.parametrize("stacked", [True, False])
def test_progress_shows_the_best_development_loss_and_its_lambda_and_ends_the_line(capsys, stacked):
    X, y = make_problem("softmax", 6, 3, m=100, seed=15)
    X_dev, y_dev = make_problem("softmax", 6, 3, m=60, seed=16)
    sweep = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 10.0], backend="cpu", stacked=stacked,
                                 **{**OPTIONS, "progress": True})
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\r")[-1]
    best = min(sweep.results, key=lambda r: r.dev_loss)
    if stacked:  # the final figures of the last epoch are those measured afterwards
        assert f"best val_loss={best.dev_loss:.4g}" in last
    assert f"at lam={best.lam:g}" in last
    assert err.endswith("\n")  # what is printed next starts on a line of its own


# -- early stopping and progress in fit ----------------------------------------------------------

def overfitting_problem():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(40, 10))
    y = rng.integers(0, 3, size=40)  # labels unrelated to X: anything learnt is memorised
    X_val = rng.normal(size=(200, 10))
    y_val = rng.integers(0, 3, size=200)
    return X, y, X_val, y_val


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_early_stopping_restores_the_best_epoch(backend):
    X, y, X_val, y_val = overfitting_problem()

    def make():
        return l2fast.Network([10, 64, 3], backend=backend, dtype="float64", seed=0)

    net = make()
    history = net.fit(X, y, epochs=300, lr=0.1, batch_size=8, validation_data=(X_val, y_val), patience=5)
    assert history.stopped_early and len(history.val_loss) < 300
    assert history.best_epoch == int(np.argmin(history.val_loss)) + 1
    assert len(history.val_loss) == history.best_epoch + 5
    twin = make()
    twin.fit(X, y, epochs=history.best_epoch, lr=0.1, batch_size=8)
    assert all(np.array_equal(p, q) for p, q in zip(net.weights + net.biases, twin.weights + twin.biases))

    last = make()
    last.fit(X, y, epochs=300, lr=0.1, batch_size=8, validation_data=(X_val, y_val), patience=5,
             restore_best=False)
    longer = make()
    longer.fit(X, y, epochs=len(history.val_loss), lr=0.1, batch_size=8)
    assert all(np.array_equal(p, q) for p, q in zip(last.weights, longer.weights))


def test_early_stopping_needs_validation_data_and_a_positive_patience():
    X, y, X_val, y_val = overfitting_problem()
    net = l2fast.Network([10, 4, 3], seed=0)
    with pytest.raises(ValueError, match="patience: early stopping watches validation_data"):
        net.fit(X, y, patience=3)
    with pytest.raises(ValueError, match="patience"):
        net.fit(X, y, validation_data=(X_val, y_val), patience=0)
    with pytest.raises(TypeError, match="progress"):
        net.fit(X, y, progress="yes")


def test_progress_bar_on_request_only(capsys):
    X, y, X_val, y_val = overfitting_problem()
    net = l2fast.Network([10, 4, 3], seed=0)
    net.fit(X, y, epochs=3)
    assert capsys.readouterr().err == ""
    net.fit(X, y, epochs=3, validation_data=(X_val, y_val), progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "epoch" in err
