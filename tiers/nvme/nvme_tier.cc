// NvmeTier: an extent allocator over one O_DIRECT block file, and transfers
// through an IoBackend (io_uring), reaped by one completion thread.
//
// Locks: `alloc_mu_` guards the extent allocator (Allocate/Free, any thread).
// `mu_` guards the submission side of the backend and the in-flight
// accounting; it is never held while on_done runs or while a checksum is
// computed. (std::mutex rather than absl::Mutex: the system Abseil is not
// built for ThreadSanitizer, which then cannot see its synchronization.) Ops
// in flight never exceed queue_depth, so the completion queue (2 x
// queue_depth) can never overflow.
#include "tiers/nvme/nvme_tier.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <chrono>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tiers/nvme/io_backend.h"
#include "util/checksum.h"
#include "util/errors.h"
#include "util/status_macros.h"

namespace strata::tiers {
namespace {

constexpr uint64_t kHostAlign = 4096;
// Preallocation runs ahead of the used region by 1/16 of the bytes in
// frames, within [kMinAhead, kMaxAhead]: it grows with use (a geometric
// step, so fallocate calls stay few) and, since a trim comes only past twice
// that (DoFree), costs at most 1/8 of the live bytes in disk.
constexpr uint64_t kMinAhead = uint64_t{4} << 20;
constexpr uint64_t kMaxAhead = uint64_t{256} << 20;
constexpr uint64_t kAheadDivisor = 16;
// Free extents keep their disk blocks until the blocks held by free space
// exceed 1/16 of the bytes in frames (at least kMinAhead); then the largest
// free extents of at least kPunchMin give theirs back (punched), down to
// half that. Not at every free: a punch costs 0.2-3 ms on this machine's
// ext4 (mounted with discard; `strace -T` on the churn test of
// tests/nvme_alloc_test.cpp), a frame carved from a punched extent costs a
// fallocate more, and freed extents are mostly reused soon. Punching at
// every free of >= 1 MiB made 2.5x the punches in that churn, 9x with
// frames all of 2 MiB (simulated). Smaller extents are never punched:
// refilling them would split the file's extent tree for little disk.
constexpr uint64_t kIdleDivisor = 16;
constexpr uint64_t kPunchMin = uint64_t{1} << 20;
constexpr uint64_t kMaxIoBytes = uint64_t{1} << 30;       // one SQE
constexpr uint64_t kMaxRegisteredBuffer = uint64_t{1} << 30;
constexpr uint32_t kMaxQueueDepth = 32768;                  // IORING_MAX_ENTRIES
constexpr uint32_t kMaxRetries = 16;
constexpr uint64_t kStopToken = ~uint64_t{0};
constexpr absl::Duration kShutdownDeadline = absl::Seconds(30);
constexpr char kPathAdvice[] =
    "set EngineOptions::nvme.path to a writable directory";

uint64_t RoundUp(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
uint64_t RoundDown(uint64_t x, uint64_t a) { return x / a * a; }

absl::Status WithCode(absl::StatusCode code, const absl::Status& s) {
  return absl::Status(code, s.message());
}

using Lock = std::unique_lock<std::mutex>;

// Free space of the block file: best fit with coalescing.
//
// [0, end()) is the used region; everything from end() to the capacity is
// free (the tail). Free space below end() is a set of disjoint extents, none
// touching another or the tail (they merge when they meet; an extent that
// reaches end() lowers it, so the file can shrink), indexed by offset (to
// find neighbours) and by (size, offset) for best fit: the smallest extent
// that holds a request, the lowest among equals, which keeps live frames low
// and the tail long. Take and Give are O(log n) in the number of free
// extents.
//
// Each free extent also knows whether it is fully backed by disk blocks
// (`full`: a frame taken from it needs no fallocate) and at most how many of
// its bytes are (`blocks`: 0 once punched), so the tier can tell how much
// disk free space holds and punch where it pays.
//
// What this guarantees: Take(bytes) succeeds whenever some contiguous free
// range of `bytes` exists, and when everything is given back the whole
// capacity is one range again. It cannot promise a frame whenever the free
// bytes add up to enough: without moving live frames no allocator can
// (Robson's bound). See tests/nvme_alloc_test.cpp for what the churn of a
// realistic size mix shows.
//
// Pure bookkeeping, no I/O and no lock (NvmeTier holds alloc_mu_ and keeps
// the file's blocks in step).
class ExtentMap {
 public:
  // The disk behind a range of free space.
  struct Backing {
    bool full = true;     // every byte has blocks
    uint64_t blocks = 0;  // at most this many bytes have blocks
  };

  struct Taken {
    uint64_t offset = 0;
    Backing backing;         // of the bytes taken
    bool from_tail = false;  // end() moved up past them
  };

  struct Released {
    uint64_t offset = 0;  // the free extent the range merged into
    uint64_t bytes = 0;
    Backing backing;
    bool to_tail = false;  // it reached end(), which came down to `offset`
  };

  explicit ExtentMap(uint64_t capacity) : capacity_(capacity) {}

  uint64_t end() const { return end_; }

  // At most how many bytes of free extents have disk blocks.
  uint64_t idle_blocks() const { return idle_blocks_; }

  // The free extent with the most disk blocks: {offset, bytes, blocks}.
  struct Idle {
    uint64_t offset, bytes, blocks;
  };
  std::optional<Idle> MostIdle() const {
    if (by_blocks_.empty()) return std::nullopt;
    const auto [blocks, offset] = *by_blocks_.rbegin();
    return Idle{offset, by_offset_.at(offset).bytes, blocks};
  }

  // The longest contiguous free range, the tail included.
  uint64_t largest_free() const {
    const uint64_t tail = capacity_ - end_;
    return by_size_.empty() ? tail : std::max(tail, by_size_.rbegin()->first);
  }

  // Takes `bytes` from the smallest free extent that holds them (its low
  // end), else from the tail. nullopt when no free range is long enough.
  std::optional<Taken> Take(uint64_t bytes) {
    if (auto it = by_size_.lower_bound({bytes, 0}); it != by_size_.end()) {
      const auto [size, offset] = *it;
      auto extent = by_offset_.find(offset);
      const Free was = extent->second;
      Erase(extent);
      if (size > bytes) {
        const uint64_t rest = size - bytes;
        Insert(offset + bytes, {rest, {was.backing.full,
                                       std::min(was.backing.blocks, rest)}});
      }
      return Taken{.offset = offset,
                   .backing = {was.backing.full,
                               std::min(was.backing.blocks, bytes)}};
    }
    if (bytes > capacity_ - end_) return std::nullopt;
    const uint64_t offset = end_;
    end_ += bytes;
    return Taken{.offset = offset,
                 .backing = {.full = true, .blocks = bytes},
                 .from_tail = true};
  }

  // Gives back [offset, offset + bytes), taken before, with disk `backing`,
  // and merges it with its free neighbours. nullopt (and no change) when
  // the range is not taken space: a double or foreign free.
  std::optional<Released> Give(uint64_t offset, uint64_t bytes,
                               Backing backing) {
    if (bytes == 0 || offset > end_ || bytes > end_ - offset) {
      return std::nullopt;
    }
    Released r{.offset = offset, .bytes = bytes, .backing = backing};
    auto next = by_offset_.lower_bound(offset);
    std::map<uint64_t, Free>::iterator prev = by_offset_.end();
    if (next != by_offset_.begin()) {
      prev = std::prev(next);
      const uint64_t prev_end = prev->first + prev->second.bytes;
      if (prev_end > offset) return std::nullopt;
      if (prev_end != offset) prev = by_offset_.end();
    }
    if (next != by_offset_.end()) {
      if (next->first < offset + bytes) return std::nullopt;
      if (next->first != offset + bytes) next = by_offset_.end();
    }
    for (auto it : {prev, next}) {
      if (it == by_offset_.end()) continue;
      r.offset = std::min(r.offset, it->first);
      r.bytes += it->second.bytes;
      r.backing.full = r.backing.full && it->second.backing.full;
      r.backing.blocks += it->second.backing.blocks;
      Erase(it);
    }
    if (r.offset + r.bytes == end_) {
      end_ = r.offset;
      r.to_tail = true;
    } else {
      Insert(r.offset, {r.bytes, r.backing});
    }
    return r;
  }

  // The free extent at `offset` was punched: it has no blocks now.
  void MarkHole(uint64_t offset) {
    auto it = by_offset_.find(offset);
    if (it == by_offset_.end()) return;
    const Free hole{it->second.bytes, {.full = false, .blocks = 0}};
    Erase(it);
    Insert(offset, hole);
  }

 private:
  struct Free {
    uint64_t bytes;
    Backing backing;
  };

  void Insert(uint64_t offset, const Free& f) {
    by_offset_.emplace(offset, f);
    by_size_.emplace(f.bytes, offset);
    if (f.backing.blocks > 0) by_blocks_.emplace(f.backing.blocks, offset);
    idle_blocks_ += f.backing.blocks;
  }
  void Erase(std::map<uint64_t, Free>::iterator it) {
    const Free& f = it->second;
    by_size_.erase({f.bytes, it->first});
    if (f.backing.blocks > 0) by_blocks_.erase({f.backing.blocks, it->first});
    idle_blocks_ -= f.backing.blocks;
    by_offset_.erase(it);
  }

  const uint64_t capacity_;
  uint64_t end_ = 0;
  std::map<uint64_t, Free> by_offset_;
  std::set<std::pair<uint64_t, uint64_t>> by_size_;    // (bytes, offset)
  std::set<std::pair<uint64_t, uint64_t>> by_blocks_;  // (blocks, offset)
  uint64_t idle_blocks_ = 0;  // sum of backing.blocks
};

// One transfer in the tier's hands.
struct Op {
  Transfer* t = nullptr;
  uint64_t total = 0;     // bytes to move: host.size() rounded up to io_align
  uint64_t done = 0;      // bytes moved so far, from the start
  uint64_t issued = 0;    // where the piece in flight starts
  uint32_t retries = 0;
  absl::Status status;    // set when finished with an error
};

class NvmeTier final : public Tier {
 public:
  NvmeTier(const NvmeConfig& config, std::string file, int fd,
           std::unique_ptr<IoBackend> backend, uint64_t io_align,
           uint64_t mem_align)
      : Tier("nvme", config.capacity_bytes),
        config_(config),
        file_(std::move(file)),
        fd_(fd),
        backend_(std::move(backend)),
        io_align_(io_align),
        mem_align_(std::max(mem_align, kHostAlign)),
        frame_align_(std::max(io_align, kHostAlign)) {}

  ~NvmeTier() override {
    {
      Lock lock(mu_);
      stopping_ = true;
      // Idle also means no batch is half queued: Submit is all or nothing,
      // so a batch it took (from an on_done, say) is queued whole first.
      auto idle = [this] {
        return in_flight_ == 0 && deferred_.empty() && submitting_ == 0;
      };
      if (!cv_.wait_for(lock, absl::ToChronoSeconds(kShutdownDeadline),
                        idle)) {
        Log(absl::StrCat("tier nvme: ", in_flight_ + deferred_.size(),
                         " transfers on ", file_, " did not complete within ",
                         absl::FormatDuration(kShutdownDeadline),
                         " of shutdown; cancelling them"));
        // A submitter waiting for room stops waiting and leaves the rest of
        // its batch in live_, where it is failed below; none may still be
        // inside Submit when the backend goes.
        abandoning_ = true;
        cv_.notify_all();
        cv_.wait(lock, [this] { return submitting_ == 0; });
      }
      // Wakes the completion thread at once (it also polls stop_ every
      // second).
      stop_.store(true);
      if (backend_->Prepare(IoOp{.kind = IoOp::Kind::kNop,
                                 .user_data = kStopToken})) {
        (void)backend_->Submit();
      }
    }
    if (completer_.joinable()) completer_.join();
    // Whatever is left never completed: close the ring (the kernel cancels
    // and waits for its requests), then fail those transfers.
    backend_.reset();
    std::vector<Op*> left;
    {
      Lock lock(mu_);
      left.assign(live_.begin(), live_.end());
      live_.clear();
      deferred_.clear();
    }
    for (Op* op : left) {
      Transfer* t = op->t;
      delete op;
      t->status = absl::DeadlineExceededError(absl::StrCat(
          "tier nvme: a transfer on ", file_,
          " did not complete before the tier shut down"));
      t->on_done(t);
    }
    // The ring's teardown is deferred in the kernel and its registered-file
    // reference can keep this open file (and so its lock) alive a while:
    // drop the lock now, so a new engine can open the directory at once.
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

  bool addressable() const override { return false; }

  absl::Status Start() {
    if (config_.register_buffers) {
      Lock lock(mu_);
      absl::Status s = backend_->RegisterFile();
      if (!s.ok()) {
        Log(absl::StrCat(s.message(),
                         "; the nvme tier goes on with a plain file descriptor"));
      }
    }
    completer_ = std::thread([this] { CompletionLoop(); });
    // Read by DoSubmit, which can only run after MakeNvmeTier returned.
    completer_id_ = completer_.get_id();
    return absl::OkStatus();
  }

  absl::Status RegisterHostMemory(std::span<std::byte> arena) override {
    if (!config_.register_buffers || arena.empty()) return absl::OkStatus();
    std::vector<iovec> iovecs;
    for (uint64_t at = 0; at < arena.size(); at += kMaxRegisteredBuffer) {
      iovecs.push_back(
          {arena.data() + at,
           static_cast<size_t>(std::min<uint64_t>(kMaxRegisteredBuffer,
                                                  arena.size() - at))});
    }
    Lock lock(mu_);
    // The kernel's buffer table must not change under an operation.
    cv_.wait(lock, [this] { return in_flight_ == 0; });
    if (!regions_.empty()) {
      backend_->UnregisterBuffers();
      regions_.clear();
    }
    absl::Status s = backend_->RegisterBuffers(iovecs);
    if (!s.ok()) {
      absl::Status out(s.code(),
                       absl::StrCat(s.message(), " for ", arena.size(),
                                    " bytes of host memory; raise "
                                    "RLIMIT_MEMLOCK (ulimit -l) or grant "
                                    "CAP_IPC_LOCK; the nvme tier goes on with "
                                    "unregistered buffers (slower)"));
      // Not logged here: the caller (the engine's tier factory) logs the
      // returned status once.
      return out;
    }
    regions_ = std::move(iovecs);
    return absl::OkStatus();
  }

 private:
  // ---------------------------------------------------------------- frames

  absl::StatusOr<Frame> DoAllocate(uint64_t bytes) override {
    const uint64_t size = RoundUp(bytes, frame_align_);
    std::lock_guard<std::mutex> lock(alloc_mu_);
    std::optional<ExtentMap::Taken> taken =
        size >= bytes ? extents_.Take(size) : std::nullopt;  // no overflow
    if (!taken.has_value()) return FullLocked(size);
    // Blocks for the frame now, so a full file system shows up here as
    // kResourceExhausted rather than as a failed write later.
    absl::Status ready = taken->from_tail
                             ? PreallocateLocked(taken->offset + size)
                         : taken->backing.full
                             ? absl::OkStatus()
                             : FillLocked(taken->offset, size);
    if (!ready.ok()) {
      (void)extents_.Give(taken->offset, size, taken->backing);
      return ready;
    }
    in_frames_ += size;
    return Frame{.offset = taken->offset, .bytes = size};
  }

  void DoFree(const Frame& frame) override {
    std::lock_guard<std::mutex> lock(alloc_mu_);
    std::optional<ExtentMap::Released> r =
        extents_.Give(frame.offset, frame.bytes,
                      {.full = true, .blocks = frame.bytes});
    if (!r.has_value()) {
      // A frame freed twice, or not from this tier: an engine bug. Keeping
      // the allocator consistent matters more than the lost frame.
      assert(false && "tier nvme: Free of a frame that is not allocated");
      if (!logged_bad_free_) {
        logged_bad_free_ = true;
        Log(absl::StrCat("tier nvme: ignored Free of a frame at offset ",
                         frame.offset, " of ", frame.bytes, " bytes of ",
                         file_, " that is not allocated"));
      }
      return;
    }
    in_frames_ -= frame.bytes;
    disk_full_until_.reset();  // room again, maybe
    // [end(), prealloc_end_) must have blocks; a punched piece breaks it.
    if (r->to_tail && !r->backing.full) {
      prealloc_end_ = extents_.end();
    }
    GiveBackIdleLocked();
    TrimLocked();
  }

  // How far preallocation runs ahead of the used region. Needs alloc_mu_.
  uint64_t AheadLocked() const {
    return RoundUp(std::clamp(in_frames_ / kAheadDivisor, kMinAhead, kMaxAhead),
                   frame_align_);
  }

  absl::Status FullLocked(uint64_t size) const {
    const uint64_t free = config_.capacity_bytes - in_frames_;
    return absl::ResourceExhaustedError(absl::StrCat(
        "tier nvme: ", config_.path, " is full (", in_frames_, " of ",
        config_.capacity_bytes, " bytes in frames; no free range of ", size,
        " bytes",
        free >= size ? absl::StrCat(": ", free,
                                    " bytes are free but the longest free "
                                    "range is ",
                                    extents_.largest_free(), " bytes")
                     : "",
        "); free space or raise EngineOptions::nvme.capacity_bytes"));
  }

  static int FallocateRetrying(int fd, int mode, uint64_t offset,
                               uint64_t len) {
    int rc;
    do {
      rc = ::fallocate(fd, mode, static_cast<off_t>(offset),
                       static_cast<off_t>(len));
    } while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : errno;
  }

  static constexpr auto kDiskFullMemo = std::chrono::milliseconds(200);

  // The memo of a full file system, if it still holds.
  std::optional<absl::Status> StillFullLocked(uint64_t offset, uint64_t end) {
    if (!disk_full_until_.has_value()) return std::nullopt;
    if (std::chrono::steady_clock::now() >= *disk_full_until_) {
      disk_full_until_.reset();
      return std::nullopt;
    }
    return DiskFullLocked(offset, end, ENOSPC);
  }

  absl::Status DiskFullLocked(uint64_t offset, uint64_t end, int err) {
    disk_full_until_ = std::chrono::steady_clock::now() + kDiskFullMemo;
    return absl::ResourceExhaustedError(absl::StrCat(
        "tier nvme: ", config_.path, " is full (preallocating ", file_,
        " from ", offset, " to ", end, " bytes failed: ",
        ErrnoStatus(err, "fallocate").message(),
        "); free space or lower EngineOptions::nvme.capacity_bytes"));
  }

  // Gives the frame [offset, offset + size), taken from a punched free
  // extent, its blocks again.
  absl::Status FillLocked(uint64_t offset, uint64_t size) {
    if (auto full = StillFullLocked(offset, offset + size)) return *full;
    const int err = FallocateRetrying(fd_, 0, offset, size);
    if (err == 0 || err == EOPNOTSUPP) return absl::OkStatus();
    if (err == ENOSPC || err == EDQUOT) {
      return DiskFullLocked(offset, offset + size, err);
    }
    return ErrnoStatus(err, absl::StrCat("tier nvme: cannot preallocate ",
                                         size, " bytes at offset ", offset,
                                         " of ", file_));
  }

  // Gives the file blocks up to `end` (a frame was taken from the tail),
  // and AheadLocked() more for the frames to come.
  absl::Status PreallocateLocked(uint64_t end) {
    if (end <= prealloc_end_) return absl::OkStatus();
    if (auto full = StillFullLocked(prealloc_end_, end)) return *full;
    const uint64_t ahead = std::min(
        config_.capacity_bytes, end + AheadLocked());
    for (uint64_t target : {ahead, end}) {
      const int err = FallocateRetrying(fd_, 0, prealloc_end_,
                                        target - prealloc_end_);
      if (err == 0) {
        prealloc_end_ = target;
        file_size_ = std::max(file_size_, target);
        return absl::OkStatus();
      }
      if (err == EOPNOTSUPP) {
        // No fallocate here: grow the file sparsely; a full file system then
        // shows up as ENOSPC on the write, which reports kResourceExhausted.
        if (target > file_size_ &&
            ::ftruncate(fd_, static_cast<off_t>(target)) != 0) {
          return ErrnoStatus(errno, absl::StrCat("tier nvme: cannot grow ",
                                                 file_, " to ", target,
                                                 " bytes"));
        }
        prealloc_end_ = target;
        file_size_ = std::max(file_size_, target);
        return absl::OkStatus();
      }
      if (err == ENOSPC || err == EDQUOT || err == EFBIG) {
        if (target != end) continue;  // try again with just what is needed
        return DiskFullLocked(prealloc_end_, end, err);
      }
      return ErrnoStatus(err, absl::StrCat("tier nvme: cannot preallocate ",
                                           file_, " up to ", target, " bytes"));
    }
    return absl::InternalError("tier nvme: unreachable");
  }

  // When free extents hold too many disk blocks (see kIdleDivisor), punches
  // the largest ones.
  void GiveBackIdleLocked() {
    const uint64_t budget = std::max(kMinAhead, in_frames_ / kIdleDivisor);
    if (extents_.idle_blocks() <= budget) return;
    while (punch_supported_ && extents_.idle_blocks() > budget / 2) {
      std::optional<ExtentMap::Idle> most = extents_.MostIdle();
      if (!most.has_value() || most->blocks < kPunchMin) return;
      if (!PunchLocked(most->offset, most->bytes)) return;
    }
  }

  // Gives the blocks of the free extent [offset, offset + bytes) back to the
  // file system. False when they stay.
  bool PunchLocked(uint64_t offset, uint64_t bytes) {
    const int err = FallocateRetrying(
        fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
    if (err == 0) {
      extents_.MarkHole(offset);
      return true;
    }
    if (err == EOPNOTSUPP) {
      punch_supported_ = false;  // this file system keeps the blocks
    } else if (!logged_punch_failure_) {
      // Harmless for the data (the extent stays free and keeps its
      // blocks), but the file holds more disk than it needs.
      logged_punch_failure_ = true;
      Log(ErrnoStatus(err, absl::StrCat("tier nvme: cannot give back ", bytes,
                                        " free bytes at offset ", offset,
                                        " of ", file_,
                                        " (punching a hole)"),
                      "the file keeps that disk space until it is reused")
              .message());
    }
    return false;
  }

  // Shrinks the file when it runs ahead of the used region by more than
  // twice the preallocation step (frames were freed at its end, or fewer
  // bytes are in frames than when it grew); the factor two keeps a tier
  // that hovers around one size from growing and shrinking the file on
  // every other call.
  void TrimLocked() {
    const uint64_t ahead = AheadLocked();
    const uint64_t end = extents_.end();
    if (file_size_ - end <= 2 * ahead) return;
    const uint64_t keep = end + ahead;
    if (::ftruncate(fd_, static_cast<off_t>(keep)) != 0) {
      if (!logged_trim_failure_) {
        logged_trim_failure_ = true;
        Log(ErrnoStatus(errno, absl::StrCat("tier nvme: cannot shrink ", file_,
                                            " to ", keep, " bytes"),
                        "the file keeps that disk space until it is reused")
                .message());
      }
      return;
    }
    file_size_ = keep;
    prealloc_end_ = std::min(prealloc_end_, keep);
  }

  // ------------------------------------------------------------- transfers

  // All or nothing (tiers/tier.h): every check that can refuse the batch
  // runs before any of it is queued, and once the batch is taken nothing
  // below can fail; a transfer whose I/O fails reports it through on_done.
  absl::Status DoSubmit(std::span<Transfer* const> batch) override {
    for (const Transfer* t : batch) {
      const Frame& f = t->frame;
      if (f.offset % frame_align_ != 0 || f.bytes % frame_align_ != 0 ||
          f.offset > config_.capacity_bytes ||
          f.bytes > config_.capacity_bytes - f.offset) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tier nvme: frame at offset ", f.offset, " of ", f.bytes,
            " bytes is not a frame of ", file_));
      }
      if (!t->host.empty() &&
          reinterpret_cast<uintptr_t>(t->host.data()) % mem_align_ != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tier nvme: host memory at ",
            absl::Hex(reinterpret_cast<uintptr_t>(t->host.data())),
            " is not ", mem_align_, "-byte aligned, as O_DIRECT needs"));
      }
    }
    if (batch.empty()) return absl::OkStatus();
    std::vector<Op*> ops;
    ops.reserve(batch.size());
    for (Transfer* t : batch) {
      ops.push_back(new Op{.t = t, .total = RoundUp(t->host.size(), io_align_)});
    }
    {
      Lock lock(mu_);
      if (stopping_) {
        for (Op* op : ops) delete op;
        return absl::FailedPreconditionError(
            "tier nvme: the tier is shutting down; no new transfers");
      }
      // Taken: the destructor now waits until the last chunk is queued, so
      // a shutdown that starts between two chunks cannot split the batch.
      ++submitting_;
    }
    // Checksumming a write reads all its bytes: queue in chunks of about
    // kChecksumChunk bytes, so the first I/O starts after one chunk's
    // checksums rather than the whole batch's (a 32-block flush of 2 MiB
    // blocks otherwise waits ~6 ms on a DRAM-bound hash before any I/O).
    std::span<Op* const> rest(ops);
    while (!rest.empty()) {
      size_t n = 0;
      uint64_t bytes = 0;
      while (n < rest.size() && (n == 0 || bytes < kChecksumChunk)) {
        const Transfer* t = rest[n]->t;
        if (t->op == Transfer::Op::kWrite) bytes += t->host.size();
        ++n;
      }
      QueueChunk(rest.first(n), /*last=*/n == rest.size());
      rest = rest.subspan(n);
    }
    return absl::OkStatus();
  }

