#include "engine/copier.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace strata::internal {

using tiers::Transfer;

struct CopyBatch::Xfer {
  CopyJob job;
  const TierChain* chain = nullptr;
  Transfer first;
  Transfer second;  // staged copies only
  int first_pos = -1;
  int second_pos = -1;
  std::byte* staging = nullptr;
};

void CopyBatch::Add(const CopyJob& job) {
  auto* x = new Xfer{.job = job, .chain = chain_};
  Transfer& t = x->first;
  t.key = job.key;
  t.on_done = &OnFirstDone;
  t.user = x;
  if (job.src == kZerosSource) {
    if (!AddZeros(x)) return;
  } else if (job.src == kHostSource || chain_->host_data(job.src)) {
    t.op = Transfer::Op::kWrite;
    t.frame = job.dst_frame;
    t.host = {job.src_frame.data, job.bytes};
    x->first_pos = job.dst;
  } else if (chain_->host_data(job.dst)) {
    t.op = Transfer::Op::kRead;
    t.frame = job.src_frame;
    t.host = {job.dst_frame.data, job.bytes};
    t.checksum = job.src_checksum;
    t.caller_drives = job.caller_drives;
    x->first_pos = job.src;
  } else {
    x->staging = chain_->staging().Get(job.bytes);
    if (x->staging == nullptr) {
      Finish(x, {absl::ResourceExhaustedError(absl::StrCat(
                     "no memory for a ", job.bytes,
                     "-byte staging buffer between tiers ",
                     Sv(TierName(chain_->kind(job.src))), " and ",
                     Sv(TierName(chain_->kind(job.dst))))),
                 0, job.dst});
      return;
    }
    t.op = Transfer::Op::kRead;
    t.frame = job.src_frame;
    t.host = {x->staging, job.bytes};
    t.checksum = job.src_checksum;
    t.caller_drives = job.caller_drives;
    x->first_pos = job.src;
    x->second_pos = job.dst;
  }
  if (t.op == Transfer::Op::kWrite && job.enqueued != nullptr) {
    t.on_enqueued = &OnEnqueued;
  }
  if (by_tier_.size() < static_cast<size_t>(chain_->size())) {
    by_tier_.resize(chain_->size());
  }
  by_tier_[x->first_pos].push_back(x);
}

bool CopyBatch::AddZeros(Xfer* x) {
  const CopyJob& job = x->job;
  x->staging = chain_->staging().Get(job.bytes);
  if (x->staging == nullptr) {
    Finish(x, {absl::ResourceExhaustedError(absl::StrCat(
                   "no memory for a ", job.bytes, "-byte buffer of zeros for tier ",
                   Sv(TierName(chain_->kind(job.dst))))),
               0, job.dst});
    return false;
  }
  std::memset(x->staging, 0, job.bytes);
  Transfer& t = x->first;
  t.op = Transfer::Op::kWrite;
  t.frame = job.dst_frame;
  t.host = {x->staging, job.bytes};
  x->first_pos = job.dst;
  return true;
}

size_t CopyBatch::pending() const {
  size_t n = 0;
  for (const auto& v : by_tier_) n += v.size();
  return n;
}

void CopyBatch::Submit() {
  for (size_t pos = 0; pos < by_tier_.size(); ++pos) {
    std::vector<Xfer*> xfers;
    xfers.swap(by_tier_[pos]);
    if (xfers.empty()) continue;
    std::vector<Transfer*> batch;
    batch.reserve(xfers.size());
    for (Xfer* x : xfers) batch.push_back(&x->first);
    // All or nothing (tiers/tier.h): on refusal no on_done ran.
    absl::Status s = chain_->tier(static_cast<int>(pos)).Submit(batch);
    if (!s.ok()) {
      for (Xfer* x : xfers) Finish(x, {s, 0, static_cast<int>(pos)});
    }
  }
}

void CopyBatch::OnEnqueued(Transfer* t) {
  auto* x = static_cast<Xfer*>(t->user);
  x->job.enqueued(x->job.user);
}

void CopyBatch::OnFirstDone(Transfer* t) {
  auto* x = static_cast<Xfer*>(t->user);
  if (!t->status.ok()) {
    Finish(x, {t->status, 0, x->first_pos});
    return;
  }
  if (x->second_pos < 0) {
    Finish(x, {absl::OkStatus(),
               t->op == Transfer::Op::kWrite ? t->checksum : 0, -1});
    return;
  }
  Transfer& w = x->second;
  w.op = Transfer::Op::kWrite;
  w.key = x->job.key;
  w.frame = x->job.dst_frame;
  w.host = {x->staging, x->job.bytes};
  w.on_done = &OnSecondDone;
  if (x->job.enqueued != nullptr) w.on_enqueued = &OnEnqueued;
  w.user = x;
  Transfer* one[1] = {&w};
  absl::Status s = x->chain->tier(x->second_pos).Submit(one);
  if (!s.ok()) Finish(x, {s, 0, x->second_pos});
}

void CopyBatch::OnSecondDone(Transfer* t) {
  auto* x = static_cast<Xfer*>(t->user);
  Finish(x, {t->status, t->status.ok() ? t->checksum : 0,
             t->status.ok() ? -1 : x->second_pos});
}

void CopyBatch::Finish(Xfer* x, const CopyResult& result) {
  if (x->staging != nullptr) x->chain->staging().Put(x->staging, x->job.bytes);
  const CopyJob job = x->job;
  delete x;
  job.done(job.user, result);
}

void StartCopy(const TierChain& chain, const CopyJob& job) {
  CopyBatch batch(chain);
  batch.Add(job);
}

}  // namespace strata::internal
