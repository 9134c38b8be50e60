// Best-fit extents of one reservation, with coalescing on free: the pool
// every tier that carves frames out of one block of memory shares (the host
// arena, the GPU's VRAM pool).
//
// An extent is [offset, offset + bytes) of a space of `size` bytes; sizes
// are rounded up to `align` by the caller. Nothing here touches the memory.
//
// Threads: thread-safe (one mutex; callers use it on miss paths only).
#ifndef STRATA_TIERS_EXTENT_ALLOCATOR_H_
#define STRATA_TIERS_EXTENT_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>

#include "absl/base/thread_annotations.h"

namespace strata::tiers {

class ExtentAllocator {
 public:
  // One free extent covering [0, size).
  explicit ExtentAllocator(uint64_t size);
  ExtentAllocator(const ExtentAllocator&) = delete;
  ExtentAllocator& operator=(const ExtentAllocator&) = delete;

  // The offset of an extent of exactly `bytes` (the smallest free extent
  // that holds it is split), or nullopt when no free extent is that long.
  std::optional<uint64_t> Allocate(uint64_t bytes);
  // Returns an extent from Allocate, merging it with free neighbours.
  void Free(uint64_t offset, uint64_t bytes);

  // The longest free extent, and how many free extents there are.
  uint64_t largest_free() const;
  size_t free_extents() const;

 private:
  void Insert(uint64_t offset, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Erase(uint64_t offset, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable std::mutex mu_;  // not absl::Mutex: see engine_core.h
  std::map<uint64_t, uint64_t> by_offset_ ABSL_GUARDED_BY(mu_);
  std::multimap<uint64_t, uint64_t> by_size_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::tiers

#endif  // STRATA_TIERS_EXTENT_ALLOCATOR_H_
