"""The NumPy reference backend: the specification that every fast path is checked against.

Each function mirrors one kernel of ``cpp/`` under the same name and does the same arithmetic in the
same dtype, written for reading rather than speed. Shapes: ``X`` (m, n_in), ``W`` (n_out, n_in),
``b`` (n_out,), activations (rows, n) with one record per row.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from l2fast import _validate

BLOCK_ROWS = 2048  # the whole-data passes work in blocks of this many records, like the C++ ones


def sigmoid(Z):
    """Logistic function that never overflows: exp is only taken of -|Z|."""
    e = np.exp(-np.abs(Z))
    return np.where(Z >= 0, 1 / (1 + e), e / (1 + e))


def activate(Z, activation):
    if activation == "identity":
        return Z
    if activation == "relu":
        return np.maximum(Z, 0)
    if activation == "tanh":
        return np.tanh(Z)
    if activation == "sigmoid":
        return sigmoid(Z)
    raise ValueError(f"activation: unknown activation {activation!r}")


def activation_backward(dA, A, activation):
    """dL/dZ from dL/dA and the activated output A = act(Z)."""
    if activation == "identity":
        return dA
    if activation == "relu":
        return np.where(A > 0, dA, 0)
    if activation == "tanh":
        return dA * (1 - A * A)
    if activation == "sigmoid":
        return dA * (A * (1 - A))
    raise ValueError(f"activation: unknown activation {activation!r}")


def dense_forward(A_prev, W, b, activation):
    """act(A_prev @ W.T + b): (rows, n_in) -> (rows, n_out)."""
    return activate(A_prev @ W.T + b, activation)


def dense_backward_input(dZ, W):
    """dL/dA_prev (rows, n_in) from dL/dZ (rows, n_out), with W as it was in the forward pass."""
    return dZ @ W


def output_activation(Z, loss):
    """The network's output yhat from the last layer's logits Z (rows, n_out)."""
    if loss == "squared_error":
        return Z
    if loss == "logistic":
        return sigmoid(Z)
    e = np.exp(Z - Z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_gradient(Z, y, loss, w=None):
    """Per-record loss of the logits Z (rows, n_out) against y, and dL/dZ = yhat - y per record.

    y is (rows,) int64 labels for softmax, (rows, n_out) values otherwise (logistic: 0/1, one column).
    With sample weights w (rows,), each record's loss and dL/dZ are scaled by its weight.
    Returns (loss_sum as a Python float, number classified right (unweighted), dL/dZ of Z's shape and dtype).
    """
    loss_sum, correct, dZ, per_record = _loss_gradient(Z, y, loss)
    if w is not None:
        per_record = per_record * w
        dZ *= w[:, None]
    return float(per_record.sum(dtype=np.float64)), correct, dZ


def _loss_gradient(Z, y, loss):
    if loss == "squared_error":
        dZ = Z - y
        per_record = 0.5 * np.sum(dZ * dZ, axis=1)
        return None, 0, dZ, per_record
    if loss == "logistic":
        z, t = Z[:, 0], y[:, 0]
        per_record = np.maximum(z, 0) - t * z + np.log1p(np.exp(-np.abs(z)))
        p = sigmoid(z)
        correct = int(np.count_nonzero((p >= 0.5) == (t == 1)))
        return None, correct, (p - t)[:, None], per_record
    rows = np.arange(len(Z))
    z_max = Z.max(axis=1, keepdims=True)
    e = np.exp(Z - z_max)
    total = e.sum(axis=1)
    per_record = (np.log(total) + z_max[:, 0]) - Z[rows, y]
    correct = int(np.count_nonzero(Z.argmax(axis=1) == y))
    dZ = e / total[:, None]
    dZ[rows, y] -= 1
    return None, correct, dZ, per_record


def is_sparse(X):
    """Whether X is a sparse matrix: scipy.sparse, or cupyx.scipy.sparse on the GPU (the cuda backend's sparse X)."""
    if _validate.is_sparse(X):
        return True
    device_sparse = sys.modules.get("cupyx.scipy.sparse")  # imported by the cuda backend when it made one
    return device_sparse is not None and bool(device_sparse.issparse(X))


def weight_product(dZ, A_prev):
    """dZ^T A_prev (n_out, n_in), for A_prev (rows, n_in) dense or sparse (then sparse x dense)."""
    return (A_prev.T @ dZ).T if is_sparse(A_prev) else dZ.T @ A_prev


def l2_step(W, b, dZ, A_prev, lr, lam_over_m):
    """In place: W <- W - lr (mean dL/dW + (lam/m) W), b <- b - lr mean dL/db, over a batch of rows."""
    batch = len(dZ)
    W -= lr * (weight_product(dZ, A_prev) / batch + lam_over_m * W)
    b -= lr * (dZ.sum(axis=0) / batch)


def optimizer_step(P, G, slots, lr, decay, optimizer, step):
    """In place: one step of ``optimizer`` (an ``l2fast.optim`` spec) on the parameter P, given G, the
    batch mean of dL/dP, its state arrays ``slots`` (velocity; or first and second moments, P's shape),
    decay = lam/m (0 for biases) and this step's number ``step`` >= 1. See ``l2fast.optim``."""
    keep = 1 - lr * decay if optimizer.decoupled else 1.0
    g = G if optimizer.decoupled else G + decay * P
    if optimizer.name == "sgd":
        P -= lr * g
    elif optimizer.name == "momentum":
        mu = optimizer.momentum
        V = slots[0]
        V[...] = mu * V + g
        P[...] = keep * P - lr * (g + mu * V if optimizer.nesterov else V)
    else:
        M, V = slots
        M[...] = optimizer.beta1 * M + (1 - optimizer.beta1) * g
        V[...] = optimizer.beta2 * V + (1 - optimizer.beta2) * (g * g)
        bc2_sqrt = math.sqrt(1 - optimizer.beta2**step)
        if optimizer.eps_on_v:  # scikit-learn's form, in its order of operations
            P[...] = keep * P - lr * bc2_sqrt / (1 - optimizer.beta1**step) * M / (np.sqrt(V) + optimizer.eps)
            return
        step_size = lr / (1 - optimizer.beta1**step)
        P[...] = keep * P - step_size * M / (np.sqrt(V) / bc2_sqrt + optimizer.eps)


def curvature_rows(U, c, P):
    """R (rows, n_out), float64: each record's loss curvature applied to U (rows, n_out), given c (rows,) and the
    softmax probabilities P (rows, n_out) or None: c_i u_i, or c_i (p_i * u_i - p_i (p_i . u_i))."""
    if P is None:
        return c[:, None] * U
    return c[:, None] * P * (U - (P * U).sum(axis=1, keepdims=True))


def linear_hessian_product(X, c, P, V, v_b, lam_over_m, xp=np):
    """(HV (n_out, n_in), Hv_b (n_out,)), float64: the Hessian of a one-layer network's J at the point of curvature
    (c, P) (see ``curvature_rows``) times the direction (V, v_b), float64, over X (m, n_in) dense or sparse:
    (1/m) sum_i R_i x_i^T + (lam/m) V and (1/m) sum_i R_i with R_i the curvature applied to u_i = V x_i + v_b.
    ``xp`` is the array module of X and V (NumPy, or CuPy for the cuda backend)."""
    m = X.shape[0]
    HV, Hv_b = xp.zeros(V.shape), xp.zeros(v_b.shape)
    for s in range(0, m, BLOCK_ROWS):
        X_block = X[s : s + BLOCK_ROWS]
        R = curvature_rows(X_block @ V.T + v_b, c[s : s + BLOCK_ROWS], None if P is None else P[s : s + BLOCK_ROWS])
        HV += weight_product(R, X_block)
        Hv_b += R.sum(axis=0)
    return HV / m + lam_over_m * V, Hv_b / m


def linear_gradient_curvature(backend, W, b, X, y, lam_over_m, loss, sample_weight):
    """(dW, db, loss_sum, c, P) of a one-layer network (W (n_out, n_in), b (n_out,)) over (X, y): J's gradient, float64,
    from ``backend.gradients``, and the loss's curvature at (W, b) (see ``curvature_rows``) from ``backend.predict``;
    c (m,) and P (m, n_out) for softmax, else None, float64 in the backend's memory. Logistic: c = w p (1 - p);
    softmax: c = w, P the probabilities; squared error: c = w (w the sample weights, 1 without)."""
    xp = backend.xp
    dW, db, loss_sum = backend.gradients([W], [b], X, y, lam_over_m, "identity", loss, sample_weight)
    yhat = backend.predict([W], [b], X, "identity", loss).astype(np.float64)
    c = xp.ones(len(yhat)) if sample_weight is None else sample_weight.astype(np.float64)
    P = xp.ascontiguousarray(yhat) if loss == "softmax" else None
    if loss == "logistic":
        c = c * yhat[:, 0] * (1 - yhat[:, 0])
    return dW[0], db[0], loss_sum, c, P


def linear_pass(W, b, X, y, lam_over_m, loss, sample_weight, xp=np):
    """``linear_gradient_curvature`` in whole-array operations of xp (NumPy, or CuPy with X a cupyx.scipy.sparse or
    CuPy matrix), block by block: Z = X W^T + b and dW = dZ^T X are one sparse-dense product each (cuSPARSE SpMM on
    the GPU), taken in float64. The cuda backend's pass for sparse X; tested against the reference above."""
    m, n_out = X.shape[0], W.shape[0]
    W64, b64 = W.astype(np.float64), b.astype(np.float64)
    dW, db, loss_sum = xp.zeros(W.shape), xp.zeros(n_out), 0.0
    c = xp.empty(m)
    P = xp.empty((m, n_out)) if loss == "softmax" else None
    for s in range(0, m, BLOCK_ROWS):
        e = min(s + BLOCK_ROWS, m)
        X_block = X[s:e]
        Z = X_block @ W64.T + b64
        w = xp.ones(e - s) if sample_weight is None else sample_weight[s:e].astype(np.float64)
        if loss == "logistic":
            z, t = Z[:, 0], y[s:e, 0].astype(np.float64)
            small = xp.exp(-xp.abs(z))
            L = xp.maximum(z, 0) - t * z + xp.log1p(small)
            p = xp.where(z >= 0, 1 / (1 + small), small / (1 + small))
            dZ = (w * (p - t))[:, None]
            c[s:e] = w * p * (1 - p)
        elif loss == "softmax":
            onehot = xp.zeros(Z.shape)
            onehot[xp.arange(e - s), y[s:e]] = 1.0
            z_max = Z.max(axis=1, keepdims=True)
            E = xp.exp(Z - z_max)
            total = E.sum(axis=1)
            L = xp.log(total) + z_max[:, 0] - (Z * onehot).sum(axis=1)
            P[s:e] = E / total[:, None]
            dZ = w[:, None] * (P[s:e] - onehot)
            c[s:e] = w
        else:
            D = Z - y[s:e].astype(np.float64)
            L = 0.5 * (D * D).sum(axis=1)
            dZ = w[:, None] * D
            c[s:e] = w
        loss_sum += float((w * L).sum())
        dW += weight_product(dZ, X_block)
        db += dZ.sum(axis=0)
    return dW / m + lam_over_m * W64, db / m, loss_sum, c, P


def linear_hessian_diagonal(X, c, P, xp=np):
    """(diag_W (n_out, n_in), diag_b (n_out,)), float64: sum_i d_ik x_ij^2 and sum_i d_ik over X (m, n_in) dense or
    sparse, with d_ik = c_i, or c_i p_ik (1 - p_ik) given P: m times the diagonal of the data part of J's Hessian at
    the point of curvature (c, P) (see ``curvature_rows``). Without P every output has the same diagonal, returned
    once: (1, n_in) and (1,)."""
    diag_W = diag_b = 0.0
    for s in range(0, X.shape[0], BLOCK_ROWS):  # block by block: no (m, n_out) temporaries
        X_block = X[s : s + BLOCK_ROWS]
        c_block = c[s : s + BLOCK_ROWS, None]
        D = c_block if P is None else c_block * P[s : s + BLOCK_ROWS] * (1 - P[s : s + BLOCK_ROWS])
        squares = X_block.multiply(X_block) if is_sparse(X_block) else X_block * X_block
        diag_W = diag_W + weight_product(xp.ascontiguousarray(D, dtype=np.float64), squares)
        diag_b = diag_b + D.sum(axis=0)
    return diag_W, diag_b


def forward_all(weights, biases, X, activation):
    """Every layer's output for the rows of X; the last entry holds the logits."""
    outputs = []
    A = X
    for layer, (W, b) in enumerate(zip(weights, biases)):
        last = layer == len(weights) - 1
        A = dense_forward(A, W, b, "identity" if last else activation)
        outputs.append(A)
    return outputs


def backward_all(weights, X, outputs, dZ, activation, consume):
    """Walks back from the output's dL/dZ; consume(l, dZ, A_prev) sees each layer's gradient after the
    input gradient for the layer below was taken with the old weights[l]."""
    for layer in reversed(range(len(weights))):
        A_prev = X if layer == 0 else outputs[layer - 1]
        dZ_below = None
        if layer > 0:
            dZ_below = activation_backward(dense_backward_input(dZ, weights[layer]), A_prev, activation)
        consume(layer, dZ, A_prev)
        dZ = dZ_below


class HostArrays:
    """Where the numpy and cpu backends keep arrays: in host memory, as NumPy arrays. The cuda backend
    implements the same methods for arrays on the GPU."""

    xp = np

    def features(self, X, n_in, dtype):
        """X validated (see ``_validate.features``) in this backend's memory; a scipy.sparse X as the canonical
        CSR of ``_validate.sparse_features``."""
        if _validate.is_sparse(X):
            return _validate.sparse_features(X, n_in, dtype)
        return _validate.features(X, n_in, dtype)

    def targets(self, y, m, loss, n_out, dtype):
        """y validated (see ``_validate.targets``) in this backend's memory."""
        return _validate.targets(y, m, loss, n_out, dtype)

    def sample_weights(self, sample_weight, m, dtype):
        """sample_weight validated (see ``_validate.sample_weight``) in this backend's memory, or None."""
        return _validate.sample_weight(sample_weight, m, dtype)

    def from_host(self, array):
        """A validated NumPy array in this backend's memory (here: itself)."""
        return array

    def to_host(self, array):
        """A backend array as a NumPy array (here: itself)."""
        return array

    def like_input(self, array, X):
        """A result for the caller, in the array type of their input X (here: NumPy)."""
        return array

    def all_finite(self, arrays):
        return all(bool(np.isfinite(a).all()) for a in arrays)

    def linear_hessian_diagonal(self, X, c, P):
        """See the module's ``linear_hessian_diagonal``."""
        return linear_hessian_diagonal(X, c, P)

    def sum_squares(self, array):
        """sum of squares of the entries, in float64, as a Python float."""
        return float(np.sum(np.square(array, dtype=np.float64)))


class NumpyBackend(HostArrays):
    """backend="numpy": parameters are NumPy arrays, updated in place."""

    name = "numpy"

    def train_epoch(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                    optimizer=None, slots=(), step=0, sample_weight=None, check_finite=True, with_norms=False):
        """One epoch of minibatch steps in place. ``optimizer`` None is the fused L2 step; an
        ``l2fast.optim`` spec (Momentum, Adam) steps with its state ``slots`` (see ``OptimizerState``), the
        epoch's first step being number step + 1. ``sample_weight`` (m,) scales each record's loss.
        Returns (loss_sum, correct); with_norms appends the sum over the steps of sum_l ||W_l||^2 (float64) at
        the weights each step's loss was computed with, before its update."""
        n = len(X) if order is None else len(order)
        loss_sum, correct, norms = 0.0, 0, 0.0
        L = len(weights)
        count = step

        def step_layer(layer, dZ, A_prev):
            if optimizer is None:
                l2_step(weights[layer], biases[layer], dZ, A_prev, lr, lam_over_m)
                return
            batch = len(dZ)
            optimizer_step(weights[layer], weight_product(dZ, A_prev) / batch, [s[layer] for s in slots], lr, lam_over_m,
                           optimizer, count)
            optimizer_step(biases[layer], dZ.sum(axis=0) / batch, [s[L + layer] for s in slots], lr, 0.0,
                           optimizer, count)

        # A diverging run shows as inf or NaN in the loss, which the caller checks: no warnings meanwhile.
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, n, batch_size):
                rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
                X_batch, y_batch = X[rows], y[rows]
                w_batch = None if sample_weight is None else sample_weight[rows]
                outputs = forward_all(weights, biases, X_batch, activation)
                batch_loss, batch_correct, dZ = loss_gradient(outputs[-1], y_batch, loss, w_batch)
                loss_sum += batch_loss
                correct += batch_correct
                count += 1
                if with_norms:
                    norms += sum(self.sum_squares(W) for W in weights)
                backward_all(weights, X_batch, outputs, dZ, activation, step_layer)
        return (loss_sum, correct, norms) if with_norms else (loss_sum, correct)

    def train_epoch_stacked(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                            sample_weight=None, check_finite=True):
        """train_epoch for K models of one shape (weights[k], biases[k], lam_over_m[k]) on one order, as
        one stacked model: each layer's K weight matrices form a (K, n_out, n_in) array and every
        product is one batched matmul. Returns [(loss_sum, correct)] per model."""
        K, L = len(weights), len(weights[0])
        Ws = [np.stack([weights[k][l] for k in range(K)]) for l in range(L)]
        bs = [np.stack([biases[k][l] for k in range(K)]) for l in range(L)]
        lam = np.asarray(lam_over_m, dtype=Ws[0].dtype)[:, None, None]
        n = len(X) if order is None else len(order)
        loss_sums, corrects = [0.0] * K, [0] * K
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, n, batch_size):
                rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
                X_batch, y_batch = X[rows], y[rows]
                w_batch = None if sample_weight is None else sample_weight[rows]
                batch = len(y_batch)
                outputs, A = [], X_batch
                for layer in range(L):
                    if layer == 0 and _validate.is_sparse(A):  # one sparse batch, K products
                        Z = np.stack([A @ W.T for W in Ws[0]]) + bs[0][:, None, :]
                    else:
                        Z = A @ np.swapaxes(Ws[layer], 1, 2) + bs[layer][:, None, :]  # (K, batch, n_out)
                    A = activate(Z, "identity" if layer == L - 1 else activation)
                    outputs.append(A)
                dZ = np.empty_like(outputs[-1])
                for k in range(K):
                    batch_loss, batch_correct, dZ[k] = loss_gradient(outputs[-1][k], y_batch, loss, w_batch)
                    loss_sums[k] += batch_loss
                    corrects[k] += batch_correct
                for layer in reversed(range(L)):
                    A_prev = X_batch if layer == 0 else outputs[layer - 1]
                    dZ_below = None
                    if layer > 0:
                        dZ_below = activation_backward(dZ @ Ws[layer], A_prev, activation)
                    if _validate.is_sparse(A_prev):
                        dW = np.stack([weight_product(dZ_k, A_prev) for dZ_k in dZ])
                    else:
                        dW = np.swapaxes(dZ, 1, 2) @ A_prev
                    Ws[layer] -= lr * (dW / batch + lam * Ws[layer])
                    bs[layer] -= lr * (dZ.sum(axis=1) / batch)
                    dZ = dZ_below
        for k in range(K):
            for layer in range(L):
                weights[k][layer][...] = Ws[layer][k]
                biases[k][layer][...] = bs[layer][k]
        return list(zip(loss_sums, corrects))

    def predict(self, weights, biases, X, activation, loss):
        blocks = [
            output_activation(forward_all(weights, biases, X[s : s + BLOCK_ROWS], activation)[-1], loss)
            for s in range(0, len(X), BLOCK_ROWS)
        ]
        return np.concatenate(blocks)

    def evaluate(self, weights, biases, X, y, activation, loss, sample_weight=None, check_finite=True):
        loss_sum, correct = 0.0, 0
        for s in range(0, len(X), BLOCK_ROWS):
            logits = forward_all(weights, biases, X[s : s + BLOCK_ROWS], activation)[-1]
            w = None if sample_weight is None else sample_weight[s : s + BLOCK_ROWS]
            block_loss, block_correct, _ = loss_gradient(logits, y[s : s + BLOCK_ROWS], loss, w)
            loss_sum += block_loss
            correct += block_correct
        return loss_sum, correct

    def linear_gradient_curvature(self, W, b, X, y, lam_over_m, loss, sample_weight=None):
        """See the module's ``linear_gradient_curvature``."""
        return linear_gradient_curvature(self, W, b, X, y, lam_over_m, loss, sample_weight)

    def linear_hessian_product(self, X, c, P, V, v_b, lam_over_m):
        """See the module's ``linear_hessian_product``; c, P from ``linear_gradient_curvature``."""
        return linear_hessian_product(X, c, P, V, v_b, lam_over_m)

    def gradients(self, weights, biases, X, y, lam_over_m, activation, loss, sample_weight=None, check_finite=True,
                  with_correct=False):
        """(dJ/dW list, dJ/db list, loss_sum) over all of (X, y): float64 arrays, each block's products in
        the network's dtype, summed in float64 (as the cpu kernel does); with_correct appends the count of
        records classified right (unweighted, as ``evaluate``'s). X is not scanned for NaN here (``features``
        did it): ``check_finite`` (as in train_epoch, train_epoch_stacked and evaluate) turns off the cpu
        backend's second scan and changes nothing here."""
        m = len(X)
        dW = [np.zeros(W.shape) for W in weights]
        db = [np.zeros(b.shape) for b in biases]
        loss_sum, correct = 0.0, 0

        def collect(layer, dZ, A_prev):
            dW[layer] += weight_product(dZ, A_prev)
            db[layer] += dZ.sum(axis=0)

        for s in range(0, m, BLOCK_ROWS):
            X_block = X[s : s + BLOCK_ROWS]
            w = None if sample_weight is None else sample_weight[s : s + BLOCK_ROWS]
            outputs = forward_all(weights, biases, X_block, activation)
            block_loss, block_correct, dZ = loss_gradient(outputs[-1], y[s : s + BLOCK_ROWS], loss, w)
            loss_sum += block_loss
            correct += block_correct
            backward_all(weights, X_block, outputs, dZ, activation, collect)
        dW = [g / m + lam_over_m * W.astype(np.float64) for g, W in zip(dW, weights)]
        db = [g / m for g in db]
        return (dW, db, loss_sum, correct) if with_correct else (dW, db, loss_sum)
