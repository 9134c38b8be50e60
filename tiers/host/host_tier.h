// The host tier: one arena of RAM reserved at Open, carved into frames.
//
// The arena is mapped once (2 MiB huge pages when the system has them
// reserved, else normal pages with MADV_HUGEPAGE), bound to one NUMA node
// through hwloc when it is available, and pre-faulted so that registration
// with DMA engines pins real pages. Frames are extents of the arena (4096-byte
// aligned, sizes rounded up to 4096) handed out best-fit with coalescing on
// free, so tensors of different block sizes share the arena without
// stranding space.
//
// Threads: Allocate and Free are thread-safe (one mutex; they run on the miss
// path only). Transfers are plain memcpy on the submitting thread.
#ifndef STRATA_TIERS_HOST_HOST_TIER_H_
#define STRATA_TIERS_HOST_HOST_TIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "tiers/tier.h"

namespace strata::tiers {

class ExtentAllocator;

struct HostConfig {
  uint64_t capacity_bytes = 0;
  int numa_node = -1;        // -1: the calling thread's node
  bool huge_pages = true;
  std::function<void(std::string_view)> log;
};

class HostTier : public Tier {
 public:
  static constexpr uint64_t kFrameAlign = 4096;

  // kInvalidArgument for a zero or unaligned capacity; kResourceExhausted
  // when the arena cannot be mapped.
  static absl::StatusOr<std::unique_ptr<HostTier>> Create(
      const HostConfig& config);
  ~HostTier() override;

  bool addressable() const override { return true; }
  std::span<std::byte> arena() const { return {base_, size_}; }
  // The NUMA node the arena is bound to, or -1 if it could not be bound.
  int numa_node() const { return numa_node_; }
  bool huge_pages() const { return huge_pages_; }
  // The longest free extent (a frame of up to that many bytes fits now),
  // and the number of free extents: how fragmented the free space is.
  uint64_t largest_free() const override;
  size_t free_extents() const;

 private:
  HostTier(std::byte* base, uint64_t size);
  absl::StatusOr<Frame> DoAllocate(uint64_t bytes) override;
  void DoFree(const Frame& frame) override;
  absl::Status DoSubmit(std::span<Transfer* const> batch) override;

  std::byte* base_;
  uint64_t size_;
  int numa_node_ = -1;
  bool huge_pages_ = false;
  std::unique_ptr<ExtentAllocator> free_;
};

}  // namespace strata::tiers

#endif  // STRATA_TIERS_HOST_HOST_TIER_H_
