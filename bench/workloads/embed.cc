// embed: embedding-table lookups. Rows of 256 B to 4 KiB (uniform, in
// steps of 256 B) are packed into 4 KiB blocks without straddling one; the
// table is `scale` times the host tier; lookups follow Zipf 1.0 over the
// rows, with popularity scattered over the table (a random permutation), in
// batches of 256 as a data loader asks for them. Each lookup copies its row
// out and checks the row's stamp (its number in its first 8 bytes).
//
//   strata  TryPin each row's block; prefetch the missing ones together
//           (one PrefetchBlocks); copy the rows that hit while they load;
//           wait for them and Pin them
//   mmap    the same table file mapped MAP_SHARED under a page cache limited
//           to the same memory (memory cgroup), MADV_RANDOM, and
//           MADV_WILLNEED of every row of the batch before copying them
//
// Both warm up on as many lookups as they are timed on. Reported: lookups/s
// and the hit ratio (lookups whose block was in memory before the batch
// asked for it: from the engine's NVMe reads, and from mincore for mmap).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/workloads/common.h"
#include "strata/strata.h"

namespace strata::bench {
namespace {

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kBatch = 256;

struct Table {
  uint64_t blocks = 0;
  std::vector<uint32_t> block;     // by row
  std::vector<uint16_t> offset;    // by row, within its block
  std::vector<uint16_t> size;      // by row
  std::vector<uint32_t> first_row; // by block, and one past the end
};

Table Pack(uint64_t blocks, uint64_t seed) {
  Table t;
  t.blocks = blocks;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> units(1, 16);
  uint64_t b = 0, off = 0;
  t.first_row.push_back(0);
  while (b < blocks) {
    const uint64_t size = 256 * static_cast<uint64_t>(units(rng));
    if (off + size > kBlock) {
      ++b;
      off = 0;
      t.first_row.push_back(static_cast<uint32_t>(t.block.size()));
      if (b == blocks) break;
    }
    t.block.push_back(static_cast<uint32_t>(b));
    t.offset.push_back(static_cast<uint16_t>(off));
    t.size.push_back(static_cast<uint16_t>(size));
    off += size;
  }
  return t;
}

// The bytes of block `b`: each row stamped with its number, then a pattern.
void FillBlock(const Table& t, uint64_t b, std::byte* out) {
  std::memset(out, 0, kBlock);
  for (uint32_t r = t.first_row[b]; r < t.first_row[b + 1]; ++r) {
    std::byte* row = out + t.offset[r];
    std::memset(row, static_cast<int>(r & 0xff), t.size[r]);
    const uint64_t stamp = r;
    std::memcpy(row, &stamp, sizeof(stamp));
  }
}

// Zipf(1.0) over the rows, popularity scattered by a permutation.
std::vector<uint32_t> Lookups(uint64_t rows, uint64_t count, uint64_t seed) {
  std::vector<double> cdf(rows);
  double sum = 0;
  for (uint64_t k = 0; k < rows; ++k) cdf[k] = (sum += 1.0 / static_cast<double>(k + 1));
  std::vector<uint32_t> row_of_rank(rows);
  std::iota(row_of_rank.begin(), row_of_rank.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(row_of_rank.begin(), row_of_rank.end(), rng);
  std::uniform_real_distribution<double> u(0, sum);
  std::vector<uint32_t> out(count);
  for (uint32_t& r : out) {
    const uint64_t rank = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
    r = row_of_rank[std::min(rank, rows - 1)];
  }
  return out;
}

absl::Status CheckRow(const std::byte* row, uint32_t r) {
  uint64_t stamp;
  std::memcpy(&stamp, row, sizeof(stamp));
  if (stamp == r) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      "embed: row ", r, " reads back as row ", stamp,
      ": a bug in the engine or the workload"));
}

struct Run {
  double lookups_per_s = 0;
  double hit_ratio = 0;
};

// --- Strata -------------------------------------------------------------

absl::StatusOr<Run> RunStrata(const Table& table, const std::vector<uint32_t>& lookups,
                              const WorkloadOptions& options, const std::string& dir,
                              const std::string& what) {
  EngineOptions o;
  o.host.capacity_bytes = options.tier_bytes;
  o.nvme.path = dir;
  o.policy = options.policy;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(o);
  if (!engine.ok()) return engine.status();
  Engine& e = **engine;
  absl::StatusOr<Tensor> made = e.CreateTensor(
      "table", {.dtype = DType::kU8,
                .shape = {static_cast<int64_t>(table.blocks), static_cast<int64_t>(kBlock)},
                .block_bytes = kBlock});
  if (!made.ok()) return made.status();
  const Tensor t = *made;
  for (uint64_t b = 0; b < table.blocks; ++b) {
    absl::StatusOr<Pin> pin = e.Pin(t, b, Tier::kHost, Access::kOverwrite);
    if (!pin.ok()) return pin.status();
    FillBlock(table, b, pin->bytes().data());
  }
  if (absl::Status s = e.Flush(t); !s.ok()) return s;

  std::vector<std::byte> out(kBatch * kBlock);
  std::vector<uint32_t> pending;   // lookups whose block missed
  std::vector<uint64_t> missing;   // their blocks
  auto copy_row = [&](const Pin& pin, uint64_t i, uint32_t r) {
    std::memcpy(out.data() + i * kBlock, pin.bytes().data() + table.offset[r],
                table.size[r]);
    return CheckRow(out.data() + i * kBlock, r);
  };
  std::vector<std::pair<uint32_t, Pin>> hits;  // lookup, its block's pin
  auto batch = [&](const uint32_t* rows, uint64_t n) -> absl::Status {
    pending.clear();
    missing.clear();
    hits.clear();
    for (uint64_t i = 0; i < n; ++i) {
      absl::StatusOr<std::optional<Pin>> hit =
          e.TryPin(t, table.block[rows[i]], Tier::kHost, Access::kRead);
      if (!hit.ok()) return hit.status();
      if (hit->has_value()) {
        hits.emplace_back(static_cast<uint32_t>(i), std::move(**hit));
      } else {
        pending.push_back(static_cast<uint32_t>(i));
        missing.push_back(table.block[rows[i]]);
      }
    }
    std::optional<PrefetchHandle> loads;
    if (!missing.empty()) {
      absl::StatusOr<PrefetchHandle> started = e.PrefetchBlocks(t, missing, Tier::kHost);
      if (!started.ok()) return started.status();
      loads = *std::move(started);
    }
    // The hits are copied while the misses load.
    for (auto& [i, pin] : hits) {
      if (absl::Status s = copy_row(pin, i, rows[i]); !s.ok()) return s;
      if (absl::Status s = pin.Release(); !s.ok()) return s;
    }
    // A block that did not arrive is loaded by its Pin below, which
    // returns the error if there is one.
    if (loads) (void)loads->Wait();
    for (uint32_t i : pending) {
      absl::StatusOr<Pin> pin = e.Pin(t, table.block[rows[i]], Tier::kHost, Access::kRead);
      if (!pin.ok()) return pin.status();
      if (absl::Status s = copy_row(*pin, i, rows[i]); !s.ok()) return s;
    }
    return absl::OkStatus();
  };
  const uint64_t half = lookups.size() / 2;
  Progress progress(options, what, static_cast<double>(lookups.size()), "lookups");
  Clock::time_point start;
  uint64_t loads_before = 0, timed_from = 0;
  for (uint64_t i = 0; i < lookups.size(); i += kBatch) {
    if (i >= half && timed_from == 0) {  // warm: time the second half
      timed_from = i;
      start = Clock::now();
      loads_before = e.GetStats().tier(Tier::kNvme).bytes_out;
    }
    const uint64_t n = std::min<uint64_t>(kBatch, lookups.size() - i);
    if (absl::Status s = batch(lookups.data() + i, n); !s.ok()) return s;
    progress.Update(static_cast<double>(i + n));
  }
  const double secs = SecondsSince(start);
  progress.Done();
  const double loads = static_cast<double>(e.GetStats().tier(Tier::kNvme).bytes_out -
                                           loads_before) / kBlock;
  const double timed = static_cast<double>(lookups.size() - timed_from);
  if (absl::Status s = e.DropTensor(t); !s.ok()) return s;
  if (absl::Status s = e.Close(); !s.ok()) return s;
  return Run{timed / secs, 1.0 - loads / timed};
}

// --- mmap + page cache --------------------------------------------------

absl::StatusOr<Run> RunMmap(const Table& table, const std::vector<uint32_t>& lookups,
                            const WorkloadOptions& options, const std::string& path,
                            const std::string& what, const MemoryLimit* limit) {
  absl::Status written = WriteFile(path, table.blocks * kBlock,
                                   [&](uint64_t b, std::byte* out) { FillBlock(table, b, out); });
  if (!written.ok()) return written;
  absl::StatusOr<std::vector<double>> r = RunInChild(limit, [&]() -> absl::StatusOr<std::vector<double>> {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return SysError(errno, "open " + path);
    const uint64_t bytes = table.blocks * kBlock;
    void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) return SysError(errno, "mmap " + path);
    const auto* base = static_cast<const std::byte*>(map);
    // Without MADV_RANDOM the kernel reads around every fault: another
    // baseline than the one reported.
    if (::madvise(map, bytes, MADV_RANDOM) != 0) {
      const int err = errno;
      ::munmap(map, bytes);
      return SysError(err, "madvise(MADV_RANDOM) " + path);
    }
    std::vector<std::byte> out(kBatch * kBlock);
    absl::flat_hash_set<uint32_t> seen;
    const uint64_t half = lookups.size() / 2;
    uint64_t timed_from = 0;
    double secs = 0, loads = 0;
    Progress progress(options, what, static_cast<double>(lookups.size()), "lookups");
    for (uint64_t i = 0; i < lookups.size(); i += kBatch) {
      const uint64_t n = std::min<uint64_t>(kBatch, lookups.size() - i);
      const uint32_t* rows = lookups.data() + i;
      if (i >= half && timed_from == 0) timed_from = i;
      if (i >= half) {  // untimed: which blocks the batch will have to read
        seen.clear();
        for (uint64_t k = 0; k < n; ++k) {
          const uint32_t b = table.block[rows[k]];
          unsigned char in_core = 0;
          if (seen.insert(b).second &&
              ::mincore(const_cast<std::byte*>(base) + b * kBlock, kBlock, &in_core) == 0 &&
              (in_core & 1) == 0) {
            loads += 1;
          }
        }
      }
      const Clock::time_point start = Clock::now();
      for (uint64_t k = 0; k < n; ++k) {
        ::madvise(const_cast<std::byte*>(base) + table.block[rows[k]] * kBlock, kBlock,
                  MADV_WILLNEED);
      }
      for (uint64_t k = 0; k < n; ++k) {
        const uint32_t row = rows[k];
        std::memcpy(out.data() + k * kBlock,
                    base + table.block[row] * kBlock + table.offset[row], table.size[row]);
        if (absl::Status s = CheckRow(out.data() + k * kBlock, row); !s.ok()) {
          ::munmap(map, bytes);
          return s;
        }
      }
      if (i >= half) secs += SecondsSince(start);
      progress.Update(static_cast<double>(i + n));
    }
    progress.Done();
    ::munmap(map, bytes);
    const double timed = static_cast<double>(lookups.size() - timed_from);
    return std::vector<double>{timed / secs, 1.0 - loads / timed};
  });
  if (!r.ok()) return r.status();
  return Run{(*r)[0], (*r)[1]};
}

