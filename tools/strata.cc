// strata: the operator's command for a node's Strata state. Today it knows
// the node segments of the shm tier (the POSIX shared-memory objects
// /dev/shm/strata-<name> that engines attach to for shared tensors).
//
//   strata shm list          one segment per line: name, capacity, used,
//                            tensors, attached processes
//   strata shm stat NAME     everything InspectShmSegment says of one
//   strata shm rm NAME       unlinks it (attached processes keep their
//                            mapping; no new one can attach)
//   strata bench WORKLOAD    the tiering workloads (train, embed, shared)
//                            beside what a user would do without Strata
//                            (tools/strata_bench.cc; built with the
//                            benchmarks)
//   strata help              this text (also --help, -h)
//
// Exit status: 0 success; 1 an operation failed (the Status message follows
// "strata: " on stderr); 2 a usage error (unknown command, missing or extra
// argument, or no command at all), with the usage on stderr.
//
// Uses only the public API (api/strata/strata.h): a tool is a client like
// any other, so what it shows is what every engine can see (the workloads
// of `strata bench` too).
#include "strata/strata.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#if STRATA_HAVE_WORKLOADS
#include "tools/strata_bench.h"
#endif

namespace {

// Arguments are dispatched by hand rather than through absl flags: the
// command line is a path of subcommands (`shm stat NAME`) with positional
// operands and no options, which absl flags do not model (it parses
// --flags and leaves positionals for the caller to sort out anyway), and
// its --help would describe flags this tool does not have. `bench` takes a
// few options, parsed the same way (tools/strata_bench.cc).
constexpr char kUsage[] =
    "usage: strata <command> [arguments]\n"
    "\n"
    "Node segments of the shm tier (/dev/shm/strata-<name>):\n"
    "  strata shm list        one segment per line: name, capacity, used,\n"
    "                         tensors, attached processes\n"
    "  strata shm stat NAME   tensors, blocks, bytes, pins per attached\n"
    "                         process, what was reclaimed from dead ones,\n"
    "                         layout version and creation time\n"
    "  strata shm rm NAME     remove the segment: attached processes keep\n"
    "                         their mapping, new ones cannot attach\n"
    "  strata help            this text (also --help, -h)\n"
    "\n"
    "Exit status: 0 success, 1 the operation failed, 2 a usage error.\n";

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsageError = 2;

void PrintUsage(FILE* to) {
  std::fputs(kUsage, to);
#if STRATA_HAVE_WORKLOADS
  std::fputs("\n", to);
  std::fputs(kBenchUsage, to);
#endif
}

int Usage(std::string_view why) {
  std::fprintf(stderr, "strata: %.*s\n\n", static_cast<int>(why.size()), why.data());
  PrintUsage(stderr);
  return kUsageError;
}

int Failed(const absl::Status& status) {
  std::fprintf(stderr, "strata: %s\n", std::string(status.message()).c_str());
  return kFailed;
}

// "1.5 GiB": binary units, one decimal below 10.
std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit + 1 < static_cast<int>(std::size(kUnits))) {
    value /= 1024;
    ++unit;
  }
  if (unit == 0) return absl::StrFormat("%d B", bytes);
  return absl::StrFormat(value < 10 ? "%.1f %s" : "%.0f %s", value, kUnits[unit]);
}

// "1.5 GiB (1610612736 B)": the exact count for scripts and bug reports.
std::string ExactBytes(uint64_t bytes) {
  if (bytes < 1024) return HumanBytes(bytes);
  return absl::StrFormat("%s (%d B)", HumanBytes(bytes), bytes);
}

