#include "tiers/remote/remote_tier.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "tiers/extent_allocator.h"
#include "tiers/remote/fabric.h"
#include "tiers/remote/protocol.h"
#include "util/checksum.h"

namespace strata::tiers {
namespace {

using remote::Fabric;
using remote::Message;
using remote::Type;

constexpr uint64_t kAlign = 4096;
constexpr int kReceives = 4;
// Reads at least this long are checksummed on the verifier thread; shorter
// ones (a 4 KiB block: well under a microsecond) right away, which saves
// the pin that waits for them a thread hand-off.
constexpr size_t kVerifyAside = 64 << 10;
// A frame's offset: the epoch of the connection it was allocated on (bits
// 48..63; 1, 2, ... one per reconnect) and its offset in that connection's
// allocation.
constexpr int kEpochShift = 48;
constexpr uint64_t kOffsetMask = (uint64_t{1} << kEpochShift) - 1;
uint64_t EpochOf(const Frame& frame) { return frame.offset >> kEpochShift; }

struct RemoteOp : Fabric::Op {
  enum class Kind { kReceive, kSend, kTransfer } kind = Kind::kReceive;
  std::vector<std::byte> bytes;       // a message
  Transfer* transfer = nullptr;       // kTransfer
  Fabric::Region scratch;             // a registration made for this op only
};

// One connection to the server (one session, one allocation): the tier
// of one epoch. Once fenced it stays fenced; RemoteTier (below) replaces it
// by a new connection when the server answers again.
class RemoteLink final : public Tier {
 public:
  RemoteLink(const RemoteConfig& config, RemoteFaults faults,
             std::unique_ptr<Fabric> fabric, fi_addr_t server, uint64_t epoch,
             std::function<void()> on_fence)
      : Tier("remote", config.capacity_bytes),
        config_(config),
        faults_(std::move(faults)),
        fabric_(std::move(fabric)),
        server_(server),
        frames_(config.capacity_bytes),
        epoch_(epoch),
        on_fence_(std::move(on_fence)) {}

  ~RemoteLink() override {
    if (session_ != 0) {
      Message bye{.type = Type::kBye};
      (void)Call(bye, absl::Seconds(1));
    }
    stop_.store(true);
    WakeProgress();
    if (progress_.joinable()) progress_.join();
    {
      std::lock_guard lock(verify_mu_);
      verify_stop_ = true;
      verify_cv_.notify_all();
    }
    if (verifier_.joinable()) verifier_.join();
    Fabric::Unregister(arena_);
    fabric_.reset();  // before the receive buffers go
    for (RemoteOp* op : fenced_ops_) delete op;
    // Sends whose completion never came (the server went, the endpoint was
    // closed): the fabric is gone, nothing can name them any more.
    for (RemoteOp* op : sends_) delete op;
  }

  absl::Status Start() {
    receives_.resize(kReceives);
    for (RemoteOp& op : receives_) {
      op.kind = RemoteOp::Kind::kReceive;
      op.bytes.resize(remote::kMaxMessage);
      if (absl::Status s = PostReceive(op); !s.ok()) return s;
    }
    progress_ = std::thread([this] { Progress(); });
    verifier_ = std::thread([this] { Verify(); });
    Message hello{.type = Type::kHello, .secret = config_.secret,
                  .address = fabric_->address()};
    absl::StatusOr<Message> reply = Call(hello, config_.timeout);
    if (!reply.ok()) return reply.status();
    session_ = reply->values[0];
    generation_ = reply->values[1];
    Message allocate{.type = Type::kAllocate};
    allocate.values[0] = capacity();
    absl::StatusOr<Message> lent = Call(allocate, config_.timeout);
    if (!lent.ok()) return lent.status();
    key_ = lent->values[1];
    base_ = lent->values[3];
    if (lent->values[2] < capacity()) {
      return absl::InternalError("tier remote: the server lent less than asked");
    }
    return absl::OkStatus();
  }

  bool addressable() const override { return false; }
  uint64_t largest_free() const override { return frames_.largest_free(); }

  // A waiting thread polls the completion queue itself (the provider moves
  // bytes inside the poll): the completion of its own read then runs on it,
  // with no wake-up from the progress thread, which stands aside meanwhile
  // (two threads on one queue cost each other more than a poll). What only
  // the progress thread may do (fence: closing the endpoint; re-posting
  // receive buffers) is handed to it.
  bool DriveCompletions(absl::FunctionRef<bool()> until,
                        std::chrono::steady_clock::time_point stop) override {
    drivers_.fetch_add(1, std::memory_order_acq_rel);
    bool drove = false;
    while (!until()) {
      Fabric::Op* done[16];
      int n = 0;
      {
        // Not while Fence closes the endpoint (no poll of a closed one).
        std::shared_lock posting(post_mu_, std::try_to_lock);
        if (!posting.owns_lock() || fenced_.load(std::memory_order_acquire)) break;
        n = fabric_->Poll(done, 16, 0);
      }
      drove = true;
      for (int i = 0; i < n; ++i) Dispatch(static_cast<RemoteOp*>(done[i]), false);
      if (std::chrono::steady_clock::now() >= stop) break;
    }
    // The last driver to leave hands what is still in flight back.
    if (drivers_.fetch_sub(1, std::memory_order_acq_rel) == 1 && Busy()) WakeProgress();
    return drove;
  }

