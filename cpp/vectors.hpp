// 32 bytes of float or double as one vector, through GCC's vector extension: an AVX register in the AVX2 clones of
// the kernels, an SSE pair in the default ones. Loaded and stored unaligned.
#pragma once

#include <cstring>
#include <type_traits>

namespace l2fast {

typedef float FloatVec __attribute__((vector_size(32)));
typedef double DoubleVec __attribute__((vector_size(32)));
template <class T>
using Vec = std::conditional_t<std::is_same_v<T, float>, FloatVec, DoubleVec>;
template <class T>
constexpr std::size_t kWidth = 32 / sizeof(T);

// Always inlined, so that no vector crosses a call in the default clone. GCC still warns of that ABI wherever a
// vector is a value in a function compiled without AVX; the kernels that include this header pass none across calls,
// so the warning is off from here on in them.
#pragma GCC diagnostic ignored "-Wpsabi"
template <class V, class T>
[[gnu::always_inline]] inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <class V, class T>
[[gnu::always_inline]] inline void store(T* p, const V& v) {
    std::memcpy(p, &v, sizeof v);
}

}  // namespace l2fast
