// The hinted policy: evicts the resident key whose predicted next use is the
// furthest (Belady's MIN rule applied to predictions), learning the
// predictions from the accesses it has seen, never from the future.
//
// Training loops repeat: step k + 1 touches the same blocks in the same order
// as step k. If the stream repeats with period P (in requests), the next use
// of key x after time `now` is P plus x's first access after `now - P`. The
// policy keeps a ring of the last W accesses (W = 32 * capacity, at least
// 4096), each slot linked to the same key's next access, and per key its
// `head`, the first access inside the window (now - P, now]. A slot leaving
// the window moves its key's head to the key's next access (one O(log n)
// re-filing), so predictions stay exact without scans.
//
// Keys fall in two classes, re-decided at each access:
//   - periodic: the access came exactly when predicted (within P/16 when P
//     comes from step boundaries). Predicted next use: head + P.
//   - random (embedding rows, anything else): next use now + the mean of its
//     last 64 access gaps, or now + idle/4 when it has been idle far longer
//     (gone cold). A key seen once has no estimate and goes first, least
//     recently used first.
// Periodic keys sit in a tree by predicted next use, random ones in a tree by
// gap and one by last access; Evict takes the furthest of the three heads, so
// every operation is O(log n). Refused (pinned) keys are set aside, then
// filed back.
//
// P comes from OnStepBoundary when the engine knows steps (the length of the
// last step), otherwise from the stream: every access votes for its distance
// to the key's last 4 accesses (distances longer than the capacity only; a
// shorter loop fits in the cache) and P is the most voted distance once it
// has kMinVotes votes and at least twice those of the current P. Votes are
// halved every W votes. Changing P rebuilds heads from the ring: O(W + n log n)
// and rare. Until P is known every key is random.
//
// Memory: the ring (24 bytes * W) plus per-key state for keys seen in it.
#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

constexpr uint64_t kNone = 0;  // Times start at 1.
constexpr uint64_t kUnknown = uint64_t{1} << 62;  // Gap of a key seen once.
constexpr uint32_t kMinVotes = 16;
constexpr size_t kRecent = 4;

class HintedPolicy final : public EvictionPolicy {
 public:
  explicit HintedPolicy(size_t capacity)
      : capacity_(capacity),
        ring_size_(std::bit_ceil(std::max<uint64_t>(4096, 32 * capacity))),
        ring_(ring_size_) {
    keys_.reserve(2 * capacity);
  }

  std::string_view name() const override { return "hinted"; }

  void Insert(uint64_t key) override {
    Record(key);
    KeyState& k = keys_[key];
    if (!k.resident) {
      k.resident = true;
      ++resident_;
    }
    Place(key, k);
  }

  void Access(uint64_t key) override {
    auto it = keys_.find(key);
    if (it == keys_.end() || !it->second.resident) return;
    Record(key);
    Place(key, keys_[key]);
  }

  void Erase(uint64_t key) override {
    // History stays: the ring forgets it when the key's slots age out.
    auto it = keys_.find(key);
    if (it == keys_.end() || !it->second.resident) return;
    Unplace(key, it->second);
    it->second.resident = false;
    --resident_;
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    std::vector<uint64_t> refused;
    std::optional<uint64_t> victim;
    while (true) {
      const std::optional<uint64_t> key = Furthest();
      if (!key) break;
      KeyState& k = keys_[*key];
      Unplace(*key, k);
      if (try_claim(*key)) {
        k.resident = false;
        --resident_;
        victim = key;
        break;
      }
      refused.push_back(*key);
    }
    for (uint64_t key : refused) Place(key, keys_[key]);
    return victim;
  }

  void OnStepBoundary() override {
    by_boundaries_ = true;
    if (last_boundary_ != kNone && now_ > last_boundary_ &&
        now_ - last_boundary_ < ring_size_ && now_ - last_boundary_ != period_) {
      SetPeriod(now_ - last_boundary_);
    }
    last_boundary_ = now_;
  }

  size_t size() const override { return resident_; }

