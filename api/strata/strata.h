// Strata: an embeddable storage engine that pages tensor blocks between tiers.
//
// A trainer opens one `Engine`, creates tensors, and pins the block it computes
// on in the tier it needs; the engine moves blocks along its chain of tiers
// (GPU VRAM, host RAM, other nodes' RAM, NVMe) behind its back. Processes of
// one node share tensors through a node segment (Tier::kShm, see
// CreateSharedTensor).
//
//   auto engine = strata::Engine::Open({});
//   auto t = (*engine)->CreateTensor("layer3.w", {.dtype = strata::DType::kF32,
//                                                 .shape = {8192, 8192}});
//   auto pin = (*engine)->Pin(*t, /*block=*/0, strata::Tier::kHost,
//                             strata::Access::kWrite);
//   std::span<float> w = pin->as<float>();
//   // ... the Pin unpins when it goes out of scope.
//
// Errors are `absl::Status` values whose message says what to do. No exception
// crosses this API. Every method of `Engine` is thread-safe unless it says
// otherwise.
#ifndef STRATA_STRATA_H_
#define STRATA_STRATA_H_

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata {

namespace internal {
class Catalog;
class EngineCore;
struct TensorState;
struct PrefetchState;
// How Pin's inline unpin changes a copy's state word (engine/copy_state.h
// holds the layout and checks these against it).
inline constexpr uint64_t kUnpinRead = 1;
inline constexpr uint64_t kUnpinWrite = (uint64_t{1} << 16) + 1;
inline constexpr uint64_t kWaitersBit = uint64_t{1} << 20;
}  // namespace internal

// Where a copy of a block can live, fastest first. gpu, host and shm are
// pinnable (a pin hands out their memory); remote and nvme hold copies only.
enum class Tier : uint8_t { kGpu, kHost, kShm, kRemote, kNvme };
inline constexpr int kNumTiers = 5;

// CUDA objects cross this header as opaque handles, so that it compiles
// without CUDA headers: a cudaStream_t converts to GpuStream implicitly; a
// GpuEvent is a cudaEvent_t (static_cast it back).
using GpuStream = void*;
using GpuEvent = void*;

// "gpu", "host", "shm", "remote" or "nvme" ("unknown" for a value outside
// the enum).
std::string_view TierName(Tier tier);

// How a pin uses its block. `kRead` pins are shared; a `kWrite` pin is
// exclusive (no other pin of the block may exist) and marks the copy dirty.
// `kOverwrite` is a write pin whose caller overwrites every byte: when the
// block is not resident the engine does not read its old bytes from a lower
// tier, and the pinned bytes are unspecified until written. Its Pin reports
// access() == kWrite.
enum class Access : uint8_t { kRead, kWrite, kOverwrite };

enum class DType : uint8_t { kU8, kI8, kF16, kBF16, kI32, kF32, kI64, kF64 };

// Size of one element of `dtype` in bytes.
size_t DTypeSize(DType dtype);

// What `CreateTensor` makes: an array of `dtype` with `shape`, split into
// blocks of `block_bytes` (0: `EngineOptions::default_block_bytes`). The last
// block may be shorter. `block_bytes` must be a multiple of the element size
// and of 4096.
struct TensorSpec {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t block_bytes = 0;
};

// A half-open range of block indices; `end` is clamped to the tensor's block
// count, so `BlockRange::All()` names every block.
struct BlockRange {
  uint64_t begin = 0;
  uint64_t end = std::numeric_limits<uint64_t>::max();
  static BlockRange All() { return {}; }
  static BlockRange One(uint64_t block) { return {block, block + 1}; }
};

struct HostTierOptions {
  // Size of the host arena, reserved once at Open. Must be at least one block.
  uint64_t capacity_bytes = uint64_t{256} << 20;
  // NUMA node to bind the arena to; -1: the node of the calling thread.
  int numa_node = -1;
  // Ask for transparent huge pages (madvise) for the arena.
  bool huge_pages = true;
};

struct NvmeTierOptions {
  // Directory for the block file; created, with its parents, if missing.
  // Must be writable.
  std::string path = "./strata-data";
  // Most bytes the block file may grow to (space is preallocated in chunks).
  uint64_t capacity_bytes = uint64_t{64} << 30;
  // io_uring queue depth (1..4096).
  uint32_t queue_depth = 64;
  // Register the host arena and the file with io_uring (fixed buffers). When
  // the kernel refuses (RLIMIT_MEMLOCK), the engine says so once through
  // `EngineOptions::log` and goes on unregistered.
  bool register_buffers = true;
};

// Finds the block servers a remote tier borrows memory from. Two come with
// Strata: StaticBootstrap (a list, given or read from a file) and
// MpiBootstrap (api/strata/mpi.h: the ranks of an MPI job exchange the
// addresses of the servers they run). Engine::Open asks it once.
//
// Thread safety: Servers() may be called from any thread.
class Bootstrap {
 public:
  virtual ~Bootstrap() = default;
  // The servers, as "host:port" (a strata-blockd, or a strata::BlockServer
  // of another process). An error fails Engine::Open with it.
  virtual absl::StatusOr<std::vector<std::string>> Servers() const = 0;
};

// A fixed list of servers: what RemoteTierOptions::servers stands for.
std::shared_ptr<const Bootstrap> StaticBootstrap(std::vector<std::string> servers);

// The servers listed in the file at `path`, one "host:port" a line (blank
// lines and lines starting with '#' skipped), read now. kNotFound when the
// file cannot be read; kInvalidArgument naming the line that is not
// host:port, or when it lists none.
//
//   # /etc/strata/servers
//   10.0.0.7:7400
//   10.0.0.8:7400
absl::StatusOr<std::shared_ptr<const Bootstrap>> StaticBootstrapFromFile(
    const std::string& path);

struct RemoteTierOptions {
  // strata-blockd servers lending RAM, as "host:port". Each block's copy
  // goes to `replication` of them, chosen by rendezvous hashing. Leave it
  // empty when `bootstrap` names them.
  std::vector<std::string> servers;
  // Where the servers come from instead of `servers` (StaticBootstrap-
  // FromFile, MpiBootstrap); asked once at Open. Null: `servers`.
  std::shared_ptr<const Bootstrap> bootstrap;
  // Copies of each block (1..3, at most the number of servers); with 2,
  // losing one server loses no block.
  int replication = 1;
  // The cluster's shared secret, as the servers were started with.
  std::string secret;
  // libfabric provider: "tcp;ofi_rxm" anywhere, "verbs;ofi_rxm", "efa", ...
  std::string provider = "tcp;ofi_rxm";
  // Bytes borrowed from each server at Open (a multiple of 4096); the
  // tier holds servers x capacity_bytes / replication.
  uint64_t capacity_bytes = uint64_t{1} << 30;
  // A server found lost (a transfer failed or timed out) is asked again
  // after this long (then twice as long, up to 32x, while it stays away).
  // When it answers, new blocks go there again; the copies it held before
  // stay lost (reads of blocks only there are kDataLoss), and with
  // replication 2 or more the blocks that lost a copy are copied again to
  // another server in the background. Must be positive.
  absl::Duration reconnect_backoff = absl::Seconds(1);
};

struct GpuTierOptions {
  // Bytes of VRAM reserved once at Open for the GPU tier's pool (a multiple
  // of 4096); 0: `capacity_fraction` of the device's free memory at Open.
  uint64_t capacity_bytes = 0;
  double capacity_fraction = 0.5;
  // CUDA device index.
  int device = 0;
};

// The node segment: a POSIX shared-memory object /strata-<name> the
// processes of one node attach to, holding shared tensors (see
// Engine::CreateSharedTensor). Used when `EngineOptions::tiers` holds kShm.
struct ShmTierOptions {
  // The segment's name: 1 to 200 of [A-Za-z0-9_.-].
  std::string name;
  enum class Open : uint8_t {
    kCreate,          // a new segment; kAlreadyExists if there is one
    kAttach,          // an existing one; kNotFound if there is none
    kCreateOrAttach,  // whichever applies (races between processes are safe)
  };
  Open open = Open::kCreateOrAttach;
  // When creating: bytes for blocks and tensor tables (a multiple of 4096),
  // and the most processes attached and tensors held at once.
  uint64_t capacity_bytes = uint64_t{1} << 30;
  uint32_t max_processes = 32;
  uint32_t max_tensors = 1024;
  // When creating: a directory (created if missing) for the segment's
  // spill file, strata-<name>.spill. When the segment is full, unpinned
  // blocks (the clock picks them) are written there, O_DIRECT and
  // checksummed, and come back on the next pin by any
  // process. Empty: no spill file; a full segment then refuses with
  // kResourceExhausted. Processes that attach use the creator's.
  // Eviction in the segment follows EngineOptions::policy of the process
  // that creates it, as a clock over the segment's blocks: "lru" is CLOCK,
  // "lfu" and "default" GCLOCK (pins raise a block's count, to 7 and 3;
  // "hinted" falls back to "default": hints do not cross processes).
  std::string spill_path;
};

// The one validated value that configures an engine. `Engine::Open` returns
// kInvalidArgument naming the field for every bad value.
struct EngineOptions {
  // The tier chain, fastest first: the tiers that take part, in the order a
  // block moves down through them when evicted. Each tier at most once, in
  // the order of the Tier enum, and kHost always (every copy between two
  // tiers that cannot talk directly stages through host memory). A dirty
  // block evicted from a tier is written to the first lower tier that takes
  // it; a miss loads from the nearest tier holding the block.
  //   {Tier::kHost, Tier::kNvme}   host RAM over an NVMe block file (default)
  //   {Tier::kHost}                host only: dirty blocks cannot be evicted
  //   {Tier::kGpu, Tier::kHost, Tier::kNvme}   VRAM over host over NVMe
  //   {Tier::kHost, Tier::kShm, Tier::kNvme}  and the node segment, for
  //                                shared tensors (CreateSharedTensor)
  // Tiers not built into this version (remote without libfabric; gpu
  // without CUDA) are kUnimplemented; gpu on a machine without a usable GPU
  // is kFailedPrecondition. kShm holds shared tensors only: blocks of
  // private tensors move between the other tiers.
  std::vector<Tier> tiers = {Tier::kHost, Tier::kNvme};
  HostTierOptions host;
  NvmeTierOptions nvme;      // read when `tiers` holds kNvme
  RemoteTierOptions remote;  // read when `tiers` holds kRemote
  GpuTierOptions gpu;        // read when `tiers` holds kGpu
  ShmTierOptions shm;        // read when `tiers` holds kShm
  // Block size for tensors whose spec leaves it 0: a multiple of 4096.
  uint64_t default_block_bytes = uint64_t{2} << 20;
  // Sequential readahead: when demand misses of a tensor come in block order
  // (up or down), the engine loads this many blocks ahead of the reader, into
  // the tier of the misses, on its mover thread. -1: automatic (1/8 of that
  // tier's blocks, at least 1, at most 32); 0: off. Never more than half the
  // tier's blocks (a tier of one block reads nothing ahead).
  int readahead_blocks = -1;
  // Eviction policy: "default" (frequency-aware; follows "hinted" once
  // steps are recorded, see BeginStep), "lru", "lfu" or "hinted"
  // (evicts by predicted next use, learned from recorded steps).
  std::string policy = "default";
  // How long a pin waits for a conflicting pin (a write pin held by another
  // thread, or read pins when asking to write) before kDeadlineExceeded.
  absl::Duration pin_wait_timeout = absl::Seconds(30);
  // How long a caller waits for one transfer of a tier (a load, a Flush's
  // write) before kDeadlineExceeded. The transfer's frame stays reserved
  // until the device answers; Close waits this long for transfers in flight.
  absl::Duration io_timeout = absl::Seconds(30);
  // Where the engine reports rare events (fallbacks, repeated I/O retries).
  // Empty: standard error.
  std::function<void(std::string_view)> log;
};

// Handle to a tensor of one engine. Cheap to copy; stays valid after
// `DropTensor` (calls with it then return kNotFound).
class Tensor {
 public:
  Tensor() = default;
  const std::string& name() const { return name_; }
  const TensorSpec& spec() const { return spec_; }
  uint64_t num_blocks() const { return num_blocks_; }
  uint64_t block_bytes() const { return block_bytes_; }
  uint64_t size_bytes() const { return size_bytes_; }
  // Bytes in block `block` (the last block may be shorter); 0 if out of range.
  uint64_t block_size(uint64_t block) const;

 private:
  friend class internal::Catalog;
  friend class internal::EngineCore;
  std::shared_ptr<internal::TensorState> state_;
  std::string name_;
  TensorSpec spec_;
  uint64_t num_blocks_ = 0;
  uint64_t block_bytes_ = 0;
  uint64_t size_bytes_ = 0;
};

// A caller's lease on one copy of one block. While it lives the copy is
// neither evicted nor moved. Move-only; unpins in its destructor. A Pin must
// not outlive its engine. Not thread-safe: one thread uses a Pin at a time.
class Pin {
 public:
  Pin() = default;
  Pin(Pin&& other) noexcept
      : core_(other.core_),
        word_(other.word_),
        data_(other.data_),
        size_(other.size_),
        block_(other.block_),
        tier_(other.tier_),
        access_(other.access_),
        released_(other.released_),
        aux_(other.aux_) {
    other.Forget();
  }
  Pin& operator=(Pin&& other) noexcept {
    if (this != &other) {
      Drop();
      core_ = other.core_;
      word_ = other.word_;
      data_ = other.data_;
      size_ = other.size_;
      block_ = other.block_;
      tier_ = other.tier_;
      access_ = other.access_;
      released_ = other.released_;
      aux_ = other.aux_;
      other.Forget();
    }
    return *this;
  }
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  ~Pin() { Drop(); }

  // The block's bytes. Writing through a kRead pin is a bug in the caller.
  // For a GPU pin they are device memory: pass them to kernels, never
  // touch them on the host (device_ptr() says so in its type).
  std::span<std::byte> bytes() const { return {data_, size_}; }
  template <typename T>
  std::span<T> as() const {
    return {reinterpret_cast<T*>(data_), size_ / sizeof(T)};
  }
  // Bytes in the pinned block.
  size_t size() const { return size_; }

  // GPU pins. The engine moves bytes on its own CUDA streams; a caller's
  // kernels run on the caller's streams, ordered with the engine's copies
  // through events:
  //
  //   auto pin = engine->PinAsync(t, b, strata::Tier::kGpu, strata::Access::kRead);
  //   pin->WaitOn(stream);                   // cudaStreamWaitEvent
  //   kernel<<<g, b, 0, stream>>>(static_cast<const float*>(pin->device_ptr()));
  //   pin->ReleaseAfter(stream);             // unpinned; frame kept until
  //                                          // the kernel finished
  //
  // (Engine::Pin works the same way, but returns only once the bytes are in
  // VRAM.)
  //
  // The block's device memory (a CUDA device pointer into the engine's VRAM
  // pool), valid while pinned; null for pins of other tiers. Until the
  // pin's ready event completed it may still be being filled: touch it only
  // from work ordered after that event (WaitOn).
  void* device_ptr() const { return tier_ == Tier::kGpu ? data_ : nullptr; }
  // The event of the copy that brought the block's bytes into VRAM (a
  // cudaEvent_t; the engine owns it and keeps it while the pin lives). For
  // a pin from Engine::Pin() it is complete, and waiting on it costs the
  // device nothing; for one from Engine::PinAsync() it may still be pending.
  // Errors: kFailedPrecondition for an empty pin, one of another tier, or a
  // fenced GPU tier; the copy's own error (kInternal and the like, with the
  // CUDA error) when the engine already saw that copy fail — the pin's
  // device memory then holds no valid bytes (release the pin, pin again).
  // A failure the engine has not seen yet is not reported here: use
  // Synchronize() for a sure answer.
  absl::StatusOr<GpuEvent> ready_event() const;
  // Makes `stream` wait (on the device, without blocking the CPU) for the
  // block's bytes: cudaStreamWaitEvent(stream, ready_event()). Errors: those
  // of ready_event().
  absl::Status WaitOn(GpuStream stream) const;
  // Blocks the calling thread until the block's bytes are in VRAM (at once
  // for a pin from Engine::Pin()), and returns the error of the copy that
  // brought them (see ready_event()), or kDeadlineExceeded after
  // EngineOptions::io_timeout. For tests, and for callers that must know
  // before they go on; a training loop uses WaitOn instead.
  absl::Status Synchronize() const;
  // A stream-ordered unpin: unpins now, and the engine neither copies the
  // block out of its frame (a write pin's demotion) nor reuses the frame
  // before the work enqueued on `stream` so far has finished. On error the
  // pin is kept (release it once the stream finished). kFailedPrecondition
  // for an empty pin, one of another tier, or a fenced GPU tier. Works for
  // a pin whose copy is still in flight (PinAsync) too: the copy is
  // neither evicted nor its frame reused before it finished either.
  absl::Status ReleaseAfter(GpuStream stream);
  // The same for work on several streams (a block read by kernels on two
  // streams): the frame is kept until every one of them got there. An
  // empty list unpins at once. On error the pin is kept.
  absl::Status ReleaseAfter(std::span<const GpuStream> streams);
  Tier tier() const { return tier_; }
  Access access() const { return access_; }
  uint64_t block() const { return block_; }
  bool valid() const { return word_ != nullptr; }

  // Unpins now (a shm write pin seals its bytes). A second call returns
  // kFailedPrecondition.
  absl::Status Release();

 private:
  friend class internal::EngineCore;
  // Unpins if this holds a pin; builds no Status (the destructor's path).
  // Inline, so that a resident pin and its unpin cost two atomic operations
  // and almost nothing else.
  void Drop() noexcept {
    if (word_ == nullptr) return;
    if (aux_ != nullptr) {  // a pin of a shared tensor (tier kShm)
      DropShared();
      return;
    }
    const uint64_t old = word_->fetch_sub(
        access_ == Access::kRead ? internal::kUnpinRead : internal::kUnpinWrite,
        std::memory_order_release);
    assert((old & 0xFFFF) != 0 && "unpin of a copy that holds no pin");
    if (old & internal::kWaitersBit) WakeWaiters();
    word_ = nullptr;
    data_ = nullptr;
    size_ = 0;
    released_ = true;
  }
  void WakeWaiters() noexcept;
  // A shm pin's unpin: its count lies in the node segment, and a write pin
  // seals there.
  void DropShared() noexcept;
  void Forget() noexcept {
    core_ = nullptr;
    word_ = nullptr;
    data_ = nullptr;
    size_ = 0;
    released_ = false;
    aux_ = nullptr;
  }

  internal::EngineCore* core_ = nullptr;
  std::atomic<uint64_t>* word_ = nullptr;  // the block's state word
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  uint64_t block_ = 0;
  Tier tier_ = Tier::kHost;
  Access access_ = Access::kRead;
  bool released_ = false;
  void* aux_ = nullptr;  // shm pins: this process's pin count of the block
};

// What `Prefetch` returns: wait on it, or drop it (the transfers go on).
class PrefetchHandle {
 public:
  PrefetchHandle() = default;
  // Blocks until every block of the request is resident or failed; returns the
  // first error.
  absl::Status Wait() const;
  // True when every transfer has finished.
  bool done() const;

 private:
  friend class internal::EngineCore;
  std::shared_ptr<internal::PrefetchState> state_;
};

struct LatencySummary {
  uint64_t samples = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};

// One tier's counters. A snapshot is read field by field while other
// threads pin and evict, so it describes nearby moments rather than one
// instant; it is still consistent: pinned_bytes <= used_bytes <=
// capacity_bytes.
struct TierStats {
  Tier tier = Tier::kHost;
  bool present = false;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t pinned_bytes = 0;   // host: bytes of blocks with a live pin
  uint64_t hits = 0;           // host: pins served by a resident copy
  uint64_t misses = 0;         // host: pins that had to load the copy
  uint64_t bytes_in = 0;       // bytes copied into this tier
  uint64_t bytes_out = 0;      // bytes copied out of this tier
  uint64_t evictions = 0;      // copies dropped to make room
  uint64_t write_backs = 0;    // dirty copies acknowledged by a lower tier
  // Transfers of this tier that failed (I/O errors, checksum mismatches).
  // Each one reaches a caller: the pin or Prefetch that waited for it, or,
  // for a background write-back, the next Flush of the block's tensor
  // (the block stays dirty and is written again) — except the speculative
  // loads counted below.
  uint64_t errors = 0;
  // Of `errors`: loads nobody waited for (readahead, step plans) that
  // failed; a pin that needs the block loads it again and gets its own
  // result.
  uint64_t speculative_errors = 0;
  // Write-backs from this tier submitted and not yet acknowledged. Read it
  // first: when it is 0, the counters above include every write-back that
  // finished before this snapshot.
  uint64_t write_backs_in_flight = 0;
};

struct EngineStats {
  TierStats tiers[kNumTiers];
  // Hits are sampled (1 in 64) to keep the hot path free of clock reads.
  LatencySummary pin_hit_latency;
  LatencySummary pin_miss_latency;
  const TierStats& tier(Tier t) const { return tiers[static_cast<int>(t)]; }
};

// Node segments, for tools (the `strata shm` command) and operators.
struct ShmProcessInfo {
  int pid = 0;
  uint64_t read_pins = 0;
  uint64_t write_pins = 0;
};
struct ShmSegmentInfo {
  std::string name;             // without the "/strata-" prefix
  uint32_t layout_version = 0;
  absl::Time created;
  uint64_t capacity_bytes = 0;  // for blocks and tensor tables
  uint64_t used_bytes = 0;
  uint64_t pinned_bytes = 0;
  uint64_t tensors = 0;
  uint64_t blocks = 0;
  uint64_t resident_blocks = 0;
  uint64_t spilled_blocks = 0;  // in the spill file only
  std::string spill_path;       // the spill file; empty: none
  uint64_t spills = 0;          // blocks evicted to it so far
  uint64_t spill_loads = 0;     // blocks read back from it
  uint32_t max_processes = 0;
  uint32_t max_tensors = 0;
  // Processes attached now (the inspecting process left out), and what
  // was reclaimed from processes that died attached.
  std::vector<ShmProcessInfo> processes;
  uint64_t dead_reclaimed = 0;
  uint64_t pins_reclaimed = 0;
  uint64_t lock_repairs = 0;
};
// Names of the node segments in /dev/shm (without "strata-").
absl::StatusOr<std::vector<std::string>> ListShmSegments();
// Attaches to segment `name` for a moment (reclaiming what dead processes
// left) and describes it. kNotFound if there is none; kFailedPrecondition
// if it is corrupt or of another layout version.
absl::StatusOr<ShmSegmentInfo> InspectShmSegment(std::string_view name);
// Unlinks segment `name`: processes attached keep their mapping, new ones
// cannot attach. kNotFound if there is none.
absl::Status RemoveShmSegment(std::string_view name);

class Engine {
 public:
  // Validates `options`, builds the tier chain (reserves the host arena,
  // opens the NVMe directory, reserves the GPU pool and registers the host
  // arena with CUDA). Errors: kInvalidArgument (a bad field, named),
  // kUnimplemented (a tier not built into this version), kPermissionDenied /
  // kNotFound / kFailedPrecondition (NVMe path; no usable GPU for
  // Tier::kGpu), kResourceExhausted (arena or GPU pool cannot be reserved).
  static absl::StatusOr<std::unique_ptr<Engine>> Open(EngineOptions options);

  // Closes on destruction. Live pins at destruction are a caller bug
  // (debug-checked); dirty blocks not flushed are discarded.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Creates a tensor; its blocks read as zeros until written.
  // Errors: kInvalidArgument (empty/too long name, empty/zero/negative/
  // overflowing shape, unknown dtype, bad block size), kAlreadyExists,
  // kFailedPrecondition (engine closed).
  absl::StatusOr<Tensor> CreateTensor(std::string_view name,
                                      const TensorSpec& spec);
  // Finds a tensor by name. kNotFound if there is none.
  absl::StatusOr<Tensor> OpenTensor(std::string_view name);

  // Shared tensors live in the node segment (EngineOptions::shm), seen by
  // every process attached to it; pin their blocks in Tier::kShm, zero-copy:
  // every process sees the same pages. A write pin is exclusive across
  // processes and writes a shadow copy: other processes see its bytes only
  // once it is released (sealed), never half-written. Blocks never written
  // read as zeros. A process that dies (SIGKILL included) loses its pins
  // within a second; its unsealed writes are discarded.
  //
  //   auto t = engine->CreateSharedTensor("emb", {.dtype = DType::kF32,
  //                                               .shape = {1 << 20, 256}});
  //   // in another process attached to the same segment:
  //   auto t = engine->OpenSharedTensor("emb");
  //   auto pin = engine->Pin(*t, 0, Tier::kShm, Access::kRead);
  //
  // Creating is exclusive: of processes racing to create one name, one
  // wins, the others get kAlreadyExists, or (with `open_existing`) open it.
  // Errors: kFailedPrecondition (kShm not in EngineOptions::tiers; engine
  // closed), kInvalidArgument (as CreateTensor), kAlreadyExists (exists; or
  // exists with another spec, with `open_existing`), kResourceExhausted
  // (the segment's directory or capacity is full).
  absl::StatusOr<Tensor> CreateSharedTensor(std::string_view name,
                                            const TensorSpec& spec,
                                            bool open_existing = false);
  // Opens a shared tensor another process (or this one) created. kNotFound
  // if the segment has none of that name.
  absl::StatusOr<Tensor> OpenSharedTensor(std::string_view name);
  // For a shared tensor: removes it from the segment for every process
  // (their handles then return kNotFound); kFailedPrecondition while any
  // process pins one of its blocks.
  // Otherwise: forgets a tensor and frees its copies in every tier, with the errors of
  // its background write-backs. kFailedPrecondition while any of its blocks
  // is pinned (nothing is dropped then); kNotFound if unknown, already
  // dropped, or being dropped by another thread. Pins, Prefetch and Flush of
  // the tensor racing with it return OK or kNotFound, without waiting.
  absl::Status DropTensor(const Tensor& tensor);

  // Pins block `block` of `tensor` in `tier` (a pinnable tier of the chain),
  // loading it from the nearest tier that holds it if needed; blocks until
  // the copy is there. A write pin first drops the block's copies in other
  // pinnable tiers.
  // Errors: kNotFound (dropped tensor), kOutOfRange (block),
  // kInvalidArgument (a tier or access value outside its enum, a tier that
  // is not pinnable or not in EngineOptions::tiers), kUnimplemented (a tier
  // not built into this version), kResourceExhausted (every frame of the
  // tier is pinned, or the lower tiers are full), kDeadlineExceeded (a
  // conflicting pin held past `pin_wait_timeout`, or a transfer not done
  // within `io_timeout`), kDataLoss (checksum), kUnavailable/kInternal (I/O
  // errors, with the errno; CUDA errors, named), kFailedPrecondition (engine
  // closed or closing; the GPU tier fenced after a sticky CUDA error).
  // The hot path (resident copy) is a load and a CAS.
  absl::StatusOr<strata::Pin> Pin(const Tensor& tensor, uint64_t block,
                                  Tier tier, Access access);

  // Pin's asynchronous form, for GPU read pins: pins block `block` of
  // `tensor` in Tier::kGpu for reading, and returns as soon as the copy of
  // its bytes into VRAM is enqueued on the engine's host-to-device stream,
  // without waiting for it. The pin's ready_event() completes with that
  // copy: order the work that reads device_ptr() after it with
  // WaitOn(stream), and the CPU never waits for the copy.
  //
  //   auto next = engine->PinAsync(t, b + 1, strata::Tier::kGpu,
  //                                strata::Access::kRead);   // enqueued
  //   ... compute on block b ...
  //   next->WaitOn(stream);                 // the stream waits, not the CPU
  //   kernel<<<g, k, 0, stream>>>(next->device_ptr());
  //   next->ReleaseAfter(stream);
  //
  // What may still block: bringing the block into host memory first, when
  // its nearest copy is in a lower tier (NVMe, remote: read into a host
  // staging buffer), finding a VRAM frame (evicting, writing a dirty victim
  // back), a conflicting pin, and a load of the block that Pin() or
  // Prefetch() started, as Pin() waits for them; only the final
  // host-to-device copy of a load PinAsync starts is not waited for. Pins of a copy that is still in
  // flight: another PinAsync gets it at once with the same event; Pin(),
  // eviction, write pins and copies out of it wait until the copy finished,
  // and TryPin() declines it (nullopt).
  // Errors of the copy itself reach the caller through the pin (see
  // Pin::ready_event and Pin::Synchronize) and count in
  // TierStats::errors; the failed copy is dropped once its pins are
  // released, and the next pin loads the block again (with its own result).
  // Other tiers and write pins (kWrite, kOverwrite), and blocks of shared
  // tensors, are pinned as by Pin(), which waits. Errors: those of Pin().
  // Thread-safe, as Pin().
  absl::StatusOr<strata::Pin> PinAsync(const Tensor& tensor, uint64_t block,
                                       Tier tier, Access access);

  // Pins block `block` of `tensor` in `tier` only if that takes no wait:
  // the copy is resident and no conflicting pin holds it. Returns nullopt
  // otherwise (not resident, being loaded or evicted, a conflicting pin, a
  // shared tensor, a tensor being dropped or an engine closing), having
  // loaded, evicted and counted nothing; Pin() then does the rest, with its
  // errors. Never blocks, does no I/O: a caller holding a lock other threads
  // need (Python's GIL) tries this first and releases the lock only for Pin().
  // Errors: those of Pin() for bad arguments (kNotFound, kOutOfRange,
  // kInvalidArgument, kUnimplemented); a dropped tensor or a closed engine
  // gets nullopt, and Pin() says which. Thread-safe, as Pin().
  //
  //   auto hit = engine->TryPin(t, b, strata::Tier::kHost, strata::Access::kRead);
  //   if (!hit.ok()) return hit.status();
  //   if (!*hit) {
  //     Unlock();  // Pin() may wait for a load
  //     hit = engine->Pin(t, b, strata::Tier::kHost, strata::Access::kRead);
  //     Lock();
  //     if (!hit.ok()) return hit.status();
  //   }
  //   strata::Pin pin = std::move(**hit);
  absl::StatusOr<std::optional<strata::Pin>> TryPin(const Tensor& tensor,
                                                    uint64_t block, Tier tier,
                                                    Access access);

  // Starts bringing `range` of `tensor` into `tier` (pinnable) without
  // pinning; returns at once. When the handle is done, every block of the
  // range has been brought in: blocks already resident are kept like the
  // ones loaded (eviction passes them over until a pin uses them, unless a
  // pin is short of frames), and a block that was being evicted is loaded
  // again once it is gone. Blocks that do not fit (every frame
  // pinned) fail the handle with kResourceExhausted; blocks still queued
  // when the engine closes fail it with kFailedPrecondition.
  absl::StatusOr<PrefetchHandle> Prefetch(const Tensor& tensor,
                                          BlockRange range, Tier tier);
  // Prefetch of scattered blocks (a gather: embedding rows, a sparse
  // update), in any order, repeats allowed: one request, one handle, and
  // their loads reach the device in a few submissions, where a Prefetch
  // per block costs a request, a wake-up and a submission each.
  // Errors: kOutOfRange for a block past the tensor's end (nothing is
  // started); otherwise those of Prefetch.
  //
  //   std::vector<uint64_t> missing;       // blocks TryPin did not find
  //   auto h = engine->PrefetchBlocks(table, missing, strata::Tier::kHost);
  //   ... use the rows that hit ...
  //   (void)h->Wait();  // then Pin each missing block: a hit, mostly
  absl::StatusOr<PrefetchHandle> PrefetchBlocks(const Tensor& tensor,
                                                std::span<const uint64_t> blocks,
                                                Tier tier);

  // Writes every dirty block of `tensor` to the lowest tier and waits for the
  // acknowledgements. Returns the first error, a background write-back of the
  // tensor that failed since the last Flush included (each such error is
  // returned once). kFailedPrecondition if a block is pinned for writing.
  absl::Status Flush(const Tensor& tensor);
  // Flushes every tensor.
  absl::Status FlushAll();

  // Access hints. The pins between the first BeginStep() and EndStep() are
  // recorded as the step's plan, each pinning thread's in its own order; in
  // later steps the engine prefetches ahead along each thread's plan, and
  // the "hinted" policy evicts by predicted next use. Pins during a step
  // take no lock shared by all threads.
  absl::Status BeginStep();
  absl::Status EndStep();

  EngineStats GetStats() const;

  // A barrier: once it returns OK, no pin is granted, no load or write-back
  // runs and nothing is queued any more; later calls return
  // kFailedPrecondition. Calls in progress when it starts return
  // kFailedPrecondition (or finish, if they were done); it waits for
  // transfers in flight (up to io_timeout: kDeadlineExceeded then, the
  // engine stays closed). kFailedPrecondition if any pin is live (close
  // nothing then). Idempotent once it succeeded.
  absl::Status Close();

  const EngineOptions& options() const;

 private:
  explicit Engine(std::unique_ptr<internal::EngineCore> core);
  friend class internal::EngineCore;
  std::unique_ptr<internal::EngineCore> core_;
};

}  // namespace strata

#endif  // STRATA_STRATA_H_
