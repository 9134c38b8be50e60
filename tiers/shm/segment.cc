#include "tiers/shm/segment.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "util/checksum.h"
#include "util/errors.h"
#include "util/status_macros.h"
#include "util/strings.h"
#include "xxhash.h"

namespace strata::tiers::shm {
namespace {

constexpr absl::Duration kWaitSlice = absl::Milliseconds(100);

uint64_t RoundUp(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

long Futex(std::atomic<uint32_t>* word, int op, uint32_t value,
           const timespec* timeout) {
  // Not FUTEX_PRIVATE: the word lies in memory other processes map.
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value,
                 timeout, nullptr, 0);
}

bool ValidSegmentName(std::string_view name) {
  if (name.empty() || name.size() > 200) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

// Field 22 of /proc/<pid>/stat (the start time, in clock ticks since boot)
// of a process that runs; nullopt for one that is gone or a zombie (a
// killed process its parent has not reaped holds nothing any more).
std::optional<uint64_t> StartTicks(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(paren + 1));
  std::string field;
  // Fields after the name start at 3 (the state).
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 3 && (field == "Z" || field == "X" || field == "x")) return std::nullopt;
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  }
  return std::nullopt;
}

struct Layout {
  uint64_t procs_offset, dir_offset, map_offset, links_offset, arena_offset,
      total_bytes;
};

Layout ComputeLayout(uint32_t max_processes, uint32_t max_tensors,
                     uint64_t arena_units) {
  Layout l;
  l.procs_offset = kHeaderBytes;
  l.dir_offset = RoundUp(l.procs_offset + uint64_t{max_processes} * sizeof(ProcessSlot), 4096);
  l.map_offset = RoundUp(l.dir_offset + uint64_t{max_tensors} * sizeof(DirEntry), 4096);
  l.links_offset = RoundUp(l.map_offset + arena_units, 4096);
  l.arena_offset = RoundUp(l.links_offset + arena_units * sizeof(Buddy::Link), 4096);
  l.total_bytes = l.arena_offset + arena_units * Buddy::kUnit;
  return l;
}

uint64_t HeaderChecksum(const ImmutableHeader& h) {
  return XXH3_64bits(&h, offsetof(ImmutableHeader, checksum));
}

// Bytes of a tensor's table: its block records, then one row of counts per
// process slot, each row a whole number of cache lines.
uint64_t CountRowBytes(uint64_t num_blocks) {
  return RoundUp(num_blocks * sizeof(std::atomic<uint32_t>), 64);
}
uint64_t TableUnits(uint64_t num_blocks, uint32_t max_processes) {
  const uint64_t bytes = num_blocks * sizeof(BlockRecord) +
                         uint64_t{max_processes} * CountRowBytes(num_blocks);
  return (bytes + Buddy::kUnit - 1) / Buddy::kUnit;
}
uint64_t FrameUnits(uint64_t block_bytes) {
  return (block_bytes + Buddy::kUnit - 1) / Buddy::kUnit;
}

absl::Status Corrupt(std::string_view segment, std::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(
      "shm segment ", Sv(segment), " is corrupt: ", Sv(what),
      "; remove it (`strata shm rm <name>`, or strata::RemoveShmSegment) once no "
      "process uses it, and create it again"));
}

// Checks a directory entry that claims to be in use: everything a pin or
// the allocator's rebuild will trust.
absl::Status CheckEntry(const DirEntry& e, uint32_t index, const ImmutableHeader& h,
                        std::string_view segment) {
  auto bad = [&](std::string_view why) {
    return Corrupt(segment, absl::StrCat("directory entry ", index, " ", Sv(why)));
  };
  if (std::memchr(e.name, '\0', kMaxNameBytes) == nullptr || e.name[0] == '\0') {
    return bad("has no valid name");
  }
  if (e.ndims == 0 || e.ndims > kMaxDims) return bad("has a bad rank");
  if (e.dtype > static_cast<uint8_t>(DType::kF64)) return bad("has a bad dtype");
  uint64_t elements = 1;
  for (int i = 0; i < e.ndims; ++i) {
    if (e.shape[i] <= 0 ||
        __builtin_mul_overflow(elements, static_cast<uint64_t>(e.shape[i]), &elements)) {
      return bad("has a bad shape");
    }
  }
  uint64_t size = 0;
  if (__builtin_mul_overflow(elements, DTypeSize(static_cast<DType>(e.dtype)), &size) ||
      size != e.size_bytes) {
    return bad("has a size that does not match its shape");
  }
  if (e.block_bytes == 0 || e.block_bytes % Buddy::kUnit != 0 ||
      e.num_blocks != (e.size_bytes + e.block_bytes - 1) / e.block_bytes ||
      e.num_blocks > (uint64_t{1} << 40)) {
    return bad("has bad block sizes");
  }
  if (e.spill_offset % Buddy::kUnit != 0) return bad("has a misaligned spill region");
  if (e.table_units != TableUnits(e.num_blocks, h.max_processes) ||
      e.table_offset < h.arena_offset ||
      (e.table_offset - h.arena_offset) % Buddy::kUnit != 0 ||
      (e.table_offset - h.arena_offset) / Buddy::kUnit > h.arena_units ||
      e.table_units > h.arena_units -
                          (e.table_offset - h.arena_offset) / Buddy::kUnit) {
    return bad("has a block table outside the arena");
  }
  return absl::OkStatus();
}

}  // namespace

// The segment's lock, held: unlocks when it goes.
class Segment::Locked {
 public:
  explicit Locked(pthread_mutex_t* mu) : mu_(mu) {}
  Locked(Locked&& other) noexcept : mu_(std::exchange(other.mu_, nullptr)) {}
  Locked& operator=(Locked&&) = delete;
  ~Locked() {
    if (mu_ != nullptr) pthread_mutex_unlock(mu_);
  }

 private:
  pthread_mutex_t* mu_;
};

std::string Segment::ObjectName(std::string_view name) {
  return absl::StrCat("/strata-", Sv(name));
}

Segment::Segment(SegmentOptions options, std::byte* base, uint64_t size, int fd)
    : options_(std::move(options)),
      name_(ObjectName(options_.name)),
      base_(base),
      size_(size),
      fd_(fd) {}

ProcessSlot& Segment::process(uint32_t i) const {
  return reinterpret_cast<ProcessSlot*>(at(header().fixed.procs_offset))[i];
}
DirEntry& Segment::entry(uint32_t i) const {
  return reinterpret_cast<DirEntry*>(at(header().fixed.dir_offset))[i];
}
BlockRecord* Segment::records(const DirEntry& e) const {
  return reinterpret_cast<BlockRecord*>(at(e.table_offset));
}
uint64_t Segment::CountRowStride(const DirEntry& e) const {
  return CountRowBytes(e.num_blocks);
}
std::atomic<uint32_t>* Segment::counts(const DirEntry& e, uint32_t slot) const {
  return reinterpret_cast<std::atomic<uint32_t>*>(
      at(e.table_offset + e.num_blocks * sizeof(BlockRecord) +
         slot * CountRowStride(e)));
}
Buddy Segment::buddy() const {
  const ImmutableHeader& h = header().fixed;
  return Buddy(&header().buddy,
               {reinterpret_cast<uint8_t*>(at(h.map_offset)), h.arena_units},
               {reinterpret_cast<Buddy::Link*>(at(h.links_offset)), h.arena_units});
}
uint64_t Segment::capacity_bytes() const {
  return header().fixed.arena_units * Buddy::kUnit;
}

