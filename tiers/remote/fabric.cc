#include "tiers/remote/fabric.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace strata::tiers::remote {
namespace {

absl::Status FiError(int rc, std::string_view what) {
  const int err = rc < 0 ? -rc : rc;
  const absl::StatusCode code = err == FI_ENOMEM        ? absl::StatusCode::kResourceExhausted
                                : err == FI_ENODATA     ? absl::StatusCode::kNotFound
                                : err == FI_ETIMEDOUT   ? absl::StatusCode::kDeadlineExceeded
                                : err == FI_EACCES || err == FI_EPERM
                                    ? absl::StatusCode::kPermissionDenied
                                    : absl::StatusCode::kUnavailable;
  return absl::Status(code, absl::StrCat("libfabric: ", Sv(what), ": ",
                                         fi_strerror(err), " (", err, ")"));
}

absl::Status QueueFull(std::string_view what) {
  return absl::ResourceExhaustedError(
      absl::StrCat("libfabric: ", Sv(what), " queue full"));
}

absl::Status Closed() {
  return absl::FailedPreconditionError("libfabric: the endpoint is closed");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Fabric>> Fabric::Open(const Config& config) {
  std::unique_ptr<Fabric> f(new Fabric);
  if (absl::Status s = f->Init(config); !s.ok()) return s;
  return f;
}

absl::Status Fabric::Init(const Config& config) {
  fi_info* hints = fi_allocinfo();
  if (hints == nullptr) return absl::ResourceExhaustedError("libfabric: fi_allocinfo");
  hints->ep_attr->type = FI_EP_RDM;
  hints->caps = FI_MSG | FI_RMA;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->domain_attr->mr_mode =
      FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
  hints->fabric_attr->prov_name = strdup(config.provider.c_str());
  const char* node = config.node.empty() ? nullptr : config.node.c_str();
  const char* service = config.service.empty() ? nullptr : config.service.c_str();
  const int rc = fi_getinfo(FI_VERSION(1, 17), node, service,
                            config.listen ? FI_SOURCE : 0, hints, &info_);
  fi_freeinfo(hints);
  if (rc != 0) {
    return FiError(rc, absl::StrCat("no provider '", config.provider,
                                    "' for ", config.node, ":", config.service,
                                    " (check the provider name and address)"));
  }
  const uint64_t mr_mode = info_->domain_attr->mr_mode;
  virt_addr_ = (mr_mode & FI_MR_VIRT_ADDR) != 0;
  mr_local_ = (mr_mode & FI_MR_LOCAL) != 0;
  prov_key_ = (mr_mode & FI_MR_PROV_KEY) != 0;
  int r = fi_fabric(info_->fabric_attr, &fabric_, nullptr);
  if (r != 0) return FiError(r, "fi_fabric");
  if ((r = fi_domain(fabric_, info_, &domain_, nullptr)) != 0) return FiError(r, "fi_domain");
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_MSG;
  cq_attr.wait_obj = config.wait_in_kernel ? FI_WAIT_UNSPEC : FI_WAIT_NONE;
  cq_attr.size = 1024;
  r = fi_cq_open(domain_, &cq_attr, &cq_, nullptr);
  if (r != 0 && config.wait_in_kernel) {  // no wait object here: spin
    cq_attr.wait_obj = FI_WAIT_NONE;
    r = fi_cq_open(domain_, &cq_attr, &cq_, nullptr);
  }
  if (r != 0) return FiError(r, "fi_cq_open");
  wait_in_kernel_ = cq_attr.wait_obj != FI_WAIT_NONE;
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_MAP;
  if ((r = fi_av_open(domain_, &av_attr, &av_, nullptr)) != 0) return FiError(r, "fi_av_open");
  if ((r = fi_endpoint(domain_, info_, &ep_, nullptr)) != 0) return FiError(r, "fi_endpoint");
  if ((r = fi_ep_bind(ep_, &cq_->fid, FI_TRANSMIT | FI_RECV)) != 0) return FiError(r, "fi_ep_bind cq");
  if ((r = fi_ep_bind(ep_, &av_->fid, 0)) != 0) return FiError(r, "fi_ep_bind av");
  if ((r = fi_enable(ep_)) != 0) return FiError(r, "fi_enable");
  char name[256];
  size_t len = sizeof name;
  if ((r = fi_getname(&ep_->fid, name, &len)) != 0) return FiError(r, "fi_getname");
  address_.assign(name, len);
  return absl::OkStatus();
}

Fabric::~Fabric() {
  if (ep_ != nullptr) fi_close(&ep_->fid);
  if (av_ != nullptr) fi_close(&av_->fid);
  if (cq_ != nullptr) fi_close(&cq_->fid);
  if (domain_ != nullptr) fi_close(&domain_->fid);
  if (fabric_ != nullptr) fi_close(&fabric_->fid);
  if (info_ != nullptr) fi_freeinfo(info_);
}

std::string Fabric::DescribeAddress() const {
  if (address_.size() >= sizeof(sockaddr_in)) {
    sockaddr_in sin;
    std::memcpy(&sin, address_.data(), sizeof sin);
    if (sin.sin_family == AF_INET) {
      char ip[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &sin.sin_addr, ip, sizeof ip);
      return absl::StrCat(ip, ":", ntohs(sin.sin_port));
    }
  }
  return absl::StrCat("(", address_.size(), "-byte fabric address)");
}

std::string Fabric::provider() const { return info_->fabric_attr->prov_name; }

absl::StatusOr<fi_addr_t> Fabric::Insert(std::string_view address) {
  if (address.empty() || address.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "libfabric: a peer address of ", address.size(), " bytes"));
  }
  fi_addr_t peer = FI_ADDR_UNSPEC;
  const int n = fi_av_insert(av_, address.data(), 1, &peer, 0, nullptr);
  if (n != 1) return FiError(n < 0 ? n : -FI_EINVAL, "fi_av_insert");
  return peer;
}

