#include "tiers/remote/replicated_tier.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <mutex>
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
  ReplicatedTier(std::vector<std::unique_ptr<Tier>> servers,
                 std::vector<std::string> names, int replication,
                 uint64_t capacity, std::function<void(std::string_view)> log)
      : Tier("remote", capacity),
        servers_(std::move(servers)),
        names_(std::move(names)),
        replication_(replication),
        log_(std::move(log)) {}

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

  std::vector<std::unique_ptr<Tier>> servers_;
  std::vector<std::string> names_;
  int replication_;
  std::atomic<uint64_t> next_id_{1};
  std::function<void(std::string_view)> log_;
  std::atomic<uint64_t> degraded_{0};
  std::mutex mu_;
  absl::flat_hash_map<uint64_t, Placement> placements_;
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
      if (it != placements_.end()) p->placement = it->second;
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
  Finish(&p, p.any_ok ? absl::OkStatus() : p.first_error);
}

void ReplicatedTier::Degrade(Parent& p) {
  Placement keep;
  std::vector<std::pair<int, Frame>> drop;
  for (int r = 0; r < p.placement.replicas; ++r) {
    if (p.child[r].status.ok()) {
      keep.server[keep.replicas] = p.placement.server[r];
      keep.frame[keep.replicas] = p.placement.frame[r];
      ++keep.replicas;
    } else {
      drop.emplace_back(p.placement.server[r], p.placement.frame[r]);
    }
  }
  {
    std::lock_guard lock(mu_);
    auto it = placements_.find(p.caller->frame.offset);
    if (it == placements_.end()) return;  // freed meanwhile
    it->second = keep;
  }
  for (const auto& [server, frame] : drop) servers_[server]->Free(frame);
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

}  // namespace

absl::StatusOr<std::unique_ptr<Tier>> MakeReplicatedRemoteTier(
    const RemoteConfig& base, const std::vector<std::string>& servers,
    int replication) {
  if (replication < 1 || replication > kMaxReplication ||
      replication > static_cast<int>(servers.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "remote.replication ", replication, " must be 1..", kMaxReplication,
        " and at most the number of servers (", servers.size(), ")"));
  }
  std::vector<std::unique_ptr<Tier>> tiers;
  for (const std::string& server : servers) {
    RemoteConfig c = base;
    c.server = server;
    absl::StatusOr<std::unique_ptr<Tier>> t = MakeRemoteTier(c);
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat("server ", server, ": ", t.status().message()));
    }
    tiers.push_back(std::move(t).value());
  }
  const uint64_t capacity = base.capacity_bytes * servers.size() / replication;
  return std::unique_ptr<Tier>(new ReplicatedTier(std::move(tiers), servers,
                                                  replication, capacity, base.log));
}

}  // namespace strata::tiers
