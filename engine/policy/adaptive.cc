// The default policy: an adaptive ensemble. No single policy wins every
// workload: frequency policies (W-TinyLFU) win on skewed lookups and resist
// scans, LIRS wins on loops larger than the cache, the hinted policy wins on
// repeating training steps. So the default runs several candidates and lets
// the one that is measured best on the current stream choose the victims.
//
// Each candidate has two instances:
//   - a follower, fed the real Insert/Access/Erase stream, so it always
//     ranks exactly the keys that are resident; when another candidate leads,
//     the leader's victims reach it as Erase.
//   - a shadow, a private simulation of the candidate alone on a spatial
//     sample of keys (all keys while the capacity is at most kShadowSize;
//     otherwise keys whose hash falls in 1/R of the space, with capacity
//     capacity / R, as SHARDS samples miss-ratio curves). The shadow counts
//     the misses the candidate would have had.
// Every epoch (kShadowSize sampled requests, at least 2 * shadow capacity)
// the shadows' miss counts are folded into exponentially decayed scores; the
// leader changes when another candidate's score is kSwitchMargin lower.
//
// Once the engine reports step boundaries (recorded training steps), the
// hinted candidate leads unless another one scores kSwitchMargin better. The
// shadows replay demand paging, where W-TinyLFU's admission filter keeps a
// loop's blocks out and ties with hinted; in the engine the step plan loads
// blocks ahead of their pins, so every block is admitted and the follower
// can only pick victims among them: there W-TinyLFU evicted in recency order
// and reread the whole loop every step (a 4x training sweep: 264 MB read a
// step, against 220 MB under hinted, which ranks by the plan's next use).
//
// Cost: 2 * (number of candidates) policy operations per request, each O(1)
// or O(log n) (the candidates' own bounds); memory about twice the sum of
// the candidates'. Not thread-safe, like every policy.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

constexpr size_t kShadowSize = 4096;
constexpr double kDecay = 0.75;
constexpr double kSwitchMargin = 0.02;

struct CandidateSpec {
  std::unique_ptr<EvictionPolicy> (*make)(size_t capacity);
};
constexpr CandidateSpec kCandidates[] = {
    {&NewWTinyLfuPolicy},
    {&NewLirsPolicy},
    {&NewHintedPolicy},
    {&NewArcPolicy},
};

class AdaptivePolicy final : public EvictionPolicy {
 public:
  explicit AdaptivePolicy(size_t capacity)
      : sample_rate_(std::max<size_t>(1, capacity / kShadowSize)),
        shadow_capacity_(std::max<size_t>(1, capacity / sample_rate_)),
        epoch_length_(std::max<size_t>(kShadowSize, 2 * shadow_capacity_)) {
    for (const CandidateSpec& spec : kCandidates) {
      Candidate c;
      c.follower = spec.make(capacity);
      c.shadow = spec.make(shadow_capacity_);
      if (c.follower->name() == "hinted") hinted_ = candidates_.size();
      candidates_.push_back(std::move(c));
    }
    resident_.reserve(capacity);
  }

  std::string_view name() const override { return "default"; }

  void Insert(uint64_t key) override {
    if (!resident_.insert(key).second) {
      Access(key);
      return;
    }
    for (Candidate& c : candidates_) c.follower->Insert(key);
    Observe(key);
  }

  // Not a request: the shadows, which count misses per request, see it
  // only when it is used (Access).
  void InsertWithoutAccess(uint64_t key) override {
    if (!resident_.insert(key).second) return;
    for (Candidate& c : candidates_) c.follower->InsertWithoutAccess(key);
  }

  void Access(uint64_t key) override {
    if (!resident_.contains(key)) return;
    for (Candidate& c : candidates_) c.follower->Access(key);
    Observe(key);
  }

  void Erase(uint64_t key) override {
    if (resident_.erase(key) == 0) return;
    for (Candidate& c : candidates_) c.follower->Erase(key);
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    const std::optional<uint64_t> victim =
        candidates_[leader_].follower->Evict(try_claim);
    if (!victim) return std::nullopt;
    resident_.erase(*victim);
    for (size_t i = 0; i < candidates_.size(); ++i) {
      if (i != leader_) candidates_[i].follower->Erase(*victim);
    }
    return victim;
  }

  void OnStepBoundary() override {
    for (Candidate& c : candidates_) {
      c.follower->OnStepBoundary();
      c.shadow->OnStepBoundary();
    }
    steps_ = true;
    leader_ = Lead(leader_);
  }

  size_t size() const override { return resident_.size(); }

 private:
  struct Candidate {
    std::unique_ptr<EvictionPolicy> follower;
    std::unique_ptr<EvictionPolicy> shadow;
    absl::flat_hash_set<uint64_t> shadow_resident;
    uint64_t epoch_misses = 0;
    double score = 0;
  };

  // Replays one request on every shadow, if `key` is in the sample.
  void Observe(uint64_t key) {
    if (sample_rate_ > 1 && Mix64(key ^ kSampleSalt) % sample_rate_ != 0) {
      return;
    }
    for (Candidate& c : candidates_) {
      if (c.shadow_resident.contains(key)) {
        c.shadow->Access(key);
        continue;
      }
      ++c.epoch_misses;
      if (c.shadow_resident.size() >= shadow_capacity_) {
        const std::optional<uint64_t> out =
            c.shadow->Evict([](uint64_t) { return true; });
        if (out) c.shadow_resident.erase(*out);
      }
      c.shadow->Insert(key);
      c.shadow_resident.insert(key);
    }
    if (++epoch_requests_ < epoch_length_) return;
    epoch_requests_ = 0;
    size_t best = leader_;
    for (size_t i = 0; i < candidates_.size(); ++i) {
      Candidate& c = candidates_[i];
      c.score = kDecay * c.score + static_cast<double>(c.epoch_misses);
      c.epoch_misses = 0;
      if (c.score < candidates_[best].score) best = i;
    }
    if (candidates_[best].score <
        (1 - kSwitchMargin) * candidates_[leader_].score) {
      leader_ = best;
    }
    leader_ = Lead(leader_);
  }

  // `leader`, or hinted once steps are known and no candidate scores
  // kSwitchMargin better than it.
  size_t Lead(size_t leader) const {
    if (!steps_) return leader;
    double best = candidates_[hinted_].score;
    for (const Candidate& c : candidates_) best = std::min(best, c.score);
    return best < (1 - kSwitchMargin) * candidates_[hinted_].score ? leader
                                                                    : hinted_;
  }

  static constexpr uint64_t kSampleSalt = 0x2545f4914f6cdd1dULL;
  const size_t sample_rate_;
  const size_t shadow_capacity_;
  const size_t epoch_length_;
  std::vector<Candidate> candidates_;
  size_t leader_ = 0;
  size_t hinted_ = 0;   // the hinted candidate's index
  bool steps_ = false;  // OnStepBoundary was called
  uint64_t epoch_requests_ = 0;
  absl::flat_hash_set<uint64_t> resident_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewAdaptivePolicy(size_t capacity) {
  return std::make_unique<AdaptivePolicy>(capacity);
}

}  // namespace strata::policy
