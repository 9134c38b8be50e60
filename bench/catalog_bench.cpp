// Many and small tensors: the catalog, the engine's memory per tensor and per
// block, pins spread over 100,000 tensors, a mixture-of-experts model of
// about 100,000 parameters on host + NVMe, and churn of the tiers' space.
//
//   BM_CreateTensor/{strata,baseline}   create N one-block tensors; the
//   BM_OpenTensor/{strata,baseline}     baseline is an absl::flat_hash_map of
//   BM_DropTensor/{strata,baseline}     the names to a small record
//                                       (us_per_call: average per call)
//   BM_EngineMemory/...                 heap growth (mallinfo2) per tensor,
//                                       per block (and tier), per resident
//                                       block (what the policy keeps)
//   BM_PinRoundRobin/{strata,single,floor}
//                                       read pin + unpin of N resident
//                                       one-block tensors in turn, beside one
//                                       block pinned over and over (the
//                                       BM_PinUnpinResident workload) and
//                                       bare state words
//   BM_ModelLayout                      ~94,000 parameters of a MoE
//                                       transformer written once, read twice
//                                       with host = 1/4 of the model: space
//                                       used in NVMe and host vs the blocks
//   BM_SmallFit/<percent>               small tensors filling <percent> of
//                                       the host tier: hits of a second pass
//   BM_Churn                            random create/write/drop of mixed
//                                       sizes: is the host's free space
//                                       usable, does the NVMe file follow
//                                       the live bytes
//
//   build/bench/catalog_bench [--scale=F] [--churn_ops=N] [--full]
//                             [--nvme_dir=DIR] [benchmark flags]
// --scale multiplies every count (tensors, layers' experts, churn ops);
// --full runs the churn's full 1,000,000 operations (default 250,000, ~15 s
// here; the full count takes ~60 s on this 2-core machine, I/O bound);
// --nvme_dir is where the NVMe tier's files go (default: a fresh directory
// under $TMPDIR or /tmp, removed at exit).
#include <malloc.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/chain.h"
#include "engine/engine_core.h"
#include "strata/strata.h"
#include "tiers/host/host_tier.h"
#include "tiers/nvme/nvme_tier.h"

namespace {

using strata::Access;
using strata::DType;
using strata::Engine;
using strata::EngineOptions;
using strata::Tensor;
using strata::TensorSpec;
using strata::Tier;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kPage = 4096;

double g_scale = 1.0;
uint64_t g_churn_ops = 250000;
std::string g_nvme_root;  // where engines put their NVMe files
bool g_remove_root = false;

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t Scaled(uint64_t n) {
  return std::max<uint64_t>(2, static_cast<uint64_t>(std::llround(n * g_scale)));
}
double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "catalog_bench: %s: %s\n", what.c_str(),
               std::string(status.message()).c_str());
  std::exit(1);
}
void Check(const absl::Status& status, const std::string& what) {
  if (!status.ok()) Die(what, status);
}
template <typename T>
T Take(absl::StatusOr<T> value, const std::string& what) {
  if (!value.ok()) Die(what, value.status());
  return std::move(*value);
}

// splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed) : x_(seed) {}
  uint64_t Next() {
    uint64_t z = (x_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return Next() % n; }
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t x_;
};

// Bytes the process's allocator hands out (small chunks + mmapped ones).
uint64_t HeapBytes() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