  static constexpr uint64_t kChecksumChunk = uint64_t{1} << 20;

  // Checksums the writes of `chunk`, then queues all of it. Cannot fail: an
  // op that finds no room waits for it (or, on the completion thread, which
  // must not wait for itself, in deferred_). `last` ends the batch's claim
  // on the destructor's patience (submitting_).
  void QueueChunk(std::span<Op* const> chunk, bool last) {
    const bool on_completer = std::this_thread::get_id() == completer_id_;
    for (Op* op : chunk) {
      Transfer* t = op->t;
      if (t->op == Transfer::Op::kWrite) {
        t->checksum = BlockChecksum(t->host, t->key.tensor_id, t->key.block,
                                    t->key.version);
      }
    }

    Lock lock(mu_);
    for (Op* op : chunk) live_.insert(op);
    bool prepared = false;
    for (Op* op : chunk) {
      if (on_completer) {
        // Over the queue depth, ops wait in deferred_ until the completion
        // thread frees slots.
        if (in_flight_ >= config_.queue_depth || !deferred_.empty()) {
          deferred_.push_back(op);
          continue;
        }
      } else if (in_flight_ >= config_.queue_depth) {
        if (prepared) FlushLocked(lock);
        prepared = false;
        cv_.wait(lock, [this] {
          return in_flight_ < config_.queue_depth || abandoning_;
        });
        if (in_flight_ >= config_.queue_depth) {
          // The destructor gave up waiting for the device; it fails what
          // is left in live_, this op included.
          deferred_.push_back(op);
          continue;
        }
      }
      ++in_flight_;
      if (PrepareLocked(op, lock)) {
        prepared = true;
      } else {
        --in_flight_;
        deferred_.push_back(op);
      }
    }
    if (prepared || needs_flush_) FlushLocked(lock);
    if (last && --submitting_ == 0 && stopping_) cv_.notify_all();
  }

