// gpu: layer-by-layer streaming of weights larger than the VRAM budget, the
// way an offloaded forward pass (FlexGen, DeepSpeed inference offload) uses
// the GPU. The weights (`scale` times the budget) are split into layers of
// 2 MiB blocks; a pass reads every layer in order on one compute stream, a
// kernel per block that checks the block's bytes (gpu_kernels.h): the
// compute is light on purpose, so the pass is bound by PCIe and shows what
// each side makes of it.
//
//   strata            an engine with tiers gpu (the budget) over host (all
//                     the weights); per block PinAsync(kGpu, kRead), WaitOn
//                     the compute stream, the kernel, ReleaseAfter; each
//                     pass a recorded step (BeginStep/EndStep), so a
//                     "hinted" policy learns which layers to keep
//   managed_prefetch  cudaMallocManaged for all the weights; cudaMemPrefetch-
//                     Async of the layers ahead to the GPU and of each layer
//                     done back to host, keeping the budget (managed memory
//                     is never oversubscribed here: that can hang the GPU)
//   pageable_memcpy   weights in pageable host memory; cudaMemcpy of each
//                     layer into one of two device buffers, then its kernels
//
// and two floors, from figures measured in the same run (the kernels alone
// over resident memory; raw pinned bandwidth: cudaMemcpyAsync from
// cudaHostAlloc'ed memory in 64 MiB copies):
//   floor_s        the PCIe floor: max(kernels, the weights /
//                  raw bandwidth), every byte streamed once a pass
//   cache_floor_s  what an optimal cache could reach: max(kernels, the
//                  bytes the budget cannot hold / raw bandwidth)
// with vs_floor and vs_cache_floor = floor / strata's pass time (1 is the
// floor itself). Every side must read back every word as written, or the
// workload fails.
#include <algorithm>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/workloads/common.h"
#include "bench/workloads/workloads.h"
#include "strata_config.h"

#if STRATA_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "bench/workloads/gpu_kernels.h"
#include "strata/strata.h"
#include "util/status_macros.h"
#endif

