// The order of an epoch's records: a uniformly random permutation drawn from raw 64-bit words.
#pragma once

#include <cstddef>
#include <cstdint>

namespace l2fast {

// Writes a permutation of 0..m-1 into order (m entries), drawn by Fisher-Yates from the raw 64-bit words `raw`
// (n_raw of them, e.g. NumPy's BitGenerator.random_raw): for i = m-1 down to 1, order[i] is swapped with order[j],
// j uniform in [0, i], taken from the next word by Lemire's multiply-and-shift, j = (word * (i + 1)) >> 64. The
// words are used in turn, one per i; a word whose product's low half falls below 2^64 mod (i + 1) is rejected (as
// that method requires, so j is exactly uniform) and replaced by the next unused word after the first m-1. That
// happens with a probability below (i + 1) / 2^64, about once in 1.8e14 draws at m = 100 000. Returns the number
// of words used (at least m-1; 0 for m <= 1), or -1 when a rejection found no spare word left, in which case the
// caller draws more words and calls again. The draws do not depend on the swaps, so the loop runs at memory
// speed: 0.2-0.3 ms for m = 100 000 (about 0.9 ms with drawing the words and a fresh array), against 1.2-1.8 ms
// for NumPy's Generator.permutation, whose bounded draws (masked rejection) each wait on the generator.
std::ptrdiff_t shuffled_order(const std::uint64_t* raw, std::size_t n_raw, std::int64_t* order, std::size_t m);

// shuffled_order with the words drawn as it goes from a generator (next_raw(state): NumPy's bit generators' raw
// words, those random_raw gives), then spare_words more drawn and dropped: the order and the generator's state are
// those of shuffled_order on random_raw(m - 1 + spare_words), without that array, whose 800 KB (m = 100 000) and the
// order's, fresh every epoch, glibc gave back and faulted in again (about 0.5 ms of a 0.9 ms draw). Returns false,
// having drawn some words, when m <= 1 or a word was rejected (which would take a spare from the end): the caller
// then puts the generator back and takes shuffled_order's path.
bool shuffled_order_drawn(std::uint64_t (*next_raw)(void*), void* state, std::int64_t* order, std::size_t m,
                          std::size_t spare_words);

}  // namespace l2fast
