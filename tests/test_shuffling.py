"""The epoch order (l2fast.shuffling): the compiled Fisher-Yates against its Python specification word for word,
Lemire's rejection and the redraw when spare words run out, uniformity, its checks, and fit's use of it."""
import itertools

import numpy as np
import pytest
import scipy.stats

import l2fast
from l2fast import _core, shuffling
from l2fast.testing import make_problem


@pytest.mark.parametrize("m", [0, 1, 2, 3, 17, 256, 1001])
def test_compiled_order_is_the_python_one(m):
    raw = np.random.default_rng(m).bit_generator.random_raw(max(m - 1, 0) + 3)
    order, used = _core.epoch_order(raw, m)
    expected, expected_used = shuffling.python_order(raw, m)
    assert order.dtype == np.int64 and order.shape == (m,)
    np.testing.assert_array_equal(order, expected)
    assert used == expected_used == max(m - 1, 0)
    np.testing.assert_array_equal(np.sort(order), np.arange(m))


def test_rejected_words_are_replaced_by_spares():
    # A zero word's product has a zero low half, below 2^64 mod (i + 1) whenever i + 1 is not a power of two: it is
    # rejected and the next spare word is used. Bound 2 (i = 1) never rejects.
    m = 6
    rng = np.random.default_rng(5)
    words = rng.bit_generator.random_raw(m - 1 + 3)
    words[0] = 0  # i = 5, bound 6: rejected
    words[2] = 0  # i = 3, bound 4 (a power of two): kept, j = 0
    words[3] = 0  # i = 2, bound 3: rejected
    order, used = _core.epoch_order(words, m)
    assert used == m - 1 + 2
    np.testing.assert_array_equal(order, shuffling.python_order(words, m)[0])
    # the same order as drawing the two spares in place of the rejected words
    by_hand = words[:m - 1].copy()
    by_hand[0], by_hand[3] = words[m - 1], words[m]
    expected = np.arange(m)
    for i in range(m - 1, 0, -1):
        j = (int(by_hand[m - 1 - i]) * (i + 1)) >> 64
        expected[[i, j]] = expected[[j, i]]
    np.testing.assert_array_equal(order, expected)


@pytest.mark.parametrize("bits", [np.random.PCG64, np.random.MT19937, np.random.Philox])
@pytest.mark.parametrize("m", [2, 3, 17, 1001, 100_000])
def test_order_drawn_as_it_goes_is_the_order_of_random_raw(bits, m):
    # epoch_order draws the words as the swaps go (_core.epoch_order_drawn): the order and the generator's state
    # after it are those of the path through random_raw's words
    rng, twin = np.random.Generator(bits(m)), np.random.Generator(bits(m))
    order = shuffling.epoch_order(rng, m)
    raw = twin.bit_generator.random_raw(m - 1 + shuffling.SPARE_WORDS)
    expected = (_core.epoch_order(raw, m) if m > 2000 else shuffling.python_order(raw, m))[0]
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_array_equal(rng.bit_generator.random_raw(8), twin.bit_generator.random_raw(8))  # same state


