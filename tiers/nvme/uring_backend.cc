// The liburing implementation of IoBackend (see io_backend.h for the thread
// contract: one submission-side thread at a time, one reaping thread).
#include <liburing.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "tiers/nvme/io_backend.h"
#include "util/errors.h"

namespace strata::tiers {
namespace {

class UringBackend final : public IoBackend {
 public:
  UringBackend() = default;
  ~UringBackend() override {
    if (open_) io_uring_queue_exit(&ring_);
  }

  absl::Status Open(int fd, uint32_t queue_depth) override {
    io_uring_params params;
    std::memset(&params, 0, sizeof(params));
    // The CQ holds twice the SQ: the tier never has more than queue_depth
    // operations in flight, so completions cannot overflow.
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = 2 * queue_depth;
    int rc = io_uring_queue_init_params(queue_depth, &ring_, &params);
    if (rc < 0) {
      return ErrnoStatus(
          -rc, absl::StrCat("tier nvme: io_uring is unusable (io_uring_setup "
                            "with ", queue_depth, " entries failed)"),
          "the nvme tier needs io_uring (Linux >= 5.6, not disabled by "
          "kernel.io_uring_disabled or a seccomp filter)");
    }
    open_ = true;
    fd_ = fd;
    ext_arg_ = (params.features & IORING_FEAT_EXT_ARG) != 0;

    io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
    if (probe == nullptr) {
      return absl::FailedPreconditionError(
          "tier nvme: io_uring is unusable: the kernel cannot report which "
          "operations it supports (IORING_REGISTER_PROBE, Linux >= 5.6 needed)");
    }
    struct {
      int op;
      const char* name;
    } const needed[] = {{IORING_OP_NOP, "NOP"},
                        {IORING_OP_READ, "READ"},
                        {IORING_OP_WRITE, "WRITE"},
                        {IORING_OP_READ_FIXED, "READ_FIXED"},
                        {IORING_OP_WRITE_FIXED, "WRITE_FIXED"}};
    for (const auto& n : needed) {
      if (!io_uring_opcode_supported(probe, n.op)) {
        io_uring_free_probe(probe);
        return absl::FailedPreconditionError(absl::StrCat(
            "tier nvme: io_uring is unusable: the kernel does not support "
            "IORING_OP_",
            n.name, " (Linux >= 5.6 needed)"));
      }
    }
    io_uring_free_probe(probe);
    return absl::OkStatus();
  }

  absl::Status RegisterFile() override {
    int rc = io_uring_register_files(&ring_, &fd_, 1);
    if (rc < 0) {
      return ErrnoStatus(-rc, "tier nvme: io_uring_register_files failed");
    }
    fixed_file_ = true;
    return absl::OkStatus();
  }

  absl::Status RegisterBuffers(std::span<const iovec> buffers) override {
    int rc = io_uring_register_buffers(&ring_, buffers.data(),
                                       static_cast<unsigned>(buffers.size()));
    if (rc < 0) {
      return ErrnoStatus(-rc, "tier nvme: io_uring_register_buffers failed");
    }
    return absl::OkStatus();
  }

  void UnregisterBuffers() override { io_uring_unregister_buffers(&ring_); }

  bool Prepare(const IoOp& op) override {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return false;
    const int fd = fixed_file_ ? 0 : fd_;
    switch (op.kind) {
      case IoOp::Kind::kNop:
        io_uring_prep_nop(sqe);
        break;
      case IoOp::Kind::kRead:
        if (op.buf_index >= 0) {
          io_uring_prep_read_fixed(sqe, fd, op.buf, op.len, op.offset,
                                   op.buf_index);
        } else {
          io_uring_prep_read(sqe, fd, op.buf, op.len, op.offset);
        }
        break;
      case IoOp::Kind::kWrite:
        if (op.buf_index >= 0) {
          io_uring_prep_write_fixed(sqe, fd, op.buf, op.len, op.offset,
                                    op.buf_index);
        } else {
          io_uring_prep_write(sqe, fd, op.buf, op.len, op.offset);
        }
        break;
    }
    if (fixed_file_ && op.kind != IoOp::Kind::kNop) {
      io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
    }
    io_uring_sqe_set_data64(sqe, op.user_data);
    return true;
  }

  absl::StatusOr<uint32_t> Submit() override {
    int rc = io_uring_submit(&ring_);
    if (rc < 0) return ErrnoStatus(-rc, "tier nvme: io_uring_submit failed");
    return static_cast<uint32_t>(rc);
  }

  absl::Status Reap(std::vector<IoCompletion>& out,
                    absl::Duration timeout) override {
    io_uring_cqe* cqe = nullptr;
    int rc;
    if (ext_arg_) {
      // With IORING_FEAT_EXT_ARG the timeout travels in io_uring_enter and
      // takes no SQE (which would race with the submission side).
      const timespec t = absl::ToTimespec(timeout);
      __kernel_timespec ts{};
      ts.tv_sec = t.tv_sec;
      ts.tv_nsec = t.tv_nsec;
      rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    } else {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    }
    if (rc == -ETIME || rc == -EINTR || rc == -EAGAIN) return absl::OkStatus();
    if (rc < 0) return ErrnoStatus(-rc, "tier nvme: io_uring_wait_cqe failed");
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      out.push_back({io_uring_cqe_get_data64(cqe), cqe->res});
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    return absl::OkStatus();
  }

 private:
  io_uring ring_;
  bool open_ = false;
  bool ext_arg_ = false;
  bool fixed_file_ = false;
  int fd_ = -1;
};

}  // namespace

std::unique_ptr<IoBackend> MakeUringBackend() {
  return std::make_unique<UringBackend>();
}

}  // namespace strata::tiers
