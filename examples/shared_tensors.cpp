// Shared tensors across processes: one producer, N consumers, one node
// segment (the shm tier).
//
// The producer creates a segment named after its pid, publishes a frozen
// embedding table (512 rows of 4 KiB, 2 MiB) and then a stream of batches
// (a shared tensor "batch", one 64 KiB block per batch, each written once
// through a write pin of Access::kOverwrite, which other processes see only
// once it is sealed). It starts the consumers as copies of this program
// (fork + exec, --role=consumer). Each consumer attaches to the segment,
// opens the tensors by name, pins their blocks zero-copy (Tier::kShm,
// Access::kRead), prints a checksum of the table and of each batch, and
// stores its checksums in its own row of a shared tensor "results". The
// producer waits for the consumers, compares every checksum with those of
// the bytes it wrote, removes the segment and exits 1 on any mismatch.
//
//   shared_tensors                          # 3 consumers, 8 batches
//   shared_tensors --consumers=2 --batches=4
//
// The processes synchronize through a shared tensor too, never through
// files: "control" holds two counters (table sealed: 0/1; batches sealed),
// which the producer bumps with a write pin after sealing what it counts,
// and which consumers poll with a read pin and a short sleep.
//
// Checksums are 64-bit FNV-1a over the bytes, computed here: an example
// sees only the public header (api/strata/strata.h), and FNV-1a is a few
// lines and plenty to catch a torn or stale block.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "strata/strata.h"

ABSL_FLAG(int, consumers, 3, "Consumer processes (1..64)");
ABSL_FLAG(int, batches, 8, "Batches the producer streams (1..1024)");
ABSL_FLAG(int, batch_interval_ms, 5,
          "Producer: pause between two batches, so that consumers read the "
          "stream as it comes");
ABSL_FLAG(std::string, role, "producer",
          "producer (the default: starts everything) or consumer (started by "
          "the producer)");
ABSL_FLAG(std::string, segment, "", "Consumers: the segment to attach to");
ABSL_FLAG(int, index, 0, "Consumers: this consumer's row of \"results\"");

namespace {

constexpr int64_t kRows = 512;
constexpr int64_t kRowFloats = 1024;  // 4 KiB rows
constexpr uint64_t kTableBlockBytes = uint64_t{256} << 10;
constexpr int64_t kBatchFloats = 16384;  // 64 KiB batches
constexpr uint64_t kControlWords = 512;  // one 4 KiB block
constexpr uint64_t kTableSealed = 0;     // control words
constexpr uint64_t kBatchesSealed = 1;
// How long a consumer waits for the producer's next step before giving up
// (a producer that died leaves its consumers waiting otherwise).
constexpr absl::Duration kPollTimeout = absl::Seconds(60);
constexpr absl::Duration kPollInterval = absl::Milliseconds(1);

// What one process reports: "<role>: <what> (<status message>)".
std::string g_who = "producer";

int Fail(std::string_view what, const absl::Status& status) {
  std::fprintf(stderr, "%s: %.*s: %s\n", g_who.c_str(), static_cast<int>(what.size()),
               what.data(), std::string(status.message()).c_str());
  return 1;
}

uint64_t Fnv1a(std::span<const std::byte> bytes,
               uint64_t hash = 14695981039346656037ull) {
  for (std::byte b : bytes) {
    hash ^= static_cast<uint8_t>(b);
    hash *= 1099511628211ull;
  }
  return hash;
}

// Deterministic contents: float i of stream `seed`.
float Value(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 1;  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) / static_cast<float>(1 << 24) - 0.5f;
}

// Words of one consumer's row of "results": the table's checksum, then one
// per batch, padded to whole 4 KiB blocks (one block per consumer, so that
// consumers never wait for each other's write pins).
uint64_t ResultWords(int batches) {
  return (1 + static_cast<uint64_t>(batches) + 511) / 512 * 512;
}

struct Tensors {
  strata::Tensor table, batch, control, results;
};

absl::StatusOr<std::unique_ptr<strata::Engine>> OpenEngine(
    const std::string& segment, strata::ShmTierOptions::Open mode, int consumers) {
  strata::EngineOptions options;
  // Host only besides the segment: shared tensors live in the segment, and
  // nothing here is private, so the host tier only has to be valid.
  options.tiers = {strata::Tier::kHost, strata::Tier::kShm};
  options.host.capacity_bytes = uint64_t{4} << 20;
  options.host.huge_pages = false;
  options.default_block_bytes = uint64_t{1} << 20;
  options.shm.name = segment;
  options.shm.open = mode;
  options.shm.capacity_bytes = uint64_t{32} << 20;
  // The consumers, the producer, and room for `strata shm stat` to look.
  options.shm.max_processes = static_cast<uint32_t>(consumers) + 2;
  options.shm.max_tensors = 16;
  return strata::Engine::Open(std::move(options));
}