  absl::Status RegisterHostMemory(std::span<std::byte> arena) override {
    if (!fabric_->local_registration()) return absl::OkStatus();  // not needed
    absl::StatusOr<Fabric::Region> r =
        fabric_->Register(arena.data(), arena.size(), FI_READ | FI_WRITE, 0);
    if (!r.ok()) return r.status();
    arena_ = *r;
    arena_span_ = arena;
    return absl::OkStatus();
  }

  uint64_t epoch() const { return epoch_; }
  uint64_t generation() const { return generation_; }
  uint64_t session() const { return session_; }
  bool fenced() const { return fenced_.load(std::memory_order_acquire); }
  // The error a transfer of a frame of this connection gets once fenced.
  absl::Status LostError(Transfer::Op op) const { return FencedError(op); }

  // Ends a session of an earlier connection to the same server (one that
  // was found lost while the server lived on), freeing what it held there.
  absl::Status EndSession(uint64_t session) {
    Message bye{.type = Type::kBye, .session = session};
    return Call(bye, config_.timeout).status();
  }

  absl::StatusOr<RemoteServerStat> Stat() {
    Message stat{.type = Type::kStat};
    absl::StatusOr<Message> r = Call(stat, config_.timeout);
    if (!r.ok()) return r.status();
    return RemoteServerStat{.capacity = r->values[0], .used = r->values[1],
                            .clients = r->values[2], .allocations = r->values[3],
                            .generation = generation_};
  }

 private:
  struct Pending {
    bool done = false;
    Message reply;
  };

  absl::StatusOr<Frame> DoAllocate(uint64_t bytes) override {
    if (fenced_.load(std::memory_order_acquire)) {
      // The engine then demotes to the next tier down.
      return absl::ResourceExhaustedError(absl::StrCat(
          "tier remote: server ", config_.server, " is lost (", FenceReason(),
          "); nothing more is placed there"));
    }
    const uint64_t need = (bytes + kAlign - 1) / kAlign * kAlign;
    std::optional<uint64_t> offset = frames_.Allocate(need);
    if (!offset) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "tier remote: no free frame of ", need, " bytes (capacity ",
          capacity(), " borrowed from ", config_.server,
          "); raise EngineOptions::remote.capacity_bytes"));
    }
    return Frame{.offset = epoch_ << kEpochShift | *offset, .bytes = need, .data = nullptr};
  }

  void DoFree(const Frame& frame) override {
    frames_.Free(frame.offset & kOffsetMask, frame.bytes);
  }

  absl::Status DoSubmit(std::span<Transfer* const> batch) override;
  absl::Status Post(RemoteOp& op);
  void Progress();
  // Whether anything waits for the provider: transfers in flight, control
  // messages sent or unanswered.
  bool Busy();
  // Ends the progress thread's sleep (work came, a driver left, a fence or
  // a reply was handed to it, or the link stops).
  void WakeProgress();
  // What a completion means, on the progress thread or (`progress` false)
  // on a thread driving completions while it waits for its own transfer.
  void Dispatch(RemoteOp* op, bool progress);
  void OnTransferDone(RemoteOp* op);
  void Verify();
  void CheckTimeouts();
  void Fence(const absl::Status& why);
  absl::Status FencedError(Transfer::Op op) const;
  std::string FenceReason() const;
  void OnReply(RemoteOp& op);
  absl::Status PostReceive(RemoteOp& op);
  void Repost(RemoteOp* op);
  absl::StatusOr<Message> Call(Message m, absl::Duration timeout);

  RemoteConfig config_;
  RemoteFaults faults_;
  std::unique_ptr<Fabric> fabric_;
  fi_addr_t server_;
  ExtentAllocator frames_;
  uint64_t session_ = 0, generation_ = 0, key_ = 0, base_ = 0;
  const uint64_t epoch_;
  std::function<void()> on_fence_;
  Fabric::Region arena_;
  std::span<std::byte> arena_span_;
  std::vector<RemoteOp> receives_;
  // Receive buffers whose re-post met a full queue, retried after each Poll
  // since the first such failure (progress thread only).
  std::vector<RemoteOp*> unposted_;
  std::chrono::steady_clock::time_point unposted_since_;
  std::thread progress_;
  std::atomic<bool> stop_{false};
  // The progress thread sleeps on wake_cv_ while nothing is in flight or
  // while a waiting thread drives the queue (drivers_ > 0). The queue has
  // no wait object to sleep on: the provider signals one on every
  // completion, which cost ~10 us of a 4 KiB round trip (remote_bench
  // BM_RemotePin4K; docs/PERFORMANCE.md, "The block server sleeps").
  std::atomic<int> drivers_{0};
  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool wake_ = false;  // wake_mu_
  // Reads whose bytes arrived, for the verifier thread: checksumming a
  // block on the progress thread would stall the provider's progress of
  // every other transfer meanwhile (Get of 1 MiB blocks: 0.66x raw RMA).
  std::thread verifier_;
  std::mutex verify_mu_;
  std::condition_variable verify_cv_;
  std::deque<RemoteOp*> verify_q_;
  bool verify_stop_ = false;
  // Fencing: posts hold post_mu_ shared; Fence (on the progress thread)
  // takes it exclusive to close the endpoint. inflight_ holds every posted
  // transfer with its post time, for the timeout and for Fence to fail.
  std::shared_mutex post_mu_;
  std::mutex inflight_mu_;
  absl::flat_hash_map<RemoteOp*, std::chrono::steady_clock::time_point> inflight_;
  // Transfers Fence failed. A poll may still return one (the progress
  // thread's own poll of that round, or a pinner's that polled before Fence
  // ran): they stay allocated until the link goes, so that Dispatch can tell
  // them from live ops without reading freed memory.
  absl::flat_hash_set<RemoteOp*> fenced_ops_;
  // Control messages sent and not yet completed (freed by their completion,
  // or by the destructor when none came).
  std::mutex sends_mu_;
  absl::flat_hash_set<RemoteOp*> sends_;
  std::atomic<bool> fenced_{false};
  std::atomic<bool> stalled_{false};  // a post gave up: Fence, please
  mutable std::mutex reason_mu_;
  std::string fence_reason_;  // why the tier fenced (reason_mu_)
  // A transfer that failed on a driving thread: the progress thread fences.
  std::atomic<bool> fence_pending_{false};
  absl::Status fence_asked_;  // reason_mu_
  // Replies received on a driving thread, for the progress thread.
  std::mutex handoff_mu_;
  std::vector<RemoteOp*> handoff_;
  std::atomic<bool> handed_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_request_ = 1;
  absl::flat_hash_map<uint64_t, Pending*> pending_;
};