// A fresh directory for one engine's NVMe tier, removed on destruction.
class NvmeDir {
 public:
  NvmeDir() {
    static std::atomic<int> next{0};
    path_ = absl::StrCat(g_nvme_root, "/engine-", next.fetch_add(1));
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ~NvmeDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  // Bytes of disk the block file holds (st_blocks), as `du` counts them.
  uint64_t FileDiskBytes() const {
    struct stat st;
    const std::string file = path_ + "/" + std::string(strata::tiers::kNvmeBlockFile);
    if (::stat(file.c_str(), &st) != 0) {
      Die("stat " + file, absl::ErrnoToStatus(errno, "stat"));
    }
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

 private:
  std::string path_;
};

EngineOptions Options(uint64_t host_bytes, const NvmeDir* nvme,
                      const std::string& policy = "default") {
  EngineOptions o;
  o.host.capacity_bytes = RoundUp(host_bytes, 2 * kMiB);
  o.host.huge_pages = true;
  o.tiers = {Tier::kHost};
  if (nvme != nullptr) {
    o.tiers.push_back(Tier::kNvme);
    o.nvme.path = nvme->path();
    o.nvme.capacity_bytes = uint64_t{64} << 30;
  }
  o.policy = policy;
  o.log = [](std::string_view) {};
  return o;
}

std::unique_ptr<Engine> Open(EngineOptions options) {
  return Take(Engine::Open(std::move(options)), "Engine::Open");
}

// Names as a transformer checkpoint spells them.
const std::vector<std::string>& Names(uint64_t n) {
  static std::vector<std::string> names;
  if (names.size() != n) {
    static const char* kParts[] = {"gate_proj", "up_proj", "down_proj"};
    names.clear();
    names.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
      names.push_back(absl::StrCat("model.layers.", i / 768, ".mlp.experts.",
                                   (i / 3) % 256, ".", kParts[i % 3], ".weight"));
    }
  }
  return names;
}

// One block of 4 KiB.
TensorSpec OneBlock() { return {.dtype = DType::kBF16, .shape = {2048}}; }

// Counters every workload of a family shares.
void UsPerCall(benchmark::State& state, double seconds, uint64_t calls) {
  state.counters["us_per_call"] = seconds * 1e6 / static_cast<double>(calls);
  state.counters["tensors"] = static_cast<double>(calls / state.iterations());
}

// ---------------------------------------------------------------------------
// The catalog: create, open, drop.

// What a catalog minimally keeps per name: the baseline's record.
struct Record {
  std::string name;
  std::vector<int64_t> shape;
  std::unique_ptr<uint64_t[]> words;
};
using NameMap = absl::flat_hash_map<std::string, std::shared_ptr<Record>>;

void InsertAll(NameMap& map, const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    auto r = std::make_shared<Record>();
    r->name = name;
    r->shape = {2048};
    r->words.reset(new uint64_t[2]());
    map.emplace(name, std::move(r));
  }
}

void BM_CreateStrata(benchmark::State& state) {
  const auto& names = Names(Scaled(100000));
  double seconds = 0;
  for (auto _ : state) {
    auto engine = Open(Options(64 * kMiB, nullptr));
    const auto t0 = Clock::now();
    for (const std::string& name : names) {
      benchmark::DoNotOptimize(Take(engine->CreateTensor(name, OneBlock()), name));
    }
    const double s = Seconds(Clock::now() - t0);
    state.SetIterationTime(s);
    seconds += s;
  }
  UsPerCall(state, seconds, names.size() * state.iterations());
}

void BM_CreateBaseline(benchmark::State& state) {
  const auto& names = Names(Scaled(100000));
  double seconds = 0;
  for (auto _ : state) {
    NameMap map;
    const auto t0 = Clock::now();
    InsertAll(map, names);
    const double s = Seconds(Clock::now() - t0);
    state.SetIterationTime(s);
    seconds += s;
  }
  UsPerCall(state, seconds, names.size() * state.iterations());
}

std::vector<size_t> Shuffled(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  Rng rng(seed);
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.Below(i)]);
  return order;
}

void BM_OpenStrata(benchmark::State& state) {
  const auto& names = Names(Scaled(100000));
  auto engine = Open(Options(64 * kMiB, nullptr));
  for (const std::string& name : names) {
    (void)Take(engine->CreateTensor(name, OneBlock()), name);
  }
  const std::vector<size_t> order = Shuffled(names.size(), 1);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (size_t i : order) {
      benchmark::DoNotOptimize(Take(engine->OpenTensor(names[i]), names[i]));
    }
    const double s = Seconds(Clock::now() - t0);
    state.SetIterationTime(s);
    seconds += s;
  }
  UsPerCall(state, seconds, names.size() * state.iterations());
}

void BM_OpenBaseline(benchmark::State& state) {
  const auto& names = Names(Scaled(100000));
  NameMap map;
  InsertAll(map, names);
  const std::vector<size_t> order = Shuffled(names.size(), 1);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (size_t i : order) {
      auto it = map.find(names[i]);
      if (it == map.end()) std::abort();
      // A handle: the record and a copy of what it describes.
      std::shared_ptr<Record> handle = it->second;
      std::vector<int64_t> shape = handle->shape;
      benchmark::DoNotOptimize(handle.get());
      benchmark::DoNotOptimize(shape.data());
    }
    const double s = Seconds(Clock::now() - t0);
    state.SetIterationTime(s);
    seconds += s;
  }
  UsPerCall(state, seconds, names.size() * state.iterations());
}