  // Needs mu_.
  int BufferIndex(const void* buf, uint64_t len) const {
    const auto p = reinterpret_cast<uintptr_t>(buf);
    for (size_t i = 0; i < regions_.size(); ++i) {
      const auto base = reinterpret_cast<uintptr_t>(regions_[i].iov_base);
      if (p >= base && p - base <= regions_[i].iov_len &&
          len <= regions_[i].iov_len - (p - base)) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }

  // Queues the next piece of `op` (from op->done). False when the queue
  // stays full even after a flush (the op then waits in deferred_).
  bool PrepareLocked(Op* op, Lock& lock) {
    Transfer* t = op->t;
    IoOp io{.user_data = reinterpret_cast<uint64_t>(op)};
    op->issued = op->done;
    if (op->total > 0) {
      const uint64_t len = std::min(op->total - op->done, kMaxIoBytes);
      io.kind = t->op == Transfer::Op::kWrite ? IoOp::Kind::kWrite
                                              : IoOp::Kind::kRead;
      io.buf = t->host.data() + op->done;
      io.len = static_cast<uint32_t>(len);
      io.offset = t->frame.offset + op->done;
      io.buf_index = BufferIndex(io.buf, len);
    }
    if (backend_->Prepare(io)) return true;
    FlushLocked(lock);
    return backend_->Prepare(io);
  }

  // One io_uring_submit for everything prepared. Transient failures are
  // retried briefly; after that the prepared ops stay in the ring and the
  // completion thread keeps trying (nothing is dropped, nothing is lost).
  void FlushLocked(Lock& lock) {
    absl::Status s;
    for (int attempt = 0; attempt < 8; ++attempt) {
      absl::StatusOr<uint32_t> n = backend_->Submit();
      if (n.ok()) {
        needs_flush_ = false;
        return;
      }
      s = n.status();
      if (s.code() != absl::StatusCode::kUnavailable) break;
      lock.unlock();
      absl::SleepFor(absl::Microseconds(100 << attempt));
      lock.lock();
    }
    needs_flush_ = true;
    if (!logged_flush_failure_.exchange(true)) {
      Log(absl::StrCat(s.message(), "; tier nvme keeps retrying the submission"));
    }
  }

  std::string Describe(const Op& op) const {
    const Transfer& t = *op.t;
    return absl::StrCat("tier nvme: ",
                        t.op == Transfer::Op::kWrite ? "write" : "read",
                        " of tensor ", t.key.tensor_id, " block ", t.key.block,
                        " version ", t.key.version, " (", t.host.size(),
                        " bytes) at ", file_, " offset ",
                        t.frame.offset + op.issued);
  }

  // Decides what a completion means for its op: true when the op is
  // finished (op->status says how), false when it was queued again.
  bool HandleLocked(Op* op, int32_t res, Lock& lock) {
    const bool is_read = op->t->op == Transfer::Op::kRead;
    auto retry = [&] {
      if (!PrepareLocked(op, lock)) {
        --in_flight_;
        deferred_.push_front(op);
      }
      requeued_ = true;
      return false;
    };
    if (res < 0) {
      const int err = -res;
      if (err == EAGAIN || err == EINTR) {
        if (++op->retries <= kMaxRetries) return retry();
        op->status = ErrnoStatus(
            err, absl::StrCat(Describe(*op), " failed ", op->retries,
                              " times in a row"),
            "the device is overloaded; try again later");
        return true;
      }
      std::string_view advice;
      if (err == ENOSPC || err == EDQUOT) {
        advice = "free space or lower EngineOptions::nvme.capacity_bytes";
      } else if (err == EIO) {
        advice = "the device reported an I/O error; check the kernel log";
      }
      op->status = ErrnoStatus(err, Describe(*op), advice);
      return true;
    }
    if (op->total == 0) return true;  // a zero-length transfer's NOP
    if (res == 0) {
      if (is_read) {
        op->status = absl::DataLossError(absl::StrCat(
            Describe(*op), " hit the end of the file: ", file_,
            " is truncated; the bytes on disk are lost"));
        return true;
      }
      if (++op->retries <= kMaxRetries) return retry();
      op->status = absl::InternalError(absl::StrCat(
          Describe(*op), " wrote 0 bytes ", op->retries, " times in a row"));
      return true;
    }
    const uint64_t end = op->issued + static_cast<uint64_t>(res);
    if (end >= op->total || (is_read && end >= op->t->host.size())) {
      op->done = op->total;
      return true;
    }
    // A short transfer: go on from the last aligned byte (O_DIRECT offsets
    // must stay aligned; moving a few bytes twice is harmless).
    const uint64_t next = RoundDown(end, io_align_);
    if (next <= op->issued && ++op->retries > kMaxRetries) {
      op->status =
          is_read ? absl::DataLossError(absl::StrCat(
                        Describe(*op), " stops after ", res, " bytes: ",
                        file_, " is truncated; the bytes on disk are lost"))
                  : absl::InternalError(absl::StrCat(
                        Describe(*op), " keeps writing only ", res,
                        " bytes (short write, no progress after ",
                        kMaxRetries, " retries)"));
      return true;
    }
    op->done = std::max(next, op->issued);
    return retry();
  }

  void Finish(Op* op) {
    Transfer* t = op->t;
    absl::Status status = std::move(op->status);
    if (status.ok() && t->op == Transfer::Op::kRead) {
      const uint64_t sum = BlockChecksum(t->host, t->key.tensor_id,
                                         t->key.block, t->key.version);
      if (sum != t->checksum) {
        status = absl::DataLossError(absl::StrCat(
            "tier nvme: checksum mismatch for tensor ", t->key.tensor_id,
            " block ", t->key.block, " version ", t->key.version, " at ",
            file_, " offset ", t->frame.offset,
            ": the bytes on disk are corrupt"));
      }
    }
    delete op;
    t->status = std::move(status);
    t->on_done(t);
  }

  void CompletionLoop() {
    pthread_setname_np(pthread_self(), "strata-nvme");
    std::vector<IoCompletion> cqes;
    std::vector<Op*> finished;
    bool stop = false;
    while (!stop) {
      cqes.clear();
      finished.clear();
      bool pending;
      {
        // Ops that found the queue full (or a failed io_uring_submit) go
        // out as soon as there is room.
        Lock lock(mu_);
        requeued_ = false;
        DrainDeferredLocked(lock);
        if (requeued_ || needs_flush_) FlushLocked(lock);
        pending = needs_flush_ || !deferred_.empty();
      }
      absl::Status reaped = backend_->Reap(
          cqes, pending ? absl::Milliseconds(10) : absl::Seconds(1));
      if (!reaped.ok()) {
        if (!logged_reap_failure_.exchange(true)) Log(reaped.message());
        absl::SleepFor(absl::Milliseconds(1));  // never spin on an error
      }
      {
        Lock lock(mu_);
        requeued_ = false;
        for (const IoCompletion& c : cqes) {
          if (c.user_data == kStopToken) continue;
          Op* op = reinterpret_cast<Op*>(c.user_data);
          if (HandleLocked(op, c.res, lock)) {
            --in_flight_;
            live_.erase(op);
            finished.push_back(op);
          }
        }
        DrainDeferredLocked(lock);
        if (requeued_ || needs_flush_) FlushLocked(lock);
        if (!finished.empty()) cv_.notify_all();  // room, or idle
        // The destructor sets stop_ once nothing is in flight (or it gave
        // up waiting); the transfers finished here still get their on_done.
        stop = stop_.load();
      }
      for (Op* op : finished) Finish(op);
    }
  }

  void DrainDeferredLocked(Lock& lock) {
    while (!deferred_.empty() && in_flight_ < config_.queue_depth) {
      Op* op = deferred_.front();
      ++in_flight_;
      if (!PrepareLocked(op, lock)) {
        --in_flight_;
        return;
      }
      deferred_.pop_front();
      requeued_ = true;
    }
  }

  void Log(std::string_view message) const {
    if (config_.log) config_.log(message);
  }
  // Abseil here is built with its own string_view (not std::string_view).
  void Log(const std::string& message) const {
    Log(std::string_view(message));
  }
  void Log(absl::string_view message) const {
    Log(std::string_view(message.data(), message.size()));
  }

  const NvmeConfig config_;
  const std::string file_;
  const int fd_;
  std::unique_ptr<IoBackend> backend_;
  const uint64_t io_align_;     // O_DIRECT offset/length alignment
  const uint64_t mem_align_;    // O_DIRECT memory alignment (>= 4096)
  const uint64_t frame_align_;  // frame offsets and sizes

  std::mutex alloc_mu_;  // guards everything below up to mu_
  ExtentMap extents_{config_.capacity_bytes};
  uint64_t in_frames_ = 0;      // bytes in frames handed out
  uint64_t prealloc_end_ = 0;   // [extents_.end(), prealloc_end_) has blocks
  uint64_t file_size_ = 0;      // the file's length (0 once opened)
  bool punch_supported_ = true;
  bool logged_punch_failure_ = false;
  bool logged_trim_failure_ = false;
  bool logged_bad_free_ = false;
  // The file system said ENOSPC: until a frame is freed here, or a while has
  // passed (other files may shrink), Allocate says full without asking it
  // again. fallocate on a full ext4 costs milliseconds of scanning; a burst
  // of evictions asking it once each cost seconds of system time per miss.
  std::optional<std::chrono::steady_clock::time_point> disk_full_until_;

  std::mutex mu_;  // guards everything below up to stop_
  std::condition_variable cv_;  // in_flight_ went down
  uint32_t in_flight_ = 0;      // ops handed to the backend
  std::deque<Op*> deferred_;    // ops waiting for room (or a flush)
  absl::flat_hash_set<Op*> live_;  // every op not yet finished
  std::vector<iovec> regions_;  // registered buffers, by index
  bool stopping_ = false;
  bool abandoning_ = false;     // shutdown gave up on the device
  uint32_t submitting_ = 0;     // batches taken by Submit, not yet all queued
  bool needs_flush_ = false;    // prepared ops an io_uring_submit refused
  bool requeued_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<bool> logged_flush_failure_{false};
  std::atomic<bool> logged_reap_failure_{false};

  std::thread completer_;
  std::thread::id completer_id_;
};

// Creates `dir` (one component of `path`) unless it is a directory already.
absl::Status MakeOneDirectory(const std::string& dir, const std::string& path) {
  const std::string what =
      dir == path ? absl::StrCat("tier nvme: cannot create ", path)
                  : absl::StrCat("tier nvme: cannot create ", dir,
                                 " (a parent of ", path, ")");
  if (::mkdir(dir.c_str(), 0755) == 0) return absl::OkStatus();
  int err = errno;
  if (err == EEXIST) {
    // mkdir says EEXIST before it checks permissions, so an existing
    // directory we may not write to still passes here; only the last
    // component has to be writable, and open() says so if it is not.
    struct stat st;
    if (::stat(dir.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) return absl::OkStatus();
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": it exists and is not a directory (ENOTDIR); ", kPathAdvice));
    }
    err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat(
          what, ": it is a dangling symbolic link (ENOENT); ", kPathAdvice));
    }
  }
  absl::Status s = ErrnoStatus(err, what, kPathAdvice);
  if (err == ENOTDIR) return WithCode(absl::StatusCode::kFailedPrecondition, s);
  return s;
}

