// The engine at its edges (suite `fault`): Close while I/O is in flight,
// DropTensor racing everything else, out-of-range enum values, the NVMe
// directory, and whose call a failed background write-back reaches.
//
// Each test opens with the behaviour it specifies. I/O is stalled with the
// fault backend's kHold (the device does the work, the completion waits for
// the test), so that "while a load is in flight" is a state the test waits
// for (FaultInjector::held()), not a sleep it hopes is long enough. Where a
// test sleeps, it only lets another thread reach a blocking call, and every
// assertion holds whatever the interleaving.
//
// pin_wait_timeout is a few seconds, so that a wrong wait fails fast, except
// in the DropTensor race, whose point is that its 20 s are never reached: a
// hang there shows as kDeadlineExceeded (the race stops at the first one).
#include <sys/mount.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "api/strata/strata.h"
#include "engine/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tiers/nvme/fault_backend.h"

namespace strata {
namespace {

using ::absl::StatusCode;
using test::FillPattern;
using test::FirstPatternMismatch;
using test::kKiB;
using test::kMiB;
using test::Seed;
using test::TempDir;
using ::testing::HasSubstr;
using tiers::Fault;
using tiers::FaultInjector;
using tiers::FaultOps;

constexpr uint64_t kBlock = 16 * kKiB;
constexpr uint64_t kFrames = 8;
constexpr uint64_t kHost = kFrames * kBlock;

EngineOptions EdgeOptions(const std::string& dir, uint64_t host = kHost) {
  EngineOptions o = test::SmallOptions(dir, host, kBlock);
  o.nvme.capacity_bytes = 8 * kMiB;
  o.nvme.queue_depth = 8;
  // A wrong wait fails in seconds, well inside the test timeout.
  o.pin_wait_timeout = absl::Seconds(5);
  // lru and no readahead: which block is evicted, and which read reaches
  // the device first, follow from the test's own pins.
  o.policy = "lru";
  o.readahead_blocks = 0;
  return o;
}

TensorSpec BlocksSpec(uint64_t blocks) {
  return TensorSpec{.dtype = DType::kU8,
                    .shape = {static_cast<int64_t>(blocks * kBlock)},
                    .block_bytes = kBlock};
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

std::string Lower(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Polls `done` every millisecond for at most `bound`; true once it holds.
bool WaitFor(const std::function<bool()>& done,
             absl::Duration bound = absl::Seconds(10)) {
  const absl::Time end = absl::Now() + bound;
  while (!done()) {
    if (absl::Now() >= end) return done();
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// Threads a test starts; they are joined when it goes out of scope (an
// ASSERT that returns early must not leave a joinable std::thread behind),
// after `unblock` has released whatever they may wait for. Declare it after
// the engine, so that the threads are gone before the engine is.
class Threads {
 public:
  explicit Threads(std::function<void()> unblock = nullptr)
      : unblock_(std::move(unblock)) {}
  ~Threads() {
    if (unblock_ && !threads_.empty()) unblock_();
    JoinAll();
  }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;

  template <typename F>
  void Start(F f) {
    threads_.emplace_back(std::move(f));
  }
  // Joins without `unblock` (the test's own path).
  void JoinAll() {
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

 private:
  std::function<void()> unblock_;
  std::vector<std::thread> threads_;
};

absl::StatusOr<std::unique_ptr<Engine>> OpenFaulty(
    const EngineOptions& options, std::shared_ptr<FaultInjector> faults) {
  return testing::OpenWithBackend(options,
                                  tiers::MakeFaultInjectingBackend(faults));
}

// Writes version `version` of every block of `t` (tag `tag`).
void WriteAll(Engine& e, const Tensor& t, uint64_t tag, uint64_t version) {
  for (uint64_t b = 0; b < t.num_blocks(); ++b) {
    ASSERT_OK_AND_ASSIGN(Pin p, e.Pin(t, b, Tier::kHost, Access::kWrite));
    FillPattern(p.bytes(), Seed(tag, b, version));
  }
}

// Every block of `t` reads back version `version` (tag `tag`); with
// `written`, only the blocks it marks, and the others read as zeros.
void ExpectAll(Engine& e, const Tensor& t, uint64_t tag, uint64_t version,
               const std::vector<bool>* written = nullptr) {
  for (uint64_t b = 0; b < t.num_blocks(); ++b) {
    auto p = e.Pin(t, b, Tier::kHost, Access::kRead);
    ASSERT_TRUE(p.ok()) << "tensor '" << t.name() << "' block " << b << ": "
                        << p.status();
    if (written != nullptr && !(*written)[b]) {
      EXPECT_EQ(test::FirstNonZero(p->bytes()), -1)
          << "tensor '" << t.name() << "' block " << b
          << " was never written, yet does not read as zeros";
      continue;
    }
    EXPECT_EQ(FirstPatternMismatch(p->bytes(), Seed(tag, b, version)), -1)
        << "tensor '" << t.name() << "' block " << b
        << " lost its last written bytes";
  }
}

// ---------------------------------------------------------------------------
// 1. Close is a barrier.

// A pin that is loading when Close begins: Close eventually returns OK, and
// by then the pin's call has returned, with kFailedPrecondition ("engine is
// closed"): a load that was in flight when Close began grants no pin. (Were
// the pin granted, the test releases it when Close refuses and retries
// Close; a pin still live when Close returned OK is a failure.) After Close
// returned OK, nothing touches the engine and it is destroyed.
//
// How: block 0 was evicted; thread A pins it and its read is held (kHold).
// Once the read is held, thread B closes; the test waits until Close has
// begun (calls are refused), then releases the read, unless Close already
// returned OK: then B first checks that A had returned, while A's read is
// still held (so A could not have been granted anything yet). A Close that
// waits for the load gets its release after 300 ms.
TEST(EngineCloseTest, CloseWaitsForAPinThatIsLoading) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto faults = std::make_shared<FaultInjector>();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine,
                       OpenFaulty(EdgeOptions(dir.Sub("nvme")), faults));
  Engine* e = engine.get();
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(2 * kFrames)));
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, 1, 1));
  ASSERT_OK(e->Flush(t));  // lru: blocks 0..7 are on NVMe only now

