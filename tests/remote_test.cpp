// The remote tier and strata-blockd over libfabric's tcp;ofi_rxm on
// 127.0.0.1 (suite `remote`): the control protocol's decoder under bad and
// fuzzed input, a server process per test (started from STRATA_BLOCKD on a
// port the system picks), round trips of random blocks, the shared secret,
// RMA confined to the client's allocation, a server fed garbage that keeps
// serving, and an engine whose victims go host -> remote -> nvme.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "api/strata/strata.h"
#include "engine/testing.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tiers/remote/fabric.h"
#include "tiers/remote/protocol.h"
#include "tiers/remote/remote_tier.h"
#include "tiers/remote/replicated_tier.h"

namespace strata {
namespace {

using ::absl::StatusCode;
using test::FillPattern;
using test::FirstPatternMismatch;
using test::kKiB;
using test::kMiB;
using test::Seed;
using test::TempDir;
namespace remote = tiers::remote;

constexpr char kSecret[] = "remote-test-secret";

// ---------------------------------------------------------------------------
// The protocol.

std::vector<remote::Message> Samples() {
  std::vector<remote::Message> all;
  all.push_back({.type = remote::Type::kHello, .request = 1, .secret = "s3cret",
                 .address = std::string("\x02\x00\x1f\x90\x7f\x00\x00\x01", 8)});
  remote::Message alloc{.type = remote::Type::kAllocate, .request = 2, .session = 77};
  alloc.values[0] = 1 << 20;
  all.push_back(alloc);
  remote::Message free_msg{.type = remote::Type::kFree, .request = 3, .session = 77};
  free_msg.values[0] = 5;
  all.push_back(free_msg);
  all.push_back({.type = remote::Type::kStat, .request = 4, .session = 77});
  all.push_back({.type = remote::Type::kBye, .request = 5, .session = 77});
  all.push_back(remote::Reply(alloc, absl::OkStatus(), {9, 10, 11, 12}));
  all.push_back(remote::Reply(alloc, absl::ResourceExhaustedError("full")));
  return all;
}

TEST(RemoteProtocolTest, EveryTypeRoundTrips) {
  for (const remote::Message& m : Samples()) {
    std::vector<std::byte> bytes = remote::Encode(m);
    ASSERT_OK_AND_ASSIGN(remote::Message back, remote::Decode(bytes));
    EXPECT_EQ(back.type, m.type);
    EXPECT_EQ(back.request, m.request);
    EXPECT_EQ(back.session, m.type == remote::Type::kHello || m.type == remote::Type::kReply
                                ? 0u : m.session);
    EXPECT_EQ(back.secret, m.secret);
    EXPECT_EQ(back.address, m.address);
    EXPECT_EQ(back.code, m.code);
    EXPECT_EQ(back.text, m.text);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(back.values[i], m.values[i]) << i;
  }
}

TEST(RemoteProtocolTest, MalformedMessagesAreErrors) {
  const std::vector<std::byte> good = remote::Encode(Samples()[0]);
  auto decode = [](std::vector<std::byte> b) { return remote::Decode(b).status(); };
  EXPECT_STATUS(decode({}), StatusCode::kInvalidArgument);
  EXPECT_STATUS(decode({good.begin(), good.begin() + 10}), StatusCode::kInvalidArgument);
  std::vector<std::byte> b = good;
  b[0] = std::byte{0};  // magic
  EXPECT_STATUS(decode(b), StatusCode::kInvalidArgument);
  b = good;
  b[4] = std::byte{9};  // version
  EXPECT_STATUS(decode(b), StatusCode::kFailedPrecondition);
  b = good;
  b[6] = std::byte{99};  // type
  EXPECT_STATUS(decode(b), StatusCode::kInvalidArgument);
  b = good;
  b.push_back(std::byte{0});  // trailing byte: length no longer matches
  EXPECT_STATUS(decode(b), StatusCode::kInvalidArgument);
  b = good;
  b[24] = std::byte{0xff};  // the secret's length runs past the end
  b[25] = std::byte{0xff};
  EXPECT_STATUS(decode(b), StatusCode::kInvalidArgument);
  EXPECT_STATUS(decode(std::vector<std::byte>(remote::kMaxMessage + 1)),
                StatusCode::kInvalidArgument);
}

// What Decode makes of `bytes`: "accepts", or the status code's name.
std::string Outcome(std::span<const std::byte> bytes) {
  absl::StatusOr<remote::Message> m = remote::Decode(bytes);
  return m.ok() ? "accepts" : absl::StatusCodeToString(m.status().code());
}

// A corpus file: "# OUTCOME: note" then the message as hex bytes.
struct CorpusEntry {
  std::string path, expected;
  std::vector<std::byte> bytes;
};

std::vector<CorpusEntry> ReadCorpus(const std::string& dir) {
  std::vector<CorpusEntry> entries;
  for (const auto& file : std::filesystem::directory_iterator(dir)) {
    CorpusEntry e{.path = file.path().string()};
    std::ifstream in(file.path());
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("# ", 0) == 0) {
        const size_t colon = line.find(':');
        if (e.expected.empty()) {
          e.expected = line.substr(2, colon == std::string::npos ? std::string::npos : colon - 2);
        }
        continue;
      }
      std::istringstream hex(line);
      unsigned byte = 0;
      while (hex >> std::hex >> byte) e.bytes.push_back(std::byte(byte));
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

void WriteCorpusEntry(const std::string& path, std::span<const std::byte> bytes,
                      const absl::Status& status) {
  std::ofstream out(path);
  out << "# " << (status.ok() ? "accepts" : absl::StatusCodeToString(status.code()))
      << ": " << (status.ok() ? "a message that encodes back" : status.message()) << "\n";
  for (size_t i = 0; i < bytes.size(); ++i) {
    char hex[4];
    std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned>(bytes[i]));
    out << hex << ((i + 1) % 24 == 0 || i + 1 == bytes.size() ? "\n" : " ");
  }
}

// The corpus kept in tests/remote_corpus (STRATA_REMOTE_CORPUS, set by meson
// test): valid messages of every type and the inputs that reached each of
// Decode's refusals. Each decodes as its file says.
TEST(RemoteProtocolTest, CorpusDecodesAsRecorded) {
  const char* dir = std::getenv("STRATA_REMOTE_CORPUS");
  if (dir == nullptr) GTEST_SKIP() << "STRATA_REMOTE_CORPUS is not set (meson test sets it)";
  const std::vector<CorpusEntry> corpus = ReadCorpus(dir);
  ASSERT_FALSE(corpus.empty()) << "no corpus in " << dir;
  int accepted = 0;
  for (const CorpusEntry& e : corpus) {
    EXPECT_EQ(Outcome(e.bytes), e.expected) << e.path;
    accepted += e.expected == "accepts";
  }
  EXPECT_GT(accepted, 0) << "the corpus has no valid message";
  EXPECT_LT(accepted, static_cast<int>(corpus.size())) << "the corpus has no refusal";
}

// Mutations of valid messages and of the corpus (bit flips, truncations,
// splices of random bytes): Decode returns an error or a message that
// encodes back to a message it decodes again, never crashes (ASan/UBSan in
// CI). STRATA_REMOTE_CORPUS_SAVE=DIR writes the first input of each distinct
// outcome there (how tests/remote_corpus was made).
TEST(RemoteProtocolTest, FuzzedMessagesNeverCrash) {
  std::mt19937_64 rng(20261130);
  std::vector<std::vector<std::byte>> seeds;
  for (const remote::Message& m : Samples()) seeds.push_back(remote::Encode(m));
  if (const char* dir = std::getenv("STRATA_REMOTE_CORPUS")) {
    for (CorpusEntry& e : ReadCorpus(dir)) seeds.push_back(std::move(e.bytes));
  }
  const char* save = std::getenv("STRATA_REMOTE_CORPUS_SAVE");
  std::set<std::string> outcomes;
  int accepted = 0;
  // STRATA_FUZZ_ITERATIONS runs it longer (minutes under ASan, by hand).
  const char* env = std::getenv("STRATA_FUZZ_ITERATIONS");
  const long iterations = env != nullptr ? std::atol(env) : 200000;
  for (long i = 0; i < iterations; ++i) {
    std::vector<std::byte> b = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !b.empty(); ++e) {
      switch (rng() % 4) {
        case 0: b[rng() % b.size()] ^= std::byte(1u << (rng() % 8)); break;
        case 1: b.resize(rng() % (b.size() + 1)); break;
        case 2: b.insert(b.begin() + static_cast<long>(rng() % (b.size() + 1)),
                         std::byte(rng())); break;
        case 3: b[rng() % b.size()] = std::byte(rng()); break;
      }
    }
    absl::StatusOr<remote::Message> m = remote::Decode(b);
    if (save != nullptr) {
      // One file per valid type and per refusal text with its numbers
      // taken out (one per check in Decode, not one per length).
      std::string key;
      if (m.ok()) {
        key = absl::StrCat("accepts type ", static_cast<int>(m->type));
      } else {
        for (char c : m.status().message()) {
          const bool digit = c >= '0' && c <= '9';
          if (!digit || key.empty() || key.back() != '#') key.push_back(digit ? '#' : c);
        }
      }
      if (outcomes.insert(key).second) {
        WriteCorpusEntry(absl::StrCat(save, "/fuzz-", outcomes.size(), ".hex"), b,
                         m.status());
      }
    }
    if (!m.ok()) continue;
    ++accepted;
    ASSERT_TRUE(remote::Decode(remote::Encode(*m)).ok()) << "iteration " << i;
  }
  // Some mutations keep a message valid (a flipped value bit): the check
  // above ran.
  EXPECT_GT(accepted, 0);
}

// ---------------------------------------------------------------------------
// A strata-blockd process.

class Blockd {
 public:
  explicit Blockd(uint64_t region_bytes, std::string secret = kSecret,
                  std::string listen = "127.0.0.1:0") {
    const char* path = std::getenv("STRATA_BLOCKD");
    if (path == nullptr) {
      error_ = "STRATA_BLOCKD is not set (meson test sets it)";
      return;
    }
    int out[2];
    if (pipe(out) != 0) {
      error_ = "pipe failed";
      return;
    }
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      close(out[0]);
      setenv("STRATA_SECRET", secret.c_str(), 1);
      const std::string region = "--region_bytes=" + std::to_string(region_bytes);
      const std::string where = "--listen=" + listen;
      execl(path, path, where.c_str(), region.c_str(), nullptr);
      _exit(127);
    }
    close(out[1]);
    out_ = out[0];
    // The first line says where it listens (bounded: 10 s).
    std::string line;
    while (ReadLine(&line, 10000)) {
      const std::string tag = "listening on ";
      if (auto at = line.find(tag); at != std::string::npos) {
        address_ = line.substr(at + tag.size(), line.find(' ', at + tag.size()) - at - tag.size());
        return;
      }
    }
    error_ = "strata-blockd did not say where it listens";
  }
  ~Blockd() { Stop(); }

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& address() const { return address_; }