std::string Percent(uint64_t part, uint64_t whole) {
  if (whole == 0) return "-";
  return absl::StrFormat("%.1f%%",
                         100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

int ShmList() {
  absl::StatusOr<std::vector<std::string>> names = strata::ListShmSegments();
  if (!names.ok()) return Failed(names.status());
  int rc = kOk;
  std::vector<strata::ShmSegmentInfo> infos;
  for (const std::string& name : *names) {
    absl::StatusOr<strata::ShmSegmentInfo> info = strata::InspectShmSegment(name);
    if (absl::IsNotFound(info.status())) continue;  // removed since listed
    if (!info.ok()) {
      // One unreadable segment (corrupt, another layout version) must not
      // hide the others; it still makes the command fail.
      std::fprintf(stderr, "strata: %s: %s\n", name.c_str(),
                   std::string(info.status().message()).c_str());
      rc = kFailed;
      continue;
    }
    infos.push_back(*std::move(info));
  }
  size_t width = 4;  // "NAME"
  for (const auto& info : infos) width = std::max(width, info.name.size());
  std::printf("%-*s  %10s  %10s  %7s  %9s\n", static_cast<int>(width), "NAME", "CAPACITY",
              "USED", "TENSORS", "PROCESSES");
  for (const auto& info : infos) {
    std::printf("%-*s  %10s  %10s  %7llu  %9zu\n", static_cast<int>(width),
                info.name.c_str(), HumanBytes(info.capacity_bytes).c_str(),
                HumanBytes(info.used_bytes).c_str(),
                static_cast<unsigned long long>(info.tensors), info.processes.size());
  }
  return rc;
}

int ShmStat(std::string_view name) {
  absl::StatusOr<strata::ShmSegmentInfo> info = strata::InspectShmSegment(name);
  if (!info.ok()) return Failed(info.status());
  const strata::ShmSegmentInfo& s = *info;
  const auto line = [](std::string_view label, const std::string& value) {
    std::printf("%-26s %s\n", std::string(label).append(":").c_str(), value.c_str());
  };
  line("segment", absl::StrFormat("%s (/dev/shm/strata-%s)", s.name, s.name));
  line("layout version", absl::StrCat(s.layout_version));
  const absl::Duration age = absl::Now() - s.created;
  line("created",
       absl::StrFormat(
           "%s (%s ago)",
           absl::FormatTime("%Y-%m-%d %H:%M:%S %z", s.created, absl::LocalTimeZone()),
           absl::FormatDuration(absl::Trunc(age, absl::Seconds(1)))));
  line("tensors", absl::StrFormat("%d of at most %d", s.tensors, s.max_tensors));
  line("blocks", absl::StrFormat("%d, %d resident (%s), %d spilled", s.blocks,
                                 s.resident_blocks, Percent(s.resident_blocks, s.blocks),
                                 s.spilled_blocks));
  line("spill file", s.spill_path.empty()
                         ? std::string("none (a full segment refuses new blocks)")
                         : absl::StrFormat("%s (%d evicted to it, %d read back)",
                                           s.spill_path, s.spills, s.spill_loads));
  line("capacity", ExactBytes(s.capacity_bytes));
  line("used", absl::StrFormat("%s, %s of capacity", ExactBytes(s.used_bytes),
                               Percent(s.used_bytes, s.capacity_bytes)));
  line("pinned", ExactBytes(s.pinned_bytes));
  line("processes", absl::StrFormat("%d attached of at most %d (this command "
                                    "not counted)",
                                    s.processes.size(), s.max_processes));
  if (!s.processes.empty()) {
    std::printf("  %10s  %10s  %10s\n", "PID", "READ PINS", "WRITE PINS");
    for (const strata::ShmProcessInfo& p : s.processes) {
      std::printf("  %10d  %10llu  %10llu\n", p.pid,
                  static_cast<unsigned long long>(p.read_pins),
                  static_cast<unsigned long long>(p.write_pins));
    }
  }
  line("dead processes reclaimed", absl::StrCat(s.dead_reclaimed));
  line("pins reclaimed", absl::StrCat(s.pins_reclaimed));
  line("lock repairs", absl::StrCat(s.lock_repairs));
  return kOk;
}

int ShmRemove(std::string_view name) {
  if (absl::Status status = strata::RemoveShmSegment(name); !status.ok()) {
    return Failed(status);
  }
  return kOk;
}

int Shm(const std::vector<std::string_view>& args) {
  if (args.empty()) return Usage("shm: missing a command (list, stat NAME, rm NAME)");
  const std::string_view command = args[0];
  const size_t operands = args.size() - 1;
  if (command == "list") {
    if (operands != 0) return Usage("shm list takes no arguments");
    return ShmList();
  }
  if (command == "stat" || command == "rm") {
    if (operands == 0)
      return Usage(absl::StrCat("shm ", std::string(command), ": missing NAME"));
    if (operands > 1) {
      return Usage(
          absl::StrCat("shm ", std::string(command), " takes one NAME, got ", operands));
    }
    return command == "stat" ? ShmStat(args[1]) : ShmRemove(args[1]);
  }
  if (command == "help" || command == "--help" || command == "-h") {
    PrintUsage(stdout);
    return kOk;
  }
  return Usage(absl::StrCat("unknown shm command '", std::string(command), "'"));
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  if (args.empty()) return Usage("missing a command");
  const std::string_view command = args[0];
  if (command == "help" || command == "--help" || command == "-h") {
    PrintUsage(stdout);
    return kOk;
  }
  if (command == "shm") return Shm({args.begin() + 1, args.end()});
#if STRATA_HAVE_WORKLOADS
  if (command == "bench") return BenchCommand({args.begin() + 1, args.end()});
  if (command == "bench-reader") return BenchReaderCommand(argc - 2, argv + 2);
#endif
  return Usage(absl::StrCat("unknown command '", std::string(command), "'"));
}