// mkdir -p: creates `path` and every missing parent, one component at a
// time, so an error names the component that failed. ENOTDIR (a file where a
// directory should be) is a precondition failure, EACCES/EPERM/EROFS
// kPermissionDenied.
absl::Status MakeDirectories(const std::string& path) {
  std::string dir = path;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  // Parents first; the root and doubled slashes have nothing to create.
  for (size_t slash = dir.find('/', 1); slash != std::string::npos;
       slash = dir.find('/', slash + 1)) {
    if (dir[slash - 1] == '/') continue;
    STRATA_RETURN_IF_ERROR(MakeOneDirectory(dir.substr(0, slash), dir));
  }
  return MakeOneDirectory(dir, dir);
}

absl::Status CheckConfig(const NvmeConfig& config) {
  if (config.path.empty()) {
    return absl::InvalidArgumentError(
        "tier nvme: EngineOptions::nvme.path is empty; set it to a writable "
        "directory");
  }
  if (config.capacity_bytes == 0) {
    return absl::InvalidArgumentError(
        "tier nvme: EngineOptions::nvme.capacity_bytes is 0; give the nvme "
        "tier some space");
  }
  if (config.queue_depth == 0 || config.queue_depth > kMaxQueueDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier nvme: EngineOptions::nvme.queue_depth is ", config.queue_depth,
        "; it must be between 1 and ", kMaxQueueDepth));
  }
  return absl::OkStatus();
}