// Arg 0: tensors never written; 1: each written once (a resident host copy
// to free).
void BM_DropStrata(benchmark::State& state) {
  const auto& names = Names(Scaled(100000));
  const bool resident = state.range(0) != 0;
  double seconds = 0;
  for (auto _ : state) {
    auto engine = Open(Options(resident ? names.size() * kPage * 9 / 8 + 64 * kMiB
                                        : 64 * kMiB,
                               nullptr));
    std::vector<Tensor> tensors;
    tensors.reserve(names.size());
    for (const std::string& name : names) {
      tensors.push_back(Take(engine->CreateTensor(name, OneBlock()), name));
      if (resident) {
        auto pin = Take(engine->Pin(tensors.back(), 0, Tier::kHost,
                                    Access::kOverwrite), name);
        pin.bytes()[0] = std::byte{1};
      }
    }
    const auto t0 = Clock::now();
    for (const Tensor& t : tensors) Check(engine->DropTensor(t), t.name());
    const double s = Seconds(Clock::now() - t0);
    state.SetIterationTime(s);
    seconds += s;
  }
  UsPerCall(state, seconds, names.size() * state.iterations());
}

void BM_DropBaseline(benchmark::State& state) {
  const auto& names = Names(Scaled(100000));
  double seconds = 0;
  for (auto _ : state) {
    NameMap map;
    InsertAll(map, names);
    const auto t0 = Clock::now();
    for (const std::string& name : names) map.erase(name);
    const double s = Seconds(Clock::now() - t0);
    state.SetIterationTime(s);
    seconds += s;
  }
  UsPerCall(state, seconds, names.size() * state.iterations());
}

// ---------------------------------------------------------------------------
// The engine's memory.

// Arg 0: tiers in the chain (1: host, 2: host + nvme). Handles are dropped
// at once, so only what the engine keeps is counted.
void BM_EngineMemory(benchmark::State& state) {
  const int tiers = static_cast<int>(state.range(0));
  const uint64_t n = Scaled(100000);
  // Many-block tensors: 10,000 blocks of 4 KiB each.
  const uint64_t big_tensors = Scaled(100);
  constexpr uint64_t kBigBlocks = 10000;
  for (auto _ : state) {
    NvmeDir dir;
    auto engine = Open(Options(64 * kMiB, tiers == 2 ? &dir : nullptr));
    const auto& names = Names(n);
    const uint64_t before = HeapBytes();
    for (const std::string& name : names) {
      (void)Take(engine->CreateTensor(name, OneBlock()), name);
    }
    const uint64_t after_small = HeapBytes();
    for (uint64_t i = 0; i < big_tensors; ++i) {
      const std::string name = absl::StrCat("model.embed.shard", i);
      (void)Take(engine->CreateTensor(
                     name, {.dtype = DType::kU8,
                            .shape = {static_cast<int64_t>(kBigBlocks * kPage)},
                            .block_bytes = kPage}),
                 name);
    }
    const uint64_t after_big = HeapBytes();
    const double per_tensor =
        static_cast<double>(after_small - before) / static_cast<double>(n);
    const double per_block =
        (static_cast<double>(after_big - after_small) -
         per_tensor * static_cast<double>(big_tensors)) /
        static_cast<double>(big_tensors * kBigBlocks);
    state.counters["bytes_per_tensor"] = per_tensor;
    state.counters["bytes_per_block"] = per_block;
    state.counters["bytes_per_block_per_tier"] = per_block / tiers;
  }
}

// What making a block resident adds (the policy's entry, the frame), by
// policy: arg 0 indexes kPolicies. Host only, big enough for every block.
const char* kPolicies[] = {"default", "lru", "lfu", "hinted"};
void BM_ResidentMemory(benchmark::State& state) {
  const char* policy = kPolicies[state.range(0)];
  state.SetLabel(policy);
  const uint64_t n = Scaled(100000);
  for (auto _ : state) {
    auto engine = Open(Options(n * kPage * 9 / 8 + 64 * kMiB, nullptr, policy));
    std::vector<Tensor> tensors;
    tensors.reserve(n);
    for (const std::string& name : Names(n)) {
      tensors.push_back(Take(engine->CreateTensor(name, OneBlock()), name));
    }
    const uint64_t before = HeapBytes();
    for (const Tensor& t : tensors) {
      auto pin = Take(engine->Pin(t, 0, Tier::kHost, Access::kOverwrite), t.name());
      pin.bytes()[0] = std::byte{1};
    }
    const uint64_t after = HeapBytes();
    state.counters["bytes_per_resident_block"] =
        static_cast<double>(after - before) / static_cast<double>(n);
  }
}