absl::Status RemoteLink::DoSubmit(std::span<Transfer* const> batch) {
  if (!batch.empty() && fenced_.load(std::memory_order_acquire)) {
    return FencedError(batch[0]->op);
  }
  bool undriven = false;  // posted, and no caller drives it
  for (size_t i = 0; i < batch.size(); ++i) {
    Transfer* t = batch[i];
    const bool driven = t->caller_drives;  // `t` may be done once posted
    auto* op = new RemoteOp;
    op->kind = RemoteOp::Kind::kTransfer;
    op->transfer = t;
    if (t->op == Transfer::Op::kWrite) {
      t->checksum = BlockChecksum(t->host, t->key.tensor_id, t->key.block, t->key.version);
    }
    absl::Status s =
        EpochOf(t->frame) != epoch_
            ? absl::InternalError("tier remote: a transfer to a frame of another connection")
        : (t->frame.offset & kOffsetMask) + t->host.size() > capacity()
            ? absl::InternalError("tier remote: a transfer past its frame")
            : Post(*op);
    if (s.ok()) {
      undriven = undriven || !driven;
      continue;
    }
    Fabric::Unregister(op->scratch);
    delete op;
    if (i == 0) return s;  // nothing started: the caller keeps the batch
    t->status = s;         // the others started: this one completes failed
    t->on_done(t);
  }
  // Transfers nobody drives need the progress thread awake.
  if (undriven) WakeProgress();
  return absl::OkStatus();
}

