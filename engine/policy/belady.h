// Belady's MIN, the offline optimum the simulator compares policies with. It
// needs the whole trace, so it is a function over a trace and not an
// EvictionPolicy; nothing in the engine uses it.
#ifndef STRATA_ENGINE_POLICY_BELADY_H_
#define STRATA_ENGINE_POLICY_BELADY_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"

namespace strata::policy {

// Misses of a cache of `capacity` blocks (> 0) replaying `trace` with MIN: on
// a miss with a full cache it evicts the resident key whose next use is the
// furthest (never used again first). Like the engine, it never bypasses: the
// missing key always becomes resident. O(n log capacity).
uint64_t BeladyMisses(absl::Span<const uint64_t> trace, size_t capacity);

}  // namespace strata::policy

#endif  // STRATA_ENGINE_POLICY_BELADY_H_
