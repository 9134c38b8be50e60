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
#include "util/errors.h"

namespace strata::bench {
namespace {

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

// Runs `count` I/Os whose offsets come from `next_offset`, `io_bytes` each,
// with `queue_depth` in flight, from buffers covering `memory_bytes` (at least
// one buffer per I/O in flight), taken in turn.
absl::StatusOr<RawIoResult> RunRing(const std::string& path, int fd,
                                    bool write, uint64_t io_bytes,
                                    uint32_t queue_depth, uint64_t count,
                                    uint64_t memory_bytes,
                                    const std::function<uint64_t()>& next_offset) {
  const uint32_t buffer_count = static_cast<uint32_t>(
      std::max<uint64_t>(queue_depth, std::min<uint64_t>(memory_bytes / io_bytes, 1024)));
  io_uring ring;
  int rc = io_uring_queue_init(queue_depth, &ring, 0);
  if (rc < 0) return ErrnoStatus(-rc, "nvme baseline: io_uring_queue_init");
  struct RingCloser {
    io_uring* r;
    ~RingCloser() { io_uring_queue_exit(r); }
  } ring_closer{&ring};

  const size_t buffer_bytes = io_bytes * buffer_count;
  void* mapped = ::mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) {
    return ErrnoStatus(errno, absl::StrCat("nvme baseline: cannot map ",
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
  std::vector<iovec> iovecs(buffer_count);
  for (uint32_t i = 0; i < buffer_count; ++i) {
    iovecs[i] = {buffers.get() + i * io_bytes, static_cast<size_t>(io_bytes)};
  }
  const bool fixed =
      io_uring_register_buffers(&ring, iovecs.data(), buffer_count) == 0;

  std::vector<Slot> slots(queue_depth);
  std::vector<uint32_t> idle;
  for (uint32_t i = 0; i < queue_depth; ++i) idle.push_back(queue_depth - 1 - i);
  // Buffers in turn, oldest returned first, so the I/O walks all the memory.
  std::deque<uint32_t> free_buffers;
  for (uint32_t i = 0; i < buffer_count; ++i) free_buffers.push_back(i);
  std::vector<uint32_t> buffer_of(queue_depth, 0);
  auto prep = [&](uint32_t i) {
    Slot& s = slots[i];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);  // never null: <= depth
    const uint32_t b = buffer_of[i];
    std::byte* buf = buffers.get() + b * io_bytes + s.done;
    const unsigned len = static_cast<unsigned>(s.len - s.done);
    const uint64_t off = s.offset + s.done;
    if (write) {
      if (fixed) io_uring_prep_write_fixed(sqe, fd, buf, len, off, static_cast<int>(b));
      else io_uring_prep_write(sqe, fd, buf, len, off);
    } else {
      if (fixed) io_uring_prep_read_fixed(sqe, fd, buf, len, off, static_cast<int>(b));
      else io_uring_prep_read(sqe, fd, buf, len, off);
    }
    io_uring_sqe_set_data64(sqe, i);
  };

  RawIoResult result;
  result.fixed_buffers = fixed;
  uint64_t issued = 0, completed = 0;
  uint32_t in_flight = 0;
  // The first error; once set, nothing new is issued and the loop drains
  // what is in flight (the kernel must be done with the buffers before they
  // are freed).
  absl::Status error;
  const auto start = std::chrono::steady_clock::now();
  while ((error.ok() && completed < count) || in_flight > 0) {
    bool prepared = false;
    while (error.ok() && !idle.empty() && issued < count) {
      const uint32_t i = idle.back();
      idle.pop_back();
      slots[i] = {.offset = next_offset(), .len = io_bytes, .done = 0};
      buffer_of[i] = free_buffers.front();
      free_buffers.pop_front();
      prep(i);
      prepared = true;
      ++issued;
      ++in_flight;
    }
    if (prepared) {
      rc = io_uring_submit(&ring);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
        // Prepared SQEs stay in the ring; exiting it cancels them.
        return ErrnoStatus(-rc, "nvme baseline: io_uring_submit");
      }
    }
    io_uring_cqe* cqe;
    rc = io_uring_wait_cqe(&ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return ErrnoStatus(-rc, "nvme baseline: io_uring_wait_cqe");
    bool resubmit = false;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      const uint32_t i = static_cast<uint32_t>(io_uring_cqe_get_data64(cqe));
      Slot& s = slots[i];
      const int res = cqe->res;
      const uint64_t at = s.offset + s.done;
      absl::Status failed;
      if (res == -EAGAIN || res == -EINTR) {
        if (++s.retries <= 16) {
          prep(i);
          resubmit = true;
          continue;
        }
        failed = ErrnoStatus(-res, absl::StrCat("nvme baseline: ", path,
                                                " offset ", at, ", 16 retries"));
      } else if (res < 0) {
        failed = ErrnoStatus(-res, absl::StrCat("nvme baseline: ",
                                                write ? "write" : "read", " of ",
                                                path, " at offset ", at));
      } else if (res == 0) {
        failed = absl::OutOfRangeError(absl::StrCat(
            "nvme baseline: ", path, " ends before offset ", at,
            "; write it first (RawSequentialWrite)"));
      } else {
        s.done += static_cast<uint64_t>(res);
        if (s.done < s.len) {
          // Short: the rest, from an aligned offset (O_DIRECT); bounded.
          s.done = s.done / kAlign * kAlign;
          if (s.offset + s.done > at || ++s.retries <= 16) {
            prep(i);
            resubmit = true;
            continue;
          }
          failed = absl::DataLossError(absl::StrCat(
              "nvme baseline: ", path, " keeps returning short I/O at offset ",
              at));
        } else {
          result.bytes += s.len;
          ++result.ops;
          ++completed;
        }
      }
      if (!failed.ok() && error.ok()) error = failed;
      --in_flight;
      idle.push_back(i);
      free_buffers.push_back(buffer_of[i]);
    }
    io_uring_cq_advance(&ring, seen);
    if (resubmit) {
      rc = io_uring_submit(&ring);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
        return ErrnoStatus(-rc, "nvme baseline: io_uring_submit");
      }
    }
  }
  if (!error.ok()) return error;
  result.seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  return result;
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
    return ErrnoStatus(errno, absl::StrCat("nvme baseline: cannot open ", path,
                                           " with O_DIRECT"));
  }
  return fd;
}

