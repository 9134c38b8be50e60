// Helpers shared by the NVMe tier's test files: temporary directories, host
// memory shaped like the engine's arena, completion latches, and seeded
// fill patterns.
#ifndef STRATA_TESTS_NVME_TEST_UTIL_H_
#define STRATA_TESTS_NVME_TEST_UTIL_H_

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tiers/tier.h"

namespace strata::tiers::test {

inline std::string Str(absl::string_view s) { return std::string(s.data(), s.size()); }

// A fresh directory per test, removed afterwards. Under /tmp (ext4 here;
// tmpfs accepts O_DIRECT on Linux >= 6.6 too).
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/strata-nvme-test-XXXXXX";
    char* made = ::mkdtemp(name);
    EXPECT_NE(made, nullptr) << std::strerror(errno);
    path_ = made != nullptr ? made : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file() const { return path_ + "/blocks.strata"; }

 private:
  std::string path_;
};

// Host memory as the engine's arena hands it out: 4096-aligned, in whole
// pages.
class HostBuffer {
 public:
  explicit HostBuffer(size_t bytes)
      : size_((bytes + 4095) / 4096 * 4096),
        data_(static_cast<std::byte*>(std::aligned_alloc(4096, size_))) {
    std::memset(data_, 0, size_);
  }
  ~HostBuffer() { std::free(data_); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  std::byte* data_;
};

// Counts completions; Wait fails the test instead of hanging.
class Latch {
 public:
  explicit Latch(int count) : count_(count) {}
  void CountDown() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--count_ <= 0) cv_.notify_all();
  }
  bool Wait(absl::Duration timeout = absl::Seconds(20)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout),
                        [this] { return count_ <= 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_;
};

// One transfer plus what the test checks about its completion.
struct Job {
  Transfer t;
  std::atomic<int> calls{0};
  Latch* latch = nullptr;
};

inline void OnDone(Transfer* t) {
  Job* job = static_cast<Job*>(t->user);
  job->calls.fetch_add(1);
  job->latch->CountDown();
}

// Seeded pseudo-random bytes (splitmix64), 8 at a time.
inline void Fill(std::byte* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(p + i, &z, std::min<size_t>(8, n - i));
  }
}

}  // namespace strata::tiers::test

#endif  // STRATA_TESTS_NVME_TEST_UTIL_H_
