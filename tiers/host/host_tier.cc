#include "tiers/host/host_tier.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "tiers/extent_allocator.h"
#include "strata_config.h"
#include "util/errors.h"

#if STRATA_HAVE_HWLOC
#include <hwloc.h>
#endif

namespace strata::tiers {

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
    : Tier("host", size), base_(base), size_(size),
      free_(std::make_unique<ExtentAllocator>(size)) {}

HostTier::~HostTier() { munmap(base_, size_); }

absl::StatusOr<Frame> HostTier::DoAllocate(uint64_t bytes) {
  const uint64_t need = RoundUp(bytes, kFrameAlign);
  std::optional<uint64_t> offset = free_->Allocate(need);
  if (!offset.has_value()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tier host: no free frame of ", need, " bytes (capacity ", size_,
        "); evict, release pins, or raise EngineOptions::host.capacity_bytes"));
  }
  return Frame{.offset = *offset, .bytes = need, .data = base_ + *offset};
}

void HostTier::DoFree(const Frame& frame) { free_->Free(frame.offset, frame.bytes); }

uint64_t HostTier::largest_free() const { return free_->largest_free(); }

size_t HostTier::free_extents() const { return free_->free_extents(); }

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
