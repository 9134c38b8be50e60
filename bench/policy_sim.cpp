// policy_sim: replays block-key traces through the eviction policies.
//
//   policy_sim --trace FILE --capacity N --policy NAME|all
//       One JSON line per policy:
//       {"policy":"lru","requests":123,"misses":45,"miss_ratio":0.365854}
//       `all` runs every online policy, then belady (the offline optimum).
//   policy_sim --generate zipf|zipf_scan|training --out FILE [generator flags]
//       Writes a standard trace, one key per line. Generator flags (defaults
//       in engine/policy/traces.h): --universe --alpha --length --seed
//       --scan_fraction --scan_length --layers --blocks_per_layer
//       --optimizer_blocks_per_layer --embedding_rows --embedding_alpha
//       --lookups_per_layer --steps.
//   policy_sim --suite [--scale X] [--table]
//       Generates the documented workloads in memory and replays every
//       policy at every documented cache size: JSON lines, or with --table a
//       Markdown table of miss ratios and the targets of docs/PERFORMANCE.md.
//       Training caches that hold every layer block also get the A0 online
//       reference (simulate.h), as {"reference":"a0",...} JSON lines.
//
// Flags take `--name=value` or `--name value`. Any bad argument, unreadable
// trace or malformed trace line prints a message on stderr and exits with 2.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "engine/policy/policies.h"
#include "engine/policy/policy.h"
#include "engine/policy/simulate.h"
#include "engine/policy/traces.h"
#include "util/status_macros.h"

namespace strata::policy {
namespace {

constexpr int kUsageError = 2;

const std::set<std::string_view>& KnownFlags() {
  static const auto* flags = new std::set<std::string_view>{
      "trace", "capacity", "policy", "generate", "out", "suite", "scale",
      "table", "universe", "alpha", "length", "seed", "scan_fraction",
      "scan_length", "layers", "blocks_per_layer",
      "optimizer_blocks_per_layer", "embedding_rows", "embedding_alpha",
      "lookups_per_layer", "steps", "help"};
  return *flags;
}
bool IsSwitch(std::string_view flag) {
  return flag == "suite" || flag == "table" || flag == "help";
}

using Flags = std::map<std::string, std::string, std::less<>>;

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg.substr(0, 2) != "--") {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", std::string(arg),
                       "'; flags start with --"));
    }
    arg.remove_prefix(2);
    std::string name(arg.substr(0, arg.find('=')));
    std::optional<std::string> value;
    if (arg.find('=') != std::string_view::npos) {
      value = std::string(arg.substr(arg.find('=') + 1));
    }
    if (!KnownFlags().contains(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, "; see --help"));
    }
    if (!value) {
      if (IsSwitch(name)) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
    }
    flags[name] = *value;
  }
  return flags;
}

template <typename T>
absl::Status ReadNumber(const Flags& flags, std::string_view name, T* out) {
  auto it = flags.find(name);
  if (it == flags.end()) return absl::OkStatus();
  bool ok;
  if constexpr (std::is_floating_point_v<T>) {
    ok = absl::SimpleAtod(it->second, out);
  } else {
    ok = !it->second.empty() && it->second[0] != '-' &&
         absl::SimpleAtoi(it->second, out);
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", std::string(name), "=", it->second, " is not a valid number"));
  }
  return absl::OkStatus();
}

std::string Json(const SimResult& r) {
  return absl::StrFormat(
      R"({"policy":"%s","requests":%d,"misses":%d,"miss_ratio":%.6f})",
      r.policy, r.requests, r.misses, r.miss_ratio());
}

absl::StatusOr<size_t> ReadCapacity(const Flags& flags) {
  if (!flags.contains("capacity")) {
    return absl::InvalidArgumentError(
        "--capacity is required: the cache size in blocks (> 0)");
  }
  size_t capacity = 0;
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "capacity", &capacity));
  if (capacity == 0) {
    return absl::InvalidArgumentError(
        "--capacity must be a positive number of blocks");
  }
  return capacity;
}

