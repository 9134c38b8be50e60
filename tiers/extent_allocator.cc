#include "tiers/extent_allocator.h"

#include <iterator>

namespace strata::tiers {

ExtentAllocator::ExtentAllocator(uint64_t size) {
  std::lock_guard lock(mu_);
  if (size > 0) Insert(0, size);
}

void ExtentAllocator::Insert(uint64_t offset, uint64_t bytes) {
  by_offset_.emplace(offset, bytes);
  by_size_.emplace(bytes, offset);
}

void ExtentAllocator::Erase(uint64_t offset, uint64_t bytes) {
  by_offset_.erase(offset);
  auto [lo, hi] = by_size_.equal_range(bytes);
  for (auto it = lo; it != hi; ++it) {
    if (it->second == offset) {
      by_size_.erase(it);
      return;
    }
  }
}

std::optional<uint64_t> ExtentAllocator::Allocate(uint64_t bytes) {
  std::lock_guard lock(mu_);
  auto it = by_size_.lower_bound(bytes);
  if (it == by_size_.end()) return std::nullopt;
  const uint64_t have = it->first;
  const uint64_t offset = it->second;
  Erase(offset, have);
  if (have > bytes) Insert(offset + bytes, have - bytes);
  return offset;
}

void ExtentAllocator::Free(uint64_t offset, uint64_t bytes) {
  std::lock_guard lock(mu_);
  auto next = by_offset_.lower_bound(offset);
  if (next != by_offset_.end() && next->first == offset + bytes) {
    const uint64_t n_off = next->first, n_bytes = next->second;
    Erase(n_off, n_bytes);
    bytes += n_bytes;
  }
  auto after = by_offset_.lower_bound(offset);
  if (after != by_offset_.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == offset) {
      const uint64_t p_off = prev->first, p_bytes = prev->second;
      Erase(p_off, p_bytes);
      offset = p_off;
      bytes += p_bytes;
    }
  }
  Insert(offset, bytes);
}

uint64_t ExtentAllocator::largest_free() const {
  std::lock_guard lock(mu_);
  return by_size_.empty() ? 0 : by_size_.rbegin()->first;
}

size_t ExtentAllocator::free_extents() const {
  std::lock_guard lock(mu_);
  return by_offset_.size();
}

}  // namespace strata::tiers
