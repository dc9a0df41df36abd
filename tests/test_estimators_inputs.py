"""The estimators read X once per call: the L2* estimators and the drop-ins check and convert X once per fit or
partial_fit (an ``l2fast.Dataset`` once for all its calls), with the same results, and a caller's array changed
between calls is trained on as changed."""
import warnings

import numpy as np
import pytest
import sklearn.utils.validation
from sklearn import neural_network
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

import l2fast
import l2fast.sklearn as est
from l2fast import _validate


def data(m=120, seed=0):
    X, y = make_classification(n_samples=m, n_features=6, n_informative=4, n_classes=3, random_state=seed)
    return X, y


def parameters(model):
    if hasattr(model, "network_"):
        net = model.network_
        return net.weights + net.biases
    return model.coefs_ + model.intercepts_


def assert_identical(a, b):
    pa, pb = parameters(a), parameters(b)
    assert len(pa) == len(pb)
    for p, q in zip(pa, pb):
        np.testing.assert_array_equal(p, q)


@pytest.fixture
def reads_of_X(monkeypatch):
    """Counts the passes over every value of an array of a given shape: scikit-learn's finite check and
    l2fast's checked conversion. ``reads_of_X(shape)`` gives the count so far."""
    seen = []
    sk_check, l2_features = sklearn.utils.validation._assert_all_finite, _validate.features

    def sk_counting(X, *args, **kwargs):
        seen.append(np.shape(X))
        return sk_check(X, *args, **kwargs)

    def l2_counting(X, *args, **kwargs):
        seen.append(np.shape(X))
        return l2_features(X, *args, **kwargs)

    monkeypatch.setattr(sklearn.utils.validation, "_assert_all_finite", sk_counting)
    monkeypatch.setattr(_validate, "features", l2_counting)
    return lambda shape: sum(s == shape for s in seen)


MODELS = {
    "classifier": lambda backend: est.L2MLPClassifier(hidden_layer_sizes=(5,), epochs=3, lam=0.5, backend=backend,
                                                      dtype="float64", random_state=0, tol=None),
    "logistic": lambda backend: est.L2LogisticRegression(lam=0.5, backend=backend, dtype="float64", random_state=0),
    "regressor": lambda backend: est.L2MLPRegressor(hidden_layer_sizes=(5,), epochs=3, lam=0.5, backend=backend,
                                                    dtype="float64", random_state=0, tol=None),
}


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("kind", MODELS)
def test_fit_on_a_dataset_equals_fit_on_arrays(kind, backend):
    X, y = data()
    y = y.astype(float) if kind == "regressor" else y
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        on_arrays = MODELS[kind](backend).fit(X, y, sample_weight=weights)
        on_dataset = MODELS[kind](backend).fit(l2fast.Dataset(X, y, weights))
    assert_identical(on_dataset, on_arrays)
    assert on_dataset.n_features_in_ == 6


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_partial_fit_reads_a_dataset_once_and_arrays_once_per_call(kind, reads_of_X):
    X, y = data()
    y = y.astype(float) if kind == "regressor" else y
    extra = {"classes": np.unique(y)} if kind == "classifier" else {}
    on_arrays, on_dataset = MODELS[kind]("cpu"), MODELS[kind]("cpu")
    for call in range(4):
        on_arrays.partial_fit(X, y, **(extra if call == 0 else {}))
    assert reads_of_X(X.shape) == 4  # once per call, where scikit-learn's check and l2fast's made two
    dataset = l2fast.Dataset(X, y)
    for call in range(4):
        on_dataset.partial_fit(dataset, **(extra if call == 0 else {}))
    assert reads_of_X(X.shape) == 4 + 1  # once for all four calls
    assert_identical(on_dataset, on_arrays)