// Posts `op`'s transfer, waiting for queue room up to the control timeout.
absl::Status RemoteLink::Post(RemoteOp& op) {
  Transfer& t = *op.transfer;
  void* desc = nullptr;
  if (fabric_->local_registration()) {
    const bool in_arena = !arena_span_.empty() && t.host.data() >= arena_span_.data() &&
                          t.host.data() + t.host.size() <= arena_span_.data() + arena_span_.size();
    if (in_arena) {
      desc = arena_.desc;
    } else {
      absl::StatusOr<Fabric::Region> r = fabric_->Register(
          t.host.data(), t.host.size(), FI_READ | FI_WRITE, 0);
      if (!r.ok()) return r.status();
      op.scratch = *r;
      desc = r->desc;
    }
  }
  const uint64_t at = base_ + (t.frame.offset & kOffsetMask);
  const auto deadline = std::chrono::steady_clock::now() +
                        absl::ToChronoNanoseconds(config_.timeout);
  for (;;) {
    absl::Status s;
    {
      std::shared_lock posting(post_mu_);
      if (fenced_.load(std::memory_order_acquire)) return FencedError(t.op);
      {
        std::lock_guard lock(inflight_mu_);
        inflight_[&op] = std::chrono::steady_clock::now();
      }
      s = t.op == Transfer::Op::kWrite
              ? fabric_->Write(t.host.data(), t.host.size(), desc, server_, at, key_, &op)
              : fabric_->Read(t.host.data(), t.host.size(), desc, server_, at, key_, &op);
      if (!s.ok()) {
        std::lock_guard lock(inflight_mu_);
        inflight_.erase(&op);
      }
    }
    if (!absl::IsResourceExhausted(s)) return s;
    if (stalled_.load(std::memory_order_acquire)) return FencedError(t.op);
    if (std::chrono::steady_clock::now() >= deadline) {
      // A queue that stays full is a server that is gone (rxm retrying its
      // connection): the progress thread fences the tier, and every other
      // post fails at once instead of waiting as long.
      stalled_.store(true, std::memory_order_release);
      WakeProgress();
      return absl::UnavailableError(absl::StrCat(
          "tier remote: the transfer queue to ", config_.server,
          " stayed full for ", absl::FormatDuration(config_.timeout)));
    }
    WakeProgress();  // the queue drains only while someone polls it
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

bool RemoteLink::Busy() {
  {
    std::lock_guard lock(inflight_mu_);
    if (!inflight_.empty()) return true;
  }
  {
    std::lock_guard lock(sends_mu_);
    if (!sends_.empty()) return true;
  }
  std::lock_guard lock(mu_);
  return !pending_.empty();
}

void RemoteLink::WakeProgress() {
  {
    std::lock_guard lock(wake_mu_);
    wake_ = true;
  }
  wake_cv_.notify_one();
}

void RemoteLink::Progress() {
  Fabric::Op* done[16];
  while (!stop_.load(std::memory_order_relaxed)) {
    // The provider moves the bytes of transfers in flight only inside the
    // poll, so while something is in flight and no waiting thread drives
    // the queue, this thread polls without pause. Otherwise it sleeps
    // until woken, at most 1 ms while busy (for the timeouts below) and
    // 5 ms while idle (a poll then keeps the provider's connections
    // serviced).
    const bool busy = Busy();
    if (!busy || drivers_.load(std::memory_order_acquire) > 0) {
      std::unique_lock lock(wake_mu_);
      wake_cv_.wait_for(lock, std::chrono::milliseconds(busy ? 1 : 5),
                        [&] { return wake_ || stop_.load(std::memory_order_relaxed); });
      wake_ = false;
    }
    const int n = drivers_.load(std::memory_order_acquire) > 0 ? 0 : fabric_->Poll(done, 16, 0);
    CheckTimeouts();
    if (!unposted_.empty()) Repost(nullptr);
    for (int i = 0; i < n; ++i) Dispatch(static_cast<RemoteOp*>(done[i]), true);
    // An empty poll while busy: let the threads that post and copy (on a
    // software provider, the peer too) have the core first (Put 0.77-0.85x
    // raw with it, 0.72-0.80x without; remote_bench).
    if (n == 0 && busy) std::this_thread::yield();
    if (handed_.load(std::memory_order_acquire)) {
      std::vector<RemoteOp*> replies;
      {
        std::lock_guard lock(handoff_mu_);
        replies.swap(handoff_);
        handed_.store(false, std::memory_order_relaxed);
      }
      for (RemoteOp* op : replies) OnReply(*op);
    }
  }
}

void RemoteLink::Dispatch(RemoteOp* op, bool progress) {
  // Which transfer this is, before anything reads it: one Fence failed is
  // done with (and is kept, so the pointer still names it).
  bool landed = false;
  {
    std::lock_guard lock(inflight_mu_);
    landed = inflight_.erase(op) == 1;
    if (!landed && fenced_ops_.contains(op)) return;
  }
  switch (op->kind) {
    case RemoteOp::Kind::kTransfer:
      if (!landed) break;
      if (!op->status.ok()) {
        const absl::Status why = op->status;
        OnTransferDone(op);
        if (progress) {
          Fence(why);
        } else {
          std::lock_guard lock(reason_mu_);
          if (fence_asked_.ok()) fence_asked_ = why;
          fence_pending_.store(true, std::memory_order_release);
          WakeProgress();
        }
      } else if (op->transfer->op == Transfer::Op::kRead &&
                 op->transfer->host.size() >= kVerifyAside) {
        std::lock_guard lock(verify_mu_);
        verify_q_.push_back(op);
        verify_cv_.notify_one();
      } else {
        OnTransferDone(op);
      }
      break;
    case RemoteOp::Kind::kSend: {
      std::lock_guard lock(sends_mu_);
      if (sends_.erase(op) == 1) delete op;
      break;
    }
    case RemoteOp::Kind::kReceive:
      if (progress) {
        OnReply(*op);
      } else {
        std::lock_guard lock(handoff_mu_);
        handoff_.push_back(op);
        handed_.store(true, std::memory_order_release);
        WakeProgress();
      }
      break;
  }
}

void RemoteLink::CheckTimeouts() {
  if (fenced_.load(std::memory_order_relaxed)) return;
  if (fence_pending_.load(std::memory_order_acquire)) {
    absl::Status why;
    {
      std::lock_guard lock(reason_mu_);
      why = fence_asked_;
    }
    Fence(why);
    return;
  }
  if (stalled_.load(std::memory_order_acquire)) {
    Fence(absl::DeadlineExceededError(absl::StrCat(
        "its transfer queue stayed full for ", absl::FormatDuration(config_.timeout))));
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  const auto limit = absl::ToChronoNanoseconds(config_.timeout);
  bool late = false;
  {
    std::lock_guard lock(inflight_mu_);
    for (const auto& [op, posted] : inflight_) late = late || now - posted > limit;
  }
  if (late) {
    Fence(absl::DeadlineExceededError(absl::StrCat(
        "a transfer did not complete within ", absl::FormatDuration(config_.timeout))));
  }
}

// The server is gone or unreachable: close the endpoint (the provider lets
// go of every buffer), then fail what was in flight. Reads in flight and
// every later read are kDataLoss (the copies were there); writes
// kUnavailable; allocations kResourceExhausted, so demotion goes on to the
// next tier. A server restarted at the same address is a new one (its
// generation and keys differ): this connection does not go back to it
// (RemoteTier makes a new one).
void RemoteLink::Fence(const absl::Status& why) {
  if (fenced_.load(std::memory_order_acquire)) return;
  {
    std::unique_lock no_posts(post_mu_);
    {
      std::lock_guard lock(reason_mu_);
      fence_reason_ = std::string(why.message());
    }
    fenced_.store(true, std::memory_order_release);
    fabric_->CloseEndpoint();
  }
  std::vector<RemoteOp*> failed;
  {
    std::lock_guard lock(inflight_mu_);
    for (const auto& [op, posted] : inflight_) failed.push_back(op);
    inflight_.clear();
    fenced_ops_.insert(failed.begin(), failed.end());
  }
  if (config_.log) {
    config_.log(absl::StrCat("strata: tier remote: server ", config_.server,
                             " lost (", FenceReason(), "); ", failed.size(),
                             " transfer(s) in flight failed; its copies are gone"));
  }
  for (RemoteOp* op : failed) {
    Transfer* t = op->transfer;
    Fabric::Unregister(op->scratch);
    t->status = FencedError(t->op);
    t->on_done(t);
  }
  if (on_fence_) on_fence_();
}

std::string RemoteLink::FenceReason() const {
  std::lock_guard lock(reason_mu_);
  return fence_reason_.empty() ? "its transfer queue stays full" : fence_reason_;
}

absl::Status RemoteLink::FencedError(Transfer::Op op) const {
  if (op == Transfer::Op::kRead) {
    return absl::DataLossError(absl::StrCat(
        "tier remote: the copy was at server ", config_.server,
        ", which is lost (", FenceReason(), ")"));
  }
  return absl::UnavailableError(absl::StrCat(
      "tier remote: server ", config_.server, " is lost (", FenceReason(), ")"));
}

void RemoteLink::Verify() {
  std::unique_lock lock(verify_mu_);
  for (;;) {
    verify_cv_.wait(lock, [&] { return verify_stop_ || !verify_q_.empty(); });
    if (verify_q_.empty()) return;  // stopping, nothing left
    RemoteOp* op = verify_q_.front();
    verify_q_.pop_front();
    lock.unlock();
    OnTransferDone(op);
    lock.lock();
  }
}

void RemoteLink::OnTransferDone(RemoteOp* op) {
  Transfer* t = op->transfer;
  Fabric::Unregister(op->scratch);
  absl::Status status = op->status;
  delete op;
  if (!status.ok()) {
    status = absl::UnavailableError(absl::StrCat(
        "tier remote: ", t->op == Transfer::Op::kWrite ? "write" : "read",
        " of tensor ", t->key.tensor_id, " block ", t->key.block, " at ",
        config_.server, " failed: ", status.message()));
  } else if (t->op == Transfer::Op::kRead &&
             BlockChecksum(t->host, t->key.tensor_id, t->key.block, t->key.version) !=
                 t->checksum) {
    status = absl::DataLossError(absl::StrCat(
        "tier remote: checksum mismatch for tensor ", t->key.tensor_id, " block ",
        t->key.block, " version ", t->key.version, " read from ", config_.server));
  }
  t->status = std::move(status);
  t->on_done(t);
}

void RemoteLink::OnReply(RemoteOp& op) {
  if (op.status.ok()) {
    absl::StatusOr<Message> m = remote::Decode(
        std::span<const std::byte>(op.bytes.data(), std::min(op.bytes.size(), op.length)));
    if (m.ok() && m->type == Type::kReply) {
      std::lock_guard lock(mu_);
      if (auto it = pending_.find(m->request); it != pending_.end()) {
        it->second->reply = std::move(*m);
        it->second->done = true;
        cv_.notify_all();
      }
    } else if (config_.log) {
      config_.log(absl::StrCat("strata: tier remote: dropped a bad message from ",
                               config_.server, ": ", m.status().message()));
    }
  }
  Repost(&op);
}

absl::Status RemoteLink::PostReceive(RemoteOp& op) {
  if (faults_.post_receive) {
    if (absl::Status s = faults_.post_receive(); !s.ok()) return s;
  }
  return fabric_->PostRecv(op.bytes.data(), op.bytes.size(), &op);
}

// Puts `op` (if any) and the buffers waiting for queue room back into the
// receive pool. A buffer left out shrinks the pool for good, and with none
// left no reply arrives (transfers then only time out), so a full queue is
// retried after the next Poll, up to the control timeout, and anything else
// fences the tier: later transfers fail at once, naming the error.
void RemoteLink::Repost(RemoteOp* op) {
  if (op != nullptr) {
    if (unposted_.empty()) unposted_since_ = std::chrono::steady_clock::now();
    unposted_.push_back(op);
  }
  // Fenced: the endpoint is closed and lets go of every buffer.
  if (fenced_.load(std::memory_order_acquire)) {
    unposted_.clear();
    return;
  }
  absl::Status s;
  while (!unposted_.empty()) {
    s = PostReceive(*unposted_.back());
    if (!s.ok()) break;
    unposted_.pop_back();
  }
  if (unposted_.empty()) return;
  if (absl::IsResourceExhausted(s) &&
      std::chrono::steady_clock::now() - unposted_since_ <
          absl::ToChronoNanoseconds(config_.timeout)) {
    return;
  }
  Fence(absl::UnavailableError(absl::StrCat(
      "a receive buffer for its replies could not be posted again: ", s.message())));
}

absl::StatusOr<Message> RemoteLink::Call(Message m, absl::Duration timeout) {
  Pending pending;
  {
    std::lock_guard lock(mu_);
    m.request = next_request_++;
    if (m.session == 0) m.session = session_;  // else: EndSession's
    pending_[m.request] = &pending;
  }
  auto* send = new RemoteOp;
  send->kind = RemoteOp::Kind::kSend;
  send->bytes = remote::Encode(m);
  {
    std::lock_guard sends(sends_mu_);
    sends_.insert(send);
  }
  absl::Status sent;
  const auto deadline =
      std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  do {
    std::shared_lock posting(post_mu_);
    sent = fabric_->Send(send->bytes.data(), send->bytes.size(), nullptr, server_, send);
  } while (absl::IsResourceExhausted(sent) && std::chrono::steady_clock::now() < deadline &&
           (WakeProgress(), std::this_thread::sleep_for(std::chrono::microseconds(50)), true));
  WakeProgress();  // the reply comes only while someone polls
  std::unique_lock lock(mu_);
  if (sent.ok()) {
    cv_.wait_until(lock, deadline, [&] { return pending.done; });
  } else {
    std::lock_guard sends(sends_mu_);
    sends_.erase(send);
    delete send;
  }
  pending_.erase(m.request);
  if (!sent.ok() && !absl::IsResourceExhausted(sent)) return sent;
  if (!pending.done) {  // never sent (the queue stayed full), or no answer
    return absl::DeadlineExceededError(absl::StrCat(
        "tier remote: ", config_.server, " did not answer within ",
        absl::FormatDuration(timeout), "; is strata-blockd running there?"));
  }
  if (absl::Status s = remote::StatusOf(pending.reply); !s.ok()) return s;
  return pending.reply;
}

// A connection made: says hello and allocates, or the error why not.
absl::StatusOr<std::unique_ptr<RemoteLink>> OpenLink(const RemoteConfig& config,
                                                    const RemoteFaults& faults,
                                                    uint64_t epoch,
                                                    std::function<void()> on_fence) {
  // Opened toward the server, so that the provider picks the local
  // interface (and address, which the server answers to) that reaches it.
  const size_t colon = config.server.rfind(':');
  const std::string host = config.server.substr(0, colon);
  const std::string service = config.server.substr(colon + 1);
  absl::StatusOr<std::unique_ptr<Fabric>> fabric =
      Fabric::Open({.provider = config.provider, .node = host, .service = service});
  if (!fabric.ok()) return fabric.status();
  absl::StatusOr<fi_addr_t> server = (*fabric)->Resolve(host, service);
  if (!server.ok()) return server.status();
  auto link = std::make_unique<RemoteLink>(config, faults, std::move(fabric).value(),
                                           *server, epoch, std::move(on_fence));
  if (absl::Status s = link->Start(); !s.ok()) return s;
  return link;
}

// The tier of one server: its current connection (RemoteLink), and a
// thread that makes a new one after the server was lost. Transfers of
// frames of the current epoch go to the connection; those of an earlier
// epoch (copies that were on the server when it was lost) fail at once:
// reads kDataLoss, writes kUnavailable.
class RemoteTier final : public RemoteServerTier {
 public:
  RemoteTier(const RemoteConfig& config, RemoteFaults faults)
      : RemoteServerTier("remote", config.capacity_bytes),
        config_(config),
        faults_(std::move(faults)) {}

  ~RemoteTier() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    if (reconnector_.joinable()) reconnector_.join();
    std::shared_ptr<RemoteLink> last;
    {
      std::lock_guard lock(mu_);
      last = std::move(link_);
    }
  }

  absl::Status Start() {
    absl::StatusOr<std::unique_ptr<RemoteLink>> first =
        OpenLink(config_, faults_, 1, [this] { OnLost(1); });
    if (!first.ok()) return first.status();
    link_ = std::move(first).value();
    reconnector_ = std::thread([this] { Reconnect(); });
    return absl::OkStatus();
  }

  bool addressable() const override { return false; }
  uint64_t largest_free() const override { return link()->largest_free(); }

  absl::Status RegisterHostMemory(std::span<std::byte> arena) override {
    {
      std::lock_guard lock(mu_);
      arena_ = arena;
    }
    return link()->RegisterHostMemory(arena);
  }

  bool Holds(const Frame& frame) const override {
    std::shared_ptr<RemoteLink> l = link();
    return EpochOf(frame) == l->epoch() && !l->fenced();
  }

  absl::StatusOr<RemoteServerStat> Stat() override { return link()->Stat(); }

  bool DriveCompletions(absl::FunctionRef<bool()> until,
                        std::chrono::steady_clock::time_point stop) override {
    return link()->DriveCompletions(until, stop);
  }

 private:
  // What became of the copies of an earlier connection.
  struct Lost {
    absl::Status read, write;
  };

  std::shared_ptr<RemoteLink> link() const {
    std::lock_guard lock(mu_);
    return link_;
  }

  absl::StatusOr<Frame> DoAllocate(uint64_t bytes) override {
    return link()->Allocate(bytes);
  }

  void DoFree(const Frame& frame) override {
    // A frame of an earlier connection went with its server.
    std::shared_ptr<RemoteLink> l = link();
    if (EpochOf(frame) == l->epoch()) l->Free(frame);
  }

  absl::Status DoSubmit(std::span<Transfer* const> batch) override;
  absl::Status LostError(const Transfer& t) const;
  void OnLost(uint64_t epoch);
  void Reconnect();
  void Log(std::string_view line) const {
    if (config_.log) config_.log(line);
  }

  const RemoteConfig config_;
  const RemoteFaults faults_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<RemoteLink> link_;  // mu_
  bool link_lost_ = false;            // mu_: link_ fenced
  bool stop_ = false;                 // mu_
  std::span<std::byte> arena_;        // mu_
  absl::flat_hash_map<uint64_t, Lost> lost_;  // mu_: by epoch
  std::thread reconnector_;
};

absl::Status RemoteTier::DoSubmit(std::span<Transfer* const> batch) {
  std::shared_ptr<RemoteLink> l = link();
  const uint64_t epoch = l->epoch();
  size_t stale = 0;
  for (Transfer* t : batch) stale += EpochOf(t->frame) != epoch;
  if (stale == 0) return l->Submit(batch);
  if (stale == batch.size()) return LostError(*batch[0]);  // none started
  // Some of each: the current ones start, the others complete failed.
  std::vector<Transfer*> current;
  for (Transfer* t : batch) {
    if (EpochOf(t->frame) == epoch) current.push_back(t);
  }
  absl::Status started = l->Submit(current);
  for (Transfer* t : batch) {
    if (EpochOf(t->frame) == epoch && started.ok()) continue;
    t->status = EpochOf(t->frame) == epoch ? started : LostError(*t);
    t->on_done(t);
  }
  return absl::OkStatus();
}

absl::Status RemoteTier::LostError(const Transfer& t) const {
  std::lock_guard lock(mu_);
  auto it = lost_.find(EpochOf(t.frame));
  if (it == lost_.end()) {
    return absl::InternalError(absl::StrCat("tier remote: a transfer to a frame of ",
                                            config_.server, " no connection made"));
  }
  return t.op == Transfer::Op::kRead ? it->second.read : it->second.write;
}

void RemoteTier::OnLost(uint64_t epoch) {
  {
    std::lock_guard lock(mu_);
    if (link_ == nullptr || link_->epoch() != epoch) return;
    link_lost_ = true;
    cv_.notify_all();
  }
  if (config_.on_lost) config_.on_lost();
}

// After a loss: waits `reconnect_backoff` (doubling while the server stays
// away, up to 32x), says hello again, and on an answer makes the new
// connection current. Its generation tells a restarted server from one
// that lived on through a network fault; the latter still holds the old
// session, which is ended (its copies were already reported lost).
void RemoteTier::Reconnect() {
  const absl::Duration first = config_.reconnect_backoff;
  absl::Duration backoff = first;
  int failures = 0;
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || link_lost_; });
    if (stop_) return;
    if (cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff), [&] { return stop_; })) return;
    std::shared_ptr<RemoteLink> old = link_;
    const uint64_t epoch = old->epoch() + 1;
    const std::span<std::byte> arena = arena_;
    lock.unlock();
    absl::StatusOr<std::unique_ptr<RemoteLink>> fresh =
        OpenLink(config_, faults_, epoch, [this, epoch] { OnLost(epoch); });
    if (fresh.ok() && !arena.empty()) {
      if (absl::Status r = (*fresh)->RegisterHostMemory(arena); !r.ok()) fresh = r;
    }
    if (!fresh.ok()) {
      if (failures++ == 0) {
        Log(absl::StrCat("strata: tier remote: server ", config_.server,
                         " does not answer yet (", fresh.status().message(),
                         "); trying again, every ", absl::FormatDuration(backoff),
                         " and less often"));
      }
      backoff = std::min(backoff * 2, first * 32);
      old.reset();
      lock.lock();
      continue;
    }
    std::shared_ptr<RemoteLink> now = std::move(fresh).value();
    const bool restarted = now->generation() != old->generation();
    if (!restarted) {
      // Still the old server: what it holds for the old session is no
      // one's now. (Best effort: if this fails, the session ends with the
      // server.)
      (void)now->EndSession(old->session());
    }
    Log(absl::StrCat(
        "strata: tier remote: server ", config_.server,
        restarted ? absl::StrCat(" is back as a new server (generation ", old->generation(),
                                 " -> ", now->generation(), ")")
                  : absl::StrCat(" answers again (same generation ", now->generation(),
                                 "; its old session is ended)"),
        "; new blocks go there again, the copies placed before it was lost stay lost"));
    lock.lock();
    if (stop_) {
      lock.unlock();
      return;  // `now` closes as this returns
    }
    lost_[old->epoch()] = Lost{.read = old->LostError(Transfer::Op::kRead),
                               .write = old->LostError(Transfer::Op::kWrite)};
    link_ = now;
    link_lost_ = now->fenced();  // lost already: again after the backoff
    backoff = first;
    failures = 0;
    // The old connection closes unlocked (its threads may be calling OnLost).
    lock.unlock();
    old.reset();
    now.reset();
    lock.lock();
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RemoteServerTier>> MakeRemoteServerTier(
    const RemoteConfig& config, RemoteFaults faults) {
  if (config.capacity_bytes == 0 || config.capacity_bytes % kAlign != 0 ||
      config.capacity_bytes > kOffsetMask) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier remote: capacity_bytes ", config.capacity_bytes,
        " must be a non-zero multiple of 4096 below 2^48; set "
        "EngineOptions::remote.capacity_bytes"));
  }
  const size_t colon = config.server.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(config.server.substr(colon + 1), &port) || port == 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier remote: server '", config.server, "' is not host:port"));
  }
  if (config.reconnect_backoff <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier remote: reconnect_backoff ", absl::FormatDuration(config.reconnect_backoff),
        " must be positive; set EngineOptions::remote.reconnect_backoff"));
  }
  auto tier = std::make_unique<RemoteTier>(config, std::move(faults));
  if (absl::Status s = tier->Start(); !s.ok()) return s;
  return std::unique_ptr<RemoteServerTier>(std::move(tier));
}

absl::StatusOr<std::unique_ptr<Tier>> MakeRemoteTier(const RemoteConfig& config,
                                                     RemoteFaults faults) {
  absl::StatusOr<std::unique_ptr<RemoteServerTier>> tier =
      MakeRemoteServerTier(config, std::move(faults));
  if (!tier.ok()) return tier.status();
  return std::unique_ptr<Tier>(std::move(tier).value());
}

absl::StatusOr<RemoteServerStat> StatRemoteServer(Tier& tier) {
  auto* remote = dynamic_cast<RemoteServerTier*>(&tier);
  if (remote == nullptr) return absl::InvalidArgumentError("not a remote tier");
  return remote->Stat();
}

}  // namespace strata::tiers
