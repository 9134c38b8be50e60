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
//   - periodic (the step plan): the access came exactly when predicted
//     (within P/16 when P comes from step boundaries). Predicted next use:
//     head + P; from step boundaries, a key with no access left in the
//     window (P a little short: a step that lost a hit) is due a period
//     after its last access until P/16 later.
//   - random (embedding rows, anything off the plan): taken as independent
//     draws and judged by frequency. A second ring holds the last W random
//     accesses (so rows keep a long history even when plan blocks make most
//     of the stream); a key with c of them, over the ring's span of T
//     requests, comes back after T / c requests on average, that is after
//     j = (T / c) * R / P random accesses, R being those of the last period.
//     Random accesses are not spread evenly over a step (embedding lookups
//     happen in the forward pass only), so j becomes a time through the last
//     period: the random access j ahead is predicted at the time of the one
//     a period earlier, plus P (m periods ahead when j exceeds R). A key
//     with no access left in the random ring has no estimate and goes first.
// Comparing the two predictions decides between a plan block and a row.
// With room for every plan block, a row requested once is expected back
// only after T requests (many periods), so it goes before any plan block,
// which is back within one period: hinted never evicts a plan block for a
// cold row, and manages the rows in the rest of the room as LFU with long
// counts does. With less room, a row displaces a plan block only when it is
// expected back sooner than that block's known next use.
//
// Periodic keys sit in a tree by predicted next use, random ones in a tree by
// (count, last access): the fewest accesses, then the least recent, is the
// furthest of them (every random key shares the same span and the same
// mapping from j to time, and j falls as the count grows). Evict takes the
// furthest of the two heads, so every operation is O(log n). Refused
// (pinned) keys are set aside, then filed back. No choice depends on key
// values: renaming keys changes nothing.
//
// P comes from OnStepBoundary when the engine knows steps (the length of the
// last step; the first step counts from the first access; a length within
// P/16 of P is taken only when the next step has it too), otherwise from
// the stream: every access votes for its distance to the key's last 4
// accesses (distances longer than the capacity only; a shorter loop fits in
// the cache) and P is the most voted distance once it has kMinVotes votes
// and at least twice those of the current P. Votes are halved every W votes.
// Changing P rebuilds heads from the ring: O(W + n log n) and rare. Until P
// is known every key is random: LFU over the random ring, least recent first
// among equal counts.
//
// Memory, all bounded by W: the ring (24 bytes * W), the random ring (16
// bytes * W), per-key state for resident keys and keys with an access in
// either ring (the ghosts: a row evicted and requested again keeps its
// count) and the vote table (distances below W).
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

constexpr uint64_t kNone = 0;  // Times start at 1.
constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kMinVotes = 16;
constexpr size_t kRecent = 4;
constexpr uint64_t kRingPerBlock = 32;
// Random accesses ahead beyond which a prediction is "never".
constexpr double kFarAhead = 1e12;

// A fixed array of T whose all-zero bytes are T's initial state, from
// calloc: a large one is fresh mmap'd memory the kernel zeroes on first
// touch, so making the policy does not write its rings up front (44 bytes
// per ring index, 32 per block of capacity: 480 ms at a million blocks, a
// pause under the engine's policy mutex when the default policy wakes its
// hinted follower, and at Engine::Open).
template <typename T>
class ZeroedArray {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  explicit ZeroedArray(size_t n)
      : data_(static_cast<T*>(std::calloc(n, sizeof(T)))), size_(n) {
    if (data_ == nullptr) throw std::bad_alloc();
  }
  ZeroedArray(const ZeroedArray&) = delete;
  ZeroedArray& operator=(const ZeroedArray&) = delete;
  ~ZeroedArray() { std::free(data_); }

  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }

 private:
  T* const data_;
  const size_t size_;
};