absl::StatusOr<fi_addr_t> Fabric::Resolve(const std::string& node,
                                          const std::string& service) {
  fi_info* hints = fi_dupinfo(info_);
  if (hints == nullptr) return absl::ResourceExhaustedError("libfabric: fi_dupinfo");
  fi_info* found = nullptr;
  const int rc = fi_getinfo(FI_VERSION(1, 17), node.c_str(), service.c_str(), 0,
                            hints, &found);
  fi_freeinfo(hints);
  if (rc != 0) return FiError(rc, absl::StrCat("resolving ", node, ":", service));
  absl::StatusOr<fi_addr_t> peer =
      found->dest_addr == nullptr
          ? absl::StatusOr<fi_addr_t>(absl::NotFoundError(absl::StrCat(
                "libfabric: no address for ", node, ":", service)))
          : Insert(std::string_view(static_cast<const char*>(found->dest_addr),
                                    found->dest_addrlen));
  fi_freeinfo(found);
  return peer;
}

void Fabric::CloseEndpoint() {
  if (ep_ != nullptr) fi_close(&ep_->fid);
  ep_ = nullptr;
}

void Fabric::Wake() {
  if (wait_in_kernel_) (void)fi_cq_signal(cq_);
}

void Fabric::Remove(fi_addr_t peer) { (void)fi_av_remove(av_, &peer, 1, 0); }

absl::StatusOr<Fabric::Region> Fabric::Register(void* base, size_t bytes,
                                                uint64_t access, uint64_t key) {
  Region region;
  const int r = fi_mr_reg(domain_, base, bytes, access, 0, key, 0, &region.mr, nullptr);
  if (r != 0) return FiError(r, absl::StrCat("fi_mr_reg of ", bytes, " bytes"));
  region.desc = fi_mr_desc(region.mr);
  region.key = fi_mr_key(region.mr);
  return region;
}

void Fabric::Unregister(Region& region) {
  if (region.mr != nullptr) fi_close(&region.mr->fid);
  region = Region{};
}

