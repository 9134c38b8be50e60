// S3-FIFO (Yang et al., SOSP'23), the original variant (libCacheSim's
// S3FIFOv0). Three FIFO queues: small S (10% of the capacity), main M (90%)
// and ghost G (keys only, as many as M holds). A new key enters S, or M when
// G remembers it. Hits only bump a 2-bit counter. Eviction takes from S while
// S holds at least 10% (or M is empty): a key hit while in S moves to M with
// its counter cleared, otherwise it leaves and is remembered in G. Eviction
// from M reinserts keys with a non-zero counter (decrementing it) and evicts
// the first with a zero counter. Each key moves S->M once and is reinserted
// in M at most 3 times per access, so Evict is O(1) amortized.
//
// Refused (pinned) keys are set aside while Evict looks further, then put
// back at the head of the queue they came from.
#include <algorithm>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

class S3FifoPolicy final : public EvictionPolicy {
 public:
  explicit S3FifoPolicy(size_t capacity)
      : small_target_(std::max<size_t>(1, capacity / 10)),
        ghost_capacity_(std::max<size_t>(1, capacity - capacity / 10)) {
    index_.reserve(capacity);
  }

  std::string_view name() const override { return "s3fifo"; }

  void Insert(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      Bump(it->second);
      return;
    }
    if (auto g = ghost_index_.find(key); g != ghost_index_.end()) {
      ghost_.erase(g->second);
      ghost_index_.erase(g);
      Attach(key, Queue::kMain, 0);
    } else {
      Attach(key, Queue::kSmall, 0);
    }
  }

  void Access(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) Bump(it->second);
  }

  void Erase(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      List(it->second.queue).erase(it->second.pos);
      index_.erase(it);
    }
    if (auto g = ghost_index_.find(key); g != ghost_index_.end()) {
      ghost_.erase(g->second);
      ghost_index_.erase(g);
    }
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    struct Aside {
      uint64_t key;
      Queue queue;
      uint8_t freq;
    };
    std::vector<Aside> refused;
    std::optional<uint64_t> victim;
    while (!small_.empty() || !main_.empty()) {
      const bool from_small =
          !small_.empty() && (small_.size() >= small_target_ || main_.empty());
      std::list<uint64_t>& queue = from_small ? small_ : main_;
      const uint64_t key = queue.back();
      Entry& e = index_[key];
      if (from_small && e.freq >= 1) {
        main_.splice(main_.begin(), small_, e.pos);
        e.queue = Queue::kMain;
        e.freq = 0;
        continue;
      }
      if (!from_small && e.freq > 0) {
        main_.splice(main_.begin(), main_, e.pos);
        --e.freq;
        continue;
      }
      const Aside aside{key, e.queue, e.freq};
      queue.pop_back();
      index_.erase(key);
      if (try_claim(key)) {
        if (from_small) Remember(key);
        victim = key;
        break;
      }
      refused.push_back(aside);
    }
    for (const Aside& a : refused) Attach(a.key, a.queue, a.freq);
    return victim;
  }

  size_t size() const override { return index_.size(); }

 private:
  enum class Queue : uint8_t { kSmall, kMain };
  struct Entry {
    Queue queue;
    uint8_t freq;
    std::list<uint64_t>::iterator pos;
  };

  std::list<uint64_t>& List(Queue q) {
    return q == Queue::kSmall ? small_ : main_;
  }

  void Attach(uint64_t key, Queue queue, uint8_t freq) {
    std::list<uint64_t>& list = List(queue);
    list.push_front(key);
    index_[key] = Entry{queue, freq, list.begin()};
  }

  static void Bump(Entry& e) { e.freq = std::min<uint8_t>(3, e.freq + 1); }

  void Remember(uint64_t key) {
    ghost_.push_front(key);
    ghost_index_[key] = ghost_.begin();
    if (ghost_.size() > ghost_capacity_) {
      ghost_index_.erase(ghost_.back());
      ghost_.pop_back();
    }
  }

  const size_t small_target_;
  const size_t ghost_capacity_;
  std::list<uint64_t> small_;  // Front is the newest.
  std::list<uint64_t> main_;
  std::list<uint64_t> ghost_;
  absl::flat_hash_map<uint64_t, Entry> index_;
  absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> ghost_index_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewS3FifoPolicy(size_t capacity) {
  return std::make_unique<S3FifoPolicy>(capacity);
}

}  // namespace strata::policy