  // SIGTERM (or `sig`), then the exit status (bounded: 10 s, then SIGKILL).
  int Stop(int sig = SIGTERM) {
    if (pid_ <= 0) return exit_;
    kill(pid_, sig);
    int status = 0;
    for (int i = 0; i < 1000; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return exit_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = 0;
    exit_ = -1;
    return exit_;
  }
  // Everything it printed after the first line (after Stop: all of it).
  std::string Output() {
    std::string line, all;
    while (ReadLine(&line, 100)) all += line + "\n";
    return all;
  }

 private:
  bool ReadLine(std::string* line, int timeout_ms) {
    line->clear();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        *line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return true;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0 || out_ < 0) return false;
      pollfd p{.fd = out_, .events = POLLIN};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) return false;
      char buf[512];
      const ssize_t n = read(out_, buf, sizeof buf);
      if (n <= 0) return false;
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  pid_t pid_ = -1;
  int out_ = -1;
  int exit_ = -1;
  std::string buffer_, address_, error_;
};

tiers::RemoteConfig Config(const Blockd& server, uint64_t capacity,
                           std::string secret = kSecret) {
  return {.server = server.address(), .secret = std::move(secret),
          .capacity_bytes = capacity, .timeout = absl::Seconds(5)};
}

// Runs one transfer and waits for it (bounded: 10 s).
absl::Status Move(tiers::Tier& tier, tiers::Transfer::Op op, const tiers::Frame& frame,
                  std::span<std::byte> host, uint64_t block, uint64_t* checksum) {
  struct Done {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  } done;
  tiers::Transfer t;
  t.op = op;
  t.key = {.tensor_id = 1, .block = block, .version = 1};
  t.frame = frame;
  t.host = host;
  t.checksum = *checksum;
  t.user = &done;
  t.on_done = [](tiers::Transfer* x) {
    auto* d = static_cast<Done*>(x->user);
    std::lock_guard lock(d->mu);
    d->done = true;
    d->cv.notify_all();
  };
  tiers::Transfer* batch[] = {&t};
  if (absl::Status s = tier.Submit(batch); !s.ok()) return s;
  std::unique_lock lock(done.mu);
  if (!done.cv.wait_for(lock, std::chrono::seconds(10), [&] { return done.done; })) {
    return absl::DeadlineExceededError("the transfer did not complete in 10 s");
  }
  *checksum = t.checksum;
  return t.status;
}

// Transfers submitted without waiting; Wait collects them (bounded).
struct Batch {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<tiers::Transfer> transfers;
  int left = 0;
  explicit Batch(size_t n) : transfers(n) {}
  static void Done(tiers::Transfer* t) {
    auto* b = static_cast<Batch*>(t->user);
    std::lock_guard lock(b->mu);
    if (--b->left == 0) b->cv.notify_all();
  }
  absl::Status Submit(tiers::Tier& tier) {
    std::vector<tiers::Transfer*> ptrs;
    for (auto& t : transfers) {
      t.user = this;
      t.on_done = &Batch::Done;
      ptrs.push_back(&t);
    }
    left = static_cast<int>(ptrs.size());
    return tier.Submit(ptrs);
  }
  bool Wait(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, limit, [&] { return left == 0; });
  }
};

#define REQUIRE_SERVER(s) \
  ASSERT_TRUE((s).ok()) << (s).error()