  std::atomic<bool> a_returned{false}, a_pin_live{false};
  std::atomic<bool> close_refused{false}, close_ok{false}, b_decided{false};
  absl::Status a_status;             // A's result (read after the join)
  absl::Status close_status;         // B's last Close (read after the join)
  bool a_returned_at_close = false;  // B's findings (read after the join)
  bool a_pin_live_at_close = false;
  bool a_bytes_ok = true;

  faults->Arm(FaultOps::kRead, 1, Fault::kHold);
  Threads threads([&] {
    b_decided = true;
    faults->Clear();
  });
  threads.Start([&] {  // A
    auto pin = e->Pin(t, 0, Tier::kHost, Access::kRead);
    a_status = pin.status();
    if (pin.ok()) {
      a_bytes_ok = FirstPatternMismatch(pin->bytes(), Seed(1, 0, 1)) == -1;
      a_pin_live = true;  // before a_returned: B reads them in that order
    }
    a_returned = true;
    if (pin.ok()) {
      // Held until Close refuses because of it (or B has seen enough).
      WaitFor([&] { return close_refused.load() || b_decided.load(); },
              absl::Seconds(20));
      a_pin_live = false;
      (void)pin->Release();
    }
  });
  const bool held = WaitFor([&] { return faults->held() == 1; });
  ASSERT_TRUE(held) << "the pin's read of evicted block 0 never reached the "
                       "device (held "
                    << faults->held() << ")";

  threads.Start([&] {  // B
    absl::Status s;
    for (int tries = 0; tries < 2000; ++tries) {
      s = e->Close();
      if (!absl::IsFailedPrecondition(s)) break;
      close_refused = true;  // a live pin: A releases it, then try again
      absl::SleepFor(absl::Milliseconds(2));
    }
    close_status = s;
    if (s.ok()) {
      close_ok = true;
      // A returned before Close did; allow it a moment to say so (it may be
      // between its return and its store). While B looks, A's read is still
      // held unless Close waited for it.
      a_returned_at_close =
          WaitFor([&] { return a_returned.load(); }, absl::Seconds(5));
      a_pin_live_at_close = a_returned_at_close && a_pin_live.load();
    }
    b_decided = true;
  });

  // Close has begun once it refuses calls.
  const bool gated = WaitFor(
      [&] { return absl::IsFailedPrecondition(e->OpenTensor("t").status()); });
  const absl::Time since = absl::Now();
  WaitFor(
      [&] {
        return b_decided.load() ||
               (!close_ok.load() &&
                absl::Now() - since >= absl::Milliseconds(300));
      },
      absl::Seconds(30));
  faults->ReleaseHeld();
  threads.JoinAll();
  t = Tensor();
  engine.reset();  // after Close: nothing may touch it any more (ASan)

  EXPECT_TRUE(gated) << "Close did not refuse new calls (OpenTensor) while a "
                        "pin was loading";
  ASSERT_TRUE(close_status.ok()) << "Close never returned OK: " << close_status;
  EXPECT_TRUE(a_returned_at_close)
      << "Close returned OK while a Pin that was loading when Close began was "
         "still inside the engine (it returned "
      << a_status << " only after its read was released)";
  EXPECT_FALSE(a_pin_live_at_close) << "Close returned OK while a pin was live";
  if (gated) {
    EXPECT_EQ(a_status.code(), StatusCode::kFailedPrecondition)
        << "a pin still loading when Close began must not be granted: "
        << a_status;
    EXPECT_THAT(Message(a_status), HasSubstr("closed")) << a_status;
  }
  EXPECT_TRUE(a_bytes_ok) << "a granted pin held wrong bytes";
}

// A Prefetch handle obtained before Close, whose reads are held, completes
// after Close: once its reads are released, Wait() returns (OK, or an error
// for blocks that did not arrive) instead of hanging. Close returns OK once
// the reads are released. A Prefetch asked for after Close began is refused
// with kFailedPrecondition and queues nothing.
TEST(EngineCloseTest, PrefetchHeldAcrossCloseCompletes) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto faults = std::make_shared<FaultInjector>();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine,
                       OpenFaulty(EdgeOptions(dir.Sub("nvme")), faults));
  Engine* e = engine.get();
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(2 * kFrames)));
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, 1, 1));
  ASSERT_OK(e->Flush(t));  // lru: blocks 0..7 are on NVMe only now

  faults->Arm(FaultOps::kRead, 1, Fault::kHold, /*until_cleared=*/true);
  Threads threads([&] { faults->Clear(); });
  ASSERT_OK_AND_ASSIGN(PrefetchHandle h, e->Prefetch(t, {0, 4}, Tier::kHost));
  ASSERT_TRUE(WaitFor([&] { return faults->held() >= 1; }))
      << "no read of the prefetch reached the device";
  EXPECT_FALSE(h.done()) << "a prefetch whose reads are held is not done";

  std::atomic<bool> close_returned{false};
  absl::Status close_status;
  threads.Start([&] {
    close_status = e->Close();
    close_returned = true;
  });
  const bool gated = WaitFor(
      [&] { return absl::IsFailedPrecondition(e->OpenTensor("t").status()); });
  EXPECT_TRUE(gated) << "Close did not refuse new calls while a prefetch's "
                        "reads were in flight";
  if (gated) {
    // Close has begun: nothing new is queued.
    auto late = e->Prefetch(t, {4, 8}, Tier::kHost);
    EXPECT_EQ(late.status().code(), StatusCode::kFailedPrecondition)
        << "Prefetch after Close: " << late.status();
  }
  // Let a Close that waits for the reads reach its wait.
  WaitFor([&] { return close_returned.load(); }, absl::Milliseconds(300));
  faults->Clear();
  threads.JoinAll();
  EXPECT_OK(close_status) << "Close";
  EXPECT_TRUE(WaitFor([&] { return h.done(); }))
      << "a prefetch obtained before Close never completed after Close";
  if (h.done()) {
    absl::Status s = h.Wait();  // returns; OK or why blocks did not arrive
    EXPECT_NE(s.code(), StatusCode::kDeadlineExceeded) << s;
  }
  t = Tensor();
  engine.reset();
}