 private:
  struct Slot {
    uint64_t key = 0;
    uint64_t time = kNone;
    uint64_t next = kNone;  // The same key's next access, if any.
  };
  enum class Where : uint8_t { kNowhere, kPeriodic, kRandom };
  struct KeyState {
    uint64_t head = kNone;     // First access in (now - P, now].
    uint64_t last = kNone;     // Last access.
    uint64_t gap = kUnknown;   // Mean of the last (up to 64) access gaps.
    uint32_t gaps = 0;         // Gaps averaged in `gap`, at most 63.
    uint64_t sort = 0;         // Its key in periodic_ or random_.
    std::array<uint64_t, kRecent> recent{};  // Last accesses, for votes.
    Where place = Where::kNowhere;
    bool periodic = false;     // Its last access came when predicted.
    bool resident = false;
  };

  Slot& SlotAt(uint64_t time) { return ring_[time & (ring_size_ - 1)]; }

  uint64_t Predicted(const KeyState& k) const {
    return period_ != 0 && k.head != kNone ? k.head + period_ : kNone;
  }

  // Expected next use of a key in random_ or lru_: now + its mean gap (its
  // accesses are taken as memoryless), or now + idle / 4 for a key idle far
  // beyond its gap (it has probably gone cold).
  uint64_t RandomNextUse(const KeyState& k) const {
    if (k.gap >= kUnknown) return ~uint64_t{0};
    return now_ + std::max(k.gap, (now_ - k.last) / 4);
  }

  void Unplace(uint64_t key, KeyState& k) {
    if (k.place == Where::kPeriodic) {
      periodic_.erase({k.sort, key});
    } else if (k.place == Where::kRandom) {
      random_.erase({k.sort, key});
      lru_.erase({k.last, key});
    }
    k.place = Where::kNowhere;
  }

  // (Re)files a resident key under its current prediction.
  void Place(uint64_t key, KeyState& k) {
    Unplace(key, k);
    if (!k.resident) return;
    if (k.periodic && Predicted(k) != kNone) {
      k.place = Where::kPeriodic;
      k.sort = Predicted(k);
      periodic_.insert({k.sort, key});
    } else {
      // Largest gap first; among equal gaps (unknown), least recent first.
      k.place = Where::kRandom;
      k.sort = std::min(k.gap, kUnknown);
      random_.insert({k.sort, key});
      lru_.insert({k.last, key});
    }
  }

  // The resident key with the furthest expected next use, if any.
  std::optional<uint64_t> Furthest() const {
    std::optional<uint64_t> best;
    uint64_t best_use = 0;
    auto consider = [&](uint64_t key, uint64_t use) {
      if (!best || use > best_use) {
        best = key;
        best_use = use;
      }
    };
    // Least recently used random key first: it wins ties among unknowns.
    if (!lru_.empty()) {
      const uint64_t key = lru_.begin()->second;
      consider(key, RandomNextUse(keys_.find(key)->second));
    }
    if (!random_.empty()) {
      const uint64_t key = random_.rbegin()->second;
      consider(key, RandomNextUse(keys_.find(key)->second));
    }
    if (!periodic_.empty()) {
      consider(periodic_.rbegin()->second, periodic_.rbegin()->first);
    }
    return best;
  }

  void Record(uint64_t key) {
    const uint64_t t = ++now_;
    bool came_true = false;
    if (auto it = keys_.find(key); it != keys_.end()) {
      const uint64_t predicted = Predicted(it->second);
      const uint64_t tolerance = by_boundaries_ ? period_ / 16 : 0;
      came_true = predicted != kNone && predicted + tolerance >= t &&
                  t + tolerance >= predicted;
    }
    // The slot about to be reused: forget keys with no access left in the
    // ring that are not resident.
    if (Slot& old = SlotAt(t); old.time != kNone) {
      if (auto it = keys_.find(old.key); it != keys_.end()) {
        if (it->second.head == old.time) it->second.head = old.next;
        if (it->second.last == old.time && !it->second.resident) {
          keys_.erase(it);
        }
      }
    }
    if (period_ != 0) {
      while (edge_ + period_ < t) Expire(++edge_);
    }
    SlotAt(t) = Slot{key, t, kNone};
    KeyState& k = keys_[key];
    Unplace(key, k);  // Its sort keys change below; the caller re-places it.
    if (k.last != kNone) {
      if (SlotAt(k.last).time == k.last) SlotAt(k.last).next = t;
      const uint64_t gap = t - k.last;
      k.gap = k.gaps == 0 ? gap : (k.gap * k.gaps + gap) / (k.gaps + 1);
      k.gaps = std::min<uint32_t>(k.gaps + 1, 63);
    }
    k.last = t;
    k.periodic = came_true;
    if (period_ != 0 && k.head == kNone) k.head = t;
    uint64_t vote[kRecent];
    size_t votes = 0;
    for (uint64_t r : k.recent) {
      if (r != kNone && t - r > capacity_ && t - r < ring_size_) {
        vote[votes++] = t - r;
      }
    }
    std::rotate(k.recent.rbegin(), k.recent.rbegin() + 1, k.recent.rend());
    k.recent[0] = t;
    // Voting may rebuild every key's state; `k` is not used after it.
    for (size_t i = 0; i < votes; ++i) Vote(vote[i]);
  }

