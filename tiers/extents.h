// Free extents of an offset space, handed out best fit and coalesced on
// free: the frame allocator of the tiers whose frames are ranges of one
// region (the host arena, a remote server's lending). Sizes are whatever the
// caller asks; tiers round them to their alignment first.
//
// Threads: thread-safe (one mutex; tiers allocate on miss paths only).
#ifndef STRATA_TIERS_EXTENTS_H_
#define STRATA_TIERS_EXTENTS_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>

namespace strata::tiers {

class FreeExtents {
 public:
  // One free extent [0, capacity).
  explicit FreeExtents(uint64_t capacity);

  // The offset of `bytes` taken from the smallest free extent that holds
  // them, or nullopt when none does.
  std::optional<uint64_t> Take(uint64_t bytes);
  // Returns [offset, offset + bytes), merged with free neighbours.
  void Give(uint64_t offset, uint64_t bytes);

  uint64_t largest() const;  // the longest free extent
  size_t count() const;      // how many free extents (fragmentation)

 private:
  void Insert(uint64_t offset, uint64_t bytes);
  void Erase(uint64_t offset, uint64_t bytes);

  mutable std::mutex mu_;  // not absl::Mutex: see engine/engine_core.h
  std::map<uint64_t, uint64_t> by_offset_;
  std::multimap<uint64_t, uint64_t> by_size_;
};

}  // namespace strata::tiers

#endif  // STRATA_TIERS_EXTENTS_H_