absl::Status RunReplay(const Flags& flags) {
  if (!flags.contains("trace")) {
    return absl::InvalidArgumentError("--trace FILE is required");
  }
  STRATA_ASSIGN_OR_RETURN(const size_t capacity, ReadCapacity(flags));
  auto policy = flags.find("policy");
  if (policy == flags.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--policy is required: all, ",
        JoinNames(SimulatorPolicyNames())));
  }
  std::vector<std::string_view> names;
  if (policy->second == "all") {
    names = SimulatorPolicyNames();
  } else {
    const std::vector<std::string_view> known = SimulatorPolicyNames();
    if (std::find(known.begin(), known.end(), policy->second) == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown policy '", policy->second, "'; known: all, ",
                       JoinNames(known)));
    }
    names.push_back(policy->second);
  }
  STRATA_ASSIGN_OR_RETURN(const std::vector<uint64_t> trace,
                          ReadTraceFile(flags.at("trace")));
  for (std::string_view name : names) {
    STRATA_ASSIGN_OR_RETURN(const SimResult r,
                            Simulate(name, trace, capacity));
    absl::PrintF("%s\n", Json(r));
  }
  return absl::OkStatus();
}

absl::Status RunGenerate(const Flags& flags) {
  const std::string& kind = flags.at("generate");
  if (!flags.contains("out")) {
    return absl::InvalidArgumentError("--generate needs --out FILE");
  }
  std::vector<uint64_t> trace;
  ZipfScanParams scan;
  ZipfParams& zipf = scan.zipf;
  TrainingParams training;
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "universe", &zipf.universe));
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "alpha", &zipf.alpha));
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "length", &zipf.length));
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "seed", &zipf.seed));
  STRATA_RETURN_IF_ERROR(
      ReadNumber(flags, "scan_fraction", &scan.scan_fraction));
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "scan_length", &scan.scan_length));
  training.seed = zipf.seed;
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "layers", &training.layers));
  STRATA_RETURN_IF_ERROR(
      ReadNumber(flags, "blocks_per_layer", &training.blocks_per_layer));
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "optimizer_blocks_per_layer",
                                    &training.optimizer_blocks_per_layer));
  STRATA_RETURN_IF_ERROR(
      ReadNumber(flags, "embedding_rows", &training.embedding_rows));
  STRATA_RETURN_IF_ERROR(
      ReadNumber(flags, "embedding_alpha", &training.embedding_alpha));
  STRATA_RETURN_IF_ERROR(
      ReadNumber(flags, "lookups_per_layer", &training.lookups_per_layer));
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "steps", &training.steps));
  if (zipf.universe == 0) {
    return absl::InvalidArgumentError("--universe must be positive");
  }
  if (kind == "zipf") {
    trace = ZipfTrace(zipf);
  } else if (kind == "zipf_scan") {
    trace = ZipfScanTrace(scan);
  } else if (kind == "training") {
    trace = TrainingTrace(training);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --generate '", kind, "'; known: zipf, zipf_scan, training"));
  }
  return WriteTraceFile(flags.at("out"), trace);
}

