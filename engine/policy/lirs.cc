// LIRS (Jiang and Zhang, SIGMETRICS'02). Keys with a small inter-reference
// recency (LIR) hold 99% of the capacity and are never evicted while a
// resident HIR key exists; HIR keys (the other 1%) wait in queue Q. Stack S
// orders recently seen keys, LIR and HIR, resident or not, and its bottom is
// always LIR (stack pruning). A HIR key hit while still in S has a reuse
// distance below the oldest LIR key's recency: it becomes LIR and the bottom
// LIR key is demoted to Q. Non-resident HIR entries in S are bounded to
// 2 * capacity (the oldest is forgotten first), as implementations bound S.
//
// Eviction takes Q's front (oldest). Refused (pinned) keys are skipped in
// place; when all of Q is refused LIR keys are offered from the bottom of S
// up, so every resident key is offered before Evict gives up.
#include <algorithm>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

class LirsPolicy final : public EvictionPolicy {
 public:
  explicit LirsPolicy(size_t capacity)
      : lir_capacity_(capacity - std::min(capacity - 1,
                                          std::max<size_t>(1, capacity / 100))),
        max_nonresident_(2 * capacity) {
    index_.reserve(2 * capacity);
  }

  std::string_view name() const override { return "lirs"; }

  void Insert(uint64_t key) override {
    auto it = index_.find(key);
    if (it != index_.end() && it->second.resident) {
      Access(key);
      return;
    }
    if (lir_count_ < lir_capacity_) {
      // Filling the LIR set (at start, or after erases or LIR evictions).
      if (it != index_.end()) ForgetNonresident(it->second);
      Entry& e = index_[key];
      e.resident = true;
      e.lir = true;
      ++lir_count_;
      ++resident_;
      PushTop(key, e);
      return;
    }
    if (it != index_.end()) {
      // A non-resident HIR key still in S: its reuse distance beats the
      // bottom LIR key's recency.
      Entry& e = it->second;
      ForgetNonresident(e);
      e.resident = true;
      e.lir = true;
      ++lir_count_;
      ++resident_;
      PushTop(key, e);
      DemoteBottom();
      Prune();
      return;
    }
    Entry& e = index_[key];
    e.resident = true;
    ++resident_;
    PushTop(key, e);
    q_.push_back(key);
    e.in_q = true;
    e.q_pos = std::prev(q_.end());
  }

  // Placed as a miss places it, but not yet used: its first Access moves
  // it to the top of S without taking that as a reuse, or every prefetched
  // block, used a few requests after its load, would become LIR.
  void InsertWithoutAccess(uint64_t key) override {
    auto it = index_.find(key);
    if (it != index_.end() && it->second.resident) return;
    Insert(key);
    index_[key].unused = true;
  }

  void Access(uint64_t key) override {
    auto it = index_.find(key);
    if (it == index_.end() || !it->second.resident) return;
    Entry& e = it->second;
    const bool first_use = e.unused;
    e.unused = false;
    if (e.lir) {
      PushTop(key, e);
      Prune();
      return;
    }
    if (e.in_s && !first_use) {
      q_.erase(e.q_pos);
      e.in_q = false;
      e.lir = true;
      ++lir_count_;
      PushTop(key, e);
      DemoteBottom();
      Prune();
    } else {
      PushTop(key, e);
      q_.splice(q_.end(), q_, e.q_pos);
    }
  }

  void Erase(uint64_t key) override {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    Entry& e = it->second;
    if (e.lir) --lir_count_;
    if (e.in_s) s_.erase(e.s_pos);
    if (e.in_q) q_.erase(e.q_pos);
    ForgetNonresident(e);
    if (e.resident) --resident_;
    index_.erase(it);
    Prune();
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    for (auto qit = q_.begin(); qit != q_.end(); ++qit) {
      const uint64_t key = *qit;
      if (!try_claim(key)) continue;
      Entry& e = index_[key];
      q_.erase(qit);
      e.in_q = false;
      e.resident = false;
      e.unused = false;
      --resident_;
      if (e.in_s) {
        nonresident_.push_back(key);
        e.nr_pos = std::prev(nonresident_.end());
        e.in_nr = true;
        while (nonresident_.size() > max_nonresident_) {
          Erase(nonresident_.front());
        }
      } else {
        index_.erase(key);
      }
      return key;
    }
    // All of Q refused (or Q empty): offer LIR keys, oldest first.
    for (auto sit = s_.rbegin(); sit != s_.rend(); ++sit) {
      const uint64_t key = *sit;
      if (!index_[key].lir || !try_claim(key)) continue;
      Erase(key);
      return key;
    }
    return std::nullopt;
  }

  size_t size() const override { return resident_; }

 private:
  struct Entry {
    bool resident = false;
    bool lir = false;
    bool in_s = false;
    bool in_q = false;
    bool in_nr = false;
    bool unused = false;  // Inserted without access, not used since.
    std::list<uint64_t>::iterator s_pos;
    std::list<uint64_t>::iterator q_pos;
    std::list<uint64_t>::iterator nr_pos;
  };

  // Moves (or adds) `key` to the top of S.
  void PushTop(uint64_t key, Entry& e) {
    if (e.in_s) {
      s_.splice(s_.begin(), s_, e.s_pos);
    } else {
      s_.push_front(key);
      e.s_pos = s_.begin();
      e.in_s = true;
    }
  }

  void ForgetNonresident(Entry& e) {
    if (e.in_nr) {
      nonresident_.erase(e.nr_pos);
      e.in_nr = false;
    }
  }

  // The bottom LIR key of S becomes a resident HIR key at the end of Q.
  void DemoteBottom() {
    Prune();
    if (s_.empty()) return;
    const uint64_t key = s_.back();
    Entry& e = index_[key];
    s_.pop_back();
    e.in_s = false;
    e.lir = false;
    --lir_count_;
    q_.push_back(key);
    e.in_q = true;
    e.q_pos = std::prev(q_.end());
  }

  // Removes HIR entries from the bottom of S until a LIR key is there.
  void Prune() {
    while (!s_.empty()) {
      const uint64_t key = s_.back();
      auto it = index_.find(key);
      Entry& e = it->second;
      if (e.lir) return;
      s_.pop_back();
      e.in_s = false;
      if (!e.resident) {
        ForgetNonresident(e);
        index_.erase(it);
      }
    }
  }

  const size_t lir_capacity_;
  const size_t max_nonresident_;
  size_t lir_count_ = 0;
  size_t resident_ = 0;
  std::list<uint64_t> s_;            // Front is the top (most recent).
  std::list<uint64_t> q_;            // Front is the oldest resident HIR key.
  std::list<uint64_t> nonresident_;  // Front is the oldest non-resident key.
  absl::flat_hash_map<uint64_t, Entry> index_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewLirsPolicy(size_t capacity) {
  return std::make_unique<LirsPolicy>(capacity);
}

}  // namespace strata::policy