void Segment::Log(std::string_view message) const {
  if (options_.log) {
    options_.log(message);
  } else {
    std::fprintf(stderr, "strata: %.*s\n", static_cast<int>(message.size()),
                 message.data());
  }
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Open(SegmentOptions options) {
  if (!ValidSegmentName(options.name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shm segment name '", options.name,
        "' is invalid; use 1 to 200 of [A-Za-z0-9_.-]"));
  }
  const std::string object = ObjectName(options.name);
  const bool may_create = options.mode != OpenMode::kAttach;
  if (may_create) {
    if (options.capacity_bytes == 0 || options.capacity_bytes % Buddy::kUnit != 0 ||
        options.capacity_bytes / Buddy::kUnit >= Buddy::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shm capacity_bytes ", options.capacity_bytes,
          " is invalid; use a non-zero multiple of 4096 below 16 TiB"));
    }
    if (options.max_processes == 0 || options.max_processes > kMaxProcesses) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shm max_processes ", options.max_processes, " is invalid; use 1..",
          kMaxProcesses));
    }
    if (options.clock_max == 0 || options.clock_max > 15) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shm clock_max ", options.clock_max, " is invalid; use 1..15"));
    }
    if (options.max_tensors == 0 || options.max_tensors > kMaxTensors) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shm max_tensors ", options.max_tensors, " is invalid; use 1..",
          kMaxTensors));
    }
  }
  int fd = -1;
  bool created = false;
  if (may_create) {
    fd = shm_open(object.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      created = true;
    } else if (errno != EEXIST || options.mode == OpenMode::kCreate) {
      if (errno == EEXIST) {
        return absl::AlreadyExistsError(absl::StrCat(
            "shm segment ", object, " exists; attach to it (OpenMode::kAttach) "
            "or remove it first (`strata shm rm ", options.name, "`)"));
      }
      return ErrnoStatus(errno, absl::StrCat("shm_open ", object));
    }
  }
  if (fd < 0) {
    fd = shm_open(object.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0 && errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat(
          "shm segment ", object, " does not exist; create it (ShmTierOptions::Open::kCreate "
          "or kCreateOrAttach)"));
    }
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("shm_open ", object));
  }
  auto fail = [&](absl::Status s) {
    close(fd);
    if (created) shm_unlink(object.c_str());
    return s;
  };

  if (created) {
    const uint64_t units = options.capacity_bytes / Buddy::kUnit;
    const Layout l = ComputeLayout(options.max_processes, options.max_tensors, units);
    if (ftruncate(fd, static_cast<off_t>(l.total_bytes)) != 0) {
      return fail(ErrnoStatus(errno, absl::StrCat("sizing shm segment ", object, " to ",
                                                  l.total_bytes, " bytes"),
                              "free space in /dev/shm or ask for a smaller capacity"));
    }
    void* m = mmap(nullptr, l.total_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      return fail(ErrnoStatus(errno, absl::StrCat("mapping shm segment ", object)));
    }
    auto* base = static_cast<std::byte*>(m);
    auto& h = *reinterpret_cast<Header*>(base);
    std::memcpy(h.fixed.magic, kMagic, sizeof(kMagic));
    h.fixed.layout_version = kLayoutVersion;
    h.fixed.max_processes = options.max_processes;
    h.fixed.max_tensors = options.max_tensors;
    h.fixed.clock_max = options.clock_max;
    h.fixed.total_bytes = l.total_bytes;
    h.fixed.procs_offset = l.procs_offset;
    h.fixed.dir_offset = l.dir_offset;
    h.fixed.map_offset = l.map_offset;
    h.fixed.links_offset = l.links_offset;
    h.fixed.arena_offset = l.arena_offset;
    h.fixed.arena_units = units;
    h.fixed.created_unix_ns = absl::ToUnixNanos(absl::Now());
    if (!options.spill_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(options.spill_dir, ec);
      const std::string path =
          absl::StrCat(options.spill_dir, "/strata-", options.name, ".spill");
      if (ec || path.size() >= sizeof(h.fixed.spill_path)) {
        munmap(m, l.total_bytes);
        return fail(absl::InvalidArgumentError(absl::StrCat(
            "shm spill directory ", options.spill_dir,
            ec ? absl::StrCat(" cannot be created: ", ec.message())
               : std::string(" makes too long a path"),
            "; set EngineOptions::shm.spill_path to a writable directory")));
      }
      std::memcpy(h.fixed.spill_path, path.data(), path.size());
    }
    h.fixed.checksum = HeaderChecksum(h.fixed);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    const int rc = pthread_mutex_init(&h.lock, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
      munmap(m, l.total_bytes);
      return fail(ErrnoStatus(rc, "initializing the shm segment's robust mutex"));
    }
    h.next_generation = 1;
    std::unique_ptr<Segment> seg(new Segment(std::move(options), base, l.total_bytes, fd));
    if (h.fixed.spill_path[0] != '\0') {
      absl::StatusOr<std::unique_ptr<SpillFile>> spill =
          SpillFile::Open(h.fixed.spill_path, seg->options_.log);
      if (!spill.ok()) {
        shm_unlink(object.c_str());
        return spill.status();
      }
      seg->spill_ = std::move(*spill);
    }
    seg->buddy().Format();
    h.ready.store(kReady, std::memory_order_release);
    Futex(&h.ready, FUTEX_WAKE, INT_MAX, nullptr);
    if (absl::Status s = seg->TakeSlot(); !s.ok()) {
      shm_unlink(object.c_str());
      return s;
    }
    seg->StartWatchdog();
    return seg;
  }

  // Attach: wait (bounded) for the creator to size and finish the segment.
  const absl::Time deadline = absl::Now() + options.lock_timeout;
  struct stat st {};
  for (;;) {
    if (fstat(fd, &st) != 0) return fail(ErrnoStatus(errno, absl::StrCat("fstat ", object)));
    if (static_cast<uint64_t>(st.st_size) >= kHeaderBytes) break;
    if (absl::Now() > deadline) {
      return fail(absl::FailedPreconditionError(absl::StrCat(
          "shm segment ", object, " was never sized by its creator (it died?); "
          "remove it (`strata shm rm ", options.name, "`) and create it again")));
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return fail(ErrnoStatus(errno, absl::StrCat("mapping shm segment ", object)));
  auto* base = static_cast<std::byte*>(m);
  auto& h = *reinterpret_cast<Header*>(base);
  auto unmap_fail = [&](absl::Status s) {
    munmap(m, size);
    return fail(std::move(s));
  };
  while (h.ready.load(std::memory_order_acquire) != kReady) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return unmap_fail(absl::FailedPreconditionError(absl::StrCat(
          "shm segment ", object, " was never finished by its creator (it died, or "
          "this is not a Strata segment); remove it (`strata shm rm ",
          options.name, "`) and create it again")));
    }
    const timespec ts = absl::ToTimespec(std::min(left, kWaitSlice));
    Futex(&h.ready, FUTEX_WAIT, h.ready.load(), &ts);
  }
  if (std::memcmp(h.fixed.magic, kMagic, sizeof(kMagic)) != 0) {
    return unmap_fail(absl::FailedPreconditionError(absl::StrCat(
        "shm object ", object, " is not a Strata segment (bad magic); pick "
        "another name or remove it")));
  }
  if (h.fixed.layout_version != kLayoutVersion) {
    return unmap_fail(absl::FailedPreconditionError(absl::StrCat(
        "shm segment ", object, " has layout version ", h.fixed.layout_version,
        "; this build of Strata reads version ", kLayoutVersion,
        ": attach with a matching build, or remove the segment")));
  }
  if (h.fixed.checksum != HeaderChecksum(h.fixed)) {
    return unmap_fail(Corrupt(object, "its header checksum does not match"));
  }
  const ImmutableHeader& f = h.fixed;
  if (f.max_processes == 0 || f.max_processes > kMaxProcesses ||
      f.max_tensors == 0 || f.max_tensors > kMaxTensors || f.arena_units == 0 ||
      f.clock_max == 0 || f.clock_max > 15 ||
      f.arena_units >= Buddy::kNone) {
    return unmap_fail(Corrupt(object, "its header has limits out of range"));
  }
  const Layout l = ComputeLayout(f.max_processes, f.max_tensors, f.arena_units);
  if (l.procs_offset != f.procs_offset || l.dir_offset != f.dir_offset ||
      l.map_offset != f.map_offset || l.links_offset != f.links_offset ||
      l.arena_offset != f.arena_offset || l.total_bytes != f.total_bytes ||
      f.total_bytes != size) {
    return unmap_fail(Corrupt(object, absl::StrCat("its header's layout does not match its "
                                                   "size (", size, " bytes)")));
  }
  if (std::memchr(f.spill_path, '\0', sizeof(f.spill_path)) == nullptr) {
    return unmap_fail(Corrupt(object, "its spill path is not terminated"));
  }
  std::unique_ptr<Segment> seg(new Segment(std::move(options), base, size, fd));
  if (f.spill_path[0] != '\0') {
    STRATA_ASSIGN_OR_RETURN(seg->spill_, SpillFile::Open(f.spill_path, seg->options_.log));
  }
  {
    // Check everything the directory says before trusting it, and rebuild
    // the allocator from it: an attach never relies on lists a dead
    // process may have left half-linked.
    STRATA_ASSIGN_OR_RETURN(Locked lock, seg->Lock());
    for (uint32_t i = 0; i < f.max_processes; ++i) {
      if (seg->process(i).state.load() > ProcessSlot::kLive) {
        return Corrupt(object, absl::StrCat("process slot ", i, " has a bad state"));
      }
    }
    for (uint32_t i = 0; i < f.max_tensors; ++i) {
      const DirEntry& e = seg->entry(i);
      const uint32_t state = e.state.load();
      if (state > DirEntry::kRemoving) {
        return Corrupt(object, absl::StrCat("directory entry ", i, " has a bad state"));
      }
      if (state == DirEntry::kFree) continue;
      if (state == DirEntry::kCreating && e.owner >= f.max_processes) {
        return Corrupt(object, absl::StrCat("directory entry ", i, " has a bad owner"));
      }
      STRATA_RETURN_IF_ERROR(CheckEntry(e, i, f, object));
      const BlockRecord* r = seg->records(e);
      for (uint64_t b = 0; b < e.num_blocks; ++b) {
        const uint64_t w = r[b].state.load();
        for (uint64_t off : {r[b].frame.load(), r[b].shadow.load()}) {
          if (off != 0 && (off < f.arena_offset || (off - f.arena_offset) % Buddy::kUnit != 0 ||
                           off - f.arena_offset + RoundUp(e.block_bytes, Buddy::kUnit) >
                               f.arena_units * Buddy::kUnit)) {
            return Corrupt(object, absl::StrCat("block ", b, " of tensor '", e.name,
                                                "' has a frame outside the arena"));
          }
        }
        if (!BlockWord::Valid(w) ||
            (BlockWord::KindOf(w) == BlockWord::kBusy &&
             BlockWord::Owner(w) >= f.max_processes) ||
            (BlockWord::KindOf(w) == BlockWord::kResident && r[b].frame.load() == 0)) {
          return Corrupt(object, absl::StrCat("block ", b, " of tensor '", e.name,
                                              "' has a bad state"));
        }
      }
    }
    seg->RepairLocked(/*lock_was_dead=*/false);
    seg->RebuildAllocatorLocked();
  }
  STRATA_RETURN_IF_ERROR(seg->TakeSlot());
  seg->StartWatchdog();
  return seg;
}