// Reads the control word `word` (zero-copy read pin) until it reaches
// `want`.
absl::Status WaitForControl(strata::Engine& engine, const strata::Tensor& control,
                            uint64_t word, uint64_t want) {
  const absl::Time deadline = absl::Now() + kPollTimeout;
  for (;;) {
    {
      absl::StatusOr<strata::Pin> pin =
          engine.Pin(control, 0, strata::Tier::kShm, strata::Access::kRead);
      if (!pin.ok()) return pin.status();
      if (pin->as<uint64_t>()[word] >= want) return absl::OkStatus();
    }  // unpinned before sleeping, so the producer's write pin is not held up
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "control word ", word, " did not reach ", want, " within ",
          absl::FormatDuration(kPollTimeout), "; is the producer still running?"));
    }
    absl::SleepFor(kPollInterval);
  }
}

// FNV-1a over every block of `tensor`, in order, through read pins.
absl::StatusOr<uint64_t> ChecksumBlocks(strata::Engine& engine,
                                        const strata::Tensor& tensor, uint64_t begin,
                                        uint64_t end) {
  uint64_t hash = Fnv1a({});
  for (uint64_t b = begin; b < end; ++b) {
    absl::StatusOr<strata::Pin> pin =
        engine.Pin(tensor, b, strata::Tier::kShm, strata::Access::kRead);
    if (!pin.ok()) return pin.status();
    hash = Fnv1a(pin->bytes(), hash);
  }
  return hash;
}

// Writes `bytes` over block `block` (exclusive across processes; readers
// see the bytes only once Release() sealed them).
absl::Status WriteBlock(strata::Engine& engine, const strata::Tensor& tensor,
                        uint64_t block, std::span<const std::byte> bytes) {
  absl::StatusOr<strata::Pin> pin =
      engine.Pin(tensor, block, strata::Tier::kShm, strata::Access::kOverwrite);
  if (!pin.ok()) return pin.status();
  if (pin->size() != bytes.size()) {
    return absl::InternalError(absl::StrCat("block ", block, " of ", tensor.name(),
                                            " holds ", pin->size(), " bytes, not ",
                                            bytes.size()));
  }
  std::memcpy(pin->bytes().data(), bytes.data(), bytes.size());
  return pin->Release();
}

int RunConsumer() {
  const int index = absl::GetFlag(FLAGS_index);
  const int batches = absl::GetFlag(FLAGS_batches);
  g_who = absl::StrCat("consumer ", index);
  absl::StatusOr<std::unique_ptr<strata::Engine>> engine =
      OpenEngine(absl::GetFlag(FLAGS_segment), strata::ShmTierOptions::Open::kAttach,
                 absl::GetFlag(FLAGS_consumers));
  if (!engine.ok()) return Fail("attaching to the segment", engine.status());
  strata::Engine& e = **engine;
  Tensors t;
  for (auto [name, tensor] :
       {std::pair{"table", &t.table}, std::pair{"batch", &t.batch},
        std::pair{"control", &t.control}, std::pair{"results", &t.results}}) {
    absl::StatusOr<strata::Tensor> opened = e.OpenSharedTensor(name);
    if (!opened.ok()) return Fail(absl::StrCat("opening ", name), opened.status());
    *tensor = *opened;
  }

  std::vector<uint64_t> row(ResultWords(batches), 0);
  if (absl::Status s = WaitForControl(e, t.control, kTableSealed, 1); !s.ok()) {
    return Fail("waiting for the table", s);
  }
  absl::StatusOr<uint64_t> sum = ChecksumBlocks(e, t.table, 0, t.table.num_blocks());
  if (!sum.ok()) return Fail("reading the table", sum.status());
  row[0] = *sum;
  std::printf("%s: table    fnv1a %016llx\n", g_who.c_str(),
              static_cast<unsigned long long>(*sum));
  for (int i = 0; i < batches; ++i) {
    if (absl::Status s = WaitForControl(e, t.control, kBatchesSealed, i + 1); !s.ok()) {
      return Fail(absl::StrCat("waiting for batch ", i), s);
    }
    sum = ChecksumBlocks(e, t.batch, i, i + 1);
    if (!sum.ok()) return Fail(absl::StrCat("reading batch ", i), sum.status());
    row[1 + i] = *sum;
    std::printf("%s: batch %-2d fnv1a %016llx\n", g_who.c_str(), i,
                static_cast<unsigned long long>(*sum));
  }
  if (absl::Status s = WriteBlock(e, t.results, index, std::as_bytes(std::span(row)));
      !s.ok()) {
    return Fail("storing the checksums", s);
  }
  return 0;
}

