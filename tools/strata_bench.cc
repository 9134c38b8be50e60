#include "tools/strata_bench.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/workloads/workloads.h"

const char kBenchUsage[] =
    "Tiering workloads, each beside what a user would do without Strata:\n"
    "  strata bench WORKLOAD [options]   WORKLOAD: train, embed, shared, gpu or all\n"
    "    --tier [NAME=]BYTES   capacity of the workload's fastest tier (host for\n"
    "                          train and embed, shm for shared, default 64M;\n"
    "                          gpu: the VRAM budget, default 1G)\n"
    "    --scale X[,X...]      working sets as multiples of it (default 1,2,4,8)\n"
    "    --size BYTES[,...]    working sets in bytes instead (e.g. 256M,1G)\n"
    "    --dir DIR             scratch directory on the disk to measure\n"
    "                          (default ./strata-bench; created, emptied after)\n"
    "    --json FILE           also write the results as JSON (bench/report.py)\n"
    "    --steps N             train: timed steps, after warm-up ones; gpu: timed\n"
    "                          passes, after one (default 6)\n"
    "    --lookups N           embed: timed lookups per size (default 200000)\n"
    "    --readers N           shared: reader processes (default 4)\n"
    "    --policy NAME         the engine's eviction policy (train, embed, gpu):\n"
    "                          default, lru, lfu or hinted\n"
    "    --quick               a small run that checks everything works\n"
    "  One progress line per phase goes to standard error, the table of\n"
    "  results to standard output. BYTES take K, M, G, T (binary) suffixes.\n"
    "  gpu needs a GPU and a CUDA build: without them it is skipped (exit 77\n"
    "  when it was the only workload asked for).\n";

namespace {

constexpr int kOk = 0, kFailed = 1, kUsageError = 2, kSkipped = 77;

int Usage(absl::string_view why) {
  std::fprintf(stderr, "strata bench: %.*s\n\n%s", static_cast<int>(why.size()),
               why.data(), kBenchUsage);
  return kUsageError;
}

// "64M", "1.5G", "4096": binary suffixes K, M, G, T (an optional "iB"/"B").
bool ParseBytes(absl::string_view text, uint64_t* out) {
  absl::string_view s = text;
  (void)(absl::ConsumeSuffix(&s, "iB") || absl::ConsumeSuffix(&s, "B"));
  double mult = 1;
  if (!s.empty()) {
    switch (s.back()) {
      case 'K': case 'k': mult = 1024.0; break;
      case 'M': case 'm': mult = 1024.0 * 1024; break;
      case 'G': case 'g': mult = 1024.0 * 1024 * 1024; break;
      case 'T': case 't': mult = 1024.0 * 1024 * 1024 * 1024; break;
      default: break;
    }
    if (mult != 1) s.remove_suffix(1);
  }
  double v = 0;
  if (!absl::SimpleAtod(s, &v) || !(v > 0) || v * mult > 1e15) return false;
  *out = static_cast<uint64_t>(v * mult);
  return true;
}

struct Args {
  std::string workload;
  strata::bench::WorkloadOptions options;
  std::string host_tier, shm_tier, gpu_tier;  // --tier values, by tier name
  std::string any_tier;  // --tier without a name: every workload's
  std::string json;
  bool quick = false;
  std::vector<double> scales;
  std::vector<uint64_t> sizes;
  std::string error;  // a usage error
};

bool ParseList(absl::string_view text, std::vector<double>* scales,
               std::vector<uint64_t>* sizes) {
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    if (scales != nullptr) {
      double v;
      if (!absl::SimpleAtod(item, &v) || !(v > 0) || v > 1024) return false;
      scales->push_back(v);
    } else {
      uint64_t v;
      if (!ParseBytes(item, &v)) return false;
      sizes->push_back(v);
    }
  }
  return true;
}

