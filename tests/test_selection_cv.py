"""select_lambda with cross-validation (cv=k), chunks, Datasets, and training to convergence by default."""
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

import l2fast
from l2fast.selection import EPOCH_CAP, _cv_rows
from l2fast.testing import make_problem

OPTIONS = dict(layer_sizes=[6, 10, 3], epochs=12, lr=0.1, batch_size=16, progress=False, dtype="float64")
LAMS = [0.0, 1.0, 10.0]

quiet = pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not the choice


def same_parameters(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.weights + a.biases, b.weights + b.biases))


@quiet
def test_cv_scores_each_lambda_on_every_fold_and_refits_the_chosen_one_on_all_data():
    X, y = make_problem("softmax", 6, 3, m=100, seed=30)
    sweep = l2fast.select_lambda(X, y, lams=LAMS, cv=3, seed=4, **OPTIONS)
    folds = _cv_rows(y, 3, 4, True)
    dev_rows = np.sort(np.concatenate([dev for _, dev in folds]))
    assert np.array_equal(dev_rows, np.arange(100))  # the development parts partition the records
    for train, dev in folds:
        assert np.intersect1d(train, dev).size == 0 and train.size + dev.size == 100
        counts = np.bincount(y[dev], minlength=3) * 3  # stratified: each class in proportion, to one record
        assert np.all(np.abs(counts - np.bincount(y, minlength=3)) <= 3)
    assert sweep.networks == [] and len(sweep.fold_networks) == len(LAMS)
    for result, nets in zip(sweep.results, sweep.fold_networks):
        assert len(result.fold_dev_losses) == 3 and len(result.fold_histories) == 3
        for net, (train, dev), fold_loss in zip(nets, folds, result.fold_dev_losses):
            alone = l2fast.Network(OPTIONS["layer_sizes"], lam=result.lam, dtype="float64", seed=4)
            alone.fit(X[train], y[train], epochs=12, lr=0.1, batch_size=16)
            assert same_parameters(alone, net)
            assert fold_loss == alone.cost_parts(X[dev], y[dev]).data_loss
        assert result.dev_loss == pytest.approx(np.mean(result.fold_dev_losses), rel=1e-15)
        assert result.dev_loss_se == pytest.approx(np.std(result.fold_dev_losses, ddof=1) / np.sqrt(3), rel=1e-12)
        assert result.dev_loss_sd == pytest.approx(np.std(result.fold_dev_losses, ddof=1), rel=1e-12)
    assert sweep.best_lam == min(sweep.results, key=lambda r: r.dev_loss).lam
    refit = l2fast.Network(OPTIONS["layer_sizes"], lam=sweep.best_lam, dtype="float64", seed=4)
    refit.fit(X, y, epochs=12, lr=0.1, batch_size=16)  # the same lambda and options, on all the records
    assert same_parameters(refit, sweep.best_network)
    table = sweep.table()
    assert "(sd)" in table and "mean over 3 folds" in table and table.count("*") == 1
    kept = l2fast.select_lambda(X, y, lams=LAMS, cv=3, seed=4, refit=False, **OPTIONS)
    assert kept.best_network is None and kept.best_lam == sweep.best_lam


def test_cv_chooses_the_lambda_logistic_regression_cv_chooses_for_c_one_over_lambda():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    lams = [1.0, 10.0, 100.0, 1000.0]
    folds = list(StratifiedKFold(4).split(X, y))  # scikit-learn's folds, given as (train, dev) pairs
    sweep = l2fast.select_lambda(X, y, lams=lams, cv=folds, layer_sizes=[30, 1], loss="logistic", dtype="float64",
                                 lr=0.1, batch_size=32, tol=1e-6, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9's notes on its coming defaults
        reference = LogisticRegressionCV(Cs=[1 / lam for lam in lams], cv=folds, scoring="neg_log_loss",
                                         tol=1e-10, max_iter=10_000).fit(X, y)
    assert sweep.best_lam == pytest.approx(1 / reference.C_[0])
    # Minibatch SGD ends within its noise of each fold's optimum: mean log-losses agree to a few per cent.
    fold_means = -reference.scores_[1].mean(axis=0)
    assert [r.dev_loss for r in sweep.results] == pytest.approx(fold_means, rel=0.05)
    assert all(r.history.converged for r in sweep.results)
    # The refit minimises the same J on all the records as scikit-learn's refit (its optimum J* below).
    optimum = l2fast.Network([30, 1], loss="logistic", lam=sweep.best_lam, dtype="float64")
    optimum.set_parameters([reference.coef_], [reference.intercept_])
    assert optimum.cost(X, y) <= sweep.best_network.cost(X, y) <= 1.02 * optimum.cost(X, y)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(cv=3, X_dev=np.zeros((5, 6)), y_dev=np.zeros(5, int)), ValueError, "cv makes its development sets"),
    (dict(cv=1), ValueError, "cv: must be >= 2"),
    (dict(cv=200), ValueError, "cv: 200 folds need at least 200 records"),
    (dict(cv="3"), TypeError, "cv: expected a number of folds"),
    (dict(cv=[(np.arange(50), np.arange(50, 60))]), ValueError, "cv: need at least two folds"),
    (dict(cv=[(np.arange(50), np.array([60, 70, 999]))] * 2), ValueError, r"cv\[0\]: the development rows"),
    (dict(cv=3, patience=3), ValueError, "patience: a refit on all the training data"),
    (dict(chunk_size=0), ValueError, "chunk_size: must be >= 1"),
    (dict(refit="yes"), TypeError, "refit"),
])
def test_bad_cv_arguments_are_refused_before_training(kwargs, error, match):
    X, y = make_problem("softmax", 6, 3, m=60, seed=31)
    with pytest.raises(error, match=match):
        l2fast.select_lambda(X, y, lams=LAMS, **{**OPTIONS, **kwargs})


