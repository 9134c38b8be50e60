// A libfabric endpoint with what the remote tier and strata-blockd need of
// it, and nothing else: one reliable-datagram endpoint (FI_EP_RDM) with
// messages (the control protocol) and RMA (the block bytes), its address
// vector and one completion queue.
//
// Provider: whatever fi_getinfo offers for the name asked ("tcp;ofi_rxm" on
// loopback here; verbs, efa or cxi on clusters). Memory registrations take
// the key the caller asks (one per allocation, so a client can reach only
// what it was given); the code handles providers that address registered
// memory by offset (FI_MR_SCALABLE style) and by virtual address.
//
// Every operation carries a `Fabric::Op` (the caller's, alive until its
// completion); Poll hands completed ones back with their status.
//
// Threads: FI_THREAD_SAFE: posting and polling from several threads.
#ifndef STRATA_TIERS_REMOTE_FABRIC_H_
#define STRATA_TIERS_REMOTE_FABRIC_H_

#include <rdma/fabric.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct fid_domain;
struct fid_av;
struct fid_cq;
struct fid_ep;
struct fid_mr;

namespace strata::tiers::remote {

class Fabric {
 public:
  struct Config {
    std::string provider = "tcp;ofi_rxm";
    // Listen: the address to bind ("127.0.0.1", "0" for any free port);
    // connect: the local side is chosen by the provider.
    std::string node;
    std::string service;
    bool listen = false;
    // Poll with a timeout waits in the kernel (the completion queue's wait
    // object, fi_cq_sread) instead of spinning. For a thread that only
    // waits for completions (the block server's thread): on a software
    // provider it leaves the CPU to the threads that post and to the peer.
    // Where the provider has no wait object, Poll spins. The price: the
    // provider signals the wait object on each completion, which a thread
    // that polls without waiting pays too (so the remote tier's queue has
    // none; its progress thread sleeps on a condition variable).
    bool wait_in_kernel = false;
  };
  // One operation in flight. Embed it first in the caller's own record.
  struct Op {
    fi_context2 context;  // libfabric's: keep first
    absl::Status status;
    size_t length = 0;    // bytes received (messages)
  };
  // A registered region.
  struct Region {
    fid_mr* mr = nullptr;
    void* desc = nullptr;  // local descriptor, or null
    uint64_t key = 0;
  };

  static absl::StatusOr<std::unique_ptr<Fabric>> Open(const Config& config);
  ~Fabric();
  Fabric(const Fabric&) = delete;
  Fabric& operator=(const Fabric&) = delete;

  // This endpoint's address, as peers insert it; and as text "ip:port".
  const std::string& address() const { return address_; }
  std::string DescribeAddress() const;
  std::string provider() const;

  // A peer's address (from its hello, or from a node and service).
  absl::StatusOr<fi_addr_t> Insert(std::string_view address);
  absl::StatusOr<fi_addr_t> Resolve(const std::string& node,
                                    const std::string& service);
  void Remove(fi_addr_t peer);

  // Registers [base, base + bytes) for `access` (FI_READ | FI_WRITE |
  // FI_REMOTE_READ | FI_REMOTE_WRITE) with `key` where the provider lets the
  // caller choose keys.
  absl::StatusOr<Region> Register(void* base, size_t bytes, uint64_t access,
                                  uint64_t key);
  static void Unregister(Region& region);
  // Whether remote addresses are virtual addresses (else offsets into the
  // region).
  bool virtual_addresses() const { return virt_addr_; }
  // Whether local buffers must be registered (FI_MR_LOCAL).
  bool local_registration() const { return mr_local_; }

  // Post a receive / a send / an RMA read or write. kResourceExhausted when
  // the provider's queue is full (try again after Poll), another error when
  // the operation cannot be posted at all. No completion comes for an op whose
  // post failed.
  absl::Status PostRecv(void* buf, size_t bytes, Op* op);
  absl::Status Send(const void* buf, size_t bytes, void* desc, fi_addr_t peer,
                    Op* op);
  absl::Status Read(void* buf, size_t bytes, void* desc, fi_addr_t peer,
                    uint64_t remote_addr, uint64_t key, Op* op);
  absl::Status Write(const void* buf, size_t bytes, void* desc, fi_addr_t peer,
                     uint64_t remote_addr, uint64_t key, Op* op);

  // Closes the endpoint: the provider lets go of every posted buffer, no
  // completion comes for what was in flight, and every later post fails.
  // Callers must not post concurrently (the remote tier holds a lock).
  void CloseEndpoint();

  // Completed operations, up to `max`, waiting up to `timeout_ms` for the
  // first one (0: do not wait). Also drives the provider's progress. After
  // CloseEndpoint, none (call it from the thread that closed).
  int Poll(Op** out, int max, int timeout_ms);
  // Ends a Poll that sleeps in the kernel now (another thread has work for
  // the polling one). Does nothing where Poll spins.
  void Wake();
  // Whether Poll's waits sleep in the kernel (Config::wait_in_kernel, and
  // the provider has a wait object).
  bool waits_in_kernel() const { return wait_in_kernel_; }

 private:
  Fabric() = default;
  absl::Status Init(const Config& config);
  static bool Retry(ssize_t rc);

  fi_info* info_ = nullptr;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_av* av_ = nullptr;
  fid_cq* cq_ = nullptr;
  fid_ep* ep_ = nullptr;
  std::string address_;
  bool virt_addr_ = false;
  bool mr_local_ = false;
  bool prov_key_ = false;
  bool wait_in_kernel_ = false;
};

}  // namespace strata::tiers::remote

#endif  // STRATA_TIERS_REMOTE_FABRIC_H_