// ---------------------------------------------------------------------------
// Pins over many resident tensors.

struct PinFixture {
  std::unique_ptr<Engine> engine;
  std::vector<Tensor> tensors;
};

PinFixture& Resident() {
  static PinFixture* f = [] {
    auto* f = new PinFixture;
    const uint64_t n = Scaled(100000);
    f->engine = Open(Options(n * kPage * 9 / 8 + 16 * kMiB, nullptr));
    f->tensors.reserve(n);
    for (const std::string& name : Names(n)) {
      f->tensors.push_back(Take(f->engine->CreateTensor(name, OneBlock()), name));
      auto pin = Take(f->engine->Pin(f->tensors.back(), 0, Tier::kHost,
                                     Access::kOverwrite), name);
      pin.bytes()[0] = std::byte{1};
    }
    return f;
  }();
  return *f;
}

// One read pin and its unpin of `t`'s block 0.
inline void PinOnce(Engine& engine, const Tensor& t) {
  auto pin = engine.Pin(t, 0, Tier::kHost, Access::kRead);
  if (!pin.ok()) Die("Pin " + t.name(), pin.status());
  benchmark::DoNotOptimize(pin->bytes().data());
}

void BM_PinRoundRobin(benchmark::State& state) {
  PinFixture& f = Resident();
  const auto before = f.engine->GetStats().tier(Tier::kHost);
  size_t i = 0;
  for (auto _ : state) {
    PinOnce(*f.engine, f.tensors[i]);
    if (++i == f.tensors.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
  // The single-block workload, the same number of times, right after: the
  // ratio of the two is the target (>= 0.5).
  const auto t0 = Clock::now();
  for (benchmark::IterationCount k = 0; k < state.iterations(); ++k) {
    PinOnce(*f.engine, f.tensors[0]);
  }
  const double single = Seconds(Clock::now() - t0);
  const auto after = f.engine->GetStats().tier(Tier::kHost);
  if (after.misses != before.misses) {
    state.SkipWithError("a round-robin pin missed: the tensors are not all resident");
  }
  state.counters["tensors"] = static_cast<double>(f.tensors.size());
  state.counters["single_items_per_second"] =
      static_cast<double>(state.iterations()) / single;
  state.counters["single_seconds_for_same_count"] = single;
}

void BM_PinSingle(benchmark::State& state) {
  PinFixture& f = Resident();
  for (auto _ : state) PinOnce(*f.engine, f.tensors[0]);
  state.SetItemsProcessed(state.iterations());
}

struct alignas(64) Word {
  std::atomic<uint64_t> value{0};
};

void BM_PinFloor(benchmark::State& state) {
  const size_t n = Resident().tensors.size();
  static std::unique_ptr<Word[]> words(new Word[n]);
  size_t i = 0;
  for (auto _ : state) {
    std::atomic<uint64_t>& w = words[i].value;
    uint64_t v = w.load(std::memory_order_acquire);
    while (!w.compare_exchange_weak(v, v + 1, std::memory_order_acquire)) {
    }
    benchmark::DoNotOptimize(&w);
    w.fetch_sub(1, std::memory_order_release);
    if (++i == n) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}

// ---------------------------------------------------------------------------
// Tiers: what the engine keeps in NVMe and host for the blocks it holds.

struct Param {
  std::string name;
  TensorSpec spec;
  uint64_t bytes = 0;
};

uint64_t SpecBytes(const TensorSpec& spec) {
  uint64_t b = strata::DTypeSize(spec.dtype);
  for (int64_t d : spec.shape) b *= static_cast<uint64_t>(d);
  return b;
}

// A DeepSeek-V3-shaped mixture of experts, scaled down: `layers` layers of
// attention (q/k/v/o in bf16, 512 KiB..2 MiB), two f32 norms (4 KiB), an f32
// router and `experts` experts of three bf16 matrices (32..256 KiB by layer)
// each with an f32 per-channel scale (4 KiB); embeddings and head of 64 MiB.
// 61 layers x 256 experts: 94,126 tensors, ~2.7 GiB.
std::vector<Param> MoeLayout(int layers, int experts) {
  constexpr int64_t kHidden = 1024;
  // Expert intermediate sizes by layer: matrices of 32 KiB in most layers,
  // 64 KiB in every 8th and 256 KiB in every 16th (a fine-grained MoE; the
  // bytes stay near 2.7 GiB so that three passes through NVMe take ~30 s).
  auto inter_of = [](int l) -> int64_t {
    return l % 16 == 15 ? 128 : l % 8 == 7 ? 32 : 16;
  };
  std::vector<Param> params;
  auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape) {
    Param p{std::move(name), {.dtype = dtype, .shape = std::move(shape)}, 0};
    p.bytes = SpecBytes(p.spec);
    params.push_back(std::move(p));
  };
  add("model.embed_tokens.weight", DType::kBF16, {32768, kHidden});
  static const char* kMatrices[] = {"gate_proj", "up_proj", "down_proj"};
  for (int l = 0; l < layers; ++l) {
    const std::string layer = absl::StrCat("model.layers.", l, ".");
    add(layer + "input_layernorm.weight", DType::kF32, {kHidden});
    add(layer + "self_attn.q_proj.weight", DType::kBF16, {kHidden, kHidden});
    add(layer + "self_attn.k_proj.weight", DType::kBF16, {256, kHidden});
    add(layer + "self_attn.v_proj.weight", DType::kBF16, {256, kHidden});
    add(layer + "self_attn.o_proj.weight", DType::kBF16, {kHidden, kHidden});
    add(layer + "post_attention_layernorm.weight", DType::kF32, {kHidden});
    add(layer + "mlp.gate.weight", DType::kF32, {experts, kHidden});
    const int64_t inter = inter_of(l);
    for (int e = 0; e < experts; ++e) {
      const std::string expert = absl::StrCat(layer, "mlp.experts.", e, ".");
      for (const char* m : kMatrices) {
        const bool down = std::strcmp(m, "down_proj") == 0;
        add(absl::StrCat(expert, m, ".weight"), DType::kBF16,
            down ? std::vector<int64_t>{kHidden, inter}
                 : std::vector<int64_t>{inter, kHidden});
        add(absl::StrCat(expert, m, ".weight_scale"), DType::kF32, {kHidden});
      }
    }
  }
  add("model.norm.weight", DType::kF32, {kHidden});
  add("lm_head.weight", DType::kBF16, {32768, kHidden});
  return params;
}

// Waits until nothing moves in the engine: no write-back in flight and host
// used bytes steady (readahead loads done).
void Quiesce(Engine& engine) {
  uint64_t last = ~uint64_t{0};
  for (int i = 0; i < 2000; ++i) {
    const auto s = engine.GetStats();
    const uint64_t used = s.tier(Tier::kHost).used_bytes;
    if (s.tier(Tier::kHost).write_backs_in_flight == 0 && used == last) return;
    last = used;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

struct Pass {
  uint64_t hits = 0, misses = 0;
};
Pass HostHits(const Engine& engine) {
  const auto s = engine.GetStats().tier(Tier::kHost);
  return {s.hits, s.misses};
}

// Writes every block of every tensor (its first byte names the tensor).
void WriteAll(Engine& engine, const std::vector<Tensor>& tensors, bool fill) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    for (uint64_t b = 0; b < tensors[i].num_blocks(); ++b) {
      auto pin = Take(engine.Pin(tensors[i], b, Tier::kHost, Access::kOverwrite),
                      tensors[i].name());
      if (fill) {
        std::memset(pin.bytes().data(), static_cast<int>(i & 0xFF), pin.bytes().size());
      } else {
        pin.bytes()[0] = static_cast<std::byte>(i & 0xFF);
      }
    }
  }
}

// Reads every block, checking the first byte of each.
void ReadAll(Engine& engine, const std::vector<Tensor>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    for (uint64_t b = 0; b < tensors[i].num_blocks(); ++b) {
      auto pin = Take(engine.Pin(tensors[i], b, Tier::kHost, Access::kRead),
                      tensors[i].name());
      if (pin.bytes()[0] != static_cast<std::byte>(i & 0xFF)) {
        Die("read back " + tensors[i].name(),
            absl::DataLossError("first byte differs from the one written"));
      }
    }
  }
}

uint64_t RoundedBlockBytes(const std::vector<Tensor>& tensors) {
  uint64_t bytes = 0;
  for (const Tensor& t : tensors) {
    for (uint64_t b = 0; b < t.num_blocks(); ++b) {
      bytes += RoundUp(t.block_size(b), kPage);
    }
  }
  return bytes;
}

void BM_ModelLayout(benchmark::State& state) {
  const int layers = static_cast<int>(std::max<uint64_t>(1, std::llround(61 * std::min(1.0, g_scale * 4))));
  const int experts = static_cast<int>(Scaled(256));
  const std::vector<Param> params = MoeLayout(layers, experts);
  uint64_t model_bytes = 0;
  for (const Param& p : params) model_bytes += p.bytes;
  for (auto _ : state) {
    NvmeDir dir;
    EngineOptions options = Options(model_bytes / 4, &dir);
    auto engine = Open(options);
    const auto t0 = Clock::now();
    std::vector<Tensor> tensors;
    tensors.reserve(params.size());
    for (const Param& p : params) {
      tensors.push_back(Take(engine->CreateTensor(p.name, p.spec), p.name));
    }
    WriteAll(*engine, tensors, /*fill=*/true);
    Check(engine->FlushAll(), "FlushAll");
    Quiesce(*engine);
    const auto written = engine->GetStats();
    const uint64_t blocks = RoundedBlockBytes(tensors);
    const uint64_t file_disk = dir.FileDiskBytes();
    ReadAll(*engine, tensors);
    const Pass first = HostHits(*engine);
    ReadAll(*engine, tensors);
    const Pass second = HostHits(*engine);
    Quiesce(*engine);
    state.SetIterationTime(Seconds(Clock::now() - t0));
    const auto read = engine->GetStats();
    const auto& core = strata::internal::EngineCore::Of(*engine);
    const uint64_t resident = core.ResidentBytes(Tier::kHost);
    state.counters["tensors"] = static_cast<double>(tensors.size());
    state.counters["model_MiB"] = static_cast<double>(model_bytes) / kMiB;
    state.counters["host_MiB"] =
        static_cast<double>(options.host.capacity_bytes) / kMiB;
    state.counters["nvme_used_vs_blocks"] =
        static_cast<double>(written.tier(Tier::kNvme).used_bytes) / blocks;
    state.counters["nvme_file_vs_blocks"] = static_cast<double>(file_disk) / blocks;
    state.counters["nvme_file_after_reads_vs_blocks"] =
        static_cast<double>(dir.FileDiskBytes()) / blocks;
    state.counters["host_used_vs_resident"] =
        static_cast<double>(read.tier(Tier::kHost).used_bytes) /
        static_cast<double>(std::max<uint64_t>(resident, 1));
    state.counters["host_resident_MiB"] = static_cast<double>(resident) / kMiB;
    state.counters["host_used_MiB"] =
        static_cast<double>(read.tier(Tier::kHost).used_bytes) / kMiB;
    state.counters["blocks_MiB"] = static_cast<double>(blocks) / kMiB;
    state.counters["nvme_used_MiB"] =
        static_cast<double>(written.tier(Tier::kNvme).used_bytes) / kMiB;
    state.counters["nvme_file_MiB"] = static_cast<double>(file_disk) / kMiB;
    const uint64_t pass2 = (second.hits - first.hits) + (second.misses - first.misses);
    state.counters["second_pass_hit_ratio"] =
        static_cast<double>(second.hits - first.hits) / static_cast<double>(pass2);
  }
}

// Arg: percent of the host tier the tensors' bytes fill. Mixed small sizes
// (4 KiB: 70%, 8 KiB: 20%, 16 KiB: 10%), host + NVMe; write, read, read.
void BM_SmallFit(benchmark::State& state) {
  const uint64_t host = RoundUp(static_cast<uint64_t>(512 * kMiB * g_scale), 2 * kMiB);
  const uint64_t fill = host * static_cast<uint64_t>(state.range(0)) / 100;
  for (auto _ : state) {
    NvmeDir dir;
    auto engine = Open(Options(host, &dir));
    Rng rng(7);
    std::vector<Tensor> tensors;
    uint64_t bytes = 0;
    for (uint64_t i = 0;; ++i) {
      const double u = rng.Unit();
      const int64_t elems = u < 0.7 ? 1024 : u < 0.9 ? 2048 : 4096;
      if (bytes + elems * 4 > fill) break;
      bytes += elems * 4;
      const std::string name = absl::StrCat("small.", i);
      tensors.push_back(Take(engine->CreateTensor(name, {.dtype = DType::kF32,
                                                         .shape = {elems}}),
                             name));
    }
    const auto t0 = Clock::now();
    WriteAll(*engine, tensors, /*fill=*/false);
    ReadAll(*engine, tensors);
    const Pass first = HostHits(*engine);
    ReadAll(*engine, tensors);
    const Pass second = HostHits(*engine);
    state.SetIterationTime(Seconds(Clock::now() - t0));
    const uint64_t pass2 = (second.hits - first.hits) + (second.misses - first.misses);
    state.counters["tensors"] = static_cast<double>(tensors.size());
    state.counters["second_pass_hit_ratio"] =
        static_cast<double>(second.hits - first.hits) / static_cast<double>(pass2);
    state.counters["evictions"] =
        static_cast<double>(engine->GetStats().tier(Tier::kHost).evictions);
  }
}

// Random create (and write every block) / write one block / drop of
// tensors of mixed sizes, 4 KiB .. 4 MiB (most small), with live bytes held
// near 4x the host tier so NVMe holds most of them.
void BM_Churn(benchmark::State& state) {
  const uint64_t host_bytes = 256 * kMiB;
  const uint64_t ops = std::max<uint64_t>(1000, static_cast<uint64_t>(g_churn_ops * g_scale));
  const uint64_t live_target = 4 * host_bytes;
  constexpr uint64_t kLargest = 4 * kMiB;
  for (auto _ : state) {
    NvmeDir dir;
    EngineOptions options = Options(host_bytes, &dir);
    options.default_block_bytes = kLargest;
    auto engine = Open(options);
    auto& core = strata::internal::EngineCore::Of(*engine);
    const auto& chain = core.chain();
    const auto& host = dynamic_cast<const strata::tiers::HostTier&>(
        chain.tier(chain.host()));
    Rng rng(11);
    struct Live {
      Tensor tensor;
      uint64_t tag;
    };
    std::vector<Live> live;
    uint64_t live_bytes = 0, next = 0;
    uint64_t samples = 0, eligible = 0, unplaceable = 0;
    uint64_t largest_creates = 0, largest_evictions = 0, largest_evictions_max = 0;
    uint64_t creates = 0, writes = 0, drops = 0;
    const uint64_t hits_before = engine->GetStats().tier(Tier::kHost).hits;
    const auto t0 = Clock::now();
    for (uint64_t op = 0; op < ops; ++op) {
      const double u = rng.Unit();
      const bool must_drop = live_bytes > live_target;
      if (!live.empty() && (must_drop || u < 0.3)) {
        const size_t k = rng.Below(live.size());
        Check(engine->DropTensor(live[k].tensor), "DropTensor");
        live_bytes -= live[k].tensor.size_bytes();
        live[k] = std::move(live.back());
        live.pop_back();
        ++drops;
      } else if (!live.empty() && u < 0.6) {
        Live& l = live[rng.Below(live.size())];
        const uint64_t b = rng.Below(l.tensor.num_blocks());
        auto pin = Take(engine->Pin(l.tensor, b, Tier::kHost, Access::kWrite), "Pin");
        if (pin.bytes()[0] != static_cast<std::byte>(l.tag)) {
          Die(l.tensor.name(), absl::DataLossError("block lost its first byte"));
        }
        ++writes;
      } else {
        // Sizes: 60% 4-16 KiB, 30% 16-256 KiB, 9% 256 KiB-1 MiB, 1% 1-4 MiB,
        // any even byte count (bf16 elements); the largest exactly 4 MiB.
        const double v = rng.Unit();
        const uint64_t lo = v < 0.6 ? 4 * kKiB : v < 0.9 ? 16 * kKiB : v < 0.99 ? 256 * kKiB : kMiB;
        const uint64_t hi = v < 0.6 ? 16 * kKiB : v < 0.9 ? 256 * kKiB : v < 0.99 ? kMiB : kLargest;
        const uint64_t bytes = v >= 0.998 ? kLargest : (lo + rng.Below(hi - lo)) & ~uint64_t{1};
        const std::string name = absl::StrCat("churn.", next);
        const uint64_t tag = next++ & 0xFF;
        Tensor t = Take(engine->CreateTensor(name, {.dtype = DType::kBF16,
                                                    .shape = {static_cast<int64_t>(bytes / 2)}}),
                        name);
        // GetStats walks every block: only around the rare largest ones.
        const uint64_t evictions_before =
            bytes == kLargest ? engine->GetStats().tier(Tier::kHost).evictions : 0;
        {
          auto pin = Take(engine->Pin(t, 0, Tier::kHost, Access::kOverwrite), name);
          pin.bytes()[0] = static_cast<std::byte>(tag);
        }
        if (bytes == kLargest) {
          const uint64_t e = engine->GetStats().tier(Tier::kHost).evictions - evictions_before;
          ++largest_creates;
          largest_evictions += e;
          largest_evictions_max = std::max(largest_evictions_max, e);
        }
        live_bytes += bytes;
        live.push_back({std::move(t), tag});
        ++creates;
      }
      if (op % 64 == 0) {
        ++samples;
        const uint64_t free = host.capacity() - host.used();
        if (free >= 4 * kLargest) {
          ++eligible;
          if (host.largest_free() < kLargest) ++unplaceable;
        }
      }
    }
    Check(engine->FlushAll(), "FlushAll");
    Quiesce(*engine);
    state.SetIterationTime(Seconds(Clock::now() - t0));
    uint64_t live_rounded = 0;
    for (const Live& l : live) live_rounded += RoundUp(l.tensor.size_bytes(), kPage);
    const auto s = engine->GetStats();
    state.counters["ops"] = static_cast<double>(ops);
    // Creates are misses (new blocks); every hit is a write of a live one.
    state.counters["write_hit_ratio"] =
        static_cast<double>(s.tier(Tier::kHost).hits - hits_before) /
        static_cast<double>(std::max<uint64_t>(writes, 1));
    state.counters["creates"] = static_cast<double>(creates);
    state.counters["writes"] = static_cast<double>(writes);
    state.counters["drops"] = static_cast<double>(drops);
    state.counters["live_MiB"] = static_cast<double>(live_bytes) / kMiB;
    state.counters["host_samples_free_ge_4x_largest"] = static_cast<double>(eligible);
    state.counters["host_samples_largest_unplaceable"] = static_cast<double>(unplaceable);
    state.counters["host_unplaceable_fraction"] =
        eligible == 0 ? 0.0 : static_cast<double>(unplaceable) / eligible;
    state.counters["host_free_extents_end"] = static_cast<double>(host.free_extents());
    state.counters["largest_creates"] = static_cast<double>(largest_creates);
    state.counters["largest_evictions_avg"] =
        largest_creates == 0 ? 0.0
                             : static_cast<double>(largest_evictions) / largest_creates;
    state.counters["largest_evictions_max"] = static_cast<double>(largest_evictions_max);
    state.counters["nvme_used_vs_live"] =
        static_cast<double>(s.tier(Tier::kNvme).used_bytes) / live_rounded;
    state.counters["nvme_file_vs_live"] =
        static_cast<double>(dir.FileDiskBytes()) / live_rounded;
    state.counters["nvme_file_vs_live_unrounded"] =
        static_cast<double>(dir.FileDiskBytes()) / live_bytes;
  }
}

BENCHMARK(BM_CreateStrata)->Name("BM_CreateTensor/strata")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CreateBaseline)->Name("BM_CreateTensor/baseline")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_OpenStrata)->Name("BM_OpenTensor/strata")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_OpenBaseline)->Name("BM_OpenTensor/baseline")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DropStrata)->Name("BM_DropTensor/strata")->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DropBaseline)->Name("BM_DropTensor/baseline")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EngineMemory)->Arg(1)->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ResidentMemory)->DenseRange(0, 3)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PinRoundRobin)->Name("BM_PinRoundRobin/strata");
BENCHMARK(BM_PinSingle)->Name("BM_PinRoundRobin/single");
BENCHMARK(BM_PinFloor)->Name("BM_PinRoundRobin/floor");
BENCHMARK(BM_SmallFit)->Arg(50)->Arg(75)->Arg(90)->Arg(100)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ModelLayout)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Churn)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);

