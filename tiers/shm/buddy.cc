#include "tiers/shm/buddy.h"

#include <algorithm>
#include <bit>

namespace strata::tiers::shm {
namespace {
// A unit inside a frame claimed during Rebuild (cleared again by EndRebuild).
constexpr uint8_t kClaimed = 0x20;
}  // namespace

int Buddy::OrderFor(uint64_t units) {
  if (units <= 1) return 0;
  return std::bit_width(units - 1);
}

void Buddy::Format() {
  BeginRebuild();
  EndRebuild();
}

void Buddy::Push(int order, uint64_t unit) {
  map_[unit] = kFree | static_cast<uint8_t>(order);
  const uint32_t head = state_->heads[order];
  links_[unit] = {head, kNone};
  if (head != kNone) links_[head].prev = static_cast<uint32_t>(unit);
  state_->heads[order] = static_cast<uint32_t>(unit);
}

void Buddy::Unlink(int order, uint64_t unit) {
  const Link link = links_[unit];
  if (link.prev != kNone) {
    links_[link.prev].next = link.next;
  } else {
    state_->heads[order] = link.next;
  }
  if (link.next != kNone) links_[link.next].prev = link.prev;
  map_[unit] = 0;
}

void Buddy::AddFreeRange(uint64_t begin, uint64_t end) {
  // Greedy: the largest aligned power of two that starts at `begin` and
  // fits, so that the frames are exactly those coalescing would make.
  while (begin < end) {
    int order = begin == 0 ? kMaxOrders - 1 : std::countr_zero(begin);
    order = std::min(order, kMaxOrders - 1);
    while ((uint64_t{1} << order) > end - begin) --order;
    Push(order, begin);
    begin += uint64_t{1} << order;
  }
}

void Buddy::BeginRebuild() {
  // The state in the segment is not trusted (it is what a rebuild repairs,
  // and a corrupt segment may hold anything there): the unit count comes
  // from the arrays, which the segment sized from its checksummed header.
  state_->units = map_.size();
  std::fill(std::begin(state_->heads), std::end(state_->heads), kNone);
  std::fill(map_.begin(), map_.begin() + static_cast<ptrdiff_t>(state_->units), 0);
  state_->used_units = 0;
}

bool Buddy::MarkUsed(uint64_t unit, uint64_t units) {
  const int order = OrderFor(units);
  const uint64_t size = uint64_t{1} << order;
  if (units == 0 || order >= kMaxOrders || unit >= state_->units ||
      size > state_->units - unit || unit % size != 0) {
    return false;
  }
  for (uint64_t u = unit; u < unit + size; ++u) {
    if (map_[u] != 0) return false;  // overlaps a frame already marked
  }
  map_[unit] = kUsed | static_cast<uint8_t>(order);
  for (uint64_t u = unit + 1; u < unit + size; ++u) map_[u] = kClaimed;
  state_->used_units += size;
  return true;
}

void Buddy::EndRebuild() {
  uint64_t u = 0;
  const uint64_t n = state_->units;
  while (u < n) {
    if (map_[u] & kUsed) {
      const uint64_t size = uint64_t{1} << (map_[u] & kOrderMask);
      for (uint64_t i = u + 1; i < u + size; ++i) map_[i] = 0;
      u += size;
      continue;
    }
    uint64_t end = u;
    while (end < n && map_[end] == 0) ++end;
    AddFreeRange(u, end);
    u = end;
  }
}

std::optional<uint64_t> Buddy::Allocate(uint64_t units) {
  const int order = OrderFor(units);
  if (order >= kMaxOrders) return std::nullopt;
  int o = order;
  while (o < kMaxOrders && state_->heads[o] == kNone) ++o;
  if (o == kMaxOrders) return std::nullopt;
  const uint64_t unit = state_->heads[o];
  Unlink(o, unit);
  while (o > order) {
    --o;
    Push(o, unit + (uint64_t{1} << o));
  }
  map_[unit] = kUsed | static_cast<uint8_t>(order);
  state_->used_units += uint64_t{1} << order;
  return unit;
}

uint64_t Buddy::FrameUnits(uint64_t unit) const {
  if (unit >= state_->units || !(map_[unit] & kUsed)) return 0;
  return uint64_t{1} << (map_[unit] & kOrderMask);
}

bool Buddy::Free(uint64_t unit) {
  const uint64_t size = FrameUnits(unit);
  if (size == 0) return false;
  int order = map_[unit] & kOrderMask;
  state_->used_units -= size;
  map_[unit] = 0;
  while (order + 1 < kMaxOrders) {
    const uint64_t buddy = unit ^ (uint64_t{1} << order);
    if (buddy >= state_->units || (uint64_t{1} << order) > state_->units - buddy ||
        map_[buddy] != (kFree | static_cast<uint8_t>(order))) {
      break;
    }
    Unlink(order, buddy);
    unit = std::min(unit, buddy);
    ++order;
  }
  Push(order, unit);
  return true;
}

}  // namespace strata::tiers::shm
