#include "bench/nvme_baseline.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"

namespace strata::bench {
namespace {

// The bench and the example that share this file use the public API only:
// errno through Abseil's mapping, not the engine's internal helper.
absl::Status BaselineError(int err, std::string_view what) {
  return absl::ErrnoToStatus(err, absl::string_view(what.data(), what.size()));
}

constexpr uint64_t kAlign = 4096;

struct Closer {
  int fd;
  ~Closer() {
    if (fd >= 0) ::close(fd);
  }
};

// The buffers are mapped the way the engine maps its host arena (anonymous,
// transparent huge pages): a device's DMA cost depends on how many pages an
// I/O spans, so a baseline on 4 KiB pages would not be the same I/O.
struct Unmapper {
  size_t bytes;
  void operator()(std::byte* p) const { ::munmap(p, bytes); }
};

struct Slot {
  uint64_t offset = 0;  // of the whole I/O
  uint64_t len = 0;
  uint64_t done = 0;
  uint32_t retries = 0;
};

absl::Status CheckSizes(uint64_t io_bytes, uint32_t queue_depth) {
  if (io_bytes == 0 || io_bytes % kAlign != 0 || io_bytes > (1u << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nvme baseline: I/O size ", io_bytes,
        " must be a non-zero multiple of 4096 of at most 1 GiB (O_DIRECT)"));
  }
  if (queue_depth == 0 || queue_depth > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nvme baseline: queue depth ", queue_depth, " must be in [1, 4096]"));
  }
  return absl::OkStatus();
}

// CheckSizes, and `total_bytes` is a non-zero whole number of blocks.
absl::Status CheckSequential(uint64_t block_bytes, uint32_t queue_depth,
                             uint64_t total_bytes) {
  if (absl::Status s = CheckSizes(block_bytes, queue_depth); !s.ok()) return s;
  if (total_bytes == 0 || total_bytes % block_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nvme baseline: total ", total_bytes,
        " must be a non-zero multiple of the block size ", block_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

// One ring of `queue_depth` entries and the buffers it reads into or writes
// from, set up once and kept for every Run: what an engine's long-lived ring
// costs per I/O, with none of the setup in the timed loop.
class RawIoLoop {
 public:
  // Sets up the ring and `buffer_count` buffers of `io_bytes` for `fd`
  // (which the caller keeps open while this lives).
  static absl::StatusOr<std::unique_ptr<RawIoLoop>> Create(
      std::string path, int fd, bool write, uint64_t io_bytes,
      uint32_t queue_depth, uint64_t memory_bytes);

  // Exits the ring first (it waits for, or cancels, what is in flight), and
  // only then unmaps the buffers.
  ~RawIoLoop() { io_uring_queue_exit(&ring_); }

  // Runs `count` I/Os whose offsets come from `next_offset`, `queue_depth`
  // in flight, from the buffers taken in turn (across calls too, so the I/O
  // walks all the memory). Times the I/O loop only. After an error the
  // loop is broken: later calls return kFailedPrecondition.
  absl::StatusOr<RawIoResult> Run(uint64_t count,
                                  const std::function<uint64_t()>& next_offset);

  bool fixed_buffers() const { return fixed_; }

 private:
  RawIoLoop(std::string path, int fd, bool write, uint64_t io_bytes,
            uint32_t queue_depth, uint32_t buffer_count)
      : path_(std::move(path)), fd_(fd), write_(write), io_bytes_(io_bytes),
        queue_depth_(queue_depth), buffer_count_(buffer_count) {}
  void Prep(uint32_t i);

  const std::string path_;
  const int fd_;
  const bool write_;
  const uint64_t io_bytes_;
  const uint32_t queue_depth_;
  const uint32_t buffer_count_;
  std::unique_ptr<std::byte, Unmapper> buffers_;
  io_uring ring_;  // initialized by Create before the object escapes
  bool fixed_ = false;
  bool broken_ = false;
  std::vector<Slot> slots_;
  std::vector<uint32_t> idle_;
  // Buffers in turn, oldest returned first.
  std::deque<uint32_t> free_buffers_;
  std::vector<uint32_t> buffer_of_;
};

absl::StatusOr<std::unique_ptr<RawIoLoop>> RawIoLoop::Create(
    std::string path, int fd, bool write, uint64_t io_bytes,
    uint32_t queue_depth, uint64_t memory_bytes) {
  const uint32_t buffer_count = static_cast<uint32_t>(
      std::max<uint64_t>(queue_depth, std::min<uint64_t>(memory_bytes / io_bytes, 1024)));
  const size_t buffer_bytes = io_bytes * buffer_count;
  void* mapped = ::mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) {
    return BaselineError(errno, absl::StrCat("nvme baseline: cannot map ",
                                           buffer_bytes, " bytes"));
  }
  (void)::madvise(mapped, buffer_bytes, MADV_HUGEPAGE);
  std::unique_ptr<std::byte, Unmapper> buffers(static_cast<std::byte*>(mapped),
                                               Unmapper{buffer_bytes});
  // Pseudo-random contents, so compressing or deduplicating devices do not
  // flatter the write baseline.
  {
    std::mt19937_64 rng(42);
    auto* words = reinterpret_cast<uint64_t*>(buffers.get());
    for (uint64_t i = 0; i < buffer_bytes / 8; ++i) words[i] = rng();
  }
  std::unique_ptr<RawIoLoop> loop(new RawIoLoop(std::move(path), fd, write,
                                                io_bytes, queue_depth,
                                                buffer_count));
  int rc = io_uring_queue_init(queue_depth, &loop->ring_, 0);
  if (rc < 0) {
    // The destructor must not exit a ring that was never set up.
    (void)loop.release();
    return BaselineError(-rc, "nvme baseline: io_uring_queue_init");
  }
  loop->buffers_ = std::move(buffers);
  std::vector<iovec> iovecs(buffer_count);
  for (uint32_t i = 0; i < buffer_count; ++i) {
    iovecs[i] = {loop->buffers_.get() + i * io_bytes, static_cast<size_t>(io_bytes)};
  }
  loop->fixed_ =
      io_uring_register_buffers(&loop->ring_, iovecs.data(), buffer_count) == 0;
  loop->slots_.resize(queue_depth);
  for (uint32_t i = 0; i < queue_depth; ++i) loop->idle_.push_back(queue_depth - 1 - i);
  for (uint32_t i = 0; i < buffer_count; ++i) loop->free_buffers_.push_back(i);
  loop->buffer_of_.assign(queue_depth, 0);
  return loop;
}

void RawIoLoop::Prep(uint32_t i) {
  Slot& s = slots_[i];
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // never null: <= depth
  const uint32_t b = buffer_of_[i];
  std::byte* buf = buffers_.get() + b * io_bytes_ + s.done;
  const unsigned len = static_cast<unsigned>(s.len - s.done);
  const uint64_t off = s.offset + s.done;
  if (write_) {
    if (fixed_) io_uring_prep_write_fixed(sqe, fd_, buf, len, off, static_cast<int>(b));
    else io_uring_prep_write(sqe, fd_, buf, len, off);
  } else {
    if (fixed_) io_uring_prep_read_fixed(sqe, fd_, buf, len, off, static_cast<int>(b));
    else io_uring_prep_read(sqe, fd_, buf, len, off);
  }
  io_uring_sqe_set_data64(sqe, i);
}

absl::StatusOr<RawIoResult> RawIoLoop::Run(
    uint64_t count, const std::function<uint64_t()>& next_offset) {
  if (broken_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "nvme baseline: the ring on ", path_,
        " failed before; open a new one"));
  }
  // Any early return below leaves I/Os in flight or SQEs prepared.
  broken_ = true;
  RawIoResult result;
  result.fixed_buffers = fixed_;
  uint64_t issued = 0, completed = 0;
  uint32_t in_flight = 0;
  // The first error; once set, nothing new is issued and the loop drains
  // what is in flight (the kernel must be done with the buffers before they
  // are reused or freed).
  absl::Status error;
  int rc = 0;
  const auto start = std::chrono::steady_clock::now();
  while ((error.ok() && completed < count) || in_flight > 0) {
    bool prepared = false;
    while (error.ok() && !idle_.empty() && issued < count) {
      const uint32_t i = idle_.back();
      idle_.pop_back();
      slots_[i] = {.offset = next_offset(), .len = io_bytes_, .done = 0};
      buffer_of_[i] = free_buffers_.front();
      free_buffers_.pop_front();
      Prep(i);
      prepared = true;
      ++issued;
      ++in_flight;
    }
    if (prepared) {
      rc = io_uring_submit(&ring_);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
        // Prepared SQEs stay in the ring; exiting it cancels them.
        return BaselineError(-rc, "nvme baseline: io_uring_submit");
      }
    }
    io_uring_cqe* cqe;
    rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return BaselineError(-rc, "nvme baseline: io_uring_wait_cqe");
    bool resubmit = false;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      const uint32_t i = static_cast<uint32_t>(io_uring_cqe_get_data64(cqe));
      Slot& s = slots_[i];
      const int res = cqe->res;
      const uint64_t at = s.offset + s.done;
      absl::Status failed;
      if (res == -EAGAIN || res == -EINTR) {
        if (++s.retries <= 16) {
          Prep(i);
          resubmit = true;
          continue;
        }
        failed = BaselineError(-res, absl::StrCat("nvme baseline: ", path_,
                                                " offset ", at, ", 16 retries"));
      } else if (res < 0) {
        failed = BaselineError(-res, absl::StrCat("nvme baseline: ",
                                                write_ ? "write" : "read", " of ",
                                                path_, " at offset ", at));
      } else if (res == 0) {
        failed = absl::OutOfRangeError(absl::StrCat(
            "nvme baseline: ", path_, " ends before offset ", at,
            "; write it first (RawSequentialWrite)"));
      } else {
        s.done += static_cast<uint64_t>(res);
        if (s.done < s.len) {
          // Short: the rest, from an aligned offset (O_DIRECT); bounded.
          s.done = s.done / kAlign * kAlign;
          if (s.offset + s.done > at || ++s.retries <= 16) {
            Prep(i);
            resubmit = true;
            continue;
          }
          failed = absl::DataLossError(absl::StrCat(
              "nvme baseline: ", path_, " keeps returning short I/O at offset ",
              at));
        } else {
          result.bytes += s.len;
          ++result.ops;
          ++completed;
        }
      }
      if (!failed.ok() && error.ok()) error = failed;
      --in_flight;
      idle_.push_back(i);
      free_buffers_.push_back(buffer_of_[i]);
    }
    io_uring_cq_advance(&ring_, seen);
    if (resubmit) {
      rc = io_uring_submit(&ring_);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
        return BaselineError(-rc, "nvme baseline: io_uring_submit");
      }
    }
  }
  if (!error.ok()) return error;
  result.seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  broken_ = false;
  return result;
}