// The consumers the producer started; kills and reaps the ones still
// running when it gives up early, so that none outlives it.
class Consumers {
 public:
  ~Consumers() {
    for (pid_t pid : pids_) {
      if (pid <= 0) continue;
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
  }
  // fork + exec of this very program with --role=consumer.
  absl::Status Start(const std::string& segment, int count, int batches) {
    std::fflush(stdout);  // nothing buffered is printed twice
    for (int i = 0; i < count; ++i) {
      std::vector<std::string> args = {"shared_tensors",
                                       "--role=consumer",
                                       absl::StrCat("--segment=", segment),
                                       absl::StrCat("--index=", i),
                                       absl::StrCat("--consumers=", count),
                                       absl::StrCat("--batches=", batches)};
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      const pid_t parent = getpid();
      const pid_t pid = fork();
      if (pid < 0) return absl::ErrnoToStatus(errno, "fork of a consumer");
      if (pid == 0) {
        // Only async-signal-safe calls between fork and exec: the parent
        // has threads (the segment's watchdog). A producer killed outright
        // takes its consumers along instead of leaving them polling.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);  // it died before prctl
        execv("/proc/self/exe", argv.data());
        _exit(127);
      }
      pids_.push_back(pid);
    }
    return absl::OkStatus();
  }
  // Waits for every consumer; whether each exited 0.
  std::vector<bool> WaitAll() {
    std::vector<bool> ok(pids_.size(), false);
    for (size_t i = 0; i < pids_.size(); ++i) {
      int status = 0;
      if (waitpid(pids_[i], &status, 0) < 0) status = -1;
      pids_[i] = 0;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        ok[i] = true;
      } else if (WIFSIGNALED(status)) {
        std::fprintf(stderr, "producer: consumer %zu died of signal %d\n", i,
                     WTERMSIG(status));
      } else {
        std::fprintf(stderr, "producer: consumer %zu exited with %d\n", i,
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
      }
    }
    return ok;
  }

 private:
  std::vector<pid_t> pids_;
};

// Removes the segment however the producer leaves (the consumers' engines
// keep their mapping until they exit).
class SegmentRemover {
 public:
  explicit SegmentRemover(std::string name) : name_(std::move(name)) {}
  ~SegmentRemover() {
    if (absl::Status s = strata::RemoveShmSegment(name_); !s.ok()) {
      Fail(absl::StrCat("removing segment ", name_), s);
    }
  }

