#include "tiers/host/host_tier.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "strata_config.h"
#include "util/errors.h"

#if STRATA_HAVE_HWLOC
#include <hwloc.h>
#endif

namespace strata::tiers {

// Free extents, indexed by offset (to coalesce) and by size (best fit).
struct HostTier::FreeList {
  std::mutex mu;  // not absl::Mutex: see engine_core.h
  std::map<uint64_t, uint64_t> by_offset ABSL_GUARDED_BY(mu);
  std::multimap<uint64_t, uint64_t> by_size ABSL_GUARDED_BY(mu);

  void Insert(uint64_t offset, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    by_offset.emplace(offset, bytes);
    by_size.emplace(bytes, offset);
  }
  void Erase(uint64_t offset, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    by_offset.erase(offset);
    auto [lo, hi] = by_size.equal_range(bytes);
    for (auto it = lo; it != hi; ++it) {
      if (it->second == offset) {
        by_size.erase(it);
        return;
      }
    }
  }
};

namespace {

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

#if STRATA_HAVE_HWLOC
// Binds [base, base+size) to `node` (or the calling thread's node when -1).
// Returns the node used, or -1 with `why` set when binding was impossible.
int BindToNode(void* base, uint64_t size, int node, std::string* why) {
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) != 0 || hwloc_topology_load(topo) != 0) {
    *why = "hwloc could not load the topology";
    return -1;
  }
  int result = -1;
  hwloc_obj_t numa = nullptr;
  if (node >= 0) {
    numa = hwloc_get_numanode_obj_by_os_index(topo, static_cast<unsigned>(node));
    if (numa == nullptr) *why = absl::StrCat("NUMA node ", node, " does not exist");
  } else {
    hwloc_cpuset_t cpus = hwloc_bitmap_alloc();
    if (hwloc_get_last_cpu_location(topo, cpus, HWLOC_CPUBIND_THREAD) == 0) {
      hwloc_nodeset_t nodes = hwloc_bitmap_alloc();
      hwloc_cpuset_to_nodeset(topo, cpus, nodes);
      int first = hwloc_bitmap_first(nodes);
      if (first >= 0) {
        numa = hwloc_get_numanode_obj_by_os_index(topo, static_cast<unsigned>(first));
      }
      hwloc_bitmap_free(nodes);
    }
    hwloc_bitmap_free(cpus);
    if (numa == nullptr) *why = "could not find the calling thread's NUMA node";
  }
  if (numa != nullptr) {
    if (hwloc_set_area_membind(topo, base, size, numa->nodeset, HWLOC_MEMBIND_BIND,
                               HWLOC_MEMBIND_BYNODESET) == 0) {
      result = static_cast<int>(numa->os_index);
    } else {
      *why = absl::StrCat("hwloc_set_area_membind failed: ", std::strerror(errno));
    }
  }
  hwloc_topology_destroy(topo);
  return result;
}
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<HostTier>> HostTier::Create(
    const HostConfig& config) {
  if (config.capacity_bytes == 0 || config.capacity_bytes % kFrameAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier host: capacity_bytes ", config.capacity_bytes,
        " must be a non-zero multiple of 4096; set EngineOptions::host.capacity_bytes"));
  }
  const uint64_t size = config.capacity_bytes;
  void* base = MAP_FAILED;
  bool huge = false;
  constexpr uint64_t kHuge = uint64_t{2} << 20;
  if (config.huge_pages && size % kHuge == 0) {
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    huge = base != MAP_FAILED;
  }
  if (base == MAP_FAILED) {
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      return ErrnoStatus(errno, absl::StrCat("tier host: mmap of ", size, " bytes"),
                         "lower EngineOptions::host.capacity_bytes");
    }
    // Transparent huge pages are in madvise mode on our machines; failure
    // only costs TLB misses.
    if (config.huge_pages) (void)madvise(base, size, MADV_HUGEPAGE);
  }
  std::unique_ptr<HostTier> tier(new HostTier(static_cast<std::byte*>(base), size));
  tier->huge_pages_ = huge;
#if STRATA_HAVE_HWLOC
  std::string why;
  tier->numa_node_ = BindToNode(base, size, config.numa_node, &why);
  if (tier->numa_node_ < 0 && config.numa_node >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier host: cannot bind the arena to NUMA node ", config.numa_node, ": ",
        why, "; set EngineOptions::host.numa_node to -1 or an existing node"));
  }
  if (tier->numa_node_ < 0 && config.log) {
    config.log(absl::StrCat("strata: host arena not NUMA-bound: ", why));
  }
#else
  if (config.numa_node >= 0) {
    return absl::InvalidArgumentError(
        "tier host: numa_node is set but Strata was built without hwloc; "
        "rebuild with -Dhwloc=enabled or set EngineOptions::host.numa_node to -1");
  }
#endif
  // Fault the pages in now, on the bound node, so that later registration
  // pins real memory and the first misses do not pay for page faults.
  if (madvise(base, size, MADV_POPULATE_WRITE) != 0) {
    std::memset(base, 0, size);
  }
  return tier;
}

HostTier::HostTier(std::byte* base, uint64_t size)
    : Tier("host", size), base_(base), size_(size), free_(new FreeList) {
  std::lock_guard lock(free_->mu);
  free_->Insert(0, size);
}

HostTier::~HostTier() { munmap(base_, size_); }

absl::StatusOr<Frame> HostTier::DoAllocate(uint64_t bytes) {
  const uint64_t need = RoundUp(bytes, kFrameAlign);
  std::lock_guard lock(free_->mu);
  auto it = free_->by_size.lower_bound(need);
  if (it == free_->by_size.end()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tier host: no free frame of ", need, " bytes (capacity ", size_,
        "); evict, release pins, or raise EngineOptions::host.capacity_bytes"));
  }
  const uint64_t have = it->first;
  const uint64_t offset = it->second;
  free_->Erase(offset, have);
  if (have > need) free_->Insert(offset + need, have - need);
  return Frame{.offset = offset, .bytes = need, .data = base_ + offset};
}

void HostTier::DoFree(const Frame& frame) {
  std::lock_guard lock(free_->mu);
  uint64_t offset = frame.offset;
  uint64_t bytes = frame.bytes;
  auto next = free_->by_offset.lower_bound(offset);
  if (next != free_->by_offset.end() && next->first == offset + bytes) {
    uint64_t n_off = next->first, n_bytes = next->second;
    free_->Erase(n_off, n_bytes);
    bytes += n_bytes;
  }
  auto after = free_->by_offset.lower_bound(offset);
  if (after != free_->by_offset.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == offset) {
      uint64_t p_off = prev->first, p_bytes = prev->second;
      free_->Erase(p_off, p_bytes);
      offset = p_off;
      bytes += p_bytes;
    }
  }
  free_->Insert(offset, bytes);
}

uint64_t HostTier::largest_free() const {
  std::lock_guard lock(free_->mu);
  return free_->by_size.empty() ? 0 : free_->by_size.rbegin()->first;
}

size_t HostTier::free_extents() const {
  std::lock_guard lock(free_->mu);
  return free_->by_offset.size();
}

absl::Status HostTier::DoSubmit(std::span<Transfer* const> batch) {
  for (Transfer* t : batch) {
    if (t->op == Transfer::Op::kWrite) {
      std::memcpy(t->frame.data, t->host.data(), t->host.size());
    } else {
      std::memcpy(t->host.data(), t->frame.data, t->host.size());
    }
    t->status = absl::OkStatus();
    t->on_done(t);
  }
  return absl::OkStatus();
}

}  // namespace strata::tiers
