#include "tiers/remote/replicated_tier.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "xxhash.h"

namespace strata::tiers {
namespace {

// One block's copies: a frame in each of its servers.
struct Placement {
  int replicas = 0;
  int server[kMaxReplication] = {};
  Frame frame[kMaxReplication];
  // What the copies hold, once a write completed: what a repair copies to
  // a new replica, and checks on the way.
  bool written = false;
  BlockKey key;
  uint64_t length = 0;
  uint64_t checksum = 0;
  int writing = 0;      // writes in flight (a repair waits for none)
  uint64_t writes = 0;  // writes started: a repair installs only if unchanged
};

// Wakes the repair thread; made before the per-server tiers, whose on_lost
// it is.
struct RepairSignal {
  std::mutex mu;
  std::condition_variable cv;
  bool kick = false;
  bool stop = false;
  void Kick() {
    std::lock_guard lock(mu);
    kick = true;
    cv.notify_all();
  }
};

// A transfer of the caller split into one per replica (writes), or tried
// replica after replica (reads).
struct Parent {
  class ReplicatedTier* tier;
  Transfer* caller;
  Placement placement;
  std::mutex mu;
  int left = 0;          // writes: children not yet done
  int next = 0;          // reads: the replica to try next
  absl::Status first_error;
  bool any_ok = false;
  uint64_t checksum = 0;
  Transfer child[kMaxReplication];
};

class ReplicatedTier final : public Tier {
 public:
  ReplicatedTier(std::vector<std::unique_ptr<RemoteServerTier>> servers,
                 std::vector<std::string> names, int replication,
                 uint64_t capacity, std::function<void(std::string_view)> log,
                 std::shared_ptr<RepairSignal> signal)
      : Tier("remote", capacity),
        servers_(std::move(servers)),
        names_(std::move(names)),
        replication_(replication),
        log_(std::move(log)),
        signal_(std::move(signal)) {
    repairer_ = std::thread([this] { RepairLoop(); });
  }

  ~ReplicatedTier() override {
    {
      std::lock_guard lock(signal_->mu);
      signal_->stop = true;
      signal_->cv.notify_all();
    }
    repairer_.join();
  }

  ReplicationHealth Health();

  // Each server's queue in turn, 100 us at a time (the copy waited for may
  // come from any of them; meanwhile the others' progress threads poll
  // theirs).
  bool DriveCompletions(absl::FunctionRef<bool()> until,
                        std::chrono::steady_clock::time_point stop) override {
    bool any = false;
    for (;;) {
      bool drove = false;
      for (auto& s : servers_) {
        const auto slice = std::min(stop, std::chrono::steady_clock::now() +
                                              std::chrono::microseconds(100));
        drove = s->DriveCompletions(until, slice) || drove;
        if (until()) return true;
      }
      any = any || drove;
      if (!drove || std::chrono::steady_clock::now() >= stop) return any;
    }
  }

  bool addressable() const override { return false; }

  absl::Status RegisterHostMemory(std::span<std::byte> arena) override {
    for (auto& s : servers_) {
      if (absl::Status r = s->RegisterHostMemory(arena); !r.ok()) return r;
    }
    return absl::OkStatus();
  }

  void ChildDone(Parent& p, Transfer& child);
  void ReleaseWrite(Parent& p, const Transfer& child, bool counts_as_copy);
  void Degrade(Parent& p);

 private:
  absl::StatusOr<Frame> DoAllocate(uint64_t bytes) override;
  void DoFree(const Frame& frame) override;
  absl::Status DoSubmit(std::span<Transfer* const> batch) override;
  // Servers by rendezvous hashing of the frame id: each server scores
  // XXH3(id, its name); the highest scores hold the copies. Adding or
  // losing a server moves only the copies it scores highest for.
  std::vector<int> Ranked(uint64_t id) const;
  absl::Status StartRead(Parent& p);
  void Finish(Parent* p, absl::Status status);
  // Written copies on servers that still hold them.
  int LiveReplicas(const Placement& p) const;
  // The repair thread: after a server was lost (or a write reached fewer
  // replicas than asked), copies each block that lost a replica from one
  // that holds it to another server, so that a second loss later does not
  // lose it. Rounds repeat (every second) while some block waits for room
  // or for its write to end.
  void RepairLoop();
  bool RepairRound();  // true when every block has its replicas
  bool Repair(uint64_t id);

