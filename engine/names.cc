// The names and sizes the public header declares for its enums, in a file
// of their own: code that needs only them (the shm tier's directory checks,
// its test child) links without the rest of the engine, and so without
// libfabric, whose provider libraries take ~200 ms to load (libinfinipath's
// constructor sleeps; `strace -k -e clock_nanosleep` on any program linking
// libfabric shows it).
#include "api/strata/strata.h"

namespace strata {

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kGpu: return "gpu";
    case Tier::kHost: return "host";
    case Tier::kShm: return "shm";
    case Tier::kRemote: return "remote";
    case Tier::kNvme: return "nvme";
  }
  return "unknown";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kU8:
    case DType::kI8: return 1;
    case DType::kF16:
    case DType::kBF16: return 2;
    case DType::kI32:
    case DType::kF32: return 4;
    case DType::kI64:
    case DType::kF64: return 8;
  }
  return 0;
}

}  // namespace strata
