// train: an offloaded optimizer step in ZeRO-Infinity's manner. Parameters
// p and the two Adam moments m, v (fp32) are `scale` times the host tier;
// every step sweeps all of them block by block (pin p, m, v for writing,
// run Adam on them, unpin), so each step reads from NVMe whatever the tier
// no longer holds and writes back what it evicts. Every step is a recorded
// step (BeginStep/EndStep: the first records the plan the others prefetch
// along); untimed steps warm up first (StepPlan below), then the timed ones.
//
// Against, in the same run and on the same disk:
//   pread_pwrite_swap  what DeepSpeed's optimizer swapper does: the blocks
//                      that fit in the same memory stay in RAM, the others
//                      are read with pread before their update and written
//                      back with pwrite after it (O_DIRECT, one block of
//                      each tensor at a time)
//   mmap               one file holding p, m, v, mapped MAP_SHARED, the
//                      kernel's page cache limited to the same memory
//                      (memory cgroup), MADV_SEQUENTIAL and MADV_WILLNEED
//                      of the next block as hints
// and the floor: max(compute time, the bytes that must cross the disk per
// step / raw O_DIRECT bandwidth), both measured in the same run (compute:
// the same Adam over in-memory blocks; the bytes: each byte the tier cannot
// hold is read and written once a step, reads and writes not overlapped;
// bandwidth: bench/nvme_baseline's sequential io_uring reads and writes,
// 16 deep). This virtual disk's rate swings by a quarter or more within
// seconds, so the bandwidth is measured between the engine's timed steps:
// the timed steps run in rounds of kStepsPerRound, a raw pass before each
// round and after the last, and each round's floor takes the faster reading
// on either side of it. A round's clock stops once the engine's
// write-backs in flight are acknowledged, so that none of its traffic
// falls outside the engine's time or into the raw pass. All three runs
// must end with the same parameters, bit for bit (XXH3 of p), or the
// workload fails.
//
// The report also splits the engine's timed steps as the workload's thread
// saw them: seconds in the engine's calls (Pin, BeginStep, EndStep: waiting
// for blocks) and seconds in Adam itself. Against `compute_s` (the same
// Adam alone) the second shows when the compute ran slower beside the
// engine's I/O than alone, which the floor does not count; and each round's
// own ratio to its floor, best and worst, shows how much the rounds of one
// run differ; and the most bytes a step of one round read, beside the
// mean, shows whether the engine read more in a slow round.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/nvme_baseline.h"
#include "bench/workloads/common.h"
#include "strata/strata.h"

