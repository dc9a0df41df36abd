"""The drop-ins' shortcuts around scikit-learn's per-fit work (what a small fit's Python time goes to): each gives
what scikit-learn's own code gives, and what it does not take falls back to that code."""
import numpy as np
import pytest
from sklearn.utils import shuffle

from l2fast.sklearn import _dropin


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 200, 1797, 70_000])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_shuffle_in_place_is_scikit_learns_shuffle(n, seed):
    """The epoch's order shuffled in place takes scikit-learn's order (sklearn.utils.shuffle of the order, as its
    MLP does) from the same draws: the two random states end in the same state."""
    start = np.random.default_rng(seed).permutation(n).astype(np.int64)  # an order already shuffled once
    ours, theirs = np.random.RandomState(seed), np.random.RandomState(seed)
    order = start.copy()
    for _ in range(3):
        expected = shuffle(start if _ == 0 else expected, random_state=theirs)
        _dropin.shuffle_(order, ours)
        np.testing.assert_array_equal(order, expected)
    assert order.dtype == np.int64
    mine, its = ours.get_state(), theirs.get_state()
    np.testing.assert_array_equal(mine[1], its[1])
    assert mine[2:] == its[2:]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_network_holding_is_a_network_given_these_parameters(backend, dtype):
    """Network._holding (the drop-ins' network, made without initial draws) is Network(...) after set_parameters:
    the same attributes and copies of the arrays, checked as set_parameters checks them, refusals naming them."""
    from l2fast import Network

    rng = np.random.default_rng(0)
    coefs = [rng.normal(size=(5, 4)), rng.normal(size=(4, 3))]  # scikit-learn's (n_in, n_out) layout
    weights, biases = [W.T for W in coefs], [rng.normal(size=4), rng.normal(size=3)]
    held = Network._holding([5, 4, 3], "tanh", "softmax", backend, dtype, weights, biases)
    made = Network([5, 4, 3], activation="tanh", loss="softmax", backend=backend, dtype=dtype)
    made.set_parameters(weights, biases)
    for name in ("layer_sizes", "activation", "loss", "dtype", "backend", "lam", "seed", "optimizer_state"):
        assert getattr(held, name) == getattr(made, name), name
    for ours, theirs, given in zip(held.weights + held.biases, made.weights + made.biases, weights + biases):
        assert ours.dtype == theirs.dtype == dtype and ours.flags.c_contiguous
        np.testing.assert_array_equal(ours, theirs)
    for array, given in zip(held._weights + held._biases, weights + biases):
        assert not np.may_share_memory(array, given)  # trained in place: the caller's arrays stay as they were
    X = rng.normal(size=(6, 5))
    np.testing.assert_array_equal(held.predict_proba(X), made.predict_proba(X))
    with pytest.raises(ValueError, match=r"weights\[1\]: expected shape \(3, 4\)"):
        Network._holding([5, 4, 3], "tanh", "softmax", backend, dtype, [weights[0], weights[1][:2]], biases)
    with pytest.raises(ValueError, match=r"biases\[0\]: contains NaN"):
        Network._holding([5, 4, 3], "tanh", "softmax", backend, dtype, weights, [np.full(4, np.nan), biases[1]])
    with pytest.raises(ValueError, match="activation"):
        Network._holding([5, 4, 3], "gelu", "softmax", backend, dtype, weights, biases)


