"""Argument checks shared by every backend: each error names the argument it is about.

Arrays come out C-contiguous in the network's dtype, in the layout the kernels take; nothing here
mutates its input.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
LOSSES = ("squared_error", "logistic", "softmax")
DTYPES = ("float32", "float64")


def choice(value, name, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def float_dtype(dtype):
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is not None and resolved.type in (np.float32, np.float64) and resolved.isnative:
        return resolved  # (dtype.name is Python code in NumPy: 2-5 us, a few times a fit)
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    if not resolved.isnative:
        raise ValueError(f"dtype: expected the machine's native byte order, got {dtype!r}")
    return resolved


def integer(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def real(value, name, *, positive):
    """A finite real number, > 0 when positive else >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float64's range
        value = math.inf
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name}: must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value


def layer_sizes(sizes):
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"layer_sizes: expected a sequence of integers such as [n_x, n_1, n_out], got {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes: need at least [n_in, n_out], got {list(sizes)}")
    return tuple(integer(s, f"layer_sizes[{i}]", 1) for i, s in enumerate(sizes))


def parameter_count(sizes):
    """Weights and biases of a dense network with these layer sizes."""
    return sum(n_out * (n_in + 1) for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def available_memory():
    """Bytes of memory the system can still hand out: Linux's MemAvailable, else all physical memory,
    else None (unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def fits_in_memory(n_bytes, what):
    """Refuses, before anything is allocated, n_bytes that the machine's free memory cannot hold."""
    available = available_memory()
    if available is not None and n_bytes > available:
        gib = n_bytes / 2**30 if n_bytes < 2**1000 else math.inf  # layer sizes are Python ints of any size
        raise MemoryError(f"{what} need {gib:.3g} GiB, more than the {available / 2**30:.3g} GiB of "
                          f"memory available")


def _numeric_array(values, name, *, allow_bool=False, xp=np):
    dtype = getattr(values, "dtype", None)
    if dtype is not None and not isinstance(dtype, np.dtype) and str(dtype) == "torch.bfloat16":
        values = values.float()  # torch cannot hand NumPy a bfloat16 tensor; float32 holds it exactly
    try:
        array = xp.asarray(values)
    except Exception as exc:  # a ragged list, an object that refuses __array__
        raise TypeError(f"{name}: cannot be read as an array ({exc})") from exc
    kind = array.dtype.kind
    if kind == "b" and allow_bool:
        return array
    if kind in "iu" or (kind == "f" and array.dtype.itemsize >= 4):
        return array  # the common case, before dtype.name (Python code in NumPy)
    if (kind == "f" and array.dtype.itemsize < 4) or array.dtype.name == "bfloat16":
        return array.astype(np.float32)  # half precision (float16, ml_dtypes' bfloat16): widened exactly
    if kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers (floats or integers), got dtype {array.dtype}")
    return array


def _finite(array, name, xp=np):
    if array.dtype.kind == "f" and not bool(xp.isfinite(array).all()):
        raise ValueError(f"{name}: contains NaN or infinity")


def _finite_as(array, dtype, name, xp=np, all_finite=None):
    """array as a C-contiguous array of dtype, every value finite after the cast: a float64 value
    beyond float32's range becomes infinity in a float32 network, and is refused as such.
    ``all_finite(cast)`` tells whether the cast is finite (default: xp.isfinite(cast).all())."""
    if array.dtype == dtype:  # no cast, nothing to overflow (np.errstate costs more than a small array's check)
        cast = xp.ascontiguousarray(array)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            cast = xp.ascontiguousarray(array, dtype=dtype)
    finite = bool(xp.isfinite(cast).all()) if all_finite is None else all_finite(cast)
    if not finite:
        _finite(array, name, xp)
        raise ValueError(f"{name}: has values beyond the range of {np.dtype(dtype).name} "
                         f"(+-{float(np.finfo(dtype).max):.3g})")
    return cast


def _records_of_width(shape, n_in, name):
    if len(shape) != 2:
        raise ValueError(f"{name}: expected a 2-D array (records, features), got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name}: no records (0 rows)")
    if shape[1] != n_in:
        raise ValueError(f"{name}: expected {n_in} features per record, got {shape[1]}")


def features(X, n_in, dtype, name="X", xp=np, all_finite=None):
    """X as a C-contiguous (m, n_in) array of dtype, m >= 1, all finite. ``xp`` is the array module
    (NumPy, or CuPy for arrays already on a GPU, which are then checked there); ``all_finite`` a faster
    test of the converted array than NumPy's, if the backend has one."""
    if is_sparse(X):  # the host backends take it through sparse_features first
        raise TypeError(f"{name}: a scipy.sparse X is taken through sparse_features (every backend's features() "
                        f"sends it there), not as a dense array; densify it with {name}.toarray() to train on it dense")
    array = _numeric_array(X, name, xp=xp)
    _records_of_width(array.shape, n_in, name)
    return _finite_as(array, dtype, name, xp, all_finite)


def is_sparse(X):
    """Whether X is a scipy.sparse matrix or array (SciPy is imported only when X comes from it)."""
    if isinstance(X, SparseFeatures):
        return True
    if not type(X).__module__.startswith("scipy.sparse"):
        return False
    import scipy.sparse

    return scipy.sparse.issparse(X)


class SparseFeatures:
    """Marker base of the CSR type ``sparse_features`` returns (see there)."""


def _sparse_features_type():
    import scipy.sparse

    class CSRFeatures(SparseFeatures, scipy.sparse.csr_array):
        """A canonical CSR array whose len() is its number of rows, as a dense X's is (scipy.sparse refuses
        len()), so that X flows through the model's code as a dense X does."""

        def __len__(self):
            return self.shape[0]

    return CSRFeatures


_CSR_FEATURES = None


def sparse_features(X, n_in, dtype, name="X"):
    """A scipy.sparse X (CSR, CSC, COO, ... matrix or array; m >= 1 rows, n_in columns) converted once to
    canonical CSR in dtype: column indices sorted within each row, duplicates summed, int32 or int64 indices
    (indptr of the same type), every stored value finite; empty rows are fine. X itself is never changed."""
    global _CSR_FEATURES
    if _CSR_FEATURES is None:
        _CSR_FEATURES = _sparse_features_type()
    _records_of_width(X.shape, n_in, name)
    if X.dtype.kind not in "iuf" or X.dtype == np.float16:
        raise TypeError(f"{name}: expected real numbers (float32, float64 or integers), got dtype {X.dtype}")
    csr = X.tocsr()  # X itself when it is CSR already
    if not csr.has_canonical_format:
        csr = csr.astype(dtype) if csr.dtype != dtype else csr.copy() if csr is X else csr
        csr.sum_duplicates()  # in place (on a copy); also sorts each row's indices
    # A canonical CSR in another dtype gets new values only: its index arrays are used as they are, as they are when
    # no conversion is needed (the kernels stay within X's arrays whatever they come to hold).
    data = csr.data if csr.dtype == dtype else csr.data.astype(dtype)
    if not bool(np.isfinite(data).all()):
        raise ValueError(f"{name}: contains NaN or infinity" + ("" if X.dtype == data.dtype else
                                                                  f" (or a value beyond {np.dtype(dtype).name})"))
    index_dtype = np.int32 if csr.indices.dtype == np.int32 and csr.indptr.dtype == np.int32 else np.int64
    out = _CSR_FEATURES((np.ascontiguousarray(data),
                         np.ascontiguousarray(csr.indices, dtype=index_dtype),
                         np.ascontiguousarray(csr.indptr, dtype=index_dtype)), shape=csr.shape, copy=False)
    return out


def targets(y, m, loss, n_out, dtype, name="y", xp=np):
    """y in the kernels' layout: int64 labels (m,) for softmax, dtype (m, n_out) values otherwise."""
    array = _numeric_array(y, name, allow_bool=loss == "logistic", xp=xp)
    if loss == "softmax":
        if array.ndim != 1 or len(array) != m:
            raise ValueError(f"{name}: expected {m} class labels of shape ({m},), got shape {array.shape}")
        _finite(array, name, xp)
        # Range first, on the labels as given: a cast to int64 would wrap 2**64 - 1 to -1 (and 1e30 to anything).
        bad = (array < 0) | (array >= n_out)
        if bool(bad.any()):
            where = int(xp.argmax(bad))
            got = array[where].item()
            raise ValueError(f"{name}: class labels must lie in [0, {n_out - 1}], got {got:g} at index {where}"
                             if isinstance(got, float) else
                             f"{name}: class labels must lie in [0, {n_out - 1}], got {got} at index {where}")
        labels = array.astype(np.int64, copy=False)  # no copy of int64 labels: a GPU graph keeps their address
        if array.dtype.kind == "f" and not bool(xp.array_equal(labels, array)):
            raise ValueError(f"{name}: class labels must be integers, got non-integer values")
        return xp.ascontiguousarray(labels)
    if array.ndim == 1 and n_out == 1:
        array = array[:, None]
    if array.shape != (m, n_out):
        want = f"({m},) or ({m}, 1)" if n_out == 1 else f"({m}, {n_out})"
        raise ValueError(f"{name}: expected shape {want}, got {array.shape}")
    values = _finite_as(array, dtype, name, xp)
    if loss == "logistic" and not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"{name}: logistic labels must be 0 or 1")
    return values


