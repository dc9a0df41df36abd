#include "shuffle.hpp"

namespace l2fast {

std::ptrdiff_t shuffled_order(const std::uint64_t* raw, std::size_t n_raw, std::int64_t* order, std::size_t m) {
    using Wide = unsigned __int128;
    for (std::size_t i = 0; i < m; ++i) order[i] = std::int64_t(i);
    if (m <= 1) return 0;
    if (n_raw < m - 1) return -1;
    std::size_t spare = m - 1;  // the next word a rejection takes
    for (std::size_t i = m - 1; i > 0; --i) {
        const std::uint64_t bound = std::uint64_t(i) + 1;
        Wide product = Wide(raw[m - 1 - i]) * bound;
        if (std::uint64_t(product) < bound) {  // maybe within the biased 2^64 mod bound words: check exactly
            const std::uint64_t threshold = (0 - bound) % bound;
            while (std::uint64_t(product) < threshold) {
                if (spare == n_raw) return -1;
                product = Wide(raw[spare++]) * bound;
            }
        }
        const std::size_t j = std::size_t(product >> 64);
        const std::int64_t held = order[i];
        order[i] = order[j];
        order[j] = held;
    }
    return std::ptrdiff_t(spare);
}

}  // namespace l2fast