 private:
  std::string name_;
};

int RunProducer() {
  const int consumers = absl::GetFlag(FLAGS_consumers);
  const int batches = absl::GetFlag(FLAGS_batches);
  if (consumers < 1 || consumers > 64 || batches < 1 || batches > 1024) {
    std::fprintf(stderr, "producer: --consumers must be 1..64 and --batches 1..1024\n");
    return 2;
  }
  const std::string segment = absl::StrCat("shared-tensors-", getpid());
  absl::StatusOr<std::unique_ptr<strata::Engine>> engine =
      OpenEngine(segment, strata::ShmTierOptions::Open::kCreate, consumers);
  if (!engine.ok()) return Fail("creating the segment", engine.status());
  // Unlinked on every way out from here on, while this engine (declared
  // before, so destroyed after) is still attached: the mapping outlives the
  // name.
  SegmentRemover remover(segment);
  strata::Engine& e = **engine;

  Tensors t;
  const struct {
    const char* name;
    strata::TensorSpec spec;
    strata::Tensor* into;
  } specs[] = {
      {"table", {strata::DType::kF32, {kRows, kRowFloats}, kTableBlockBytes}, &t.table},
      {"batch",
       {strata::DType::kF32, {batches, kBatchFloats}, kBatchFloats * sizeof(float)},
       &t.batch},
      {"control", {strata::DType::kI64, {kControlWords}, kControlWords * 8}, &t.control},
      {"results",
       {strata::DType::kI64,
        {consumers, static_cast<int64_t>(ResultWords(batches))},
        ResultWords(batches) * 8},
       &t.results},
  };
  for (const auto& s : specs) {
    absl::StatusOr<strata::Tensor> created = e.CreateSharedTensor(s.name, s.spec);
    if (!created.ok()) return Fail(absl::StrCat("creating ", s.name), created.status());
    *s.into = *created;
  }
  std::printf("producer: segment %s, %d consumers, %d batches\n", segment.c_str(),
              consumers, batches);

  // Consumers start before anything is published: they wait on "control".
  Consumers children;
  if (absl::Status s = children.Start(segment, consumers, batches); !s.ok()) {
    return Fail("starting the consumers", s);
  }

  std::array<uint64_t, kControlWords> control{};
  const auto publish = [&](uint64_t word, uint64_t value) {
    control[word] = value;
    return WriteBlock(e, t.control, 0, std::as_bytes(std::span(control)));
  };

  // The table: generated here, checksummed from the producer's own copy
  // (not from the segment), then written block by block.
  std::vector<uint64_t> expected(1 + batches);
  {
    std::vector<float> table(kRows * kRowFloats);
    for (size_t i = 0; i < table.size(); ++i) table[i] = Value(0, i);
    const std::span<const std::byte> bytes = std::as_bytes(std::span(table));
    expected[0] = Fnv1a(bytes);
    for (uint64_t b = 0; b < t.table.num_blocks(); ++b) {
      const uint64_t offset = b * t.table.block_bytes();
      if (absl::Status s =
              WriteBlock(e, t.table, b, bytes.subspan(offset, t.table.block_size(b)));
          !s.ok()) {
        return Fail(absl::StrCat("writing table block ", b), s);
      }
    }
    if (absl::Status s = publish(kTableSealed, 1); !s.ok()) {
      return Fail("publishing the table", s);
    }
    std::printf("producer: table    fnv1a %016llx\n",
                static_cast<unsigned long long>(expected[0]));
  }

  std::vector<float> batch(kBatchFloats);
  const absl::Duration interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_batch_interval_ms));
  for (int i = 0; i < batches; ++i) {
    if (i > 0) absl::SleepFor(interval);
    for (int64_t j = 0; j < kBatchFloats; ++j) batch[j] = Value(1 + i, j);
    const std::span<const std::byte> bytes = std::as_bytes(std::span(batch));
    expected[1 + i] = Fnv1a(bytes);
    if (absl::Status s = WriteBlock(e, t.batch, i, bytes); !s.ok()) {
      return Fail(absl::StrCat("writing batch ", i), s);
    }
    if (absl::Status s = publish(kBatchesSealed, i + 1); !s.ok()) {
      return Fail(absl::StrCat("publishing batch ", i), s);
    }
    std::printf("producer: batch %-2d fnv1a %016llx\n", i,
                static_cast<unsigned long long>(expected[1 + i]));
  }

  const std::vector<bool> exited_ok = children.WaitAll();
  int failed = 0;
  for (int c = 0; c < consumers; ++c) {
    if (!exited_ok[c]) {  // said why above; its row holds nothing to compare
      ++failed;
      continue;
    }
    absl::StatusOr<strata::Pin> pin =
        e.Pin(t.results, c, strata::Tier::kShm, strata::Access::kRead);
    if (!pin.ok())
      return Fail(absl::StrCat("reading consumer ", c, "'s results"), pin.status());
    const std::span<const uint64_t> got = pin->as<const uint64_t>();
    int mismatches = 0;
    for (size_t k = 0; k < expected.size(); ++k) {
      if (got[k] == expected[k]) continue;
      ++mismatches;
      std::fprintf(stderr,
                   "producer: consumer %d saw %s with fnv1a %016llx, wrote %016llx\n", c,
                   k == 0 ? "the table" : absl::StrCat("batch ", k - 1).c_str(),
                   static_cast<unsigned long long>(got[k]),
                   static_cast<unsigned long long>(expected[k]));
    }
    if (mismatches != 0) ++failed;
  }
  if (failed != 0) {
    std::fprintf(
        stderr,
        "producer: FAILED: %d of %d consumers failed or did not see what was written\n",
        failed, consumers);
    return 1;
  }
  std::printf("producer: OK: %d consumers saw the table and %d batches as written\n",
              consumers, batches);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "one producer process publishes shared tensors that consumer processes "
      "read zero-copy.\n  shared_tensors [--consumers=3] [--batches=8]");
  absl::ParseCommandLine(argc, argv);
  // Line by line: the processes share one terminal or pipe.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string role = absl::GetFlag(FLAGS_role);
  if (role == "consumer") return RunConsumer();
  if (role == "producer") return RunProducer();
  std::fprintf(stderr, "shared_tensors: --role must be producer or consumer, not '%s'\n",
               role.c_str());
  return 2;
}