def test_a_rejection_while_drawing_puts_the_generator_back(monkeypatch):
    # a rejected word would need a spare from the end: epoch_order_drawn returns None having drawn words, and
    # epoch_order puts the generator back and takes random_raw's words
    drawn = _core.epoch_order_drawn

    def rejected(capsule, m, spares):
        drawn(capsule, m // 2, spares)  # some words drawn
        return None

    monkeypatch.setattr(_core, "epoch_order_drawn", rejected)
    rng, twin = np.random.default_rng(4), np.random.default_rng(4)
    order = shuffling.epoch_order(rng, 50)
    raw = twin.bit_generator.random_raw(49 + shuffling.SPARE_WORDS)
    np.testing.assert_array_equal(order, shuffling.python_order(raw, 50)[0])
    np.testing.assert_array_equal(rng.bit_generator.random_raw(8), twin.bit_generator.random_raw(8))  # same state


def test_spares_running_out_asks_for_more_words():
    words = np.zeros(4, dtype=np.uint64)  # m = 5: bound 5 rejects the zero word, and no spare is left
    assert _core.epoch_order(words, 5) is None
    assert shuffling.python_order(words, 5) is None
    assert _core.epoch_order(words[:2], 5) is None  # fewer than m - 1 words

    class Bits:
        def __init__(self):
            self.calls, self.rng = [], np.random.default_rng(9).bit_generator

        def random_raw(self, n):
            self.calls.append(n)
            return np.zeros(n, np.uint64) if len(self.calls) == 1 else self.rng.random_raw(n)

    class Rng:
        bit_generator = Bits()

    rng = Rng()
    order = shuffling.epoch_order(rng, 7)
    assert rng.bit_generator.calls[0] == 6 + shuffling.SPARE_WORDS and len(rng.bit_generator.calls) >= 2
    np.testing.assert_array_equal(np.sort(order), np.arange(7))


def test_every_order_is_equally_likely():
    rng = np.random.default_rng(2026)
    m, draws = 4, 24_000
    index = {p: k for k, p in enumerate(itertools.permutations(range(m)))}
    counts = np.zeros(len(index))
    for _ in range(draws):
        counts[index[tuple(shuffling.epoch_order(rng, m))]] += 1
    assert scipy.stats.chisquare(counts).pvalue > 1e-4
    # and where each record lands, for a longer order
    m, draws = 9, 9_000
    places = np.zeros((m, m))
    for _ in range(draws):
        places[np.arange(m), shuffling.epoch_order(rng, m)] += 1
    assert scipy.stats.chisquare(places.ravel()).pvalue > 1e-4


def test_orders_follow_the_generator():
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    first = shuffling.epoch_order(a, 1000)
    np.testing.assert_array_equal(first, shuffling.epoch_order(b, 1000))
    assert a.bit_generator.state == b.bit_generator.state
    assert not np.array_equal(first, shuffling.epoch_order(a, 1000))  # the generator moved on


@pytest.mark.parametrize("raw, m, error, match", [
    (np.zeros(4, np.int64), 5, TypeError, "raw: expected dtype uint64"),
    (np.zeros((2, 2), np.uint64), 5, ValueError, "raw: expected shape"),
    (np.zeros(8, np.uint64)[::2], 5, ValueError, "raw: array must be C-contiguous"),
    ([1, 2, 3], 3, TypeError, "raw: expected a numpy.ndarray"),
    (np.zeros(4, np.uint64), -1, ValueError, "m must be >= 0"),
])
def test_bad_words_are_refused(raw, m, error, match):
    with pytest.raises(error, match=match):
        _core.epoch_order(raw, m)


def test_fit_trains_in_the_drawn_orders():
    # A fit's epochs take their orders from the network's shuffle generator, one epoch_order per epoch: the same
    # parameters as train_epoch run by hand in those orders.
    X, y = make_problem("logistic", 8, 1, 300, seed=4)
    net = l2fast.Network([8, 5, 1], loss="logistic", backend="numpy", seed=1, lam=0.5)
    by_hand = l2fast.Network([8, 5, 1], loss="logistic", backend="numpy", seed=1, lam=0.5)
    net.fit(X, y, epochs=3, lr=0.1, batch_size=64)
    rng = by_hand._shuffle_rng
    backend = by_hand._backend
    Xc, yc = by_hand._data(X, y)
    for _ in range(3):
        backend.train_epoch(by_hand._weights, by_hand._biases, Xc, yc, shuffling.epoch_order(rng, 300), 64, 0.1,
                            0.5 / 300, by_hand.activation, by_hand.loss, None, None, 0, check_finite=False)
    for a, b in zip(net.weights + net.biases, by_hand.weights + by_hand.biases):
        np.testing.assert_array_equal(a, b)


def test_orders_reuse_the_memory_of_dead_ones_and_never_of_live_ones():
    # The int64 arrays made every epoch (orders, the private copies of orders and labels) take kept buffers: an epoch
    # of 100k records otherwise faulted 800 KB of fresh pages in for each (bindings.cpp, Int64Buffers)
    rng = np.random.default_rng(3)
    m = 100_000
    first = shuffling.epoch_order(rng, m)
    address = first.ctypes.data
    del first
    again = shuffling.epoch_order(rng, m)
    assert again.ctypes.data == address  # the dead order's buffer
    kept = again.copy()
    others = [shuffling.epoch_order(rng, m) for _ in range(6)] + [shuffling.epoch_order(rng, 10)]
    addresses = {again.ctypes.data} | {o.ctypes.data for o in others}
    assert len(addresses) == len(others) + 1  # live arrays never share a buffer
    np.testing.assert_array_equal(again, kept)
    for order in [again] + others:
        np.testing.assert_array_equal(np.sort(order), np.arange(len(order)))
    # an epoch's private copy of the order comes from (and goes back to) the same list, and leaves the orders alive as
    # they were
    X, y = make_problem("softmax", 5, 3, 400, seed=3)
    weights = [np.random.default_rng(0).normal(size=(3, 5))]
    biases = [np.zeros(3)]
    order = shuffling.epoch_order(rng, 400)
    before = order.copy()
    _core.train_epoch(weights, biases, X, y, order, 32, 0.1, 0.0, "relu", "softmax")
    np.testing.assert_array_equal(order, before)
    np.testing.assert_array_equal(again, kept)
