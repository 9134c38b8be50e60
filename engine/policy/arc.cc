// ARC (Megiddo and Modha, FAST'03). T1 holds keys seen once recently, T2 keys
// seen at least twice; B1 and B2 remember keys evicted from them. A miss that
// finds its key in B1 grows the target size p of T1, one found in B2 shrinks
// it; REPLACE evicts from T1 while T1 is larger than p, else from T2.
// Directory size is kept at |T1| + |B1| <= c and the total at <= 2c.
//
// The engine calls Evict before Insert, so REPLACE cannot see the incoming
// key: the paper's tie rule "x in B2 and |T1| == p" is dropped and p adapts
// one eviction later than in the paper. Refused (pinned) keys are skipped in
// place: REPLACE's list is walked from its LRU end, then the other list.
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

class ArcPolicy final : public EvictionPolicy {
 public:
  explicit ArcPolicy(size_t capacity) : capacity_(capacity) {
    index_.reserve(2 * capacity);
  }

  std::string_view name() const override { return "arc"; }

  void Insert(uint64_t key) override {
    auto it = index_.find(key);
    if (it != index_.end() && Resident(it->second.list)) {
      Access(key);
      return;
    }
    if (it != index_.end()) {
      const double b1 = static_cast<double>(b1_.size());
      const double b2 = static_cast<double>(b2_.size());
      if (it->second.list == kB1) {
        p_ = std::min(static_cast<double>(capacity_),
                      p_ + std::max(1.0, b2 / b1));
      } else {
        p_ = std::max(0.0, p_ - std::max(1.0, b1 / b2));
      }
      MoveTo(key, kT2);
      TrimGhosts();
      return;
    }
    // Case IV of the paper: a key in no list.
    if (t1_.size() + b1_.size() >= capacity_ && !b1_.empty()) {
      DropLru(kB1);
    }
    Attach(key, kT1);
    TrimGhosts();
  }

  // Placed as a miss places it (a ghost's return adapts p), but not yet
  // used: its first Access keeps it in its list instead of promoting it to
  // T2, or every prefetched block would count as seen twice.
  void InsertWithoutAccess(uint64_t key) override {
    auto it = index_.find(key);
    if (it != index_.end() && Resident(it->second.list)) return;
    Insert(key);
    index_[key].unused = true;
  }

  void Access(uint64_t key) override {
    auto it = index_.find(key);
    if (it == index_.end() || !Resident(it->second.list)) return;
    if (it->second.unused) {
      it->second.unused = false;
      MoveTo(key, it->second.list);
      return;
    }
    Touch(key);
  }

  void Erase(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      Lists()[it->second.list].erase(it->second.pos);
      index_.erase(it);
    }
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    const bool t1_first =
        !t1_.empty() && (static_cast<double>(t1_.size()) > p_ || t2_.empty());
    const int order[2] = {t1_first ? kT1 : kT2, t1_first ? kT2 : kT1};
    for (int list : order) {
      std::list<uint64_t>& l = Lists()[list];
      for (auto it = l.rbegin(); it != l.rend(); ++it) {
        const uint64_t key = *it;
        if (try_claim(key)) {
          MoveTo(key, list == kT1 ? kB1 : kB2);
          TrimGhosts();
          return key;
        }
      }
    }
    return std::nullopt;
  }

  size_t size() const override { return t1_.size() + t2_.size(); }

 private:
  enum ListId : int { kT1 = 0, kT2 = 1, kB1 = 2, kB2 = 3 };
  struct Entry {
    int list;
    std::list<uint64_t>::iterator pos;
    bool unused = false;  // Inserted without access, not used since.
  };

  static bool Resident(int list) { return list == kT1 || list == kT2; }
  std::list<uint64_t>* Lists() { return lists_; }

  void Attach(uint64_t key, int list) {
    lists_[list].push_front(key);
    index_[key] = Entry{list, lists_[list].begin()};
  }

  void MoveTo(uint64_t key, int to) {
    Entry& e = index_[key];
    e.unused = false;
    lists_[to].splice(lists_[to].begin(), lists_[e.list], e.pos);
    e.list = to;
  }

  void Touch(uint64_t key) { MoveTo(key, kT2); }

  void DropLru(int list) {
    index_.erase(lists_[list].back());
    lists_[list].pop_back();
  }

  // Keeps |T1| + |B1| <= c and the directory at <= 2c.
  void TrimGhosts() {
    while (t1_.size() + b1_.size() > capacity_ && !b1_.empty()) DropLru(kB1);
    while (index_.size() > 2 * capacity_ && !(b1_.empty() && b2_.empty())) {
      DropLru(b2_.empty() ? kB1 : kB2);
    }
  }

  const size_t capacity_;
  double p_ = 0;
  std::list<uint64_t> lists_[4];  // Front is the MRU end of each list.
  std::list<uint64_t>& t1_ = lists_[kT1];
  std::list<uint64_t>& t2_ = lists_[kT2];
  std::list<uint64_t>& b1_ = lists_[kB1];
  std::list<uint64_t>& b2_ = lists_[kB2];
  absl::flat_hash_map<uint64_t, Entry> index_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewArcPolicy(size_t capacity) {
  return std::make_unique<ArcPolicy>(capacity);
}

}  // namespace strata::policy
