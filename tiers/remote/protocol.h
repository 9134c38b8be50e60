// The control protocol between a remote tier (the client) and strata-blockd
// (the server): hello, allocate, free, stat, bye. Bytes move by RMA, not
// here; these messages only set up what RMA may touch.
//
// Every message is a 24-byte header (magic "STRB", layout version, type,
// body length, request id; little-endian) and a body whose fields depend on
// the type. Decode checks the magic, the version, the type and that the
// body is exactly as long as its fields say, so a malformed or oversized
// message is an error value, never a crash (tests/remote_test.cpp fuzzes
// it). A reply echoes the request id and carries a status code and text.
#ifndef STRATA_TIERS_REMOTE_PROTOCOL_H_
#define STRATA_TIERS_REMOTE_PROTOCOL_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::tiers::remote {

inline constexpr uint32_t kMagic = 0x42525453;  // "STRB"
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHeaderBytes = 24;
// No message is longer: receive buffers are this size.
inline constexpr size_t kMaxMessage = 4096;
inline constexpr size_t kMaxText = 1024;    // secrets, addresses, messages

enum class Type : uint16_t {
  kHello = 1,      // secret, address -> session, generation, capacity
  kAllocate = 2,   // session, bytes -> allocation id, key, bytes
  kFree = 3,       // session, allocation id -> status
  kStat = 4,       // session -> capacity, used, clients, allocations
  kBye = 5,        // session -> status
  kReply = 6,      // status code, text, and the values of the request type
};

// One message: the fields its type uses are meaningful, the others zero.
struct Message {
  Type type = Type::kReply;
  uint64_t request = 0;
  uint64_t session = 0;     // every request after hello
  std::string secret;       // hello
  std::string address;      // hello: the client's fabric address
  uint64_t values[4] = {};  // allocate: bytes; free: id; replies: results
  uint32_t code = 0;        // reply: an absl::StatusCode
  std::string text;         // reply: the error message
};

std::vector<std::byte> Encode(const Message& m);
// kInvalidArgument naming what is wrong with `bytes`.
absl::StatusOr<Message> Decode(std::span<const std::byte> bytes);

// A reply to `request` carrying `status` and `values`.
Message Reply(const Message& request, const absl::Status& status,
              std::initializer_list<uint64_t> values = {});
// The status a reply carries.
absl::Status StatusOf(const Message& reply);

}  // namespace strata::tiers::remote

#endif  // STRATA_TIERS_REMOTE_PROTOCOL_H_
