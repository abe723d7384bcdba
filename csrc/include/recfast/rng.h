// Counter-based random numbers shared by the CPU and CUDA kernels.
//
// A draw is a pure function of (seed, stream, counter): the kernels use the batch position as the
// stream and the draw number as the counter, so results do not depend on thread count, on how a
// batch is split, or on the backend. The generator is SplitMix64 over a Weyl sequence whose start
// is a hash of (seed, stream).
#pragma once
#include <cstdint>

#include "recfast/common.h"

namespace recfast {

RF_HD std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

RF_HD std::uint64_t rng_key(std::uint64_t seed, std::uint64_t stream) {
  return splitmix64(splitmix64(seed) ^ (stream * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
}

// 64 random bits for draw `counter` of the stream with this key.
RF_HD std::uint64_t rng_bits(std::uint64_t key, std::uint64_t counter) {
  return splitmix64(key + counter * 0x9E3779B97F4A7C15ull);
}

// Uniform integer in [0, n) by Lemire's multiply-high: no rejection loop; the bias is below n / 2^64.
RF_HD std::uint64_t rng_below(std::uint64_t bits, std::uint64_t n) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(bits, n);
#else
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(bits) * n) >> 64);
#endif
}

// Uniform double in [0, 1) from the top 53 bits.
RF_HD double rng_unit(std::uint64_t bits) { return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0); }

}  // namespace recfast