// Pins and prefetches racing Close: Close returns OK once no pin is live
// (kFailedPrecondition while one is; the caller retries), and no pin is
// granted that is still live when Close has returned OK. Every Prefetch is
// either refused (kFailedPrecondition) or gives a handle that completes: a
// request queued as the mover stops must not be lost.
TEST(EngineCloseTest, PinsAndPrefetchesRacingClose) {
  constexpr int kRounds = 30;
  for (int round = 0; round < kRounds; ++round) {
    TempDir dir;
    ASSERT_TRUE(dir.ok());
    EngineOptions o = EdgeOptions(dir.Sub("nvme"));
    o.readahead_blocks = 2;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(o));
    Engine* e = engine.get();
    ASSERT_OK_AND_ASSIGN(Tensor t,
                         e->CreateTensor("t", BlocksSpec(2 * kFrames)));
    ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, 1, 1));

    std::atomic<bool> close_ok{false};
    std::atomic<int> live_after_close{0}, wrong_code{0};
    std::mutex mu;  // std: TSan does not see Debian's absl::Mutex
    std::string first_wrong;
    std::vector<PrefetchHandle> handles;
    auto wrong = [&](const std::string& what, const absl::Status& s) {
      wrong_code.fetch_add(1);
      std::lock_guard lock(mu);
      if (first_wrong.empty()) first_wrong = what + ": " + s.ToString();
    };
    test::Event go;
    Threads threads;
    for (int w = 0; w < 2; ++w) {
      threads.Start([&, w] {
        go.Wait();
        for (uint64_t i = 0;; ++i) {
          const uint64_t b = (i * 5 + w) % t.num_blocks();
          auto pin = e->Pin(t, b, Tier::kHost,
                            i % 3 == 0 ? Access::kWrite : Access::kRead);
          if (!pin.ok()) {
            if (!absl::IsFailedPrecondition(pin.status())) {
              wrong("Pin", pin.status());
            }
            return;
          }
          // Live now: Close must not have returned OK.
          if (close_ok.load()) live_after_close.fetch_add(1);
        }
      });
    }
    threads.Start([&] {
      go.Wait();
      for (uint64_t i = 0;; ++i) {
        auto h =
            e->Prefetch(t, BlockRange::One(i % t.num_blocks()), Tier::kHost);
        if (!h.ok()) {
          if (!absl::IsFailedPrecondition(h.status())) {
            wrong("Prefetch", h.status());
          }
          return;
        }
        std::lock_guard lock(mu);
        handles.push_back(*h);
      }
    });
    go.Notify();
    absl::SleepFor(absl::Microseconds(200 * (round % 5)));
    absl::Status s;
    for (int tries = 0; tries < 20000; ++tries) {
      s = e->Close();
      if (!absl::IsFailedPrecondition(s)) break;
      std::this_thread::yield();
    }
    if (s.ok()) close_ok = true;
    threads.JoinAll();
    ASSERT_OK(s) << "round " << round << ": Close";
    EXPECT_EQ(live_after_close.load(), 0)
        << "round " << round << ": a pin was live after Close returned OK";
    {
      std::lock_guard lock(mu);
      EXPECT_EQ(wrong_code.load(), 0)
          << "round " << round << ": " << first_wrong;
      size_t lost = 0;
      for (const PrefetchHandle& h : handles) {
        if (!WaitFor([&] { return h.done(); }, absl::Seconds(5))) ++lost;
      }
      EXPECT_EQ(lost, 0u) << "round " << round << ": " << lost << " of "
                          << handles.size()
                          << " prefetch handles never completed after Close";
    }
    t = Tensor();
    engine.reset();
    if (::testing::Test::HasFailure()) return;
  }
}

