#include "util/checksum.h"

#include <xxhash.h>
#if defined(__x86_64__)
// libxxhash picks the widest vector unit at run time (AVX2/AVX-512): 80 GB/s
// instead of 19 on the SSE2 default, the same hash values. Measure with a
// 2 MiB buffer hashed in a loop; checksums sit on every NVMe read's path.
#include <xxh_x86dispatch.h>
#endif

namespace strata {
namespace {

// libxxhash's AVX2/AVX-512 code (Debian 12's 0.8.1) returns with the upper
// halves of the vector registers in use (XINUSE bit 2): no VZEROUPPER on its
// way out. A write-back's checksum runs on the thread that submits it, often
// a pinning thread (a pin short of frames starts an eviction), and the SSE
// code its caller ran next, a trainer's optimizer, was 2-5x slower in
// stretches until something cleared the state (docs/PERFORMANCE.md, "The
// slow rounds were dirty vector state").
// VZEROUPPER costs a cycle; clearing here keeps the cost where it comes from.
inline void ClearUpperVectorState() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool has_avx = __builtin_cpu_supports("avx");
  if (has_avx) asm volatile("vzeroupper");
#endif
}

}  // namespace

uint64_t BlockChecksum(std::span<const std::byte> bytes, uint64_t tensor_id,
                       uint64_t block, uint64_t version) {
  const uint64_t identity[3] = {tensor_id, block, version};
  const uint64_t seed = XXH3_64bits(identity, sizeof(identity));
  const uint64_t sum = XXH3_64bits_withSeed(bytes.data(), bytes.size(), seed);
  ClearUpperVectorState();
  return sum;
}

}  // namespace strata
