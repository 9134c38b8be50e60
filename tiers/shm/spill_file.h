// The spill file of a node segment: where unpinned shared blocks go when
// the segment is full, and come back from on the next pin by whichever
// process asks. One file per segment (its path is in the segment's header,
// so every process opens the same one), opened O_DIRECT by each attached
// process.
//
// Why synchronous pread/pwrite and not io_uring, as the NVMe tier uses: a
// process can die (SIGKILL) with I/O in flight, and the segment's other
// processes then reclaim the frames it was reading into or writing from
// and reuse them. Synchronous direct I/O completes before its task can
// exit (the task waits for the bio uninterruptibly), so a dead process's
// I/O is over once it is reaped. io_uring requests are not: at exit the
// kernel waits only for "tracked" requests, and a plain read's DMA can land
// in the shared mapping after the process is gone, in a frame that now
// holds another block (the kill-cycle test caught exactly that under load:
// a spilled block read back with a checksum mismatch).
//
// A block's place in the file is fixed when its tensor is created (the
// segment hands out regions), so the file needs no allocator; a removed
// tensor's region is punched out (FALLOC_FL_PUNCH_HOLE).
//
// Threads: thread-safe (pread/pwrite on one fd; an eviction or a load
// waits for its own I/O, and they are rare next to pins).
#ifndef STRATA_TIERS_SHM_SPILL_FILE_H_
#define STRATA_TIERS_SHM_SPILL_FILE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::tiers::shm {

class SpillFile {
 public:
  // Opens (creating it if missing) the file at `path`. Falls back to
  // buffered I/O, saying so once through `log`, where the file system
  // refuses O_DIRECT.
  static absl::StatusOr<std::unique_ptr<SpillFile>> Open(
      const std::string& path, const std::function<void(std::string_view)>& log);
  ~SpillFile();
  SpillFile(const SpillFile&) = delete;
  SpillFile& operator=(const SpillFile&) = delete;

  // Moves all of `bytes` (4096-aligned memory, offset and length), or
  // returns the error; short transfers are continued.
  absl::Status Write(uint64_t offset, std::span<const std::byte> bytes);
  absl::Status Read(uint64_t offset, std::span<std::byte> bytes);
  // Gives the space of [offset, offset + bytes) back to the file system.
  absl::Status Punch(uint64_t offset, uint64_t bytes);

  const std::string& path() const { return path_; }

 private:
  SpillFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status Transfer(bool write, uint64_t offset, std::byte* data, uint64_t len);

  const std::string path_;
  const int fd_;
};

}  // namespace strata::tiers::shm

#endif  // STRATA_TIERS_SHM_SPILL_FILE_H_