// After Close returned OK, every call that would use the engine is refused
// with kFailedPrecondition saying the engine is closed; Close itself is
// idempotent.
TEST(EngineCloseTest, AfterCloseEveryCallIsFailedPrecondition) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e,
                       Engine::Open(EdgeOptions(dir.Sub("nvme"))));
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(2 * kFrames)));
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, 1, 1));
  ASSERT_OK(e->Close());
  auto closed = [](const absl::Status& s, const char* what) {
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << what << ": " << s;
    EXPECT_THAT(Message(s), HasSubstr("closed")) << what << ": " << s;
  };
  closed(e->Pin(t, 0, Tier::kHost, Access::kRead).status(), "Pin (resident)");
  closed(e->Pin(t, 0, Tier::kHost, Access::kWrite).status(), "write Pin");
  closed(e->Pin(t, 1, Tier::kHost, Access::kRead).status(), "Pin (evicted)");
  closed(e->Prefetch(t, BlockRange::All(), Tier::kHost).status(), "Prefetch");
  closed(e->Flush(t), "Flush");
  closed(e->FlushAll(), "FlushAll");
  closed(e->CreateTensor("u", BlocksSpec(1)).status(), "CreateTensor");
  closed(e->OpenTensor("t").status(), "OpenTensor");
  closed(e->DropTensor(t), "DropTensor");
  closed(e->BeginStep(), "BeginStep");
  EXPECT_OK(e->Close()) << "a second Close";
}

// ---------------------------------------------------------------------------
// 2. DropTensor racing pins, Flush, FlushAll and a second DropTensor.

// With pin_wait_timeout long (20 s), threads pin blocks of a tensor (read and
// write, resident, evicted and loading ones), Flush it, FlushAll, and drop it
// a second time while the main thread drops it. Required:
//   - every pin returns OK or kNotFound ("dropped"): never kDeadlineExceeded
//     (nothing waits for a drop that has finished);
//   - Flush and FlushAll return OK or kNotFound, or kFailedPrecondition when
//     a block is pinned for writing (as documented): never
//     kDeadlineExceeded;
//   - DropTensor returns OK, kNotFound once the other one won, or
//     kFailedPrecondition while a block is pinned (the caller retries);
//     exactly one of the two returns OK;
//   - afterwards the tensor is gone (kNotFound) and, once every tensor is
//     dropped, the tiers hold nothing of them.
// The race repeats with different interleavings; it stops at the first
// kDeadlineExceeded (each costs the full 20 s). Nothing is asserted about
// time: a hang shows as the test's timeout.
TEST(EngineDropTest, DropRacingPinsFlushesAndASecondDrop) {
  constexpr int kRounds = 24;
  constexpr absl::Duration kLongWait = absl::Seconds(20);
  // 16 frames; a raced tensor has at most 12 blocks, so that its pins
  // (the pinners', and Flush's own read pins) can never hold every frame:
  // kResourceExhausted would be a legitimate answer then.
  constexpr uint64_t kRaceFrames = 2 * kFrames;
  constexpr uint64_t kRaceBlocks = 12;
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto faults = std::make_shared<FaultInjector>();
  EngineOptions o = EdgeOptions(dir.Sub("nvme"), kRaceFrames * kBlock);
  o.pin_wait_timeout = kLongWait;
  o.readahead_blocks = 2;  // the mover loads blocks of the tensor too
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, OpenFaulty(o, faults));
  Engine* e = engine.get();
  // Never written (zeros, clean): pinning it pushes a raced tensor out.
  ASSERT_OK_AND_ASSIGN(Tensor filler,
                       e->CreateTensor("filler", BlocksSpec(kRaceFrames)));

  struct Outcome {
    std::string what;
    absl::Status status;
  };
  for (int round = 0; round < kRounds; ++round) {
    // 0: every block resident; 1: most blocks evicted (loads race the drop);
    // 2: as 1, and the first read of the round is held until the drop began.
    const int variant = round % 3;
    const uint64_t n = variant == 0 ? 4 : kRaceBlocks;
    const std::string name = "t" + std::to_string(round);
    ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor(name, BlocksSpec(n)));
    ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, round + 1, 1));
    if (variant != 0) {  // lru: t's blocks go to NVMe (written back)
      for (uint64_t b = 0; b < filler.num_blocks(); ++b) {
        ASSERT_OK(e->Pin(filler, b, Tier::kHost, Access::kRead));
      }
    }
    if (variant == 2) faults->Arm(FaultOps::kRead, 1, Fault::kHold);

    std::mutex mu;  // std: TSan does not see Debian's absl::Mutex
    std::vector<Outcome> outcomes;  // every non-OK status, and the drops'
    auto record = [&](std::string what, const absl::Status& s) {
      std::lock_guard lock(mu);
      outcomes.push_back({std::move(what), s});
    };
    std::atomic<bool> drop_started{false}, drops_done{false};
    test::Event go;
    Threads threads([&] { faults->Clear(); });
    for (int w = 0; w < 2; ++w) {  // pinners
      threads.Start([&, w] {
        go.Wait();
        uint64_t x = 1000 * round + w;
        for (int i = 0; i < 300; ++i) {
          x = test::Mix(x);
          const uint64_t b = x % n;
          const bool write = (x >> 20) % 3 == 0;
          auto pin =
              e->Pin(t, b, Tier::kHost, write ? Access::kWrite : Access::kRead);
          if (!pin.ok()) {
            record("Pin of block " + std::to_string(b), pin.status());
            return;
          }
          if (write) FillPattern(pin->bytes(), Seed(round + 1, b, 2 + i));
        }
      });
    }
    threads.Start([&] {  // flusher
      go.Wait();
      for (int i = 0; i < 300; ++i) {
        absl::Status f = i % 2 == 0 ? e->Flush(t) : e->FlushAll();
        if (!f.ok()) record(i % 2 == 0 ? "Flush" : "FlushAll", f);
        if (absl::IsNotFound(f) || absl::IsDeadlineExceeded(f)) return;
      }
    });
    auto drop = [&](const char* who) {
      absl::Status s;
      for (int tries = 0; tries < 100000; ++tries) {
        s = e->DropTensor(t);
        if (!absl::IsFailedPrecondition(s)) break;
        std::this_thread::yield();
      }
      record(who, s);
    };
    threads.Start([&] {  // the second dropper
      go.Wait();
      drop("second DropTensor");
    });
    if (variant == 2) {
      threads.Start([&] {  // releases the held read once the drop began
        WaitFor(
            [&] {
              return (faults->held() >= 1 && drop_started.load()) ||
                     drops_done.load();
            },
            absl::Seconds(60));
        absl::SleepFor(absl::Milliseconds(20));
        faults->Clear();
      });
    }
    go.Notify();
    absl::SleepFor(absl::Microseconds(500 * (round % 4)));
    drop_started = true;
    drop("DropTensor");
    drops_done = true;
    threads.JoinAll();
    faults->Clear();

    int drops_ok = 0;
    bool deadline = false;
    for (const Outcome& out : outcomes) {
      const absl::Status& s = out.status;
      deadline = deadline || absl::IsDeadlineExceeded(s);
      const bool is_drop = out.what.find("DropTensor") != std::string::npos;
      const bool is_flush = out.what.find("Flush") != std::string::npos;
      if (is_drop) {
        if (s.ok()) ++drops_ok;
        EXPECT_TRUE(s.ok() || absl::IsNotFound(s))
            << "round " << round << ": " << out.what << ": " << s;
      } else if (is_flush && absl::IsFailedPrecondition(s)) {
        EXPECT_THAT(Message(s), HasSubstr("pinned for writing"))
            << "round " << round << ": " << out.what << ": " << s;
      } else {
        EXPECT_TRUE(absl::IsNotFound(s))
            << "round " << round << ": " << out.what << ": " << s;
      }
    }
    EXPECT_EQ(drops_ok, 1) << "round " << round
                           << ": exactly one DropTensor must win";
    EXPECT_STATUS(e->OpenTensor(name), StatusCode::kNotFound);
    EXPECT_STATUS(e->Pin(t, 0, Tier::kHost, Access::kRead),
                  StatusCode::kNotFound);
    if (deadline) {
      ADD_FAILURE() << "round " << round << " (variant " << variant
                    << "): a call waited the whole pin_wait_timeout ("
                    << absl::FormatDuration(kLongWait)
                    << ") for a dropped tensor; stopping";
      break;
    }
    if (::testing::Test::HasFailure()) break;
  }
  if (!::testing::Test::HasFailure()) {
    // Every tensor was dropped: their copies are freed.
    EXPECT_OK(e->DropTensor(filler));
    EXPECT_OK(e->FlushAll());
    EXPECT_TRUE(WaitFor([&] {
      return e->GetStats().tier(Tier::kHost).write_backs_in_flight == 0;
    }));
    EXPECT_EQ(e->GetStats().tier(Tier::kHost).used_bytes, 0u)
        << "dropped tensors left frames in the host tier";
    EXPECT_EQ(e->GetStats().tier(Tier::kNvme).used_bytes, 0u)
        << "dropped tensors left extents in the NVMe tier";
  }
  EXPECT_OK(e->Close());
}

