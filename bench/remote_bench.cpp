// The remote tier beside raw libfabric RMA, over the same provider and the
// same server (a BlockServer on a thread of this process, 127.0.0.1):
//
//   BM_RemotePut1M/{strata,baseline}  1 MiB writes, 8 in flight per batch
//   BM_RemoteGet1M/{strata,baseline}  1 MiB reads, 8 in flight per batch
//   BM_RemotePin4K/{strata,baseline}  an engine's read pin of a 4 KiB block
//                                     found only in the remote tier, vs one
//                                     raw 4 KiB fi_read round trip
//
// strata = the tier's Submit (checksums included) or the engine's pin;
// baseline = fi_write / fi_read posted by hand, same sizes and depth.
// Targets (issue "Remote tier"): Put and Get >= 0.8x baseline bytes/s; the
// pin <= 1.5x the raw round trip.
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "api/strata/strata.h"
#include "benchmark/benchmark.h"
#include "tiers/remote/block_server.h"
#include "tiers/remote/fabric.h"
#include "tiers/remote/protocol.h"
#include "tiers/remote/remote_tier.h"

namespace strata {
namespace {

namespace remote = tiers::remote;

constexpr char kSecret[] = "remote-bench";
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBig = kMiB;       // Put/Get block
constexpr int kDepth = 8;             // transfers in flight per batch
constexpr uint64_t kWindow = 64 * kMiB;

[[noreturn]] void Die(std::string_view what, const absl::Status& s) {
  std::fprintf(stderr, "remote_bench: %.*s: %s\n", static_cast<int>(what.size()),
               what.data(), s.ToString().c_str());
  std::exit(1);
}

// One server for the whole run.
struct Server {
  std::unique_ptr<remote::BlockServer> server;
  std::atomic<bool> stop{false};
  std::thread thread;
  static Server& Get() {
    static Server* s = [] {
      auto* s = new Server;
      auto made = remote::BlockServer::Create(
          {.region_bytes = 512 * kMiB, .secret = kSecret});
      if (!made.ok()) Die("starting the block server", made.status());
      s->server = std::move(made).value();
      s->thread = std::thread([s] { s->server->Serve(s->stop); });
      return s;
    }();
    return *s;
  }
};

// The baseline: a client that says hello and allocates by hand, then posts
// RMA itself.
class RawClient {
 public:
  explicit RawClient(uint64_t bytes) {
    const std::string addr = Server::Get().server->address();
    host_ = addr.substr(0, addr.rfind(':'));
    port_ = addr.substr(addr.rfind(':') + 1);
    auto f = remote::Fabric::Open({.node = host_, .service = port_});
    if (!f.ok()) Die("raw client", f.status());
    fabric_ = std::move(f).value();
    auto peer = fabric_->Resolve(host_, port_);
    if (!peer.ok()) Die("raw client resolve", peer.status());
    peer_ = *peer;
    remote::Message hello{.type = remote::Type::kHello, .request = 1,
                          .secret = kSecret, .address = fabric_->address()};
    session_ = Call(hello).values[0];
    remote::Message alloc{.type = remote::Type::kAllocate, .request = 2, .session = session_};
    alloc.values[0] = bytes;
    const remote::Message lent = Call(alloc);
    key_ = lent.values[1];
    base_ = lent.values[3];
  }

  // Gives the allocation back (the server's region serves every
  // repetition).
  ~RawClient() {
    remote::Message bye{.type = remote::Type::kBye, .request = 3, .session = session_};
    (void)Call(bye);
  }

  // `count` transfers of `bytes` from/to `buf`, all in flight, then waits.
  void Batch(bool write, std::byte* buf, uint64_t bytes, int count, uint64_t at) {
    std::vector<remote::Fabric::Op> ops(count);
    int posted = 0, completed = 0;
    remote::Fabric::Op* done[16];
    while (completed < count) {
      if (posted < count) {
        const uint64_t where = base_ + at + static_cast<uint64_t>(posted) * bytes;
        std::byte* p = buf + static_cast<uint64_t>(posted) * bytes;
        absl::Status s = write
            ? fabric_->Write(p, bytes, nullptr, peer_, where, key_, &ops[posted])
            : fabric_->Read(p, bytes, nullptr, peer_, where, key_, &ops[posted]);
        if (s.ok()) {
          ++posted;
          continue;
        }
        if (!absl::IsResourceExhausted(s)) Die("raw RMA", s);
      }
      const int n = fabric_->Poll(done, 16, posted < count ? 0 : 1000);
      for (int i = 0; i < n; ++i) {
        if (!done[i]->status.ok()) Die("raw RMA completion", done[i]->status);
      }
      completed += n;
    }
  }

