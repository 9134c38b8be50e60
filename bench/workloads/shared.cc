// shared: frozen weights read by several processes on one node.
//
//   strata  one loader process reads the weights file into a shared tensor
//           of a node segment (the shm tier), then every reader attaches
//           and reads every block through zero-copy kShm pins
//   copies  every reader reads the file into its own memory (what each
//           trainer process does when it loads its weights itself)
//
// Reported for each: the time until every reader has read (hashed) every
// block, loading included, and the RAM the readers hold for the weights:
// the sum of the readers' proportional set sizes (PSS: a page mapped by
// four processes counts a quarter in each) after reading, less before, so
// that what each process costs anyway (code, libraries) is left out. The
// file's page cache is reported beside it, not in it: the kernel drops it
// under pressure, and both sides leave at most one copy there.
//
// The segment is sized to hold the weights: sharing frozen weights is about
// memory they fit in, not about spilling them. Readers are this program
// started again as `<self> bench-reader ...` (RunSharedReader), talking
// over their standard input and output: "ready", "go", "done ...", "exit".
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include <xxhash.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/workloads/common.h"
#include "strata/strata.h"

namespace strata::bench {
namespace {

constexpr uint64_t kBlock = uint64_t{2} << 20;

uint64_t SegmentBytes(uint64_t weights) {
  return (weights + weights / 32 + (uint64_t{8} << 20) + 4095) / 4096 * 4096;
}

// A reader process and the two pipes to it.
struct Child {
  pid_t pid = -1;
  FILE* to = nullptr;    // its standard input
  FILE* from = nullptr;  // its standard output
};

absl::StatusOr<Child> Spawn(const std::string& self, const std::vector<std::string>& args) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return SysError(errno, "pipe");
  if (::pipe2(out, O_CLOEXEC) != 0) {
    const int err = errno;
    ::close(in[0]);
    ::close(in[1]);
    return SysError(err, "pipe");
  }
  std::vector<std::string> all = {self, "bench-reader"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    for (int fd : {in[0], in[1], out[0], out[1]}) ::close(fd);
    return SysError(err, "fork");
  }
  if (pid == 0) {
    if (::dup2(in[0], STDIN_FILENO) >= 0 && ::dup2(out[1], STDOUT_FILENO) >= 0) {
      ::execv(self.c_str(), argv.data());
    }
    ::_exit(127);  // the parent reads EOF: "ended before saying ready"
  }
  ::close(in[0]);
  ::close(out[1]);
  Child c{pid, ::fdopen(in[1], "w"), ::fdopen(out[0], "r")};
  if (c.to == nullptr || c.from == nullptr) {
    const int err = errno;
    if (c.to != nullptr) std::fclose(c.to); else ::close(in[1]);
    if (c.from != nullptr) std::fclose(c.from); else ::close(out[0]);
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return SysError(err, "fdopen of a reader's pipe");
  }
  return c;
}

// The next line a child wrote, which must start with `word`.
absl::StatusOr<std::vector<std::string>> Expect(Child& c, absl::string_view word) {
  char line[512];
  if (std::fgets(line, sizeof(line), c.from) == nullptr) {
    return absl::InternalError(absl::StrCat(
        "shared: reader ", c.pid, " ended before saying '", word,
        "' (see its message above)"));
  }
  std::vector<std::string> f = absl::StrSplit(absl::StripTrailingAsciiWhitespace(line), ' ');
  if (f.empty() || f[0] != word) {
    return absl::InternalError(absl::StrCat("shared: reader ", c.pid, " said '",
                                            absl::StripTrailingAsciiWhitespace(line),
                                            "', not '", word, "'"));
  }
  return f;
}

void Say(Child& c, std::string_view word) {
  std::fprintf(c.to, "%.*s\n", static_cast<int>(word.size()), word.data());
  std::fflush(c.to);
}

void Reap(std::vector<Child>& children) {
  for (Child& c : children) {
    if (c.to != nullptr) std::fclose(c.to);  // EOF: a waiting reader exits
    if (c.from != nullptr) std::fclose(c.from);
    int status;
    while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  children.clear();
}

struct Side {
  double seconds = 0;
  uint64_t ram = 0;          // PSS after reading, less before, summed
  uint64_t checksum = 0;
};

// Starts `args` readers, lets them go at once, and measures them.
absl::StatusOr<Side> RunReaders(const std::string& self,
                                const std::vector<std::vector<std::string>>& args) {
  std::vector<Child> children;
  struct Reaper {
    std::vector<Child>& c;
    ~Reaper() { Reap(c); }
  } reaper{children};
  for (const std::vector<std::string>& a : args) {
    absl::StatusOr<Child> c = Spawn(self, a);
    if (!c.ok()) return c.status();
    children.push_back(*c);
  }
  uint64_t pss_before = 0;
  for (Child& c : children) {
    if (absl::StatusOr<std::vector<std::string>> r = Expect(c, "ready"); !r.ok()) {
      return r.status();
    }
    absl::StatusOr<uint64_t> pss = PssBytes(c.pid);
    if (!pss.ok()) return pss.status();
    pss_before += *pss;
  }
  const Clock::time_point start = Clock::now();
  for (Child& c : children) Say(c, "go");
  Side side;
  for (size_t i = 0; i < children.size(); ++i) {
    absl::StatusOr<std::vector<std::string>> r = Expect(children[i], "done");
    if (!r.ok()) return r.status();
    uint64_t sum = 0;
    if (r->size() < 2 || !absl::SimpleHexAtoi((*r)[1], &sum)) {
      return absl::InternalError("shared: a reader's 'done' has no checksum");
    }
    if (i > 0 && sum != side.checksum) {
      return absl::DataLossError(absl::StrFormat(
          "shared: reader %d read XXH3 %016x, reader 0 %016x: a bug in the "
          "engine or the workload", i, sum, side.checksum));
    }
    side.checksum = sum;
  }
  side.seconds = SecondsSince(start);
  uint64_t pss_after = 0;
  for (Child& c : children) {
    absl::StatusOr<uint64_t> pss = PssBytes(c.pid);
    if (!pss.ok()) return pss.status();
    pss_after += *pss;
  }
  side.ram = pss_after > pss_before ? pss_after - pss_before : 0;
  for (Child& c : children) Say(c, "exit");
  return side;
}

absl::StatusOr<std::vector<Result>> RunOneSize(uint64_t working_set,
                                               const WorkloadOptions& options,
                                               const std::string& self) {
  const uint64_t blocks = std::max<uint64_t>(working_set / kBlock, 1);
  const uint64_t bytes = blocks * kBlock;
  const double scale = static_cast<double>(bytes) / options.tier_bytes;
  const std::string tag = absl::StrFormat("shared %.3gx (%s, %d readers)", scale,
                                          Bytes(bytes), options.readers);
  const std::string dir = options.dir + "/shared";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string file = dir + "/weights.bin";
  absl::Status written = WriteFile(file, bytes, [](uint64_t page, std::byte* out) {
    for (uint64_t i = 0; i < 4096; i += 8) {
      const uint64_t v = page * 0x9e3779b97f4a7c15ull + i;
      std::memcpy(out + i, &v, 8);
    }
  });
  if (!written.ok()) return written;
  const std::string n = std::to_string(bytes);

  // Strata: load once into the segment, then the readers.
  const std::string segment = absl::StrCat("bench-", ::getpid());
  (void)RemoveShmSegment(segment);
  if (options.progress) options.progress(tag + ", strata: loading the segment");
  absl::StatusOr<Side> load = RunReaders(self, {{"load", segment, file, n}});
  if (!load.ok()) return load.status();
  if (options.progress) options.progress(tag + ", strata: readers");
  std::vector<std::vector<std::string>> shm_args(options.readers, {"shm", segment, n});
  absl::StatusOr<Side> shm = RunReaders(self, shm_args);
  (void)RemoveShmSegment(segment);
  if (!shm.ok()) return shm.status();
  absl::StatusOr<uint64_t> strata_cache = CachedBytes(file);
  if (!strata_cache.ok()) return strata_cache.status();

  // Copies: every reader reads the file itself.
  if (absl::Status s = DropFromPageCache(file); !s.ok()) return s;
  if (options.progress) options.progress(tag + ", copies: readers");
  std::vector<std::vector<std::string>> copy_args(options.readers, {"copy", file, n});
  absl::StatusOr<Side> copies = RunReaders(self, copy_args);
  if (!copies.ok()) return copies.status();
  absl::StatusOr<uint64_t> copies_cache = CachedBytes(file);
  if (!copies_cache.ok()) return copies_cache.status();
  std::filesystem::remove_all(dir);
  if (copies->checksum != shm->checksum) {
    return absl::DataLossError(absl::StrFormat(
        "shared: %s: readers of the segment read XXH3 %016x, readers of the "
        "file %016x: a bug in the engine or the workload",
        tag, shm->checksum, copies->checksum));
  }

  std::vector<Result> results;
  Result r;
  r.name = "shared";
  r.baseline_name = "private_copies";
  r.scale = scale;
  r.working_set_bytes = bytes;
  r.tier_bytes = options.tier_bytes;
  r.extra = {{"readers", static_cast<double>(options.readers)},
             {"strata_load_s", load->seconds},
             {"strata_page_cache_bytes", static_cast<double>(*strata_cache)},
             {"baseline_page_cache_bytes", static_cast<double>(*copies_cache)}};
  r.metric = "time_to_all_read";
  r.unit = "s";
  r.strata = load->seconds + shm->seconds;
  r.baseline = copies->seconds;
  r.ratio = r.strata / r.baseline;
  results.push_back(r);
  r.metric = "ram_used";
  r.unit = "bytes";
  r.strata = static_cast<double>(shm->ram);
  r.baseline = static_cast<double>(copies->ram);
  r.ratio = r.strata / r.baseline;
  r.extra["strata_ram_vs_one_copy"] = r.strata / static_cast<double>(bytes);
  r.extra["baseline_ram_vs_one_copy"] = r.baseline / static_cast<double>(bytes);
  results.push_back(r);
  return results;
}

// --- the reader process ----------------------------------------------------

absl::Status WaitFor(absl::string_view word) {
  std::string line;
  if (!std::getline(std::cin, line) || line != word) {
    return absl::CancelledError(absl::StrCat("bench-reader: expected '", word, "'"));
  }
  return absl::OkStatus();
}

std::unique_ptr<Engine> OpenSegment(const std::string& name, uint64_t bytes,
                                    bool create, absl::Status* status) {
  EngineOptions o;
  o.tiers = {Tier::kHost, Tier::kShm};
  o.host.capacity_bytes = 2 * kBlock;
  o.host.huge_pages = false;
  o.shm.name = name;
  o.shm.open = create ? ShmTierOptions::Open::kCreate : ShmTierOptions::Open::kAttach;
  o.shm.capacity_bytes = SegmentBytes(bytes);
  o.shm.max_processes = 64;
  o.shm.max_tensors = 4;
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Open(o);
  if (!e.ok()) {
    *status = e.status();
    return nullptr;
  }
  return std::move(*e);
}

absl::Status Load(const std::string& segment, const std::string& file, uint64_t bytes) {
  absl::Status status;
  std::unique_ptr<Engine> e = OpenSegment(segment, bytes, /*create=*/true, &status);
  if (e == nullptr) return status;
  const int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) return SysError(errno, "open " + file);
  std::printf("ready\n");
  std::fflush(stdout);
  if (absl::Status s = WaitFor("go"); !s.ok()) return s;
  absl::StatusOr<Tensor> t = e->CreateSharedTensor(
      "weights", {.dtype = DType::kU8,
                  .shape = {static_cast<int64_t>(bytes / kBlock), static_cast<int64_t>(kBlock)},
                  .block_bytes = kBlock});
  if (!t.ok()) return t.status();
  for (uint64_t b = 0; b < t->num_blocks() && status.ok(); ++b) {
    absl::StatusOr<Pin> pin = e->Pin(*t, b, Tier::kShm, Access::kOverwrite);
    if (!pin.ok()) return pin.status();
    status = PreadAll(fd, pin->bytes().data(), kBlock, b * kBlock, file);
  }
  ::close(fd);
  if (!status.ok()) return status;
  std::printf("done 0\n");
  std::fflush(stdout);
  return WaitFor("exit");
}

absl::Status ReadShared(const std::string& segment, uint64_t bytes) {
  absl::Status status;
  std::unique_ptr<Engine> e = OpenSegment(segment, bytes, /*create=*/false, &status);
  if (e == nullptr) return status;
  absl::StatusOr<Tensor> t = e->OpenSharedTensor("weights");
  if (!t.ok()) return t.status();
  std::printf("ready\n");
  std::fflush(stdout);
  if (absl::Status s = WaitFor("go"); !s.ok()) return s;
  XXH3_state_t* h = XXH3_createState();
  XXH3_64bits_reset(h);
  for (uint64_t b = 0; b < t->num_blocks() && status.ok(); ++b) {
    absl::StatusOr<Pin> pin = e->Pin(*t, b, Tier::kShm, Access::kRead);
    if (!pin.ok()) {
      status = pin.status();
      break;
    }
    XXH3_64bits_update(h, pin->bytes().data(), pin->size());
  }
  const uint64_t sum = XXH3_64bits_digest(h);
  XXH3_freeState(h);
  if (!status.ok()) return status;
  std::printf("done %016lx\n", static_cast<unsigned long>(sum));
  std::fflush(stdout);
  return WaitFor("exit");
}

// The reader's own copy: pages from mmap, which none touches before the
// reads fill them. A buffer from malloc may be written at once (glibc's
// MALLOC_PERTURB_, which meson sets for every test, fills it), before the
// "before" reading of RAM: the copies then counted as no RAM at all.
struct Mapping {
  explicit Mapping(uint64_t bytes)
      : size(bytes),
        data(static_cast<std::byte*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {}
  ~Mapping() {
    if (data != MAP_FAILED) ::munmap(data, size);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const uint64_t size;
  std::byte* const data;
};

absl::Status ReadCopy(const std::string& file, uint64_t bytes) {
  const Mapping copy(bytes);
  if (copy.data == MAP_FAILED) return SysError(errno, "mmap of the reader's copy");
  const int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) return SysError(errno, "open " + file);
  std::printf("ready\n");
  std::fflush(stdout);
  absl::Status status = WaitFor("go");
  for (uint64_t off = 0; off < bytes && status.ok(); off += kBlock) {
    status = PreadAll(fd, copy.data + off, std::min(kBlock, bytes - off), off, file);
  }
  ::close(fd);
  if (!status.ok()) return status;
  const uint64_t sum = XXH3_64bits(copy.data, bytes);
  std::printf("done %016lx\n", static_cast<unsigned long>(sum));
  std::fflush(stdout);
  return WaitFor("exit");
}

}  // namespace

absl::StatusOr<std::vector<Result>> RunShared(const WorkloadOptions& options,
                                              const std::string& self) {
  if (options.readers < 1 || options.readers > 60) {
    return absl::InvalidArgumentError("shared: --readers must be 1..60");
  }
  return RunSizes(options, [&](uint64_t ws) { return RunOneSize(ws, options, self); });
}

int RunSharedReader(int argc, char** argv) {
  // argv: load SEGMENT FILE BYTES | shm SEGMENT BYTES | copy FILE BYTES
  std::vector<std::string> a(argv, argv + argc);
  uint64_t bytes = 0;
  absl::Status s = absl::InvalidArgumentError(
      "bench-reader: usage: load SEGMENT FILE BYTES | shm SEGMENT BYTES | "
      "copy FILE BYTES (started by `strata bench shared`)");
  if (a.size() == 4 && a[0] == "load" && absl::SimpleAtoi(a[3], &bytes)) {
    s = Load(a[1], a[2], bytes);
  } else if (a.size() == 3 && a[0] == "shm" && absl::SimpleAtoi(a[2], &bytes)) {
    s = ReadShared(a[1], bytes);
  } else if (a.size() == 3 && a[0] == "copy" && absl::SimpleAtoi(a[2], &bytes)) {
    s = ReadCopy(a[1], bytes);
  }
  if (s.ok()) return 0;
  std::fprintf(stderr, "strata bench-reader: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace strata::bench