// ---------------------------------------------------------------------------
// 3. Out-of-range enum values.

// A Tier, Access or DType outside its enumerators (a cast from a bad integer,
// a version mismatch) is kInvalidArgument whose message names the bad value;
// it is never taken for another value (an Access of 7 is not a write). The
// known but unconfigured tiers (kGpu, kShm, kRemote) are not specified here.
TEST(EngineEnumTest, OutOfRangeEnumsAreInvalidArgument) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e,
                       Engine::Open(EdgeOptions(dir.Sub("nvme"))));
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(2 * kFrames)));
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, 1, 1));
  // Block 15 is resident (the hot path), block 0 evicted (the slow path).
  for (uint64_t block : {uint64_t{15}, uint64_t{0}}) {
    SCOPED_TRACE("block " + std::to_string(block));
    auto bad_tier = e->Pin(t, block, static_cast<Tier>(9), Access::kRead);
    EXPECT_EQ(bad_tier.status().code(), StatusCode::kInvalidArgument)
        << bad_tier.status();
    EXPECT_THAT(Message(bad_tier.status()), HasSubstr("9"));
    EXPECT_THAT(Lower(Message(bad_tier.status())), HasSubstr("tier"));

    auto bad_access = e->Pin(t, block, Tier::kHost, static_cast<Access>(7));
    EXPECT_EQ(bad_access.status().code(), StatusCode::kInvalidArgument)
        << (bad_access.ok() ? "granted a pin with access 7"
                            : bad_access.status().ToString());
    EXPECT_THAT(Message(bad_access.status()), HasSubstr("7"));
    EXPECT_THAT(Lower(Message(bad_access.status())), HasSubstr("access"));
  }
  auto bad_prefetch = e->Prefetch(t, BlockRange::All(), static_cast<Tier>(9));
  EXPECT_EQ(bad_prefetch.status().code(), StatusCode::kInvalidArgument)
      << bad_prefetch.status();
  EXPECT_THAT(Message(bad_prefetch.status()), HasSubstr("9"));

  auto bad_dtype = e->CreateTensor(
      "u", TensorSpec{.dtype = static_cast<DType>(42), .shape = {4096}});
  EXPECT_EQ(bad_dtype.status().code(), StatusCode::kInvalidArgument)
      << bad_dtype.status();
  EXPECT_THAT(Message(bad_dtype.status()), HasSubstr("42"));
  EXPECT_THAT(Lower(Message(bad_dtype.status())), HasSubstr("dtype"));

  // Nothing was left pinned or half-made: the tensor still works and Close
  // finds no pin.
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, 1, 2));
  EXPECT_STATUS(e->OpenTensor("u"), StatusCode::kNotFound);
  EXPECT_OK(e->Close());
}

