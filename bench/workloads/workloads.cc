#include "bench/workloads/workloads.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/workloads/common.h"

namespace strata::bench {

std::vector<std::string> WorkloadNames() { return {"train", "embed", "shared", "gpu"}; }

namespace {

// Sizes this machine cannot hold are refused before anything is allocated
// (a host tier of 64 TiB would otherwise end in the OOM killer). Memory:
// the fastest tier (and, for shared, every reader's private copy) must fit
// in half of the memory available now. Disk: train keeps three files of the
// working set at once (the engine's, a baseline's, the raw yardstick's),
// embed two; they must fit in the free space of --dir.
absl::Status CheckFits(absl::string_view name, const WorkloadOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dir ", options.dir, ": cannot create it (", ec.message(), ")"));
  }
  const std::filesystem::space_info disk = std::filesystem::space(options.dir, ec);
  const double memory = static_cast<double>(::sysconf(_SC_AVPHYS_PAGES)) *
                        static_cast<double>(::sysconf(_SC_PAGESIZE));
  uint64_t largest = 0;
  for (uint64_t ws : WorkingSets(options)) largest = std::max(largest, ws);
  // gpu keeps the whole working set in host memory, one side at a time.
  const double in_memory =
      name == "shared" ? static_cast<double>(largest) * (options.readers + 1)
      : name == "gpu"  ? static_cast<double>(largest)
                       : static_cast<double>(options.tier_bytes);
  if (in_memory > memory / 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": needs ", Bytes(static_cast<uint64_t>(in_memory)),
        " of memory, more than half of the ", Bytes(static_cast<uint64_t>(memory)),
        " available; lower --tier, --scale or --size"));
  }
  const double on_disk =
      name == "gpu" ? 0 : static_cast<double>(largest) * (name == "train" ? 3 : 2);
  if (!ec && on_disk > 0.9 * static_cast<double>(disk.available)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": needs ", Bytes(static_cast<uint64_t>(on_disk)), " of disk in ",
        options.dir, ", which has ", Bytes(disk.available),
        " free; lower --tier, --scale or --size, or pass another --dir"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<Result>> RunWorkload(absl::string_view name,
                                                const WorkloadOptions& options,
                                                const std::string& self) {
  if (name == "train" || name == "embed" || name == "shared" || name == "gpu") {
    if (absl::Status s = CheckFits(name, options); !s.ok()) return s;
  }
  if (name == "train") return RunTrain(options);
  if (name == "embed") return RunEmbed(options);
  if (name == "shared") return RunShared(options, self);
  if (name == "gpu") {
    // Checked here, so that a build without CUDA refuses it alike.
    constexpr uint64_t kBlock = uint64_t{2} << 20;
    if (options.tier_bytes < 4 * kBlock || options.tier_bytes % kBlock != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gpu: --tier gpu=", options.tier_bytes,
          " must be a multiple of 2 MiB and at least 8 MiB (the VRAM budget)"));
    }
    return RunGpu(options);
  }
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
