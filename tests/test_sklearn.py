"""The scikit-learn estimators: scikit-learn's own checks, pipelines, searches, and the lam/alpha rule."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, validation_curve
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import l2fast
from l2fast.sklearn import L2LogisticRegression, L2MLPClassifier, L2MLPRegressor


# Every check scikit-learn has for these estimators runs; none is excluded. The checks fit tiny random
# problems on the default budgets, where scikit-learn's own MLPs warn that they did not converge too.
# The MLPs' stochastic steps on weighted records and on repeated records are different minibatches, so
# their fits differ in the last digits (scikit-learn expects the same of its own MLPs); L-BFGS, which
# minimises J itself, passes the check.
def _expected_failures(estimator):
    if isinstance(estimator, (L2MLPClassifier, L2MLPRegressor)):
        return {f"check_sample_weight_equivalence_on_{kind}_data":
                "stochastic minibatches of weighted and of repeated records differ" for kind in ("dense", "sparse")}
    return {}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([L2MLPClassifier(), L2MLPRegressor(), L2LogisticRegression()],
                         expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# The minibatch SGD settings the tests below were written for (the estimators' defaults are now
# scikit-learn's: Adam with tolerance stopping, and L-BFGS for logistic regression).
SGD = dict(optimizer="sgd", lr=0.1, batch_size=32, tol=None)


def blobs(n=240, seed=0, labels=("cat", "dog", "emu")):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3, size=(len(labels), 6))
    codes = rng.integers(0, len(labels), size=n)
    X = centres[codes] + rng.normal(size=(n, 6))
    return X, np.asarray(labels)[codes]


def test_string_labels_round_trip():
    X, y = blobs()
    for clf in (L2MLPClassifier(hidden_layer_sizes=(16,), epochs=30, random_state=0, **SGD),
                L2LogisticRegression(random_state=0)):
        clf.fit(X, y)
        assert list(clf.classes_) == ["cat", "dog", "emu"]
        assert set(clf.predict(X)) <= {"cat", "dog", "emu"}
        assert clf.score(X, y) > 0.9
        assert clf.predict_proba(X).shape == (len(X), 3)


def test_binary_logistic_regression_has_scikit_learn_coef_layout():
    X, y = blobs(labels=("no", "yes"))
    clf = L2LogisticRegression(random_state=0).fit(X, y)
    assert clf.coef_.shape == (1, 6) and clf.intercept_.shape == (1,)
    assert clf.network_.layer_sizes == (6, 1) and clf.network_.loss == "logistic"
    z = X @ clf.coef_.T + clf.intercept_
    np.testing.assert_array_equal(clf.predict(X), np.where(z[:, 0] >= 0, "yes", "no"))


def test_pipeline_grid_search_and_validation_curve_over_lam():
    X, y = blobs(n=300, seed=1)
    pipe = make_pipeline(StandardScaler(), L2MLPClassifier(hidden_layer_sizes=(32,), epochs=20, random_state=0, **SGD))
    search = GridSearchCV(pipe, {"l2mlpclassifier__lam": [0.0, 1.0, 1000.0]}, cv=3).fit(X, y)
    assert search.best_params_["l2mlpclassifier__lam"] in (0.0, 1.0)  # 1000 smothers the weights
    assert search.score(X, y) > 0.9
    train, test = validation_curve(L2MLPClassifier(hidden_layer_sizes=(32,), epochs=20, random_state=0, **SGD), X, y,
                                   param_name="lam", param_range=[0.0, 100.0, 3000.0], cv=3)
    train_mean = train.mean(axis=1)
    assert train_mean[0] >= train_mean[1] >= train_mean[2] and train_mean[0] > train_mean[2]


def test_partial_fit_and_warm_start():
    X, y = blobs(seed=2)
    clf = L2MLPClassifier(hidden_layer_sizes=(16,), random_state=0, **SGD)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    for _ in range(5):
        clf.partial_fit(X, y, classes=["cat", "dog", "emu"])
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 5 and clf.loss_curve_[-1] < clf.loss_curve_[0]
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X, np.where(y == "cat", "yak", y))

    warm = L2MLPClassifier(hidden_layer_sizes=(16,), epochs=3, random_state=0, warm_start=True, **SGD).fit(X, y)
    first = warm.network_.weights[0]
    warm.fit(X, y)
    cold = L2MLPClassifier(hidden_layer_sizes=(16,), epochs=3, random_state=0, **SGD).fit(X, y)
    assert warm.n_iter_ == 6 and not np.array_equal(warm.network_.weights[0], first)
    assert not np.array_equal(warm.network_.weights[0], cold.network_.weights[0])

    reg = L2MLPRegressor(hidden_layer_sizes=(8,), random_state=0, **{**SGD, "lr": 0.01})
    target = X[:, 0] - 2 * X[:, 1]
    for _ in range(20):
        reg.partial_fit(X, target)
    assert reg.predict(X).shape == (len(X),) and reg.score(X, target) > 0.9


def test_regressor_multi_output_and_pandas_input():
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    Y = pd.DataFrame({"u": X["a"] - X["b"], "v": 2 * X["c"]})
    reg = L2MLPRegressor(hidden_layer_sizes=(), activation="identity", lam=0.0, epochs=100,
                         random_state=0, **{**SGD, "lr": 0.05}).fit(X, Y)
    assert list(reg.feature_names_in_) == ["a", "b", "c"]
    assert reg.predict(X).shape == (200, 2) and reg.score(X, Y) > 0.999


def test_float32_input_trains_in_float32():
    X, y = blobs()
    clf = L2MLPClassifier(hidden_layer_sizes=(8,), epochs=5, random_state=0, **SGD).fit(X.astype(np.float32), y)
    assert clf.network_.dtype == np.float32 and clf.predict_proba(X).dtype == np.float32
    assert L2MLPClassifier(epochs=1, random_state=0, tol=None).fit(X, y).network_.dtype == np.float64


@pytest.mark.parametrize("batch_size, n_classes", [(16, 3), (50, 2)])
def test_lam_equals_scikit_learn_alpha_times_m_over_batch(batch_size, n_classes):
    # From the same weights, one epoch of plain SGD in scikit-learn's MLPClassifier with
    # alpha = lam * b / m takes exactly the steps of l2fast with lam. (m is a multiple of b here:
    # scikit-learn divides alpha by the size of a short last batch too, l2fast keeps lam / m.)
    X, y = blobs(n=96 if batch_size == 16 else 100, seed=4, labels=("a", "b", "c")[:n_classes])
    m, lam, lr = len(X), 3.0, 0.05
    theirs = MLPClassifier(hidden_layer_sizes=(5,), solver="sgd", momentum=0.0, nesterovs_momentum=False,
                           learning_rate_init=lr, alpha=lam * batch_size / m, batch_size=batch_size,
                           shuffle=False, random_state=0)
    theirs.partial_fit(X, y, classes=np.unique(y))  # builds the model; its weights are replaced below
    ours = L2MLPClassifier(hidden_layer_sizes=(5,), lam=lam, lr=lr, batch_size=batch_size, epochs=1,
                           shuffle=False, random_state=0, dtype="float64", backend="numpy", optimizer="sgd",
                           tol=None).fit(X, y)
    start_W = [W.T.copy() for W in theirs.coefs_]  # l2fast's layout, (n_out, n_in)
    start_b = [b.copy() for b in theirs.intercepts_]
    ours.network_.set_parameters(start_W, start_b)
    theirs.coefs_, theirs.intercepts_ = [W.T.copy() for W in start_W], [b.copy() for b in start_b]
    theirs.partial_fit(X, y)
    ours.partial_fit(X, y)
    for W_ours, W_theirs in zip(ours.network_.weights, theirs.coefs_):
        np.testing.assert_allclose(W_ours, W_theirs.T, rtol=1e-10, atol=1e-12)
    for b_ours, b_theirs in zip(ours.network_.biases, theirs.intercepts_):
        np.testing.assert_allclose(b_ours, b_theirs, rtol=1e-10, atol=1e-12)


def test_estimators_take_an_optimizer_and_keep_its_state_across_partial_fit():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    clf = L2MLPClassifier(hidden_layer_sizes=(32,), epochs=5, lr=0.003, batch_size=32, random_state=0,
                          optimizer="adam", tol=None).fit(X, y)
    assert clf.network_.optimizer_state.optimizer == l2fast.Adam()
    assert clf.score(X, y) > 0.9
    steps = clf.network_.optimizer_state.step
    clf.partial_fit(X[:64], y[:64])
    assert clf.network_.optimizer_state.step == steps + 2
    assert clone(clf).get_params()["optimizer"] == "adam"


def test_without_scikit_learn_the_import_names_the_extra():
    # A machine without scikit-learn, even where it is installed: None in sys.modules blocks the import.
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import l2fast.sklearn\nexcept ModuleNotFoundError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'l2fast.sklearn needs scikit-learn' in result.stdout and 'pip install "l2fast[sklearn]"' in result.stdout