// ---------------------------------------------------------------------------
// 4. The NVMe directory.

// nvme.path is created with its parents (mkdir -p): none of <tmp>/a/b/c
// exists, Open succeeds and creates it.
TEST(EngineNvmePathTest, PathIsCreatedWithItsParents) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.Sub("a/b/c");
  auto e = Engine::Open(EdgeOptions(path));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(std::filesystem::is_directory(path)) << path;
  EXPECT_OK((*e)->Close());
}

// A regular file where the path needs a directory (in the middle of the path,
// or its last component) is kFailedPrecondition naming the path.
TEST(EngineNvmePathTest, AFileInThePathIsFailedPrecondition) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string file = dir.Sub("a");
  {
    std::FILE* f = std::fopen(file.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  for (const std::string& path : {dir.Sub("a/b/c"), dir.Sub("a")}) {
    auto e = Engine::Open(EdgeOptions(path));
    EXPECT_EQ(e.status().code(), StatusCode::kFailedPrecondition)
        << path << ": " << e.status();
    // The configured path, or the file in it (a prefix of both).
    EXPECT_THAT(Message(e.status()), HasSubstr(file)) << e.status();
  }
}

// ---------------------------------------------------------------------------
// 5. Errors reach the caller who asked.

// A background write-back that fails (started by eviction for another
// tensor's pin, or by evict-ahead) belongs to the tensor that owns the block:
//   - it is never handed to an unrelated Pin: B's pins succeed (the engine
//     finds space elsewhere or writes the block again);
//   - it is counted in the NVMe tier's TierStats::errors;
//   - Flush(B) does not return it;
//   - the next Flush(A) returns it, once (kInternal, naming EIO), even if a
//     later write-back of that block succeeded meanwhile (a Flush reports
//     every write-back failure of its tensor since the previous Flush, as
//     fsync does); the Flush(A) after that is OK;
//   - nothing is lost: every block of A reads back its last written bytes.
TEST(EngineErrorTest, FailedWriteBackReachesTheOwnersFlush) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto faults = std::make_shared<FaultInjector>();
  // 16 frames: two write-backs in flight at once, and evict-ahead keeps two
  // frames free.
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<Engine> e,
      OpenFaulty(EdgeOptions(dir.Sub("nvme"), 2 * kHost), faults));
  const uint64_t frames = 2 * kFrames;
  ASSERT_OK_AND_ASSIGN(Tensor a, e->CreateTensor("a", BlocksSpec(frames)));
  ASSERT_OK_AND_ASSIGN(Tensor b, e->CreateTensor("b", BlocksSpec(frames)));
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, a, 1, 1));  // dirty, filling the host
  const uint64_t errors_before = e->GetStats().tier(Tier::kNvme).errors;

  faults->Arm(FaultOps::kWrite, 1, Fault::kEio);
  std::vector<bool> written(b.num_blocks(), false);
  for (uint64_t blk = 0; blk < b.num_blocks(); ++blk) {
    auto p = e->Pin(b, blk, Tier::kHost, Access::kWrite);
    EXPECT_TRUE(p.ok()) << "pin of block " << blk
                        << " of tensor b got another tensor's error: "
                        << p.status();
    if (!p.ok()) continue;
    FillPattern(p->bytes(), Seed(2, blk, 1));
    written[blk] = true;
  }
  ASSERT_TRUE(WaitFor([&] {
    return e->GetStats().tier(Tier::kHost).write_backs_in_flight == 0;
  }));
  ASSERT_EQ(faults->injected(), 1u) << "no write-back of a met the fault";
  EXPECT_GE(e->GetStats().tier(Tier::kNvme).errors, errors_before + 1)
      << "the failed write-back was not counted";

  EXPECT_OK(e->Flush(b)) << "Flush(b) returned a's error";
  absl::Status first = e->Flush(a);
  EXPECT_EQ(first.code(), StatusCode::kInternal)
      << "the failed write-back of a block of a must reach Flush(a): " << first;
  EXPECT_THAT(Message(first), HasSubstr("EIO")) << first;
  EXPECT_OK(e->Flush(a)) << "the error is returned once";
  ASSERT_NO_FATAL_FAILURE(ExpectAll(*e, a, 1, 1));
  ASSERT_NO_FATAL_FAILURE(ExpectAll(*e, b, 2, 1, &written));
  EXPECT_OK(e->Close());
}

