"""The drop-ins against scikit-learn's own classes: signatures, step-by-step trajectories, optima, refusals,
fall-backs, patch() and python -m l2fast.accel."""
import inspect
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from sklearn import linear_model, neural_network
from sklearn.datasets import make_classification, make_multilabel_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

import l2fast.sklearn as dropin
from l2fast.sklearn import _penalty

PAIRS = [(dropin.MLPClassifier, neural_network.MLPClassifier), (dropin.MLPRegressor, neural_network.MLPRegressor),
         (dropin.LogisticRegression, linear_model.LogisticRegression)]


def data(n_classes=3, m=103, seed=0):
    return make_classification(n_samples=m, n_features=6, n_informative=4, n_classes=n_classes, random_state=seed)


def assert_same_parameters(ours, theirs, rtol, atol):
    for name in ("coefs_", "intercepts_"):
        for a, b in zip(getattr(ours, name), getattr(theirs, name)):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


def fit_mlp_classifiers(X, y, backend=None, **params):
    """(the drop-in, scikit-learn's) MLPClassifier, each fitted on X, y with params (the drop-in on `backend` when
    given), their ConvergenceWarnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = dropin.MLPClassifier(**params, **({} if backend is None else {"backend": backend})).fit(X, y)
        theirs = neural_network.MLPClassifier(**params).fit(X, y)
    return ours, theirs


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=lambda c: c.__name__)
def test_signature_is_scikit_learns_plus_backend(ours, theirs):
    mine = list(inspect.signature(ours).parameters.values())
    assert mine[:-1] == list(inspect.signature(theirs).parameters.values())
    assert mine[-1].name == "backend" and mine[-1].kind is inspect.Parameter.KEYWORD_ONLY and mine[-1].default is None


def test_penalty_conversions():
    assert _penalty.lam_from_alpha(0.5, m=100, batch=20) == pytest.approx(2.5)  # alpha m / b
    assert _penalty.lam_over_m_from_alpha(0.5, batch=3) == pytest.approx(0.5 / 3)  # the short last batch
    assert _penalty.lam_from_C(4.0) == 0.25 and _penalty.lam_from_C(np.inf) == 0.0
    w, scale = _penalty.unit_mean_weights(np.array([1.0, 3.0]))
    assert np.allclose(w, [0.5, 1.5]) and scale == 0.5


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_adam_eps_on_v_steps_are_scikit_learns_adam_optimizer(backend):
    # eps = 1e-3 is near sqrt(v): where l2fast's default Adam (eps on sqrt(v_hat)) takes other steps
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    from l2fast import optim
    from l2fast.backends import numpy_ref
    from l2fast.backends.cpu import _core, core_options

    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 5)) * 1e-2
    theirs = [start.copy()]
    adam = AdamOptimizer(theirs, learning_rate_init=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-3)
    results = {}
    for eps_on_v in (True, False):
        spec = optim.Adam(0.8, 0.95, 1e-3, eps_on_v=eps_on_v)
        P, slots = start.copy(), [np.zeros_like(start), np.zeros_like(start)]
        for t in range(1, 8):
            G = np.sin(t * start) * 1e-2
            if eps_on_v:
                adam.update_params(theirs, [G])
            if backend == "numpy":
                numpy_ref.optimizer_step(P, G, slots, 0.01, 0.0, spec, t)
            else:
                _core.optimizer_step(P, G, slots, 0.01, 0.0, t, **core_options(spec))
        results[eps_on_v] = P
    np.testing.assert_allclose(results[True], theirs[0], rtol=1e-14, atol=1e-16)
    assert np.abs(results[False] - theirs[0]).max() > 1e-4  # the default places eps elsewhere


STOCHASTIC = {
    "sgd": dict(solver="sgd", momentum=0.0),
    "nesterov": dict(solver="sgd"),
    "momentum": dict(solver="sgd", nesterovs_momentum=False),
    "invscaling": dict(solver="sgd", momentum=0.0, learning_rate="invscaling", power_t=0.3),
    "invscaling-momentum": dict(solver="sgd", nesterovs_momentum=False, learning_rate="invscaling", power_t=0.3),
    "invscaling-nesterov": dict(solver="sgd", learning_rate="invscaling", power_t=0.7),
    # tol so large that every epoch is "no improvement": the rate is divided by 5 at epochs 3 and 5
    "adaptive-nesterov": dict(solver="sgd", learning_rate="adaptive", tol=10.0, n_iter_no_change=1),
    "adam": dict(solver="adam"),
    "adam-eps": dict(solver="adam", epsilon=1e-3, beta_1=0.8, beta_2=0.95),  # eps near sqrt(v): its placement shows
}


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("settings", list(STOCHASTIC), ids=list(STOCHASTIC))
@pytest.mark.parametrize("problem", ["binary", "multiclass", "regression"])
def test_stochastic_trajectory_is_scikit_learns(problem, settings, backend):
    # Same random_state: scikit-learn's initial weights and shuffling order; 103 records in batches of 20 end
    # each epoch on a short batch of 3, whose decay alpha/3 must be exact too (alpha is large to show it).
    X, y = data(2 if problem == "binary" else 3)
    ours_cls, theirs_cls = (dropin.MLPRegressor, neural_network.MLPRegressor) if problem == "regression" else \
        (dropin.MLPClassifier, neural_network.MLPClassifier)
    if problem == "regression":
        y = np.c_[y, X[:, 0]].astype(float)
    params = dict(hidden_layer_sizes=(7, 4), batch_size=20, max_iter=6, random_state=0, alpha=0.3,
                  learning_rate_init=0.02, **STOCHASTIC[settings])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = theirs_cls(**params).fit(X, y)
        ours = ours_cls(backend=backend, **params).fit(X, y)
    assert_same_parameters(ours, theirs, rtol=1e-10, atol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_ == 6 and ours.t_ == theirs.t_
    if settings == "adaptive-nesterov":
        assert ours._optimizer.learning_rate == theirs._optimizer.learning_rate == pytest.approx(0.02 / 5**2, rel=1e-15)
    # the penalty part too: train_epoch's with_norms sums ||W||^2 at the weights each batch's loss was computed with
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("form", ["csr", "csc"])
def test_sparse_X_is_trained_by_l2fast_as_scikit_learn_trains_it(form, solver, backend, capsys):
    import scipy.sparse

    X, y = data(m=90)
    X[np.abs(X) < 0.8] = 0.0  # about 40% of the entries stored
    X_sparse = scipy.sparse.csr_matrix(X).asformat(form)
    params = dict(hidden_layer_sizes=(6,), solver=solver, batch_size=16, max_iter=5, random_state=0, alpha=0.05,
                  learning_rate_init=0.01)
    ours, theirs = fit_mlp_classifiers(X_sparse, y, backend=backend, **params)
    assert "scikit-learn's own code" not in capsys.readouterr().err
    assert ours._l2fast_trainer.net.backend == backend  # trained by l2fast, not handed back
    assert_same_parameters(ours, theirs, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ours.predict_proba(X_sparse), theirs.predict_proba(X_sparse), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_sparse_X_in_logistic_regression(backend, capsys):
    import scipy.sparse

    X, y = data(3, m=200)
    X[np.abs(X) < 0.5] = 0.0
    X_sparse = scipy.sparse.csc_matrix(X)
    params = dict(C=0.5, tol=1e-10, max_iter=1000)
    ours = dropin.LogisticRegression(backend=backend, **params).fit(X_sparse, y)
    theirs = linear_model.LogisticRegression(**params).fit(X_sparse, y)
    assert "scikit-learn's own code" not in capsys.readouterr().err
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_training_loss_stopping_rule_stops_where_scikit_learns_does(backend, solver):
    X, y = data(m=150)
    params = dict(hidden_layer_sizes=(6,), solver=solver, batch_size=32, max_iter=300, tol=1e-3, n_iter_no_change=3,
                  random_state=2, learning_rate_init=0.05)
    theirs = neural_network.MLPClassifier(**params).fit(X, y)
    ours = dropin.MLPClassifier(backend=backend, **params).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ < 300
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert_same_parameters(ours, theirs, rtol=1e-9, atol=1e-11)


def test_data_loss_curve_is_exact_without_penalty():
    X, y = data()
    params = dict(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=3, random_state=1, alpha=0.0)
    ours, theirs = fit_mlp_classifiers(X, y, **params)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize("batch_size", [450, 200, 64], ids=["one-batch", "auto", "small"])
@pytest.mark.parametrize("solver", [dict(solver="sgd", momentum=0.0), dict(solver="sgd"), dict(solver="adam")],
                         ids=["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_loss_curve_is_scikit_learns_with_the_penalty_of_every_batch(backend, solver, batch_size):
    """scikit-learn's loss_ is the mean over an epoch's batches of (batch loss + alpha/(2b) ||W||^2) times b, each
    at the weights that batch saw: 450 records in batches of 200 end on a short batch of 50, in batches of 64 on
    one of 2."""
    X, y = make_classification(n_samples=450, n_features=12, n_informative=8, n_classes=4, random_state=3)
    params = dict(hidden_layer_sizes=(16,), batch_size=batch_size, max_iter=8, random_state=1, alpha=0.5,
                  learning_rate_init=0.05, **solver)
    ours, theirs = fit_mlp_classifiers(X, y, backend=backend, **params)
    assert_same_parameters(ours, theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert ours.loss_ == ours.loss_curve_[-1]


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_bench_r_networks_take_scikit_learns_trajectory(solver):
    """The networks of bench R (64 inputs, 64 hidden units, 10 classes, batches of 200): on cpu both layers' forward
    products read a transposed copy of W (cpp/network.cpp's ForwardCopies); 450 records end each epoch on 50."""
    X, y = make_classification(n_samples=450, n_features=64, n_informative=20, n_classes=10, random_state=5)
    params = dict(hidden_layer_sizes=(64,), solver=solver, max_iter=6, tol=0.0, n_iter_no_change=10**6,
                  random_state=2, alpha=0.05, learning_rate_init=0.01)
    ours, theirs = fit_mlp_classifiers(X, y, backend="cpu", **params)
    assert_same_parameters(ours, theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)


EPOCH_CASES = {  # sizes, dtype, sparse X: the cpu kernel's paths (the linear step, the transposed float32 weights)
    "dense": ((12, 9, 7, 3), np.float64, False),
    "sparse": ((12, 9, 3), np.float64, True),
    "linear": ((12, 3), np.float64, False),
    "float32": ((12, 40, 3), np.float32, False),
    "small": ((12, 40, 20, 3), np.float32, False),  # with ReLU: the small-layer kernels' step (SmallStep)
}


def epoch_problem(case, seed=0):
    """(sizes, dtype, X, labels, order, weights, biases) for one train_epoch of 203 records."""
    import scipy.sparse

    sizes, dtype, sparse = EPOCH_CASES[case]
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(203, sizes[0])).astype(dtype)
    if sparse:
        X = scipy.sparse.csr_matrix(np.where(np.abs(X) > 0.7, X, 0))
    labels = rng.integers(0, sizes[-1], 203)
    weights = [(rng.normal(size=(n_out, n_in)) * 0.4).astype(dtype) for n_in, n_out in zip(sizes, sizes[1:])]
    biases = [(rng.normal(size=n_out) * 0.1).astype(dtype) for n_out in sizes[1:]]
    return sizes, dtype, X, labels, rng.permutation(203).astype(np.int64), weights, biases