absl::StatusOr<uint64_t> FileSize(const std::string& path, int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("nvme baseline: fstat ", path));
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
    return ErrnoStatus(errno, absl::StrCat("nvme baseline: fallocate ", path,
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

absl::StatusOr<RawIoResult> RawRandomRead(const std::string& path,
                                          uint64_t io_bytes,
                                          uint32_t queue_depth, uint64_t count,
                                          uint64_t seed, uint64_t memory_bytes) {
  if (absl::Status s = CheckSizes(io_bytes, queue_depth); !s.ok()) return s;
  if (count == 0) {
    return absl::InvalidArgumentError("nvme baseline: count must be > 0");
  }
  absl::StatusOr<int> fd = OpenDirect(path, O_RDONLY);
  if (!fd.ok()) return fd.status();
  Closer closer{*fd};
  absl::StatusOr<uint64_t> size = FileSize(path, *fd);
  if (!size.ok()) return size.status();
  const uint64_t slots = *size / io_bytes;
  if (slots == 0) {
    return absl::OutOfRangeError(absl::StrCat(
        "nvme baseline: ", path, " has ", *size, " bytes, less than one I/O of ",
        io_bytes, "; write it first (RawSequentialWrite)"));
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint64_t> pick(0, slots - 1);
  return RunRing(path, *fd, /*write=*/false, io_bytes, queue_depth, count,
                 memory_bytes, [&] { return pick(rng) * io_bytes; });
}

}  // namespace strata::bench