absl::Status RunSuite(const Flags& flags) {
  double scale = 1;
  STRATA_RETURN_IF_ERROR(ReadNumber(flags, "scale", &scale));
  if (!(scale > 0)) {
    return absl::InvalidArgumentError("--scale must be positive");
  }
  const bool table = flags.contains("table");
  const std::vector<std::string_view> names = SimulatorPolicyNames();
  if (table) {
    absl::PrintF("| workload | cache | blocks | %s |\n",
                absl::StrReplaceAll(JoinNames(names), {{", ", " | "}}));
    std::string rule = "|---|---|---|";
    for (size_t i = 0; i < names.size(); ++i) rule += "---|";
    absl::PrintF("%s\n", rule);
  }
  std::vector<std::string> targets;
  for (const SuiteWorkload& w : StandardSuite(scale)) {
    if (!table) {
      absl::PrintF(R"({"workload":"%s","params":"%s","requests":%d})" "\n",
                  w.name, w.params, w.trace.size());
    } else {
      targets.push_back(absl::StrCat("- ", w.name, ": ", w.params,
                                     " (", w.trace.size(), " requests)"));
    }
    for (const SuiteWorkload::Cache& cache : w.caches) {
      absl::flat_hash_map<std::string, double> ratio;
      std::vector<std::string> cells;
      for (std::string_view name : names) {
        STRATA_ASSIGN_OR_RETURN(const SimResult r,
                                Simulate(name, w.trace, cache.capacity));
        ratio[r.policy] = r.miss_ratio();
        cells.push_back(absl::StrFormat("%.4f", r.miss_ratio()));
        if (!table) {
          absl::PrintF(
              R"({"workload":"%s","cache":"%s","capacity":%d,)"
              R"("policy":"%s","requests":%d,"misses":%d,"miss_ratio":%.6f})"
              "\n",
              w.name, cache.label, cache.capacity,
              r.policy, r.requests, r.misses, r.miss_ratio());
          std::fflush(stdout);
        }
      }
      double best = 1e9;
      for (std::string_view b :
           {"lru", "lfu", "s3fifo", "wtinylfu", "arc", "lirs", "sieve"}) {
        best = std::min(best, ratio[std::string(b)]);
      }
      std::string check = absl::StrFormat(
          "- %s @ %s: default/best-baseline = %.3f (target <= 1.03)", w.name,
          cache.label, ratio["default"] / best);
      if (w.name == "zipf") {
        absl::StrAppendFormat(&check, ", default/lru = %.3f (target <= 0.9)",
                              ratio["default"] / ratio["lru"]);
      }
      if (w.layer_blocks != 0) {
        absl::StrAppendFormat(&check, ", hinted/belady = %.3f",
                              ratio["hinted"] / ratio["belady"]);
        if (cache.hinted_vs_belady != 0) {
          absl::StrAppendFormat(&check, " (target <= %.2f)",
                                cache.hinted_vs_belady);
        }
      }
      if (w.layer_blocks != 0 && cache.capacity > w.layer_blocks) {
        STRATA_ASSIGN_OR_RETURN(
            const uint64_t a0,
            TrainingA0Misses(w.trace, cache.capacity, w.layer_blocks));
        const double a0_ratio =
            static_cast<double>(a0) / static_cast<double>(w.trace.size());
        absl::StrAppendFormat(&check,
                              ", a0/belady = %.3f (online reference)",
                              a0_ratio / ratio["belady"]);
        if (!table) {
          absl::PrintF(
              R"({"workload":"%s","cache":"%s","capacity":%d,)"
              R"("reference":"a0","requests":%d,"misses":%d,)"
              R"("miss_ratio":%.6f})" "\n",
              w.name, cache.label, cache.capacity, w.trace.size(), a0,
              a0_ratio);
        }
      }
      targets.push_back(check);
      if (table) {
        absl::PrintF("| %s | %s | %d | %s |\n", w.name,
                    cache.label, cache.capacity,
                    absl::StrJoin(cells, " | "));
        std::fflush(stdout);
      }
    }
  }
  if (table) {
    absl::PrintF("\n%s\n", absl::StrJoin(targets, "\n"));
  }
  return absl::OkStatus();
}

constexpr char kUsage[] =
    "usage: policy_sim --trace FILE --capacity N --policy NAME|all\n"
    "       policy_sim --generate zipf|zipf_scan|training --out FILE "
    "[--universe N --alpha A --length N --seed S --scan_fraction F "
    "--scan_length N --layers N --blocks_per_layer N "
    "--optimizer_blocks_per_layer N --embedding_rows N --embedding_alpha A "
    "--lookups_per_layer N --steps N]\n"
    "       policy_sim --suite [--scale X] [--table]\n";

int Main(int argc, char** argv) {
  absl::StatusOr<Flags> flags = ParseFlags(argc, argv);
  absl::Status status = flags.status();
  if (status.ok()) {
    if (flags->contains("help")) {
      absl::PrintF("%s", kUsage);
      return 0;
    }
    const int modes = static_cast<int>(flags->contains("trace")) +
                      static_cast<int>(flags->contains("generate")) +
                      static_cast<int>(flags->contains("suite"));
    if (modes != 1) {
      status = absl::InvalidArgumentError(
          "give exactly one of --trace, --generate, --suite");
    } else if (flags->contains("suite")) {
      status = RunSuite(*flags);
    } else if (flags->contains("generate")) {
      status = RunGenerate(*flags);
    } else {
      status = RunReplay(*flags);
    }
  }
  if (!status.ok()) {
    absl::FPrintF(stderr, "policy_sim: %s\n%s", std::string(status.message()),
                  kUsage);
    return kUsageError;
  }
  return 0;
}

}  // namespace
}  // namespace strata::policy

int main(int argc, char** argv) { return strata::policy::Main(argc, argv); }
