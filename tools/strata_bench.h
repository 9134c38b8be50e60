// `strata bench`: runs the tiering workloads of bench/workloads from the
// command line (see kBenchUsage in strata_bench.cc).
#ifndef STRATA_TOOLS_STRATA_BENCH_H_
#define STRATA_TOOLS_STRATA_BENCH_H_

#include <string_view>
#include <vector>

// `args` follow "bench". Returns the exit status: 0, 1 (a workload failed),
// 2 (a usage error).
int BenchCommand(const std::vector<std::string_view>& args);
// The reader processes `strata bench shared` starts (`strata bench-reader`).
int BenchReaderCommand(int argc, char** argv);
// The usage text of `strata bench`.
extern const char kBenchUsage[];

#endif  // STRATA_TOOLS_STRATA_BENCH_H_