absl::StatusOr<std::vector<Result>> RunOneSize(uint64_t working_set,
                                               const WorkloadOptions& options) {
  const uint64_t blocks = std::max<uint64_t>(working_set / kBlock, 2);
  const Table table = Pack(blocks, /*seed=*/7);
  const uint64_t rows = table.block.size();
  const std::vector<uint32_t> lookups = Lookups(rows, 2 * options.lookups, /*seed=*/11);
  const double scale = static_cast<double>(blocks * kBlock) / options.tier_bytes;
  const std::string tag = absl::StrFormat("embed %.3gx (%s, %d rows)", scale,
                                          Bytes(blocks * kBlock), rows);
  const std::string dir = options.dir + "/embed";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  absl::StatusOr<Run> strata = RunStrata(table, lookups, options, dir + "/strata", tag + ", strata");
  if (!strata.ok()) return strata.status();
  std::optional<MemoryLimit> limit =
      MemoryLimit::Create(options.tier_bytes + (uint64_t{16} << 20));
  absl::StatusOr<Run> mmap = RunMmap(table, lookups, options, dir + "/table.bin",
                                     tag + ", mmap", limit ? &*limit : nullptr);
  if (!mmap.ok()) return mmap.status();
  std::filesystem::remove_all(dir);
  Result r;
  r.name = "embed";
  r.metric = "lookups";
  r.strata = strata->lookups_per_s;
  r.baseline = mmap->lookups_per_s;
  r.baseline_name = "mmap";
  r.unit = "lookups/s";
  r.higher_is_better = true;
  r.ratio = r.strata / r.baseline;
  r.scale = scale;
  r.working_set_bytes = blocks * kBlock;
  r.tier_bytes = options.tier_bytes;
  r.policy = options.policy;
  r.extra = {{"strata_hit_ratio", strata->hit_ratio},
             {"baseline_hit_ratio", mmap->hit_ratio},
             {"rows", static_cast<double>(rows)},
             {"limited", limit ? 1.0 : 0.0}};
  if (!limit) r.note = "page cache not limited (no memory cgroup): mmap had all RAM";
  return std::vector<Result>{r};
}

}  // namespace

absl::StatusOr<std::vector<Result>> RunEmbed(const WorkloadOptions& options) {
  if (options.lookups < kBatch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "embed: --lookups must be at least ", kBatch, " (one batch)"));
  }
  return RunSizes(options, [&](uint64_t ws) { return RunOneSize(ws, options); });
}

}  // namespace strata::bench
