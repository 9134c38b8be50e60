#include "bench/workloads/common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace strata::bench {

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string Bytes(uint64_t bytes) {
  constexpr double kKiB = 1024.0;
  if (bytes >= (uint64_t{1} << 40)) {
    return absl::StrFormat("%.3g TiB", bytes / (kKiB * kKiB * kKiB * kKiB));
  }
  if (bytes >= (uint64_t{1} << 30)) {
    return absl::StrFormat("%.3g GiB", bytes / (kKiB * kKiB * kKiB));
  }
  if (bytes >= (uint64_t{1} << 20)) {
    return absl::StrFormat("%.3g MiB", bytes / (kKiB * kKiB));
  }
  return absl::StrFormat("%.3g KiB", bytes / kKiB);
}

std::vector<uint64_t> WorkingSets(const WorkloadOptions& options) {
  if (!options.sizes.empty()) return options.sizes;
  std::vector<uint64_t> sets;
  for (double s : options.scales) {
    sets.push_back(static_cast<uint64_t>(s * options.tier_bytes));
  }
  return sets;
}

absl::StatusOr<std::vector<Result>> RunSizes(
    const WorkloadOptions& options,
    const std::function<absl::StatusOr<std::vector<Result>>(uint64_t)>& one) {
  std::vector<Result> all;
  for (uint64_t ws : WorkingSets(options)) {
    absl::StatusOr<std::vector<Result>> r = one(ws);
    if (!r.ok()) return r.status();
    all.insert(all.end(), r->begin(), r->end());
  }
  return all;
}

Progress::Progress(const WorkloadOptions& options, std::string what,
                   double total, std::string unit)
    : options_(options), what_(std::move(what)), unit_(std::move(unit)),
      total_(total) {}

void Progress::Update(double done) {
  done_ = done;
  if (!options_.progress) return;
  const Clock::time_point now = Clock::now();
  if (now - last_ < std::chrono::milliseconds(500) && done < total_) return;
  last_ = now;
  const double secs = SecondsSince(start_);
  const double rate = secs > 0 ? done / secs : 0;
  const double left = rate > 0 ? (total_ - done) / rate : 0;
  options_.progress(absl::StrFormat("%s: %.0f/%.0f %s, %.3g %s/s, ~%.0f s left",
                                    what_, done, total_, unit_, rate, unit_,
                                    left));
}

void Progress::Done() {
  if (!options_.progress) return;
  options_.progress(absl::StrFormat("%s: done, %.0f %s in %.2f s", what_,
                                    done_, unit_, SecondsSince(start_)));
}

absl::Status SysError(int err, absl::string_view what) {
  return absl::ErrnoToStatus(err, absl::StrCat("bench: ", what));
}

absl::Status PreadAll(int fd, void* buf, uint64_t len, uint64_t offset,
                      absl::string_view path) {
  auto* p = static_cast<std::byte*>(buf);
  uint64_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd, p + done, len - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return SysError(errno, absl::StrCat("read of ", path, " at ", offset + done));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat("bench: ", path, " ends at ",
                                              offset + done, ", before ",
                                              offset + len));
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status PwriteAll(int fd, const void* buf, uint64_t len, uint64_t offset,
                       absl::string_view path) {
  const auto* p = static_cast<const std::byte*>(buf);
  uint64_t done = 0;
  while (done < len) {
    const ssize_t n = ::pwrite(fd, p + done, len - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return SysError(n < 0 ? errno : EIO,
                      absl::StrCat("write of ", path, " at ", offset + done,
                                   " (is the disk full? pass --dir on "
                                   "another file system)"));
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, uint64_t bytes,
                       const std::function<void(uint64_t, std::byte*)>& fill) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return SysError(errno, absl::StrCat("create ", path));
  constexpr uint64_t kChunk = uint64_t{1} << 20;
  absl::StatusOr<std::unique_ptr<AlignedBuffer>> buf = AlignedBuffer::Make(kChunk);
  absl::Status status = buf.status();
  for (uint64_t off = 0; off < bytes && status.ok(); off += kChunk) {
    const uint64_t len = std::min(kChunk, bytes - off);
    std::byte* data = (*buf)->data();
    for (uint64_t p = 0; p < len; p += 4096) fill((off + p) / 4096, data + p);
    status = PwriteAll(fd, data, len, off, path);
  }
  if (status.ok() && ::fsync(fd) != 0) status = SysError(errno, "fsync " + path);
  if (status.ok() && ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) {
    status = SysError(errno, "posix_fadvise " + path);
  }
  ::close(fd);
  return status;
}

absl::Status DropFromPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return SysError(errno, absl::StrCat("open ", path));
  absl::Status status;
  if (::fsync(fd) != 0) status = SysError(errno, "fsync " + path);
  if (status.ok() && ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) {
    status = SysError(errno, "posix_fadvise " + path);
  }
  ::close(fd);
  return status;
}

absl::StatusOr<uint64_t> CachedBytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return SysError(errno, absl::StrCat("open ", path));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    return uint64_t{0};
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return SysError(errno, absl::StrCat("mmap ", path));
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  const int rc = ::mincore(map, size, vec.data());
  const int err = errno;
  ::munmap(map, size);
  if (rc != 0) return SysError(err, absl::StrCat("mincore ", path));
  uint64_t pages = 0;
  for (unsigned char v : vec) pages += v & 1;
  return pages * page;
}