// What a tier logged (RemoteConfig::log), and waiting for a line.
class Logs {
 public:
  std::function<void(std::string_view)> Sink() {
    return [this](std::string_view line) {
      std::lock_guard lock(mu_);
      lines_.emplace_back(line);
      cv_.notify_all();
    };
  }
  // Lines that contain `text`.
  int Count(std::string_view text) {
    std::lock_guard lock(mu_);
    return CountLocked(text);
  }
  // Whether a line with `text` came within `limit`.
  bool Await(std::string_view text, std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return CountLocked(text) > 0; });
  }
  std::string All() {
    std::lock_guard lock(mu_);
    std::string all;
    for (const std::string& line : lines_) all += line + "\n";
    return all;
  }

 private:
  int CountLocked(std::string_view text) const {
    int n = 0;
    for (const std::string& line : lines_) n += line.find(text) != std::string::npos;
    return n;
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
};

TEST(RemoteTierTest, RandomBlocksRoundTrip) {
  Blockd server(64 * kMiB);
  REQUIRE_SERVER(server);
  ASSERT_OK_AND_ASSIGN(auto tier, tiers::MakeRemoteTier(Config(server, 16 * kMiB)));
  std::mt19937_64 rng(std::random_device{}());  // fresh data every run
  constexpr int kBlocks = 48;
  std::vector<tiers::Frame> frames;
  std::vector<uint64_t> seeds, sizes, sums(kBlocks, 0);
  for (int b = 0; b < kBlocks; ++b) {
    const uint64_t bytes = (b % 3 == 0 ? 256 : 4 + b) * kKiB;  // mixed sizes
    ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(bytes));
    frames.push_back(f);
    sizes.push_back(bytes);
    seeds.push_back(rng());
    std::vector<std::byte> data(bytes);
    FillPattern(data, seeds.back());
    ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, f, data, b, &sums[b]));
  }
  for (int b = kBlocks - 1; b >= 0; --b) {
    std::vector<std::byte> back(sizes[b]);
    ASSERT_OK(Move(*tier, tiers::Transfer::Op::kRead, frames[b], back, b, &sums[b]));
    EXPECT_EQ(FirstPatternMismatch(back, seeds[b]), -1) << "block " << b;
  }
  // A wrong checksum (the bytes of another block) is kDataLoss.
  std::vector<std::byte> back(sizes[1]);
  uint64_t wrong = sums[1] ^ 1;
  EXPECT_STATUS(Move(*tier, tiers::Transfer::Op::kRead, frames[1], back, 1, &wrong),
                StatusCode::kDataLoss);
  ASSERT_OK_AND_ASSIGN(tiers::RemoteServerStat stat, tiers::StatRemoteServer(*tier));
  EXPECT_EQ(stat.capacity, 64 * kMiB);
  EXPECT_EQ(stat.used, 16 * kMiB);
  EXPECT_EQ(stat.clients, 1u);
  for (const tiers::Frame& f : frames) tier->Free(f);
}

// A pin that waits for its own read marks it caller_drives and polls the
// queue itself (DriveCompletions); the tier's progress thread stands aside
// meanwhile. Such reads must still complete when nobody drives them, or
// when the driver leaves before they are done.
TEST(RemoteTierTest, TransfersACallerDrivesCompleteAlsoWithoutTheCaller) {
  Blockd server(16 * kMiB);
  REQUIRE_SERVER(server);
  ASSERT_OK_AND_ASSIGN(auto tier, tiers::MakeRemoteTier(Config(server, 4 * kMiB)));
  constexpr int kBlocks = 8;
  constexpr uint64_t kBytes = 64 * kKiB;
  std::vector<tiers::Frame> frames;
  std::vector<uint64_t> sums(kBlocks, 0);
  for (int b = 0; b < kBlocks; ++b) {
    ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kBytes));
    frames.push_back(f);
    std::vector<std::byte> data(kBytes);
    FillPattern(data, 100 + b);
    ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, f, data, b, &sums[b]));
  }
  auto reads = [&](Batch& batch, std::vector<std::vector<std::byte>>& back) {
    for (int b = 0; b < kBlocks; ++b) {
      tiers::Transfer& t = batch.transfers[b];
      t.op = tiers::Transfer::Op::kRead;
      t.key = {.tensor_id = 1, .block = static_cast<uint64_t>(b), .version = 1};
      t.frame = frames[b];
      t.host = back[b];
      t.checksum = sums[b];
      t.caller_drives = true;
    }
    return batch.Submit(*tier);
  };
  auto check = [&](Batch& batch, std::vector<std::vector<std::byte>>& back) {
    for (int b = 0; b < kBlocks; ++b) {
      EXPECT_OK(batch.transfers[b].status);
      EXPECT_EQ(FirstPatternMismatch(back[b], 100 + b), -1) << "block " << b;
    }
  };
  {
    SCOPED_TRACE("nobody drives");
    Batch batch(kBlocks);
    std::vector<std::vector<std::byte>> back(kBlocks, std::vector<std::byte>(kBytes));
    ASSERT_OK(reads(batch, back));
    ASSERT_TRUE(batch.Wait(std::chrono::seconds(10)))
        << "reads marked caller_drives never completed without a driver";
    check(batch, back);
  }
  {
    SCOPED_TRACE("the driver leaves after one poll");
    Batch batch(kBlocks);
    std::vector<std::vector<std::byte>> back(kBlocks, std::vector<std::byte>(kBytes));
    ASSERT_OK(reads(batch, back));
    EXPECT_TRUE(tier->DriveCompletions([] { return false; }, std::chrono::steady_clock::now()));
    ASSERT_TRUE(batch.Wait(std::chrono::seconds(10)))
        << "reads left by their driver never completed";
    check(batch, back);
  }
  {
    SCOPED_TRACE("the driver stays until they are done");
    Batch batch(kBlocks);
    std::vector<std::vector<std::byte>> back(kBlocks, std::vector<std::byte>(kBytes));
    ASSERT_OK(reads(batch, back));
    auto done = [&] {
      std::lock_guard lock(batch.mu);
      return batch.left == 0;
    };
    EXPECT_TRUE(tier->DriveCompletions(done, std::chrono::steady_clock::now() +
                                                 std::chrono::seconds(10)));
    EXPECT_TRUE(done()) << "DriveCompletions returned before its reads were done";
    ASSERT_TRUE(batch.Wait(std::chrono::seconds(10)));
    check(batch, back);
  }
  for (const tiers::Frame& f : frames) tier->Free(f);
}

TEST(RemoteTierTest, WrongSecretIsPermissionDenied) {
  Blockd server(16 * kMiB);
  REQUIRE_SERVER(server);
  auto tier = tiers::MakeRemoteTier(Config(server, 4 * kMiB, "not-the-secret"));
  EXPECT_STATUS(tier, StatusCode::kPermissionDenied);
  // The server goes on serving those who know it.
  EXPECT_OK(tiers::MakeRemoteTier(Config(server, 4 * kMiB)).status());
}

