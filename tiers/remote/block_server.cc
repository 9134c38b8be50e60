#include "tiers/remote/block_server.h"

#include <sys/mman.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "util/errors.h"

namespace strata::tiers::remote {
namespace {

constexpr int kReceives = 16;
constexpr size_t kMaxSessions = 4096;

uint64_t Random64() {
  uint64_t v = 0;
  while (getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) {
  }
  return v;
}

// Compares without an early exit, so the time taken says nothing of how
// much of a guess was right (the length is not the secret).
bool SameSecret(std::string_view given, std::string_view secret) {
  if (given.size() != secret.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i]) ^ static_cast<unsigned char>(secret[i]);
  }
  return diff == 0;
}

}  // namespace

struct BlockServer::ServerOp : Fabric::Op {
  enum class Kind { kReceive, kSend } kind = Kind::kReceive;
  std::vector<std::byte> bytes;
  fi_addr_t peer = FI_ADDR_UNSPEC;  // sends
};

absl::StatusOr<std::unique_ptr<BlockServer>> BlockServer::Create(
    const BlockServerConfig& config) {
  if (config.secret.empty() || config.secret.size() > kMaxText) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block server: the shared secret must be 1 to ", kMaxText, " bytes"));
  }
  if (config.region_bytes == 0 || config.region_bytes % kAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block server: the region size ", config.region_bytes,
        " must be a non-zero multiple of 4096"));
  }
  // The serving thread sleeps on the provider's sockets between requests
  // (PollOnce waits 5 ms at most, for Serve's stop flag): an idle server
  // costs no CPU. Polling with 50 us naps, it took ~18% of a core idle and
  // added up to the nap to every request's round trip.
  Fabric::Config fc{.provider = config.provider, .node = config.node,
                    .service = config.service, .listen = true,
                    .wait_in_kernel = true};
  absl::StatusOr<std::unique_ptr<Fabric>> fabric = Fabric::Open(fc);
  if (!fabric.ok()) return fabric.status();
  void* region = mmap(nullptr, config.region_bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) {
    return ErrnoStatus(errno, absl::StrCat("block server: mmap of ",
                                           config.region_bytes, " bytes"),
                       "lower the region size");
  }
  std::unique_ptr<BlockServer> server(new BlockServer(
      config, std::move(fabric).value(), static_cast<std::byte*>(region)));
  if (absl::Status s = server->PostReceives(); !s.ok()) return s;
  return server;
}

BlockServer::BlockServer(const BlockServerConfig& config,
                         std::unique_ptr<Fabric> fabric, std::byte* region)
    : config_(config),
      fabric_(std::move(fabric)),
      region_(region),
      free_(config.region_bytes),
      generation_(Random64()),
      // Keys carry the generation: a client of an earlier start of this
      // server cannot reach an allocation of this one by an old key.
      next_key_((generation_ & 0xFFFFFFFF00000000u) | 1),
      receives_(new ServerOp[kReceives]) {}

BlockServer::~BlockServer() {
  for (ServerOp* op : unsent_) delete op;
  for (auto& [id, a] : allocations_) Fabric::Unregister(a.region);
  allocations_.clear();
  fabric_.reset();  // closes the endpoint: nothing can reach the region now
  munmap(region_, config_.region_bytes);
}

