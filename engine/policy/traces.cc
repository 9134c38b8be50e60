#include "engine/policy/traces.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/errors.h"

namespace strata::policy {
namespace {

// A uniform double in [0, 1) from 53 random bits.
double Uniform(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Samples ranks 0..n-1 with P(k) proportional to 1 / (k + 1)^alpha by
// binary search in the cumulative distribution.
class ZipfSampler {
 public:
  ZipfSampler(uint64_t n, double alpha) : cdf_(n) {
    double sum = 0;
    for (uint64_t k = 0; k < n; ++k) {
      sum += 1.0 / std::pow(static_cast<double>(k + 1), alpha);
      cdf_[k] = sum;
    }
    for (double& c : cdf_) c /= sum;
  }

  uint64_t operator()(std::mt19937_64& rng) const {
    const double u = Uniform(rng);
    const auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
    return std::min<uint64_t>(it - cdf_.begin(), cdf_.size() - 1);
  }

 private:
  std::vector<double> cdf_;
};

constexpr uint64_t kScanBase = uint64_t{1} << 40;
constexpr uint64_t kParamBase = uint64_t{1} << 32;
constexpr uint64_t kOptimizerBase = uint64_t{2} << 32;
constexpr uint64_t kEmbeddingBase = uint64_t{3} << 32;

}  // namespace

std::vector<uint64_t> ZipfTrace(const ZipfParams& params) {
  std::mt19937_64 rng(params.seed);
  const ZipfSampler zipf(params.universe, params.alpha);
  std::vector<uint64_t> trace(params.length);
  for (uint64_t& key : trace) key = zipf(rng);
  return trace;
}

std::vector<uint64_t> ZipfScanTrace(const ZipfScanParams& params) {
  std::mt19937_64 rng(params.zipf.seed);
  const ZipfSampler zipf(params.zipf.universe, params.zipf.alpha);
  // A scan starts after a Zipf request with probability p, so scans make
  // p * L / (1 + p * L) of the requests; solve for the wanted fraction.
  const double f = std::clamp(params.scan_fraction, 0.0, 0.99);
  const double start_p =
      f / ((1 - f) * static_cast<double>(std::max<size_t>(1, params.scan_length)));
  std::vector<uint64_t> trace;
  trace.reserve(static_cast<size_t>(
      static_cast<double>(params.zipf.length) / (1 - f)) + 1);
  uint64_t next_scan_key = kScanBase;
  for (size_t i = 0; i < params.zipf.length; ++i) {
    trace.push_back(zipf(rng));
    if (Uniform(rng) < start_p) {
      for (size_t j = 0; j < params.scan_length; ++j) {
        trace.push_back(next_scan_key++);
      }
    }
  }
  return trace;
}

std::vector<uint64_t> TrainingTrace(const TrainingParams& p) {
  std::mt19937_64 rng(p.seed);
  const ZipfSampler zipf(std::max<uint64_t>(1, p.embedding_rows),
                         p.embedding_alpha);
  const size_t b = p.blocks_per_layer;
  const size_t o = p.optimizer_blocks_per_layer;
  auto param = [&](size_t layer, size_t i) {
    return kParamBase + layer * b + i;
  };
  auto optimizer = [&](size_t layer, size_t i) {
    return kOptimizerBase + layer * o + i;
  };
  std::vector<uint64_t> trace;
  for (size_t step = 0; step < p.steps; ++step) {
    for (size_t l = 0; l < p.layers; ++l) {
      for (size_t i = 0; i < b; ++i) trace.push_back(param(l, i));
      for (size_t j = 0; j < p.lookups_per_layer && p.embedding_rows > 0;
           ++j) {
        trace.push_back(kEmbeddingBase + zipf(rng));
      }
    }
    for (size_t l = p.layers; l-- > 0;) {
      for (size_t i = b; i-- > 0;) trace.push_back(param(l, i));
    }
    for (size_t l = 0; l < p.layers; ++l) {
      // Interleave: parameter block i, then its share of optimizer state.
      size_t next_opt = 0;
      for (size_t i = 0; i < b; ++i) {
        trace.push_back(param(l, i));
        const size_t until = (i + 1) * o / std::max<size_t>(1, b);
        for (; next_opt < until; ++next_opt) {
          trace.push_back(optimizer(l, next_opt));
        }
      }
      for (; next_opt < o; ++next_opt) trace.push_back(optimizer(l, next_opt));
    }
  }
  return trace;
}

std::optional<uint64_t> TrainingEmbeddingRank(uint64_t key) {
  if (key < kEmbeddingBase || key >= kScanBase) return std::nullopt;
  return key - kEmbeddingBase;
}

absl::StatusOr<std::vector<uint64_t>> ParseTrace(std::string_view text) {
  std::vector<uint64_t> trace;
  size_t line_number = 0;
  for (absl::string_view line :
       absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    uint64_t key;
    if (line[0] == '+' || line[0] == '-' || !absl::SimpleAtoi(line, &key)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trace line ", line_number, ": '", line.substr(0, 40),
          "' is not an unsigned integer key; a trace has one key per line"));
    }
    trace.push_back(key);
  }
  return trace;
}

absl::StatusOr<std::vector<uint64_t>> ReadTraceFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return ErrnoStatus(errno, absl::StrCat("cannot open trace file ", path),
                       "pass a readable file with one key per line");
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("error reading trace file ", path));
  }
  absl::StatusOr<std::vector<uint64_t>> trace = ParseTrace(buffer.str());
  if (!trace.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", trace.status().message()));
  }
  return trace;
}

absl::Status WriteTraceFile(const std::string& path,
                            absl::Span<const uint64_t> trace) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return ErrnoStatus(errno, absl::StrCat("cannot create trace file ", path),
                       "pass --out in a writable directory");
  }
  std::string chunk;
  for (size_t i = 0; i < trace.size(); ++i) {
    absl::StrAppend(&chunk, trace[i], "\n");
    if (chunk.size() > (1 << 16) || i + 1 == trace.size()) {
      out << chunk;
      chunk.clear();
    }
  }
  out.flush();
  if (!out) {
    return ErrnoStatus(errno, absl::StrCat("error writing trace file ", path));
  }
  return absl::OkStatus();
}

}  // namespace strata::policy