  std::vector<std::unique_ptr<RemoteServerTier>> servers_;
  std::vector<std::string> names_;
  int replication_;
  std::atomic<uint64_t> next_id_{1};
  std::function<void(std::string_view)> log_;
  std::atomic<uint64_t> degraded_{0};
  std::mutex mu_;
  absl::flat_hash_map<uint64_t, Placement> placements_;
  std::shared_ptr<RepairSignal> signal_;
  std::atomic<uint64_t> repaired_{0};
  std::atomic<uint64_t> rounds_{0};
  std::thread repairer_;
};

std::vector<int> ReplicatedTier::Ranked(uint64_t id) const {
  std::vector<std::pair<uint64_t, int>> scores;
  for (int i = 0; i < static_cast<int>(servers_.size()); ++i) {
    scores.emplace_back(XXH3_64bits_withSeed(names_[i].data(), names_[i].size(), id), i);
  }
  std::sort(scores.rbegin(), scores.rend());
  std::vector<int> order;
  for (const auto& [score, i] : scores) order.push_back(i);
  return order;
}

absl::StatusOr<Frame> ReplicatedTier::DoAllocate(uint64_t bytes) {
  const uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  Placement p;
  absl::Status last;
  // The first `replication_` servers by rank that have room (a full or
  // lost one is passed over: the copy goes to the next in rank).
  for (int s : Ranked(id)) {
    if (p.replicas == replication_) break;
    absl::StatusOr<Frame> f = servers_[s]->Allocate(bytes);
    if (!f.ok()) {
      last = f.status();
      continue;
    }
    p.server[p.replicas] = s;
    p.frame[p.replicas] = *f;
    ++p.replicas;
  }
  if (p.replicas < replication_) {
    for (int r = 0; r < p.replicas; ++r) servers_[p.server[r]]->Free(p.frame[r]);
    return absl::ResourceExhaustedError(absl::StrCat(
        "tier remote: fewer than ", replication_, " servers have a free frame of ",
        bytes, " bytes (last: ", last.message(), ")"));
  }
  uint64_t frame_bytes = p.frame[0].bytes;
  for (int r = 1; r < p.replicas; ++r) frame_bytes = std::min(frame_bytes, p.frame[r].bytes);
  std::lock_guard lock(mu_);
  placements_.emplace(id, p);
  return Frame{.offset = id, .bytes = frame_bytes, .data = nullptr};
}

void ReplicatedTier::DoFree(const Frame& frame) {
  Placement p;
  {
    std::lock_guard lock(mu_);
    auto it = placements_.find(frame.offset);
    if (it == placements_.end()) return;
    p = it->second;
    placements_.erase(it);
  }
  for (int r = 0; r < p.replicas; ++r) servers_[p.server[r]]->Free(p.frame[r]);
}

absl::Status ReplicatedTier::DoSubmit(std::span<Transfer* const> batch) {
  for (size_t i = 0; i < batch.size(); ++i) {
    Transfer* t = batch[i];
    auto* p = new Parent{.tier = this, .caller = t};
    {
      std::lock_guard lock(mu_);
      auto it = placements_.find(t->frame.offset);
      if (it != placements_.end()) {
        if (t->op == Transfer::Op::kWrite) {
          ++it->second.writing;
          ++it->second.writes;
        }
        p->placement = it->second;
      }
    }
    absl::Status started;
    if (p->placement.replicas == 0) {
      started = absl::InternalError("tier remote: a transfer to an unknown frame");
    } else if (t->op == Transfer::Op::kRead) {
      started = StartRead(*p);
    } else {
      // Every replica gets the bytes; the write is done when all are. The
      // submitter holds one count too, so that children completing on
      // other threads cannot finish (and free) the parent mid-loop.
      const int replicas = p->placement.replicas;
      p->left = replicas + 1;
      for (int r = 0; r < replicas; ++r) {
        Transfer& c = p->child[r];
        c = *t;
        c.frame = p->placement.frame[r];
        c.user = p;
        c.on_done = [](Transfer* x) {
          auto* parent = static_cast<Parent*>(x->user);
          parent->tier->ChildDone(*parent, *x);
        };
        Transfer* one[] = {&c};
        absl::Status s = servers_[p->placement.server[r]]->Submit(one);
        if (!s.ok()) {
          c.status = s;
          ChildDone(*p, c);  // counts it
        }
      }
      Transfer submitted;  // the submitter's count: OK, changes nothing
      submitted.op = Transfer::Op::kWrite;
      submitted.status = absl::OkStatus();
      submitted.checksum = 0;
      ReleaseWrite(*p, submitted, /*counts_as_copy=*/false);
      continue;  // the parent completes through its children
    }
    if (started.ok()) continue;
    if (t->op == Transfer::Op::kWrite) {  // never started: not in flight
      std::lock_guard lock(mu_);
      if (auto it = placements_.find(t->frame.offset); it != placements_.end()) {
        --it->second.writing;
      }
    }
    delete p;
    if (i == 0) return started;
    t->status = started;
    t->on_done(t);
  }
  return absl::OkStatus();
}

// Reads the next replica; on its failure ChildDone tries the one after.
absl::Status ReplicatedTier::StartRead(Parent& p) {
  absl::Status last = absl::UnavailableError("tier remote: no replica to read");
  while (p.next < p.placement.replicas) {
    const int r = p.next++;
    Transfer& c = p.child[r];
    c = *p.caller;
    c.frame = p.placement.frame[r];
    c.user = &p;
    c.on_done = [](Transfer* x) {
      auto* parent = static_cast<Parent*>(x->user);
      parent->tier->ChildDone(*parent, *x);
    };
    Transfer* one[] = {&c};
    last = servers_[p.placement.server[r]]->Submit(one);
    if (last.ok()) return last;
  }
  return last;
}

void ReplicatedTier::ChildDone(Parent& p, Transfer& child) {
  if (p.caller->op == Transfer::Op::kRead) {
    if (child.status.ok()) {
      Finish(&p, absl::OkStatus());
      return;
    }
    {
      std::lock_guard lock(p.mu);
      if (p.first_error.ok()) p.first_error = child.status;
    }
    if (p.next < p.placement.replicas && StartRead(p).ok()) return;  // the next copy
    Finish(&p, p.first_error);
    return;
  }
  ReleaseWrite(p, child, /*counts_as_copy=*/true);
}

void ReplicatedTier::ReleaseWrite(Parent& p, const Transfer& child,
                                  bool counts_as_copy) {
  bool last;
  {
    std::lock_guard lock(p.mu);
    if (counts_as_copy && child.status.ok()) {
      p.any_ok = true;
      p.checksum = child.checksum;
    } else if (counts_as_copy && p.first_error.ok()) {
      p.first_error = child.status;
    }
    last = --p.left == 0;
  }
  if (!last) return;
  // A write is done when every replica that is still alive holds the
  // bytes: a replica whose write failed is dropped from the placement (its
  // server is lost or failing; the block lives on, degraded, on the
  // others). With no replica left, the write fails (the block stays dirty
  // above, and its tensor's next Flush reports it).
  if (p.any_ok && !p.first_error.ok()) Degrade(p);
  {
    std::lock_guard lock(mu_);
    if (auto it = placements_.find(p.caller->frame.offset); it != placements_.end()) {
      Placement& now = it->second;
      --now.writing;
      if (p.any_ok) {
        now.written = true;
        now.key = p.caller->key;
        now.length = p.caller->host.size();
        now.checksum = p.checksum;
      }
    }
  }
  Finish(&p, p.any_ok ? absl::OkStatus() : p.first_error);
}

void ReplicatedTier::Degrade(Parent& p) {
  std::vector<std::pair<int, Frame>> drop;
  {
    std::lock_guard lock(mu_);
    auto it = placements_.find(p.caller->frame.offset);
    if (it == placements_.end()) return;  // freed meanwhile
    // Out of the placement as it is now (a repair may have changed it
    // since this write started): the replicas whose write failed.
    Placement& now = it->second;
    int kept = 0;
    for (int r = 0; r < now.replicas; ++r) {
      bool failed = false;
      for (int c = 0; c < p.placement.replicas; ++c) {
        failed = failed || (!p.child[c].status.ok() &&
                            p.placement.server[c] == now.server[r] &&
                            p.placement.frame[c].offset == now.frame[r].offset);
      }
      if (failed) {
        drop.emplace_back(now.server[r], now.frame[r]);
      } else {
        now.server[kept] = now.server[r];
        now.frame[kept] = now.frame[r];
        ++kept;
      }
    }
    now.replicas = kept;
  }
  for (const auto& [server, frame] : drop) servers_[server]->Free(frame);
  signal_->Kick();  // a replica short: the repair thread finds it another
  const uint64_t n = degraded_.fetch_add(1, std::memory_order_relaxed) + 1;
  if ((n & (n - 1)) == 0 && log_) {
    log_(absl::StrCat("strata: tier remote: ", n, " block(s) written to fewer "
                      "replicas than asked (", p.first_error.message(), ")"));
  }
}

void ReplicatedTier::Finish(Parent* p, absl::Status status) {
  Transfer* t = p->caller;
  if (status.ok() && t->op == Transfer::Op::kWrite) t->checksum = p->checksum;
  delete p;
  t->status = std::move(status);
  t->on_done(t);
}

int ReplicatedTier::LiveReplicas(const Placement& p) const {
  int live = 0;
  for (int r = 0; r < p.replicas; ++r) live += servers_[p.server[r]]->Holds(p.frame[r]);
  return live;
}

ReplicationHealth ReplicatedTier::Health() {
  ReplicationHealth h{.repaired = repaired_.load(), .repair_rounds = rounds_.load()};
  std::lock_guard lock(mu_);
  for (const auto& [id, p] : placements_) {
    if (!p.written) continue;
    ++h.blocks;
    const int live = LiveReplicas(p);
    h.under_replicated += live < replication_;
    h.lost += live == 0;
  }
  return h;
}

void ReplicatedTier::RepairLoop() {
  bool left = false;
  std::unique_lock lock(signal_->mu);
  for (;;) {
    auto woken = [&] { return signal_->stop || signal_->kick; };
    if (left) {
      signal_->cv.wait_for(lock, std::chrono::seconds(1), woken);
    } else {
      signal_->cv.wait(lock, woken);
    }
    if (signal_->stop) return;
    signal_->kick = false;
    lock.unlock();
    left = !RepairRound();
    rounds_.fetch_add(1);
    lock.lock();
  }
}

bool ReplicatedTier::RepairRound() {
  std::vector<uint64_t> ids;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, p] : placements_) {
      // Unwritten blocks have nothing to copy: their first write drops a
      // lost replica (Degrade), which brings them here.
      if (p.written && LiveReplicas(p) < replication_) ids.push_back(id);
    }
  }
  bool all = true;
  for (uint64_t id : ids) {
    {
      std::lock_guard lock(signal_->mu);
      if (signal_->stop) return true;
    }
    all = Repair(id) && all;
  }
  return all;
}

