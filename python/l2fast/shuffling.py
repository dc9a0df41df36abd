"""The order of an epoch's records: one uniformly random permutation per epoch, the same on every backend.

Fisher-Yates over raw 64-bit words of the network's seeded generator (``BitGenerator.random_raw``): for i = m-1
down to 1, position i swaps with j = (word * (i + 1)) >> 64 (Lemire's multiply-and-shift), one word per i, and a word
in the biased sliver (low half of the product below 2^64 mod (i + 1), odds under (i + 1) / 2^64) is rejected and
replaced by a spare word drawn after the m-1 others, so every permutation is exactly equally likely. The words are
drawn in one vectorised call and the swaps depend on no draw, so the compiled version (``_core.epoch_order``,
cpp/shuffle.cpp) takes about 0.9 ms for m = 100 000 (the words 0.2-0.4 ms, the swaps 0.2-0.3 ms, the rest a fresh
array's pages) where NumPy's ``Generator.permutation`` takes 1.2-1.8 ms (its bounded draws each wait on the
generator). Since session 12 the compiled module draws the words itself as the swaps go
(``_core.epoch_order_drawn``, the same words and order): 0.3-0.4 ms, about half of the 0.9 ms having been the
faults of the words' and the order's fresh 800 KB arrays. ``python_order`` is the same algorithm in Python, for a
build without the compiled module and as the compiled one's specification in the tests.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from l2fast import threads

SPARE_WORDS = 4  # words drawn beyond the m-1 for rejections; more are drawn, and the order redrawn, if they run out


def epoch_order(rng: np.random.Generator, m: int) -> np.ndarray:
    """A uniformly random permutation of range(m) (int64) from ``rng``'s bit generator, which moves on by the words
    used to draw it (m - 1 + SPARE_WORDS, more in the rare case that the spares run out)."""
    bit_generator = rng.bit_generator
    draw_as_it_goes = getattr(threads._core, "epoch_order_drawn", None)
    if draw_as_it_goes is not None and m > 1 and isinstance(bit_generator, np.random.BitGenerator):
        # the words drawn as the swaps go, without random_raw's array (see cpp/shuffle.hpp); a rejected word (odds
        # under m / 2^64 a draw) puts the generator back for the path below, which has the spare words
        with bit_generator.lock:
            state = bit_generator.state
            order = draw_as_it_goes(bit_generator.capsule, m, SPARE_WORDS)
            if order is not None:
                return order
            bit_generator.state = state
    draw = threads._core.epoch_order if threads._core is not None else python_order
    raw = bit_generator.random_raw(max(m - 1, 0) + SPARE_WORDS)
    while True:
        drawn = draw(raw, m)
        if drawn is not None:
            return drawn[0]
        raw = np.concatenate([raw, rng.bit_generator.random_raw(SPARE_WORDS)])


def python_order(raw: np.ndarray, m: int) -> Optional[Tuple[np.ndarray, int]]:
    """``_core.epoch_order`` in Python: (the permutation, the words used), or None when the spare words ran out."""
    order = np.arange(m, dtype=np.int64)
    if m <= 1:
        return order, 0
    words = [int(w) for w in raw]
    if len(words) < m - 1:
        return None
    spare = m - 1
    for i in range(m - 1, 0, -1):
        bound = i + 1
        product = words[m - 1 - i] * bound
        threshold = (2**64 - bound) % bound
        while product % 2**64 < threshold:
            if spare == len(words):
                return None
            product = words[spare] * bound
            spare += 1
        j = product >> 64
        order[i], order[j] = order[j], order[i]
    return order, spare
