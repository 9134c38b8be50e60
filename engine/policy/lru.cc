// LRU: a list ordered by recency (front is most recent) and a map from key to
// its list node. Every operation is O(1); Evict walks from the least recent
// end and skips refused keys, so it is O(1 + refused).
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

class LruPolicy final : public EvictionPolicy {
 public:
  explicit LruPolicy(size_t capacity) { index_.reserve(capacity); }

  std::string_view name() const override { return "lru"; }

  void Insert(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      order_.splice(order_.begin(), order_, it->second);
      return;
    }
    order_.push_front(key);
    index_.emplace(key, order_.begin());
  }

  void Access(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      order_.splice(order_.begin(), order_, it->second);
    }
  }

  void Erase(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      order_.erase(it->second);
      index_.erase(it);
    }
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
      const uint64_t key = *it;
      if (try_claim(key)) {
        Erase(key);
        return key;
      }
    }
    return std::nullopt;
  }

  size_t size() const override { return index_.size(); }

 private:
  std::list<uint64_t> order_;
  absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> index_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewLruPolicy(size_t capacity) {
  return std::make_unique<LruPolicy>(capacity);
}

}  // namespace strata::policy