absl::Status Segment::Remove(std::string_view name) {
  if (!ValidSegmentName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shm segment name '", Sv(name), "' is invalid; use 1 to 200 of [A-Za-z0-9_.-]"));
  }
  const std::string object = ObjectName(name);
  if (shm_unlink(object.c_str()) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("shm segment ", object, " does not exist"));
    }
    return ErrnoStatus(errno, absl::StrCat("shm_unlink ", object));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Segment::List() {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return ErrnoStatus(errno, "listing /dev/shm");
  std::vector<std::string> names;
  while (const dirent* d = readdir(dir)) {
    std::string_view n = d->d_name;
    if (n.substr(0, 7) == "strata-" && n.size() > 7) names.emplace_back(n.substr(7));
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

Segment::~Segment() {
  {
    std::lock_guard<std::mutex> l(watchdog_mu_);
    stopping_ = true;
  }
  watchdog_cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  if (slot_ != ~0u) {
    // Leave as a dead process would be cleaned up: pins this process still
    // holds are dropped (a caller bug; the engine checks for live pins
    // before it gets here), its half-done writes discarded.
    auto lock = Lock();
    if (lock.ok()) {
      bool dropped = false;
      const uint32_t me = slot_;
      for (uint32_t i = 0; i < header().fixed.max_tensors; ++i) {
        DirEntry& e = entry(i);
        if (e.state.load() == DirEntry::kFree || e.state.load() == DirEntry::kCreating) continue;
        std::atomic<uint32_t>* mine = counts(e, me);
        BlockRecord* r = records(e);
        for (uint64_t b = 0; b < e.num_blocks; ++b) {
          const uint64_t w = r[b].state.load();
          const bool busy_mine = BlockWord::KindOf(w) == BlockWord::kBusy &&
                                 BlockWord::Owner(w) == me;
          if (mine[b].load() == 0 && !busy_mine) continue;
          dropped = true;
          mine[b].store(0);
          if (busy_mine) {
            r[b].shadow.store(0);
            r[b].state.store(SettledWord(r[b]));
          }
          Wake(r[b]);
        }
      }
      process(me).state.store(ProcessSlot::kFree);
      if (dropped) {
        Log(absl::StrCat("shm segment ", name_, ": detached with pins still held; "
                         "they were dropped"));
        RebuildAllocatorLocked();
      }
    } else {
      Log(absl::StrCat("shm segment ", name_, ": detaching without the lock (",
                       lock.status().ToString(), "); the slot is reclaimed as dead"));
    }
  }
  munmap(base_, size_);
  close(fd_);
}

absl::StatusOr<Segment::Locked> Segment::Lock(int* reclaimed) {
  // A free lock is taken without reading the clock for a deadline.
  int rc = pthread_mutex_trylock(&header().lock);
  if (rc == EBUSY) {
    const timespec abs = absl::ToTimespec(absl::Now() + options_.lock_timeout);
    rc = pthread_mutex_timedlock(&header().lock, &abs);
  }
  if (rc == 0) return Locked(&header().lock);
  if (rc == EOWNERDEAD) {
    // Its holder died inside a critical section: make the lock usable, then
    // repair whatever that section may have left half done.
    pthread_mutex_consistent(&header().lock);
    Locked held(&header().lock);
    ++header().lock_repairs;
    const int n = RepairLocked(/*lock_was_dead=*/true);
    if (reclaimed != nullptr) *reclaimed += n;
    return held;
  }
  if (rc == ETIMEDOUT) {
    return absl::UnavailableError(absl::StrCat(
        "shm segment ", name_, ": its lock was not free within ",
        absl::FormatDuration(options_.lock_timeout),
        "; a live process holds it (see `strata shm stat`)"));
  }
  return ErrnoStatus(rc, absl::StrCat("locking shm segment ", name_),
                     "remove the segment if it cannot be repaired");
}

absl::Status Segment::TakeSlot() {
  STRATA_ASSIGN_OR_RETURN(Locked lock, Lock());
  RepairLocked(false);
  const std::optional<uint64_t> ticks = StartTicks(getpid());
  for (uint32_t i = 0; i < header().fixed.max_processes; ++i) {
    ProcessSlot& p = process(i);
    if (p.state.load() != ProcessSlot::kFree) continue;
    p.pid = getpid();
    p.start_ticks = ticks.value_or(0);
    p.attached_unix_ns = absl::ToUnixNanos(absl::Now());
    p.state.store(ProcessSlot::kLive);
    slot_ = i;
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "shm segment ", name_, ": all ", header().fixed.max_processes,
      " process slots are taken by live processes; detach one, or create the "
      "segment with a larger max_processes"));
}

void Segment::StartWatchdog() {
  if (options_.reclaim_interval <= absl::ZeroDuration()) return;
  watchdog_ = std::thread([this] {
    std::unique_lock<std::mutex> l(watchdog_mu_);
    while (!watchdog_cv_.wait_for(l, absl::ToChronoNanoseconds(options_.reclaim_interval),
                                  [this] { return stopping_; })) {
      l.unlock();
      if (absl::StatusOr<int> n = ReclaimDead(); !n.ok()) {
        Log(absl::StrCat("shm segment ", name_, ": reclaiming dead processes: ",
                         n.status().ToString()));
      }
      l.lock();
    }
  });
}

bool Segment::SlotAlive(uint32_t slot) const {
  const ProcessSlot& p = process(slot);
  if (p.state.load() != ProcessSlot::kLive) return false;
  if (p.pid == getpid()) return true;  // this process (another attachment of it)
  const std::optional<uint64_t> ticks = StartTicks(p.pid);
  return ticks.has_value() && *ticks == p.start_ticks;
}

absl::StatusOr<int> Segment::ReclaimDead() {
  bool any = false;
  for (uint32_t i = 0; i < header().fixed.max_processes && !any; ++i) {
    any = process(i).state.load() == ProcessSlot::kLive && !SlotAlive(i);
  }
  if (!any) return 0;
  // Lock() itself repairs when the dead process held the lock: count both.
  int reclaimed = 0;
  STRATA_ASSIGN_OR_RETURN(Locked lock, Lock(&reclaimed));
  return reclaimed + RepairLocked(false);
}

int Segment::RepairLocked(bool lock_was_dead) {
  const ImmutableHeader& f = header().fixed;
  std::vector<uint32_t> dead;
  std::vector<bool> is_dead(f.max_processes, false);
  for (uint32_t i = 0; i < f.max_processes; ++i) {
    if (process(i).state.load() == ProcessSlot::kLive && !SlotAlive(i)) {
      dead.push_back(i);
      is_dead[i] = true;
    }
  }
  if (dead.empty() && !lock_was_dead) return 0;
  uint64_t pins = 0, writes = 0, tensors = 0;
  for (uint32_t i = 0; i < f.max_tensors; ++i) {
    DirEntry& e = entry(i);
    const uint32_t state = e.state.load();
    if (state == DirEntry::kFree) continue;
    if (state == DirEntry::kCreating || state == DirEntry::kRemoving) {
      // Only a dead lock holder leaves these behind: a half-made tensor is
      // forgotten; a removal that died before it checked for pins is undone.
      if (state == DirEntry::kCreating) {
        e.generation.fetch_add(1);
        e.state.store(DirEntry::kFree);
        ++tensors;
        continue;
      }
      e.state.store(DirEntry::kLive);
    }
    BlockRecord* r = records(e);
    for (uint64_t b = 0; b < e.num_blocks; ++b) {
      bool changed = false;
      for (uint32_t q : dead) {
        const uint32_t c = counts(e, q)[b].exchange(0);
        if (c == 0) continue;
        pins += c / kWritePin + c % kWritePin;
        changed = true;
      }
      const uint64_t w = r[b].state.load();
      if (BlockWord::KindOf(w) == BlockWord::kBusy && is_dead[BlockWord::Owner(w)]) {
        // Its owner died loading, writing or evicting it (SettledWord).
        r[b].shadow.store(0);
        r[b].state.store(SettledWord(r[b]));
        ++writes;
        changed = true;
      }
      if (changed) Wake(r[b]);
    }
  }
  for (uint32_t q : dead) {
    Log(absl::StrCat("shm segment ", name_, ": process ", process(q).pid,
                     " (slot ", q, ") died; its pins and locks were reclaimed"));
    process(q).state.store(ProcessSlot::kFree);
  }
  header().dead_reclaimed += dead.size();
  header().pins_reclaimed += pins;
  if (lock_was_dead) {
    Log(absl::StrCat("shm segment ", name_, ": a process died holding the segment "
                     "lock; the lock and the allocator were repaired"));
  }
  (void)writes;
  (void)tensors;
  RebuildAllocatorLocked();
  return static_cast<int>(dead.size());
}

uint64_t Segment::SettledWord(const BlockRecord& r) {
  // Its owner died loading, writing or evicting it: the sealed bytes stay
  // where they were. (If it died sealing, after the frame was switched,
  // the new bytes are the sealed ones: all of them were written before the
  // unpin. If it died evicting after the frame was dropped, the spill
  // file holds the bytes: spill_version was set before.)
  if (r.frame.load() != 0) return BlockWord::Resident();
  if (r.spill_version.load() == r.version.load() + 1) return BlockWord::Spilled();
  return BlockWord::Absent();
}

void Segment::RebuildAllocatorLocked() {
  const ImmutableHeader& f = header().fixed;
  auto unit_of = [&](uint64_t offset) { return (offset - f.arena_offset) / Buddy::kUnit; };
  const uint64_t bad = buddy().Rebuild([&](auto&& mark) {
    for (uint32_t i = 0; i < f.max_tensors; ++i) {
      const DirEntry& e = entry(i);
      const uint32_t state = e.state.load();
      if (state != DirEntry::kLive && state != DirEntry::kRemoving) continue;
      mark(unit_of(e.table_offset), e.table_units);
      const BlockRecord* r = records(e);
      for (uint64_t b = 0; b < e.num_blocks; ++b) {
        const uint64_t frame = r[b].frame.load(), shadow = r[b].shadow.load();
        if (frame != 0) mark(unit_of(frame), FrameUnits(e.block_bytes));
        if (shadow != 0 && shadow != frame) mark(unit_of(shadow), FrameUnits(e.block_bytes));
      }
    }
  });
  if (bad != 0) {
    Log(absl::StrCat("shm segment ", name_, ": ", bad,
                     " frames referenced twice or out of place were left out while "
                     "rebuilding the allocator"));
  }
}

absl::StatusOr<uint64_t> Segment::AllocateLocked(uint64_t bytes) {
  const std::optional<uint64_t> unit = buddy().Allocate((bytes + Buddy::kUnit - 1) / Buddy::kUnit);
  if (!unit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shm segment ", name_, " is full: capacity ", capacity_bytes(),
        " bytes, ", buddy().used_units() * Buddy::kUnit, " used, ",
        PinnedBytesLocked(), " pinned; unpin blocks or remove shared tensors, or "
        "create the segment with a larger EngineOptions::shm.capacity_bytes"));
  }
  return header().fixed.arena_offset + *unit * Buddy::kUnit;
}

