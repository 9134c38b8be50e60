#include "engine/block_table.h"

#include <new>

#include "absl/strings/str_cat.h"

namespace strata::internal {

void BlockLatch::Lock(WaitTable& waits) {
  // Latches are held for a few hundred nanoseconds: try a little before
  // sleeping on the stripe.
  for (int spin = 0; spin < 64; ++spin) {
    if (TryLock()) return;
  }
  const Deadline far = Clock::now() + std::chrono::hours(24);
  for (;;) {
    uint64_t w = word_.load(std::memory_order_relaxed);
    if ((w & kHeld) == 0) {
      if (word_.compare_exchange_weak(w, w | kHeld, std::memory_order_acquire)) {
        return;
      }
      continue;
    }
    waits.WaitForChange(word_, w, far);
  }
}

bool BlockLatch::TryLock() {
  uint64_t w = word_.load(std::memory_order_relaxed);
  return (w & kHeld) == 0 &&
         word_.compare_exchange_strong(w, w | kHeld, std::memory_order_acquire);
}

void BlockLatch::Unlock(WaitTable& waits) {
  const uint64_t old =
      word_.fetch_and(~(kHeld | WaitTable::kWaiters), std::memory_order_release);
  if (old & WaitTable::kWaiters) waits.Wake(word_);
}

void TensorState::SetWriteBackError(uint64_t block, absl::Status status) {
  std::lock_guard lock(errors_mu);
  write_back_errors[block] = std::move(status);
}

absl::Status TensorState::TakeWriteBackErrors() {
  std::lock_guard lock(errors_mu);
  if (write_back_errors.empty()) return absl::OkStatus();
  auto first = write_back_errors.begin();
  for (auto it = write_back_errors.begin(); it != write_back_errors.end(); ++it) {
    if (it->first < first->first) first = it;
  }
  const absl::Status status = first->second;
  const uint64_t block = first->first;
  const size_t count = write_back_errors.size();
  write_back_errors.clear();
  return absl::Status(
      status.code(),
      absl::StrCat("an earlier background write-back of ",
                   BlockName(*this, block), " failed (", count,
                   " block(s) of the tensor; "
                   "each stayed dirty in memory and is written again): ",
                   status.message()));
}

std::string BlockName(const TensorState& ts, uint64_t block) {
  return absl::StrCat("tensor '", ts.name, "' block ", block);
}

bool AllocateBlockTable(TensorState& ts) {
  for (int pos = 0; pos < ts.chain_size; ++pos) {
    ts.columns[pos].reset(new (std::nothrow) CopySlot[ts.num_blocks]);
    if (ts.columns[pos] == nullptr) return false;
  }
  ts.records.reset(new (std::nothrow) BlockRecord[ts.num_blocks]);
  return ts.records != nullptr;
}

}  // namespace strata::internal
