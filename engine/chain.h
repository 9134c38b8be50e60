// The tier chain: the configured tiers, fastest first (DESIGN.md, "The tier
// chain"). A tier is named by its kind (strata::Tier) in the API and by its
// *position* in the chain inside the engine; columns of the block table are
// indexed by position.
//
// Pinnable tiers (gpu, host, shm) hand out pointers; lower tiers (remote,
// nvme) hold copies only. Host is always present: it is the hub that copies
// between two tiers without host-addressable frames stage through.
//
// Threads: immutable after construction, except the staging pool (locked).
#ifndef STRATA_ENGINE_CHAIN_H_
#define STRATA_ENGINE_CHAIN_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "api/strata/strata.h"
#include "tiers/tier.h"

namespace strata::internal {

struct ChainLink {
  Tier kind = Tier::kHost;
  std::unique_ptr<tiers::Tier> tier;
};

// Buffers for copies between two tiers whose frames are not host memory
// (a remote copy written to NVMe): 4096-aligned, kept for reuse up to a cap.
class StagingPool {
 public:
  StagingPool() = default;
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // A buffer of at least `bytes`, rounded up to 4096; null when memory runs
  // out.
  std::byte* Get(uint64_t bytes);
  void Put(std::byte* buffer, uint64_t bytes);

 private:
  static constexpr uint64_t kKeepBytes = uint64_t{64} << 20;
  std::mutex mu_;
  std::multimap<uint64_t, std::byte*> idle_;  // rounded size -> buffer
  uint64_t idle_bytes_ = 0;
};

class TierChain {
 public:
  // `links` fastest first, holding kHost.
  explicit TierChain(std::vector<ChainLink> links);

  int size() const { return static_cast<int>(links_.size()); }
  Tier kind(int pos) const { return links_[pos].kind; }
  tiers::Tier& tier(int pos) const { return *links_[pos].tier; }
  // Position of `kind`, or -1 when it is not configured. Safe for any value
  // of the enum's underlying type (a Tier cast from a bad integer is -1).
  int position(Tier kind) const {
    return position_[static_cast<uint8_t>(kind)];
  }
  int host() const { return host_; }
  int lowest() const { return size() - 1; }
  bool pinnable(int pos) const { return IsPinnableKind(kind(pos)); }
  // Frames of the tier carry host-addressable bytes.
  bool host_data(int pos) const { return links_[pos].tier->addressable(); }

  static bool IsPinnableKind(Tier kind) {
    return kind == Tier::kGpu || kind == Tier::kHost || kind == Tier::kShm;
  }

  StagingPool& staging() const { return staging_; }

  // Destroys the tiers (each waits for its transfers in flight and
  // completes them): those above host first, then the rest lowest first.
  // For the engine's destructor.
  void Shutdown();

 private:
  std::vector<ChainLink> links_;
  std::array<int8_t, 256> position_;
  int host_ = -1;
  mutable StagingPool staging_;
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_CHAIN_H_