@pytest.mark.parametrize("ordered", [True, False], ids=["shuffled", "in-turn"])
@pytest.mark.parametrize("optimizer", ["fused", "nesterov", "adam"])
@pytest.mark.parametrize("case", list(EPOCH_CASES))
def test_short_lam_over_m_takes_the_short_batch_in_the_same_call(case, optimizer, ordered):
    """cpu's short_lam_over_m (the drop-ins' one call an epoch): the full batches with lam_over_m and the short last
    one with its own decay, as the two calls the other backends take. Bit for bit with the optimizers and the linear
    step (which runs the short step apart); to rounding with the fused step, whose decay rides on a scale that the
    one call carries over to the short step (two calls fold it into W in between)."""
    from l2fast import optim
    from l2fast.backends import get_backend

    spec = {"fused": None, "nesterov": optim.Momentum(0.9, nesterov=True), "adam": optim.Adam(eps_on_v=True)}[optimizer]
    sizes, dtype, X, labels, order, W0, b0 = epoch_problem(case)
    order = order if ordered else None
    be = get_backend("cpu")
    X, y = be.features(X, sizes[0], dtype), be.targets(labels, 203, "softmax", sizes[-1], dtype)
    runs = []
    for one_call in (True, False):
        weights, biases = [W.copy() for W in W0], [b.copy() for b in b0]
        state = optim.OptimizerState.fresh(spec or optim.SGD(), optim.Constant(), weights, biases, np.zeros_like)
        common = dict(activation="relu" if case == "small" else "tanh", loss="softmax", optimizer=spec,
                      slots=state.slots, with_norms=True)
        if one_call:
            loss, _, norms = be.train_epoch(weights, biases, X, y, order, 32, 0.05, 0.01, short_lam_over_m=0.03,
                                            step=3, **common)
        else:
            rows = np.arange(203) if order is None else order
            loss, _, norms = be.train_epoch(weights, biases, X, y, rows[:192], 32, 0.05, 0.01, step=3, **common)
            last = be.train_epoch(weights, biases, X, y, rows[192:], 32, 0.05, 0.03, step=9, **common)
            loss, norms = loss + last[0], norms + last[2]
        runs.append((loss, norms, [*weights, *biases, *(a for slot in state.slots for a in slot)]))
    (loss, norms, ours), (loss_2, norms_2, theirs) = runs
    exact = optimizer != "fused" or case == "linear"
    rtol = 0 if exact else 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0 if exact else rtol)
    assert loss == pytest.approx(loss_2, rel=rtol) and norms == pytest.approx(norms_2, rel=1e-15 if exact else rtol)
    with pytest.raises(ValueError, match="short_lam_over_m"):
        be.train_epoch(weights, biases, X, y, order, 32, 0.05, 0.01, "tanh", "softmax", short_lam_over_m=np.nan)


