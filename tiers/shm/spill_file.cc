#include "tiers/shm/spill_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "util/errors.h"

namespace strata::tiers::shm {

absl::StatusOr<std::unique_ptr<SpillFile>> SpillFile::Open(
    const std::string& path, const std::function<void(std::string_view)>& log) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EINVAL) {
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && log) {
      log(absl::StrCat("strata: shm spill file ", path, ": the file system refuses "
                       "O_DIRECT; spilling through the page cache"));
    }
  }
  if (fd < 0) {
    return ErrnoStatus(errno, absl::StrCat("opening shm spill file ", path),
                       "make its directory writable, or create the segment with "
                       "another EngineOptions::shm.spill_path");
  }
  std::unique_ptr<SpillFile> file(new SpillFile(path, fd));
  if (int rc = io_uring_queue_init(8, &file->ring_, 0); rc < 0) {
    return ErrnoStatus(-rc, absl::StrCat("shm spill file ", path, ": io_uring_setup"),
                       "the spill file needs io_uring (Linux >= 5.6, not disabled "
                       "by kernel.io_uring_disabled)");
  }
  file->ring_open_ = true;
  return file;
}

SpillFile::~SpillFile() {
  if (ring_open_) io_uring_queue_exit(&ring_);
  close(fd_);
}

absl::Status SpillFile::Transfer(bool write, uint64_t offset, std::byte* data,
                                 uint64_t len) {
  std::lock_guard lock(mu_);
  uint64_t done = 0;
  int stalls = 0;
  while (done < len) {
    if (stalls > 100) {
      return absl::InternalError(absl::StrCat(
          "shm spill file ", path_, ": no progress ", write ? "writing" : "reading",
          " offset ", offset + done, " after 100 short transfers"));
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return absl::InternalError("shm spill file: io_uring queue full");
    const unsigned n = static_cast<unsigned>(std::min<uint64_t>(len - done, 1u << 30));
    if (write) {
      io_uring_prep_write(sqe, fd_, data + done, n, offset + done);
    } else {
      io_uring_prep_read(sqe, fd_, data + done, n, offset + done);
    }
    if (int rc = io_uring_submit(&ring_); rc < 0) {
      return ErrnoStatus(-rc, absl::StrCat("shm spill file ", path_, ": io_uring_submit"));
    }
    io_uring_cqe* cqe = nullptr;
    int rc;
    do {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    } while (rc == -EINTR);
    if (rc < 0) return ErrnoStatus(-rc, absl::StrCat("shm spill file ", path_, ": io_uring_wait_cqe"));
    const int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (res == -EAGAIN || res == -EINTR) {
      ++stalls;
      continue;
    }
    if (res < 0) {
      return ErrnoStatus(-res, absl::StrCat(write ? "writing " : "reading ", len,
                                            " bytes at offset ", offset,
                                            " of shm spill file ", path_),
                         write ? "free space under the spill path" : "");
    }
    if (res == 0) {
      if (!write) {
        return absl::DataLossError(absl::StrCat(
            "shm spill file ", path_, " ends before offset ", offset + done,
            "; it was truncated behind the segment's back"));
      }
      return absl::InternalError(absl::StrCat("shm spill file ", path_, ": a write moved 0 bytes"));
    }
    // A short transfer goes on from the last 4 KiB boundary: O_DIRECT
    // takes aligned offsets only (the bytes in between move twice).
    const uint64_t before = done;
    done += static_cast<uint64_t>(res);
    if (done < len) done &= ~uint64_t{4095};
    stalls = done > before ? 0 : stalls + 1;
  }
  return absl::OkStatus();
}

absl::Status SpillFile::Write(uint64_t offset, std::span<const std::byte> bytes) {
  return Transfer(true, offset, const_cast<std::byte*>(bytes.data()), bytes.size());
}

absl::Status SpillFile::Read(uint64_t offset, std::span<std::byte> bytes) {
  return Transfer(false, offset, bytes.data(), bytes.size());
}

absl::Status SpillFile::Punch(uint64_t offset, uint64_t bytes) {
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(bytes)) != 0 &&
      errno != EOPNOTSUPP) {
    return ErrnoStatus(errno, absl::StrCat("punching ", bytes, " bytes at ", offset,
                                           " out of shm spill file ", path_));
  }
  return absl::OkStatus();
}

}  // namespace strata::tiers::shm
