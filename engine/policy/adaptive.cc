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
// Followers are where the cost is (every hit reaches each of them), so a
// follower that cannot lead soon sleeps: after kSleepEpochs epochs in a row
// more than kSleepMargin behind the best score, or unable to lead, it is
// dropped, and only its sampled shadow runs. It wakes when its score comes
// within kWakeMargin of the best: a new follower is given the resident keys
// (in no order, kFilePerRequest a request) and follows the stream for
// kWarmEpochs, and until it has them all, before it may lead.
//
// hinted may lead only on a stream with a loop: step boundaries, or
// kLoopShare of its shadow's recent requests came when the loop it learned
// predicted them. On independent lookups it ranks rows by
// frequency, as W-TinyLFU does, within a few percent of it in misses and at
// several times its cost per access (policy_sim on a Zipf 1.0 trace: the
// ensemble took 4.0 s with hinted following, 1.0 s without; the engine's
// embed workload waited on that upkeep between its batches).
//
// Once the engine reports step boundaries (recorded training steps), hinted
// stays awake and leads unless another candidate scores kSwitchMargin
// better. The shadows replay demand paging, where W-TinyLFU's admission
// filter keeps a loop's blocks out and ties with hinted; in the engine the
// step plan loads blocks ahead of their pins, so every block is admitted and
// the follower can only pick victims among them: there W-TinyLFU evicted in
// recency order and reread the whole loop every step (a 4x training sweep:
// 264 MB read a step, against 220 MB under hinted, which ranks by the
// plan's next use).
//
// Cost: one policy operation per awake follower per request, plus the
// sampled shadows' (1/R of the requests, each candidate); memory about the
// awake followers' plus the shadows'. Not thread-safe, like every policy.
#include <algorithm>
#include <cstdint>
#include <limits>
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
// A follower sleeps after kSleepEpochs epochs in a row more than
// kSleepMargin behind the best score (or unable to lead), and wakes when
// its score comes within kWakeMargin of it; a woken follower may lead
// after kWarmEpochs epochs of the real stream.
constexpr double kSleepMargin = 0.05;
constexpr double kWakeMargin = 0.01;
constexpr uint32_t kSleepEpochs = 4;
constexpr uint32_t kWarmEpochs = 1;
// Resident keys a woken follower is given per request (an epoch has at least
// twice the capacity's requests, so it has them all well before it may lead).
constexpr size_t kFilePerRequest = 4;
// Without step boundaries, hinted may lead only while this share of its
// shadow's requests, in the last epoch or decayed per epoch as the scores
// are, came when a learned loop predicted them.
constexpr double kLoopShare = 0.125;

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
      : capacity_(capacity),
        sample_rate_(std::max<size_t>(1, capacity / kShadowSize)),
        shadow_capacity_(std::max<size_t>(1, capacity / sample_rate_)),
        epoch_length_(std::max<size_t>(kShadowSize, 2 * shadow_capacity_)) {
    for (const CandidateSpec& spec : kCandidates) {
      Candidate c;
      c.make = spec.make;
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
    FileSome();
    for (Candidate& c : candidates_) {
      if (c.follower) c.follower->Insert(key);
    }
    Observe(key);
  }

  // Not a request: the shadows, which count misses per request, see it
  // only when it is used (Access).
  void InsertWithoutAccess(uint64_t key) override {
    if (!resident_.insert(key).second) return;
    FileSome();
    for (Candidate& c : candidates_) {
      if (c.follower) c.follower->InsertWithoutAccess(key);
    }
  }

  void Access(uint64_t key) override {
    if (!resident_.contains(key)) return;
    FileSome();
    for (Candidate& c : candidates_) {
      if (c.follower) c.follower->Access(key);
    }
    Observe(key);
  }

  void Erase(uint64_t key) override {
    if (resident_.erase(key) == 0) return;
    for (Candidate& c : candidates_) {
      if (c.follower) c.follower->Erase(key);
    }
  }

  std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) override {
    const std::optional<uint64_t> victim =
        candidates_[leader_].follower->Evict(try_claim);
    if (!victim) return std::nullopt;
    resident_.erase(*victim);
    for (size_t i = 0; i < candidates_.size(); ++i) {
      if (i != leader_ && candidates_[i].follower) {
        candidates_[i].follower->Erase(*victim);
      }
    }
    return victim;
  }

  // Step boundaries make hinted the specialist: it stays awake from now on
  // and leads unless another candidate scores kSwitchMargin better.
  void OnStepBoundary() override {
    if (!candidates_[hinted_].follower) Wake(candidates_[hinted_]);
    for (Candidate& c : candidates_) {
      if (c.follower) c.follower->OnStepBoundary();
      c.shadow->OnStepBoundary();
    }
    steps_ = true;
    leader_ = Lead(leader_);
  }

  size_t size() const override { return resident_.size(); }

 private:
  struct Candidate {
    std::unique_ptr<EvictionPolicy> (*make)(size_t capacity) = nullptr;
    // Null while asleep.
    std::unique_ptr<EvictionPolicy> follower;
    std::unique_ptr<EvictionPolicy> shadow;
    absl::flat_hash_set<uint64_t> shadow_resident;
    uint64_t epoch_misses = 0;
    double score = 0;
    // Resident keys at its wake, filed from index `filed` on (FileSome).
    std::vector<uint64_t> to_file;
    size_t filed = 0;
    uint32_t awake_epochs = kWarmEpochs;  // Epochs since it last woke.
    uint32_t behind_epochs = 0;           // In a row, see kSleepMargin.
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
    EndEpoch();
  }

  // Folds the epoch's misses into the scores, puts followers that cannot
  // lead soon to sleep and wakes those that could, then picks the leader.
  void EndEpoch() {
    for (Candidate& c : candidates_) {
      c.score = kDecay * c.score + static_cast<double>(c.epoch_misses);
      c.epoch_misses = 0;
      if (c.follower && c.awake_epochs < kWarmEpochs) ++c.awake_epochs;
    }
    // A loop counts from the first epoch that has it, and until its share,
    // decayed as the scores are, falls below kLoopShare (one epoch of
    // noise does not take the lead from hinted).
    const uint64_t loop_hits = candidates_[hinted_].shadow->loop_hits();
    const double epoch_loop_hits =
        static_cast<double>(loop_hits - epoch_loop_hits_);
    epoch_loop_hits_ = loop_hits;
    loop_hits_score_ = kDecay * loop_hits_score_ + epoch_loop_hits;
    requests_score_ =
        kDecay * requests_score_ + static_cast<double>(epoch_length_);
    loop_ = epoch_loop_hits >=
                kLoopShare * static_cast<double>(epoch_length_) ||
            loop_hits_score_ >= kLoopShare * requests_score_;

    double best_score = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < candidates_.size(); ++i) {
      if (MayLead(i)) best_score = std::min(best_score, candidates_[i].score);
    }
    for (size_t i = 0; i < candidates_.size(); ++i) {
      Candidate& c = candidates_[i];
      if (i == leader_) continue;
      if (!c.follower) {
        if (MayLead(i) && c.score <= (1 + kWakeMargin) * best_score) Wake(c);
        continue;
      }
      const bool behind =
          !MayLead(i) || c.score > (1 + kSleepMargin) * best_score;
      c.behind_epochs = behind ? c.behind_epochs + 1 : 0;
      if (c.behind_epochs >= kSleepEpochs && !(steps_ && i == hinted_)) {
        if (!c.to_file.empty()) --filing_;
        c.to_file = {};
        c.filed = 0;
        c.follower.reset();
      }
    }

    // The best candidate that may lead and has followed long enough.
    std::optional<size_t> best;
    for (size_t i = 0; i < candidates_.size(); ++i) {
      const Candidate& c = candidates_[i];
      if (!MayLead(i) || !Complete(c) || c.awake_epochs < kWarmEpochs) continue;
      if (!best || c.score < candidates_[*best].score) best = i;
    }
    if (best && (!MayLead(leader_) ||
                 candidates_[*best].score <
                     (1 - kSwitchMargin) * candidates_[leader_].score)) {
      leader_ = *best;
    }
    leader_ = Lead(leader_);
  }

  // hinted leads only on a stream with a loop (or step boundaries): on
  // independent lookups it ranks rows by frequency as W-TinyLFU does, at
  // several times the cost per access.
  bool MayLead(size_t i) const { return i != hinted_ || steps_ || loop_; }

  // A new follower of the resident keys (in no particular order: it
  // learns the stream's order while it warms up). The keys are filed a few
  // per request (FileSome), not all under this call: at a million blocks
  // filing them all took hinted a second, a pause for every pinner waiting
  // on the policy's mutex.
  void Wake(Candidate& c) {
    c.follower = c.make(capacity_);
    c.to_file.assign(resident_.begin(), resident_.end());
    c.filed = 0;
    if (!c.to_file.empty()) ++filing_;
    c.awake_epochs = 0;
    c.behind_epochs = 0;
  }

  // Files up to kFilePerRequest keys of each woken follower's snapshot
  // that are still resident (one that left was erased or evicted before
  // its turn; one that came back was inserted already). A follower leads
  // only once it has them all.
  void FileSome() {
    if (filing_ == 0) return;
    for (Candidate& c : candidates_) {
      if (c.filed == c.to_file.size()) continue;
      const size_t end = std::min(c.to_file.size(), c.filed + kFilePerRequest);
      for (; c.filed < end; ++c.filed) {
        const uint64_t key = c.to_file[c.filed];
        if (resident_.contains(key)) c.follower->InsertWithoutAccess(key);
      }
      if (c.filed == c.to_file.size()) {
        c.to_file = {};
        c.filed = 0;
        --filing_;
        leader_ = Lead(leader_);
      }
    }
  }

  bool Complete(const Candidate& c) const {
    return c.follower != nullptr && c.to_file.empty();
  }

  // `leader`, or hinted once steps are known and no candidate scores
  // kSwitchMargin better than it.
  size_t Lead(size_t leader) const {
    if (!steps_ || !Complete(candidates_[hinted_])) return leader;
    double best = candidates_[hinted_].score;
    for (const Candidate& c : candidates_) {
      if (c.follower) best = std::min(best, c.score);
    }
    return best < (1 - kSwitchMargin) * candidates_[hinted_].score ? leader
                                                                    : hinted_;
  }

  static constexpr uint64_t kSampleSalt = 0x2545f4914f6cdd1dULL;
  const size_t capacity_;
  const size_t sample_rate_;
  const size_t shadow_capacity_;
  const size_t epoch_length_;
  std::vector<Candidate> candidates_;
  size_t leader_ = 0;
  size_t hinted_ = 0;   // the hinted candidate's index
  bool steps_ = false;  // OnStepBoundary was called
  bool loop_ = false;   // hinted's shadow sees a loop (kLoopShare)
  uint64_t epoch_loop_hits_ = 0;  // its loop_hits() at the epoch's start
  double loop_hits_score_ = 0;    // decayed loop hits per epoch
  double requests_score_ = 0;     // decayed sampled requests per epoch
  uint64_t epoch_requests_ = 0;
  size_t filing_ = 0;  // followers with keys left to file
  absl::flat_hash_set<uint64_t> resident_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewAdaptivePolicy(size_t capacity) {
  return std::make_unique<AdaptivePolicy>(capacity);
}

}  // namespace strata::policy
