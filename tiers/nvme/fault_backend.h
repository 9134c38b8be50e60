// Fault injection under the NVMe tier, for tests and benchmarks (tests/ and
// bench/ may include this header; the engine never does).
//
// A FaultInjector is a thread-safe switchboard shared between the test and a
// backend wrapper (MakeFaultInjectingBackend) handed to MakeNvmeTier. It
// counts the reads and writes the tier prepares (NOPs are not counted) and
// makes the Nth one (1-based, counted from the last Arm) fail with a chosen
// fault, and optionally every later one too until Clear():
//
//   auto faults = std::make_shared<FaultInjector>();
//   auto tier = MakeNvmeTier(config, MakeFaultInjectingBackend(faults));
//   faults->Arm(FaultOps::kWrite, /*nth=*/3, Fault::kEio);
//   ... the third write completes with -EIO, the others succeed ...
//   faults->Clear();
//
// Faults: kEio / kEnospc / kEagain replace the operation by a NOP whose
// completion reports -EIO / -ENOSPC / -EAGAIN (the file is not touched).
// kShort really performs only the first half of the operation, in whole
// sectors (the file's O_DIRECT offset alignment from statx, else 4096): the
// completion reports fewer bytes than asked, as a device may, and the tier
// must resubmit the rest. An operation of one sector cannot be split, so it
// runs whole (the fault is still counted as injected); hence even "until
// cleared" short faults let every operation progress and complete.
//
// kHold models a stalled device or a swallowed completion: the operation is
// performed normally, but its completion is withheld from the tier (Reap does
// not return it) until the test calls ReleaseHeld() or Clear(); held() says
// how many completions are withheld now, so a test can wait until an I/O is
// in flight and stuck instead of sleeping blindly:
//
//   faults->Arm(FaultOps::kRead, 1, Fault::kHold);
//   std::thread reader([&] { ... engine->Pin(t, evicted_block, ...) ... });
//   while (faults->held() == 0) absl::SleepFor(absl::Milliseconds(1));
//   ... the pin is stuck in its load: act on the engine meanwhile ...
//   faults->ReleaseHeld();  // the read completes, with its real result
//
// Released completions are delivered by the next Reap (within ~10 ms: while
// anything is held, the wrapper's Reap waits in short slices so that it sees
// a release). The tier waits for its transfers when it is destroyed: release
// every held completion before destroying the tier (or the engine above it).
#ifndef STRATA_TIERS_NVME_FAULT_BACKEND_H_
#define STRATA_TIERS_NVME_FAULT_BACKEND_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "tiers/nvme/io_backend.h"

namespace strata::tiers {

enum class Fault : uint8_t { kEio, kEnospc, kShort, kEagain, kHold };
enum class FaultOps : uint8_t { kRead, kWrite, kAny };

class FaultInjector {
 public:
  FaultInjector() = default;
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  // Arms a fault: the `nth` (1-based) operation of kind `ops` prepared from
  // now on fails with `fault`; with `until_cleared`, so does every later one.
  // Replaces any earlier arming and restarts the count.
  void Arm(FaultOps ops, uint64_t nth, Fault fault, bool until_cleared = false);
  // Stops injecting, and releases every held completion (ReleaseHeld).
  void Clear();
  // Delivers every withheld completion (kHold) with the next Reap, and lets
  // operations marked for holding whose completion has not come yet complete
  // normally. The arming stays: with `until_cleared`, later operations are
  // held again.
  void ReleaseHeld();
  // Completions withheld now: the device finished them, the tier has not seen
  // them. Thread-safe; poll it (with a short sleep) to wait for a held I/O.
  uint64_t held() const;
  // The next RegisterBuffers call fails with `err` (e.g. ENOMEM, as with a
  // low RLIMIT_MEMLOCK) without reaching the kernel. 0 disarms.
  void FailNextRegisterBuffers(int err);

  // How many faults were injected since construction.
  uint64_t injected() const;
  // Reads and writes seen (prepared) since construction, and how many of them
  // used a registered (fixed) buffer.
  uint64_t ops_seen() const;
  uint64_t fixed_ops_seen() const;

  // For the backend wrapper: decides the fate of one prepared operation.
  // Returns true and sets `fault` when it must fail.
  bool OnPrepare(const IoOp& op, Fault* fault);
  // For the backend wrapper: the error to fake for RegisterBuffers, or 0.
  int TakeRegisterBuffersError();

  // For the backend wrapper (kHold): `user_data` is about to be prepared with
  // its completion held; CancelHold undoes it when the queue refused the op.
  void BeginHold(uint64_t user_data);
  void CancelHold(uint64_t user_data);
  // For the backend wrapper's Reap (the completion side): withholds the
  // completions in out[first..] that are marked for holding (removing them
  // from `out`), then appends every released completion. Returns true while
  // anything is marked or held, so that Reap waits in short slices.
  bool FilterCompletions(std::vector<IoCompletion>& out, size_t first);
  // True when released completions wait for delivery.
  bool HasReleased() const;

 private:
  void ReleaseHeldLocked();  // mu_ held

  mutable std::mutex mu_;  // guards everything below
  bool armed_ = false;
  FaultOps ops_ = FaultOps::kAny;
  uint64_t nth_ = 0;
  Fault fault_ = Fault::kEio;
  bool until_cleared_ = false;
  uint64_t counted_ = 0;
  uint64_t injected_ = 0;
  uint64_t ops_seen_ = 0;
  uint64_t fixed_ops_seen_ = 0;
  int register_error_ = 0;
  // kHold: operations whose completion is to be held (by user_data), the
  // completions withheld, and those released and not yet delivered.
  std::vector<uint64_t> holding_;
  std::vector<IoCompletion> held_;
  std::vector<IoCompletion> released_;
};

// Wraps `inner` (null: the io_uring backend) so that `injector` decides which
// operations fail.
std::unique_ptr<IoBackend> MakeFaultInjectingBackend(
    std::shared_ptr<FaultInjector> injector,
    std::unique_ptr<IoBackend> inner = nullptr);

}  // namespace strata::tiers

#endif  // STRATA_TIERS_NVME_FAULT_BACKEND_H_