bool Fabric::Retry(ssize_t rc) { return rc == -FI_EAGAIN; }

absl::Status Fabric::PostRecv(void* buf, size_t bytes, Op* op) {
  if (ep_ == nullptr) return Closed();
  const ssize_t rc = fi_recv(ep_, buf, bytes, nullptr, FI_ADDR_UNSPEC, &op->context);
  if (rc == 0) return absl::OkStatus();
  if (Retry(rc)) return QueueFull("receive");
  return FiError(static_cast<int>(rc), "fi_recv");
}

absl::Status Fabric::Send(const void* buf, size_t bytes, void* desc,
                          fi_addr_t peer, Op* op) {
  if (ep_ == nullptr) return Closed();
  const ssize_t rc = fi_send(ep_, buf, bytes, desc, peer, &op->context);
  if (rc == 0) return absl::OkStatus();
  if (Retry(rc)) return QueueFull("send");
  return FiError(static_cast<int>(rc), "fi_send");
}

absl::Status Fabric::Read(void* buf, size_t bytes, void* desc, fi_addr_t peer,
                          uint64_t remote_addr, uint64_t key, Op* op) {
  if (ep_ == nullptr) return Closed();
  const ssize_t rc = fi_read(ep_, buf, bytes, desc, peer, remote_addr, key, &op->context);
  if (rc == 0) return absl::OkStatus();
  if (Retry(rc)) return QueueFull("RMA");
  return FiError(static_cast<int>(rc), "fi_read");
}

absl::Status Fabric::Write(const void* buf, size_t bytes, void* desc,
                           fi_addr_t peer, uint64_t remote_addr, uint64_t key,
                           Op* op) {
  if (ep_ == nullptr) return Closed();
  const ssize_t rc = fi_write(ep_, buf, bytes, desc, peer, remote_addr, key, &op->context);
  if (rc == 0) return absl::OkStatus();
  if (Retry(rc)) return QueueFull("RMA");
  return FiError(static_cast<int>(rc), "fi_write");
}

int Fabric::Poll(Op** out, int max, int timeout_ms) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  fi_cq_msg_entry entries[16];
  if (max > 16) max = 16;
  if (ep_ == nullptr) {
    // Closed: the queue belongs to no endpoint (rxm crashes reading it).
    std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
    return 0;
  }
  // fi_cq_sread drives the provider's progress too, and sleeps on its
  // sockets (or device) until something completes, the time is up or Wake.
  const bool sleep = wait_in_kernel_ && timeout_ms > 0;
  for (int spins = 0;; ++spins) {
    // The clock only where a wait needs it: a driving pinner polls with no
    // timeout, in a loop.
    const int64_t left_ms =
        sleep ? std::chrono::ceil<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now()).count()
              : 0;
    const ssize_t n =
        left_ms > 0 ? fi_cq_sread(cq_, entries, static_cast<size_t>(max), nullptr,
                                  static_cast<int>(left_ms))
                    : fi_cq_read(cq_, entries, static_cast<size_t>(max));
    if (n > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        Op* op = static_cast<Op*>(entries[i].op_context);
        op->status = absl::OkStatus();
        op->length = entries[i].len;
        out[i] = op;
      }
      return static_cast<int>(n);
    }
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry err{};
      if (fi_cq_readerr(cq_, &err, 0) == 1 && err.op_context != nullptr) {
        Op* op = static_cast<Op*>(err.op_context);
        op->status = FiError(err.err, absl::StrCat(
            "operation failed (", fi_cq_strerror(cq_, err.prov_errno, err.err_data,
                                                  nullptr, 0), ")"));
        op->length = err.len;
        out[0] = op;
        return 1;
      }
      continue;
    }
    // A wait in the kernel that ended without a completion: the time is
    // up, or Wake.
    if (sleep || std::chrono::steady_clock::now() >= deadline) return 0;
    // The tcp provider progresses in this call: spin briefly, then nap.
    if (spins > 64) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace strata::tiers::remote