// One transfer, waited for (the per-server tier completes every transfer
// within twice its timeout, also when its server dies).
absl::Status Run(Tier& tier, Transfer::Op op, const Frame& frame, const Placement& p,
                 std::span<std::byte> host) {
  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  } w;
  Transfer t;
  t.op = op;
  t.key = p.key;
  t.frame = frame;
  t.host = host;
  t.checksum = p.checksum;
  t.user = &w;
  t.on_done = [](Transfer* x) {
    auto* w = static_cast<Waiter*>(x->user);
    std::lock_guard lock(w->mu);
    w->done = true;
    w->cv.notify_all();
  };
  Transfer* one[] = {&t};
  if (absl::Status s = tier.Submit(one); !s.ok()) return s;
  std::unique_lock lock(w.mu);
  w.cv.wait(lock, [&] { return w.done; });
  return t.status;
}

// Brings block `id` back to `replication_` live copies: reads it from a
// replica that holds it (checksummed), writes it to servers that hold none
// (the next ones in its rank order with room), and installs them in place
// of the lost ones, unless the block was freed or written meanwhile. True
// when nothing is left to do for it.
bool ReplicatedTier::Repair(uint64_t id) {
  Placement p;
  {
    std::lock_guard lock(mu_);
    auto it = placements_.find(id);
    if (it == placements_.end()) return true;
    p = it->second;
  }
  if (p.writing > 0) return false;  // after its write
  std::vector<int> live;  // replica indices
  for (int r = 0; r < p.replicas; ++r) {
    if (servers_[p.server[r]]->Holds(p.frame[r])) live.push_back(r);
  }
  if (live.empty()) return true;  // lost: reads say so (kDataLoss)
  std::vector<std::pair<int, Frame>> added;
  const int need = replication_ - static_cast<int>(live.size());
  if (need > 0) {
    std::vector<std::byte> bytes(p.length);
    absl::Status read = absl::UnavailableError("no replica read");
    for (int r : live) {
      read = Run(*servers_[p.server[r]], Transfer::Op::kRead, p.frame[r], p, bytes);
      if (read.ok()) break;
    }
    if (!read.ok()) return false;
    for (int s : Ranked(id)) {
      if (static_cast<int>(added.size()) == need) break;
      bool holds = false;
      for (int r : live) holds = holds || p.server[r] == s;
      if (holds) continue;
      absl::StatusOr<Frame> f = servers_[s]->Allocate(p.frame[live[0]].bytes);
      if (!f.ok()) continue;  // full, or lost too
      if (!Run(*servers_[s], Transfer::Op::kWrite, *f, p, bytes).ok()) {
        servers_[s]->Free(*f);
        continue;
      }
      added.emplace_back(s, *f);
    }
    if (added.empty()) return false;  // no room now: the next round
  }
  const size_t got = added.size();
  std::vector<std::pair<int, Frame>> drop;
  {
    std::lock_guard lock(mu_);
    auto it = placements_.find(id);
    if (it != placements_.end() && it->second.writes == p.writes &&
        it->second.writing == 0) {
      Placement& now = it->second;
      Placement fresh = now;
      fresh.replicas = 0;
      for (int r = 0; r < now.replicas; ++r) {
        if (servers_[now.server[r]]->Holds(now.frame[r])) {
          fresh.server[fresh.replicas] = now.server[r];
          fresh.frame[fresh.replicas] = now.frame[r];
          ++fresh.replicas;
        } else {
          drop.emplace_back(now.server[r], now.frame[r]);
        }
      }
      for (const auto& [s, f] : added) {
        if (fresh.replicas == kMaxReplication) {
          drop.emplace_back(s, f);
          continue;
        }
        fresh.server[fresh.replicas] = s;
        fresh.frame[fresh.replicas] = f;
        ++fresh.replicas;
      }
      now = fresh;
      added.clear();  // installed
    }
  }
  const bool installed = added.empty();
  for (const auto& [s, f] : added) servers_[s]->Free(f);  // freed or rewritten meanwhile
  for (const auto& [s, f] : drop) servers_[s]->Free(f);
  if (!installed) return false;  // look again next round
  if (need > 0) {
    const uint64_t n = repaired_.fetch_add(1) + 1;
    if ((n & (n - 1)) == 0 && log_) {
      log_(absl::StrCat("strata: tier remote: ", n, " block(s) that lost a copy "
                        "copied again to another server"));
    }
  }
  return static_cast<int>(live.size() + got) >= replication_;
}

}  // namespace