def test_a_caller_array_changed_between_partial_fits_is_trained_on_as_changed():
    X, y = data()
    X_before = X.copy()
    live, reference = MODELS["classifier"]("cpu"), MODELS["classifier"]("cpu")
    classes = np.unique(y)
    live.partial_fit(X, y, classes=classes)
    reference.partial_fit(X_before, y, classes=classes)
    X *= -2.0  # in place, between the calls
    live.partial_fit(X, y)
    reference.partial_fit(X_before * -2.0, y)
    assert_identical(live, reference)
    # a Dataset is a snapshot: it keeps training on the values it was made from
    snapshot = MODELS["classifier"]("cpu")
    dataset = l2fast.Dataset(X, y)
    X[...] = 0.0
    snapshot.partial_fit(dataset, classes=classes)
    fresh = MODELS["classifier"]("cpu").partial_fit(X_before * -2.0, y, classes=classes)
    assert_identical(snapshot, fresh)


def test_bad_input_beside_or_in_a_dataset_is_refused_and_the_model_kept():
    X, y = data()
    clf = MODELS["classifier"]("cpu").partial_fit(l2fast.Dataset(X, y), classes=np.unique(y))
    before = parameters(clf)
    with pytest.raises(ValueError, match="y: an l2fast.Dataset brings its own"):
        clf.partial_fit(l2fast.Dataset(X, y), y)
    with pytest.raises(ValueError, match="has no y"):
        clf.partial_fit(l2fast.Dataset(X))
    X_nan = X.copy()
    X_nan[5, 2] = np.nan
    with pytest.raises(ValueError, match="X: contains NaN"):  # the one check left now is l2fast's
        clf.partial_fit(X_nan, y)
    with pytest.raises(ValueError, match="X: contains NaN"):
        clf.partial_fit(l2fast.Dataset(X_nan, y))
    for p, q in zip(parameters(clf), before):
        np.testing.assert_array_equal(p, q)


def test_drop_in_partial_fit_reads_X_once_per_call_and_honours_a_changed_array(reads_of_X):
    X, y = data()
    X_before = X.copy()
    params = dict(hidden_layer_sizes=(5,), solver="sgd", random_state=0, batch_size=32)
    ours, theirs = est.MLPClassifier(backend="cpu", **params), neural_network.MLPClassifier(**params)
    classes = np.unique(y)
    ours.partial_fit(X, y, classes=classes)
    assert reads_of_X(X.shape) == 1  # scikit-learn's check; l2fast takes the checked array as it is
    theirs.partial_fit(X_before, y, classes=classes)
    X *= 0.5
    ours.partial_fit(X, y)
    theirs.partial_fit(X_before * 0.5, y)
    for p, q in zip(parameters(ours), parameters(theirs)):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)


# -- sparse X in the L2* estimators ----------------------------------------------------------------------


def sparse_data(m=200):
    import scipy.sparse

    X, y = data(m)
    X[np.abs(X) < 0.7] = 0.0  # about half the entries stored
    return X, scipy.sparse.csr_matrix(X), y


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_l2_logistic_regression_on_sparse_X_reaches_scikit_learns_optimum(backend):
    from sklearn.linear_model import LogisticRegression

    _, X_sparse, y = sparse_data()
    ours = est.L2LogisticRegression(lam=2.0, tol=1e-10, epochs=1000, backend=backend, dtype="float64",
                                    random_state=0).fit(X_sparse, y)
    theirs = LogisticRegression(C=0.5, tol=1e-10, max_iter=1000).fit(X_sparse, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X_sparse), theirs.predict_proba(X_sparse), atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_l2_mlps_train_on_sparse_X_as_on_the_same_values_dense(kind, backend):
    import scipy.sparse

    X, X_sparse, y = sparse_data()
    y = y.astype(float) if kind == "regressor" else y
    dense, sparse = MODELS[kind](backend).fit(X, y), MODELS[kind](backend).fit(X_sparse.tocsc(), y)
    assert scipy.sparse.issparse(X_sparse)
    for p, q in zip(parameters(sparse), parameters(dense)):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sparse.predict(X_sparse), dense.predict(X), rtol=1e-10, atol=1e-12)
