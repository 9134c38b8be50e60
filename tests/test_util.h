// Small helpers shared by the engine tests: status assertions, temporary
// directories, small engine options and block byte patterns.
//
// Header-only; every test program includes it at most once per translation
// unit. Nothing here is thread-unsafe except TempDir's constructor and
// destructor (call them from the test's main thread).
#ifndef STRATA_TESTS_TEST_UTIL_H_
#define STRATA_TESTS_TEST_UTIL_H_

#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "api/strata/strata.h"
#include "gtest/gtest.h"

namespace strata::test {

inline const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

#define STRATA_TEST_CONCAT_INNER_(a, b) a##b
#define STRATA_TEST_CONCAT_(a, b) STRATA_TEST_CONCAT_INNER_(a, b)

// Streamable status assertions (`EXPECT_OK(x) << "context";`).
inline ::testing::AssertionResult IsOk(const absl::Status& s) {
  if (s.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "not OK: " << s;
}
inline ::testing::AssertionResult HasCode(const absl::Status& s,
                                          absl::StatusCode code) {
  if (s.code() == code) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "expected " << absl::StatusCodeToString(code) << ", got " << s;
}

#define ASSERT_OK(expr) \
  ASSERT_TRUE(::strata::test::IsOk(::strata::test::ToStatus(expr)))
#define EXPECT_OK(expr) \
  EXPECT_TRUE(::strata::test::IsOk(::strata::test::ToStatus(expr)))
// EXPECT_STATUS(expr, absl::StatusCode::kX) for a Status or a StatusOr.
#define EXPECT_STATUS(expr, code)            \
  EXPECT_TRUE(::strata::test::HasCode(::strata::test::ToStatus(expr), code))

// ASSERT_OK_AND_ASSIGN(auto x, F());
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                                     \
  ASSERT_OK_AND_ASSIGN_IMPL_(STRATA_TEST_CONCAT_(strata_test_or_, __LINE__), \
                             lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr)             \
  auto tmp = (expr);                                           \
  ASSERT_TRUE(tmp.ok()) << #expr << ": " << tmp.status();      \
  lhs = std::move(tmp).value()

// A fresh directory (mkdtemp under $TMPDIR or /tmp), removed with its
// contents on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = ::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base
                                                                    : "/tmp") +
                       "/strata-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string Sub(std::string_view name) const {
    return path_ + "/" + std::string(name);
  }

 private:
  std::string path_;
};

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * 1024;

// Keeps the engine's rare-event log (e.g. "fixed buffers refused") out of the
// test output unless asked for.
inline void QuietLog(std::string_view) {}

// Small options: host `host_bytes`, blocks of `block_bytes`, NVMe in `dir`
// (64 MiB at most), queue depth 16, no huge pages.
inline EngineOptions SmallOptions(const std::string& nvme_dir,
                                  uint64_t host_bytes = 8 * kMiB,
                                  uint64_t block_bytes = 256 * kKiB) {
  EngineOptions o;
  o.host.capacity_bytes = host_bytes;
  o.host.huge_pages = false;
  o.default_block_bytes = block_bytes;
  o.nvme.path = nvme_dir;
  o.nvme.capacity_bytes = 64 * kMiB;
  o.nvme.queue_depth = 16;
  o.pin_wait_timeout = absl::Seconds(20);
  o.log = QuietLog;
  return o;
}

// A 64-bit mix (splitmix64's finalizer): distinct seeds give unrelated words.
inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The seed of (tensor tag, block, version): every block version has its own.
inline uint64_t Seed(uint64_t tag, uint64_t block, uint64_t version) {
  return Mix(tag * 0x100000001B3ull ^ Mix(block * 0x10001ull + version));
}

// Word i of the pattern of `seed`. Word 0 is the seed itself, so that a
// block's copy in the NVMe file can be found by its first 8 bytes.
inline uint64_t PatternWord(uint64_t seed, uint64_t i) {
  return i == 0 ? seed : Mix(seed + i);
}

// Fills `bytes` with the pattern of `seed` (a trailing partial word gets the
// low bytes of its word).
inline void FillPattern(std::span<std::byte> bytes, uint64_t seed) {
  const size_t words = bytes.size() / 8;
  for (size_t i = 0; i < words; ++i) {
    const uint64_t w = PatternWord(seed, i);
    std::memcpy(bytes.data() + i * 8, &w, 8);
  }
  if (bytes.size() % 8 != 0) {
    const uint64_t w = PatternWord(seed, words);
    std::memcpy(bytes.data() + words * 8, &w, bytes.size() % 8);
  }
}

// Index of the first byte that differs from the pattern of `seed`, or -1.
inline int64_t FirstPatternMismatch(std::span<const std::byte> bytes,
                                    uint64_t seed) {
  const size_t words = bytes.size() / 8;
  for (size_t i = 0; i < words; ++i) {
    const uint64_t want = PatternWord(seed, i);
    if (std::memcmp(bytes.data() + i * 8, &want, 8) != 0) {
      return static_cast<int64_t>(i * 8);
    }
  }
  if (bytes.size() % 8 != 0) {
    const uint64_t want = PatternWord(seed, words);
    if (std::memcmp(bytes.data() + words * 8, &want, bytes.size() % 8) != 0) {
      return static_cast<int64_t>(words * 8);
    }
  }
  return -1;
}

// Index of the first non-zero byte, or -1.
inline int64_t FirstNonZero(std::span<const std::byte> bytes) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != std::byte{0}) return static_cast<int64_t>(i);
  }
  return -1;
}

// Blocks whose every 8-byte word is Encode(block, seq): a block is either
// uniform and names its own index, or it is torn / misplaced. seq 0 is the
// zero block a new tensor reads as.
inline uint64_t Encode(uint64_t block, uint64_t seq) {
  return seq == 0 ? 0 : ((block + 1) << 40) | seq;
}

struct Decoded {
  bool uniform = false;   // every word equal
  bool ours = false;      // the value names this block (or is zero)
  uint64_t seq = 0;
};

inline Decoded Decode(std::span<const std::byte> bytes, uint64_t block) {
  Decoded d;
  uint64_t first;
  std::memcpy(&first, bytes.data(), 8);
  d.uniform = true;
  for (size_t i = 8; i + 8 <= bytes.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, bytes.data() + i, 8);
    if (w != first) {
      d.uniform = false;
      break;
    }
  }
  if (first == 0) {
    d.ours = true;
    d.seq = 0;
  } else {
    d.ours = (first >> 40) == block + 1;
    d.seq = first & ((uint64_t{1} << 40) - 1);
  }
  return d;
}

inline void FillEncoded(std::span<std::byte> bytes, uint64_t block,
                        uint64_t seq) {
  const uint64_t v = Encode(block, seq);
  for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
    std::memcpy(bytes.data() + i, &v, 8);
  }
}

// A one-shot event between threads (absl::Notification is not in the
// dependencies the tests link).
class Event {
 public:
  void Notify() {
    absl::MutexLock lock(&mu_);
    set_ = true;
  }
  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&set_));
  }
  bool HasBeenNotified() {
    absl::MutexLock lock(&mu_);
    return set_;
  }

 private:
  absl::Mutex mu_;
  bool set_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace strata::test

#endif  // STRATA_TESTS_TEST_UTIL_H_
