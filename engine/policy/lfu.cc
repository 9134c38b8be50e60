// LFU with aging: resident keys ordered by (count, last use) in a balanced
// tree, so the victim is the least frequently used key and, among equals, the
// least recently used one. Every 8 * capacity requests all counts are halved
// (an O(n log n) rebuild amortized over 8n requests, so O(log n) per request):
// popularity earned long ago fades and a shifted working set can take over.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

class LfuPolicy final : public EvictionPolicy {
 public:
  explicit LfuPolicy(size_t capacity)
      : aging_period_(std::max<uint64_t>(64, 8 * uint64_t{capacity})) {
    counts_.reserve(capacity);
  }

  std::string_view name() const override { return "lfu"; }

  void Insert(uint64_t key) override {
    Tick();
    if (counts_.contains(key)) {
      Bump(key);
      return;
    }
    counts_[key] = Entry{1, now_, false};
    order_.insert({1, now_, key});
  }

  // Counted as one use ahead of time: its first Access only moves its
  // last use, so a prefetched block then used counts once, as a miss does.
  void InsertWithoutAccess(uint64_t key) override {
    if (counts_.contains(key)) return;
    Insert(key);
    counts_[key].unused = true;
  }

  void Access(uint64_t key) override {
    if (!counts_.contains(key)) return;
    Tick();
    Bump(key);
  }

  void Erase(uint64_t key) override {
    auto it = counts_.find(key);
    if (it == counts_.end()) return;
    order_.erase({it->second.count, it->second.last, key});
    counts_.erase(it);
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    for (auto it = order_.begin(); it != order_.end(); ++it) {
      const uint64_t key = std::get<2>(*it);
      if (try_claim(key)) {
        order_.erase(it);
        counts_.erase(key);
        return key;
      }
    }
    return std::nullopt;
  }

  size_t size() const override { return counts_.size(); }

 private:
  struct Entry {
    uint64_t count;
    uint64_t last;
    bool unused = false;  // Inserted without access, not used since.
  };
  using Rank = std::tuple<uint64_t, uint64_t, uint64_t>;  // count, last, key

  void Tick() {
    ++now_;
    if (now_ % aging_period_ != 0) return;
    order_.clear();
    for (auto& [key, e] : counts_) {
      e.count = std::max<uint64_t>(1, e.count / 2);
      order_.insert({e.count, e.last, key});
    }
  }

  void Bump(uint64_t key) {
    Entry& e = counts_[key];
    order_.erase({e.count, e.last, key});
    if (!e.unused) ++e.count;
    e.unused = false;
    e.last = now_;
    order_.insert({e.count, e.last, key});
  }

  const uint64_t aging_period_;
  uint64_t now_ = 0;
  absl::flat_hash_map<uint64_t, Entry> counts_;
  absl::btree_set<Rank> order_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewLfuPolicy(size_t capacity) {
  return std::make_unique<LfuPolicy>(capacity);
}

}  // namespace strata::policy
