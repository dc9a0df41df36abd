"""Shared parameter grids for the test suite."""
import os

# scikit-learn's check_array_api_input runs only when SciPy's array API support was switched on
# before SciPy is first imported; with it, every estimator check runs and none is skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

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
