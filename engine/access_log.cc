#include "engine/access_log.h"

#include <bit>
#include <cmath>

namespace strata::internal {

void LatencyHistogram::Record(uint64_t nanos) {
  if (nanos == 0) nanos = 1;
  const int log2 = 63 - std::countl_zero(nanos);
  // Two bits below the leading one pick the quarter within the octave.
  const int quarter = log2 >= 2 ? static_cast<int>((nanos >> (log2 - 2)) & 3)
                                : 0;
  int bucket = log2 * 4 + quarter;
  if (bucket >= kBuckets) bucket = kBuckets - 1;
  Bump(counts_[bucket]);
}

void LatencyHistogram::AddTo(std::array<uint64_t, kBuckets>& counts) const {
  for (int i = 0; i < kBuckets; ++i) {
    counts[i] += counts_[i].load(std::memory_order_relaxed);
  }
}

LatencySummary LatencyHistogram::Summarize(
    const std::array<uint64_t, kBuckets>& counts) {
  LatencySummary summary;
  for (uint64_t c : counts) summary.samples += c;
  if (summary.samples == 0) return summary;
  // The upper edge of a bucket, in microseconds.
  auto upper_us = [](int bucket) {
    const int log2 = bucket / 4;
    const double base = std::ldexp(1.0, log2);
    return base * (1.0 + (bucket % 4 + 1) / 4.0) / 1000.0;
  };
  auto percentile = [&](double p) {
    const double rank = p * static_cast<double>(summary.samples);
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += counts[i];
      if (static_cast<double>(seen) >= rank && counts[i] != 0) return upper_us(i);
    }
    return upper_us(kBuckets - 1);
  };
  summary.p50_us = percentile(0.50);
  summary.p90_us = percentile(0.90);
  summary.p99_us = percentile(0.99);
  for (int i = kBuckets - 1; i >= 0; --i) {
    if (counts[i] != 0) {
      summary.max_us = upper_us(i);
      break;
    }
  }
  return summary;
}

}  // namespace strata::internal