def test_parameter_check_is_made_once_per_set_of_values_and_still_refuses(monkeypatch):
    """A drop-in skips scikit-learn's parameter check for values it already passed (same types and values), and
    runs it on every other set: a bad value is still refused with scikit-learn's error after good ones passed."""
    import sklearn.base
    from sklearn.neural_network import MLPClassifier
    from sklearn.utils._param_validation import InvalidParameterError

    checked = []
    check = sklearn.base.validate_parameter_constraints
    monkeypatch.setattr(sklearn.base, "validate_parameter_constraints",
                        lambda constraints, params, caller_name: checked.append(params) or
                        check(constraints, params, caller_name))
    ours = _dropin.MLPClassifier(hidden_layer_sizes=(3, 2), alpha=0.125)
    ours._validate_params()
    ours._validate_params()
    _dropin.MLPClassifier(hidden_layer_sizes=(3, 2), alpha=0.125)._validate_params()
    assert len(checked) == 1
    for name, bad in (("alpha", -1.0), ("shuffle", 1), ("hidden_layer_sizes", "3"), ("solver", "newton")):
        # shuffle=1 equals True, which passed: the check tells them apart by type, as scikit-learn's does
        ours.set_params(**{name: bad})
        theirs = MLPClassifier(**{name: bad})
        with pytest.raises(InvalidParameterError) as ours_error:
            ours._validate_params()
        with pytest.raises(InvalidParameterError) as their_error:
            theirs._validate_params()
        assert str(ours_error.value) == str(their_error.value).replace("MLPClassifier", type(ours).__name__)
        ours.set_params(**_dropin.MLPClassifier(hidden_layer_sizes=(3, 2), alpha=0.125).get_params())
    checked.clear()
    for value in (np.float64(0.125), np.random.RandomState(0)):  # not a plain scalar: checked every time
        other = _dropin.MLPClassifier(alpha=value) if isinstance(value, float) else \
            _dropin.MLPClassifier(random_state=value)
        other._validate_params()
        other._validate_params()
    assert len(checked) == 4

    class Stricter(_dropin.MLPClassifier):  # its own constraints: its own record of what passed them
        _parameter_constraints = {**_dropin.MLPClassifier._parameter_constraints, "alpha": [None]}

    with pytest.raises(InvalidParameterError, match="'alpha' parameter of Stricter"):
        Stricter(hidden_layer_sizes=(3, 2), alpha=0.125)._validate_params()


@pytest.mark.parametrize("cls", [_dropin.MLPClassifier, _dropin.MLPRegressor, _dropin.LogisticRegression])
def test_parameter_names_are_the_signatures(cls):
    import inspect

    from l2fast.sklearn import _patch

    for c in (cls, getattr(_patch, cls.__name__, cls)):
        assert c._get_param_names() == sorted(inspect.signature(c).parameters)
        assert c._get_param_names() is not c._get_param_names()  # a fresh list each call, as scikit-learn's

    class Renamed(cls):  # a subclass with another constructor gets its own names
        def __init__(self, extra=1, **params):
            super().__init__(**params)
            self.extra = extra

    assert Renamed._get_param_names() == ["extra"]


def _inputs_cases():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = rng.integers(0, 3, 40)
    with_nan, with_inf, huge = X.copy(), X.copy(), np.full((40, 5), 1e308)
    with_nan[3, 2], with_inf[7, 1] = np.nan, -np.inf
    return {"C": (X, y), "F": (np.asfortranarray(X), y), "float32": (X.astype(np.float32), y),
            "strided": (np.repeat(X, 2, axis=1)[:, ::2], y), "uint8-labels": (X, y.astype(np.uint8)),
            "nan": (with_nan, y), "inf": (with_inf, y), "sum-overflows": (huge, y),
            "no-rows": (X[:0], y[:0]), "no-columns": (X[:, :0], y), "lengths": (X, y[:-1]),
            "int-X": (rng.integers(0, 5, (40, 5)), y), "big-endian": (X.astype(">f8"), y),
            "memmap-like": (X.view(np.memmap), y), "list": (X.tolist(), y)}


@pytest.mark.parametrize("assume_finite", [False, True])
@pytest.mark.parametrize("case", list(_inputs_cases()))
def test_dense_inputs_are_validate_datas(case, assume_finite, monkeypatch):
    """A fresh fit's X and y, taken without validate_data where they are a plain NumPy float X and integer y: the
    same arrays (X itself), n_features_in_, no stale feature_names_in_, and scikit-learn's own refusals."""
    import sklearn
    from sklearn.neural_network import MLPClassifier

    pandas = pytest.importorskip("pandas")
    X, y = _inputs_cases()[case]
    results = []
    for est in (_dropin.MLPClassifier(), MLPClassifier()):
        frame = pandas.DataFrame(np.ones((6, 7)), columns=[f"f{i}" for i in range(7)])
        est._validate_input(frame, np.arange(6) % 2, False, True)  # fitted on named features before
        assert list(est.feature_names_in_) == list(frame.columns)
        calls = []
        validate_data = _dropin.validate_data
        monkeypatch.setattr(_dropin, "validate_data", lambda *a, **k: calls.append(1) or validate_data(*a, **k))
        with sklearn.config_context(assume_finite=assume_finite):
            try:
                X_out, y_out = est._validate_input(X, y, False, True)
            except Exception as exc:  # noqa: BLE001 (compared below with scikit-learn's)
                results.append((type(exc), str(exc)))
                continue
        results.append((X_out is X, X_out.dtype, np.asarray(X_out).tobytes(), y_out.tobytes(), est.n_features_in_,
                        hasattr(est, "feature_names_in_")))
        if isinstance(est, _dropin.MLPClassifier):
            plain = ("C", "F", "float32", "strided", "uint8-labels") + (("nan", "inf", "sum-overflows") if assume_finite
                                                                         else ())
            assert len(calls) == (0 if case in plain else 1)  # the shortcut takes exactly these
    assert results[0] == results[1]
    if case in ("C", "F", "float32", "strided"):
        assert results[0][0]  # the array itself, no copy