TEST(RemoteTierTest, BorrowingMoreThanTheServerHasIsResourceExhausted) {
  Blockd server(8 * kMiB);
  REQUIRE_SERVER(server);
  ASSERT_OK_AND_ASSIGN(auto first, tiers::MakeRemoteTier(Config(server, 6 * kMiB)));
  auto second = tiers::MakeRemoteTier(Config(server, 4 * kMiB));
  EXPECT_STATUS(second, StatusCode::kResourceExhausted);
  first.reset();  // its bye gives the 6 MiB back
  EXPECT_OK(tiers::MakeRemoteTier(Config(server, 8 * kMiB)).status());
}

TEST(RemoteTierTest, NoServerIsAnErrorWithinTheTimeout) {
  int port = 0;
  {
    Blockd gone(4 * kMiB);
    REQUIRE_SERVER(gone);
    port = std::stoi(gone.address().substr(gone.address().rfind(':') + 1));
  }  // stopped: nothing listens there now
  tiers::RemoteConfig c{.server = "127.0.0.1:" + std::to_string(port),
                        .secret = kSecret, .capacity_bytes = 4 * kMiB,
                        .timeout = absl::Seconds(2)};
  auto tier = tiers::MakeRemoteTier(c);
  EXPECT_FALSE(tier.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(tier.status()) || absl::IsUnavailable(tier.status()))
      << tier.status();
  EXPECT_STATUS(tiers::MakeRemoteTier({.server = "no-port", .secret = kSecret,
                                       .capacity_bytes = 4 * kMiB}),
                StatusCode::kInvalidArgument);
}

// A server killed (SIGKILL) while reads are in flight: every transfer
// completes within twice the timeout, with its true bytes (checksummed) or
// an error, never a silent success; afterwards reads of its copies are
// kDataLoss and allocations kResourceExhausted (demotion goes on below).
TEST(RemoteTierTest, KilledServerFailsEveryTransferInBoundedTime) {
  Blockd server(64 * kMiB);
  REQUIRE_SERVER(server);
  tiers::RemoteConfig c = Config(server, 32 * kMiB);
  c.timeout = absl::Seconds(2);
  ASSERT_OK_AND_ASSIGN(auto tier, tiers::MakeRemoteTier(c));
  constexpr int kBlocks = 24;
  std::vector<tiers::Frame> frames;
  std::vector<std::vector<std::byte>> data(kBlocks, std::vector<std::byte>(kMiB));
  std::vector<uint64_t> sums(kBlocks, 0);
  const uint64_t run = std::random_device{}();
  for (int b = 0; b < kBlocks; ++b) {
    ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kMiB));
    frames.push_back(f);
    FillPattern(data[b], Seed(run, b, 1));
    ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, f, data[b], b, &sums[b]));
  }
  Batch reads(kBlocks);
  std::vector<std::vector<std::byte>> back(kBlocks, std::vector<std::byte>(kMiB));
  for (int b = 0; b < kBlocks; ++b) {
    tiers::Transfer& t = reads.transfers[b];
    t.op = tiers::Transfer::Op::kRead;
    t.key = {.tensor_id = 1, .block = static_cast<uint64_t>(b), .version = 1};
    t.frame = frames[b];
    t.host = back[b];
    t.checksum = sums[b];
  }
  ASSERT_OK(reads.Submit(*tier));
  server.Stop(SIGKILL);
  ASSERT_TRUE(reads.Wait(std::chrono::milliseconds(2 * 2000 + 1000)))
      << "transfers in flight to a dead server did not complete within 2x the timeout";
  int failed = 0;
  for (int b = 0; b < kBlocks; ++b) {
    const absl::Status& s = reads.transfers[b].status;
    if (s.ok()) {
      EXPECT_EQ(FirstPatternMismatch(back[b], Seed(run, b, 1)), -1)
          << "block " << b << ": a read reported success with wrong bytes";
    } else {
      ++failed;
      EXPECT_TRUE(absl::IsDataLoss(s) || absl::IsUnavailable(s)) << s;
    }
  }
  RecordProperty("failed_in_flight", failed);  // 20 of 24 in a run here
  // Reads and writes after the death fail at once, with what it means.
  std::vector<std::byte> into(kMiB);
  uint64_t sum = sums[0];
  const absl::Status after = Move(*tier, tiers::Transfer::Op::kRead, frames[0], into, 0, &sum);
  if (failed == 0) {
    // Everything landed before the kill was noticed: the next transfer is
    // what finds the server gone (within the timeout, as an error).
    EXPECT_FALSE(after.ok()) << "a read from a dead server succeeded";
  } else {
    EXPECT_STATUS(after, StatusCode::kDataLoss);
    EXPECT_STATUS(tier->Allocate(kMiB), StatusCode::kResourceExhausted);
    // A fenced connection has nothing for a waiting thread to drive.
    EXPECT_FALSE(tier->DriveCompletions(
        [] { return false; }, std::chrono::steady_clock::now() + std::chrono::milliseconds(10)));
  }
  EXPECT_NE(FirstPatternMismatch(into, Seed(run, 0, 1)), -1)
      << "bytes arrived from a dead server";
}

// A tier of `server` with `faults`, logging into `logs`; control calls time
// out after 2 s.
absl::StatusOr<std::unique_ptr<tiers::Tier>> FaultyTier(const Blockd& server, Logs& logs,
                                                        tiers::RemoteFaults faults) {
  tiers::RemoteConfig c = Config(server, 4 * kMiB);
  c.timeout = absl::Seconds(2);
  c.log = logs.Sink();
  return tiers::MakeRemoteTier(c, std::move(faults));
}

// A receive buffer that cannot be posted again (fi_recv failing: injected,
// the fabric has no seam) would shrink the tier's receive pool until no
// reply arrives and transfers only time out. The tier fences instead, says
// so once, and later transfers fail at once naming the server and the error.
TEST(RemoteTierTest, AReceiveThatCannotBePostedAgainFencesTheTier) {
  Blockd server(16 * kMiB);
  REQUIRE_SERVER(server);
  Logs logs;
  std::atomic<bool> fail{false};
  ASSERT_OK_AND_ASSIGN(auto tier, FaultyTier(server, logs, {.post_receive = [&fail] {
    return fail.load() ? absl::InternalError("fi_recv: injected failure (EIO)")
                       : absl::OkStatus();
  }}));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(64 * kKiB));
  fail.store(true);
  // The next reply's buffer cannot go back: Stat's, or, when its re-post
  // comes only now, the allocation's (a Call returns before its buffer is
  // re-posted); then Stat meets the fence, closed or unanswered.
  const absl::Status stat = tiers::StatRemoteServer(*tier).status();
  EXPECT_TRUE(stat.ok() || absl::IsFailedPrecondition(stat) || absl::IsDeadlineExceeded(stat))
      << stat;
  ASSERT_TRUE(logs.Await("injected failure", std::chrono::seconds(10)))
      << "the failed post was not logged: " << logs.All();
  std::vector<std::byte> data(64 * kKiB);
  FillPattern(data, 11);
  uint64_t sum = 0;
  const auto start = std::chrono::steady_clock::now();
  const absl::Status write = Move(*tier, tiers::Transfer::Op::kWrite, f, data, 0, &sum);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1))
      << "a write to a fenced tier did not fail at once";
  EXPECT_STATUS(write, StatusCode::kUnavailable);
  EXPECT_NE(write.message().find(server.address()), std::string::npos) << write;
  EXPECT_NE(write.message().find("injected failure"), std::string::npos) << write;
  EXPECT_STATUS(tier->Allocate(64 * kKiB), StatusCode::kResourceExhausted);
  // One line for the fence (reconnect attempts, which meet the same
  // injected failure, log theirs apart).
  EXPECT_EQ(logs.Count("could not be posted again: fi_recv: injected failure"), 1)
      << logs.All();
  tier->Free(f);
}