absl::StatusOr<uint64_t> Segment::AllocateFrame(uint64_t bytes,
                                                std::atomic<uint64_t>& record_into) {
  // Each round evicts one block; frames are powers of two, so a large one
  // may take several neighbours' worth. Bounded by the blocks there are.
  for (;;) {
    Victim victim;
    {
      STRATA_ASSIGN_OR_RETURN(Locked lock, Lock());
      absl::StatusOr<uint64_t> offset = AllocateLocked(bytes);
      if (offset.ok()) {
        // Recorded under the lock, so that a rebuild never frees it under us.
        record_into.store(*offset, std::memory_order_relaxed);
        return offset;
      }
      if (spill_ == nullptr) return offset.status();
      std::optional<Victim> claimed = ClaimVictimLocked();
      if (!claimed) return offset.status();  // every block pinned or busy
      victim = *claimed;
    }
    STRATA_RETURN_IF_ERROR(Evict(victim));
  }
}

uint64_t Segment::SpillOffset(const DirEntry& e, uint64_t block) const {
  return e.spill_offset + block * FrameUnits(e.block_bytes) * Buddy::kUnit;
}

std::optional<Segment::Victim> Segment::ClaimVictimLocked() {
  // The clock: a pin raises a block's `ref` (up to clock_max); the hand
  // lowers it and takes the first resident, unpinned block it finds at 0.
  // clock_max + 1 sweeps at most.
  const ImmutableHeader& f = header().fixed;
  uint64_t total = 0;
  for (uint32_t i = 0; i < f.max_tensors; ++i) {
    if (entry(i).state.load() == DirEntry::kLive) total += entry(i).num_blocks;
  }
  uint32_t& hand_entry = header().clock_entry;
  uint64_t& hand_block = header().clock_block;
  for (uint64_t step = 0; step < (f.clock_max + 1) * total + 2 && total != 0;) {
    if (hand_entry >= f.max_tensors) hand_entry = 0, hand_block = 0;
    DirEntry& e = entry(hand_entry);
    if (e.state.load() != DirEntry::kLive || hand_block >= e.num_blocks) {
      ++hand_entry;
      hand_block = 0;
      continue;
    }
    const uint64_t b = hand_block++;
    ++step;
    BlockRecord& r = records(e)[b];
    uint64_t w = r.state.load(std::memory_order_seq_cst);
    if (BlockWord::KindOf(w) != BlockWord::kResident) continue;
    if (const uint32_t used = r.ref.load(std::memory_order_relaxed); used != 0) {
      r.ref.store(used - 1, std::memory_order_relaxed);
      continue;
    }
    if (!r.state.compare_exchange_strong(w, BlockWord::Busy(BlockWord::kEvicting, slot_),
                                         std::memory_order_seq_cst)) {
      continue;
    }
    // Claimed, then look at the counts (pinners count, then look): a pin
    // that came first keeps the block.
    if (CountPins(e, b) != 0) {
      r.state.store(w, std::memory_order_release);
      Wake(r);
      continue;
    }
    return Victim{hand_entry, b};
  }
  return std::nullopt;
}

