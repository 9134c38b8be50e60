// Deterministic trace generators and trace files for the policy simulator
// (bench/policy_sim) and the policy tests. A trace is the sequence of block
// keys a tier sees, one request each. The same parameters and seed give the
// same trace on every platform (the generators use std::mt19937_64 and their
// own integer-to-real conversion, not the implementation-defined
// distributions of <random>).
#ifndef STRATA_ENGINE_POLICY_TRACES_H_
#define STRATA_ENGINE_POLICY_TRACES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace strata::policy {

// Independent requests for keys 0..universe-1; key k has probability
// proportional to 1 / (k + 1)^alpha.
struct ZipfParams {
  uint64_t universe = 100'000;
  double alpha = 0.99;
  size_t length = 2'000'000;
  uint64_t seed = 1;
};
std::vector<uint64_t> ZipfTrace(const ZipfParams& params);

// A Zipf trace with scans interleaved: runs of `scan_length` sequential keys,
// each requested once (one-hit wonders, keys from 2^40 up, never repeated),
// start at random points so that about `scan_fraction` of all requests are
// scans. `zipf.length` counts the Zipf requests only.
struct ZipfScanParams {
  ZipfParams zipf;
  double scan_fraction = 0.25;
  size_t scan_length = 100;
};
std::vector<uint64_t> ZipfScanTrace(const ZipfScanParams& params);

// Repeated training steps. Each step:
//   forward:   for layer 0..L-1: its `blocks_per_layer` parameter blocks in
//              order, then `lookups_per_layer` Zipf(`embedding_alpha`)
//              lookups in an embedding table of `embedding_rows` rows;
//   backward:  for layer L-1..0: its parameter blocks in reverse order;
//   optimizer: for layer 0..L-1: each parameter block followed by its
//              `optimizer_blocks_per_layer / blocks_per_layer` optimizer-state
//              blocks (the optimizer state of layer l is
//              `optimizer_blocks_per_layer` blocks).
// "Layer blocks" are the parameter and optimizer-state blocks:
// L * (blocks_per_layer + optimizer_blocks_per_layer) keys.
struct TrainingParams {
  size_t layers = 32;
  size_t blocks_per_layer = 8;
  size_t optimizer_blocks_per_layer = 8;
  uint64_t embedding_rows = 1024;
  double embedding_alpha = 0.99;
  size_t lookups_per_layer = 1;
  size_t steps = 50;
  uint64_t seed = 1;

  size_t layer_blocks() const {
    return layers * (blocks_per_layer + optimizer_blocks_per_layer);
  }
};
std::vector<uint64_t> TrainingTrace(const TrainingParams& params);
// For a key of a TrainingTrace: the popularity rank of the embedding row it
// names (0 is the most requested), or nullopt for a layer block. For
// reference policies and measurements only: a real policy sees opaque keys.
std::optional<uint64_t> TrainingEmbeddingRank(uint64_t key);

// Parses a trace: one unsigned decimal integer key per line; blank lines and
// surrounding spaces are ignored. kInvalidArgument naming the first bad line
// (1-based) and its text.
absl::StatusOr<std::vector<uint64_t>> ParseTrace(std::string_view text);
// Reads and parses the trace file at `path`; kNotFound / kPermissionDenied /
// kInvalidArgument with the path in the message.
absl::StatusOr<std::vector<uint64_t>> ReadTraceFile(const std::string& path);
// Writes `trace` one key per line.
absl::Status WriteTraceFile(const std::string& path,
                            absl::Span<const uint64_t> trace);

}  // namespace strata::policy

#endif  // STRATA_ENGINE_POLICY_TRACES_H_
