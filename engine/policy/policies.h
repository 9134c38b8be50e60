// Internal factories of the concrete policies behind MakePolicy. Each policy
// lives in its own .cc file in an anonymous namespace; this header is the only
// way to build one, so the engine, the simulator and the tests all run the
// same code. Not part of the public API.
#ifndef STRATA_ENGINE_POLICY_POLICIES_H_
#define STRATA_ENGINE_POLICY_POLICIES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/policy/policy.h"

namespace strata::policy {

// Least recently used.
std::unique_ptr<EvictionPolicy> NewLruPolicy(size_t capacity);
// Least frequently used over resident keys, ties broken by recency; counters
// are halved every 8 * capacity requests so old popularity fades.
std::unique_ptr<EvictionPolicy> NewLfuPolicy(size_t capacity);
// SIEVE (Zhang et al., NSDI'24): FIFO queue, visited bit, a hand that moves
// from the tail towards the head.
std::unique_ptr<EvictionPolicy> NewSievePolicy(size_t capacity);
// S3-FIFO (Yang et al., SOSP'23): 10% small FIFO, 90% main FIFO with 2-bit
// reinsertion, ghost FIFO of the main queue's size.
std::unique_ptr<EvictionPolicy> NewS3FifoPolicy(size_t capacity);
// W-TinyLFU (Einziger et al., ToS'17; Caffeine): 1% LRU window, SLRU main
// (20% probation, 80% protected), count-min sketch admission with aging.
std::unique_ptr<EvictionPolicy> NewWTinyLfuPolicy(size_t capacity);
// ARC (Megiddo and Modha, FAST'03): T1/T2 with ghosts B1/B2 and target p.
std::unique_ptr<EvictionPolicy> NewArcPolicy(size_t capacity);
// LIRS (Jiang and Zhang, SIGMETRICS'02): LIR set of 99% of the capacity,
// resident HIR queue of 1%, stack S pruned at its bottom; non-resident HIR
// entries in S are bounded by 2 * capacity.
std::unique_ptr<EvictionPolicy> NewLirsPolicy(size_t capacity);
// Learns the access period from the stream (or from OnStepBoundary) and
// evicts the key whose predicted next use is furthest (hinted.cc).
std::unique_ptr<EvictionPolicy> NewHintedPolicy(size_t capacity);
// The engine's default: an adaptive ensemble (adaptive.cc).
std::unique_ptr<EvictionPolicy> NewAdaptivePolicy(size_t capacity);

// A 64-bit finalizer (splitmix64): a fast, well-mixed hash for sampling and
// sketches. Deterministic across runs and platforms.
inline uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// "a, b, c". (Debian's Abseil has its own string_view, which StrJoin
// wants; this spells std::string_view lists without it.)
inline std::string JoinNames(const std::vector<std::string_view>& names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

}  // namespace strata::policy

#endif  // STRATA_ENGINE_POLICY_POLICIES_H_
