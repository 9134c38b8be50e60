// Block checksums: XXH3-64 (libxxhash) of the bytes, seeded with the block's
// identity so that a block written for another tensor, index or version never
// verifies (a swapped or stale extent is caught, not only a flipped bit).
#ifndef STRATA_UTIL_CHECKSUM_H_
#define STRATA_UTIL_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace strata {

uint64_t BlockChecksum(std::span<const std::byte> bytes, uint64_t tensor_id,
                       uint64_t block, uint64_t version);

}  // namespace strata

#endif  // STRATA_UTIL_CHECKSUM_H_