@pytest.mark.parametrize("seed", [0, 1, 2, 42, 2**31, 2**32 - 1])
def test_legacy_random_state_is_randomstates(seed):
    """A plain int seed's random state, made without SeedSequence's seeding that the legacy seeding overwrites, is
    RandomState(seed): the same state, no seed sequence kept, the same draws."""
    ours, theirs = _dropin.legacy_random_state(seed), np.random.RandomState(seed)
    assert type(ours) is np.random.RandomState and type(ours._bit_generator) is np.random.MT19937
    mine, its = ours.get_state(), theirs.get_state()
    np.testing.assert_array_equal(mine[1], its[1])
    assert mine[2:] == its[2:]
    assert ours._bit_generator._seed_seq is None and theirs._bit_generator._seed_seq is None
    np.testing.assert_array_equal(ours.uniform(size=700), theirs.uniform(size=700))  # past a regeneration
    assert ours.randint(2**40) == theirs.randint(2**40)


def test_legacy_random_state_leaves_other_seeds_to_check_random_state(monkeypatch):
    from sklearn.utils import check_random_state

    given = np.random.RandomState(3)
    assert _dropin.legacy_random_state(given) is given is check_random_state(given)
    assert _dropin.legacy_random_state(None) is check_random_state(None)  # NumPy's global RandomState
    for seed in (np.int64(5), np.uint32(7)):
        np.testing.assert_array_equal(_dropin.legacy_random_state(seed).get_state()[1],
                                      np.random.RandomState(seed).get_state()[1])
    for bad in (-1, 2**32, 1.5, "0"):
        with pytest.raises(ValueError) as ours:
            _dropin.legacy_random_state(bad)
        with pytest.raises(ValueError) as theirs:
            check_random_state(bad)
        assert str(ours.value) == str(theirs.value)
    # a NumPy whose MT19937 would not give RandomState's state that way: RandomState itself makes it
    made = []
    monkeypatch.setattr(_dropin, "_seeded_legacy", lambda seed: made.append(seed) or np.random.RandomState(seed + 1))
    _dropin._legacy_seeding_is_randomstates.cache_clear()
    try:
        np.testing.assert_array_equal(_dropin.legacy_random_state(9).get_state()[1],
                                      np.random.RandomState(9).get_state()[1])
        assert made == [0]  # the one check, then never again
    finally:
        _dropin._legacy_seeding_is_randomstates.cache_clear()


