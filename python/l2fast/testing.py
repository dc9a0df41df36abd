"""Parity helpers: one tolerance table, a comparison that reports the worst errors, problem makers."""
from __future__ import annotations

import numpy as np

# |fast - ref| <= atol + rtol |ref|, per dtype of the computation.
TOLERANCES = {
    np.dtype("float64"): {"rtol": 1e-10, "atol": 1e-12},
    np.dtype("float32"): {"rtol": 1e-4, "atol": 1e-5},
}


def worst_errors(actual, reference):
    """(max |actual - reference|, the same over max |reference|): the worst absolute error and the
    worst error relative to the reference's scale. NaN anywhere counts as an infinite error."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.size == 0:
        return 0.0, 0.0
    diff = np.abs(actual - reference)
    worst = float(np.max(np.where(np.isnan(diff), np.inf, diff)))
    scale = float(np.max(np.abs(reference)))
    return worst, worst / scale if scale > 0 else (0.0 if worst == 0 else np.inf)


def out_of_tolerance(actual, reference, dtype):
    """Boolean mask of the entries where |actual - reference| > atol + rtol |reference| (NaN included)."""
    tol = TOLERANCES[np.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return ~(np.abs(actual - reference) <= tol["atol"] + tol["rtol"] * np.abs(reference))


def assert_parity(actual, reference, dtype, what="values"):
    """Asserts actual matches reference within the table's tolerance for dtype; NaN never passes.

    Fails with the worst absolute and relative errors and the number of entries out of tolerance."""
    tol = TOLERANCES[np.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != reference shape {reference.shape}")
    bad = out_of_tolerance(actual, reference, dtype)
    if bad.any():
        abs_err, rel_err = worst_errors(actual, reference)
        raise AssertionError(
            f"{what} ({np.dtype(dtype).name}): {int(bad.sum())} of {bad.size} entries out of tolerance "
            f"(rtol={tol['rtol']}, atol={tol['atol']}); worst abs error {abs_err:.3g}, worst rel error {rel_err:.3g}"
        )


def near_ties(proba, dtype):
    """Boolean mask (m,) of the records whose label rounding may decide: the two largest probabilities
    of proba (m, n_classes) lie within the dtype's tolerance of each other. There a backend that rounds
    differently (fused multiply-adds, flushed subnormals, another summation order) may fairly pick the
    other class."""
    tol = TOLERANCES[np.dtype(dtype)]
    top = np.sort(np.asarray(proba, dtype=np.float64), axis=1)[:, -2:]
    return top[:, 1] - top[:, 0] <= 2 * (tol["atol"] + tol["rtol"] * top[:, 1])


def assert_labels_agree(labels, ref_labels, ties, what="predict"):
    """Asserts the labels (m,) equal the reference's on every record that is not a near tie (ties, from
    near_ties of the reference's probabilities)."""
    labels, ref_labels = np.asarray(labels), np.asarray(ref_labels)
    if labels.shape != ref_labels.shape:
        raise AssertionError(f"{what}: shape {labels.shape} != reference shape {ref_labels.shape}")
    wrong = (labels != ref_labels) & ~np.asarray(ties)
    if wrong.any():
        raise AssertionError(f"{what}: {int(wrong.sum())} of {wrong.size} labels differ from the reference away "
                             f"from a near tie (first at record {int(np.argmax(wrong))})")


def assert_accuracy_parity(accuracy, ref_accuracy, m, what="accuracy", flips=1):
    """Asserts each accuracy (over m records) is the reference's to within `flips` records: a record
    scored at a near tie may go either way on another backend."""
    accuracy, ref_accuracy = np.asarray(accuracy, np.float64), np.asarray(ref_accuracy, np.float64)
    if accuracy.shape != ref_accuracy.shape:
        raise AssertionError(f"{what}: shape {accuracy.shape} != reference shape {ref_accuracy.shape}")
    records = np.abs(accuracy - ref_accuracy) * m
    if np.any(records > flips + 1e-9):
        raise AssertionError(f"{what}: {accuracy.tolist()} against the reference's {ref_accuracy.tolist()} "
                             f"({records.max():.0f} records apart, {flips} allowed)")


def make_problem(loss, n_in, n_out, m, seed):
    """A random (X (m, n_in) float64, y) pair with targets suited to loss."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n_in))
    if loss == "softmax":
        y = rng.integers(0, n_out, size=m)
    elif loss == "logistic":
        y = rng.integers(0, 2, size=m)
    else:
        y = rng.normal(size=(m, n_out)) if n_out > 1 else rng.normal(size=m)
    return X, y


def twin_networks(sizes, activation, loss, dtype, backend, lam=0.8, seed=4):
    """The same network (architecture, lam, seed, hence initial weights) twice: on the NumPy reference and
    on `backend`. Returns (reference, other)."""
    from l2fast.network import Network

    return tuple(Network(sizes, activation=activation, loss=loss, lam=lam, backend=name, dtype=dtype, seed=seed)
                 for name in ("numpy", backend))


def assert_network_parity(net, ref, X, y, dtype):
    """Asserts net answers as the reference network ref on (X, y): cost and its parts, the gradients
    (NumPy arrays of dtype), predictions and score. Labels (and so accuracy) may differ at near ties
    of the reference's probabilities only; everything else within the tolerance table."""
    assert_parity(net.cost(X, y), ref.cost(X, y), dtype, "cost")
    assert_parity(net.cost_parts(X, y), ref.cost_parts(X, y), dtype, "cost parts")
    (ref_dW, ref_db), (dW, db) = ref.gradients(X, y), net.gradients(X, y)
    for layer, (g_W, g_b) in enumerate(zip(dW, db)):
        for g in (g_W, g_b):
            assert isinstance(g, np.ndarray) and g.dtype == np.dtype(dtype), f"gradient of layer {layer}: {g!r}"
        assert_parity(g_W, ref_dW[layer], dtype, f"dJ/dW[{layer}]")
        assert_parity(g_b, ref_db[layer], dtype, f"dJ/db[{layer}]")
    if net.loss == "squared_error":
        assert_parity(net.predict(X), ref.predict(X), dtype, "predict")
        score, ref_score = net.score(X, y), ref.score(X, y)
        assert abs(score - ref_score) <= max(1e-4 * abs(ref_score), 1e-12), f"score {score} != reference {ref_score}"
        return
    ref_proba = ref.predict_proba(X)
    assert_parity(net.predict_proba(X), ref_proba, dtype, "predict_proba")
    ties = near_ties(ref_proba, dtype)
    assert_labels_agree(net.predict(X), ref.predict(X), ties)
    assert_accuracy_parity(net.score(X, y), ref.score(X, y), len(ties), "score", flips=int(ties.sum()))


def parameters(net):
    """A network's weights then biases, as NumPy arrays: W[0], ..., W[L-1], b[0], ..., b[L-1]."""
    return net.weights + net.biases
