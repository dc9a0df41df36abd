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