@pytest.mark.parametrize("optimizer", ["fused", "sgd", "nesterov", "adam"])
@pytest.mark.parametrize("case", list(EPOCH_CASES))
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_train_epoch_weight_norms_are_each_steps_own(backend, case, optimizer):
    """with_norms: the sum over the epoch's steps of sum_l ||W_l||^2 at the weights each step's loss was computed
    with, against the same steps taken one call each (32 records, the last step 11); asking for it changes no
    parameter, not by a bit."""
    from l2fast import optim
    from l2fast.backends import get_backend

    spec = {"fused": None, "sgd": optim.SGD(), "nesterov": optim.Momentum(0.9, nesterov=True),
            "adam": optim.Adam(eps_on_v=True)}[optimizer]
    sizes, dtype, X, labels, order, W0, b0 = epoch_problem(case)
    be = get_backend(backend)
    X, y = be.features(X, sizes[0], dtype), be.targets(labels, 203, "softmax", sizes[-1], dtype)

    def start():
        weights, biases = [W.copy() for W in W0], [b.copy() for b in b0]
        return weights, biases, optim.OptimizerState.fresh(spec or optim.SGD(), optim.Constant(), weights, biases,
                                                             np.zeros_like)

    runs = {}
    for with_norms in (False, True):
        weights, biases, state = start()
        runs[with_norms] = be.train_epoch(weights, biases, X, y, order, 32, 0.05, 0.01, "tanh", "softmax", spec,
                                          state.slots, 3, with_norms=with_norms), [*weights, *biases, *(a for slot in state.slots for a in slot)]
    (loss, correct), plain = runs[False]
    (loss_n, correct_n, norms), asked = runs[True]
    assert (loss_n, correct_n) == (loss, correct)
    for a, b in zip(asked, plain):
        np.testing.assert_array_equal(a, b)
    weights, biases, state = start()
    expected = 0.0
    for step, first in enumerate(range(0, 203, 32)):
        expected += sum(float(np.sum(np.square(W, dtype=np.float64))) for W in weights)
        be.train_epoch(weights, biases, X, y, order[first:first + 32], 32, 0.05, 0.01, "tanh", "softmax", spec,
                       state.slots, 3 + step)
    assert norms == pytest.approx(expected, rel=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("solver", [dict(solver="sgd", momentum=0.0), dict(solver="sgd"), dict(solver="adam")],
                         ids=["sgd", "nesterov", "adam"])
def test_cuda_loss_curve_is_scikit_learns(emulated, solver):
    """The cuda backend's epoch (its steps replayed from captured graphs) sums ||W||^2 before each step too."""
    X, y = make_classification(n_samples=250, n_features=8, n_informative=6, n_classes=3, random_state=3)
    params = dict(hidden_layer_sizes=(10,), batch_size=40, max_iter=4, random_state=1, alpha=0.5,
                  learning_rate_init=0.05, **solver)
    ours, theirs = fit_mlp_classifiers(X, y, backend="cuda", **params)
    from cuda_emulation import FakeStream

    assert ours._l2fast_trainer.net.backend == "cuda" and FakeStream.captures > 0
    assert_same_parameters(ours, theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)


def test_sparse_X_on_cuda_trains_on_the_gpu_as_scikit_learn_does(emulated, capsys):
    """A scipy.sparse X on backend="cuda" (the host stand-in) is l2fast's to train, as a cupyx CSR: the MLP's
    trajectory and the logistic regression's optimum are scikit-learn's, and nothing is handed back to it."""
    import scipy.sparse

    from cuda_emulation import DeviceSparse

    X, y = data(m=90)
    X[X < 0.3] = 0.0
    X_sparse = scipy.sparse.csr_matrix(X)
    params = dict(hidden_layer_sizes=(4,), solver="sgd", batch_size=32, max_iter=3, random_state=0)
    ours, theirs = fit_mlp_classifiers(X_sparse, y, backend="cuda", **params)
    assert ours._l2fast_trainer.net.backend == "cuda" and DeviceSparse.products > 0
    assert_same_parameters(ours, theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    linear = dict(C=0.5, tol=1e-10, max_iter=1000)
    ours = dropin.LogisticRegression(backend="cuda", **linear).fit(X_sparse, y)
    theirs = linear_model.LogisticRegression(**linear).fit(X_sparse, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-5, atol=1e-6)
    assert "scikit-learn's own code" not in capsys.readouterr().err


@pytest.mark.parametrize("solver", [dict(solver="sgd", momentum=0.0, learning_rate="adaptive"),
                                    dict(solver="sgd", learning_rate="adaptive"), dict(solver="adam")],
                         ids=["sgd-adaptive", "nesterov-adaptive", "adam"])
@pytest.mark.parametrize("estimator", ["classifier", "regressor"])
def test_early_stopping_scores_and_best_weights_are_scikit_learns(estimator, solver):
    X, y = data(m=200)
    pair = (dropin.MLPClassifier, neural_network.MLPClassifier) if estimator == "classifier" else \
        (dropin.MLPRegressor, neural_network.MLPRegressor)
    params = dict(hidden_layer_sizes=(8,), early_stopping=True, validation_fraction=0.2, n_iter_no_change=3,
                  max_iter=60, random_state=3, learning_rate_init=0.01, **solver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = (cls(**params).fit(X, y.astype(float) if estimator == "regressor" else y) for cls in pair)
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-8)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=1e-8)
    assert ours.best_loss_ is None and ours.n_iter_ == theirs.n_iter_
    assert_same_parameters(ours, theirs, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("estimator", ["classifier", "regressor"])
def test_lbfgs_reaches_scikit_learns_point(estimator):
    X, y = data()
    pair = (dropin.MLPClassifier, neural_network.MLPClassifier) if estimator == "classifier" else \
        (dropin.MLPRegressor, neural_network.MLPRegressor)
    y = y if estimator == "classifier" else y.astype(float)
    params = dict(hidden_layer_sizes=(5,), solver="lbfgs", alpha=0.1, max_iter=40, random_state=0, activation="tanh")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = (cls(**params).fit(X, y) for cls in pair)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-8)
    assert_same_parameters(ours, theirs, rtol=1e-6, atol=1e-8)


def test_coefs_set_by_hand_are_trained_from():
    X, y = data(2)
    nets = [cls(hidden_layer_sizes=(3,), solver="sgd", random_state=0, max_iter=1, batch_size=32)
            for cls in (dropin.MLPClassifier, neural_network.MLPClassifier)]
    for net in nets:
        net.partial_fit(X, y, classes=[0, 1])
        net.coefs_[0][...] = 0.1  # writable, in scikit-learn's (n_in, n_out) layout
        net.intercepts_[1] = np.array([0.5])
        net.partial_fit(X, y)
    assert_same_parameters(*nets, rtol=1e-10, atol=1e-12)


def test_float32_stays_float32():
    X, y = data()
    clf = dropin.MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X.astype(np.float32), y)
    assert all(W.dtype == np.float32 for W in clf.coefs_ + clf.intercepts_)
    assert clf._l2fast_trainer.net.dtype == np.float32 and clf._l2fast_trainer.net.backend == "cpu"


