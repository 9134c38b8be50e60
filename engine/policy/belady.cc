#include "engine/policy/belady.h"

#include <cstdint>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace strata::policy {

uint64_t BeladyMisses(absl::Span<const uint64_t> trace, size_t capacity) {
  constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();
  const size_t n = trace.size();
  // next[i]: the position of the next request for trace[i], or kNever.
  std::vector<uint64_t> next(n, kNever);
  {
    absl::flat_hash_map<uint64_t, uint64_t> seen;
    for (size_t i = n; i-- > 0;) {
      auto [it, inserted] = seen.try_emplace(trace[i], i);
      if (!inserted) {
        next[i] = it->second;
        it->second = i;
      }
    }
  }
  // Resident keys by next use; ties among never-used keys broken by key.
  std::set<std::pair<uint64_t, uint64_t>> by_next;
  absl::flat_hash_map<uint64_t, uint64_t> resident;  // key -> its next use
  uint64_t misses = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t key = trace[i];
    if (auto it = resident.find(key); it != resident.end()) {
      by_next.erase({it->second, key});
      it->second = next[i];
      by_next.insert({next[i], key});
      continue;
    }
    ++misses;
    if (resident.size() >= capacity) {
      auto victim = std::prev(by_next.end());
      resident.erase(victim->second);
      by_next.erase(victim);
    }
    resident.emplace(key, next[i]);
    by_next.insert({next[i], key});
  }
  return misses;
}

}  // namespace strata::policy
