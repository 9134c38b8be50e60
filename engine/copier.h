// The one way block bytes move between two tiers (loads, write-backs and
// Flush alike): from a frame of one tier to a frame of another.
//
// Direction: when the source frame is host-addressable the destination tier
// writes from it; else when the destination frame is, the source tier reads
// into it; else the bytes stage through a host buffer (a read, then a write
// submitted from the read's completion). A job whose source is kZerosSource
// writes zeros (a block never written, into a tier whose frames the host
// cannot address: the GPU's).
//
// A CopyBatch gathers the first transfer of many copies and hands them to
// each tier in one Submit (one io_uring submission for a prefetch of many
// small blocks). Every copy added completes exactly once through its `done`,
// from any thread, also when a Submit is refused; `done` must not block on
// other transfers.
#ifndef STRATA_ENGINE_COPIER_H_
#define STRATA_ENGINE_COPIER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/chain.h"
#include "tiers/tier.h"

namespace strata::internal {

struct CopyResult {
  absl::Status status;
  uint64_t checksum = 0;  // of the bytes written, when the destination keeps one
  int failed_pos = -1;    // the tier whose transfer failed
};

// CopyJob::src of a block never written: the destination gets zeros.
inline constexpr int kZerosSource = -1;
// CopyJob::src of bytes outside the chain, in host memory at
// src_frame.data (a shared block's frame in the node segment).
inline constexpr int kHostSource = -2;

struct CopyJob {
  int src = kZerosSource;
  tiers::Frame src_frame;
  uint64_t src_checksum = 0;
  int dst = -1;
  tiers::Frame dst_frame;
  tiers::BlockKey key;
  uint64_t bytes = 0;
  void (*done)(void* user, const CopyResult& result) = nullptr;
  // Optional: called once the write into `dst` is enqueued on a device
  // stream (tiers/tier.h, Transfer::on_enqueued), before `done`.
  void (*enqueued)(void* user) = nullptr;
  void* user = nullptr;
  // The pinning thread drives the read from `src` itself (Transfer::
  // caller_drives).
  bool caller_drives = false;
};

class CopyBatch {
 public:
  explicit CopyBatch(const TierChain& chain) : chain_(&chain) {}
  ~CopyBatch() { Submit(); }
  CopyBatch(const CopyBatch&) = delete;
  CopyBatch& operator=(const CopyBatch&) = delete;

  void Add(const CopyJob& job);
  // Hands every copy added so far to its tiers. Also run by the destructor.
  void Submit();
  size_t pending() const;

 private:
  struct Xfer;
  // Sets up a write of zeros; false when it finished the job (no memory).
  bool AddZeros(Xfer* x);
  static void OnEnqueued(tiers::Transfer* t);
  static void OnFirstDone(tiers::Transfer* t);
  static void OnSecondDone(tiers::Transfer* t);
  static void Finish(Xfer* x, const CopyResult& result);

  const TierChain* chain_;
  std::vector<std::vector<Xfer*>> by_tier_;  // indexed by the tier submitting
};

// Starts one copy on its own.
void StartCopy(const TierChain& chain, const CopyJob& job);

}  // namespace strata::internal

#endif  // STRATA_ENGINE_COPIER_H_