// A full receive queue is the provider's to drain, not a lost server: the
// buffer goes back after the next poll, more times than the tier has
// buffers, and the tier keeps answering. A queue that stays full for the
// control timeout fences it.
TEST(RemoteTierTest, AFullReceiveQueueIsRetriedUntilTheTimeout) {
  Blockd server(16 * kMiB);
  REQUIRE_SERVER(server);
  Logs logs;
  std::atomic<int> full{0};  // posts still to refuse; -1: all of them
  ASSERT_OK_AND_ASSIGN(auto tier, FaultyTier(server, logs, {.post_receive = [&full] {
    int left = full.load();
    while (left != 0 && !full.compare_exchange_weak(left, left > 0 ? left - 1 : left)) {
    }
    return left != 0 ? absl::ResourceExhaustedError("receive queue full (injected)")
                     : absl::OkStatus();
  }}));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(64 * kKiB));
  full.store(16);
  for (int i = 0; i < 12; ++i) {
    ASSERT_OK(tiers::StatRemoteServer(*tier).status()) << "call " << i;
  }
  std::vector<std::byte> data(64 * kKiB), back(64 * kKiB);
  FillPattern(data, 12);
  uint64_t sum = 0;
  ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, f, data, 0, &sum));
  ASSERT_OK(Move(*tier, tiers::Transfer::Op::kRead, f, back, 0, &sum));
  EXPECT_EQ(FirstPatternMismatch(back, 12), -1);
  EXPECT_EQ(logs.Count("injected"), 0) << logs.All();
  full.store(-1);
  ASSERT_OK(tiers::StatRemoteServer(*tier).status());
  ASSERT_TRUE(logs.Await("receive queue full (injected)", std::chrono::seconds(10)))
      << "a receive queue full for the timeout did not fence the tier: " << logs.All();
  const absl::Status write = Move(*tier, tiers::Transfer::Op::kWrite, f, data, 0, &sum);
  EXPECT_STATUS(write, StatusCode::kUnavailable);
  EXPECT_NE(write.message().find(server.address()), std::string::npos) << write;
  EXPECT_EQ(logs.Count("injected"), 1) << logs.All();
  tier->Free(f);
}

// A server restarted at the same address is a new server: a tier of the
// old one never reads the new one's memory as its blocks (its old key is
// refused, or it fenced when the old server died), and a new tier gets a
// new generation.
TEST(RemoteTierTest, ARestartedServerIsNotTheOldOne) {
  auto first = std::make_unique<Blockd>(16 * kMiB);
  REQUIRE_SERVER(*first);
  const std::string address = first->address();
  tiers::RemoteConfig c = Config(*first, 4 * kMiB);
  c.timeout = absl::Seconds(2);
  ASSERT_OK_AND_ASSIGN(auto old_tier, tiers::MakeRemoteTier(c));
  ASSERT_OK_AND_ASSIGN(tiers::RemoteServerStat old_stat, tiers::StatRemoteServer(*old_tier));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, old_tier->Allocate(64 * kKiB));
  std::vector<std::byte> data(64 * kKiB);
  FillPattern(data, 5);
  uint64_t sum = 0;
  ASSERT_OK(Move(*old_tier, tiers::Transfer::Op::kWrite, f, data, 0, &sum));
  first->Stop(SIGKILL);
  first.reset();
  // The same address again (the port may take a moment to come free).
  std::unique_ptr<Blockd> second;
  for (int i = 0; i < 50; ++i) {
    second = std::make_unique<Blockd>(16 * kMiB, kSecret, address);
    if (second->ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE_SERVER(*second);
  ASSERT_EQ(second->address(), address);
  // A new client of the new server fills its memory with other bytes.
  ASSERT_OK_AND_ASSIGN(auto new_tier, tiers::MakeRemoteTier(Config(*second, 4 * kMiB)));
  ASSERT_OK_AND_ASSIGN(tiers::RemoteServerStat new_stat, tiers::StatRemoteServer(*new_tier));
  EXPECT_NE(new_stat.generation, old_stat.generation);
  ASSERT_OK_AND_ASSIGN(tiers::Frame g, new_tier->Allocate(64 * kKiB));
  std::vector<std::byte> other(64 * kKiB);
  FillPattern(other, 6);
  uint64_t other_sum = 0;
  ASSERT_OK(Move(*new_tier, tiers::Transfer::Op::kWrite, g, other, 0, &other_sum));
  // The old tier's read fails; it never returns bytes as its block's.
  std::vector<std::byte> back(64 * kKiB);
  const absl::Status read = Move(*old_tier, tiers::Transfer::Op::kRead, f, back, 0, &sum);
  EXPECT_FALSE(read.ok()) << "a tier of the old server read from the new one";
  EXPECT_TRUE(absl::IsDataLoss(read) || absl::IsUnavailable(read)) << read;
}

// A server started again at `address` (the port may take a moment to come
// free after the old one died).
std::unique_ptr<Blockd> RestartAt(const std::string& address, uint64_t region_bytes) {
  std::unique_ptr<Blockd> server;
  for (int i = 0; i < 50; ++i) {
    server = std::make_unique<Blockd>(region_bytes, kSecret, address);
    if (server->ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return server;
}

// A tier that lost its server reconnects to the server restarted at the
// same address, after its backoff, for new blocks: it recognises it as a
// new server (its generation), and the copies placed before the loss stay
// lost, never read from the new one.
TEST(RemoteTierTest, ReconnectsToARestartedServerForNewBlocksOnly) {
  auto first = std::make_unique<Blockd>(16 * kMiB);
  REQUIRE_SERVER(*first);
  const std::string address = first->address();
  Logs logs;
  tiers::RemoteConfig c = Config(*first, 4 * kMiB);
  c.timeout = absl::Seconds(1);
  c.reconnect_backoff = absl::Milliseconds(50);
  c.log = logs.Sink();
  ASSERT_OK_AND_ASSIGN(auto tier, tiers::MakeRemoteTier(c));
  ASSERT_OK_AND_ASSIGN(tiers::RemoteServerStat old_stat, tiers::StatRemoteServer(*tier));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(64 * kKiB));
  std::vector<std::byte> data(64 * kKiB);
  const uint64_t run = std::random_device{}();
  FillPattern(data, Seed(run, 0, 1));
  uint64_t sum = 0;
  ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, f, data, 0, &sum));
  first->Stop(SIGKILL);
  first.reset();
  // The next transfer finds the server lost.
  std::vector<std::byte> back(64 * kKiB);
  uint64_t read_sum = sum;
  const absl::Status lost = Move(*tier, tiers::Transfer::Op::kRead, f, back, 0, &read_sum);
  EXPECT_TRUE(absl::IsDataLoss(lost) || absl::IsUnavailable(lost)) << lost;
  std::unique_ptr<Blockd> second = RestartAt(address, 16 * kMiB);
  REQUIRE_SERVER(*second);
  // Until the tier has reconnected, allocations pass (kResourceExhausted:
  // demotion goes on below); then they succeed again (bounded: 20 s).
  absl::StatusOr<tiers::Frame> g;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    g = tier->Allocate(64 * kKiB);
    if (g.ok() || std::chrono::steady_clock::now() > deadline) break;
    ASSERT_EQ(g.status().code(), StatusCode::kResourceExhausted) << g.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_OK(g.status()) << "no reconnect to the restarted server within 20 s\n" << logs.All();
  ASSERT_OK_AND_ASSIGN(tiers::RemoteServerStat new_stat, tiers::StatRemoteServer(*tier));
  EXPECT_NE(new_stat.generation, old_stat.generation);
  EXPECT_EQ(logs.Count("is back as a new server"), 1) << logs.All();
  // New blocks round-trip through the new server...
  std::vector<std::byte> other(64 * kKiB);
  FillPattern(other, Seed(run, 1, 1));
  uint64_t other_sum = 0;
  ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, *g, other, 1, &other_sum));
  std::vector<std::byte> other_back(64 * kKiB);
  ASSERT_OK(Move(*tier, tiers::Transfer::Op::kRead, *g, other_back, 1, &other_sum));
  EXPECT_EQ(FirstPatternMismatch(other_back, Seed(run, 1, 1)), -1);
  // ...and the old copy stays lost: never read from the new server.
  std::fill(back.begin(), back.end(), std::byte{0});
  read_sum = sum;
  EXPECT_STATUS(Move(*tier, tiers::Transfer::Op::kRead, f, back, 0, &read_sum),
                StatusCode::kDataLoss);
  EXPECT_EQ(test::FirstNonZero(back), -1) << "bytes arrived for a copy of the lost server";
  // Writes to an old frame fail too; freeing it is harmless.
  EXPECT_STATUS(Move(*tier, tiers::Transfer::Op::kWrite, f, data, 0, &sum),
                StatusCode::kUnavailable);
  tier->Free(f);
  tier->Free(*g);
}