@quiet
def test_chunks_and_datasets_give_the_sweep_of_one_group_of_arrays():
    X, y = make_problem("softmax", 6, 3, m=90, seed=32)
    X_dev, y_dev = make_problem("softmax", 6, 3, m=40, seed=33)
    whole = l2fast.select_lambda(X, y, X_dev, y_dev, LAMS, **OPTIONS)
    chunked = l2fast.select_lambda(X, y, X_dev, y_dev, LAMS, chunk_size=2, **OPTIONS)  # two tasks here
    data = l2fast.select_lambda(l2fast.Dataset(X, y), None, l2fast.Dataset(X_dev, y_dev), lams=LAMS, **OPTIONS)
    for other in (chunked, data):
        assert other.table() == whole.table()
        assert all(same_parameters(a, b) for a, b in zip(whole.networks, other.networks))
    held_out = l2fast.select_lambda(X, y, lams=LAMS, **OPTIONS)  # a Dataset is held out from like arrays
    held_out_data = l2fast.select_lambda(l2fast.Dataset(X, y), lams=LAMS, **OPTIONS)
    assert held_out.table() == held_out_data.table()
    weighted = l2fast.select_lambda(l2fast.Dataset(X, y, np.full(90, 2.0)), None, l2fast.Dataset(X_dev, y_dev),
                                    lams=LAMS, **OPTIONS)
    assert weighted.table() != whole.table()  # its weights came with it
    with pytest.raises(ValueError, match="X_train: this Dataset has no y"):
        l2fast.select_lambda(l2fast.Dataset(X), lams=LAMS, **OPTIONS)
    with pytest.raises(ValueError, match="X_dev: a Dataset brings its own y"):
        l2fast.select_lambda(X, y, l2fast.Dataset(X_dev, y_dev), y_dev, lams=LAMS, **OPTIONS)


def overfitting_problem():
    rng = np.random.default_rng(34)
    X = rng.normal(size=(60, 6))
    y = (X[:, 0] > 0).astype(int) + (rng.random(60) < 0.3)  # a learnable signal and label noise to memorise
    X_dev = rng.normal(size=(300, 6))
    y_dev = (X_dev[:, 0] > 0).astype(int) + (rng.random(300) < 0.3)
    return X, y, X_dev, y_dev


def test_by_default_each_run_trains_until_its_training_cost_has_converged():
    X, y, X_dev, y_dev = overfitting_problem()
    options = {**OPTIONS, "layer_sizes": [6, 32, 3], "lr": 0.2}
    del options["epochs"]
    sweep = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 30.0], **options)
    for result, net in zip(sweep.results, sweep.networks):
        history = result.history
        assert history.converged and history.n_iter < EPOCH_CAP
        cost = history.cost  # none of the last 10 epochs fell below the best before it by more than tol
        assert all(cost[e] >= min(cost[:e]) - 1e-4 for e in range(len(cost) - 10, len(cost)))
        assert cost[-11] < min(cost[:-11]) - 1e-4  # ... and the epoch before them did
        assert len(history.val_loss) == history.n_iter  # recorded every epoch, not stopped on
    zero = sweep.results[0].history
    # lambda = 0 memorises: it trains on well past its lowest development loss, which early stopping would keep.
    assert int(np.argmin(zero.val_loss)) + 10 < zero.n_iter and zero.val_loss[-1] > min(zero.val_loss)
    fixed = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 30.0], **{**options, "epochs": 7})
    assert [r.history.n_iter for r in fixed.results] == [7, 7]  # epochs without tol: exactly that many
    with pytest.warns(l2fast.ConvergenceWarning, match="epoch budget"):
        l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 30.0], **{**options, "epochs": 7, "tol": 1e-9})
