#include "engine/block_table.h"

#include <sys/mman.h>

#include <new>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace strata::internal {

void BlockLatch::Lock(WaitTable& waits) {
  // Latches are held for a few hundred nanoseconds: try a little before
  // sleeping on the stripe.
  for (int spin = 0; spin < 64; ++spin) {
    if (TryLock()) return;
  }
  const Deadline far = Clock::now() + std::chrono::hours(24);
  for (;;) {
    uint64_t w = word_.load(std::memory_order_relaxed);
    if ((w & kHeld) == 0) {
      if (word_.compare_exchange_weak(w, w | kHeld, std::memory_order_acquire)) {
        return;
      }
      continue;
    }
    waits.WaitForChange(word_, w, far);
  }
}

bool BlockLatch::TryLock() {
  uint64_t w = word_.load(std::memory_order_relaxed);
  return (w & kHeld) == 0 &&
         word_.compare_exchange_strong(w, w | kHeld, std::memory_order_acquire);
}

void BlockLatch::Unlock(WaitTable& waits) {
  const uint64_t old =
      word_.fetch_and(~(kHeld | WaitTable::kWaiters), std::memory_order_release);
  if (old & WaitTable::kWaiters) waits.Wake(word_);
}

void TensorState::SetWriteBackError(uint64_t block, absl::Status status) {
  std::lock_guard lock(info->errors_mu);
  info->write_back_errors[block] = std::move(status);
}

absl::Status TensorState::TakeWriteBackErrors() {
  std::lock_guard lock(info->errors_mu);
  auto& errors = info->write_back_errors;
  if (errors.empty()) return absl::OkStatus();
  auto first = errors.begin();
  for (auto it = errors.begin(); it != errors.end(); ++it) {
    if (it->first < first->first) first = it;
  }
  const absl::Status status = first->second;
  const uint64_t block = first->first;
  const size_t count = errors.size();
  errors.clear();
  return absl::Status(
      status.code(),
      absl::StrCat("an earlier background write-back of ",
                   BlockName(*this, block), " failed (", count,
                   " block(s) of the tensor; "
                   "each stayed dirty in memory and is written again): ",
                   status.message()));
}

std::string BlockName(const TensorState& ts, uint64_t block) {
  return absl::StrCat("tensor '", ts.info->name, "' block ", block);
}

namespace {

static_assert(std::is_trivially_destructible_v<CopySlot> &&
                  std::is_trivially_destructible_v<BlockRecord>,
              "the block table is freed without running destructors");
static_assert(sizeof(TensorState) == 64,
              "what a pin reads of a tensor is one cache line");
static_assert(sizeof(TensorState) % alignof(CopySlot) == 0,
              "the slots follow the state, each on its own line");
constexpr std::align_val_t kAlign{alignof(TensorState)};
constexpr std::align_val_t kHugeAlign{2u << 20};

struct FreeTensorState {
  std::shared_ptr<StateArena> arena;
  uint64_t bytes;
  void operator()(TensorState* ts) const {
    ts->~TensorState();
    arena->Free(ts, bytes);
  }
};

}  // namespace

StateArena::~StateArena() {
  for (const Slab& slab : slabs_) {
    ::operator delete(slab.bytes, slab.huge ? kHugeAlign : kAlign);
  }
}

void* StateArena::Allocate(uint64_t bytes) {
  if (bytes > kMaxSlabObject) return ::operator new(bytes, kAlign, std::nothrow);
  const uint64_t size = (bytes + kClass - 1) / kClass * kClass;
  std::lock_guard lock(mu_);
  SizeClass& c = classes_[size / kClass - 1];
  if (c.free != nullptr) {
    void* p = c.free;
    c.free = *static_cast<void**>(p);
    return p;
  }
  if (c.next == nullptr || static_cast<uint64_t>(c.end - c.next) < size) {
    // The first slabs are small (a few tensors cost little); once there
    // are many, they are huge pages: pins that go round 100,000 tensors
    // then miss the TLB far less.
    const bool huge = slabs_.size() >= kSmallSlabs;
    const uint64_t slab_bytes = huge ? kHugeSlabBytes : kSlabBytes;
    auto* slab = static_cast<std::byte*>(
        ::operator new(slab_bytes, huge ? kHugeAlign : kAlign, std::nothrow));
    if (slab == nullptr) return nullptr;
    if (huge) (void)madvise(slab, slab_bytes, MADV_HUGEPAGE);  // a hint only
    slabs_.push_back({slab, huge});
    c.next = slab;
    c.end = slab + slab_bytes / size * size;
  }
  void* p = c.next;
  c.next += size;
  return p;
}

void StateArena::Free(void* p, uint64_t bytes) {
  if (bytes > kMaxSlabObject) {
    ::operator delete(p, kAlign);
    return;
  }
  const uint64_t size = (bytes + kClass - 1) / kClass * kClass;
  std::lock_guard lock(mu_);
  SizeClass& c = classes_[size / kClass - 1];
  *static_cast<void**>(p) = c.free;
  c.free = p;
}

uint64_t TensorStateBytes(uint64_t num_blocks, int chain_size) {
  return sizeof(TensorState) +
         num_blocks * static_cast<uint64_t>(chain_size) * sizeof(CopySlot) +
         num_blocks * sizeof(BlockRecord);
}

std::shared_ptr<TensorState> NewTensorState(std::shared_ptr<StateArena> arena,
                                            uint64_t num_blocks, int chain_size) {
  const uint64_t bytes = TensorStateBytes(num_blocks, chain_size);
  auto* mem = static_cast<std::byte*>(arena->Allocate(bytes));
  if (mem == nullptr) return nullptr;
  auto info = std::unique_ptr<TensorInfo>(new (std::nothrow) TensorInfo);
  if (info == nullptr) {
    arena->Free(mem, bytes);
    return nullptr;
  }
  auto* ts = new (mem) TensorState;
  ts->info = std::move(info);
  std::byte* table = mem + sizeof(TensorState);
  const uint64_t slots = num_blocks * static_cast<uint64_t>(chain_size);
  ts->slots = reinterpret_cast<CopySlot*>(table);
  for (uint64_t i = 0; i < slots; ++i) new (&ts->slots[i]) CopySlot;
  auto* records = reinterpret_cast<BlockRecord*>(table + slots * sizeof(CopySlot));
  for (uint64_t i = 0; i < num_blocks; ++i) new (&records[i]) BlockRecord;
  ts->num_blocks = num_blocks;
  ts->chain_size = chain_size;
  return std::shared_ptr<TensorState>(ts, FreeTensorState{std::move(arena), bytes});
}

}  // namespace strata::internal