absl::Status Segment::Evict(const Victim& victim) {
  DirEntry& e = entry(victim.index);
  BlockRecord& r = records(e)[victim.block];
  const uint64_t frame = r.frame.load(std::memory_order_acquire);
  const uint64_t version = r.version.load(std::memory_order_acquire);
  if (r.spill_version.load() != version + 1) {
    const uint64_t size = std::min(e.block_bytes, e.size_bytes - victim.block * e.block_bytes);
    const uint64_t checksum = BlockChecksum({at(frame), size}, e.generation.load(),
                                            victim.block, version);
    absl::Status written = spill_->Write(
        SpillOffset(e, victim.block), {at(frame), FrameUnits(e.block_bytes) * Buddy::kUnit});
    if (!written.ok()) {
      // Nothing is lost: the block stays resident, and the caller who
      // needed the space gets the error.
      r.state.store(BlockWord::Resident(), std::memory_order_release);
      Wake(r);
      return absl::Status(written.code(),
                          absl::StrCat("shm segment ", name_, " is full and block ",
                                       victim.block, " of shared tensor '", e.name,
                                       "' could not be spilled: ", written.message()));
    }
    r.spill_checksum.store(checksum);
    r.spill_version.store(version + 1);  // before the frame goes (SettledWord)
  }
  {
    auto lock = Lock();
    if (!lock.ok()) {
      r.state.store(BlockWord::Resident(), std::memory_order_release);
      Wake(r);
      return lock.status();
    }
    r.frame.store(0);
    r.state.store(BlockWord::Spilled(), std::memory_order_release);
    buddy().Free((frame - header().fixed.arena_offset) / Buddy::kUnit);
    ++header().spills;
  }
  Wake(r);
  return absl::OkStatus();
}

absl::Status Segment::LoadSpilled(const DirEntry& e, uint64_t block, BlockRecord& r,
                                  std::byte* into) {
  const uint64_t offset = SpillOffset(e, block);
  STRATA_RETURN_IF_ERROR(spill_->Read(offset, {into, FrameUnits(e.block_bytes) * Buddy::kUnit}));
  const uint64_t version = r.spill_version.load() - 1;
  const uint64_t size = std::min(e.block_bytes, e.size_bytes - block * e.block_bytes);
  if (BlockChecksum({into, size}, e.generation.load(), block, version) !=
      r.spill_checksum.load()) {
    return absl::DataLossError(absl::StrCat(
        "block ", block, " of shared tensor '", e.name, "' read back from spill file ",
        spill_->path(), " at offset ", offset, " does not match its checksum; the file "
        "was changed behind the segment's back, or the device returned bad data"));
  }
  auto lock = Lock();
  if (lock.ok()) ++header().spill_loads;
  return absl::OkStatus();
}

void Segment::FreeFrame(uint64_t offset) {
  auto lock = Lock();
  if (!lock.ok()) {
    Log(absl::StrCat("shm segment ", name_, ": a frame could not be freed (",
                     lock.status().ToString(), "); it is reclaimed by the next "
                     "allocator rebuild"));
    return;
  }
  FreeLocked(offset);
}