 private:
  remote::Message Call(const remote::Message& m) {
    std::vector<std::byte> in(remote::kMaxMessage);
    remote::Fabric::Op recv, send;
    if (auto s = fabric_->PostRecv(in.data(), in.size(), &recv); !s.ok()) Die("recv", s);
    const std::vector<std::byte> out = remote::Encode(m);
    absl::Status s;
    remote::Fabric::Op* done[2];
    bool got_reply = false, sent = false;
    while (absl::IsResourceExhausted(s = fabric_->Send(out.data(), out.size(), nullptr, peer_, &send))) {
      // Only the receive can complete meanwhile.
      if (fabric_->Poll(done, 1, 1) == 1 && done[0] == &recv) got_reply = true;
    }
    if (!s.ok()) Die("send", s);
    while (!got_reply || !sent) {
      const int n = fabric_->Poll(done, 2, 1000);
      for (int i = 0; i < n; ++i) {
        if (done[i] == &recv) got_reply = true;
        if (done[i] == &send) sent = true;
      }
    }
    auto reply = remote::Decode(std::span<const std::byte>(in.data(), recv.length));
    if (!reply.ok()) Die("reply", reply.status());
    if (auto st = remote::StatusOf(*reply); !st.ok()) Die("call", st);
    return *reply;
  }

