// The cost of pinning a resident block, beside its floor and the naive design.
//
//   BM_PinUnpinResident   each thread pins its own block
//     /strata    Engine::Pin + release of a resident block (read access)
//     /floor     a bare atomic state word per block: CAS to pin, CAS to unpin
//     /hashmap   std::unordered_map lookup of the block, then the same CASes
//   BM_PinUnpinContended  2 threads pin THE SAME resident block
//     /strata    Engine::Pin + release, both threads on block 0
//     /floor     both threads CAS-pin and CAS-unpin one shared word: what
//                contention on one cache line costs at best
//   BM_PinUnpinInStep     each thread pins its own block inside a replayed
//                         step (Engine::BeginStep, after a recorded one)
//     /strata    Engine::Pin + release while the step gate is up
//     /floor     the same bare CASes as BM_PinUnpinResident/floor
//
// Read each group as strata / floor of the same thread count, measured in
// the same run. items_per_second is the aggregate of all threads
// (UseRealTime).
//
//   build/bench/pin_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <unordered_map>

#include <benchmark/benchmark.h>

#include "strata/strata.h"

namespace {

constexpr int kMaxThreads = 8;
constexpr uint64_t kBlockStride = 8;  // blocks between two threads' blocks

struct Fixture {
  std::unique_ptr<strata::Engine> engine;
  strata::Tensor tensor;
};

[[noreturn]] void Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "pin_bench: %s: %s\n", what,
               std::string(status.message()).c_str());
  std::exit(1);
}

// A host-only engine with one tensor whose blocks 0, kBlockStride, ... (one
// per thread) are resident.
void OpenEngine(Fixture& f) {
  strata::EngineOptions options;
  options.host.capacity_bytes = 16 << 20;
  options.default_block_bytes = 64 << 10;
  options.tiers = {strata::Tier::kHost};
  auto engine = strata::Engine::Open(options);
  if (!engine.ok()) Fail("opening the engine", engine.status());
  f.engine = std::move(*engine);
  auto t = f.engine->CreateTensor(
      "bench", {.dtype = strata::DType::kU8,
                .shape = {static_cast<int64_t>(kMaxThreads * kBlockStride) << 16}});
  if (!t.ok()) Fail("creating the tensor", t.status());
  f.tensor = *t;
  for (int i = 0; i < kMaxThreads; ++i) {  // make every block resident
    auto pin = f.engine->Pin(f.tensor, i * kBlockStride, strata::Tier::kHost,
                             strata::Access::kWrite);
    if (!pin.ok()) Fail("making a block resident", pin.status());
  }
}

Fixture& SharedEngine() {
  static Fixture* fixture = [] {
    auto* f = new Fixture;
    OpenEngine(*f);
    return f;
  }();
  return *fixture;
}

