"""Shared parameter grids for the test suite."""
import os

# scikit-learn's check_array_api_input runs only when SciPy's array API support was switched on
# before SciPy is first imported; with it, every estimator check runs and none is skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import sys  # noqa: E402

import pytest  # noqa: E402

from l2fast._validate import ACTIVATIONS, LOSSES  # noqa: E402

# (loss, n_out) pairs that exercise each output layer; squared_error with two targets.
LOSS_OUTPUTS = [("softmax", 3), ("logistic", 1), ("squared_error", 2)]


@pytest.fixture(params=ACTIVATIONS)
def activation(request):
    return request.param


@pytest.fixture(params=LOSS_OUTPUTS, ids=[loss for loss, _ in LOSS_OUTPUTS])
def loss_out(request):
    return request.param


assert {loss for loss, _ in LOSS_OUTPUTS} == set(LOSSES)


@pytest.fixture(scope="session")
def kernel_folder(tmp_path_factory):
    """Where the host stand-in of the GPU compiles the cuda kernels, once per session."""
    return tmp_path_factory.mktemp("host_kernels")


@pytest.fixture
def emulated(monkeypatch, kernel_folder):
    """backend="cuda" on the host stand-in of the GPU alone (tests/cuda_emulation.py), for what only it can count
    (captures, cuBLAS handles, sparse products); yields its stand-in for cupy."""
    from cuda_emulation import emulated_gpu

    with emulated_gpu(monkeypatch, kernel_folder):
        yield sys.modules["cupy"]