def sample_weight(w, m, dtype, name="sample_weight", xp=np):
    """None, or the weights as a C-contiguous (m,) array of dtype: finite, >= 0, not all zero. A scalar
    gives every record that weight."""
    if w is None:
        return None
    array = _numeric_array(w, name, xp=xp)
    if array.ndim == 0:
        array = xp.full(m, array, dtype=dtype)
    if array.shape != (m,):
        raise ValueError(f"{name}: expected one weight per record, shape ({m},), got shape {array.shape}")
    weights = _finite_as(array, dtype, name, xp)
    if bool((weights < 0).any()):
        where = int(xp.argmax(weights < 0))
        raise ValueError(f"{name}: weights must be >= 0, got {float(weights[where])} at index {where}")
    if not bool((weights > 0).any()):
        raise ValueError(f"{name}: every weight is zero; at least one record must count")
    return weights


def parameters(weights, biases, sizes, dtype):
    """Fresh C-contiguous copies of weights[l] (n_l, n_{l-1}) and biases[l] (n_l,), all finite."""
    n_layers = len(sizes) - 1
    for name, arrays in (("weights", weights), ("biases", biases)):
        if isinstance(arrays, np.ndarray) or not hasattr(arrays, "__len__") or len(arrays) != n_layers:
            raise ValueError(f"{name}: expected a list of {n_layers} arrays, one per layer")
    new_weights, new_biases = [], []
    for layer in range(n_layers):
        for name, values, shape, out in (
            (f"weights[{layer}]", weights[layer], (sizes[layer + 1], sizes[layer]), new_weights),
            (f"biases[{layer}]", biases[layer], (sizes[layer + 1],), new_biases),
        ):
            array = _numeric_array(values, name)
            if array.shape != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
            cast = _finite_as(array, dtype, name)
            out.append(cast.copy() if np.may_share_memory(cast, array) else cast)
    return new_weights, new_biases