namespace strata::bench {

#if !STRATA_HAVE_CUDA

absl::StatusOr<std::vector<Result>> RunGpu(const WorkloadOptions&) {
  return absl::FailedPreconditionError(
      "gpu: not built: this Strata was configured without CUDA "
      "(meson configure -Dcuda=enabled, with the toolkit in /usr/local/cuda)");
}

#else  // STRATA_HAVE_CUDA

namespace {

constexpr uint64_t kBlock = uint64_t{2} << 20;
constexpr uint64_t kRawChunk = uint64_t{64} << 20;

absl::Status Cuda(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("gpu: ", what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}
absl::Status Cuda(int e, absl::string_view what) { return Cuda(static_cast<cudaError_t>(e), what); }

struct Shape {
  uint64_t budget = 0;       // the GPU tier's bytes
  uint64_t layer_bytes = 0;  // a multiple of kBlock
  uint64_t layers = 0;
  uint64_t working_set() const { return layers * layer_bytes; }
  uint64_t blocks_per_layer() const { return layer_bytes / kBlock; }
  // Layers the budget holds (at least 2: the one computed and the next).
  uint64_t window() const { return std::max<uint64_t>(2, budget / layer_bytes); }
  // Bytes an optimal cache must still move each pass.
  uint64_t must_cross() const { return working_set() > budget ? working_set() - budget : 0; }
  // The weight word (gpu_kernels.h) that block `b` of layer `l` starts with.
  uint64_t first_word(uint64_t l, uint64_t b) const { return (l * layer_bytes + b * kBlock) / 8; }
};

// Layers of 1/8 of the budget, 2 MiB to 64 MiB (a 1 GiB budget: 64 MiB,
// so 16 layers fit): small enough that a pass has many, large enough that
// one cudaMemPrefetchAsync or cudaMemcpy moves a lot at once.
Shape ShapeFor(uint64_t budget, uint64_t working_set) {
  Shape s;
  s.budget = budget;
  s.layer_bytes = std::clamp<uint64_t>(budget / 8 / kBlock * kBlock, kBlock, kRawChunk);
  s.layers = std::max<uint64_t>(2, (working_set + s.layer_bytes - 1) / s.layer_bytes);
  return s;
}

// Writes the weight words [first_word, first_word + bytes / 8) to `dst`,
// on up to 16 threads (a working set of gigabytes fills in a second).
void FillWeights(std::byte* dst, uint64_t bytes, uint64_t first_word) {
  const uint64_t words = bytes / 8;
  // A thread per 8 MiB at least: a 2 MiB block is filled by one.
  const uint64_t most = std::clamp(std::thread::hardware_concurrency(), 1u, 16u);
  const auto n = static_cast<unsigned>(std::clamp<uint64_t>(bytes >> 23, 1, most));
  const uint64_t per = (words + n - 1) / n;
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n; ++t) {
    threads.emplace_back([=] {
      auto* w = reinterpret_cast<uint64_t*>(dst);
      for (uint64_t i = t * per; i < std::min(words, (t + 1) * per); ++i) {
        w[i] = WeightWord(first_word + i);
      }
    });
  }
  for (std::thread& t : threads) t.join();
}

// The compute stream and the check counters every side uses.
class Device {
 public:
  static absl::StatusOr<std::unique_ptr<Device>> Make() {
    auto d = std::unique_ptr<Device>(new Device());
    STRATA_RETURN_IF_ERROR(
        Cuda(cudaStreamCreateWithFlags(&d->stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
    STRATA_RETURN_IF_ERROR(
        Cuda(cudaMalloc(reinterpret_cast<void**>(&d->counts_), 2 * sizeof(unsigned long long)),
             "cudaMalloc of the check counters"));
    STRATA_RETURN_IF_ERROR(d->Reset());
    return d;
  }
  ~Device() {
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    if (counts_ != nullptr) (void)cudaFree(counts_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }
  cudaStream_t stream() const { return stream_; }
  absl::Status Reset() {
    return Cuda(cudaMemsetAsync(counts_, 0, 2 * sizeof(unsigned long long), stream_),
                "cudaMemsetAsync");
  }
  absl::Status Check(const void* device, uint64_t bytes, uint64_t first_word) {
    return Cuda(LaunchCheckWeights(device, bytes, first_word, counts_, stream_),
                "launch of the check kernel");
  }
  // Checks every block of a layer held at `layer` (device memory) as layer
  // `l` of the weights: the kernels of one layer of a pass.
  absl::Status CheckLayer(const std::byte* layer, const Shape& shape, uint64_t l) {
    for (uint64_t b = 0; b < shape.blocks_per_layer(); ++b) {
      STRATA_RETURN_IF_ERROR(Check(layer + b * kBlock, kBlock, shape.first_word(l, b)));
    }
    return absl::OkStatus();
  }
  absl::Status Sync() { return Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  // kDataLoss unless every word of `passes` passes over `shape` was seen
  // and matched.
  absl::Status Verify(const Shape& shape, int passes, absl::string_view side) {
    STRATA_RETURN_IF_ERROR(Sync());
    unsigned long long c[2];
    STRATA_RETURN_IF_ERROR(Cuda(cudaMemcpy(c, counts_, sizeof(c), cudaMemcpyDeviceToHost),
                                "cudaMemcpy of the check counters"));
    const unsigned long long want = shape.working_set() / 8 * static_cast<uint64_t>(passes);
    if (c[0] != 0 || c[1] != want) {
      return absl::DataLossError(absl::StrCat("gpu: ", side, " streamed wrong bytes: ", c[0],
                                              " of ", c[1], " words differ from the weights (",
                                              want, " expected to be read)"));
    }
    return absl::OkStatus();
  }

 private:
  Device() = default;
  cudaStream_t stream_ = nullptr;
  unsigned long long* counts_ = nullptr;
};

// Seconds of one timed pass, averaged, and the PCIe bytes it moved.
struct Timing {
  double pass_seconds = 0;
  double moved_bytes = 0;
};

// Runs `pass` `passes` times, the first untimed, and verifies the bytes.
absl::StatusOr<double> TimePasses(Device& dev, const Shape& shape, int passes,
                                  const WorkloadOptions& options, const std::string& what,
                                  const std::function<absl::Status()>& pass) {
  STRATA_RETURN_IF_ERROR(dev.Reset());
  Progress progress(options, what, passes + 1, "passes");
  STRATA_RETURN_IF_ERROR(pass());
  STRATA_RETURN_IF_ERROR(dev.Sync());
  progress.Update(1);
  const Clock::time_point start = Clock::now();
  for (int p = 0; p < passes; ++p) {
    STRATA_RETURN_IF_ERROR(pass());
    progress.Update(p + 2);
  }
  STRATA_RETURN_IF_ERROR(dev.Sync());
  const double seconds = SecondsSince(start) / passes;
  progress.Done();
  STRATA_RETURN_IF_ERROR(dev.Verify(shape, passes + 1, what));
  return seconds;
}

// --- the yardsticks -------------------------------------------------------

// Raw pinned host-to-device bandwidth (bytes/s): 64 MiB copies from
// cudaHostAlloc'ed memory, 32 of them after one to warm up.
absl::StatusOr<double> PinnedBandwidth(Device& dev) {
  void* host = nullptr;
  void* device = nullptr;
  STRATA_RETURN_IF_ERROR(
      Cuda(cudaHostAlloc(&host, kRawChunk, cudaHostAllocDefault), "cudaHostAlloc"));
  absl::Status s = Cuda(cudaMalloc(&device, kRawChunk), "cudaMalloc");
  double rate = 0;
  for (int round = 0; round < 2 && s.ok(); ++round) {
    const int copies = round == 0 ? 1 : 32;
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < copies && s.ok(); ++i) {
      s = Cuda(cudaMemcpyAsync(device, host, kRawChunk, cudaMemcpyHostToDevice, dev.stream()),
               "cudaMemcpyAsync");
    }
    if (s.ok()) s = dev.Sync();
    rate = static_cast<double>(copies * kRawChunk) / SecondsSince(start);
  }
  if (device != nullptr) (void)cudaFree(device);
  (void)cudaFreeHost(host);
  if (!s.ok()) return s;
  return rate;
}

// The kernels alone: a pass over weights already in VRAM (one layer's
// buffer, checked `layers` times with each layer's word range).
absl::StatusOr<double> ComputeSeconds(Device& dev, const Shape& shape, int passes,
                                      const WorkloadOptions& options) {
  void* layer = nullptr;
  STRATA_RETURN_IF_ERROR(Cuda(cudaMalloc(&layer, shape.layer_bytes), "cudaMalloc"));
  // Every layer checks the same buffer: fill it with layer 0's words and
  // check it as layer 0 each time (the counters then verify as usual).
  std::vector<uint64_t> words(shape.layer_bytes / 8);
  FillWeights(reinterpret_cast<std::byte*>(words.data()), shape.layer_bytes, 0);
  absl::Status s = Cuda(cudaMemcpy(layer, words.data(), shape.layer_bytes, cudaMemcpyHostToDevice),
                        "cudaMemcpy");
  // (a StatusOr cannot hold an OK status without a value)
  absl::StatusOr<double> seconds = absl::UnknownError("not run");
  if (!s.ok()) {
    seconds = s;
  } else {
    seconds = TimePasses(dev, shape, passes, options, "gpu: compute alone", [&] {
      for (uint64_t l = 0; l < shape.layers; ++l) {
        STRATA_RETURN_IF_ERROR(dev.CheckLayer(static_cast<std::byte*>(layer), shape, 0));
      }
      return absl::OkStatus();
    });
  }
  (void)cudaFree(layer);
  return seconds;
}

// --- the three sides ------------------------------------------------------

absl::StatusOr<Timing> RunStrata(Device& dev, const Shape& shape, int passes,
                                 const WorkloadOptions& options) {
  EngineOptions o;
  o.tiers = {Tier::kGpu, Tier::kHost};
  o.gpu.capacity_bytes = shape.budget;
  o.host.capacity_bytes = shape.working_set() + 4 * kBlock;
  o.default_block_bytes = kBlock;
  o.policy = options.policy;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(o);
  if (!engine.ok()) return engine.status();
  Engine& e = **engine;
  const TensorSpec spec{.dtype = DType::kU8,
                        .shape = {static_cast<int64_t>(shape.layer_bytes)},
                        .block_bytes = kBlock};
  std::vector<Tensor> layers;
  for (uint64_t l = 0; l < shape.layers; ++l) {
    absl::StatusOr<Tensor> t = e.CreateTensor(absl::StrCat("layer", l), spec);
    if (!t.ok()) return t.status();
    layers.push_back(*t);
    for (uint64_t b = 0; b < shape.blocks_per_layer(); ++b) {
      absl::StatusOr<Pin> pin = e.Pin(*t, b, Tier::kHost, Access::kOverwrite);
      if (!pin.ok()) return pin.status();
      FillWeights(pin->bytes().data(), kBlock, shape.first_word(l, b));
    }
  }
  uint64_t in_timed = 0;  // the GPU's bytes_in when the timed passes start
  int pass_index = 0;
  absl::StatusOr<double> seconds = TimePasses(
      dev, shape, passes, options, absl::StrCat("gpu: strata ", Bytes(shape.working_set())),
      [&]() -> absl::Status {
        if (pass_index++ == 1) in_timed = e.GetStats().tier(Tier::kGpu).bytes_in;
        STRATA_RETURN_IF_ERROR(e.BeginStep());
        for (uint64_t l = 0; l < shape.layers; ++l) {
          for (uint64_t b = 0; b < shape.blocks_per_layer(); ++b) {
            absl::StatusOr<Pin> pin = e.PinAsync(layers[l], b, Tier::kGpu, Access::kRead);
            if (!pin.ok()) return pin.status();
            STRATA_RETURN_IF_ERROR(pin->WaitOn(dev.stream()));
            STRATA_RETURN_IF_ERROR(dev.Check(pin->device_ptr(), kBlock, shape.first_word(l, b)));
            STRATA_RETURN_IF_ERROR(pin->ReleaseAfter(dev.stream()));
          }
        }
        return e.EndStep();
      });
  if (!seconds.ok()) return seconds.status();
  Timing t;
  t.pass_seconds = *seconds;
  t.moved_bytes = static_cast<double>(e.GetStats().tier(Tier::kGpu).bytes_in - in_timed) / passes;
  return t;
}

// Managed memory as a user keeps it within a VRAM budget: the layers
// ahead are prefetched to the GPU on one copy stream (as many as the budget
// holds, less the one computed), and each layer is prefetched back to host
// on another once its kernels are done (the two directions overlap).
class ManagedWeights {
 public:
  static absl::StatusOr<std::unique_ptr<ManagedWeights>> Make(const Shape& shape) {
    size_t free = 0, total = 0;
    STRATA_RETURN_IF_ERROR(Cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo"));
    if (shape.working_set() > free / 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gpu: the managed-memory baseline needs ", Bytes(shape.working_set()),
          " of managed memory, more than half of the GPU's free ", Bytes(free),
          " (oversubscribed managed memory can hang the GPU); lower --tier or --scale"));
    }
    auto m = std::unique_ptr<ManagedWeights>(new ManagedWeights(shape));
    STRATA_RETURN_IF_ERROR(
        Cuda(cudaMallocManaged(reinterpret_cast<void**>(&m->weights_), shape.working_set()),
             "cudaMallocManaged"));
    FillWeights(m->weights_, shape.working_set(), 0);
    for (cudaStream_t* stream : {&m->in_, &m->out_}) {
      STRATA_RETURN_IF_ERROR(
          Cuda(cudaStreamCreateWithFlags(stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    }
    for (std::vector<cudaEvent_t>* events : {&m->arrived_, &m->done_}) {
      for (cudaEvent_t& e : *events) {
        STRATA_RETURN_IF_ERROR(
            Cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
      }
    }
    return m;
  }

  ~ManagedWeights() {
    for (cudaStream_t stream : {in_, out_}) {
      if (stream == nullptr) continue;
      (void)cudaStreamSynchronize(stream);
      (void)cudaStreamDestroy(stream);
    }
    for (const std::vector<cudaEvent_t>* events : {&arrived_, &done_}) {
      for (cudaEvent_t e : *events) {
        if (e != nullptr) (void)cudaEventDestroy(e);
      }
    }
    if (weights_ != nullptr) (void)cudaFree(weights_);
  }

  absl::Status Pass(Device& dev) {
    const uint64_t ahead = std::max<uint64_t>(1, shape_.window() - 1);
    for (uint64_t l = 0; l < std::min(ahead, shape_.layers); ++l) {
      STRATA_RETURN_IF_ERROR(Bring(l));
    }
    for (uint64_t l = 0; l < shape_.layers; ++l) {
      STRATA_RETURN_IF_ERROR(
          Cuda(cudaStreamWaitEvent(dev.stream(), arrived_[l], 0), "cudaStreamWaitEvent"));
      STRATA_RETURN_IF_ERROR(dev.CheckLayer(layer(l), shape_, l));
      STRATA_RETURN_IF_ERROR(Cuda(cudaEventRecord(done_[l], dev.stream()), "cudaEventRecord"));
      // Out goes layer l once read; in comes the next one ahead.
      STRATA_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(out_, done_[l], 0), "cudaStreamWaitEvent"));
      STRATA_RETURN_IF_ERROR(Prefetch(layer(l), false, out_));
      STRATA_RETURN_IF_ERROR(Bring(l + ahead));
    }
    STRATA_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(out_), "cudaStreamSynchronize"));
    return Cuda(cudaStreamSynchronize(in_), "cudaStreamSynchronize");
  }

 private:
  explicit ManagedWeights(const Shape& shape)
      : shape_(shape), arrived_(shape.layers, nullptr), done_(shape.layers, nullptr) {}

  std::byte* layer(uint64_t l) const { return weights_ + l * shape_.layer_bytes; }

  absl::Status Bring(uint64_t l) {
    if (l >= shape_.layers) return absl::OkStatus();
    STRATA_RETURN_IF_ERROR(Prefetch(layer(l), true, in_));
    return Cuda(cudaEventRecord(arrived_[l], in_), "cudaEventRecord");
  }

  absl::Status Prefetch(const std::byte* p, bool to_gpu, cudaStream_t stream) const {
    cudaMemLocation where{};
    where.type = to_gpu ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
    int device = 0;
    if (to_gpu) STRATA_RETURN_IF_ERROR(Cuda(cudaGetDevice(&device), "cudaGetDevice"));
    where.id = to_gpu ? device : 0;
#if CUDART_VERSION >= 13000
    return Cuda(cudaMemPrefetchAsync(p, shape_.layer_bytes, where, 0, stream),
                "cudaMemPrefetchAsync");
#else
    return Cuda(
        cudaMemPrefetchAsync(p, shape_.layer_bytes, to_gpu ? device : cudaCpuDeviceId, stream),
        "cudaMemPrefetchAsync");
#endif
  }

  const Shape shape_;
  std::byte* weights_ = nullptr;
  cudaStream_t in_ = nullptr, out_ = nullptr;
  std::vector<cudaEvent_t> arrived_, done_;  // per layer: in VRAM; read
};

absl::StatusOr<Timing> RunManaged(Device& dev, const Shape& shape, int passes,
                                  const WorkloadOptions& options) {
  absl::StatusOr<std::unique_ptr<ManagedWeights>> managed = ManagedWeights::Make(shape);
  if (!managed.ok()) return managed.status();
  absl::StatusOr<double> seconds = TimePasses(
      dev, shape, passes, options, absl::StrCat("gpu: managed ", Bytes(shape.working_set())),
      [&] { return (*managed)->Pass(dev); });
  if (!seconds.ok()) return seconds.status();
  return Timing{*seconds, static_cast<double>(shape.working_set())};
}

// Pageable host memory and cudaMemcpy into two device buffers in turn
// (cudaMemcpy of pageable memory stages through the driver's own pinned
// buffers and returns when the bytes are on the device).
absl::StatusOr<Timing> RunPageable(Device& dev, const Shape& shape, int passes,
                                   const WorkloadOptions& options) {
  absl::StatusOr<std::unique_ptr<AlignedBuffer>> host = AlignedBuffer::Make(shape.working_set());
  if (!host.ok()) return host.status();
  FillWeights((*host)->data(), shape.working_set(), 0);
  void* buffers[2] = {nullptr, nullptr};
  cudaEvent_t read[2] = {nullptr, nullptr};
  absl::Status s;
  for (int i = 0; i < 2 && s.ok(); ++i) {
    s = Cuda(cudaMalloc(&buffers[i], shape.layer_bytes), "cudaMalloc");
    if (s.ok()) {
      s = Cuda(cudaEventCreateWithFlags(&read[i], cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  absl::StatusOr<double> seconds = absl::UnknownError("not run");
  if (!s.ok()) {
    seconds = s;
  } else {
    seconds = TimePasses(
        dev, shape, passes, options, absl::StrCat("gpu: pageable ", Bytes(shape.working_set())),
        [&]() -> absl::Status {
          for (uint64_t l = 0; l < shape.layers; ++l) {
            std::byte* buffer = static_cast<std::byte*>(buffers[l % 2]);
            // The kernels of the layer before last read this buffer.
            STRATA_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(read[l % 2]), "cudaEventSynchronize"));
            STRATA_RETURN_IF_ERROR(Cuda(cudaMemcpy(buffer, (*host)->data() + l * shape.layer_bytes,
                                                   shape.layer_bytes, cudaMemcpyHostToDevice),
                                        "cudaMemcpy"));
            STRATA_RETURN_IF_ERROR(dev.CheckLayer(buffer, shape, l));
            STRATA_RETURN_IF_ERROR(
                Cuda(cudaEventRecord(read[l % 2], dev.stream()), "cudaEventRecord"));
          }
          return absl::OkStatus();
        });
  }
  (void)cudaDeviceSynchronize();
  for (int i = 0; i < 2; ++i) {
    if (read[i] != nullptr) (void)cudaEventDestroy(read[i]);
    if (buffers[i] != nullptr) (void)cudaFree(buffers[i]);
  }
  if (!seconds.ok()) return seconds.status();
  return Timing{*seconds, static_cast<double>(shape.working_set())};
}

absl::StatusOr<std::vector<Result>> RunOneSize(Device& dev, double bandwidth, uint64_t working_set,
                                               const WorkloadOptions& options) {
  const Shape shape = ShapeFor(options.tier_bytes, working_set);
  const int passes = std::max(1, options.steps);
  absl::StatusOr<double> compute = ComputeSeconds(dev, shape, passes, options);
  if (!compute.ok()) return compute.status();
  absl::StatusOr<Timing> strata = RunStrata(dev, shape, passes, options);
  if (!strata.ok()) return strata.status();
  absl::StatusOr<Timing> managed = RunManaged(dev, shape, passes, options);
  if (!managed.ok()) return managed.status();
  absl::StatusOr<Timing> pageable = RunPageable(dev, shape, passes, options);
  if (!pageable.ok()) return pageable.status();

  const double floor = std::max(*compute, static_cast<double>(shape.working_set()) / bandwidth);
  const double cache_floor =
      std::max(*compute, static_cast<double>(shape.must_cross()) / bandwidth);
  std::vector<Result> out;
  for (const auto& [name, side] :
       {std::pair<std::string, const Timing*>{"managed_prefetch", &*managed},
        {"pageable_memcpy", &*pageable}}) {
    Result r;
    r.name = "gpu";
    r.metric = "pass time";
    r.strata = strata->pass_seconds;
    r.baseline = side->pass_seconds;
    r.baseline_name = name;
    r.unit = "s/pass";
    r.higher_is_better = false;
    r.ratio = r.strata / r.baseline;
    r.working_set_bytes = shape.working_set();
    r.tier_bytes = shape.budget;
    r.scale = static_cast<double>(shape.working_set()) / static_cast<double>(shape.budget);
    r.policy = options.policy;
    r.extra = {
        {"floor_s", floor},
        {"vs_floor", floor / strata->pass_seconds},
        {"cache_floor_s", cache_floor},
        {"vs_cache_floor", cache_floor / strata->pass_seconds},
        {"compute_s", *compute},
        {"pinned_bytes_per_s", bandwidth},
        {"must_cross_bytes", static_cast<double>(shape.must_cross())},
        {"strata_moved_bytes", strata->moved_bytes},
        {"strata_bytes_per_s", strata->moved_bytes / strata->pass_seconds},
        {"baseline_bytes_per_s", side->moved_bytes / side->pass_seconds},
        {"layer_bytes", static_cast<double>(shape.layer_bytes)},
    };
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<Result>> RunGpu(const WorkloadOptions& options) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return absl::FailedPreconditionError("gpu: no usable GPU on this machine");
  }
  absl::StatusOr<std::unique_ptr<Device>> dev = Device::Make();
  if (!dev.ok()) return dev.status();
  absl::StatusOr<double> bandwidth = PinnedBandwidth(**dev);
  if (!bandwidth.ok()) return bandwidth.status();
  if (options.progress) {
    options.progress(
        absl::StrFormat("gpu: raw pinned host-to-device bandwidth %.1f GB/s", *bandwidth / 1e9));
  }
  return RunSizes(options, [&](uint64_t ws) { return RunOneSize(**dev, *bandwidth, ws, options); });
}

#endif  // STRATA_HAVE_CUDA

}  // namespace strata::bench
