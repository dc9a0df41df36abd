"""``l2fast.Dataset``: training data checked and converted once, for many calls.

Every ``fit``, ``cost`` or ``score`` on plain arrays checks X and y again (shape, dtype, every value
finite) and converts them to the network's dtype and the backend's memory: 72 ms a call for a float64
60k x 784 X and a float32 network on the 2-core machine. A ``Dataset`` pays that once per (backend,
dtype, layout) and hands the same converted arrays to every later call.

It is a snapshot, not a view: it keeps copies of its own, made read-only, so nothing the caller does
to the arrays passed in (or to ``dataset.X``, which refuses writes) can change what the kernels read
under them. To train on changed data, build a new ``Dataset``.
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike


def _frozen_copy(array):
    """A private copy: read-only for dense host data; a GPU array (CuPy, torch) is copied where it lies, a
    scipy.sparse matrix as itself."""
    if hasattr(array, "__cuda_array_interface__") or type(array).__module__.split(".")[0] in ("cupy", "torch"):
        return array.detach().clone() if hasattr(array, "detach") else array.copy()
    if hasattr(array, "tocsr"):  # scipy.sparse: a copy, converted once per network like any sparse X
        return array.copy()
    copy = np.array(array, copy=True)
    copy.flags.writeable = False
    return copy


class Dataset:
    """X (m, n_x), y and optional sample weights (m,), checked once per backend and dtype.

    Pass it wherever ``fit``, ``cost``, ``cost_parts``, ``gradients``, ``score``, ``predict`` or
    ``predict_proba`` take X (then without y and sample_weight), or as ``validation_data``.
    """

    def __init__(self, X: ArrayLike, y: Optional[ArrayLike] = None, sample_weight: Optional[ArrayLike] = None):
        self.X = _frozen_copy(X)
        self.y = None if y is None else _frozen_copy(y)
        self.sample_weight = None if sample_weight is None else _frozen_copy(sample_weight)
        self._converted = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.X)

    def __repr__(self) -> str:
        return (f"Dataset(X {self.X.shape} {self.X.dtype}, y {None if self.y is None else self.y.shape}, "
                f"sample_weight {'given' if self.sample_weight is not None else 'none'})")

    def with_targets(self, y: ArrayLike, sample_weight: Optional[ArrayLike] = None) -> "Dataset":
        """A Dataset of this X with other y (and sample weights): X is shared, not copied, and so are the
        conversions of it made so far. (The estimators hand ``Network.fit`` encoded labels this way.)"""
        other = Dataset.__new__(Dataset)
        other.X = self.X
        other.y = _frozen_copy(y)
        other.sample_weight = None if sample_weight is None else _frozen_copy(sample_weight)
        with self._lock:
            other._converted = {key: value for key, value in self._converted.items() if key[0] == "X"}
        other._lock = threading.Lock()
        return other

    def features_for(self, backend, n_in, dtype):
        """X checked and converted for a backend and dtype: the same array on every call."""
        key = ("X", backend.name, np.dtype(dtype).str, n_in)
        return self._cached(key, lambda: backend.features(self.X, n_in, dtype))

    def data_for(self, backend, n_in, loss, n_out, dtype):
        """(X, y[, weights]) checked and converted as ``Network._data`` makes them, cached by layout."""
        if self.y is None:
            raise ValueError("X: this Dataset has no y; build it as l2fast.Dataset(X, y)")
        X = self.features_for(backend, n_in, dtype)
        key = ("y", backend.name, np.dtype(dtype).str, loss, n_out)
        y = self._cached(key, lambda: backend.targets(self.y, len(X), loss, n_out, dtype))
        if self.sample_weight is None:
            return X, y
        key = ("w", backend.name, np.dtype(dtype).str)
        return X, y, self._cached(key, lambda: backend.sample_weights(self.sample_weight, len(X), dtype))

    def _cached(self, key, make):
        with self._lock:
            if key not in self._converted:
                self._converted[key] = make()
            return self._converted[key]
