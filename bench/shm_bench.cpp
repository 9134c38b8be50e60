// The shm tier (node segments) beside its raw baselines.
//
//   BM_ShmPinResident/strata   a second process pins and unpins a resident
//                              shared block: a forked child creates a fresh
//                              segment, a shared tensor, writes block 0 and
//                              exits; this process attaches and loops
//                              Pin(t, 0, kShm, kRead) + release.
//   BM_PinUnpinResident/strata the baseline: a private tensor of a host-only
//                              engine, Pin(t, 0, kHost, kRead) + release of a
//                              resident block.
//       Targets: shm <= 1 us per pin+unpin, and <= 3x the host baseline.
//   BM_ShmWrite/strata         fills a 64 MiB shared tensor (2 MiB blocks)
//                              through one write pin per block (kOverwrite,
//                              memcpy into pin.bytes(), Release seals)
//   BM_ShmWrite/memcpy         the same memcpy into write pins of the same
//                              segment taken once before the timed loop and
//                              held: the same mapping, no pin per block.
//       Target: strata >= 0.85x memcpy (bytes_per_second).
//   BM_ShmAllocFree/strata     64 frames of 4 KiB..2 MiB (powers of two, in
//                              turn) allocated, then freed in the same order,
//                              with Segment::AllocateFrame / FreeFrame
//                              (a buddy allocator under the segment's lock)
//   BM_ShmAllocFree/boost      the same sequence with Boost.Interprocess's
//                              managed_shared_memory (best-fit red-black tree
//                              under its process-shared mutex), same capacity.
//       Target: strata faster. items_per_second counts allocate+free pairs.
//
// Every benchmark run creates its segments under unique names (pid and a
// counter) and removes them when it ends, failed runs included.
//
//   build-release/bench/shm_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/interprocess/creation_tags.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "strata/strata.h"
#include "tiers/shm/segment.h"

