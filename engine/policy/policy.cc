#include "engine/policy/policy.h"

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/policy/policies.h"

namespace strata::policy {
namespace {

struct Factory {
  std::string_view name;
  bool engine;  // Offered in EngineOptions::policy (the rest are baselines).
  std::unique_ptr<EvictionPolicy> (*make)(size_t capacity);
};

constexpr Factory kFactories[] = {
    {"default", true, &NewAdaptivePolicy},
    {"lru", true, &NewLruPolicy},
    {"lfu", true, &NewLfuPolicy},
    {"hinted", true, &NewHintedPolicy},
    {"s3fifo", false, &NewS3FifoPolicy},
    {"wtinylfu", false, &NewWTinyLfuPolicy},
    {"arc", false, &NewArcPolicy},
    {"lirs", false, &NewLirsPolicy},
    {"sieve", false, &NewSievePolicy},
};

}  // namespace

std::vector<std::string_view> EnginePolicyNames() {
  std::vector<std::string_view> names;
  for (const Factory& f : kFactories) {
    if (f.engine) names.push_back(f.name);
  }
  return names;
}

std::vector<std::string_view> AllPolicyNames() {
  std::vector<std::string_view> names;
  for (const Factory& f : kFactories) names.push_back(f.name);
  return names;
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakePolicy(
    std::string_view name, size_t capacity) {
  if (capacity == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy ", std::string(name), ": capacity is 0 blocks; give the tier room for at "
        "least one block"));
  }
  for (const Factory& f : kFactories) {
    if (f.name == name) return f.make(capacity);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eviction policy '", std::string(name),
                   "'; known policies: ", JoinNames(AllPolicyNames())));
}

}  // namespace strata::policy