void BM_Strata(benchmark::State& state) {
  Fixture& f = SharedEngine();
  const uint64_t block = state.thread_index() * kBlockStride;
  for (auto _ : state) {
    auto pin = f.engine->Pin(f.tensor, block, strata::Tier::kHost,
                             strata::Access::kRead);
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  state.SetItemsProcessed(state.iterations());
}

// One word per cache line, as in the engine.
struct alignas(64) Word {
  std::atomic<uint64_t> value{0};
};
Word floor_words[kMaxThreads * kBlockStride];

inline void CasPin(std::atomic<uint64_t>& word) {
  uint64_t w = word.load(std::memory_order_acquire);
  while (!word.compare_exchange_weak(w, w + 1, std::memory_order_acquire)) {
  }
}
inline void CasUnpin(std::atomic<uint64_t>& word) {
  uint64_t w = word.load(std::memory_order_relaxed);
  while (!word.compare_exchange_weak(w, w - 1, std::memory_order_release)) {
  }
}

void BM_Floor(benchmark::State& state) {
  std::atomic<uint64_t>& word = floor_words[state.thread_index() * kBlockStride].value;
  for (auto _ : state) {
    CasPin(word);
    benchmark::DoNotOptimize(word);
    CasUnpin(word);
  }
  state.SetItemsProcessed(state.iterations());
}

std::unordered_map<uint64_t, std::atomic<uint64_t>*>& HashTable() {
  static auto* table = [] {
    auto* t = new std::unordered_map<uint64_t, std::atomic<uint64_t>*>;
    static Word words[kMaxThreads * kBlockStride];
    for (uint64_t i = 0; i < kMaxThreads * kBlockStride; ++i) {
      (*t)[(uint64_t{7} << 32) | i] = &words[i].value;
    }
    return t;
  }();
  return *table;
}

void BM_Hashmap(benchmark::State& state) {
  auto& table = HashTable();
  const uint64_t key = (uint64_t{7} << 32) | (state.thread_index() * kBlockStride);
  for (auto _ : state) {
    std::atomic<uint64_t>* word = table.find(key)->second;
    CasPin(*word);
    benchmark::DoNotOptimize(word);
    CasUnpin(*word);
  }
  state.SetItemsProcessed(state.iterations());
}

// --- Contention: every thread pins the same block. Read pins share, so the
// engine must let both threads in; what they cannot avoid is bouncing the
// block's state word between their caches, which the floor measures alone.

void BM_StrataContended(benchmark::State& state) {
  Fixture& f = SharedEngine();
  for (auto _ : state) {
    auto pin = f.engine->Pin(f.tensor, /*block=*/0, strata::Tier::kHost,
                             strata::Access::kRead);
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  state.SetItemsProcessed(state.iterations());
}

Word contended_word;

void BM_FloorContended(benchmark::State& state) {
  std::atomic<uint64_t>& word = contended_word.value;
  for (auto _ : state) {
    CasPin(word);
    benchmark::DoNotOptimize(word);
    CasUnpin(word);
  }
  state.SetItemsProcessed(state.iterations());
}

// --- Pins during a replayed step. Each run (Google Benchmark makes several,
// each with fresh threads) gets an engine of its own: a step plan belongs to
// the thread that recorded it, and an engine records only its first step, so
// the threads that measure must be the ones that recorded, in this engine.
//
// StepSetup opens the engine and begins the recording step; each bench
// thread then pins its block kRecordedPins times (each pin is one entry of
// its plan); once all have, thread 0 ends that step and begins the next,
// which replays, and the measured loop runs inside it. StepTeardown ends it.
//
// The recorded step is short on purpose: a plan holds one entry per pin of
// the recording step, so recording the measured loop itself would grow it
// by millions of entries. A few hundred keep it small. In the replayed step
// the first pins walk the plan and hand it to the mover in chunks (of half
// its lookahead; the blocks are resident, so the mover finds nothing to
// load); later pins have run past the plan's end and pay only the step
// path: the gate, the access record and the thread's plan position. The
// measured number is that per-pin cost, the hand-offs amortized over the run.
constexpr int kRecordedPins = 256;

struct StepFixture : Fixture {
  explicit StepFixture(int threads) : recorded(threads) {}
  std::barrier<> recorded;  // every thread has recorded its pins
};
StepFixture* step_fixture = nullptr;

void StepSetup(const benchmark::State& state) {
  step_fixture = new StepFixture(state.threads());
  OpenEngine(*step_fixture);
  if (absl::Status s = step_fixture->engine->BeginStep(); !s.ok()) {
    Fail("BeginStep (recording)", s);
  }
}

void StepTeardown(const benchmark::State&) {
  if (absl::Status s = step_fixture->engine->EndStep(); !s.ok()) {
    Fail("EndStep (replayed)", s);
  }
  delete step_fixture;
  step_fixture = nullptr;
}

void BM_StrataInStep(benchmark::State& state) {
  StepFixture& f = *step_fixture;
  const uint64_t block = state.thread_index() * kBlockStride;
  for (int i = 0; i < kRecordedPins; ++i) {
    auto pin = f.engine->Pin(f.tensor, block, strata::Tier::kHost,
                             strata::Access::kRead);
    if (!pin.ok()) Fail("pin in the recording step", pin.status());
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  f.recorded.arrive_and_wait();
  if (state.thread_index() == 0) {
    if (absl::Status s = f.engine->EndStep(); !s.ok()) Fail("EndStep (recording)", s);
    if (absl::Status s = f.engine->BeginStep(); !s.ok()) Fail("BeginStep (replay)", s);
  }
  // The loop starts when every thread reached it (thread 0 after BeginStep).
  for (auto _ : state) {
    auto pin = f.engine->Pin(f.tensor, block, strata::Tier::kHost,
                             strata::Access::kRead);
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_Strata)->Name("BM_PinUnpinResident/strata")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_Floor)->Name("BM_PinUnpinResident/floor")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_Hashmap)->Name("BM_PinUnpinResident/hashmap")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_StrataContended)->Name("BM_PinUnpinContended/strata")->Threads(2)->UseRealTime();
BENCHMARK(BM_FloorContended)->Name("BM_PinUnpinContended/floor")->Threads(2)->UseRealTime();
BENCHMARK(BM_StrataInStep)->Name("BM_PinUnpinInStep/strata")->Threads(1)->Threads(2)
    ->UseRealTime()->Setup(StepSetup)->Teardown(StepTeardown);
BENCHMARK(BM_Floor)->Name("BM_PinUnpinInStep/floor")->Threads(1)->Threads(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