@pytest.mark.parametrize("how", ["fit", "early-stopping", "partial_fit", "warm_start", "instance"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_random_state_is_consumed_as_scikit_learns_mlp_consumes_it(solver, how):
    """After a fit (its initial weights, validation split and shuffles), the drop-in's random state is where
    scikit-learn's own MLP leaves its own, and both reach the same weights."""
    import warnings

    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(n_samples=150, n_features=6, n_informative=4, n_classes=3, random_state=0)
    states = []
    for cls in (_dropin.MLPClassifier, MLPClassifier):
        params = dict(hidden_layer_sizes=(5,), solver=solver, max_iter=4, batch_size=32, random_state=7,
                      early_stopping=how == "early-stopping", warm_start=how == "warm_start")
        if how == "instance":
            params["random_state"] = np.random.RandomState(7)
        est = cls(**params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if how == "partial_fit":
                est.partial_fit(X[:70], y[:70], classes=[0, 1, 2])
                est.partial_fit(X[70:], y[70:])
            else:
                est.fit(X, y)
                if how in ("warm_start", "instance"):
                    est.fit(X, y)
        states.append((est._random_state.get_state(), est.coefs_))
    (mine, ours), (its, theirs) = states
    np.testing.assert_array_equal(mine[1], its[1])
    assert mine[2:] == its[2:]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_fitted_arrays_are_the_estimators_own(backend):
    """coefs_ and intercepts_ are C-contiguous copies in scikit-learn's layout, sharing no memory with the network
    that goes on training (a partial_fit after): a one-output layer too, whose transposed weights are contiguous
    either way."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    X = np.random.default_rng(0).normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(int)  # two classes: one logistic output, W of shape (1, 4) in the network
    est = _dropin.MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.partial_fit(X, y, classes=[0, 1])
        before = [a.copy() for a in est.coefs_]
        est.partial_fit(X, y)
    net = est._l2fast_trainer.net
    assert [W.shape for W in est.coefs_] == [(3, 4), (4, 1)]
    for array, own in zip(est.coefs_ + est.intercepts_, net._weights + net._biases):
        assert array.flags.c_contiguous and not np.shares_memory(array, own)
    assert any(not np.array_equal(a, b) for a, b in zip(est.coefs_, before))


@pytest.mark.parametrize("stop", [KeyboardInterrupt, ValueError])
@pytest.mark.parametrize("n_iter_no_change", [10**6, 4])
def test_orders_made_ahead_give_back_the_draws_of_epochs_that_did_not_run(monkeypatch, stop, n_iter_no_change):
    """A fit that ends in its 6th epoch (Ctrl-C, which scikit-learn's loop catches, or an error) leaves the random
    state after 6 shuffles, as scikit-learn's loop does, though the orders of later epochs were made ahead."""
    import warnings

    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning

    from l2fast.backends import cpu

    X, y = make_classification(n_samples=90, n_features=5, n_informative=3, n_classes=3, random_state=0)
    params = dict(hidden_layer_sizes=(4,), solver="adam", batch_size=16, tol=0.0, n_iter_no_change=n_iter_no_change,
                  backend="cpu")

    def fit(max_iter, random_state):
        est = _dropin.MLPClassifier(max_iter=max_iter, random_state=random_state, **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                est.fit(X, y)
            except ValueError:
                pass
        return random_state.get_state()

    expected = fit(6, np.random.RandomState(3))  # six epochs run: six shuffles
    calls = []
    train_epoch = cpu._core.train_epoch

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise stop("stopped")
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(cpu._core, "train_epoch", stopping)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        got = fit(30, np.random.RandomState(3))
    assert len(calls) == 6
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_orders_are_made_ahead_only_for_epochs_sure_to_run():
    rs, theirs = np.random.RandomState(0), np.random.RandomState(0)
    orders = _dropin._Orders(50, rs, shuffle=True)
    expected = np.arange(50)
    for sure in (3, 1, 1, 2, 5):
        expected = shuffle(expected, random_state=theirs)
        np.testing.assert_array_equal(orders.next(sure), expected)
    # made ahead: 3, then 2 (the last call takes the second of those): 5 shuffles for 5 epochs
    assert rs.get_state()[2] == theirs.get_state()[2]
    np.testing.assert_array_equal(rs.get_state()[1], theirs.get_state()[1])
    unshuffled = _dropin._Orders(50, rs, shuffle=False)
    assert all(np.array_equal(unshuffled.next(9), np.arange(50)) for _ in range(3))


@pytest.mark.parametrize("sizes", [(3, 0), [2, -1], (np.int64(0),), (2.0, 0.0), 0])
def test_hidden_layer_sizes_refused_as_scikit_learn_refuses_them(sizes):
    from sklearn.neural_network import MLPClassifier

    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    with pytest.raises(ValueError) as ours:
        _dropin.MLPClassifier(hidden_layer_sizes=sizes, max_iter=1).fit(X, y)
    with pytest.raises(ValueError) as theirs:
        MLPClassifier(hidden_layer_sizes=sizes, max_iter=1).fit(X, y)
    assert str(ours.value) == str(theirs.value)


def test_is_classifier_is_scikit_learns_for_the_dropins():
    import sklearn.base

    from l2fast.sklearn import _patch

    for est in (_dropin.MLPClassifier(), _dropin.MLPRegressor(), _dropin.LogisticRegression(),
                _patch.LogisticRegression()):
        assert _dropin.is_classifier(est) == sklearn.base.is_classifier(est)


@pytest.mark.parametrize("labels", [np.arange(30) % 4, (np.arange(30) % 3).astype(np.uint8), np.arange(30) % 5 - 2,
                                    np.array([0, 10**9, 0]), np.array([7, 7, 3], dtype=np.int16),
                                    np.array([2, 0, 2], dtype=np.uint64), np.array([5, 3, 5], dtype=np.uint32),
                                    np.array([1200] * 3 + [0]), np.array([], dtype=np.int64)],
                         ids=["small", "uint8", "negative", "far-apart", "int16", "uint64", "uint32", "beyond-count", "none"])
def test_sorted_labels_are_numpys_unique(labels):
    ours, theirs = _dropin._sorted_labels(labels), np.unique(labels)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