absl::StatusOr<ReplicationHealth> GetReplicationHealth(Tier& tier) {
  auto* replicated = dynamic_cast<ReplicatedTier*>(&tier);
  if (replicated == nullptr) return absl::InvalidArgumentError("not a replicated remote tier");
  return replicated->Health();
}

absl::StatusOr<std::unique_ptr<Tier>> MakeReplicatedRemoteTier(
    const RemoteConfig& base, const std::vector<std::string>& servers,
    int replication) {
  if (replication < 1 || replication > kMaxReplication ||
      replication > static_cast<int>(servers.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "remote.replication ", replication, " must be 1..", kMaxReplication,
        " and at most the number of servers (", servers.size(), ")"));
  }
  auto signal = std::make_shared<RepairSignal>();
  std::vector<std::unique_ptr<RemoteServerTier>> tiers;
  for (const std::string& server : servers) {
    RemoteConfig c = base;
    c.server = server;
    c.on_lost = [signal] { signal->Kick(); };
    absl::StatusOr<std::unique_ptr<RemoteServerTier>> t = MakeRemoteServerTier(c);
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat("server ", server, ": ", t.status().message()));
    }
    tiers.push_back(std::move(t).value());
  }
  const uint64_t capacity = base.capacity_bytes * servers.size() / replication;
  return std::unique_ptr<Tier>(new ReplicatedTier(std::move(tiers), servers, replication,
                                                  capacity, base.log, std::move(signal)));
}

}  // namespace strata::tiers
