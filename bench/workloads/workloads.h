// Tiering workloads a user would run, each beside what that user would do
// without Strata, measured in the same run (issue "Tiering benchmarks users
// trust"):
//
//   train   an offloaded training step (ZeRO-Infinity's way: parameters and
//           Adam state several times the host tier, swept every step)
//           against a pread/pwrite swap of the same tensors and against one
//           mmap'd file under the kernel's page cache
//   embed   Zipf 1.0 embedding lookups over rows of 256 B to 4 KiB packed
//           into blocks, against the same table mmap'd
//   shared  frozen weights read by several processes through the node
//           segment, against each process reading its own copy
//   gpu     layer-by-layer streaming of weights larger than the VRAM budget,
//           against managed memory with prefetch and against pageable
//           cudaMemcpy (built with CUDA; kFailedPrecondition without a GPU)
//
// Each runs at several working sets, given as multiples of the capacity of
// its fastest tier (1x, 2x, 4x, 8x by default), and returns one Result per
// baseline and size. `strata bench` (tools/strata.cc) runs one from the
// command line; `meson test --benchmark` runs them all and bench/report.py
// turns their JSON into build/bench/report.{json,md} and plots.
//
// Uses the engine through api/ only, as a user would: what it measures is
// what a user gets. Memory budgets of the page-cache baselines are enforced
// with a memory cgroup (MemoryLimit below); where none can be made, the
// result says so (`limited` false), since the page cache then had all of
// the machine's RAM.
#ifndef STRATA_BENCH_WORKLOADS_WORKLOADS_H_
#define STRATA_BENCH_WORKLOADS_WORKLOADS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata::bench {

// One workload at one size against one baseline.
struct Result {
  std::string name;           // "train", "embed", "shared"
  std::string metric;         // what `strata` and `baseline` measure
  double strata = 0;
  double baseline = 0;
  std::string baseline_name;  // "pread_pwrite_swap", "mmap", ...
  std::string unit;           // "s/step", "lookups/s", ...
  bool higher_is_better = false;
  double ratio = 0;           // strata / baseline
  double scale = 0;           // working set / the fastest tier's capacity
  uint64_t working_set_bytes = 0;
  uint64_t tier_bytes = 0;    // the fastest tier's capacity
  // Workload-specific figures (hit ratios, floors, RAM used, ...).
  std::map<std::string, double> extra;
  std::string note;           // a caveat, when there is one
  std::string policy;         // the engine's eviction policy, where it matters
};

struct WorkloadOptions {
  // Capacity of the workload's fastest tier (host for train and embed, the
  // node segment for shared, the GPU tier's VRAM budget for gpu); the
  // working sets are multiples of it.
  uint64_t tier_bytes = uint64_t{64} << 20;
  std::vector<double> scales = {1, 2, 4, 8};
  // Explicit working sets in bytes; when not empty they replace `scales`.
  std::vector<uint64_t> sizes;
  // Scratch directory for block files and baseline files (created).
  std::string dir = "./strata-bench";
  int steps = 6;              // train: timed steps (after warm-up ones);
                              // gpu: timed passes (after one warm-up)
  int max_warm_steps = 300;   // train: at most this many untimed ones
  uint64_t lookups = 200000;  // embed: timed lookups per size
  int readers = 4;            // shared: reader processes
  // EngineOptions::policy of the engines (train, embed).
  std::string policy = "default";
  // One line per phase (what, how far, rate, time left); null: quiet.
  std::function<void(std::string_view)> progress;
};

absl::StatusOr<std::vector<Result>> RunTrain(const WorkloadOptions& options);
absl::StatusOr<std::vector<Result>> RunEmbed(const WorkloadOptions& options);
absl::StatusOr<std::vector<Result>> RunGpu(const WorkloadOptions& options);
// `self` is the path of a program that runs RunSharedReader when started as
// `self bench-reader ...` (the strata tool), for the reader processes.
absl::StatusOr<std::vector<Result>> RunShared(const WorkloadOptions& options,
                                              const std::string& self);
// The body of one reader process of `shared` (argv after "bench-reader").
int RunSharedReader(int argc, char** argv);

// The names RunWorkload knows, in the order the report lists them.
std::vector<std::string> WorkloadNames();
absl::StatusOr<std::vector<Result>> RunWorkload(absl::string_view name,
                                                const WorkloadOptions& options,
                                                const std::string& self);

// A JSON array of results (the format bench/report.py reads).
std::string ResultsJson(const std::vector<Result>& results);
// A short table for a terminal.
std::string ResultsTable(const std::vector<Result>& results);

}  // namespace strata::bench

#endif  // STRATA_BENCH_WORKLOADS_WORKLOADS_H_
