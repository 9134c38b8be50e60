#include "tiers/tier.h"

#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace strata::tiers {

absl::StatusOr<Frame> Tier::Allocate(uint64_t bytes) {
  if (bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tier ", name_, ": cannot allocate a frame of 0 bytes"));
  }
  absl::StatusOr<Frame> frame = DoAllocate(bytes);
  if (frame.ok()) used_.fetch_add(frame->bytes, std::memory_order_relaxed);
  return frame;
}

void Tier::Free(const Frame& frame) {
  if (!frame.valid()) return;
  used_.fetch_sub(frame.bytes, std::memory_order_relaxed);
  DoFree(frame);
}

absl::Status Tier::Submit(std::span<Transfer* const> batch) {
  for (Transfer* t : batch) {
    if (t == nullptr || t->on_done == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tier ", name_, ": transfer without a completion"));
    }
    if (!t->frame.valid() || t->host.size() > t->frame.bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tier ", name_, ": transfer of ", t->host.size(),
          " bytes does not fit frame of ", t->frame.bytes, " bytes"));
    }
  }
  // Counted before the hook runs: completions may come before it returns.
  uint64_t in = 0, out = 0;
  for (Transfer* t : batch) {
    (t->op == Transfer::Op::kWrite ? in : out) += t->host.size();
  }
  bytes_in_.fetch_add(in, std::memory_order_relaxed);
  bytes_out_.fetch_add(out, std::memory_order_relaxed);
  absl::Status status = DoSubmit(batch);
  if (!status.ok()) {
    bytes_in_.fetch_sub(in, std::memory_order_relaxed);
    bytes_out_.fetch_sub(out, std::memory_order_relaxed);
  }
  return status;
}

namespace {

absl::Status NotStreamOrdered(std::string_view name) {
  return absl::FailedPreconditionError(absl::StrCat(
      "tier ", Sv(name), ": its frames are host memory, not device memory; "
      "stream ordering applies to GPU pins only"));
}

}  // namespace

absl::StatusOr<void*> Tier::ReadyEvent(const Frame& frame) {
  (void)frame;
  return NotStreamOrdered(name_);
}

absl::Status Tier::WaitReady(const Frame& frame, void* stream) {
  (void)frame;
  (void)stream;
  return NotStreamOrdered(name_);
}

absl::Status Tier::FenceAfter(const Frame& frame, void* stream) {
  (void)frame;
  (void)stream;
  return NotStreamOrdered(name_);
}

}  // namespace strata::tiers
