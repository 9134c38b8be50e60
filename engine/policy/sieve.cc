// SIEVE (Zhang et al., NSDI'24). New keys enter at the head of a FIFO queue
// and a hit only sets a visited bit. The hand walks from the tail towards the
// head: a visited key loses its bit and stays where it is, an unvisited key is
// the victim, and the hand stops just before it. A refused (pinned) key is
// passed over like a visited one; after two full turns of the hand every
// resident key has been offered, so Evict is bounded by 2n + 1 steps and is
// O(1) amortized when nothing is pinned.
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

class SievePolicy final : public EvictionPolicy {
 public:
  explicit SievePolicy(size_t capacity) { index_.reserve(capacity); }

  std::string_view name() const override { return "sieve"; }

  void Insert(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      it->second->visited = true;
      return;
    }
    queue_.push_front(Node{key, false});
    index_.emplace(key, queue_.begin());
  }

  void Access(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      it->second->visited = true;
    }
  }

  void Erase(uint64_t key) override {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    if (hand_ == it->second) hand_ = Prev(hand_);
    queue_.erase(it->second);
    index_.erase(it);
    if (queue_.empty()) hand_ = queue_.end();
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    if (queue_.empty()) return std::nullopt;
    if (hand_ == queue_.end()) hand_ = std::prev(queue_.end());
    for (size_t steps = 2 * queue_.size() + 1; steps > 0; --steps) {
      if (hand_->visited) {
        hand_->visited = false;
      } else if (try_claim(hand_->key)) {
        const uint64_t key = hand_->key;
        Erase(key);  // Moves the hand to the victim's predecessor.
        return key;
      }
      hand_ = Prev(hand_);
    }
    return std::nullopt;
  }

  size_t size() const override { return index_.size(); }

 private:
  struct Node {
    uint64_t key;
    bool visited;
  };
  using Iter = std::list<Node>::iterator;

  // The next position of the hand: towards the head, wrapping to the tail.
  Iter Prev(Iter it) {
    if (it == queue_.begin()) return std::prev(queue_.end());
    return std::prev(it);
  }

  std::list<Node> queue_;  // Front is the head (newest).
  absl::flat_hash_map<uint64_t, Iter> index_;
  Iter hand_ = queue_.end();
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewSievePolicy(size_t capacity) {
  return std::make_unique<SievePolicy>(capacity);
}

}  // namespace strata::policy