  std::unique_ptr<remote::Fabric> fabric_;
  std::string host_, port_;
  fi_addr_t peer_ = 0;
  uint64_t session_ = 0, key_ = 0, base_ = 0;
};

// --- the tier side -----------------------------------------------------------

struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  int left = 0;
  absl::Status first;
};

void TierBatch(tiers::Tier& tier, bool write, std::byte* buf,
               std::vector<tiers::Frame>& frames, std::vector<uint64_t>& sums) {
  Waiter w;
  w.left = static_cast<int>(frames.size());
  std::vector<tiers::Transfer> ts(frames.size());
  std::vector<tiers::Transfer*> batch;
  for (size_t i = 0; i < frames.size(); ++i) {
    tiers::Transfer& t = ts[i];
    t.op = write ? tiers::Transfer::Op::kWrite : tiers::Transfer::Op::kRead;
    t.key = {.tensor_id = 1, .block = i, .version = 1};
    t.frame = frames[i];
    t.host = {buf + i * kBig, kBig};
    t.checksum = sums[i];
    t.user = &w;
    t.on_done = [](tiers::Transfer* x) {
      auto* w = static_cast<Waiter*>(x->user);
      std::lock_guard lock(w->mu);
      if (!x->status.ok() && w->first.ok()) w->first = x->status;
      if (--w->left == 0) w->cv.notify_all();
    };
    batch.push_back(&t);
  }
  if (auto s = tier.Submit(batch); !s.ok()) Die("Submit", s);
  std::unique_lock lock(w.mu);
  w.cv.wait(lock, [&] { return w.left == 0; });
  if (!w.first.ok()) Die("tier transfer", w.first);
  for (size_t i = 0; i < frames.size(); ++i) sums[i] = ts[i].checksum;
}

struct TierFixture {
  std::unique_ptr<tiers::Tier> tier;
  std::vector<tiers::Frame> frames;
  std::vector<uint64_t> sums;
  std::vector<std::byte> buf;
  TierFixture() {
    auto t = tiers::MakeRemoteTier({.server = Server::Get().server->address(),
                                    .secret = kSecret, .capacity_bytes = kWindow});
    if (!t.ok()) Die("MakeRemoteTier", t.status());
    tier = std::move(t).value();
    for (int i = 0; i < kDepth; ++i) {
      auto f = tier->Allocate(kBig);
      if (!f.ok()) Die("Allocate", f.status());
      frames.push_back(*f);
    }
    sums.assign(kDepth, 0);
    buf.resize(kDepth * kBig);
    std::mt19937_64 rng(1);
    for (auto& b : buf) b = std::byte(rng());
    TierBatch(*tier, true, buf.data(), frames, sums);  // reads need checksums
  }
};

void BM_PutStrata(benchmark::State& state) {
  TierFixture f;
  for (auto _ : state) TierBatch(*f.tier, true, f.buf.data(), f.frames, f.sums);
  state.SetBytesProcessed(state.iterations() * kDepth * kBig);
}
void BM_GetStrata(benchmark::State& state) {
  TierFixture f;
  for (auto _ : state) TierBatch(*f.tier, false, f.buf.data(), f.frames, f.sums);
  state.SetBytesProcessed(state.iterations() * kDepth * kBig);
}
void BM_PutRaw(benchmark::State& state) {
  RawClient c(kWindow);
  std::vector<std::byte> buf(kDepth * kBig, std::byte{7});
  for (auto _ : state) c.Batch(true, buf.data(), kBig, kDepth, 0);
  state.SetBytesProcessed(state.iterations() * kDepth * kBig);
}
void BM_GetRaw(benchmark::State& state) {
  RawClient c(kWindow);
  std::vector<std::byte> buf(kDepth * kBig);
  for (auto _ : state) c.Batch(false, buf.data(), kBig, kDepth, 0);
  state.SetBytesProcessed(state.iterations() * kDepth * kBig);
}

// --- a 4 KiB pin that loads from the remote tier -----------------------------

constexpr uint64_t kSmall = 4096;
constexpr uint64_t kSmallBlocks = 4096;  // 16 MiB; the host holds 256 KiB

void BM_PinStrata(benchmark::State& state) {
  EngineOptions o;
  o.tiers = {Tier::kHost, Tier::kRemote};
  o.host.capacity_bytes = 64 * kSmall;
  o.host.huge_pages = false;
  o.default_block_bytes = kSmall;
  o.readahead_blocks = 0;
  o.policy = "lru";
  o.remote = {.servers = {Server::Get().server->address()}, .secret = kSecret,
              .capacity_bytes = 2 * kSmallBlocks * kSmall};
  auto engine = Engine::Open(o);
  if (!engine.ok()) Die("Engine::Open", engine.status());
  auto t = (*engine)->CreateTensor("t", {.dtype = DType::kU8,
      .shape = {static_cast<int64_t>(kSmallBlocks * kSmall)}, .block_bytes = kSmall});
  if (!t.ok()) Die("CreateTensor", t.status());
  for (uint64_t b = 0; b < kSmallBlocks; ++b) {
    auto pin = (*engine)->Pin(*t, b, Tier::kHost, Access::kOverwrite);
    if (!pin.ok()) Die("write pin", pin.status());
    std::memset(pin->bytes().data(), static_cast<int>(b), kSmall);
  }
  if (auto s = (*engine)->FlushAll(); !s.ok()) Die("FlushAll", s);
  std::mt19937_64 rng(2);
  const auto before = (*engine)->GetStats().tier(Tier::kHost);
  for (auto _ : state) {
    auto pin = (*engine)->Pin(*t, rng() % kSmallBlocks, Tier::kHost, Access::kRead);
    if (!pin.ok()) Die("read pin", pin.status());
    benchmark::DoNotOptimize(pin->bytes()[0]);
  }
  const auto after = (*engine)->GetStats().tier(Tier::kHost);
  state.counters["miss_fraction"] =
      static_cast<double>(after.misses - before.misses) / static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations());
}

void BM_PinRaw(benchmark::State& state) {
  RawClient c(kSmallBlocks * kSmall);
  std::vector<std::byte> buf(kSmall);
  std::mt19937_64 rng(2);
  for (auto _ : state) c.Batch(false, buf.data(), kSmall, 1, (rng() % kSmallBlocks) * kSmall);
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_PutStrata)->Name("BM_RemotePut1M/strata")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PutRaw)->Name("BM_RemotePut1M/baseline")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GetStrata)->Name("BM_RemoteGet1M/strata")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GetRaw)->Name("BM_RemoteGet1M/baseline")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PinStrata)->Name("BM_RemotePin4K/strata")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PinRaw)->Name("BM_RemotePin4K/baseline")->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace strata

BENCHMARK_MAIN();