uint64_t Segment::CountPins(const DirEntry& e, uint64_t block) const {
  uint64_t n = 0;
  for (uint32_t q = 0; q < header().fixed.max_processes; ++q) {
    n += counts(e, q)[block].load(std::memory_order_seq_cst);
  }
  return n;
}

uint64_t Segment::PinnedBytesLocked() const {
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < header().fixed.max_tensors; ++i) {
    const DirEntry& e = entry(i);
    if (e.state.load() != DirEntry::kLive) continue;
    for (uint64_t b = 0; b < e.num_blocks; ++b) {
      if (CountPins(e, b) != 0) bytes += e.block_bytes;
    }
  }
  return bytes;
}

void Segment::Wake(BlockRecord& r) {
  r.seq.fetch_add(1, std::memory_order_release);
  Futex(&r.seq, FUTEX_WAKE, INT_MAX, nullptr);
}

void Segment::WaitForChange(BlockRecord& r, uint32_t seen, absl::Time deadline) {
  const absl::Duration left = std::min(deadline - absl::Now(), kWaitSlice);
  if (left > absl::ZeroDuration()) {
    const timespec ts = absl::ToTimespec(left);
    Futex(&r.seq, FUTEX_WAIT, seen, &ts);
  }
  // Whoever we waited for may be dead: do not wait for the watchdog.
  const uint64_t w = r.state.load();
  if (BlockWord::KindOf(w) == BlockWord::kBusy && !SlotAlive(BlockWord::Owner(w))) {
    (void)ReclaimDead();
  }
}

absl::StatusOr<const DirEntry*> Segment::CheckRef(const SharedRef& ref) const {
  if (ref.index >= header().fixed.max_tensors ||
      entry(ref.index).generation.load(std::memory_order_acquire) != ref.generation) {
    return absl::NotFoundError(absl::StrCat(
        "shared tensor '", ref.name, "' was removed from shm segment ", name_));
  }
  return &entry(ref.index);
}

namespace {

SharedRef RefOfEntry(const DirEntry& e, uint32_t index) {
  SharedRef ref;
  ref.index = index;
  ref.generation = e.generation.load();
  ref.name = e.name;
  ref.spec.dtype = static_cast<DType>(e.dtype);
  ref.spec.shape.assign(e.shape, e.shape + e.ndims);
  ref.spec.block_bytes = e.block_bytes;
  ref.spec.size_bytes = e.size_bytes;
  ref.spec.num_blocks = e.num_blocks;
  return ref;
}

bool SameSpec(const DirEntry& e, const SharedSpec& spec) {
  return e.dtype == static_cast<uint8_t>(spec.dtype) && e.ndims == spec.shape.size() &&
         std::equal(spec.shape.begin(), spec.shape.end(), e.shape) &&
         e.block_bytes == spec.block_bytes;
}

}  // namespace

SharedRef Segment::RefOf(const DirEntry& e, uint32_t index) const {
  SharedRef ref = RefOfEntry(e, index);
  ref.base = base_;
  ref.entry = &e;
  ref.records = records(e);
  ref.my_counts = counts(e, slot_);
  ref.clock_max = header().fixed.clock_max;
  return ref;
}

uint32_t ClockMaxForPolicy(std::string_view policy) {
  if (policy == "lru") return 1;
  if (policy == "lfu") return 7;
  return 3;
}

absl::StatusOr<SharedRef> Segment::CreateTensor(std::string_view name,
                                                const SharedSpec& spec,
                                                bool open_existing) {
  if (name.empty() || name.size() >= kMaxNameBytes ||
      name.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared tensor name '", Sv(name), "' is invalid; use 1 to ",
        kMaxNameBytes - 1, " bytes without NUL"));
  }
  if (spec.shape.empty() || spec.shape.size() > kMaxDims || spec.block_bytes == 0 ||
      spec.block_bytes % Buddy::kUnit != 0 || spec.num_blocks == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared tensor '", Sv(name), "': a shared tensor has 1 to ", kMaxDims,
        " dimensions and blocks of a non-zero multiple of 4096 bytes"));
  }
  const ImmutableHeader& f = header().fixed;
  STRATA_ASSIGN_OR_RETURN(Locked lock, Lock());
  int free_index = -1;
  for (uint32_t i = 0; i < f.max_tensors; ++i) {
    DirEntry& e = entry(i);
    const uint32_t state = e.state.load();
    if (state == DirEntry::kFree) {
      if (free_index < 0) free_index = static_cast<int>(i);
      continue;
    }
    if (e.name != name) continue;
    if (!open_existing) {
      return absl::AlreadyExistsError(absl::StrCat(
          "shared tensor '", Sv(name), "' exists in shm segment ", name_,
          "; open it (Engine::OpenSharedTensor) or remove it first"));
    }
    if (!SameSpec(e, spec)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "shared tensor '", Sv(name), "' exists in shm segment ", name_,
          " with another dtype, shape or block size; open it as it is, or use "
          "another name"));
    }
    return RefOf(e, i);
  }
  if (free_index < 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shm segment ", name_, ": its directory is full (", f.max_tensors,
        " tensors); remove shared tensors, or create the segment with a larger "
        "max_tensors"));
  }
  DirEntry& e = entry(static_cast<uint32_t>(free_index));
  const uint64_t units = TableUnits(spec.num_blocks, f.max_processes);
  STRATA_ASSIGN_OR_RETURN(uint64_t table, AllocateLocked(units * Buddy::kUnit));
  e.owner = slot_;
  e.state.store(DirEntry::kCreating);
  std::memset(e.name, 0, kMaxNameBytes);
  std::memcpy(e.name, name.data(), name.size());
  e.dtype = static_cast<uint8_t>(spec.dtype);
  e.ndims = static_cast<uint8_t>(spec.shape.size());
  std::fill(std::begin(e.shape), std::end(e.shape), 0);
  std::copy(spec.shape.begin(), spec.shape.end(), e.shape);
  e.block_bytes = spec.block_bytes;
  e.size_bytes = spec.size_bytes;
  e.num_blocks = spec.num_blocks;
  e.table_offset = table;
  e.table_units = units;
  e.spill_offset = header().spill_next;
  if (spill_ != nullptr) {
    header().spill_next += spec.num_blocks * FrameUnits(spec.block_bytes) * Buddy::kUnit;
  }
  if (options_.test_hook) options_.test_hook("create:table");
  std::memset(at(table), 0, units * Buddy::kUnit);
  e.generation.store(header().next_generation++);
  e.state.store(DirEntry::kLive, std::memory_order_release);
  return RefOf(e, static_cast<uint32_t>(free_index));
}

absl::StatusOr<SharedRef> Segment::OpenTensor(std::string_view name) {
  STRATA_ASSIGN_OR_RETURN(Locked lock, Lock());
  for (uint32_t i = 0; i < header().fixed.max_tensors; ++i) {
    const DirEntry& e = entry(i);
    if (e.state.load() == DirEntry::kLive && e.name == name) return RefOf(e, i);
  }
  return absl::NotFoundError(absl::StrCat(
      "shm segment ", name_, " has no shared tensor '", Sv(name),
      "'; create it (Engine::CreateSharedTensor) first"));
}