namespace {

// A one-shot loop: set up, run `count` I/Os, tear down.
absl::StatusOr<RawIoResult> RunRing(const std::string& path, int fd,
                                    bool write, uint64_t io_bytes,
                                    uint32_t queue_depth, uint64_t count,
                                    uint64_t memory_bytes,
                                    const std::function<uint64_t()>& next_offset) {
  absl::StatusOr<std::unique_ptr<RawIoLoop>> loop =
      RawIoLoop::Create(path, fd, write, io_bytes, queue_depth, memory_bytes);
  if (!loop.ok()) return loop.status();
  return (*loop)->Run(count, next_offset);
}

// Offsets 0, block, 2 * block, ...
std::function<uint64_t()> SequentialOffsets(uint64_t block_bytes) {
  return [next = uint64_t{0}, block_bytes]() mutable {
    const uint64_t at = next;
    next += block_bytes;
    return at;
  };
}

absl::StatusOr<int> OpenDirect(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return BaselineError(errno, absl::StrCat("nvme baseline: cannot open ", path,
                                           " with O_DIRECT"));
  }
  return fd;
}

absl::StatusOr<uint64_t> FileSize(const std::string& path, int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return BaselineError(errno, absl::StrCat("nvme baseline: fstat ", path));
  }
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace

absl::StatusOr<RawIoResult> RawSequentialWrite(const std::string& path,
                                               uint64_t block_bytes,
                                               uint32_t queue_depth,
                                               uint64_t total_bytes,
                                               uint64_t memory_bytes) {
  if (absl::Status s = CheckSequential(block_bytes, queue_depth, total_bytes);
      !s.ok()) {
    return s;
  }
  // No O_TRUNC: an existing file is overwritten in place, as the engine
  // rewrites its extents (a fresh, preallocated extent costs the file system
  // a conversion on its first write, a rewrite does not).
  absl::StatusOr<int> fd = OpenDirect(path, O_RDWR | O_CREAT);
  if (!fd.ok()) return fd.status();
  Closer closer{*fd};
  if (::fallocate(*fd, 0, 0, static_cast<off_t>(total_bytes)) != 0 &&
      errno != EOPNOTSUPP) {
    return BaselineError(errno, absl::StrCat("nvme baseline: fallocate ", path,
                                           " to ", total_bytes, " bytes"));
  }
  return RunRing(path, *fd, /*write=*/true, block_bytes, queue_depth,
                 total_bytes / block_bytes, memory_bytes,
                 SequentialOffsets(block_bytes));
}

absl::StatusOr<RawIoResult> RawSequentialRead(const std::string& path,
                                              uint64_t block_bytes,
                                              uint32_t queue_depth,
                                              uint64_t total_bytes,
                                              uint64_t memory_bytes) {
  if (absl::Status s = CheckSequential(block_bytes, queue_depth, total_bytes);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<int> fd = OpenDirect(path, O_RDONLY);
  if (!fd.ok()) return fd.status();
  Closer closer{*fd};
  absl::StatusOr<uint64_t> size = FileSize(path, *fd);
  if (!size.ok()) return size.status();
  if (*size < total_bytes) {
    return absl::OutOfRangeError(absl::StrCat(
        "nvme baseline: ", path, " has ", *size, " bytes, fewer than the ",
        total_bytes, " to read; write it first (RawSequentialWrite)"));
  }
  return RunRing(path, *fd, /*write=*/false, block_bytes, queue_depth,
                 total_bytes / block_bytes, memory_bytes,
                 SequentialOffsets(block_bytes));
}

absl::StatusOr<std::unique_ptr<RawRandomReader>> RawRandomReader::Open(
    const std::string& path, uint64_t io_bytes, uint32_t queue_depth,
    uint64_t seed, uint64_t memory_bytes) {
  if (absl::Status s = CheckSizes(io_bytes, queue_depth); !s.ok()) return s;
  absl::StatusOr<int> fd = OpenDirect(path, O_RDONLY);
  if (!fd.ok()) return fd.status();
  std::unique_ptr<RawRandomReader> reader(new RawRandomReader(path, *fd, seed));
  absl::StatusOr<uint64_t> size = FileSize(path, *fd);
  if (!size.ok()) return size.status();
  const uint64_t slots = *size / io_bytes;
  if (slots == 0) {
    return absl::OutOfRangeError(absl::StrCat(
        "nvme baseline: ", path, " has ", *size, " bytes, less than one I/O of ",
        io_bytes, "; write it first (RawSequentialWrite)"));
  }
  reader->pick_ = std::uniform_int_distribution<uint64_t>(0, slots - 1);
  reader->io_bytes_ = io_bytes;
  absl::StatusOr<std::unique_ptr<RawIoLoop>> loop = RawIoLoop::Create(
      path, *fd, /*write=*/false, io_bytes, queue_depth, memory_bytes);
  if (!loop.ok()) return loop.status();
  reader->loop_ = std::move(*loop);
  return reader;
}

RawRandomReader::RawRandomReader(std::string path, int fd, uint64_t seed)
    : path_(std::move(path)), fd_(fd), rng_(seed) {}

RawRandomReader::~RawRandomReader() {
  loop_.reset();  // done with the file before it is closed
  ::close(fd_);
}

absl::StatusOr<RawIoResult> RawRandomReader::Read(uint64_t count) {
  if (count == 0) {
    return absl::InvalidArgumentError("nvme baseline: count must be > 0");
  }
  return loop_->Run(count, [this] { return pick_(rng_) * io_bytes_; });
}

bool RawRandomReader::fixed_buffers() const { return loop_->fixed_buffers(); }

}  // namespace strata::bench