// Opens <path>/blocks.strata O_DIRECT, locks it for this engine and
// truncates it. Returns the descriptor.
absl::StatusOr<int> OpenBlockFile(const NvmeConfig& config,
                                  const std::string& file) {
  // Not O_TRUNC: the file may belong to a running engine until the lock says
  // otherwise.
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    if (err == EINVAL) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tier nvme: cannot open ", file,
          " with O_DIRECT (EINVAL): the file system under ", config.path,
          " does not support direct I/O; set EngineOptions::nvme.path to a "
          "directory on ext4, xfs or tmpfs (Linux >= 6.6)"));
    }
    absl::Status s = ErrnoStatus(
        err, absl::StrCat("tier nvme: cannot open ", file), kPathAdvice);
    if (err == ENOTDIR) return WithCode(absl::StatusCode::kFailedPrecondition, s);
    return s;
  }
  auto fail = [fd](absl::Status s) {
    ::close(fd);
    return s;
  };
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      return fail(absl::FailedPreconditionError(absl::StrCat(
          "tier nvme: ", config.path, " is in use by another engine (", file,
          " is locked); give each engine its own EngineOptions::nvme.path")));
    }
    return fail(ErrnoStatus(err, absl::StrCat("tier nvme: cannot lock ", file)));
  }
  if (::ftruncate(fd, 0) != 0) {
    return fail(ErrnoStatus(errno, absl::StrCat("tier nvme: cannot truncate ",
                                                file),
                            kPathAdvice));
  }
  return fd;
}