  // The access at `time` leaves the window (now - P, now].
  void Expire(uint64_t time) {
    Slot& s = SlotAt(time);
    if (s.time != time) return;
    auto it = keys_.find(s.key);
    if (it == keys_.end() || it->second.head != time) return;
    it->second.head = s.next;
    if (it->second.place != Where::kNowhere) Place(s.key, it->second);
  }

  void Vote(uint64_t distance) {
    const uint32_t count = ++votes_[distance];
    if (distance == best_distance_ || count > best_count_) {
      best_distance_ = distance;
      best_count_ = count;
    }
    if (++votes_cast_ % ring_size_ == 0) {
      for (auto it = votes_.begin(); it != votes_.end();) {
        it->second /= 2;
        if (it->second == 0) {
          votes_.erase(it++);
        } else {
          ++it;
        }
      }
      best_count_ /= 2;
    }
    if (by_boundaries_ || best_distance_ == period_ ||
        best_count_ < kMinVotes) {
      return;
    }
    const auto current = votes_.find(period_);
    if (current == votes_.end() || 2 * current->second < best_count_) {
      SetPeriod(best_distance_);
    }
  }

  // Adopts period `p`: recomputes every head from the ring, which keys are
  // periodic (accessed exactly p before their last access), and where every
  // resident key is filed.
  void SetPeriod(uint64_t p) {
    period_ = p;
    for (auto& [key, k] : keys_) {
      k.head = kNone;
      k.periodic = false;
      if (k.last > p && k.last - p + ring_size_ > now_) {
        const Slot& twin = SlotAt(k.last - p);
        k.periodic = twin.time == k.last - p && twin.key == key;
      }
    }
    const uint64_t oldest = std::max(
        now_ >= p ? now_ - p + 1 : 1,
        now_ >= ring_size_ ? now_ - ring_size_ + 1 : uint64_t{1});
    for (uint64_t time = oldest; time <= now_; ++time) {
      const Slot& s = SlotAt(time);
      if (s.time != time) continue;
      auto it = keys_.find(s.key);
      if (it != keys_.end() && it->second.head == kNone) {
        it->second.head = time;
      }
    }
    edge_ = now_ >= p ? now_ - p : 0;
    for (auto& [key, k] : keys_) {
      if (k.place != Where::kNowhere) Place(key, k);
    }
  }

  const size_t capacity_;
  const uint64_t ring_size_;  // W, a power of two.
  std::vector<Slot> ring_;
  uint64_t now_ = 0;
  uint64_t edge_ = 0;    // Accesses at or before edge_ left the window.
  uint64_t period_ = 0;  // P; 0 while unknown.
  bool by_boundaries_ = false;
  uint64_t last_boundary_ = kNone;
  absl::flat_hash_map<uint64_t, uint32_t> votes_;
  uint64_t best_distance_ = 0;
  uint32_t best_count_ = 0;
  uint64_t votes_cast_ = 0;
  size_t resident_ = 0;
  absl::flat_hash_map<uint64_t, KeyState> keys_;
  // Resident keys whose accesses repeat with the period, by predicted next
  // use; the others by gap (random_) and by last access (lru_).
  std::set<std::pair<uint64_t, uint64_t>> periodic_;
  std::set<std::pair<uint64_t, uint64_t>> random_;
  std::set<std::pair<uint64_t, uint64_t>> lru_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewHintedPolicy(size_t capacity) {
  return std::make_unique<HintedPolicy>(capacity);
}

}  // namespace strata::policy