// Dropping a tensor drops its pending write-back errors: after a background
// write-back of A fails and A is dropped, B's pins, Flush(B) and FlushAll
// are OK.
TEST(EngineErrorTest, DroppingATensorDropsItsWriteBackErrors) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto faults = std::make_shared<FaultInjector>();
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<Engine> e,
      OpenFaulty(EdgeOptions(dir.Sub("nvme"), 2 * kHost), faults));
  const uint64_t frames = 2 * kFrames;
  ASSERT_OK_AND_ASSIGN(Tensor a, e->CreateTensor("a", BlocksSpec(frames)));
  ASSERT_OK_AND_ASSIGN(Tensor b, e->CreateTensor("b", BlocksSpec(2 * frames)));
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, a, 1, 1));

  faults->Arm(FaultOps::kWrite, 1, Fault::kEio);
  std::vector<bool> written(b.num_blocks(), false);
  auto write_b = [&](uint64_t blk, const char* when) {
    auto p = e->Pin(b, blk, Tier::kHost, Access::kWrite);
    EXPECT_TRUE(p.ok()) << "pin of block " << blk << " of tensor b " << when
                        << ": " << p.status();
    if (!p.ok()) return;
    FillPattern(p->bytes(), Seed(2, blk, 1));
    written[blk] = true;
  };
  // Pin blocks of b until a write-back has met the fault (and finished).
  uint64_t next = 0;
  for (; next < b.num_blocks() && faults->injected() == 0; ++next) {
    write_b(next, "(got another tensor's error)");
  }
  ASSERT_EQ(faults->injected(), 1u) << "no write-back of a met the fault";
  ASSERT_TRUE(WaitFor([&] {
    return e->GetStats().tier(Tier::kHost).write_backs_in_flight == 0;
  }));

  ASSERT_OK(e->DropTensor(a));
  for (; next < b.num_blocks(); ++next) {  // these evict b's own blocks too
    write_b(next, "after a was dropped");
  }
  EXPECT_OK(e->Flush(b)) << "Flush(b) after a was dropped";
  EXPECT_OK(e->FlushAll()) << "FlushAll after a was dropped";
  ASSERT_NO_FATAL_FAILURE(ExpectAll(*e, b, 2, 1, &written));
  EXPECT_OK(e->Close());
}

// A Prefetch of a block whose copy is on its way out (evicted, its
// write-back in flight) waits it out and loads the block again: the handle
// is not done while the write-back is held, and once it is done the block is
// resident with its bytes. (It once took the leaving copy for one "already
// there" and was done at once, with the block about to be gone.)
//
// How: 8 frames hold dirty blocks 0..7; a thread's write pin of block 8
// evicts block 0 (lru, one write-back at a time), whose write is held.
TEST(EnginePrefetchTest, PrefetchWaitsOutABlockBeingEvicted) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto faults = std::make_shared<FaultInjector>();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine,
                       OpenFaulty(EdgeOptions(dir.Sub("nvme")), faults));
  Engine* e = engine.get();
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(kFrames + 1)));
  for (uint64_t b = 0; b < kFrames; ++b) {
    ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(t, b, Tier::kHost, Access::kWrite));
    FillPattern(p.bytes(), Seed(1, b, 1));
  }
  faults->Arm(FaultOps::kWrite, 1, Fault::kHold);
  absl::Status writer_status;
  Threads threads([&] { faults->Clear(); });
  threads.Start([&] {
    auto p = e->Pin(t, kFrames, Tier::kHost, Access::kWrite);
    writer_status = p.status();
    if (p.ok()) FillPattern(p->bytes(), Seed(1, kFrames, 1));
  });
  ASSERT_TRUE(WaitFor([&] { return faults->held() == 1; }))
      << "block 0's write-back never reached the device";

  ASSERT_OK_AND_ASSIGN(PrefetchHandle h, e->Prefetch(t, {0, 1}, Tier::kHost));
  WaitFor([&] { return h.done() || testing::CopyHasWaiters(*e, t, Tier::kHost, 0); });
  EXPECT_FALSE(h.done()) << "the prefetch was done while block 0 was still "
                            "being written down (and about to leave the host)";
  faults->Clear();
  threads.JoinAll();
  EXPECT_OK(writer_status);
  ASSERT_OK(h.Wait());
  ASSERT_OK_AND_ASSIGN(std::optional<Pin> hit, e->TryPin(t, 0, Tier::kHost, Access::kRead));
  ASSERT_TRUE(hit.has_value()) << "the prefetched block is not resident";
  EXPECT_EQ(FirstPatternMismatch(hit->bytes(), Seed(1, 0, 1)), -1);
  hit.reset();
  EXPECT_OK(e->Close());
}

// A readahead window that runs after its reader has passed it loads
// nothing the reader has already read: on a loaded machine the mover can
// lag, and its stale windows once loaded blocks behind the reader again,
// marked prefetched, so that they outstayed newer ones (EngineFaultMiscTest.
// ReadaheadFaultsReachTheDemandPin found block 1 still resident after 32
// blocks had gone through 8 frames, about 1 run in 150 under load).
//
// How: the mover is held while a reader reads blocks 0..19 (each a demand
// miss, each window queued behind it); then the mover runs the windows.
TEST(EnginePrefetchTest, StaleReadaheadWindowsLoadNothingTheReaderPassed) {
  constexpr uint64_t kBlocks = 32, kRead = 20, kWindow = 4;
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  EngineOptions o = EdgeOptions(dir.Sub("nvme"));
  o.readahead_blocks = kWindow;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e, Engine::Open(o));
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(kBlocks)));
  for (uint64_t b = 0; b < kBlocks; ++b) {
    ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(t, b, Tier::kHost, Access::kOverwrite));
    FillPattern(p.bytes(), Seed(1, b, 1));
  }
  ASSERT_OK(e->Flush(t));
  ASSERT_TRUE(testing::WaitForBackgroundWork(*e, absl::Seconds(5)));

  testing::PauseBackgroundWork(*e);
  const uint64_t before = e->GetStats().tier(Tier::kNvme).bytes_out;
  for (uint64_t b = 0; b < kRead; ++b) {
    ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(t, b, Tier::kHost, Access::kRead));
    EXPECT_EQ(FirstPatternMismatch(p.bytes(), Seed(1, b, 1)), -1) << "block " << b;
  }
  const uint64_t demand = e->GetStats().tier(Tier::kNvme).bytes_out - before;
  EXPECT_EQ(demand, kRead * kBlock) << "every read was a demand miss";
  testing::ResumeBackgroundWork(*e);
  ASSERT_TRUE(testing::WaitForBackgroundWork(*e, absl::Seconds(5)));
  const uint64_t background =
      e->GetStats().tier(Tier::kNvme).bytes_out - before - demand;
  // At most the window beyond the reader's last block (20..23).
  EXPECT_LE(background, kWindow * kBlock)
      << background / kBlock << " blocks loaded by readahead after the reader "
      << "read blocks 0.." << kRead - 1 << ": stale windows loaded blocks it had passed";
  for (uint64_t b = 0; b < kBlocks; ++b) {
    ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(t, b, Tier::kHost, Access::kRead));
    EXPECT_EQ(FirstPatternMismatch(p.bytes(), Seed(1, b, 1)), -1) << "block " << b;
  }
  EXPECT_OK(e->Close());
}

