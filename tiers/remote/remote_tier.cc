#include "tiers/remote/remote_tier.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
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

struct RemoteOp : Fabric::Op {
  enum class Kind { kReceive, kSend, kTransfer } kind = Kind::kReceive;
  std::vector<std::byte> bytes;       // a message
  Transfer* transfer = nullptr;       // kTransfer
  Fabric::Region scratch;             // a registration made for this op only
};

class RemoteTier final : public Tier {
 public:
  RemoteTier(const RemoteConfig& config, RemoteFaults faults,
             std::unique_ptr<Fabric> fabric, fi_addr_t server)
      : Tier("remote", config.capacity_bytes),
        config_(config),
        faults_(std::move(faults)),
        fabric_(std::move(fabric)),
        server_(server),
        frames_(config.capacity_bytes) {}

  ~RemoteTier() override {
    if (session_ != 0) {
      Message bye{.type = Type::kBye};
      (void)Call(bye, absl::Seconds(1));
    }
    stop_.store(true);
    if (progress_.joinable()) progress_.join();
    {
      std::lock_guard lock(verify_mu_);
      verify_stop_ = true;
      verify_cv_.notify_all();
    }
    if (verifier_.joinable()) verifier_.join();
    Fabric::Unregister(arena_);
    fabric_.reset();  // before the receive buffers go
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

  absl::Status RegisterHostMemory(std::span<std::byte> arena) override {
    if (!fabric_->local_registration()) return absl::OkStatus();  // not needed
    absl::StatusOr<Fabric::Region> r =
        fabric_->Register(arena.data(), arena.size(), FI_READ | FI_WRITE, 0);
    if (!r.ok()) return r.status();
    arena_ = *r;
    arena_span_ = arena;
    return absl::OkStatus();
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
    return Frame{.offset = *offset, .bytes = need, .data = nullptr};
  }

  void DoFree(const Frame& frame) override { frames_.Free(frame.offset, frame.bytes); }

  absl::Status DoSubmit(std::span<Transfer* const> batch) override;
  absl::Status Post(RemoteOp& op);
  void Progress();
  void OnTransferDone(RemoteOp* op);
  void Verify();
  // True when `op` was in flight (and is no longer); false when Fence
  // already failed it.
  bool Landed(RemoteOp* op);
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
  Fabric::Region arena_;
  std::span<std::byte> arena_span_;
  std::vector<RemoteOp> receives_;
  // Receive buffers whose re-post met a full queue, retried after each Poll
  // since the first such failure (progress thread only).
  std::vector<RemoteOp*> unposted_;
  std::chrono::steady_clock::time_point unposted_since_;
  std::thread progress_;
  std::atomic<bool> stop_{false};
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
  std::atomic<bool> fenced_{false};
  std::atomic<bool> stalled_{false};  // a post gave up: Fence, please
  mutable std::mutex reason_mu_;
  std::string fence_reason_;  // why the tier fenced (reason_mu_)
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_request_ = 1;
  absl::flat_hash_map<uint64_t, Pending*> pending_;
};

absl::Status RemoteTier::DoSubmit(std::span<Transfer* const> batch) {
  if (!batch.empty() && fenced_.load(std::memory_order_acquire)) {
    return FencedError(batch[0]->op);
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    Transfer* t = batch[i];
    auto* op = new RemoteOp;
    op->kind = RemoteOp::Kind::kTransfer;
    op->transfer = t;
    if (t->op == Transfer::Op::kWrite) {
      t->checksum = BlockChecksum(t->host, t->key.tensor_id, t->key.block, t->key.version);
    }
    absl::Status s = t->frame.offset + t->host.size() > capacity()
                         ? absl::InternalError("tier remote: a transfer past its frame")
                         : Post(*op);
    if (s.ok()) continue;
    Fabric::Unregister(op->scratch);
    delete op;
    if (i == 0) return s;  // nothing started: the caller keeps the batch
    t->status = s;         // the others started: this one completes failed
    t->on_done(t);
  }
  return absl::OkStatus();
}

// Posts `op`'s transfer, waiting for queue room up to the control timeout.
absl::Status RemoteTier::Post(RemoteOp& op) {
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
  const uint64_t at = base_ + t.frame.offset;
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
      return absl::UnavailableError(absl::StrCat(
          "tier remote: the transfer queue to ", config_.server,
          " stayed full for ", absl::FormatDuration(config_.timeout)));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void RemoteTier::Progress() {
  Fabric::Op* done[16];
  while (!stop_.load(std::memory_order_relaxed)) {
    // While transfers are in flight, poll without napping: the provider
    // moves their bytes only inside this call.
    bool busy;
    {
      std::lock_guard lock(inflight_mu_);
      busy = !inflight_.empty();
    }
    const int n = fabric_->Poll(done, 16, busy ? 0 : 5);
    CheckTimeouts();
    if (!unposted_.empty()) Repost(nullptr);
    for (int i = 0; i < n; ++i) {
      auto* op = static_cast<RemoteOp*>(done[i]);
      switch (op->kind) {
        case RemoteOp::Kind::kTransfer:
          if (!Landed(op)) break;  // Fence failed it already
          if (!op->status.ok()) {
            const absl::Status why = op->status;
            OnTransferDone(op);
            Fence(why);
          } else if (op->transfer->op == Transfer::Op::kRead &&
                     op->transfer->host.size() >= kVerifyAside) {
            std::lock_guard lock(verify_mu_);
            verify_q_.push_back(op);
            verify_cv_.notify_one();
          } else {
            OnTransferDone(op);
          }
          break;
        case RemoteOp::Kind::kSend: delete op; break;
        case RemoteOp::Kind::kReceive: OnReply(*op); break;
      }
    }
  }
}

bool RemoteTier::Landed(RemoteOp* op) {
  std::lock_guard lock(inflight_mu_);
  return inflight_.erase(op) == 1;
}

void RemoteTier::CheckTimeouts() {
  if (fenced_.load(std::memory_order_relaxed)) return;
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
// generation and keys differ): this tier does not go back to it.
void RemoteTier::Fence(const absl::Status& why) {
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
  }
  if (config_.log) {
    config_.log(absl::StrCat("strata: tier remote: server ", config_.server,
                             " lost (", FenceReason(), "); ", failed.size(),
                             " transfer(s) in flight failed; its copies are gone"));
  }
  for (RemoteOp* op : failed) {
    Transfer* t = op->transfer;
    Fabric::Unregister(op->scratch);
    delete op;
    t->status = FencedError(t->op);
    t->on_done(t);
  }
}

std::string RemoteTier::FenceReason() const {
  std::lock_guard lock(reason_mu_);
  return fence_reason_.empty() ? "its transfer queue stays full" : fence_reason_;
}

absl::Status RemoteTier::FencedError(Transfer::Op op) const {
  if (op == Transfer::Op::kRead) {
    return absl::DataLossError(absl::StrCat(
        "tier remote: the copy was at server ", config_.server,
        ", which is lost (", FenceReason(), ")"));
  }
  return absl::UnavailableError(absl::StrCat(
      "tier remote: server ", config_.server, " is lost (", FenceReason(), ")"));
}

void RemoteTier::Verify() {
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

void RemoteTier::OnTransferDone(RemoteOp* op) {
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

void RemoteTier::OnReply(RemoteOp& op) {
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

absl::Status RemoteTier::PostReceive(RemoteOp& op) {
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
void RemoteTier::Repost(RemoteOp* op) {
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

absl::StatusOr<Message> RemoteTier::Call(Message m, absl::Duration timeout) {
  Pending pending;
  {
    std::lock_guard lock(mu_);
    m.request = next_request_++;
    m.session = session_;
    pending_[m.request] = &pending;
  }
  auto* send = new RemoteOp;
  send->kind = RemoteOp::Kind::kSend;
  send->bytes = remote::Encode(m);
  absl::Status sent;
  const auto deadline =
      std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  do {
    std::shared_lock posting(post_mu_);
    sent = fabric_->Send(send->bytes.data(), send->bytes.size(), nullptr, server_, send);
  } while (absl::IsResourceExhausted(sent) && std::chrono::steady_clock::now() < deadline &&
           (std::this_thread::sleep_for(std::chrono::microseconds(50)), true));
  std::unique_lock lock(mu_);
  if (sent.ok()) {
    cv_.wait_until(lock, deadline, [&] { return pending.done; });
  } else {
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

}  // namespace

absl::StatusOr<std::unique_ptr<Tier>> MakeRemoteTier(const RemoteConfig& config,
                                                     RemoteFaults faults) {
  if (config.capacity_bytes == 0 || config.capacity_bytes % kAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier remote: capacity_bytes ", config.capacity_bytes,
        " must be a non-zero multiple of 4096; set EngineOptions::remote.capacity_bytes"));
  }
  const size_t colon = config.server.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(config.server.substr(colon + 1), &port) || port == 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier remote: server '", config.server, "' is not host:port"));
  }
  // Opened toward the server, so that the provider picks the local
  // interface (and address, which the server answers to) that reaches it.
  const std::string host = config.server.substr(0, colon);
  const std::string service = config.server.substr(colon + 1);
  absl::StatusOr<std::unique_ptr<Fabric>> fabric =
      Fabric::Open({.provider = config.provider, .node = host, .service = service});
  if (!fabric.ok()) return fabric.status();
  absl::StatusOr<fi_addr_t> server = (*fabric)->Resolve(host, service);
  if (!server.ok()) return server.status();
  auto tier = std::make_unique<RemoteTier>(config, std::move(faults),
                                           std::move(fabric).value(), *server);
  if (absl::Status s = tier->Start(); !s.ok()) return s;
  return std::unique_ptr<Tier>(std::move(tier));
}

absl::StatusOr<RemoteServerStat> StatRemoteServer(Tier& tier) {
  auto* remote = dynamic_cast<RemoteTier*>(&tier);
  if (remote == nullptr) return absl::InvalidArgumentError("not a remote tier");
  return remote->Stat();
}

}  // namespace strata::tiers