// The file's O_DIRECT offset and memory alignment (statx STATX_DIOALIGN
// where the file system reports it; else 4096).
absl::Status DirectIoAlignment(int fd, const std::string& file,
                               uint64_t* io_align, uint64_t* mem_align) {
  *io_align = 4096;
  *mem_align = 4096;
  struct statx stx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0 ||
      (stx.stx_mask & STATX_DIOALIGN) == 0) {
    return absl::OkStatus();
  }
  if (stx.stx_dio_offset_align == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tier nvme: ", file, " does not support O_DIRECT (statx reports no "
        "direct I/O alignment); set EngineOptions::nvme.path to a directory "
        "on ext4, xfs or tmpfs (Linux >= 6.6)"));
  }
  *io_align = stx.stx_dio_offset_align;
  *mem_align = stx.stx_dio_mem_align;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tier>> MakeNvmeTier(
    const NvmeConfig& config, std::unique_ptr<IoBackend> backend) {
  STRATA_RETURN_IF_ERROR(CheckConfig(config));
  STRATA_RETURN_IF_ERROR(MakeDirectories(config.path));
  std::string file = absl::StrCat(
      config.path, "/",
      absl::string_view(kNvmeBlockFile.data(), kNvmeBlockFile.size()));
  STRATA_ASSIGN_OR_RETURN(const int fd, OpenBlockFile(config, file));
  auto fail = [fd](absl::Status s) {
    ::close(fd);
    return s;
  };
  uint64_t io_align = 0, mem_align = 0;
  if (absl::Status s = DirectIoAlignment(fd, file, &io_align, &mem_align);
      !s.ok()) {
    return fail(s);
  }
  if (backend == nullptr) backend = MakeUringBackend();
  absl::Status opened = backend->Open(fd, config.queue_depth);
  if (!opened.ok()) {
    backend.reset();
    return fail(opened);
  }
  auto tier = std::make_unique<NvmeTier>(config, std::move(file), fd,
                                         std::move(backend), io_align,
                                         mem_align);
  STRATA_RETURN_IF_ERROR(tier->Start());
  return std::unique_ptr<Tier>(std::move(tier));
}

}  // namespace strata::tiers