namespace {

namespace shm = strata::tiers::shm;
namespace bip = boost::interprocess;

// A name no other run (or benchmark of this run) uses.
std::string UniqueName(const std::string& what) {
  static std::atomic<int> counter{0};
  return absl::StrCat("shm_bench-", what, "-", getpid(), "-", counter++);
}

// Unlinks a node segment when the benchmark leaves, however it leaves.
class ScopedSegmentName {
 public:
  explicit ScopedSegmentName(std::string name) : name_(std::move(name)) {}
  ~ScopedSegmentName() {
    const absl::Status s = strata::RemoveShmSegment(name_);
    if (!s.ok() && !absl::IsNotFound(s)) {
      std::fprintf(stderr, "shm_bench: removing segment %s: %s\n", name_.c_str(),
                   std::string(s.message()).c_str());
    }
  }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

void Skip(benchmark::State& state, const std::string& what, const absl::Status& status) {
  state.SkipWithError(absl::StrCat(what, ": ", status.message()).c_str());
}

strata::EngineOptions ShmEngineOptions(const std::string& segment,
                                       strata::ShmTierOptions::Open open,
                                       uint64_t capacity_bytes, uint64_t block_bytes) {
  strata::EngineOptions options;
  options.tiers = {strata::Tier::kHost, strata::Tier::kShm};
  options.host.capacity_bytes = 4 * block_bytes;
  options.host.huge_pages = false;
  options.default_block_bytes = block_bytes;
  options.shm.name = segment;
  options.shm.open = open;
  options.shm.capacity_bytes = capacity_bytes;
  options.shm.max_processes = 4;
  options.shm.max_tensors = 4;
  return options;
}

// --- Pin + unpin of a resident block -------------------------------------

constexpr uint64_t kPinBlockBytes = 64 << 10;

// The child's part: create the segment and the tensor, write block 0, exit.
// Its exit status says how it went (the message is on its stderr).
int CreateAndWriteInChild(const std::string& segment) {
  auto engine = strata::Engine::Open(ShmEngineOptions(
      segment, strata::ShmTierOptions::Open::kCreate, 4 << 20, kPinBlockBytes));
  if (!engine.ok()) {
    std::fprintf(stderr, "shm_bench child: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  auto t = (*engine)->CreateSharedTensor(
      "t",
      {.dtype = strata::DType::kU8, .shape = {static_cast<int64_t>(kPinBlockBytes)}});
  if (!t.ok()) {
    std::fprintf(stderr, "shm_bench child: %s\n", t.status().ToString().c_str());
    return 1;
  }
  auto pin = (*engine)->Pin(*t, 0, strata::Tier::kShm, strata::Access::kOverwrite);
  if (!pin.ok()) {
    std::fprintf(stderr, "shm_bench child: %s\n", pin.status().ToString().c_str());
    return 1;
  }
  std::memset(pin->bytes().data(), 0x5A, pin->size());
  if (absl::Status s = pin->Release(); !s.ok()) {
    std::fprintf(stderr, "shm_bench child: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

void BM_ShmPinResident(benchmark::State& state) {
  ScopedSegmentName segment(UniqueName("pin"));
  // No engine of this process is open here (each benchmark closes its own),
  // so the child forks from a process without background threads.
  const pid_t child = fork();
  if (child < 0) {
    return Skip(state, "fork", absl::ErrnoToStatus(errno, "fork"));
  }
  if (child == 0) _exit(CreateAndWriteInChild(segment.name()));
  int status = 0;
  if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Skip(state, "the child that creates the segment",
                absl::InternalError("failed (its stderr says why)"));
  }

  auto engine = strata::Engine::Open(ShmEngineOptions(
      segment.name(), strata::ShmTierOptions::Open::kAttach, 4 << 20, kPinBlockBytes));
  if (!engine.ok()) return Skip(state, "attaching", engine.status());
  auto t = (*engine)->OpenSharedTensor("t");
  if (!t.ok()) return Skip(state, "OpenSharedTensor", t.status());
  for (auto _ : state) {
    auto pin = (*engine)->Pin(*t, 0, strata::Tier::kShm, strata::Access::kRead);
    if (!pin.ok()) return Skip(state, "Pin", pin.status());
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_HostPinResident(benchmark::State& state) {
  strata::EngineOptions options;
  options.tiers = {strata::Tier::kHost};
  options.host.capacity_bytes = 4 * kPinBlockBytes;
  options.host.huge_pages = false;
  options.default_block_bytes = kPinBlockBytes;
  auto engine = strata::Engine::Open(options);
  if (!engine.ok()) return Skip(state, "opening the engine", engine.status());
  auto t = (*engine)->CreateTensor(
      "t",
      {.dtype = strata::DType::kU8, .shape = {static_cast<int64_t>(kPinBlockBytes)}});
  if (!t.ok()) return Skip(state, "CreateTensor", t.status());
  {
    auto pin = (*engine)->Pin(*t, 0, strata::Tier::kHost, strata::Access::kWrite);
    if (!pin.ok()) return Skip(state, "making block 0 resident", pin.status());
    std::memset(pin->bytes().data(), 0x5A, pin->size());
  }
  for (auto _ : state) {
    auto pin = (*engine)->Pin(*t, 0, strata::Tier::kHost, strata::Access::kRead);
    if (!pin.ok()) return Skip(state, "Pin", pin.status());
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  state.SetItemsProcessed(state.iterations());
}

// --- Writing a shared tensor ----------------------------------------------

constexpr uint64_t kWriteBytes = 64 << 20;
constexpr uint64_t kWriteBlockBytes = 2 << 20;
constexpr uint64_t kWriteBlocks = kWriteBytes / kWriteBlockBytes;
// The tensor, one shadow frame per block being written (the memcpy baseline
// holds all of them at once), and the tensor's table.
constexpr uint64_t kWriteCapacity = 2 * kWriteBytes + (16 << 20);

struct WriteFixture {
  std::unique_ptr<strata::Engine> engine;
  strata::Tensor tensor;
  std::vector<std::byte> source;
};

absl::Status OpenWriteFixture(const std::string& segment, WriteFixture& f) {
  auto engine = strata::Engine::Open(ShmEngineOptions(
      segment, strata::ShmTierOptions::Open::kCreate, kWriteCapacity, kWriteBlockBytes));
  if (!engine.ok()) return engine.status();
  f.engine = *std::move(engine);
  auto t = f.engine->CreateSharedTensor(
      "t", {.dtype = strata::DType::kU8, .shape = {static_cast<int64_t>(kWriteBytes)}});
  if (!t.ok()) return t.status();
  f.tensor = *t;
  f.source.resize(kWriteBytes);
  for (uint64_t i = 0; i < kWriteBytes; i += 8) {
    const uint64_t v = i * 0x9E3779B97F4A7C15ull;
    std::memcpy(&f.source[i], &v, 8);
  }
  return absl::OkStatus();
}

// One write pin per block: pin, memcpy, seal.
absl::Status WriteAllThroughPins(WriteFixture& f) {
  for (uint64_t b = 0; b < kWriteBlocks; ++b) {
    auto pin = f.engine->Pin(f.tensor, b, strata::Tier::kShm, strata::Access::kOverwrite);
    if (!pin.ok()) return pin.status();
    std::memcpy(pin->bytes().data(), &f.source[b * kWriteBlockBytes], kWriteBlockBytes);
    if (absl::Status s = pin->Release(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void BM_ShmWriteStrata(benchmark::State& state) {
  ScopedSegmentName segment(UniqueName("write"));
  WriteFixture f;
  if (absl::Status s = OpenWriteFixture(segment.name(), f); !s.ok()) {
    return Skip(state, "opening the segment", s);
  }
  // Untimed first pass: the frames' tmpfs pages are faulted in once, as a
  // long-running writer's are.
  if (absl::Status s = WriteAllThroughPins(f); !s.ok()) return Skip(state, "warm-up", s);
  for (auto _ : state) {
    if (absl::Status s = WriteAllThroughPins(f); !s.ok()) return Skip(state, "write", s);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kWriteBytes));
}

void BM_ShmWriteMemcpy(benchmark::State& state) {
  ScopedSegmentName segment(UniqueName("memcpy"));
  WriteFixture f;
  if (absl::Status s = OpenWriteFixture(segment.name(), f); !s.ok()) {
    return Skip(state, "opening the segment", s);
  }
  // The same frames a writer gets, pinned once and held.
  std::vector<strata::Pin> pins;
  for (uint64_t b = 0; b < kWriteBlocks; ++b) {
    auto pin = f.engine->Pin(f.tensor, b, strata::Tier::kShm, strata::Access::kOverwrite);
    if (!pin.ok()) return Skip(state, "Pin", pin.status());
    pins.push_back(*std::move(pin));
  }
  const auto copy_all = [&] {
    for (uint64_t b = 0; b < kWriteBlocks; ++b) {
      std::memcpy(pins[b].bytes().data(), &f.source[b * kWriteBlockBytes],
                  kWriteBlockBytes);
    }
  };
  copy_all();  // untimed: fault the pages in, as the strata variant does
  for (auto _ : state) {
    copy_all();
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kWriteBytes));
  for (strata::Pin& pin : pins) {
    if (absl::Status s = pin.Release(); !s.ok()) return Skip(state, "Release", s);
  }
}

// --- Frame allocation -------------------------------------------------------

constexpr uint64_t kAllocCapacity = 256 << 20;
constexpr int kAllocsHeld = 64;

// 4 KiB, 8 KiB, ..., 2 MiB, 4 KiB, ...: 64 sizes, about 26 MiB held at once.
std::array<uint64_t, kAllocsHeld> AllocSizes() {
  std::array<uint64_t, kAllocsHeld> sizes{};
  for (int i = 0; i < kAllocsHeld; ++i) sizes[i] = uint64_t{4096} << (i % 10);
  return sizes;
}

void BM_ShmAllocFreeStrata(benchmark::State& state) {
  ScopedSegmentName name(UniqueName("alloc"));
  auto segment = shm::Segment::Open({.name = name.name(),
                                     .mode = shm::OpenMode::kCreate,
                                     .capacity_bytes = kAllocCapacity});
  if (!segment.ok()) return Skip(state, "Segment::Open", segment.status());
  const std::array<uint64_t, kAllocsHeld> sizes = AllocSizes();
  std::array<std::atomic<uint64_t>, kAllocsHeld> records{};
  for (auto _ : state) {
    for (int i = 0; i < kAllocsHeld; ++i) {
      auto offset = (*segment)->AllocateFrame(sizes[i], records[i]);
      if (!offset.ok()) return Skip(state, "AllocateFrame", offset.status());
    }
    for (int i = 0; i < kAllocsHeld; ++i) {
      (*segment)->FreeFrame(records[i].load(std::memory_order_relaxed));
    }
  }
  state.SetItemsProcessed(state.iterations() * kAllocsHeld);
}

// Boost's objects are in /dev/shm/<name>; removed like ours.
class ScopedBoostName {
 public:
  explicit ScopedBoostName(std::string name) : name_(std::move(name)) {}
  ~ScopedBoostName() { bip::shared_memory_object::remove(name_.c_str()); }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

void BM_ShmAllocFreeBoost(benchmark::State& state) {
  ScopedBoostName name(UniqueName("boost"));
  // Boost.Interprocess reports by exceptions; none may leave a benchmark.
  try {
    bip::managed_shared_memory segment(bip::create_only, name.name().c_str(),
                                       kAllocCapacity);
    const std::array<uint64_t, kAllocsHeld> sizes = AllocSizes();
    std::array<void*, kAllocsHeld> frames{};
    for (auto _ : state) {
      for (int i = 0; i < kAllocsHeld; ++i) frames[i] = segment.allocate(sizes[i]);
      for (int i = 0; i < kAllocsHeld; ++i) segment.deallocate(frames[i]);
    }
    state.SetItemsProcessed(state.iterations() * kAllocsHeld);
  } catch (const std::exception& e) {
    state.SkipWithError(absl::StrCat("boost: ", e.what()).c_str());
  }
}

// Each workload next to its baseline.
BENCHMARK(BM_ShmPinResident)->Name("BM_ShmPinResident/strata");
BENCHMARK(BM_HostPinResident)->Name("BM_PinUnpinResident/strata");
BENCHMARK(BM_ShmWriteStrata)->Name("BM_ShmWrite/strata")->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ShmWriteMemcpy)->Name("BM_ShmWrite/memcpy")->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ShmAllocFreeStrata)
    ->Name("BM_ShmAllocFree/strata")
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ShmAllocFreeBoost)
    ->Name("BM_ShmAllocFree/boost")
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
