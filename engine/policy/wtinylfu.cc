// W-TinyLFU (Einziger, Friedman and Manes, ACM ToS'17), laid out as Caffeine
// lays it out: an LRU window of 1% of the capacity in front of a segmented
// LRU main space (20% probation, 80% protected). Every request increments a
// count-min sketch (4 rows of 4-bit counters) that is halved every 10 *
// capacity increments. When the window is full its LRU key is a candidate for
// the main space: it is admitted, evicting the probation LRU victim, only if
// the sketch estimates it more popular than the victim (Caffeine also admits
// 1 in 128 warm candidates at random to resist hash flooding; so do we, with
// a fixed-seed generator so runs repeat).
//
// The engine calls Evict before Insert, so the admission duel happens in
// Evict: the window's LRU key would be pushed out by the coming insert. A
// refused (pinned) key is set aside and put back at the MRU end of the
// segment it came from.
#include <algorithm>
#include <array>
#include <bit>
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

// Count-min sketch with 4-bit saturating counters and periodic halving.
class FrequencySketch {
 public:
  explicit FrequencySketch(size_t capacity)
      : width_(std::bit_ceil(std::max<size_t>(64, 4 * capacity))),
        sample_size_(std::max<uint64_t>(640, 10 * uint64_t{capacity})),
        table_(4 * width_, 0) {}

  void Increment(uint64_t key) {
    bool added = false;
    for (size_t row = 0; row < 4; ++row) {
      uint8_t& c = table_[row * width_ + Slot(key, row)];
      if (c < 15) {
        ++c;
        added = true;
      }
    }
    if (added && ++additions_ >= sample_size_) Reset();
  }

  int Estimate(uint64_t key) const {
    int estimate = 15;
    for (size_t row = 0; row < 4; ++row) {
      estimate = std::min<int>(estimate, table_[row * width_ + Slot(key, row)]);
    }
    return estimate;
  }

 private:
  size_t Slot(uint64_t key, size_t row) const {
    return Mix64(key ^ kSeeds[row]) & (width_ - 1);
  }

  void Reset() {
    for (uint8_t& c : table_) c >>= 1;
    additions_ /= 2;
  }

  static constexpr std::array<uint64_t, 4> kSeeds = {
      0x97cb3127f1a3c6e5ULL, 0xc2b2ae3d27d4eb4fULL, 0x165667b19e3779f9ULL,
      0x27d4eb2f165667c5ULL};
  const size_t width_;
  const uint64_t sample_size_;
  uint64_t additions_ = 0;
  std::vector<uint8_t> table_;
};

class WTinyLfuPolicy final : public EvictionPolicy {
 public:
  explicit WTinyLfuPolicy(size_t capacity)
      : window_capacity_(std::max<size_t>(1, capacity / 100)),
        protected_capacity_((capacity - std::min(capacity, window_capacity_)) *
                            8 / 10),
        sketch_(capacity) {
    index_.reserve(capacity);
  }

  std::string_view name() const override { return "wtinylfu"; }

  void Insert(uint64_t key) override {
    sketch_.Increment(key);
    if (index_.contains(key)) {
      Touch(key);
      return;
    }
    Enter(key);
  }

  // A prefetched block enters the window uncounted: its use arrives later
  // as Access, and counting the load too gave every missed block twice its
  // popularity, enough to win the admission duel against main blocks with
  // one real access more.
  void InsertWithoutAccess(uint64_t key) override {
    if (!index_.contains(key)) Enter(key);
  }

  void Access(uint64_t key) override {
    if (!index_.contains(key)) return;
    sketch_.Increment(key);
    Touch(key);
  }

  void Erase(uint64_t key) override {
    if (auto it = index_.find(key); it != index_.end()) {
      List(it->second.segment).erase(it->second.pos);
      index_.erase(it);
    }
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    std::vector<std::pair<uint64_t, Segment>> refused;
    std::optional<uint64_t> victim;
    while (!index_.empty()) {
      const std::optional<uint64_t> candidate =
          window_.size() >= window_capacity_ && !window_.empty()
              ? std::optional<uint64_t>(window_.back())
              : std::nullopt;
      std::optional<uint64_t> main_victim;
      if (!probation_.empty()) {
        main_victim = probation_.back();
      } else if (!protected_.empty()) {
        main_victim = protected_.back();
      }
      uint64_t key;
      if (candidate && main_victim) {
        if (Admit(*candidate, *main_victim)) {
          MoveTo(*candidate, Segment::kProbation);
          key = *main_victim;
        } else {
          key = *candidate;
        }
      } else if (candidate) {
        key = *candidate;
      } else if (main_victim) {
        key = *main_victim;
      } else {
        key = window_.back();
      }
      const Segment segment = index_[key].segment;
      Erase(key);
      if (try_claim(key)) {
        victim = key;
        break;
      }
      refused.emplace_back(key, segment);
    }
    for (const auto& [key, segment] : refused) Attach(key, segment);
    return victim;
  }

  size_t size() const override { return index_.size(); }

 private:
  enum class Segment : uint8_t { kWindow, kProbation, kProtected };
  struct Entry {
    Segment segment;
    std::list<uint64_t>::iterator pos;
  };

  std::list<uint64_t>& List(Segment s) {
    switch (s) {
      case Segment::kWindow:
        return window_;
      case Segment::kProbation:
        return probation_;
      case Segment::kProtected:
        break;
    }
    return protected_;
  }

  // A new resident key, at the window's MRU end.
  void Enter(uint64_t key) {
    Attach(key, Segment::kWindow);
    // Evict ran for someone else (this policy follows another one in an
    // ensemble) and left the window over its size: age it into probation.
    while (window_.size() > window_capacity_) {
      MoveTo(window_.back(), Segment::kProbation);
    }
  }

  void Attach(uint64_t key, Segment segment) {
    std::list<uint64_t>& list = List(segment);
    list.push_front(key);
    index_[key] = Entry{segment, list.begin()};
  }

  // Moves a resident key to the MRU end of `to`.
  void MoveTo(uint64_t key, Segment to) {
    Entry& e = index_[key];
    List(to).splice(List(to).begin(), List(e.segment), e.pos);
    e.segment = to;
  }

  void Touch(uint64_t key) {
    switch (index_[key].segment) {
      case Segment::kWindow:
        MoveTo(key, Segment::kWindow);
        break;
      case Segment::kProbation:
        MoveTo(key, Segment::kProtected);
        while (protected_.size() > protected_capacity_) {
          MoveTo(protected_.back(), Segment::kProbation);
        }
        break;
      case Segment::kProtected:
        MoveTo(key, Segment::kProtected);
        break;
    }
  }

  // Caffeine's BoundedLocalCache.admit().
  bool Admit(uint64_t candidate, uint64_t victim) {
    const int candidate_freq = sketch_.Estimate(candidate);
    const int victim_freq = sketch_.Estimate(victim);
    if (candidate_freq > victim_freq) return true;
    if (candidate_freq <= 5) return false;
    rng_ = Mix64(rng_);
    return (rng_ & 127) == 0;
  }

  const size_t window_capacity_;
  const size_t protected_capacity_;
  FrequencySketch sketch_;
  uint64_t rng_ = 0x5eed;
  std::list<uint64_t> window_;  // Front is the MRU end in every segment.
  std::list<uint64_t> probation_;
  std::list<uint64_t> protected_;
  absl::flat_hash_map<uint64_t, Entry> index_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewWTinyLfuPolicy(size_t capacity) {
  return std::make_unique<WTinyLfuPolicy>(capacity);
}

}  // namespace strata::policy
