// Vector exp and log1p: glibc's libmvec, when the build found it (L2FAST_HAVE_LIBMVEC).
//
// glibc declares its vector variants of the math functions only under -ffast-math, which would also let
// the compiler assume that no value is NaN or infinite and reorder sums: neither is acceptable here. These
// declarations add to exp, log1p, expf and log1pf the same `simd` attribute glibc's headers would, and
// nothing else, so that a loop with no reduction that calls them runs on vectors of values
// (_ZGVdN4v_exp in the avx2 clone, _ZGVbN2v_exp in the default one, and so on), each value within libmvec's
// 4 ulp of the exact result. Elsewhere (no libmvec) the loops call the scalar functions.
#pragma once

#ifdef L2FAST_HAVE_LIBMVEC
extern "C" {
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
__attribute__((simd("notinbranch"))) double log1p(double) noexcept;
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) float log1pf(float) noexcept;
}
#endif