// ---------------------------------------------------------------------------
// Memory cgroups

namespace {

bool WriteText(const std::string& path, std::string_view text) {
  std::ofstream out(path);
  out << text;
  out.flush();
  return static_cast<bool>(out);
}

// Mount points of cgroup2 and of v1's memory controller, from /proc/self/mounts.
void FindCgroupMounts(std::string* v2, std::string* v1_memory) {
  std::ifstream mounts("/proc/self/mounts");
  std::string line;
  while (std::getline(mounts, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() < 4) continue;
    if (f[2] == "cgroup2") *v2 = f[1];
    if (f[2] == "cgroup") {
      for (absl::string_view opt : absl::StrSplit(f[3], ',')) {
        if (opt == "memory") *v1_memory = f[1];
      }
    }
  }
}

std::atomic<int> cgroup_serial{0};

}  // namespace

std::optional<MemoryLimit> MemoryLimit::Create(uint64_t bytes) {
  std::string v2, v1;
  FindCgroupMounts(&v2, &v1);
  const std::string leaf = absl::StrCat("strata-bench-", ::getpid(), "-",
                                        cgroup_serial.fetch_add(1));
  if (!v2.empty()) {
    std::ifstream in(v2 + "/cgroup.controllers");
    std::string controllers((std::istreambuf_iterator<char>(in)),
                            std::istreambuf_iterator<char>());
    if (controllers.find("memory") != std::string::npos) {
      (void)WriteText(v2 + "/cgroup.subtree_control", "+memory");
      const std::string dir = v2 + "/" + leaf;
      if (::mkdir(dir.c_str(), 0755) == 0) {
        if (WriteText(dir + "/memory.max", std::to_string(bytes))) {
          (void)WriteText(dir + "/memory.swap.max", "0");
          return MemoryLimit(dir, /*v2=*/true);
        }
        ::rmdir(dir.c_str());
      }
    }
  }
  if (!v1.empty()) {
    const std::string dir = v1 + "/" + leaf;
    if (::mkdir(dir.c_str(), 0755) == 0) {
      if (WriteText(dir + "/memory.limit_in_bytes", std::to_string(bytes))) {
        return MemoryLimit(dir, /*v2=*/false);
      }
      ::rmdir(dir.c_str());
    }
  }
  return std::nullopt;
}

MemoryLimit::MemoryLimit(MemoryLimit&& other) noexcept
    : dir_(std::move(other.dir_)), v2_(other.v2_) {
  other.dir_.clear();
}

MemoryLimit::~MemoryLimit() {
  // Empty by now (its children exited): rmdir removes it.
  if (!dir_.empty()) ::rmdir(dir_.c_str());
}

absl::Status MemoryLimit::JoinSelf() const {
  if (!WriteText(dir_ + "/cgroup.procs", std::to_string(::getpid()))) {
    return absl::InternalError(absl::StrCat("bench: cannot join cgroup ", dir_));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Child processes

namespace {

// The child's report: a status code, then either the message or the values.
void WriteReport(int fd, const absl::StatusOr<std::vector<double>>& r) {
  std::ostringstream out;
  out.precision(17);
  if (r.ok()) {
    out << "0";
    for (double v : *r) out << ' ' << v;
  } else {
    out << static_cast<int>(r.status().code()) << ' ' << r.status().message();
  }
  const std::string s = out.str();
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::vector<double>> RunInChild(
    const MemoryLimit* limit,
    const std::function<absl::StatusOr<std::vector<double>>()>& body) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return SysError(errno, "pipe");
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return SysError(err, "fork");
  }
  if (pid == 0) {
    ::close(fds[0]);
    const absl::Status joined =
        limit != nullptr ? limit->JoinSelf() : absl::OkStatus();
    absl::StatusOr<std::vector<double>> r =
        joined.ok() ? body() : absl::StatusOr<std::vector<double>>(joined);
    WriteReport(fds[1], r);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string report;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    report.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(wstatus) || report.empty()) {
    return absl::InternalError(absl::StrCat(
        "bench: a baseline's child process died",
        WIFSIGNALED(wstatus) ? absl::StrCat(" of signal ", WTERMSIG(wstatus)) : "",
        " (killed for memory? the memory limit may be too tight)"));
  }
  std::istringstream in(report);
  int code = 0;
  in >> code;
  if (code != 0) {
    std::string message;
    std::getline(in, message);
    return absl::Status(static_cast<absl::StatusCode>(code),
                        absl::StripLeadingAsciiWhitespace(message));
  }
  std::vector<double> values;
  double v;
  while (in >> v) values.push_back(v);
  return values;
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<AlignedBuffer>> AlignedBuffer::Make(uint64_t bytes) {
  const uint64_t rounded = std::max<uint64_t>((bytes + 4095) / 4096 * 4096, 4096);
  auto* data = static_cast<std::byte*>(std::aligned_alloc(4096, rounded));
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "bench: cannot allocate ", Bytes(rounded),
        " of buffers; lower --tier or --size"));
  }
  std::memset(data, 0, rounded);
  return std::unique_ptr<AlignedBuffer>(new AlignedBuffer(data, bytes));
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

absl::StatusOr<uint64_t> PssBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key) {
    if (key == "Pss:") {
      in >> kib >> unit;
      return kib * 1024;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return absl::NotFoundError(absl::StrCat("bench: no Pss in /proc/", pid,
                                          "/smaps_rollup"));
}

}  // namespace strata::bench
