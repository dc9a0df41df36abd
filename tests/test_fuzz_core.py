"""Property-based tests: the compiled module driven directly with random shapes, layouts, dtypes and
values. Whatever it is given it raises TypeError/ValueError or computes what the reference does."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from l2fast.backends.cpu import _core
from l2fast.backends.numpy_ref import NumpyBackend
from l2fast.testing import assert_parity

REFERENCE = NumpyBackend()
LOSSES = ["softmax", "logistic", "squared_error"]
ACTIVATIONS = ["relu", "tanh", "sigmoid", "identity"]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def layout(array, how):
    """The same values in another memory layout: C order, Fortran order, a strided view, read-only."""
    if how == "fortran":
        return np.asfortranarray(array)
    if how == "strided" and array.ndim >= 1 and array.size:
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if how == "readonly":
        array = array.copy()
        array.flags.writeable = False
    return array


@st.composite
def cases(draw):
    loss = draw(st.sampled_from(LOSSES))
    activation = draw(st.sampled_from(ACTIVATIONS))
    n_hidden = draw(st.integers(0, 2))
    sizes = [draw(st.integers(1, 5)) for _ in range(n_hidden + 1)]
    n_out = 1 if loss == "logistic" else draw(st.integers(2 if loss == "softmax" else 1, 4))
    sizes.append(n_out)
    m = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(b, a)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(size=b).astype(dtype) for b in sizes[1:]]
    X = rng.normal(size=(m, sizes[0])).astype(dtype)
    if loss == "softmax":
        y = rng.integers(0, n_out, size=m).astype(np.int64)
    elif loss == "logistic":
        y = rng.integers(0, 2, size=(m, 1)).astype(dtype)
    else:
        y = rng.normal(size=(m, n_out)).astype(dtype)
    case = dict(loss=loss, activation=activation, weights=weights, biases=biases, X=X, y=y, m=m,
                batch=draw(st.integers(1, 10)), lr=draw(st.sampled_from([0.01, 0.1])),
                lam_over_m=draw(st.sampled_from([0.0, 0.05])), order=None, valid=True)
    if draw(st.booleans()):
        case["order"] = rng.permutation(m).astype(np.int64)
    # Break at most one thing, in a way the compiled module has to notice.
    fault = draw(st.sampled_from(["none"] * 6 + ["dtype", "layout", "shape", "label", "order", "scalar"]))
    target = draw(st.sampled_from(["X", "y", "weights", "biases"]))
    if fault == "dtype":
        bad = draw(st.sampled_from([np.float16, np.int32, np.complex64, np.float64 if dtype == np.float32
                                    else np.float32]))
        if target in ("weights", "biases"):
            case[target][-1] = case[target][-1].astype(bad)
        elif not (target == "y" and loss == "softmax" and bad == np.int32):
            case[target] = case[target].astype(bad)
        else:
            case["y"] = case["y"].astype(np.int32)
        case["valid"] = False
    elif fault == "layout":
        how = draw(st.sampled_from(["fortran", "strided", "readonly"]))
        if target in ("weights", "biases"):
            changed = layout(case[target][0], how)
            case[target][0] = changed
        else:
            changed = layout(case[target], how)
            case[target] = changed
        writes = target in ("weights", "biases")
        case["valid"] = changed.flags.c_contiguous and (changed.flags.writeable or not writes)
        case["read_only_params"] = writes and not changed.flags.writeable and changed.flags.c_contiguous
    elif fault == "shape":
        if target in ("weights", "biases"):
            case[target][-1] = case[target][-1][..., :-1] if case[target][-1].shape[-1] > 1 else \
                np.concatenate([case[target][-1]] * 2, axis=-1)
        else:
            case[target] = case[target][:-1] if m > 1 else np.concatenate([case[target]] * 2)
        case["valid"] = False
    elif fault == "label" and loss != "squared_error":
        case["y"] = case["y"].copy()
        case["y"][0] = n_out + 1 if loss == "softmax" else 0.5
        case["valid"] = False
    elif fault == "order":
        case["order"] = np.array([0, m], dtype=np.int64)
        case["valid"] = False
    elif fault == "scalar":
        key, value = draw(st.sampled_from([("lr", 0.0), ("lr", float("nan")), ("lam_over_m", -1.0),
                                           ("batch", 0)]))
        case[key] = value
        case["valid"] = False
    return case


def train_args(case):
    return (case["weights"], case["biases"], case["X"], case["y"], case["order"], case["batch"], case["lr"],
            case["lam_over_m"], case["activation"], case["loss"])


@SETTINGS
@given(cases())
def test_train_epoch_refuses_or_matches_the_reference(case):
    if not case["valid"] or case.get("read_only_params"):
        arrays = [p for p in case["weights"] + case["biases"] if p.dtype.kind == "f"]
        before = [p.copy() for p in arrays]
        with pytest.raises((TypeError, ValueError)):
            _core.train_epoch(*train_args(case))
        assert all(np.array_equal(p, q, equal_nan=True) for p, q in zip(arrays, before))
        return
    ref_w = [w.copy() for w in case["weights"]]
    ref_b = [b.copy() for b in case["biases"]]
    X = np.ascontiguousarray(case["X"])
    y = case["y"]
    want = REFERENCE.train_epoch(ref_w, ref_b, X, y, case["order"], case["batch"], case["lr"], case["lam_over_m"],
                                 case["activation"], case["loss"])
    # Divergence is tested elsewhere; a run on its way there (a loss sum of 1e31, or weights of 3 grown past 30 in one
    # epoch of 5 steps) amplifies each rounding difference step after step, beyond any fixed tolerance.
    assume(np.isfinite(want[0]) and want[0] < 1e6 * case["m"] and all(np.isfinite(p).all() for p in ref_w))
    assume(all(np.abs(p).max() <= 4 * max(1.0, float(np.abs(p0).max()))
               for p, p0 in zip(ref_w + ref_b, case["weights"] + case["biases"]) if p.size))
    got = _core.train_epoch(*train_args(case))
    dtype = case["weights"][0].dtype
    assert_parity(got[0], want[0], dtype, "loss sum")
    for p, q in zip(case["weights"] + case["biases"], ref_w + ref_b):
        assert_parity(p, q, dtype, "parameters")


@SETTINGS
@given(cases())
def test_read_only_passes_refuse_or_match_the_reference(case):
    args = (case["weights"], case["biases"], case["X"])
    kinds = (case["activation"], case["loss"])
    valid = case["valid"] or case.get("read_only_params")
    if not valid:
        try:
            _core.predict(*args, *kinds)
            _core.evaluate(*args, case["y"], *kinds)
            _core.gradients(*args, case["y"], 0.01, *kinds)
        except (TypeError, ValueError):
            return
        # Nothing refused: then the fault was one that only training reads (order, lr, lam_over_m, batch).
        only_training = (case["order"] is not None and case["order"].max() >= case["m"]) or \
            not case["lr"] > 0 or case["lam_over_m"] < 0 or case["batch"] < 1
        assert only_training
        return
    dtype = case["weights"][0].dtype
    assert_parity(_core.predict(*args, *kinds), REFERENCE.predict(*args, *kinds), dtype, "predict")
    got = _core.evaluate(*args, case["y"], *kinds)
    want = REFERENCE.evaluate(*args, case["y"], *kinds)
    assert_parity(got[0], want[0], dtype, "loss sum")
    dW, db, loss_sum = _core.gradients(*args, case["y"], 0.01, *kinds)
    ref_dW, ref_db, ref_sum = REFERENCE.gradients(*args, case["y"], 0.01, *kinds)
    for g, r in zip(dW + db, ref_dW + ref_db):
        assert_parity(g, r, dtype, "gradients")