// Three servers, two copies of each block. After one server is lost, the
// blocks that had a copy there are copied again to another server in the
// background, so that losing a second server later still loses nothing.
TEST(RemoteTierTest, ReplicationCopiesAgainAfterALossAndSurvivesASecond) {
  Blockd a(32 * kMiB), b(32 * kMiB), c(32 * kMiB);
  REQUIRE_SERVER(a);
  REQUIRE_SERVER(b);
  REQUIRE_SERVER(c);
  Logs logs;
  tiers::RemoteConfig base = Config(a, 8 * kMiB);
  base.timeout = absl::Seconds(1);
  base.reconnect_backoff = absl::Milliseconds(50);
  base.log = logs.Sink();
  ASSERT_OK_AND_ASSIGN(auto tier, tiers::MakeReplicatedRemoteTier(
                                      base, {a.address(), b.address(), c.address()}, 2));
  constexpr int kBlocks = 24;
  const uint64_t run = std::random_device{}();
  std::vector<tiers::Frame> frames;
  std::vector<uint64_t> sums(kBlocks, 0);
  for (int i = 0; i < kBlocks; ++i) {
    ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(64 * kKiB));
    frames.push_back(f);
    std::vector<std::byte> data(64 * kKiB);
    FillPattern(data, Seed(run, i, 1));
    ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, f, data, i, &sums[i]));
  }
  auto read_all = [&](std::string_view when) {
    for (int i = 0; i < kBlocks; ++i) {
      std::vector<std::byte> back(64 * kKiB);
      uint64_t sum = sums[i];
      const absl::Status s = Move(*tier, tiers::Transfer::Op::kRead, frames[i], back, i, &sum);
      ASSERT_TRUE(s.ok()) << when << ": block " << i << ": " << s << "\n" << logs.All();
      EXPECT_EQ(FirstPatternMismatch(back, Seed(run, i, 1)), -1) << when << ": block " << i;
    }
  };
  ASSERT_OK_AND_ASSIGN(tiers::ReplicationHealth h, tiers::GetReplicationHealth(*tier));
  ASSERT_EQ(h.blocks, static_cast<uint64_t>(kBlocks));
  ASSERT_EQ(h.under_replicated, 0u);
  a.Stop(SIGKILL);
  // Reads go on from the other copy; the ones that try `a` find it lost.
  ASSERT_NO_FATAL_FAILURE(read_all("after the first loss"));
  // The repair thread copies the blocks that lost a copy (bounded: 20 s).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    ASSERT_OK_AND_ASSIGN(h, tiers::GetReplicationHealth(*tier));
    if (h.under_replicated == 0 || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(h.under_replicated, 0u) << "blocks still short of a copy after 20 s\n"
                                    << logs.All();
  EXPECT_EQ(h.lost, 0u);
  EXPECT_GT(h.repaired, 0u) << "no block had a copy on the lost server";
  b.Stop(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(read_all("after the second loss"));
  for (const tiers::Frame& f : frames) tier->Free(f);
}

// A raw fabric client: garbage, requests without a session, a reply sent
// as a request; then RMA past its own allocation. The server survives all
// of it, and RMA outside an allocation fails.
// The progress thread's wait: Poll sleeps in the kernel (fi_cq_sread) where
// the provider has a wait object, a message still arrives through that
// wait, and Wake ends it early (a driving thread handing work over).
TEST(RemoteFabricTest, AWaitInTheKernelDeliversAndWakeEndsIt) {
  ASSERT_OK_AND_ASSIGN(auto listener,
                       remote::Fabric::Open({.node = "127.0.0.1", .service = "0",
                                             .listen = true, .wait_in_kernel = true}));
  if (!listener->waits_in_kernel()) GTEST_SKIP() << "provider without a wait object";
  const std::string addr = listener->DescribeAddress();
  const std::string host = addr.substr(0, addr.rfind(':'));
  const std::string port = addr.substr(addr.rfind(':') + 1);
  ASSERT_OK_AND_ASSIGN(auto sender, remote::Fabric::Open({.node = host, .service = port}));
  ASSERT_OK_AND_ASSIGN(fi_addr_t peer, sender->Resolve(host, port));

  std::vector<std::byte> in(64), out(64, std::byte{42});
  remote::Fabric::Op recv, send;
  ASSERT_OK(listener->PostRecv(in.data(), in.size(), &recv));
  std::atomic<int> received{-1};
  std::thread waiter([&] {
    remote::Fabric::Op* done[1];
    received = listener->Poll(done, 1, 60'000);
  });
  absl::Status posted;
  remote::Fabric::Op* done[1];
  for (int i = 0; i < 2000; ++i) {  // the first send waits for the connection
    posted = sender->Send(out.data(), out.size(), nullptr, peer, &send);
    if (!absl::IsResourceExhausted(posted)) break;
    (void)sender->Poll(done, 1, 5);
  }
  ASSERT_OK(posted);
  int sent = 0;
  for (int i = 0; i < 2000 && sent == 0; ++i) sent = sender->Poll(done, 1, 5);
  waiter.join();
  ASSERT_EQ(received.load(), 1) << "the message did not arrive through the wait";
  EXPECT_EQ(recv.length, out.size());
  EXPECT_EQ(in, out);

  // Nothing more comes: Wake, not the 60 s, ends the next wait.
  std::atomic<bool> ended{false};
  const auto start = std::chrono::steady_clock::now();
  std::thread sleeper([&] {
    remote::Fabric::Op* none[1];
    (void)listener->Poll(none, 1, 60'000);
    ended = true;
  });
  while (!ended && std::chrono::steady_clock::now() - start < std::chrono::seconds(30)) {
    listener->Wake();  // again and again: the sleeper may not be waiting yet
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(ended.load()) << "Wake did not end a wait in the kernel";
  sleeper.join();
}

TEST(RemoteTierTest, ServerSurvivesGarbageAndConfinesRma) {
  Blockd server(16 * kMiB);
  REQUIRE_SERVER(server);
  const std::string& addr = server.address();
  const std::string host = addr.substr(0, addr.rfind(':'));
  const std::string port = addr.substr(addr.rfind(':') + 1);
  ASSERT_OK_AND_ASSIGN(auto fabric, remote::Fabric::Open({.node = host, .service = port}));
  ASSERT_OK_AND_ASSIGN(fi_addr_t peer, fabric->Resolve(host, port));
  struct Op : remote::Fabric::Op {
    std::vector<std::byte> bytes;
  };
  // Posts with `post` until the queue takes it (the first post waits for
  // the connection), then waits for its completion; bounded: 10 s each.
  auto run = [&](const std::function<absl::Status()>& post) {
    remote::Fabric::Op* done[1];
    absl::Status s;
    for (int i = 0; i < 2000; ++i) {
      s = post();
      if (!absl::IsResourceExhausted(s)) break;
      (void)fabric->Poll(done, 1, 5);
    }
    ASSERT_OK(s);
    int n = 0;
    for (int i = 0; i < 2000 && n == 0; ++i) n = fabric->Poll(done, 1, 5);
    ASSERT_EQ(n, 1) << "an operation did not complete";
  };
  auto send_and_wait = [&](std::vector<std::byte> bytes) {
    Op op;
    op.bytes = std::move(bytes);
    run([&] { return fabric->Send(op.bytes.data(), op.bytes.size(), nullptr, peer, &op); });
  };
  std::mt19937_64 rng(7);
  for (int i = 0; i < 50; ++i) {
    std::vector<std::byte> junk(1 + rng() % 200);
    for (auto& b : junk) b = std::byte(rng());
    send_and_wait(junk);
  }
  remote::Message no_session{.type = remote::Type::kAllocate, .request = 1, .session = 12345};
  no_session.values[0] = 4096;
  send_and_wait(remote::Encode(no_session));
  send_and_wait(remote::Encode(remote::Reply(no_session, absl::OkStatus())));
  // Still serving: a real client gets its bytes.
  ASSERT_OK_AND_ASSIGN(auto tier, tiers::MakeRemoteTier(Config(server, 4 * kMiB)));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(64 * kKiB));
  std::vector<std::byte> data(64 * kKiB);
  FillPattern(data, 99);
  uint64_t sum = 0;
  ASSERT_OK(Move(*tier, tiers::Transfer::Op::kWrite, f, data, 0, &sum));
  ASSERT_OK_AND_ASSIGN(tiers::RemoteServerStat stat, tiers::StatRemoteServer(*tier));
  EXPECT_EQ(stat.clients, 1u);
  // RMA with a key no allocation has, from the raw client, fails.
  Op rma;
  std::vector<std::byte> into(4096);
  run([&] { return fabric->Read(into.data(), into.size(), nullptr, peer, 0, 0xdeadbeef, &rma); });
  EXPECT_FALSE(rma.status.ok()) << "a read with a forged key succeeded";
  EXPECT_NE(FirstPatternMismatch(into, 99), -1);
  tier.reset();
  EXPECT_EQ(server.Stop(), 0);
  const std::string log = server.Output();
  EXPECT_NE(log.find("connected"), std::string::npos) << log;
  EXPECT_NE(log.find("disconnected"), std::string::npos) << log;
  EXPECT_NE(log.find("malformed"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped"), std::string::npos) << log;
}

// ---------------------------------------------------------------------------
// The engine over host -> remote -> NVMe.

// Host (`host_bytes`, blocks of `block`) over the remote tier (`servers`,
// each lending `remote_bytes`) over NVMe in `dir`.
EngineOptions RemoteEngineOptions(const TempDir& dir, uint64_t host_bytes, uint64_t block,
                                  std::vector<std::string> servers, uint64_t remote_bytes) {
  EngineOptions o = test::SmallOptions(dir.Sub("nvme"), host_bytes, block);
  o.tiers = {Tier::kHost, Tier::kRemote, Tier::kNvme};
  o.remote.servers = std::move(servers);
  o.remote.secret = kSecret;
  o.remote.capacity_bytes = remote_bytes;
  return o;
}

// Tensor "t" of `blocks` blocks of `block` bytes.
absl::StatusOr<Tensor> MakeBlocks(Engine& e, uint64_t blocks, uint64_t block) {
  return e.CreateTensor("t", {.dtype = DType::kU8,
                              .shape = {static_cast<int64_t>(blocks * block)},
                              .block_bytes = block});
}

// Writes version `version` of every block through host pins.
void WriteBlocks(Engine& e, const Tensor& t, uint64_t blocks, uint64_t run,
                 uint64_t version) {
  for (uint64_t b = 0; b < blocks; ++b) {
    auto pin = e.Pin(t, b, Tier::kHost, Access::kWrite);
    ASSERT_TRUE(pin.ok()) << "block " << b << ": " << pin.status();
    FillPattern(pin->bytes(), Seed(run, b, version));
  }
}

// Every block reads back as version `version` through host pins.
void ExpectBlocks(Engine& e, const Tensor& t, uint64_t blocks, uint64_t run,
                  uint64_t version, std::string_view when) {
  for (uint64_t b = 0; b < blocks; ++b) {
    auto pin = e.Pin(t, b, Tier::kHost, Access::kRead);
    ASSERT_TRUE(pin.ok()) << when << ": block " << b << ": " << pin.status();
    EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(run, b, version)), -1)
        << when << ": block " << b;
  }
}

// An engine whose host tier holds a quarter of the blocks: victims go to
// the remote tier, which holds half, and on to NVMe; every block reads back.
TEST(RemoteEngineTest, VictimsGoToRemoteAndComeBack) {
  Blockd server(64 * kMiB);
  REQUIRE_SERVER(server);
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  constexpr uint64_t kBlock = 256 * kKiB, kBlocks = 64;
  EngineOptions o = RemoteEngineOptions(dir, kBlocks / 4 * kBlock, kBlock,
                                        {server.address()}, kBlocks / 2 * kBlock);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e, Engine::Open(o));
  ASSERT_OK_AND_ASSIGN(Tensor t, MakeBlocks(*e, kBlocks, kBlock));
  const uint64_t run = std::random_device{}();
  for (uint64_t pass = 1; pass <= 2; ++pass) {
    ASSERT_NO_FATAL_FAILURE(WriteBlocks(*e, t, kBlocks, run, pass));
  }
  ASSERT_NO_FATAL_FAILURE(ExpectBlocks(*e, t, kBlocks, run, 2, "after two passes"));
  ASSERT_OK(e->FlushAll());
  const EngineStats stats = e->GetStats();
  EXPECT_GT(stats.tier(Tier::kRemote).bytes_in, 0u) << "nothing was demoted to remote";
  EXPECT_GT(stats.tier(Tier::kHost).bytes_in, 0u);
  EXPECT_OK(e->Close());
  // A wrong secret fails Open with the server's word for it; no server, or
  // several (not built yet), are kInvalidArgument.
  o.remote.secret = "wrong";
  EXPECT_STATUS(Engine::Open(o), StatusCode::kPermissionDenied);
  o.remote.servers = {};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.remote.secret = kSecret;
  o.remote.servers = {server.address()};
  o.remote.replication = 2;  // more copies than servers
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
}

// The static bootstrap: a file of host:port lines (comments and blank lines
// skipped), with errors that name the line.
TEST(RemoteBootstrapTest, StaticListFromFile) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string good = dir.Sub("servers");
  std::ofstream(good) << "# the lenders\n10.0.0.7:7400\n\n  10.0.0.8:7401  \n";
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<const Bootstrap> b, StaticBootstrapFromFile(good));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> servers, b->Servers());
  EXPECT_EQ(servers, (std::vector<std::string>{"10.0.0.7:7400", "10.0.0.8:7401"}));
  const std::string bad = dir.Sub("bad");
  std::ofstream(bad) << "10.0.0.7:7400\n# fine\n10.0.0.8\n";
  absl::StatusOr<std::shared_ptr<const Bootstrap>> r = StaticBootstrapFromFile(bad);
  EXPECT_STATUS(r, StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("line 3"), std::string::npos) << r.status();
  const std::string empty = dir.Sub("empty");
  std::ofstream(empty) << "# nobody\n";
  EXPECT_STATUS(StaticBootstrapFromFile(empty), StatusCode::kInvalidArgument);
  EXPECT_STATUS(StaticBootstrapFromFile(dir.Sub("missing")), StatusCode::kNotFound);
}

