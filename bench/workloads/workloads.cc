#include "bench/workloads/workloads.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/workloads/common.h"

namespace strata::bench {

std::vector<std::string> WorkloadNames() { return {"train", "embed", "shared"}; }

absl::StatusOr<std::vector<Result>> RunWorkload(absl::string_view name,
                                                const WorkloadOptions& options,
                                                const std::string& self) {
  if (name == "train") return RunTrain(options);
  if (name == "embed") return RunEmbed(options);
  if (name == "shared") return RunShared(options, self);
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown workload '", name, "'; the workloads are ",
      absl::StrJoin(WorkloadNames(), ", "), " (or all)"));
}

std::string ResultsJson(const std::vector<Result>& results) {
  nlohmann::json out = nlohmann::json::array();
  for (const Result& r : results) {
    nlohmann::json j = {{"name", r.name},
                        {"metric", r.metric},
                        {"strata", r.strata},
                        {"baseline", r.baseline},
                        {"baseline_name", r.baseline_name},
                        {"unit", r.unit},
                        {"higher_is_better", r.higher_is_better},
                        {"ratio", r.ratio},
                        {"scale", r.scale},
                        {"working_set_bytes", r.working_set_bytes},
                        {"tier_bytes", r.tier_bytes},
                        {"extra", r.extra}};
    if (!r.note.empty()) j["note"] = r.note;
    if (!r.policy.empty()) j["policy"] = r.policy;
    out.push_back(std::move(j));
  }
  return out.dump(2) + "\n";
}

std::string ResultsTable(const std::vector<Result>& results) {
  std::string out = absl::StrFormat("%-7s %-17s %6s %10s %13s %13s %-18s %7s\n",
                                    "name", "metric", "scale", "set", "strata",
                                    "baseline", "baseline_name", "ratio");
  for (const Result& r : results) {
    absl::StrAppendFormat(&out, "%-7s %-17s %5.3gx %10s %13.4g %13.4g %-18s %7.3f  %s\n",
                          r.name, r.metric, r.scale, Bytes(r.working_set_bytes),
                          r.strata, r.baseline, r.baseline_name, r.ratio, r.unit);
  }
  return out;
}

}  // namespace strata::bench
