#include "util/checksum.h"

#include <xxhash.h>

namespace strata {

uint64_t BlockChecksum(std::span<const std::byte> bytes, uint64_t tensor_id,
                       uint64_t block, uint64_t version) {
  const uint64_t identity[3] = {tensor_id, block, version};
  const uint64_t seed = XXH3_64bits(identity, sizeof(identity));
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), seed);
}

}  // namespace strata
