#include "tiers/remote/protocol.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace strata::tiers::remote {
namespace {

class Writer {
 public:
  void U16(uint16_t v) { Put(v, 2); }
  void U32(uint32_t v) { Put(v, 4); }
  void U64(uint64_t v) { Put(v, 8); }
  void Text(const std::string& s) {
    U32(static_cast<uint32_t>(s.size()));
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    out_.insert(out_.end(), p, p + s.size());
  }
  std::vector<std::byte>& out() { return out_; }

 private:
  void Put(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(std::byte(v >> (8 * i)));
  }
  std::vector<std::byte> out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  bool U16(uint16_t* v) { return Get(v, 2); }
  bool U32(uint32_t* v) { return Get(v, 4); }
  bool U64(uint64_t* v) { return Get(v, 8); }
  bool Text(std::string* s) {
    uint32_t n = 0;
    if (!U32(&n) || n > kMaxText || n > in_.size() - pos_) return false;
    s->assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  size_t left() const { return in_.size() - pos_; }

 private:
  template <typename T>
  bool Get(T* v, size_t bytes) {
    if (in_.size() - pos_ < bytes) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < bytes; ++i) {
      x |= static_cast<uint64_t>(in_[pos_ + i]) << (8 * i);
    }
    pos_ += bytes;
    *v = static_cast<T>(x);
    return true;
  }
  std::span<const std::byte> in_;
  size_t pos_ = 0;
};

// How many of `values` each type carries.
int ValueCount(Type t) {
  switch (t) {
    case Type::kAllocate: return 1;
    case Type::kFree: return 1;
    case Type::kReply: return 4;
    default: return 0;
  }
}

bool KnownType(uint16_t t) { return t >= 1 && t <= 6; }

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("remote protocol: malformed message: ", Sv(what)));
}

}  // namespace

std::vector<std::byte> Encode(const Message& m) {
  Writer body;
  if (m.type != Type::kHello && m.type != Type::kReply) body.U64(m.session);
  if (m.type == Type::kHello) {
    body.Text(m.secret);
    body.Text(m.address);
  }
  for (int i = 0; i < ValueCount(m.type); ++i) body.U64(m.values[i]);
  if (m.type == Type::kReply) {
    body.U32(m.code);
    body.Text(m.text.size() > kMaxText ? m.text.substr(0, kMaxText) : m.text);
  }
  Writer out;
  out.U32(kMagic);
  out.U16(kVersion);
  out.U16(static_cast<uint16_t>(m.type));
  out.U32(static_cast<uint32_t>(body.out().size()));
  out.U32(0);  // reserved
  out.U64(m.request);
  out.out().insert(out.out().end(), body.out().begin(), body.out().end());
  return std::move(out.out());
}

absl::StatusOr<Message> Decode(std::span<const std::byte> bytes) {
  if (bytes.size() > kMaxMessage) {
    return Bad(absl::StrCat(bytes.size(), " bytes, more than ", kMaxMessage));
  }
  Reader in(bytes);
  uint32_t magic = 0, length = 0, reserved = 0;
  uint16_t version = 0, type = 0;
  Message m;
  if (!in.U32(&magic) || !in.U16(&version) || !in.U16(&type) ||
      !in.U32(&length) || !in.U32(&reserved) || !in.U64(&m.request)) {
    return Bad("shorter than its header");
  }
  if (magic != kMagic) return Bad("not a Strata block-server message");
  if (version != kVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "remote protocol: version ", version, " spoken, ", kVersion,
        " understood; run the same Strata release on client and server"));
  }
  if (!KnownType(type)) return Bad(absl::StrCat("unknown type ", type));
  if (length != in.left()) return Bad("body length does not match the header");
  m.type = static_cast<Type>(type);
  bool ok = true;
  if (m.type != Type::kHello && m.type != Type::kReply) ok = ok && in.U64(&m.session);
  if (m.type == Type::kHello) ok = ok && in.Text(&m.secret) && in.Text(&m.address);
  for (int i = 0; i < ValueCount(m.type); ++i) ok = ok && in.U64(&m.values[i]);
  if (m.type == Type::kReply) ok = ok && in.U32(&m.code) && in.Text(&m.text);
  if (!ok) return Bad("a field runs past the end");
  if (in.left() != 0) return Bad("bytes after the last field");
  if (m.type == Type::kReply && m.code > static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)) {
    return Bad(absl::StrCat("unknown status code ", m.code));
  }
  return m;
}

Message Reply(const Message& request, const absl::Status& status,
              std::initializer_list<uint64_t> values) {
  Message r;
  r.type = Type::kReply;
  r.request = request.request;
  r.code = static_cast<uint32_t>(status.code());
  r.text = std::string(status.message());
  int i = 0;
  for (uint64_t v : values) {
    if (i < 4) r.values[i++] = v;
  }
  return r;
}

absl::Status StatusOf(const Message& reply) {
  return absl::Status(static_cast<absl::StatusCode>(reply.code), reply.text);
}

}  // namespace strata::tiers::remote
