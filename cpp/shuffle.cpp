#include "shuffle.hpp"

#include <utility>

namespace l2fast {

namespace {

// Fisher-Yates as shuffled_order describes it on order[0..m), m >= 2: next_word() gives position i's word (from
// i = m-1 down), spare_word(word) a rejected word's replacement, or false when there is none.
template <class Next, class Spare>
bool fisher_yates(std::int64_t* order, std::size_t m, Next next_word, Spare spare_word) {
    using Wide = unsigned __int128;
    for (std::size_t i = m - 1; i > 0; --i) {
        const std::uint64_t bound = std::uint64_t(i) + 1;
        Wide product = Wide(next_word()) * bound;
        if (std::uint64_t(product) < bound) {  // maybe within the biased 2^64 mod bound words: check exactly
            const std::uint64_t threshold = (0 - bound) % bound;
            while (std::uint64_t(product) < threshold) {
                std::uint64_t word;
                if (!spare_word(word)) return false;
                product = Wide(word) * bound;
            }
        }
        std::swap(order[i], order[std::size_t(product >> 64)]);
    }
    return true;
}

}  // namespace

std::ptrdiff_t shuffled_order(const std::uint64_t* raw, std::size_t n_raw, std::int64_t* order, std::size_t m) {
    for (std::size_t i = 0; i < m; ++i) order[i] = std::int64_t(i);
    if (m <= 1) return 0;
    if (n_raw < m - 1) return -1;
    std::size_t next = 0, spare = m - 1;  // the next word of a position, and the next word a rejection takes
    const bool drawn = fisher_yates(order, m, [&] { return raw[next++]; }, [&](std::uint64_t& word) {
        if (spare == n_raw) return false;
        word = raw[spare++];
        return true;
    });
    return drawn ? std::ptrdiff_t(spare) : -1;
}

bool shuffled_order_drawn(std::uint64_t (*next_raw)(void*), void* state, std::int64_t* order, std::size_t m,
                          std::size_t spare_words) {
    for (std::size_t i = 0; i < m; ++i) order[i] = std::int64_t(i);
    if (m <= 1) return false;
    if (!fisher_yates(order, m, [&] { return next_raw(state); }, [](std::uint64_t&) { return false; })) return false;
    for (std::size_t s = 0; s < spare_words; ++s) next_raw(state);
    return true;
}

}  // namespace l2fast
