"""The cuda backend's sparse X on the host stand-in of the GPU (tests/cuda_emulation.py) with a stand-in for
cupyx.scipy.sparse over scipy.sparse: NewtonCG on sparse X resident on the "GPU" against the same X dense and the
reference, and the passes that read X through raw pointers refusing sparse X. None of this has run on a GPU:
cupyx's products (cuSPARSE SpMM) are here SciPy's."""
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

import l2fast
from l2fast.backends import numpy_ref
from l2fast.testing import assert_parity

from cuda_emulation import emulated_gpu
from test_sparse import messy_csr


def fake_cupyx():
    """cupyx, cupyx.scipy and cupyx.scipy.sparse with a csr_matrix over host arrays (scipy's), enough for the
    backend's DeviceCSR."""
    class csr_matrix(sp.csr_matrix):
        def __init__(self, arg1, shape=None, dtype=None, copy=False):
            if isinstance(arg1, tuple) and len(arg1) == 3:
                arg1 = tuple(np.asarray(a).view(np.ndarray) for a in arg1)
            super().__init__(arg1, shape=shape, dtype=dtype, copy=copy)

    modules = {name: types.ModuleType(name) for name in ("cupyx", "cupyx.scipy", "cupyx.scipy.sparse")}
    modules["cupyx.scipy.sparse"].csr_matrix = csr_matrix
    modules["cupyx.scipy.sparse"].issparse = sp.issparse
    modules["cupyx"].scipy = modules["cupyx.scipy"]
    modules["cupyx.scipy"].sparse = modules["cupyx.scipy.sparse"]
    return modules


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    with emulated_gpu(monkeypatch, tmp_path):
        for name, module in fake_cupyx().items():
            monkeypatch.setitem(sys.modules, name, module)
        from l2fast.backends import cuda

        monkeypatch.setattr(cuda, "_DEVICE_CSR", [])
        yield


def problem(loss, dtype, seed=3):
    X, dense = messy_csr(150, 25, seed, density=0.2, dtype=dtype)
    rng = np.random.default_rng(seed)
    n_out = 1 if loss == "logistic" else 4
    y = rng.integers(0, 2 if loss == "logistic" else n_out, 150) if loss != "squared_error" else \
        rng.normal(size=(150, n_out))
    return X, dense.astype(dtype), y, rng.uniform(0.5, 2, 150), n_out


@pytest.mark.parametrize("loss", ["logistic", "softmax", "squared_error"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_linear_pass_matches_the_reference_on_the_host(loss, dtype):
    """numpy_ref.linear_pass (the cuda backend's sparse pass, in array operations) against the reference's
    gradients-and-predict composition, on scipy.sparse and dense X."""
    X, dense, y, w, n_out = problem(loss, dtype)
    net = l2fast.Network([25, n_out], loss=loss, lam=0.9, backend="numpy", dtype=dtype, seed=1)
    X_b, y_b, w_b = net._data(X, y, w)
    backend = net._backend
    reference = backend.linear_gradient_curvature(net._weights[0], net._biases[0], X_b, y_b, 0.9 / 150, loss, w_b)
    for X_in in (X_b, backend.features(dense, 25, net.dtype)):
        ours = numpy_ref.linear_pass(net._weights[0], net._biases[0], X_in, y_b, 0.9 / 150, loss, w_b)
        for a, b in zip(ours, reference):
            if b is not None:
                assert_parity(a, b, dtype, "linear pass")


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_newton_cg_on_sparse_x_resident_on_the_gpu_stand_in(gpu, loss, dtype):
    X, dense, y, w, n_out = problem(loss, dtype)
    tol = 1e-7 if dtype == "float64" else 1e-4
    fits = {}
    for name, backend, X_in in (("cuda sparse", "cuda", X), ("cuda dense", "cuda", dense), ("numpy", "numpy", X)):
        net = l2fast.Network([25, n_out], loss=loss, lam=0.9, backend=backend, dtype=dtype, seed=2)
        assert net.fit(X_in, y, epochs=50, optimizer=l2fast.NewtonCG(tol=tol), sample_weight=w).converged
        fits[name] = net
    from l2fast.backends import cuda

    assert cuda._DEVICE_CSR, "the sparse X was not made a device CSR"
    for name in ("cuda sparse", "cuda dense"):
        for a, b in zip(fits[name].weights + fits[name].biases, fits["numpy"].weights + fits["numpy"].biases):
            assert_parity(a, b, "float32", f"{name} parameters")


def test_cuda_passes_that_read_raw_pointers_refuse_sparse_x(gpu):
    X, dense, y, _, _ = problem("softmax", "float32")
    net = l2fast.Network([25, 4], backend="cuda", seed=0)
    before = net.weights
    for call in (lambda: net.fit(X, y, epochs=1, batch_size=10), lambda: net.predict(X), lambda: net.cost(X, y),
                 lambda: net.gradients(X, y), lambda: net.fit(X, y, epochs=2, optimizer="lbfgs")):
        with pytest.raises(TypeError, match="backend='cuda' takes scipy.sparse X in the linear solver"):
            call()
    for a, b in zip(net.weights, before):
        np.testing.assert_array_equal(a, b)
    assert net.cost(dense, y) > 0