absl::Status Segment::RemoveTensor(const SharedRef& ref) {
  STRATA_ASSIGN_OR_RETURN(Locked lock, Lock());
  STRATA_ASSIGN_OR_RETURN(const DirEntry* ce, CheckRef(ref));
  DirEntry& e = const_cast<DirEntry&>(*ce);
  if (e.state.load() != DirEntry::kLive) {
    return absl::NotFoundError(absl::StrCat("shared tensor '", ref.name, "' is gone"));
  }
  // Pinners announce themselves (their count) before they look at the
  // entry's state; this looks at the counts after setting it: one of the
  // two sees the other.
  e.state.store(DirEntry::kRemoving, std::memory_order_seq_cst);
  const BlockRecord* r = records(e);
  uint64_t pinned = 0;
  for (uint64_t b = 0; b < e.num_blocks; ++b) {
    if (CountPins(e, b) != 0 ||
        BlockWord::KindOf(r[b].state.load(std::memory_order_seq_cst)) == BlockWord::kBusy) {
      ++pinned;
    }
  }
  if (pinned != 0) {
    e.state.store(DirEntry::kLive, std::memory_order_release);
    return absl::FailedPreconditionError(absl::StrCat(
        "shared tensor '", ref.name, "' has ", pinned,
        " pinned blocks; unpin them in every process first (`strata shm stat` "
        "lists pins per process)"));
  }
  e.generation.fetch_add(1);
  const uint64_t table = e.table_offset;
  for (uint64_t b = 0; b < e.num_blocks; ++b) {
    if (const uint64_t frame = r[b].frame.load(); frame != 0) {
      buddy().Free((frame - header().fixed.arena_offset) / Buddy::kUnit);
    }
  }
  e.state.store(DirEntry::kFree);
  buddy().Free((table - header().fixed.arena_offset) / Buddy::kUnit);
  if (spill_ != nullptr) {
    // Its region is never handed out again; give the disk space back.
    absl::Status punched = spill_->Punch(e.spill_offset,
                                         e.num_blocks * FrameUnits(e.block_bytes) * Buddy::kUnit);
    if (!punched.ok()) Log(punched.ToString());
  }
  return absl::OkStatus();
}

absl::StatusOr<SharedPin> Segment::Pin(const SharedRef& ref, uint64_t block,
                                       Access access, absl::Duration timeout) {
  // The deadline is read off the clock only once the pin has to wait.
  absl::Time deadline_at = absl::InfinitePast();
  auto deadline = [&] {
    if (deadline_at == absl::InfinitePast()) deadline_at = absl::Now() + timeout;
    return deadline_at;
  };
  STRATA_ASSIGN_OR_RETURN(const DirEntry* e, CheckRef(ref));
  if (block >= e->num_blocks) {
    return absl::OutOfRangeError(absl::StrCat(
        "block ", block, " is out of range: shared tensor '", ref.name, "' has ",
        e->num_blocks, " blocks"));
  }
  BlockRecord& r = records(*e)[block];
  std::atomic<uint32_t>& mine = counts(*e, slot_)[block];
  const uint64_t size = std::min(e->block_bytes, e->size_bytes - block * e->block_bytes);
  auto gone = [&] {
    return absl::NotFoundError(absl::StrCat(
        "shared tensor '", ref.name, "' was removed from shm segment ", name_));
  };
  auto timed_out = [&](std::string_view what) {
    return absl::DeadlineExceededError(absl::StrCat(
        "block ", block, " of shared tensor '", ref.name, "' ", Sv(what),
        " past the pin deadline (EngineOptions::pin_wait_timeout); `strata shm "
        "stat` shows who pins it"));
  };

  if (access == Access::kRead) {
    for (;;) {
      // Announce the pin, then look: a writer or remover claims first and
      // then looks at the counts, so one of the two sees the other.
      mine.fetch_add(1, std::memory_order_seq_cst);
      const bool same = e->generation.load(std::memory_order_seq_cst) == ref.generation;
      const uint32_t entry_state = e->state.load(std::memory_order_seq_cst);
      const uint64_t w = r.state.load(std::memory_order_seq_cst);
      if (same && entry_state == DirEntry::kLive && BlockWord::KindOf(w) == BlockWord::kResident) {
        const uint32_t used = r.ref.load(std::memory_order_relaxed);
        if (used < ref.clock_max) r.ref.store(used + 1, std::memory_order_relaxed);
        return SharedPin{at(r.frame.load(std::memory_order_acquire)), size, &r, &mine,
                         r.version.load(std::memory_order_acquire)};
      }
      Unpin(&r, &mine, /*write=*/false);
      if (!same) return gone();
      if (entry_state != DirEntry::kLive) {
        // A removal checks for pins under the lock: wait for it to decide.
        STRATA_ASSIGN_OR_RETURN(Locked lock, Lock());
        continue;
      }
      const uint32_t seen = r.seq.load(std::memory_order_acquire);
      const uint64_t now = r.state.load(std::memory_order_acquire);
      if (BlockWord::KindOf(now) == BlockWord::kAbsent ||
          BlockWord::KindOf(now) == BlockWord::kSpilled) {
        uint64_t expected = now;
        if (r.state.compare_exchange_strong(expected, BlockWord::Busy(BlockWord::kLoading, slot_))) {
          auto give_back = [&](absl::Status s) {
            r.state.store(now, std::memory_order_release);
            Wake(r);
            return s;
          };
          absl::StatusOr<uint64_t> frame = AllocateFrame(e->block_bytes, r.shadow);
          if (!frame.ok()) return give_back(frame.status());
          if (BlockWord::KindOf(now) == BlockWord::kAbsent) {
            std::memset(at(*frame), 0, e->block_bytes);  // never written: zeros
          } else if (absl::Status loaded = LoadSpilled(*e, block, r, at(*frame));
                     !loaded.ok()) {
            DropShadow(r);
            return give_back(loaded);
          }
          r.frame.store(*frame, std::memory_order_relaxed);
          r.shadow.store(0, std::memory_order_relaxed);
          r.state.store(BlockWord::Resident(), std::memory_order_release);
          Wake(r);
        }
        continue;
      }
      if (BlockWord::KindOf(now) == BlockWord::kBusy) {
        if (absl::Now() >= deadline()) return timed_out("was being written");
        WaitForChange(r, seen, deadline());
      }
    }
  }

  // A write pin: claim the block, wait for its readers to go, then hand
  // out a shadow frame that Unpin seals.
  uint64_t before;
  for (;;) {
    const uint32_t seen = r.seq.load(std::memory_order_acquire);
    before = r.state.load(std::memory_order_seq_cst);
    if (BlockWord::KindOf(before) != BlockWord::kBusy) {
      if (r.state.compare_exchange_strong(before, BlockWord::Busy(BlockWord::kWriting, slot_),
                                          std::memory_order_seq_cst)) {
        break;
      }
      continue;
    }
    if (absl::Now() >= deadline()) return timed_out("was being written by another pin");
    WaitForChange(r, seen, deadline());
  }
  auto give_back = [&](absl::Status s) {
    r.state.store(before, std::memory_order_release);
    Wake(r);
    return s;
  };
  for (;;) {
    const uint32_t seen = r.seq.load(std::memory_order_acquire);
    if (e->generation.load(std::memory_order_seq_cst) != ref.generation) return give_back(gone());
    if (e->state.load(std::memory_order_seq_cst) != DirEntry::kLive) {
      // A removal is deciding; it sees this block busy and backs off.
      if (absl::Now() >= deadline()) return give_back(timed_out("waited for a removal"));
      WaitForChange(r, seen, deadline());
      continue;
    }
    if (CountPins(*e, block) == 0) break;
    if (absl::Now() >= deadline()) return give_back(timed_out("was pinned by readers"));
    WaitForChange(r, seen, deadline());
    (void)ReclaimDead();  // a reader that died drains only by being reclaimed
  }
  absl::StatusOr<uint64_t> shadow = AllocateFrame(e->block_bytes, r.shadow);
  if (!shadow.ok()) {
    r.shadow.store(0);
    return give_back(shadow.status());
  }
  const uint64_t frame = r.frame.load(std::memory_order_acquire);
  if (access == Access::kWrite) {
    if (frame != 0) {
      std::memcpy(at(*shadow), at(frame), e->block_bytes);
    } else if (BlockWord::KindOf(before) == BlockWord::kSpilled) {
      if (absl::Status loaded = LoadSpilled(*e, block, r, at(*shadow)); !loaded.ok()) {
        DropShadow(r);
        return give_back(loaded);
      }
    } else {
      std::memset(at(*shadow), 0, e->block_bytes);
    }
  }
  // Added, never stored: readers of this process may be between their
  // announcement and their retreat on this same count.
  mine.fetch_add(kWritePin, std::memory_order_seq_cst);
  return SharedPin{at(*shadow), size, &r, &mine};
}