Args Parse(const std::vector<absl::string_view>& argv) {
  Args a;
  if (argv.empty()) {
    a.error = "missing a workload (train, embed, shared or all)";
    return a;
  }
  a.workload = std::string(argv[0]);
  for (size_t i = 1; i < argv.size() && a.error.empty(); ++i) {
    const absl::string_view flag = argv[i];
    if (flag == "--quick") {
      a.quick = true;
      continue;
    }
    if (i + 1 >= argv.size()) {
      a.error = absl::StrCat(flag, " needs a value");
      break;
    }
    const absl::string_view v = argv[++i];
    int64_t n = 0;
    if (flag == "--tier") {
      std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(v, '=');
      const bool named = v.find('=') != absl::string_view::npos;
      const absl::string_view name = named ? kv.first : "";
      const absl::string_view bytes = named ? kv.second : v;
      uint64_t parsed;
      if (!ParseBytes(bytes, &parsed)) {
        a.error = absl::StrCat("--tier ", v, ": not a size (e.g. 64M, host=256M)");
      } else if (name.empty() || name == "host") {
        a.host_tier = std::string(bytes);
        if (name.empty()) a.shm_tier = a.any_tier = std::string(bytes);
      } else if (name == "shm") {
        a.shm_tier = std::string(bytes);
      } else if (name == "gpu") {
        a.gpu_tier = std::string(bytes);
      } else {
        a.error = absl::StrCat("--tier ", v, ": the workloads' fastest tiers are "
                               "host (train, embed), shm (shared) and gpu (gpu)");
      }
    } else if (flag == "--scale") {
      if (!ParseList(v, &a.scales, nullptr)) {
        a.error = absl::StrCat("--scale ", v, ": not a list of multiples in (0, 1024] (e.g. 1,2,4,8)");
      }
    } else if (flag == "--size") {
      if (!ParseList(v, nullptr, &a.sizes)) a.error = absl::StrCat("--size ", v, ": not a list of sizes (e.g. 256M,1G)");
    } else if (flag == "--dir") {
      a.options.dir = std::string(v);
    } else if (flag == "--json") {
      a.json = std::string(v);
    } else if (flag == "--steps") {
      if (!absl::SimpleAtoi(v, &n) || n < 1 || n > 1000) a.error = "--steps must be 1..1000";
      a.options.steps = static_cast<int>(n);
    } else if (flag == "--lookups") {
      if (!absl::SimpleAtoi(v, &n) || n < 256 || n > 1'000'000'000) a.error = "--lookups must be 256..1e9";
      a.options.lookups = static_cast<uint64_t>(n);
    } else if (flag == "--policy") {
      a.options.policy = std::string(v);
    } else if (flag == "--readers") {
      if (!absl::SimpleAtoi(v, &n) || n < 1 || n > 60) a.error = "--readers must be 1..60";
      a.options.readers = static_cast<int>(n);
    } else {
      a.error = absl::StrCat("unknown option ", flag);
    }
  }
  if (a.error.empty() && !a.gpu_tier.empty() && a.workload != "gpu" && a.workload != "all") {
    a.error = absl::StrCat("--tier gpu=", a.gpu_tier, ": only the gpu workload has a "
                           "gpu tier; ", a.workload, "'s fastest tier is ",
                           a.workload == "shared" ? "shm" : "host");
  }
  return a;
}

// The options of one workload: --quick first, then what was given.
strata::bench::WorkloadOptions OptionsFor(const Args& a, const std::string& name) {
  strata::bench::WorkloadOptions o = a.options;
  if (a.quick) {
    o.tier_bytes = uint64_t{16} << 20;
    o.scales = {1, 4};
    o.steps = 1;
    o.max_warm_steps = 2;
    o.lookups = 4096;
    o.readers = 2;
  }
  if (name == "gpu" && !a.quick) {
    // The target is at 3x the budget; the others show the trend.
    o.tier_bytes = uint64_t{1} << 30;
    o.scales = {1, 2, 3, 4, 8};
  }
  const std::string& tier = name == "shared" ? a.shm_tier
                            : name == "gpu"  ? (a.gpu_tier.empty() ? a.any_tier : a.gpu_tier)
                                             : a.host_tier;
  if (!tier.empty()) ParseBytes(tier, &o.tier_bytes);
  if (!a.scales.empty()) o.scales = a.scales;
  o.sizes = a.sizes;
  o.progress = [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
  return o;
}

}  // namespace

int BenchCommand(const std::vector<std::string_view>& args) {
  std::vector<absl::string_view> argv;
  for (std::string_view arg : args) argv.emplace_back(arg.data(), arg.size());
  if (!argv.empty() && (argv[0] == "help" || argv[0] == "--help" || argv[0] == "-h")) {
    std::fputs(kBenchUsage, stdout);
    return kOk;
  }
  const Args a = Parse(argv);
  if (!a.error.empty()) return Usage(a.error);
  // The runs can take minutes: a JSON path that cannot be written is said
  // before them. The probe opens it to append (an older report survives a
  // failed run) and removes what it created (a skipped workload leaves no
  // empty file for the report to trip on).
  std::error_code ec;
  if (!a.json.empty()) {
    const std::filesystem::path path(a.json);
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
    const bool existed = std::filesystem::exists(path, ec);
    if (!std::ofstream(a.json, std::ios::app)) {
      return Usage(absl::StrCat("--json ", a.json, ": cannot write it (",
                                ec ? ec.message() : std::strerror(errno),
                                "); give a file in a writable directory"));
    }
    if (!existed) std::filesystem::remove(path, ec);
  }
  std::vector<std::string> names;
  if (a.workload == "all") {
    names = strata::bench::WorkloadNames();
  } else {
    names = {a.workload};
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) {
    std::fprintf(stderr, "strata bench: cannot find this program (/proc/self/exe): %s\n",
                 ec.message().c_str());
    return kFailed;
  }
  std::vector<strata::bench::Result> all;
  for (const std::string& name : names) {
    absl::StatusOr<std::vector<strata::bench::Result>> r =
        strata::bench::RunWorkload(name, OptionsFor(a, name), self);
    if (absl::IsInvalidArgument(r.status())) return Usage(r.status().message());
    if (name == "gpu" && absl::IsFailedPrecondition(r.status())) {
      std::fprintf(stderr, "strata bench: gpu skipped: %s\n",
                   std::string(r.status().message()).c_str());
      if (names.size() == 1) return kSkipped;
      continue;
    }
    if (!r.ok()) {
      std::fprintf(stderr, "strata bench: %s\n", std::string(r.status().message()).c_str());
      return kFailed;
    }
    all.insert(all.end(), r->begin(), r->end());
  }
  std::fputs(strata::bench::ResultsTable(all).c_str(), stdout);
  if (!a.json.empty()) {
    std::ofstream json(a.json);
    json << strata::bench::ResultsJson(all);
    json.close();
    if (!json) {
      std::fprintf(stderr, "strata bench: cannot write %s\n", a.json.c_str());
      return kFailed;
    }
  }
  return kOk;
}

int BenchReaderCommand(int argc, char** argv) {
  return strata::bench::RunSharedReader(argc, argv);
}