class HintedPolicy final : public EvictionPolicy {
 public:
  explicit HintedPolicy(size_t capacity)
      : capacity_(capacity),
        ring_size_(
            std::bit_ceil(std::max<uint64_t>(4096, kRingPerBlock * capacity))),
        ring_(ring_size_),
        random_ring_(ring_size_),
        votes_(ring_size_) {
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

  // Filed under what its past accesses predict (a block of the step plan
  // loaded a few requests before its turn keeps its place in the period).
  void InsertWithoutAccess(uint64_t key) override {
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
    MaybeForgetKey(it);
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    std::vector<uint64_t> refused;
    std::optional<uint64_t> victim;
    while (true) {
      const std::optional<uint64_t> key = Furthest();
      if (!key) break;
      auto it = keys_.find(*key);
      Unplace(*key, it->second);
      if (try_claim(*key)) {
        it->second.resident = false;
        --resident_;
        MaybeForgetKey(it);
        victim = key;
        break;
      }
      refused.push_back(*key);
    }
    for (uint64_t key : refused) Place(key, keys_[key]);
    return victim;
  }

  void OnStepBoundary() override {
    if (!by_boundaries_) {
      by_boundaries_ = true;
      late_edge_ = edge_ - std::min(edge_, Tolerance());
    }
    // The first step runs from the first access to the first boundary.
    const uint64_t start = last_boundary_ == kNone ? 0 : last_boundary_;
    const uint64_t length = now_ - start;
    last_boundary_ = now_;
    if (now_ <= start || length >= ring_size_ || length == period_) {
      unconfirmed_ = kNone;
      return;
    }
    // A step within the tolerance of the period is the same loop with a
    // hit the engine's access logs lost (or a pin more or less): the
    // period moves only when the next step has that length too. Predicted
    // and SetPeriod already keep a period that far off harmless
    // (PolicyTargetTest.APeriodSurvivesALostHit passes without this); this
    // spares the two rebuilds of every key's state, O(W + n log n) under
    // the policy mutex, that each lost hit cost.
    const uint64_t off = length > period_ ? length - period_ : period_ - length;
    if (period_ != 0 && off <= Tolerance() && length != unconfirmed_) {
      unconfirmed_ = length;
      return;
    }
    unconfirmed_ = kNone;
    SetPeriod(length);
  }

  size_t size() const override { return resident_; }
  uint64_t loop_hits() const override { return loop_hits_; }

 private:
  struct Slot {
    uint64_t key = 0;
    uint64_t time = kNone;
    uint64_t next = kNone;  // The same key's next access, if any.
  };
  struct RandomSlot {
    uint64_t key = 0;
    uint64_t time = kNone;
  };
  enum class Where : uint8_t { kNowhere, kPeriodic, kRandom };
  struct KeyState {
    uint64_t head = kNone;     // First access in (now - P, now].
    uint64_t last = kNone;     // Last access.
    uint32_t in_ring = 0;      // Accesses in the ring.
    uint32_t count = 0;        // Random accesses in the random ring.
    // Its key in periodic_ (predicted next use) or random_ (count, last).
    uint64_t sort = 0;
    uint64_t sort_last = 0;
    std::array<uint64_t, kRecent> recent{};  // Last accesses, for votes.
    Where place = Where::kNowhere;
    bool periodic = false;     // Its last access came when predicted.
    bool resident = false;
  };

  Slot& SlotAt(uint64_t time) { return ring_[time & (ring_size_ - 1)]; }
  RandomSlot& RandomAt(uint64_t index) {
    return random_ring_[index & (ring_size_ - 1)];
  }
  uint64_t RandomTime(uint64_t index) const {
    return random_ring_[index & (ring_size_ - 1)].time;
  }

  // How far from its prediction an access still came true: some from step
  // boundaries (a step may be a few pins longer or shorter, or lose a hit
  // in the engine's logs), none for a period voted from the stream.
  uint64_t Tolerance() const { return by_boundaries_ ? period_ / 16 : 0; }

  uint64_t Predicted(const KeyState& k) const {
    if (period_ == 0) return kNone;
    if (k.head != kNone) return k.head + period_;
    // With P from step boundaries a little short of the loop's length, a
    // periodic key's last access leaves the window just before its next
    // use: that use is still due a period after the last one, until the
    // tolerance is past (Overdue files the key again then).
    const uint64_t tolerance = Tolerance();
    if (tolerance > 0 && k.periodic && k.last != kNone &&
        now_ <= k.last + period_ + tolerance && period_ + tolerance < ring_size_) {
      return k.last + period_;
    }
    return kNone;
  }

  // Expected next use of a random key: j = (T / count) * R / P random
  // accesses ahead, placed in time by the random accesses of the last period
  // (see the top). kNever without an estimate or before P is known.
  uint64_t RandomNextUse(const KeyState& k) const {
    const uint64_t per_period = random_count_ + 1 - random_window_;
    if (k.count == 0 || period_ == 0 || per_period == 0) return kNever;
    // T: the span of time the random ring covers (from its oldest access).
    const uint64_t start =
        random_count_ > ring_size_
            ? RandomTime(random_count_ - ring_size_ + 1) - 1
            : 0;
    const double j_real = static_cast<double>(now_ - start) *
                          static_cast<double>(per_period) /
                          (static_cast<double>(period_) * k.count);
    if (!(j_real < kFarAhead)) return kNever;
    const uint64_t j = std::max<uint64_t>(1, std::ceil(j_real));
    const uint64_t m = (j + per_period - 1) / per_period;
    return RandomTime(random_count_ + j - m * per_period) + m * period_;
  }

  void Unplace(uint64_t key, KeyState& k) {
    if (k.place == Where::kPeriodic) {
      periodic_.erase({k.sort, key});
    } else if (k.place == Where::kRandom) {
      random_.erase({k.sort, k.sort_last, key});
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
      k.place = Where::kRandom;
      k.sort = k.count;
      k.sort_last = k.last;
      random_.insert({k.sort, k.sort_last, key});
    }
  }

  // The resident key with the furthest expected next use, if any.
  std::optional<uint64_t> Furthest() const {
    if (random_.empty() && periodic_.empty()) return std::nullopt;
    if (periodic_.empty()) return std::get<2>(*random_.begin());
    if (random_.empty()) return periodic_.rbegin()->second;
    const uint64_t random_key = std::get<2>(*random_.begin());
    if (RandomNextUse(keys_.find(random_key)->second) >=
        periodic_.rbegin()->first) {
      return random_key;
    }
    return periodic_.rbegin()->second;
  }

  void Record(uint64_t key) {
    const uint64_t t = ++now_;
    // Up to four keys' states are read below, each most likely a cache
    // miss in a large table: start them all together.
    keys_.prefetch(key);
    if (const Slot& old = SlotAt(t); old.time != kNone) keys_.prefetch(old.key);
    if (random_count_ + 1 > ring_size_) keys_.prefetch(RandomAt(random_count_ + 1).key);
    if (period_ != 0) keys_.prefetch(SlotAt(edge_ + 1).key);
    bool came_true = false;
    if (auto it = keys_.find(key); it != keys_.end()) {
      const uint64_t predicted = Predicted(it->second);
      const uint64_t tolerance = Tolerance();
      came_true = predicted != kNone && predicted + tolerance >= t &&
                  t + tolerance >= predicted;
    }
    Forget(SlotAt(t));
    if (period_ != 0) {
      while (edge_ + period_ < t) Expire(++edge_);
      if (by_boundaries_) {
        while (late_edge_ + period_ + Tolerance() < t) Overdue(++late_edge_);
      }
      while (random_window_ <= random_count_ &&
             RandomTime(random_window_) + period_ <= t) {
        ++random_window_;
      }
    }
    SlotAt(t) = Slot{key, t, kNone};
    if (!came_true) {
      ++random_count_;
      if (random_count_ > ring_size_) ForgetRandom(RandomAt(random_count_));
      RandomAt(random_count_) = RandomSlot{key, t};
    }
    KeyState& k = keys_[key];
    Unplace(key, k);  // Its sort keys change below; the caller re-places it.
    if (k.last != kNone && SlotAt(k.last).time == k.last) {
      SlotAt(k.last).next = t;
    }
    k.last = t;
    ++k.in_ring;
    if (!came_true) ++k.count;
    loop_hits_ += came_true;
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

  // The access in `old` leaves the ring.
  void Forget(const Slot& old) {
    if (old.time == kNone) return;
    auto it = keys_.find(old.key);
    if (it == keys_.end()) return;
    KeyState& k = it->second;
    if (k.head == old.time) k.head = old.next;
    --k.in_ring;
    MaybeForgetKey(it);
  }

  // The random access in `old` leaves the random ring: its key's count
  // falls, so it is re-filed.
  void ForgetRandom(const RandomSlot& old) {
    auto it = keys_.find(old.key);
    if (it == keys_.end()) return;
    KeyState& k = it->second;
    const bool placed = k.place == Where::kRandom;
    if (placed) Unplace(old.key, k);
    --k.count;
    if (placed) Place(old.key, k);
    MaybeForgetKey(it);
  }

  // A key is kept while it is resident or has an access in either ring.
  void MaybeForgetKey(absl::flat_hash_map<uint64_t, KeyState>::iterator it) {
    const KeyState& k = it->second;
    if (!k.resident && k.in_ring == 0 && k.count == 0) keys_.erase(it);
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

  // The access at `time` is a period and the tolerance old: a key whose
  // last access it is, and whose prediction rested on it, is filed again
  // (as random: it missed its turn).
  void Overdue(uint64_t time) {
    const Slot& s = SlotAt(time);
    if (s.time != time) return;
    auto it = keys_.find(s.key);
    if (it == keys_.end()) return;
    KeyState& k = it->second;
    if (k.last != time || k.head != kNone || k.place != Where::kPeriodic) return;
    Place(s.key, k);
  }

  void Vote(uint64_t distance) {
    const uint32_t count = ++votes_[distance];
    if (distance == best_distance_ || count > best_count_) {
      best_distance_ = distance;
      best_count_ = count;
    }
    if (++votes_cast_ % ring_size_ == 0) {
      for (uint32_t& v : votes_) v /= 2;
      best_count_ /= 2;
    }
    if (by_boundaries_ || best_distance_ == period_ ||
        best_count_ < kMinVotes) {
      return;
    }
    if (2 * votes_[period_] < best_count_) SetPeriod(best_distance_);
  }

  // Adopts period `p`: recomputes every head from the ring, which keys are
  // periodic (accessed exactly p before their last access), the random
  // accesses of the last period, and where every resident key is filed.
  void SetPeriod(uint64_t p) {
    period_ = p;
    // From step boundaries, "a period earlier" has Record's tolerance: a
    // step a hit or two short (the engine's logs lose a few) is still the
    // same loop, and an exact match filed every block as random.
    const uint64_t tolerance = Tolerance();
    for (auto& [key, k] : keys_) {
      k.head = kNone;
      k.periodic = false;
      if (k.last > p && k.last - p + ring_size_ > now_) {
        const Slot& twin = SlotAt(k.last - p);
        k.periodic = twin.time == k.last - p && twin.key == key;
      }
      for (size_t i = 1; i < kRecent && !k.periodic && tolerance > 0; ++i) {
        const uint64_t r = k.recent[i];
        if (r == kNone) break;
        const uint64_t distance = k.last - r;
        k.periodic = distance + tolerance >= p && distance <= p + tolerance;
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
    late_edge_ = now_ >= p + Tolerance() ? now_ - p - Tolerance() : 0;
    // p < W, so the random accesses of the last period are all kept.
    random_window_ = random_count_ + 1;
    while (random_window_ > 1 && random_count_ + 1 - random_window_ < p &&
           RandomTime(random_window_ - 1) + p >= now_ + 1) {
      --random_window_;
    }
    for (auto& [key, k] : keys_) {
      if (k.place != Where::kNowhere) Place(key, k);
    }
  }

  const size_t capacity_;
  const uint64_t ring_size_;  // W, a power of two.
  ZeroedArray<Slot> ring_;
  // The last W random accesses, by index (1, 2, ...) modulo W.
  ZeroedArray<RandomSlot> random_ring_;
  uint64_t random_count_ = 0;   // Index of the last random access.
  uint64_t random_window_ = 1;  // Index of the first one in (now - P, now].
  uint64_t now_ = 0;
  uint64_t loop_hits_ = 0;  // Accesses that came true.
  uint64_t edge_ = 0;    // Accesses at or before edge_ left the window.
  uint64_t late_edge_ = 0;  // The same for the window plus the tolerance.
  uint64_t period_ = 0;  // P; 0 while unknown.
  bool by_boundaries_ = false;
  uint64_t last_boundary_ = kNone;
  uint64_t unconfirmed_ = kNone;  // A step length near P, seen once.
  // Votes by distance (every distance voted for is below W): an array, not
  // a map, since at W = 32x the capacity a lookup stream votes for most of
  // them, and a map's probe per vote cost more than the rest of Record.
  ZeroedArray<uint32_t> votes_;
  uint64_t best_distance_ = 0;
  uint32_t best_count_ = 0;
  uint64_t votes_cast_ = 0;
  size_t resident_ = 0;
  absl::flat_hash_map<uint64_t, KeyState> keys_;
  // Resident keys whose accesses repeat with the period, by predicted next
  // use; the others by (count, last access).
  absl::btree_set<std::pair<uint64_t, uint64_t>> periodic_;
  absl::btree_set<std::tuple<uint64_t, uint64_t, uint64_t>> random_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewHintedPolicy(size_t capacity) {
  return std::make_unique<HintedPolicy>(capacity);
}

}  // namespace strata::policy