// Every wait has a deadline, synchronous I/O included: a read whose
// completion the device swallows (kHold) gives the pin that waits for it
// kDeadlineExceeded after io_timeout, naming the option; the frame stays
// reserved (quarantined) until the completion arrives; then the block reads
// back right.
TEST(EngineTimeoutTest, SwallowedCompletionIsDeadlineExceededAndQuarantined) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto faults = std::make_shared<FaultInjector>();
  EngineOptions o = EdgeOptions(dir.Sub("nvme"));
  o.io_timeout = absl::Milliseconds(300);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e, OpenFaulty(o, faults));
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(2 * kFrames)));
  ASSERT_NO_FATAL_FAILURE(WriteAll(*e, t, 1, 1));
  ASSERT_OK(e->Flush(t));  // lru: blocks 0..7 are on NVMe only now
  faults->Arm(FaultOps::kRead, 1, Fault::kHold);
  auto pin = e->Pin(t, 0, Tier::kHost, Access::kRead);
  EXPECT_EQ(pin.status().code(), StatusCode::kDeadlineExceeded) << pin.status();
  EXPECT_THAT(std::string(pin.status().message()), HasSubstr("io_timeout"));
  EXPECT_EQ(faults->held(), 1u);
  // The copy stays in transit, its frame reserved: a second pin waits for
  // the same load and times out too (it does not start another read).
  auto again = e->Pin(t, 0, Tier::kHost, Access::kRead);
  EXPECT_EQ(again.status().code(), StatusCode::kDeadlineExceeded) << again.status();
  faults->Clear();  // the completion arrives
  for (uint64_t b = 0; b < 2 * kFrames; ++b) {
    ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(t, b, Tier::kHost, Access::kRead));
    EXPECT_EQ(FirstPatternMismatch(p.bytes(), Seed(1, b, 1)), -1) << b;
  }
  EXPECT_OK(e->Close());
}

// A full file system under the NVMe tier: a small tmpfs (mounted for the
// test; skipped where mounting is not allowed). Write pins past what host +
// disk hold fail with kResourceExhausted, fast (the tier remembers the
// ENOSPC instead of asking fallocate again for every victim); nothing
// acknowledged is lost; freeing space makes writes work again.
TEST(EngineFullDiskTest, FullFileSystemIsResourceExhaustedAndLosesNothing) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string fs = dir.Sub("fs");
  ASSERT_TRUE(std::filesystem::create_directory(fs));
  if (::mount("tmpfs", fs.c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                 << "): needs root";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount(path.c_str()); }
  } unmount{fs};
  {
    EngineOptions o = EdgeOptions(fs + "/nvme");
    o.nvme.capacity_bytes = 64 * kMiB;  // the file system is the limit
    ASSERT_OK_AND_ASSIGN(auto e, Engine::Open(o));
    const uint64_t n = 1 * kMiB / kBlock + 2 * kFrames;  // beyond disk + host
    ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", BlocksSpec(n)));
    std::vector<bool> written(n, false);
    uint64_t refused = 0;
    for (uint64_t b = 0; b < n; ++b) {
      auto pin = e->Pin(t, b, Tier::kHost, Access::kWrite);
      if (!pin.ok()) {
        EXPECT_EQ(pin.status().code(), StatusCode::kResourceExhausted)
            << "block " << b << ": " << pin.status();
        ++refused;
        continue;
      }
      FillPattern(pin->bytes(), Seed(7, b, 1));
      written[b] = true;
    }
    EXPECT_GT(refused, 0u) << "the 1 MiB file system never filled";
    for (uint64_t b = 0; b < n; ++b) {
      if (!written[b]) continue;
      auto pin = e->Pin(t, b, Tier::kHost, Access::kRead);
      if (!pin.ok()) {
        EXPECT_EQ(pin.status().code(), StatusCode::kResourceExhausted)
            << "block " << b << ": " << pin.status();
        continue;
      }
      EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(7, b, 1)), -1) << b;
    }
    ASSERT_OK(e->DropTensor(t));
    ASSERT_OK_AND_ASSIGN(Tensor u, e->CreateTensor("u", BlocksSpec(2 * kFrames)));
    for (uint64_t b = 0; b < u.num_blocks(); ++b) {
      ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(u, b, Tier::kHost, Access::kWrite));
      FillPattern(p.bytes(), Seed(8, b, 1));
    }
    for (uint64_t b = 0; b < u.num_blocks(); ++b) {
      ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(u, b, Tier::kHost, Access::kRead));
      EXPECT_EQ(FirstPatternMismatch(p.bytes(), Seed(8, b, 1)), -1) << b;
    }
    EXPECT_OK(e->Close());
  }
}

}  // namespace
}  // namespace strata