// An engine whose servers come from a bootstrap (here a file) instead of
// remote.servers; naming them both ways is an error.
TEST(RemoteEngineTest, BootstrapNamesTheServers) {
  Blockd server(16 * kMiB);
  REQUIRE_SERVER(server);
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string list = dir.Sub("servers");
  std::ofstream(list) << server.address() << "\n";
  constexpr uint64_t kBlock = 64 * kKiB, kBlocks = 32;
  EngineOptions o = RemoteEngineOptions(dir, 8 * kBlock, kBlock, {}, 4 * kMiB);
  o.tiers = {Tier::kHost, Tier::kRemote};
  ASSERT_OK_AND_ASSIGN(o.remote.bootstrap, StaticBootstrapFromFile(list));
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e, Engine::Open(o));
    ASSERT_OK_AND_ASSIGN(Tensor t, MakeBlocks(*e, kBlocks, kBlock));
    const uint64_t run = std::random_device{}();
    ASSERT_NO_FATAL_FAILURE(WriteBlocks(*e, t, kBlocks, run, 1));
    ASSERT_NO_FATAL_FAILURE(ExpectBlocks(*e, t, kBlocks, run, 1, "through the bootstrap"));
    EXPECT_GT(e->GetStats().tier(Tier::kRemote).bytes_in, 0u);
    EXPECT_OK(e->Close());
  }
  o.remote.servers = {server.address()};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
}