absl::Status BlockServer::PostReceives() {
  for (int i = 0; i < kReceives; ++i) {
    ServerOp& op = receives_[i];
    op.kind = ServerOp::Kind::kReceive;
    op.bytes.resize(kMaxMessage);
    if (absl::Status s = fabric_->PostRecv(op.bytes.data(), op.bytes.size(), &op);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

void BlockServer::Serve(const std::atomic<bool>& stop) {
  while (!stop.load(std::memory_order_relaxed)) {
    PollOnce(/*serve=*/true);
    SendQueued();
  }
  // Let the last replies leave (bounded); requests are no longer served.
  for (int spins = 0; (sends_in_flight_ > 0 || !unsent_.empty()) && spins < 200; ++spins) {
    SendQueued();
    PollOnce(/*serve=*/false);
  }
}

void BlockServer::PollOnce(bool serve) {
  Fabric::Op* done[16];
  const int n = fabric_->Poll(done, 16, 5);
  for (int i = 0; i < n; ++i) {
    auto* op = static_cast<ServerOp*>(done[i]);
    if (op->kind == ServerOp::Kind::kSend) {
      --sends_in_flight_;
      delete op;
    } else if (serve) {
      OnReceived(*op);
    }
  }
}

void BlockServer::OnReceived(ServerOp& op) {
  if (op.status.ok()) {
    absl::StatusOr<Message> m = Decode(
        std::span<const std::byte>(op.bytes.data(), std::min(op.bytes.size(), op.length)));
    if (m.ok()) {
      Handle(*m);
    } else if (CountDropped()) {
      Log(absl::StrCat("strata-blockd: dropped a malformed message (",
                       malformed_, " so far): ", m.status().message()));
    }
  } else if (CountDropped()) {
    Log(absl::StrCat("strata-blockd: a receive failed (", malformed_,
                     " so far): ", op.status.message()));
  }
  // The buffer serves the next message.
  if (absl::Status s = fabric_->PostRecv(op.bytes.data(), op.bytes.size(), &op);
      !s.ok()) {
    Log(absl::StrCat("strata-blockd: cannot post a receive: ", s.message()));
  }
}

void BlockServer::Handle(const Message& m) {
  if (m.type == Type::kHello) {
    fi_addr_t peer = FI_ADDR_UNSPEC;
    Message reply = Hello(m, &peer);
    if (peer == FI_ADDR_UNSPEC) return;  // no address to answer to
    SendReply(reply, peer);
    // A refused client is forgotten once the refusal is on its way.
    if (reply.code != 0) fabric_->Remove(peer);
    return;
  }
  auto session = sessions_.find(m.session);
  if (session == sessions_.end()) {
    if (CountDropped()) {
      Log(absl::StrCat("strata-blockd: dropped a request without a valid "
                       "session (", malformed_, " so far)"));
    }
    return;
  }
  const fi_addr_t peer = session->second.peer;
  switch (m.type) {
    case Type::kAllocate: SendReply(Allocate(m), peer); break;
    case Type::kFree: SendReply(Free(m), peer); break;
    case Type::kStat: SendReply(Stat(m), peer); break;
    case Type::kBye: SendReply(Bye(m), peer); break;
    default:
      SendReply(Reply(m, absl::InvalidArgumentError(
                             "strata-blockd: a reply is not a request")),
                peer);
  }
}

Message BlockServer::Hello(const Message& m, fi_addr_t* peer) {
  absl::StatusOr<fi_addr_t> inserted = fabric_->Insert(m.address);
  if (!inserted.ok()) return Message{};
  *peer = *inserted;
  if (!SameSecret(m.secret, config_.secret)) {
    Log("strata-blockd: refused a client with a wrong secret");
    return Reply(m, absl::PermissionDeniedError(
                        "strata-blockd: wrong shared secret; give the client "
                        "the secret the server was started with"));
  }
  if (sessions_.size() >= kMaxSessions) {
    return Reply(m, absl::ResourceExhaustedError(absl::StrCat(
                        "strata-blockd: ", kMaxSessions, " clients already")));
  }
  uint64_t session = 0;
  do {
    session = Random64();
  } while (session == 0 || sessions_.contains(session));
  Session s{.peer = *peer, .name = absl::StrCat("client ", sessions_.size() + 1)};
  Log(absl::StrCat("strata-blockd: ", s.name, " connected (session ",
                   absl::Hex(session >> 48), "...)"));
  sessions_.emplace(session, std::move(s));
  return Reply(m, absl::OkStatus(), {session, generation_, config_.region_bytes});
}

Message BlockServer::Allocate(const Message& m) {
  const uint64_t asked = m.values[0];
  if (asked == 0 || asked > config_.region_bytes) {
    return Reply(m, absl::InvalidArgumentError(absl::StrCat(
                        "strata-blockd: cannot allocate ", asked,
                        " bytes from a region of ", config_.region_bytes)));
  }
  const uint64_t bytes = (asked + kAlign - 1) / kAlign * kAlign;
  const std::optional<uint64_t> offset = free_.Allocate(bytes);
  if (!offset) {
    return Reply(m, absl::ResourceExhaustedError(absl::StrCat(
                        "strata-blockd: no free range of ", bytes,
                        " bytes (region ", config_.region_bytes, ", used ",
                        used_, ")")));
  }
  absl::StatusOr<Fabric::Region> region = fabric_->Register(
      region_ + *offset, bytes, FI_REMOTE_READ | FI_REMOTE_WRITE, next_key_++);
  if (!region.ok()) {
    free_.Free(*offset, bytes);
    return Reply(m, region.status());
  }
  const uint64_t id = next_id_++;
  used_ += bytes;
  allocations_.emplace(id, Allocation{.session = m.session, .offset = *offset,
                                      .bytes = bytes, .region = *region});
  // Where the client's RMA starts: the address itself, or offset 0 of the
  // registration.
  const uint64_t base = fabric_->virtual_addresses()
                            ? reinterpret_cast<uint64_t>(region_ + *offset)
                            : 0;
  return Reply(m, absl::OkStatus(), {id, region->key, bytes, base});
}

Message BlockServer::Free(const Message& m) {
  auto it = allocations_.find(m.values[0]);
  if (it == allocations_.end() || it->second.session != m.session) {
    return Reply(m, absl::NotFoundError(absl::StrCat(
                        "strata-blockd: no allocation ", m.values[0],
                        " of this client")));
  }
  Fabric::Unregister(it->second.region);
  free_.Free(it->second.offset, it->second.bytes);
  used_ -= it->second.bytes;
  allocations_.erase(it);
  return Reply(m, absl::OkStatus());
}

Message BlockServer::Stat(const Message& m) {
  return Reply(m, absl::OkStatus(),
               {config_.region_bytes, used_, sessions_.size(), allocations_.size()});
}

Message BlockServer::Bye(const Message& m) {
  Message reply = Reply(m, absl::OkStatus());
  EndSession(m.session);
  return reply;
}

void BlockServer::EndSession(uint64_t session) {
  auto s = sessions_.find(session);
  if (s == sessions_.end()) return;
  for (auto it = allocations_.begin(); it != allocations_.end();) {
    auto next = std::next(it);
    if (it->second.session == session) {
      Fabric::Unregister(it->second.region);
      free_.Free(it->second.offset, it->second.bytes);
      used_ -= it->second.bytes;
      allocations_.erase(it);
    }
    it = next;
  }
  Log(absl::StrCat("strata-blockd: ", s->second.name, " disconnected"));
  sessions_.erase(s);
}

void BlockServer::SendReply(const Message& reply, fi_addr_t peer) {
  auto* op = new ServerOp;
  op->kind = ServerOp::Kind::kSend;
  op->bytes = Encode(reply);
  op->peer = peer;
  unsent_.push_back(op);
  SendQueued();
}

void BlockServer::SendQueued() {
  while (!unsent_.empty()) {
    ServerOp* op = unsent_.front();
    const absl::Status s =
        fabric_->Send(op->bytes.data(), op->bytes.size(), nullptr, op->peer, op);
    if (absl::IsResourceExhausted(s)) return;  // after the next Poll
    unsent_.pop_front();
    if (!s.ok()) {
      Log(absl::StrCat("strata-blockd: cannot send a reply: ", s.message()));
      delete op;
      continue;
    }
    ++sends_in_flight_;
  }
}

bool BlockServer::CountDropped() {
  ++malformed_;
  return (malformed_ & (malformed_ - 1)) == 0;  // the 1st, 2nd, 4th, ...
}

void BlockServer::Log(std::string_view line) const {
  if (config_.log) config_.log(line);
}

}  // namespace strata::tiers::remote
