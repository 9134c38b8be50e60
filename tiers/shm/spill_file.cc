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
  return std::unique_ptr<SpillFile>(new SpillFile(path, fd));
}

SpillFile::~SpillFile() { close(fd_); }

absl::Status SpillFile::Transfer(bool write, uint64_t offset, std::byte* data,
                                 uint64_t len) {
  uint64_t done = 0;
  int stalls = 0;
  while (done < len) {
    if (stalls > 100) {
      return absl::InternalError(absl::StrCat(
          "shm spill file ", path_, ": no progress ", write ? "writing" : "reading",
          " offset ", offset + done, " after 100 short transfers"));
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, 1u << 30));
    const off_t at = static_cast<off_t>(offset + done);
    const ssize_t res = write ? ::pwrite(fd_, data + done, n, at) : ::pread(fd_, data + done, n, at);
    if (res < 0 && (errno == EINTR || errno == EAGAIN)) {
      ++stalls;
      continue;
    }
    if (res < 0) {
      return ErrnoStatus(errno, absl::StrCat(write ? "writing " : "reading ", len,
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