@pytest.mark.parametrize("labels", [np.array([3, 1, 1, 3, 3, 1] * 5), np.arange(30) % 4, (np.arange(30) % 3).astype(np.uint8),
                                    np.arange(30) % 5 - 2, np.arange(30) % 3 == 0, np.array(["b", "a", "c"] * 10),
                                    np.ones(30, dtype=np.int64)],
                         ids=["binary", "multiclass", "uint8", "negative", "bool", "strings", "one-class"])
def test_validate_input_is_scikit_learns(labels):
    """The drop-in finds the label binarizer's classes and binarized y itself for integer labels: the same arrays
    (values, dtype, shape, layout) and binarizer as scikit-learn's own, which every other case still runs."""
    X = np.random.default_rng(0).normal(size=(30, 4))
    ours, theirs = dropin.MLPClassifier(), neural_network.MLPClassifier()
    X_ours, y_ours = ours._validate_input(X, labels, False, True)
    X_theirs, y_theirs = theirs._validate_input(X, labels, False, True)
    np.testing.assert_array_equal(X_ours, X_theirs)
    for a, b in ((y_ours, y_theirs), (ours.classes_, theirs.classes_),
                 (ours._label_binarizer.classes_, theirs._label_binarizer.classes_)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous == b.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    assert vars(ours._label_binarizer).keys() == vars(theirs._label_binarizer).keys()
    for name in ("y_type_", "sparse_input_", "neg_label", "pos_label", "sparse_output"):
        assert getattr(ours._label_binarizer, name) == getattr(theirs._label_binarizer, name)
    assert ours.n_features_in_ == theirs.n_features_in_ == 4


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "strings", "float-labels"])
def test_early_stopping_score_is_scikit_learns(kind, weighted):
    """The drop-in's validation score (accuracy, every epoch of an early-stopping fit) computed without
    accuracy_score's checks is scikit-learn's score of the same weights, to the bit."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    labels = {"binary": rng.integers(0, 2, 300), "multiclass": rng.integers(0, 4, 300),
              "strings": np.array(["a", "b", "c"])[rng.integers(0, 3, 300)],
              "float-labels": rng.integers(0, 3, 300).astype(float)}[kind]
    weights = rng.random(100) if weighted else None
    params = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    ours, theirs = fit_mlp_classifiers(X[:200], labels[:200], **params)
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    score = ours._score(X[200:], labels[200:], weights)
    assert type(score) is float and 0 < score < 1
    assert score == theirs._score(X[200:], labels[200:], weights)


def test_label_errors_of_partial_fit_and_warm_start():
    X, y = data()
    clf = dropin.MLPClassifier(solver="sgd", hidden_layer_sizes=(3,), random_state=0)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y, classes=[0, 1, 5])
    warm = dropin.MLPClassifier(solver="lbfgs", hidden_layer_sizes=(3,), warm_start=True, max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm.fit(X, y)
    with pytest.raises(ValueError, match="warm_start"):
        warm.fit(X, np.where(y == 2, 7, y))


def test_multilabel_runs_scikit_learns_code_and_says_so_once(capsys):
    X, Y = make_multilabel_classification(n_samples=40, n_classes=3, random_state=0)
    params = dict(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = dropin.MLPClassifier(**params).fit(X, Y)
        dropin.MLPClassifier(**params).fit(X, Y)
        theirs = neural_network.MLPClassifier(**params).fit(X, Y)
    assert_same_parameters(ours, theirs, rtol=0, atol=0)
    assert capsys.readouterr().err.count("multilabel targets") <= 1  # once per process (maybe said before)


# -- LogisticRegression ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("case", ["binary", "multiclass", "weights", "balanced", "no-intercept", "C-inf", "saga"])
def test_logistic_regression_reaches_scikit_learns_optimum(case, backend):
    X, y = data(2 if case in ("binary", "C-inf") else 3, m=300)
    params = dict(C=0.5, tol=1e-10, max_iter=1000)
    fit = {}
    if case == "weights":
        fit["sample_weight"] = np.random.default_rng(0).uniform(0.1, 3.0, len(y))
    if case == "balanced":
        params["class_weight"] = "balanced"
        y = np.where(np.arange(len(y)) % 5 == 0, 2, np.minimum(y, 1))
    if case == "no-intercept":
        params["fit_intercept"] = False
    if case == "C-inf":
        params["C"] = np.inf
        X = X + np.random.default_rng(1).normal(0, 2.0, X.shape)  # not separable: a finite optimum
    if case == "saga":
        params["solver"] = "saga"  # served by L-BFGS: the same optimum of the same strictly convex J
    ours = dropin.LogisticRegression(backend=backend, **params).fit(X, y, **fit)
    theirs = linear_model.LogisticRegression(**{**params, "solver": "lbfgs"}).fit(X, y, **fit)
    assert ours.coef_.shape == theirs.coef_.shape and ours.intercept_.shape == theirs.intercept_.shape
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-6)
    assert ours.n_iter_.shape == (1,)
    if case == "no-intercept":
        assert np.all(ours.intercept_ == 0)


@pytest.mark.parametrize("params, match", [(dict(l1_ratio=1.0, solver="saga"), "penalty='l1'"),
                                           (dict(l1_ratio=0.5, solver="saga"), "elasticnet"),
                                           (dict(solver="liblinear"), "liblinear")])
def test_logistic_regression_refuses_what_it_does_not_solve(params, match):
    X, y = data(2)
    clf = dropin.LogisticRegression(**params)
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)
    assert not hasattr(clf, "coef_")


def test_logistic_regression_warns_like_scikit_learn_at_max_iter():
    X, y = data(3, m=300)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        clf = dropin.LogisticRegression(max_iter=2).fit(X, y)
    assert clf.n_iter_[0] == 2


# -- scikit-learn's estimator checks -------------------------------------------------------------


@parametrize_with_checks([dropin.MLPClassifier(hidden_layer_sizes=(16,)),
                          dropin.MLPRegressor(hidden_layer_sizes=(16,)),
                          dropin.LogisticRegression()])
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# -- patch() and python -m l2fast.accel ---------------------------------------------------------------


def test_patch_and_unpatch():
    import sklearn.linear_model
    import sklearn.neural_network

    original = sklearn.neural_network.MLPClassifier
    dropin.patch()
    try:
        assert sklearn.neural_network.MLPClassifier is dropin.MLPClassifier
        patched = sklearn.linear_model.LogisticRegression
        assert issubclass(patched, dropin.LogisticRegression)
        X, y = data(2)
        # the patched class hands what l2fast refuses to scikit-learn's own code
        clf = patched(l1_ratio=1.0, solver="saga", max_iter=500, random_state=0).fit(X, y)
        ref = linear_model.LogisticRegression(l1_ratio=1.0, solver="saga", max_iter=500, random_state=0).fit(X, y)
        np.testing.assert_allclose(clf.coef_, ref.coef_)
    finally:
        dropin.unpatch()
    assert sklearn.neural_network.MLPClassifier is original


SCRIPT = """
import json, sys, warnings
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