namespace strata::bench {
namespace {

constexpr uint64_t kBlock = uint64_t{2} << 20;
constexpr uint64_t kFloats = kBlock / sizeof(float);

struct Shape {
  uint64_t blocks = 0;       // per tensor
  uint64_t host_bytes = 0;   // the memory every side gets
  uint64_t tensor_bytes() const { return blocks * kBlock; }
  uint64_t working_set() const { return 3 * tensor_bytes(); }
};

// One Adam step on one block of p, m, v; the gradient is that of
// 0.5 * |p - 0.1|^2, so every update depends on the bytes that came back.
void Adam(float* p, float* m, float* v, int step) {
  constexpr float kB1 = 0.9f, kB2 = 0.999f, kLr = 1e-3f, kEps = 1e-8f;
  const float c1 = 1.0f - std::pow(kB1, static_cast<float>(step));
  const float c2 = 1.0f - std::pow(kB2, static_cast<float>(step));
  for (uint64_t i = 0; i < kFloats; ++i) {
    const float g = p[i] - 0.1f;
    m[i] = kB1 * m[i] + (1.0f - kB1) * g;
    v[i] = kB2 * v[i] + (1.0f - kB2) * g * g;
    p[i] -= kLr * (m[i] / c1) / (std::sqrt(v[i] / c2) + kEps);
  }
}

// Initial parameters of block b, elements [first, first + count) (m and v
// start at zero).
void InitParams(uint64_t b, float* p, uint64_t first = 0, uint64_t count = kFloats) {
  for (uint64_t i = 0; i < count; ++i) {
    p[i] = static_cast<float>((b * 7919 + first + i) % 1000) * 1e-3f;
  }
}

// Untimed steps first: the first records the step plan, and the default
// policy settles on one of its candidates after two epochs of 4096
// requests (engine/policy/adaptive.cc), which a trainer's thousands of
// steps pass early; then options.steps timed ones. Every side runs all of
// them, so that all end with the same parameters.
struct StepPlan {
  int warm = 1;
  int timed = 1;
  int total() const { return warm + timed; }
  int first_timed() const { return warm + 1; }
};

StepPlan PlanSteps(const WorkloadOptions& o, uint64_t blocks) {
  constexpr uint64_t kSettle = 2 * 4096;  // requests: three per block
  StepPlan plan;
  const uint64_t settle = (kSettle + 3 * blocks - 1) / (3 * blocks);
  plan.warm = static_cast<int>(
      std::clamp<uint64_t>(settle, 1, std::max(o.max_warm_steps, 1)));
  plan.timed = o.steps;
  return plan;
}

struct RawBandwidth {
  double read = 0, write = 0;  // bytes/s
};

// Seconds a step spent in the engine's calls and in Adam.
struct StepSplit {
  double in_engine = 0;
  double in_compute = 0;
};

struct Timing {
  double step_seconds = 0;   // mean of the timed steps
  uint64_t checksum = 0;     // XXH3 over p's blocks, in order
  double disk_read = 0;      // bytes per timed step, where known
  double disk_written = 0;
  // The engine's only: where a timed step's seconds went, on the
  // workload's thread (mean of the timed steps).
  StepSplit split;
  // The engine's only: seconds and steps of each round of timed steps, and
  // the raw passes around them (one more than the rounds).
  std::vector<double> round_seconds;
  std::vector<int> round_steps;
  std::vector<RawBandwidth> raw;
  // The most bytes a step of one round read: above the mean, a round the
  // engine read more in (rather than one the disk ran slower in).
  double disk_read_worst_round = 0;
};

constexpr int kStepsPerRound = 2;

// --- Strata -------------------------------------------------------------

absl::Status InitStrata(Engine& e, const Tensor (&t)[3], uint64_t blocks) {
  for (uint64_t b = 0; b < blocks; ++b) {
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<Pin> pin = e.Pin(t[i], b, Tier::kHost, Access::kOverwrite);
      if (!pin.ok()) return pin.status();
      if (i == 0) {
        InitParams(b, pin->as<float>().data());
      } else {
        std::memset(pin->bytes().data(), 0, kBlock);
      }
    }
  }
  for (const Tensor& x : t) {
    if (absl::Status s = e.Flush(x); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// One recorded step: Adam over every block triple, pinned for writing.
// Adds where its time went to `split`.
absl::Status StepStrata(Engine& e, const Tensor (&t)[3], uint64_t blocks, int step,
                        StepSplit& split) {
  Clock::time_point mark = Clock::now();
  auto lap = [&mark](double& into) {
    const Clock::time_point now = Clock::now();
    into += std::chrono::duration<double>(now - mark).count();
    mark = now;
  };
  if (absl::Status s = e.BeginStep(); !s.ok()) return s;
  for (uint64_t b = 0; b < blocks; ++b) {
    absl::StatusOr<Pin> pins[3];
    for (int i = 0; i < 3; ++i) {
      pins[i] = e.Pin(t[i], b, Tier::kHost, Access::kWrite);
      if (!pins[i].ok()) return pins[i].status();
    }
    lap(split.in_engine);
    Adam(pins[0]->as<float>().data(), pins[1]->as<float>().data(),
         pins[2]->as<float>().data(), step);
    lap(split.in_compute);
  }
  absl::Status ended = e.EndStep();
  lap(split.in_engine);
  return ended;
}

absl::StatusOr<uint64_t> ChecksumStrata(Engine& e, const Tensor& p, uint64_t blocks) {
  XXH3_state_t* h = XXH3_createState();
  XXH3_64bits_reset(h);
  for (uint64_t b = 0; b < blocks; ++b) {
    absl::StatusOr<Pin> pin = e.Pin(p, b, Tier::kHost, Access::kRead);
    if (!pin.ok()) {
      XXH3_freeState(h);
      return pin.status();
    }
    XXH3_64bits_update(h, pin->bytes().data(), kBlock);
  }
  const uint64_t sum = XXH3_64bits_digest(h);
  XXH3_freeState(h);
  return sum;
}

// Waits until every write-back the host tier started has been acknowledged
// (the end of a round of timed steps: its traffic is the engine's).
absl::Status AwaitWriteBacks(Engine& e) {
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
  while (e.GetStats().tier(Tier::kHost).write_backs_in_flight > 0) {
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError(
          "train: the engine's write-backs were still in flight 60 s after "
          "a step; the disk under --dir is stalled");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return absl::OkStatus();
}

using MeasureRawFn = std::function<absl::StatusOr<RawBandwidth>()>;

// The timed steps run in rounds of kStepsPerRound, with `measure_raw`
// before the first and after each (see the top).
absl::StatusOr<Timing> RunStrata(const Shape& shape, const StepPlan& steps,
                                 const WorkloadOptions& options,
                                 const std::string& dir, const std::string& what,
                                 const MeasureRawFn& measure_raw) {
  EngineOptions o;
  o.host.capacity_bytes = shape.host_bytes;
  o.nvme.path = dir;
  o.default_block_bytes = kBlock;
  o.policy = options.policy;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(o);
  if (!engine.ok()) return engine.status();
  Engine& e = **engine;
  const TensorSpec spec{.dtype = DType::kF32, .shape = {static_cast<int64_t>(shape.blocks),
                                                       static_cast<int64_t>(kFloats)}};
  Tensor t[3];
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Tensor> made = e.CreateTensor(std::string("pmv").substr(i, 1), spec);
    if (!made.ok()) return made.status();
    t[i] = *made;
  }
  if (absl::Status s = InitStrata(e, t, shape.blocks); !s.ok()) return s;
  Progress progress(options, what, steps.total(), "steps");
  Timing timing;
  EngineStats before;
  auto raw_pass = [&]() -> absl::Status {
    if (absl::Status s = AwaitWriteBacks(e); !s.ok()) return s;
    absl::StatusOr<RawBandwidth> raw = measure_raw();
    if (!raw.ok()) return raw.status();
    timing.raw.push_back(*raw);
    return absl::OkStatus();
  };
  Clock::time_point round_start;
  uint64_t round_read_from = 0;  // the NVMe tier's bytes_out at its start
  StepSplit untimed;  // the warm-up steps' split, not reported
  for (int step = 1; step <= steps.total(); ++step) {
    const bool timed = step >= steps.first_timed();
    if (timed && (step - steps.first_timed()) % kStepsPerRound == 0) {
      if (absl::Status s = raw_pass(); !s.ok()) return s;
      if (step == steps.first_timed()) before = e.GetStats();
      round_read_from = e.GetStats().tier(Tier::kNvme).bytes_out;
      round_start = Clock::now();
      timing.round_steps.push_back(0);
    }
    if (absl::Status s = StepStrata(e, t, shape.blocks, step, timed ? timing.split : untimed);
        !s.ok()) {
      return s;
    }
    if (timed) {
      ++timing.round_steps.back();
      const bool round_ends = timing.round_steps.back() == kStepsPerRound ||
                              step == steps.total();
      if (round_ends) {
        if (absl::Status s = AwaitWriteBacks(e); !s.ok()) return s;
        timing.round_seconds.push_back(SecondsSince(round_start));
        timing.step_seconds += timing.round_seconds.back();
        const uint64_t read = e.GetStats().tier(Tier::kNvme).bytes_out - round_read_from;
        timing.disk_read_worst_round =
            std::max(timing.disk_read_worst_round,
                     static_cast<double>(read) / timing.round_steps.back());
      }
    }
    progress.Update(step);
  }
  if (absl::Status s = raw_pass(); !s.ok()) return s;
  progress.Done();
  timing.step_seconds /= steps.timed;
  timing.split.in_engine /= steps.timed;
  timing.split.in_compute /= steps.timed;
  const TierStats& n0 = before.tier(Tier::kNvme);
  const TierStats n1 = e.GetStats().tier(Tier::kNvme);
  timing.disk_read = static_cast<double>(n1.bytes_out - n0.bytes_out) / steps.timed;
  timing.disk_written = static_cast<double>(n1.bytes_in - n0.bytes_in) / steps.timed;
  absl::StatusOr<uint64_t> sum = ChecksumStrata(e, t[0], shape.blocks);
  if (!sum.ok()) return sum.status();
  timing.checksum = *sum;
  for (const Tensor& x : t) {
    if (absl::Status s = e.DropTensor(x); !s.ok()) return s;
  }
  if (absl::Status s = e.Close(); !s.ok()) return s;
  return timing;
}

// --- pread/pwrite swap -----------------------------------------------------

absl::StatusOr<Timing> RunSwap(const Shape& shape, const StepPlan& steps,
                               const WorkloadOptions& options,
                               const std::string& path, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  if (fd < 0) return SysError(errno, absl::StrCat("open ", path, " O_DIRECT"));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // Blocks [0, resident) of each tensor stay in RAM: as many triples as the
  // memory holds, less the one triple of swap buffers.
  const uint64_t triples = shape.host_bytes / (3 * kBlock);
  const uint64_t resident = std::min(shape.blocks, triples > 0 ? triples - 1 : 0);
  absl::StatusOr<std::unique_ptr<AlignedBuffer>> ram =
      AlignedBuffer::Make(std::max<uint64_t>(resident, 1) * 3 * kBlock);
  if (!ram.ok()) return ram.status();
  absl::StatusOr<std::unique_ptr<AlignedBuffer>> swap = AlignedBuffer::Make(3 * kBlock);
  if (!swap.ok()) return swap.status();
  auto block_of = [&](uint64_t b, int i) {
    return b < resident ? (*ram)->data() + (b * 3 + i) * kBlock
                        : (*swap)->data() + i * kBlock;
  };
  auto offset = [&](uint64_t b, int i) {
    return static_cast<uint64_t>(i) * shape.tensor_bytes() + b * kBlock;
  };
  for (uint64_t b = 0; b < shape.blocks; ++b) {
    for (int i = 0; i < 3; ++i) {
      std::byte* buf = block_of(b, i);
      if (i == 0) {
        InitParams(b, reinterpret_cast<float*>(buf));
      } else {
        std::memset(buf, 0, kBlock);
      }
      if (b >= resident) {
        if (absl::Status s = PwriteAll(fd, buf, kBlock, offset(b, i), path); !s.ok()) {
          return s;
        }
      }
    }
  }
  if (::fsync(fd) != 0) return SysError(errno, "fsync " + path);
  Timing timing;
  Progress progress(options, what, steps.total(), "steps");
  Clock::time_point timed_start;
  for (int step = 1; step <= steps.total(); ++step) {
    if (step == steps.first_timed()) timed_start = Clock::now();
    for (uint64_t b = 0; b < shape.blocks; ++b) {
      for (int i = 0; i < 3 && b >= resident; ++i) {
        if (absl::Status s = PreadAll(fd, block_of(b, i), kBlock, offset(b, i), path);
            !s.ok()) {
          return s;
        }
      }
      Adam(reinterpret_cast<float*>(block_of(b, 0)),
           reinterpret_cast<float*>(block_of(b, 1)),
           reinterpret_cast<float*>(block_of(b, 2)), step);
      for (int i = 0; i < 3 && b >= resident; ++i) {
        if (absl::Status s = PwriteAll(fd, block_of(b, i), kBlock, offset(b, i), path);
            !s.ok()) {
          return s;
        }
      }
    }
    progress.Update(step);
  }
  progress.Done();
  timing.step_seconds = SecondsSince(timed_start) / steps.timed;
  timing.disk_read = 3.0 * static_cast<double>((shape.blocks - resident) * kBlock);
  timing.disk_written = timing.disk_read;
  XXH3_state_t* h = XXH3_createState();
  XXH3_64bits_reset(h);
  for (uint64_t b = 0; b < shape.blocks; ++b) {
    if (b >= resident) {
      if (absl::Status s = PreadAll(fd, (*swap)->data(), kBlock, offset(b, 0), path);
          !s.ok()) {
        XXH3_freeState(h);
        return s;
      }
    }
    XXH3_64bits_update(h, block_of(b, 0), kBlock);
  }
  timing.checksum = XXH3_64bits_digest(h);
  XXH3_freeState(h);
  return timing;
}

// --- mmap + page cache --------------------------------------------------

absl::StatusOr<Timing> RunMmap(const Shape& shape, const StepPlan& steps,
                               const WorkloadOptions& options,
                               const std::string& path, const std::string& what,
                               const MemoryLimit* limit) {
  // p, then m, then v; m and v start as zeros.
  absl::Status written = WriteFile(path, shape.working_set(), [&](uint64_t page, std::byte* out) {
    const uint64_t off = page * 4096;
    if (off >= shape.tensor_bytes()) {
      std::memset(out, 0, 4096);
      return;
    }
    InitParams(off / kBlock, reinterpret_cast<float*>(out),
               (off % kBlock) / sizeof(float), 4096 / sizeof(float));
  });
  if (!written.ok()) return written;
  absl::StatusOr<std::vector<double>> r = RunInChild(limit, [&]() -> absl::StatusOr<std::vector<double>> {
    const int fd = ::open(path.c_str(), O_RDWR);
    if (fd < 0) return SysError(errno, "open " + path);
    void* map = ::mmap(nullptr, shape.working_set(), PROT_READ | PROT_WRITE,
                       MAP_SHARED, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) return SysError(errno, "mmap " + path);
    auto* base = static_cast<std::byte*>(map);
    // The hints are what the baseline is: without them it is another one.
    if (::madvise(base, shape.working_set(), MADV_SEQUENTIAL) != 0) {
      const int err = errno;
      ::munmap(map, shape.working_set());
      return SysError(err, "madvise(MADV_SEQUENTIAL) " + path);
    }
    auto at = [&](uint64_t b, int i) {
      return base + static_cast<uint64_t>(i) * shape.tensor_bytes() + b * kBlock;
    };
    Progress progress(options, what, steps.total(), "steps");
    Clock::time_point timed_start;
    for (int step = 1; step <= steps.total(); ++step) {
      if (step == steps.first_timed()) timed_start = Clock::now();
      for (uint64_t b = 0; b < shape.blocks; ++b) {
        if (b + 1 < shape.blocks) {
          for (int i = 0; i < 3; ++i) ::madvise(at(b + 1, i), kBlock, MADV_WILLNEED);
        }
        Adam(reinterpret_cast<float*>(at(b, 0)), reinterpret_cast<float*>(at(b, 1)),
             reinterpret_cast<float*>(at(b, 2)), step);
      }
      progress.Update(step);
    }
    progress.Done();
    const double secs = SecondsSince(timed_start) / steps.timed;
    const uint64_t sum = XXH3_64bits(base, shape.tensor_bytes());
    ::munmap(map, shape.working_set());
    // A uint64 does not survive a double: send it in two halves.
    return std::vector<double>{secs, static_cast<double>(sum >> 32),
                               static_cast<double>(sum & 0xffffffffu)};
  });
  if (!r.ok()) return r.status();
  Timing timing;
  timing.step_seconds = (*r)[0];
  timing.checksum = (static_cast<uint64_t>((*r)[1]) << 32) | static_cast<uint64_t>((*r)[2]);
  return timing;
}

// --- the floor -------------------------------------------------------------

// Seconds of Adam over `blocks` triples already in memory.
absl::StatusOr<double> ComputeSeconds(uint64_t blocks) {
  absl::StatusOr<std::unique_ptr<AlignedBuffer>> buf = AlignedBuffer::Make(3 * kBlock);
  if (!buf.ok()) return buf.status();
  auto* f = reinterpret_cast<float*>((*buf)->data());
  InitParams(0, f);
  const Clock::time_point start = Clock::now();
  for (uint64_t b = 0; b < blocks; ++b) {
    Adam(f, f + kFloats, f + 2 * kFloats, 2 + static_cast<int>(b % 3));
  }
  return SecondsSince(start);
}

absl::StatusOr<RawBandwidth> MeasureRaw(const std::string& path, uint64_t bytes,
                                        uint64_t memory) {
  const uint64_t total = std::max<uint64_t>(bytes / kBlock, 16) * kBlock;
  absl::StatusOr<RawIoResult> w = RawSequentialWrite(path, kBlock, 16, total, memory);
  if (!w.ok()) return w.status();
  absl::StatusOr<RawIoResult> r = RawSequentialRead(path, kBlock, 16, total, memory);
  if (!r.ok()) return r.status();
  std::filesystem::remove(path);
  return RawBandwidth{r->bytes_per_second(), w->bytes_per_second()};
}

absl::StatusOr<std::vector<Result>> RunOneSize(uint64_t working_set,
                                               const WorkloadOptions& options) {
  Shape shape;
  shape.host_bytes = options.tier_bytes;
  shape.blocks = std::max<uint64_t>(working_set / (3 * kBlock), 1);
  const double scale = static_cast<double>(shape.working_set()) / options.tier_bytes;
  const std::string tag = absl::StrFormat("train %.3gx (%s)", scale,
                                          Bytes(shape.working_set()));
  const std::string dir = options.dir + "/train";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);

  const StepPlan steps = PlanSteps(options, shape.blocks);
  // The floor's bandwidth, between the engine's rounds of steps (see the top).
  absl::StatusOr<Timing> strata = RunStrata(
      shape, steps, options, dir + "/strata", tag + ", strata",
      [&] { return MeasureRaw(dir + "/raw.bin", shape.working_set(), shape.host_bytes); });
  if (!strata.ok()) return strata.status();
  std::filesystem::remove(dir + "/raw.bin");
  absl::StatusOr<Timing> swap = RunSwap(shape, steps, options, dir + "/swap.bin", tag + ", pread/pwrite swap");
  if (!swap.ok()) return swap.status();
  std::filesystem::remove(dir + "/swap.bin");
  // The child's own memory (stack, code, page tables) beside the cache.
  std::optional<MemoryLimit> limit = MemoryLimit::Create(shape.host_bytes + (uint64_t{16} << 20));
  absl::StatusOr<Timing> mmap = RunMmap(shape, steps, options, dir + "/mmap.bin",
                                        tag + ", mmap", limit ? &*limit : nullptr);
  if (!mmap.ok()) return mmap.status();
  std::filesystem::remove(dir + "/mmap.bin");
  for (const Timing* other : {&*swap, &*mmap}) {
    if (other->checksum != strata->checksum) {
      return absl::DataLossError(absl::StrFormat(
          "train: %s: the baselines' parameters differ from the engine's after "
          "%d steps (XXH3 %016x, %016x, %016x): a bug in the engine or the "
          "workload",
          tag, steps.total(), strata->checksum, swap->checksum, mmap->checksum));
    }
  }

  // The floor: each byte the tier cannot hold crosses the disk twice a step,
  // at the faster raw reading on either side of the round the step ran in.
  const double must_cross = static_cast<double>(
      shape.working_set() > shape.host_bytes ? shape.working_set() - shape.host_bytes : 0);
  absl::StatusOr<double> computed = ComputeSeconds(shape.blocks);
  if (!computed.ok()) return computed.status();
  const double compute = *computed;
  const std::vector<RawBandwidth>& raws = strata->raw;
  RawBandwidth raw;  // the mean of the rounds' readings, for the report
  double io_floor = 0, floor = 0;
  double best_round = HUGE_VAL, worst_round = 0;  // a round's time / its floor
  for (size_t r = 0; r < strata->round_steps.size(); ++r) {
    const RawBandwidth round{std::max(raws[r].read, raws[r + 1].read),
                             std::max(raws[r].write, raws[r + 1].write)};
    const double io = must_cross / round.read + must_cross / round.write;
    const int n = strata->round_steps[r];
    io_floor += io * n;
    floor += std::max(compute, io) * n;
    const double round_ratio = strata->round_seconds[r] / n / std::max(compute, io);
    best_round = std::min(best_round, round_ratio);
    worst_round = std::max(worst_round, round_ratio);
    raw.read += round.read * n;
    raw.write += round.write * n;
  }
  io_floor /= steps.timed;
  floor /= steps.timed;
  raw.read /= steps.timed;
  raw.write /= steps.timed;
  const auto [slow_read, fast_read] = std::minmax_element(
      raws.begin(), raws.end(), [](const auto& a, const auto& b) { return a.read < b.read; });
  const auto [slow_write, fast_write] = std::minmax_element(
      raws.begin(), raws.end(), [](const auto& a, const auto& b) { return a.write < b.write; });

  std::vector<Result> results;
  auto add = [&](const std::string& baseline_name, const Timing& base, std::string note) {
    Result r;
    r.name = "train";
    r.metric = "step_time";
    r.strata = strata->step_seconds;
    r.baseline = base.step_seconds;
    r.baseline_name = baseline_name;
    r.unit = "s/step";
    r.ratio = r.strata / r.baseline;
    r.scale = scale;
    r.working_set_bytes = shape.working_set();
    r.tier_bytes = shape.host_bytes;
    r.policy = options.policy;
    r.extra = {{"floor_s", floor},
               {"compute_s", compute},
               {"io_floor_s", io_floor},
               {"strata_vs_floor", strata->step_seconds / floor},
               {"strata_vs_floor_best_round", best_round},
               {"strata_vs_floor_worst_round", worst_round},
               {"strata_in_engine_s", strata->split.in_engine},
               {"strata_in_compute_s", strata->split.in_compute},
               {"raw_read_bytes_per_s", raw.read},
               {"raw_write_bytes_per_s", raw.write},
               {"raw_passes", static_cast<double>(raws.size())},
               {"raw_read_slowest_bytes_per_s", slow_read->read},
               {"raw_read_fastest_bytes_per_s", fast_read->read},
               {"raw_write_slowest_bytes_per_s", slow_write->write},
               {"raw_write_fastest_bytes_per_s", fast_write->write},
               {"must_cross_bytes_per_step", 2 * must_cross},
               {"strata_read_bytes_per_step", strata->disk_read},
               {"strata_read_bytes_per_step_worst_round", strata->disk_read_worst_round},
               {"strata_written_bytes_per_step", strata->disk_written}};
    r.note = std::move(note);
    results.push_back(std::move(r));
  };
  add("pread_pwrite_swap", *swap, "");
  add("mmap", *mmap, limit ? "" : "page cache not limited (no memory cgroup): mmap had all RAM");
  results.back().extra["limited"] = limit ? 1 : 0;
  std::filesystem::remove_all(dir);
  return results;
}

}  // namespace

absl::StatusOr<std::vector<Result>> RunTrain(const WorkloadOptions& options) {
  if (options.steps < 1) {
    return absl::InvalidArgumentError("train: --steps (timed steps) must be at least 1");
  }
  return RunSizes(options, [&](uint64_t ws) { return RunOneSize(ws, options); });
}

}  // namespace strata::bench
