// A program outside the tree, built by scripts/check-install against an
// installed Strata with nothing but `pkg-config --cflags --libs --static
// strata`: it proves the public header stands alone (only the standard
// library and Abseil behind it) and that strata.pc's link line is complete.
//
// Opens an engine with the host tier only, writes one block through a write
// pin, reads it back through a read pin, and exits 0 when the bytes match.
#include <cstddef>
#include <cstdio>

#include <strata/strata.h>

namespace {

int Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "consumer: %s: %s\n", what, status.ToString().c_str());
  return 1;
}

std::byte Pattern(size_t i) {
  return static_cast<std::byte>((i * 131 + 7) & 0xff);
}

}  // namespace

int main() {
  strata::EngineOptions options;
  options.host.capacity_bytes = uint64_t{4} << 20;
  options.tiers = {strata::Tier::kHost};
  options.default_block_bytes = uint64_t{64} << 10;
  auto engine = strata::Engine::Open(options);
  if (!engine.ok()) return Fail("Engine::Open", engine.status());

  auto tensor = (*engine)->CreateTensor(
      "consumer.w", {.dtype = strata::DType::kU8, .shape = {256 << 10}});
  if (!tensor.ok()) return Fail("CreateTensor", tensor.status());

  {
    auto pin = (*engine)->Pin(*tensor, /*block=*/1, strata::Tier::kHost,
                              strata::Access::kWrite);
    if (!pin.ok()) return Fail("Pin for writing", pin.status());
    std::span<std::byte> bytes = pin->bytes();
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = Pattern(i);
    if (absl::Status s = pin->Release(); !s.ok()) return Fail("Release", s);
  }

  auto pin = (*engine)->Pin(*tensor, /*block=*/1, strata::Tier::kHost,
                            strata::Access::kRead);
  if (!pin.ok()) return Fail("Pin for reading", pin.status());
  std::span<const std::byte> bytes = pin->bytes();
  if (bytes.size() != (size_t{64} << 10)) {
    std::fprintf(stderr, "consumer: block 1 has %zu bytes, expected 65536\n",
                 bytes.size());
    return 1;
  }
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != Pattern(i)) {
      std::fprintf(stderr, "consumer: byte %zu of block 1 was not kept\n", i);
      return 1;
    }
  }
  pin->Release().IgnoreError();
  if (absl::Status s = (*engine)->Close(); !s.ok()) return Fail("Close", s);
  std::printf("consumer: wrote and read back a 64 KiB block via libstrata\n");
  return 0;
}