warnings.simplefilter("ignore", ConvergenceWarning)
X, y = load_digits(return_X_y=True)
X, y = X[:600], y[:600]
pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=15, random_state=0))
search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=3).fit(X, y)
logreg = LogisticRegression(C=0.1, max_iter=500).fit(StandardScaler().fit_transform(X), y)
print(json.dumps({"cv": list(search.cv_results_["mean_test_score"]), "loss": search.best_estimator_[-1].loss_,
                  "coef": logreg.coef_[:2, :5].tolist(), "classes": [type(search.best_estimator_[-1]).__module__,
                  type(logreg).__module__]}))
"""


def test_accel_runs_an_unchanged_scikit_learn_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "L2FAST_BACKEND": "cpu"}
    runs = [subprocess.run([sys.executable, *prefix, str(script)], capture_output=True, text=True, env=env, timeout=600)
            for prefix in ([], ["-m", "l2fast.accel"])]
    for run in runs:
        assert run.returncode == 0, run.stderr
    plain, accel = (json.loads(run.stdout) for run in runs)
    assert all(module.startswith("sklearn.") for module in plain["classes"])
    assert all(module.startswith("l2fast.sklearn") for module in accel["classes"])
    np.testing.assert_allclose(accel["cv"], plain["cv"], atol=1e-9)  # the same steps, to rounding
    assert accel["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    np.testing.assert_allclose(accel["coef"], plain["coef"], rtol=1e-3, atol=1e-4)


def test_accel_without_a_script_shows_usage():
    run = subprocess.run([sys.executable, "-m", "l2fast.accel"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "usage" in run.stderr


# -- the benchmark (l2fast bench --configs R) ------------------------------------------------------------


def test_bench_config_R_fits_both_to_the_same_loss(monkeypatch, capsys):
    import io

    from l2fast import bench
    from l2fast.sklearn import bench as bench_dropin

    X, y = data(m=120)
    mlp = dict(hidden_layer_sizes=(5,), max_iter=3, tol=0.0, n_iter_no_change=10**6, random_state=0)
    cases = [("tiny adam", "MLPClassifier", dict(solver="adam", **mlp), X, y, "small"),
             ("tiny sgd", "MLPClassifier", dict(solver="sgd", **mlp), X, y, "small"),
             ("tiny logistic", "LogisticRegression", dict(tol=1e-8), X, y, "logistic")]
    monkeypatch.setattr(bench_dropin, "_cases", lambda quick: cases)
    out = io.StringIO()
    record = bench.run({"R"}, repeats=2, out=out)["dropin"]  # what `l2fast bench --configs R` runs
    assert [case["case"] for case in record["cases"]] == ["tiny adam", "tiny sgd", "tiny logistic"]
    for case in record["cases"]:
        assert case["sklearn_s"] > 0 and case["l2fast_s"] > 0 and case["sklearn_cpu_s"] > 0 and case["l2fast_cpu_s"] > 0
        assert case["cpu_speed_up"] == pytest.approx(case["sklearn_cpu_s"] / case["l2fast_cpu_s"])
        assert case["l2fast_loss"] == pytest.approx(case["sklearn_loss"], rel=1e-6), case["case"]
    assert "tiny logistic" in out.getvalue() and "load average after" in out.getvalue()


# -- threads on the cpu backend --------------------------------------------------------------------------


def test_small_float64_networks_train_on_one_thread_unless_cut_in_shares_and_wide_ones_keep_the_cap(monkeypatch):
    from l2fast import threads
    from l2fast.backends import cpu

    if threads.get_num_threads() < 2:
        pytest.skip("l2fast's OpenBLAS has one thread here: nothing to lower")
    counts = []
    train_epoch = cpu._core.train_epoch

    def recording(*args, **kwargs):  # the count each epoch's kernel call runs with: its shares', or OpenBLAS's
        counts.append(kwargs.get("share_threads") or threads._core.get_num_threads())
        return train_epoch(*args, **kwargs)

    def fit(X, hidden, batch_size=200, **params):
        counts.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            dropin.MLPClassifier(hidden_layer_sizes=(hidden,), solver="sgd", max_iter=1, batch_size=batch_size,
                                 random_state=0, **params).fit(X, y)
        return list(counts)

    monkeypatch.setattr(cpu._core, "train_epoch", recording)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0)  # a quiet machine: the load policy gives the cap
    X, y = data(m=300)
    X_wide = np.random.default_rng(0).normal(size=(300, 100))
    cap = threads.get_num_threads()
    # 32 x 6 x 8, plain SGD in steps too short for two shares: one thread
    assert set(fit(X, 8, batch_size=32, momentum=0.0)) == {1}
    # steps of 200, plain SGD or with momentum: they run in two shares, whose bits are the same on any count, so the
    # drop-in leaves the count to the backend's load policy
    assert cpu._core.optimizer_step_shares([6, 8, 3], 200) and cpu._core.sgd_step_shares([6, 8, 3], 200, "float64")
    assert set(fit(X, 8, momentum=0.0)) == {cap}
    assert set(fit(X, 8)) == {cap}
    # 200 x 100 x 256 = 5.1M, too large for shares (100 x 100 x 256 a share's product): OpenBLAS's cap
    assert not cpu._core.sgd_step_shares([100, 256, 3], 200, "float64")
    assert set(fit(X_wide, 256, momentum=0.0)) == {cap}


def test_lbfgs_solves_run_the_other_blas_libraries_on_one_thread(monkeypatch):
    import scipy.optimize
    import scipy_openblas32
    from threadpoolctl import threadpool_info

    seen = []
    minimize = scipy.optimize.minimize

    def recording(*args, **kwargs):
        seen.append({info["filepath"]: info["num_threads"] for info in threadpool_info()})
        return minimize(*args, **kwargs)

    before = {info["filepath"]: info["num_threads"] for info in threadpool_info()}
    X, y = data(2)
    monkeypatch.setattr(scipy.optimize, "minimize", recording)
    dropin.LogisticRegression().fit(X, y)
    assert len(seen) == 1
    ours = os.path.dirname(os.path.realpath(scipy_openblas32.__file__))
    for path, n in seen[0].items():
        assert n == (before[path] if os.path.realpath(path).startswith(ours) else 1), path
    assert {info["filepath"]: info["num_threads"] for info in threadpool_info()} == before  # put back
