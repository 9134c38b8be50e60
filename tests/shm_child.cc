// The other process of shm_multiprocess_test: attaches to a node segment
// and does one thing to it, as the test asks, so that the test can kill it
// at any instant.
//
//   shm_child hammer SEGMENT SEED     pins random blocks of tensor "t" for
//                                     reading (checking them) and writing
//                                     (filling them) forever; exit 3 if it
//                                     ever reads a torn block
//   shm_child create SEGMENT NAME     creates tensor NAME: exit 0 created,
//                                     10 it existed, 1 other errors
//   shm_child create-die SEGMENT NAME dies (SIGKILL) inside the creation,
//                                     holding the segment's lock
//   shm_child pin SEGMENT BLOCK r|w   pins block BLOCK of "t", then waits to
//                                     be killed
//
// Prints "ready" on stdout once attached (and pinned, for `pin`).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "tiers/shm/segment.h"

namespace shm = strata::tiers::shm;

namespace {

void Ready() {
  std::printf("ready\n");
  std::fflush(stdout);
}

int Hammer(shm::Segment& seg, uint64_t seed) {
  auto t = seg.OpenTensor("t");
  if (!t.ok()) return 1;
  std::mt19937_64 rng(seed);
  Ready();
  for (uint64_t n = 0;; ++n) {
    const uint64_t block = rng() % t->spec.num_blocks;
    const int what = static_cast<int>(rng() % 3);
    const absl::Duration deadline = absl::Seconds(5);
    if (what == 0) {
      auto p = seg.Pin(*t, block, strata::Access::kRead, deadline);
      if (!p.ok()) continue;
      const auto* words = reinterpret_cast<const uint64_t*>(p->data);
      for (uint64_t i = 1; i < p->size / 8; ++i) {
        if (words[i] != words[0]) return 3;
      }
      seg.Unpin(p->record, p->count, false);
    } else {
      auto p = seg.Pin(*t, block, what == 1 ? strata::Access::kWrite : strata::Access::kOverwrite,
                       deadline);
      if (!p.ok()) continue;
      const uint64_t value = (seed << 32) | n;
      auto* words = reinterpret_cast<uint64_t*>(p->data);
      for (uint64_t i = 0; i < p->size / 8; ++i) {
        words[i] = value;
        if (i == p->size / 16 && rng() % 4 == 0) sched_yield();  // widen the window
      }
      seg.Unpin(p->record, p->count, true);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: shm_child hammer|create|create-die|pin SEGMENT ARG [r|w]\n");
    return 2;
  }
  const std::string mode = argv[1];
  shm::SegmentOptions o;
  o.name = argv[2];
  o.mode = shm::OpenMode::kAttach;
  o.reclaim_interval = absl::ZeroDuration();
  o.log = [](std::string_view) {};
  if (mode == "create-die") {
    o.test_hook = [](std::string_view point) {
      if (point == "create:table") raise(SIGKILL);
    };
  }
  auto seg = shm::Segment::Open(o);
  if (!seg.ok()) {
    std::fprintf(stderr, "shm_child: %s\n", std::string(seg.status().message()).c_str());
    return 1;
  }
  if (mode == "hammer") return Hammer(**seg, std::strtoull(argv[3], nullptr, 10));
  if (mode == "create" || mode == "create-die") {
    Ready();
    const shm::SharedSpec spec{.dtype = strata::DType::kU8, .shape = {65536},
                               .block_bytes = 16384, .size_bytes = 65536, .num_blocks = 4};
    auto t = (*seg)->CreateTensor(argv[3], spec, false);
    if (t.ok()) return 0;
    return absl::IsAlreadyExists(t.status()) ? 10 : 1;
  }
  if (mode == "pin" && argc >= 5) {
    auto t = (*seg)->OpenTensor("t");
    if (!t.ok()) return 1;
    const bool write = argv[4][0] == 'w';
    auto p = (*seg)->Pin(*t, std::strtoull(argv[3], nullptr, 10),
                         write ? strata::Access::kWrite : strata::Access::kRead,
                         absl::Seconds(10));
    if (!p.ok()) return 1;
    if (write) std::memset(p->data, 0xEE, p->size);  // never sealed
    Ready();
    for (;;) pause();
  }
  return 2;
}
