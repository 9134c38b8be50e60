#include "engine/chain.h"

#include <cstdlib>

namespace strata::internal {

StagingPool::~StagingPool() {
  for (auto& [bytes, buffer] : idle_) std::free(buffer);
}

std::byte* StagingPool::Get(uint64_t bytes) {
  const uint64_t rounded = (bytes + 4095) / 4096 * 4096;
  {
    std::lock_guard lock(mu_);
    // Exact sizes only: block sizes repeat, and Put needs no size back.
    auto it = idle_.find(rounded);
    if (it != idle_.end()) {
      std::byte* buffer = it->second;
      idle_bytes_ -= it->first;
      idle_.erase(it);
      return buffer;
    }
  }
  return static_cast<std::byte*>(std::aligned_alloc(4096, rounded));
}

void StagingPool::Put(std::byte* buffer, uint64_t bytes) {
  if (buffer == nullptr) return;
  const uint64_t rounded = (bytes + 4095) / 4096 * 4096;
  {
    std::lock_guard lock(mu_);
    if (idle_bytes_ + rounded <= kKeepBytes) {
      idle_.emplace(rounded, buffer);
      idle_bytes_ += rounded;
      return;
    }
  }
  std::free(buffer);
}

TierChain::TierChain(std::vector<ChainLink> links) : links_(std::move(links)) {
  position_.fill(-1);
  for (int pos = 0; pos < size(); ++pos) {
    position_[static_cast<uint8_t>(links_[pos].kind)] = static_cast<int8_t>(pos);
    if (links_[pos].kind == Tier::kHost) host_ = pos;
  }
}

void TierChain::Shutdown() {
  // Tiers above host first (the GPU): their copies read and write the host
  // arena, and they unregister it (cudaHostUnregister) while it is mapped.
  for (int pos = 0; pos < host_; ++pos) links_[pos].tier.reset();
  for (int pos = size() - 1; pos >= 0; --pos) links_[pos].tier.reset();
}

}  // namespace strata::internal