uint64_t Segment::PinsHeld() const {
  uint64_t pins = 0;
  for (uint32_t i = 0; i < header().fixed.max_tensors; ++i) {
    const DirEntry& e = entry(i);
    if (e.state.load() != DirEntry::kLive) continue;
    const std::atomic<uint32_t>* mine = counts(e, slot_);
    for (uint64_t b = 0; b < e.num_blocks; ++b) {
      const uint32_t c = mine[b].load(std::memory_order_seq_cst);
      pins += c / kWritePin + c % kWritePin;
    }
  }
  return pins;
}

absl::StatusOr<uint64_t> Segment::SealedVersion(const SharedRef& ref,
                                                uint64_t block) const {
  STRATA_ASSIGN_OR_RETURN(const DirEntry* e, CheckRef(ref));
  if (block >= e->num_blocks) return absl::OutOfRangeError("block out of range");
  return records(*e)[block].version.load(std::memory_order_acquire);
}

void Segment::Cancel(const SharedPin& pin, bool write) {
  if (!write) return Unpin(pin.record, pin.count, false);
  BlockRecord& r = *pin.record;
  DropShadow(r);
  pin.count->fetch_sub(kWritePin, std::memory_order_seq_cst);
  r.state.store(SettledWord(r), std::memory_order_release);
  Wake(r);
}

void Segment::Seal(BlockRecord& r, std::atomic<uint32_t>& count) {
  // Under the lock: a frame is unreferenced and freed in one step, so that
  // an allocator rebuild (after some process died) never sees it free and
  // hands it out before this frees it a second time. The order of the
  // stores matters to a reclaimer if this process dies half way (it holds
  // the lock then): frame == shadow means the new bytes are complete.
  {
    absl::StatusOr<Locked> lock = Lock();
    const uint64_t old = r.frame.load(std::memory_order_relaxed);
    r.frame.store(r.shadow.load(std::memory_order_relaxed), std::memory_order_relaxed);
    r.shadow.store(0, std::memory_order_relaxed);
    r.version.fetch_add(1, std::memory_order_relaxed);
    count.fetch_sub(kWritePin, std::memory_order_seq_cst);
    r.state.store(BlockWord::Resident(), std::memory_order_release);
    if (old != 0) {
      if (lock.ok()) {
        FreeLocked(old);
      } else {
        Log(absl::StrCat("shm segment ", name_, ": a sealed block's old frame stays "
                         "allocated until the next allocator rebuild (",
                         lock.status().ToString(), ")"));
      }
    }
  }  // unlocked before waking
  Wake(r);
}

void Segment::DropShadow(BlockRecord& r) {
  absl::StatusOr<Locked> lock = Lock();
  const uint64_t shadow = r.shadow.exchange(0, std::memory_order_relaxed);
  if (shadow == 0 || shadow == r.frame.load(std::memory_order_relaxed)) return;
  if (lock.ok()) {
    FreeLocked(shadow);
  } else {
    Log(absl::StrCat("shm segment ", name_, ": a discarded frame stays allocated "
                     "until the next allocator rebuild (", lock.status().ToString(), ")"));
  }
}

void Segment::FreeLocked(uint64_t offset) {
  if (!buddy().Free((offset - header().fixed.arena_offset) / Buddy::kUnit)) {
    Log(absl::StrCat("shm segment ", name_, ": freeing a frame not in use at offset ",
                     offset, "; rebuilding the allocator"));
    RebuildAllocatorLocked();
  }
}

absl::StatusOr<ShmSegmentInfo> Segment::Stat(bool include_self) {
  STRATA_ASSIGN_OR_RETURN(Locked lock, Lock());
  const ImmutableHeader& f = header().fixed;
  ShmSegmentInfo s;
  s.name = options_.name;
  s.layout_version = f.layout_version;
  s.created = absl::FromUnixNanos(f.created_unix_ns);
  s.capacity_bytes = capacity_bytes();
  s.used_bytes = buddy().used_units() * Buddy::kUnit;
  s.max_processes = f.max_processes;
  s.max_tensors = f.max_tensors;
  s.dead_reclaimed = header().dead_reclaimed;
  s.pins_reclaimed = header().pins_reclaimed;
  s.lock_repairs = header().lock_repairs;
  s.spill_path = f.spill_path;
  s.spills = header().spills;
  s.spill_loads = header().spill_loads;
  std::vector<uint32_t> slots;  // of the processes listed
  for (uint32_t q = 0; q < f.max_processes; ++q) {
    if (process(q).state.load() != ProcessSlot::kLive) continue;
    if (q == slot_ && !include_self) continue;
    s.processes.push_back({.pid = process(q).pid});
    slots.push_back(q);
  }
  for (uint32_t i = 0; i < f.max_tensors; ++i) {
    const DirEntry& e = entry(i);
    if (e.state.load() != DirEntry::kLive) continue;
    ++s.tensors;
    s.blocks += e.num_blocks;
    const BlockRecord* r = records(e);
    for (uint64_t b = 0; b < e.num_blocks; ++b) {
      const BlockWord::Kind kind = BlockWord::KindOf(r[b].state.load());
      s.resident_blocks += kind == BlockWord::kResident || kind == BlockWord::kBusy;
      s.spilled_blocks += kind == BlockWord::kSpilled;
      if (CountPins(e, b) != 0) s.pinned_bytes += e.block_bytes;
      for (size_t k = 0; k < slots.size(); ++k) {
        const uint32_t c = counts(e, slots[k])[b].load();
        s.processes[k].write_pins += c / kWritePin;
        s.processes[k].read_pins += c % kWritePin;
      }
    }
  }
  return s;
}

}  // namespace strata::tiers::shm