// Without replication, a block whose only copy was on a server that died is
// reported lost, never read as zeros; blocks still in host memory are
// fine, and new victims go to the tier below (here: none, so the host
// keeps them and a full host says so).
TEST(RemoteEngineTest, BlocksOnAKilledServerAreDataLossNotZeros) {
  Blockd server(64 * kMiB);
  REQUIRE_SERVER(server);
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  constexpr uint64_t kBlock = 64 * kKiB, kBlocks = 64;
  EngineOptions o = RemoteEngineOptions(dir, 16 * kBlock, kBlock, {server.address()},
                                        4 * kMiB);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e, Engine::Open(o));
  ASSERT_OK_AND_ASSIGN(Tensor t, MakeBlocks(*e, kBlocks, kBlock));
  const uint64_t run = std::random_device{}();
  ASSERT_NO_FATAL_FAILURE(WriteBlocks(*e, t, kBlocks, run, 1));
  ASSERT_GT(e->GetStats().tier(Tier::kRemote).bytes_in, 0u);
  server.Stop(SIGKILL);
  int lost = 0;
  for (uint64_t b = 0; b < kBlocks; ++b) {
    auto pin = e->Pin(t, b, Tier::kHost, Access::kRead);
    if (pin.ok()) {
      EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(run, b, 1)), -1)
          << "block " << b << " read back wrong bytes after the server died";
    } else {
      ++lost;
      EXPECT_TRUE(absl::IsDataLoss(pin.status()) || absl::IsUnavailable(pin.status()))
          << "block " << b << ": " << pin.status();
    }
  }
  EXPECT_GT(lost, 0) << "no block was only on the killed server";
  EXPECT_OK(e->Close());
}

// Three servers, two copies of each block: one server SIGKILLed while the
// engine runs loses nothing. Every block reads back, victims keep going
// to the two servers left, and Flush still reaches NVMe.
TEST(RemoteEngineTest, ReplicationTwoSurvivesAKilledServer) {
  Blockd a(32 * kMiB), b(32 * kMiB), c(32 * kMiB);
  REQUIRE_SERVER(a);
  REQUIRE_SERVER(b);
  REQUIRE_SERVER(c);
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  constexpr uint64_t kBlock = 64 * kKiB, kBlocks = 96;
  // Each server lends 8 MiB: 3 x 8 / 2 = 12 MiB of blocks.
  EngineOptions o = RemoteEngineOptions(dir, 16 * kBlock, kBlock,
                                        {a.address(), b.address(), c.address()}, 8 * kMiB);
  o.remote.replication = 2;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e, Engine::Open(o));
  ASSERT_OK_AND_ASSIGN(Tensor t, MakeBlocks(*e, kBlocks, kBlock));
  const uint64_t run = std::random_device{}();
  ASSERT_NO_FATAL_FAILURE(WriteBlocks(*e, t, kBlocks, run, 1));
  ASSERT_GT(e->GetStats().tier(Tier::kRemote).bytes_in, 0u);
  b.Stop(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(ExpectBlocks(*e, t, kBlocks, run, 1, "after one server died"));
  ASSERT_NO_FATAL_FAILURE(WriteBlocks(*e, t, kBlocks, run, 2));
  ASSERT_NO_FATAL_FAILURE(ExpectBlocks(*e, t, kBlocks, run, 2, "rewritten with one server gone"));
  EXPECT_OK(e->FlushAll());
  EXPECT_OK(e->Close());
}

}  // namespace
}  // namespace strata
