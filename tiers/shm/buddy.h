// A buddy allocator whose whole state lies in memory it is given (a shared
// segment): an order byte per unit and free lists linked through a per-unit
// link array, never through the frames themselves (so that free frames of a
// tmpfs segment are never touched, and stay unbacked until used).
//
// Units are `kUnit` (4 KiB) bytes; a frame of order k is 2^k units, aligned
// to its size within the arena. Allocate rounds up to a power of two, so
// block sizes that are powers of two (the engine's default 2 MiB) waste
// nothing. Allocate and Free are O(orders): no search, no tree (compare
// Boost.Interprocess's best-fit red-black tree, shm_bench BM_ShmAllocFree).
//
// Every piece of state can be rebuilt from the list of frames in use
// (Rebuild): the segment does that after a process died inside an
// allocator call, instead of trusting half-updated lists.
//
// Threads: not thread-safe; the segment calls it under its lock.
#ifndef STRATA_TIERS_SHM_BUDDY_H_
#define STRATA_TIERS_SHM_BUDDY_H_

#include <cstdint>
#include <optional>
#include <span>

namespace strata::tiers::shm {

class Buddy {
 public:
  static constexpr uint64_t kUnit = 4096;
  static constexpr int kMaxOrders = 40;
  static constexpr uint32_t kNone = 0xFFFFFFFF;

  // What lies in the segment (BuddyState in the header, the two arrays
  // after it); Format() fills it.
  struct State {
    uint32_t heads[kMaxOrders];  // first free frame of each order, or kNone
    uint64_t units;              // units in the arena
    uint64_t used_units;
  };
  struct Link {
    uint32_t next;
    uint32_t prev;
  };

  // Views the state of an arena of `units` units; `order_map` and `links`
  // hold `units` entries each.
  Buddy(State* state, std::span<uint8_t> order_map, std::span<Link> links)
      : state_(state), map_(order_map), links_(links) {}

  // Makes every unit of the arena (as many as the arrays hold) free.
  void Format();
  // Rebuilds from the frames in use: `used` is called with a visitor that
  // must be called once per frame in use with (first unit, units). Frames
  // that overlap or lie outside the arena are ignored (and counted in the
  // result): the caller then knows its references were inconsistent.
  template <typename ForEachUsed>
  uint64_t Rebuild(ForEachUsed&& used) {
    BeginRebuild();
    uint64_t bad = 0;
    used([&](uint64_t unit, uint64_t units) {
      if (!MarkUsed(unit, units)) ++bad;
    });
    EndRebuild();
    return bad;
  }

  // First unit of a free frame of at least `units` units, or nullopt.
  std::optional<uint64_t> Allocate(uint64_t units);
  // Frees the frame at `unit`; false if no frame in use starts there (a
  // double free, or garbage): nothing changes then.
  bool Free(uint64_t unit);
  // Units of the frame in use at `unit`, or 0.
  uint64_t FrameUnits(uint64_t unit) const;

  uint64_t units() const { return state_->units; }
  uint64_t used_units() const { return state_->used_units; }
  // Order of the smallest frame holding `units` units.
  static int OrderFor(uint64_t units);

 private:
  static constexpr uint8_t kFree = 0x40, kUsed = 0x80, kOrderMask = 0x3F;
  void Push(int order, uint64_t unit);
  void Unlink(int order, uint64_t unit);
  void AddFreeRange(uint64_t begin, uint64_t end);
  void BeginRebuild();
  bool MarkUsed(uint64_t unit, uint64_t units);
  void EndRebuild();

  State* state_;
  std::span<uint8_t> map_;
  std::span<Link> links_;
};

}  // namespace strata::tiers::shm

#endif  // STRATA_TIERS_SHM_BUDDY_H_