// Takes this program's own flags out of argv.
void ParseFlags(int* argc, char** argv) {
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&](std::string_view flag) -> const char* {
      if (arg.substr(0, flag.size()) == flag && arg.size() > flag.size() &&
          arg[flag.size()] == '=') {
        return argv[i] + flag.size() + 1;
      }
      return nullptr;
    };
    if (const char* v = value("--scale")) {
      g_scale = std::atof(v);
      if (!(g_scale > 0)) {
        std::fprintf(stderr, "catalog_bench: --scale must be positive\n");
        std::exit(2);
      }
    } else if (const char* v = value("--churn_ops")) {
      g_churn_ops = std::strtoull(v, nullptr, 10);
    } else if (arg == "--full") {
      g_churn_ops = 1000000;
    } else if (const char* v = value("--nvme_dir")) {
      g_nvme_root = v;
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
}

}  // namespace

int main(int argc, char** argv) {
  ParseFlags(&argc, argv);
  if (g_nvme_root.empty()) {
    const char* base = ::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                       "/strata-catalog-bench-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("catalog_bench: mkdtemp");
      return 1;
    }
    g_nvme_root = tmpl;
    g_remove_root = true;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (g_remove_root) {
    std::error_code ec;
    std::filesystem::remove_all(g_nvme_root, ec);
  }
  return 0;
}
