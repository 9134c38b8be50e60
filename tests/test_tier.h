// A tier for tests: plain memory behind the tiers::Tier interface, so that
// the suites run chains of three and four tiers without GPU, shared memory
// or fabric hardware (engine/testing.h's OpenWithTiers puts it in a slot).
//
// In a pinnable slot (gpu, shm) give it host data (frames carry pointers
// into its memory, as shm's will); in a copies-only slot (remote) leave
// host_data off, and every copy to or from another tier without host data
// stages through host memory, as a remote tier's will. Like the NVMe tier it
// checksums what it stores (XXH3 seeded by the block's identity) and reports
// kDataLoss on a mismatch.
//
// A TestTierControl, shared with the test, injects faults: the Nth read or
// write (or every one) fails with a chosen status, completions can be held
// until released (a stalled device, a swallowed completion), or delayed on
// the tier's worker thread; it counts allocations and transfers.
//
// Threads: Allocate/Free/Submit from any thread; completions run on the
// submitting thread (synchronous mode), on the worker thread (delayed), or on
// the thread that releases held ones. Destroying the tier fails what is still
// held or queued (each transfer completes exactly once).
#ifndef STRATA_TESTS_TEST_TIER_H_
#define STRATA_TESTS_TEST_TIER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "tiers/tier.h"

namespace strata::test {

struct TestTierConfig {
  uint64_t capacity_bytes = 0;
  bool host_data = false;  // frames carry host-addressable bytes
  // Completions come from a worker thread after `delay` (else inline).
  bool asynchronous = false;
  absl::Duration delay = absl::ZeroDuration();
};

enum class TestOps : uint8_t { kRead, kWrite, kAny };

class TestTierControl {
 public:
  // The `nth` (1-based, counted from now) read/write of kind `ops` fails
  // with `status`; with `until_cleared`, every later one too.
  void FailNth(TestOps ops, uint64_t nth, absl::Status status,
               bool until_cleared = false);
  // Completions of transfers of kind `ops` are held from now on until
  // ReleaseHeld() (or Clear()); the transfers themselves happen on release.
  void HoldCompletions(TestOps ops);
  // Allocations fail with kResourceExhausted while set.
  void FailAllocations(bool on);
  // Completes every held transfer (on this thread) and stops holding.
  void ReleaseHeld();
  // Completes every held transfer with `status` instead (on this thread):
  // a device that failed them after a stall.
  void FailHeld(absl::Status status);
  // Stops injecting and holding; releases held transfers.
  void Clear();

  uint64_t allocations() const;  // Allocate calls, refused ones included
  uint64_t reads() const;        // read transfers submitted
  uint64_t writes() const;
  uint64_t injected() const;     // faults injected
  uint64_t held() const;         // completions held right now

 private:
  friend class TestTier;
  struct Held {
    class TestTier* tier;
    tiers::Transfer* transfer;
  };
  // For the tier: the fate of one submitted transfer.
  enum class Fate { kRun, kFail, kHold };
  Fate OnSubmit(tiers::Transfer::Op op, absl::Status* status);
  bool OnAllocate();
  void AddHeld(Held h);
  std::vector<Held> TakeHeld(const class TestTier* only);

  mutable std::mutex mu_;
  TestOps fail_ops_ = TestOps::kAny;
  uint64_t fail_nth_ = 0;  // 0: not armed
  bool fail_until_cleared_ = false;
  absl::Status fail_status_;
  uint64_t counted_ = 0;
  bool hold_ = false;
  TestOps hold_ops_ = TestOps::kAny;
  bool fail_allocations_ = false;
  uint64_t allocations_ = 0, reads_ = 0, writes_ = 0, injected_ = 0;
  std::vector<Held> held_;
};

std::unique_ptr<tiers::Tier> MakeTestTier(
    const TestTierConfig& config, std::shared_ptr<TestTierControl> control);

}  // namespace strata::test

#endif  // STRATA_TESTS_TEST_TIER_H_
