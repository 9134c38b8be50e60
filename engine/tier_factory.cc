#include "engine/tier_factory.h"

#include "absl/strings/str_cat.h"
#include "engine/testing.h"
#include "util/strings.h"
#include "strata_config.h"
#include "tiers/host/host_tier.h"
#include "tiers/nvme/io_backend.h"
#include "tiers/nvme/nvme_tier.h"
#include "strata_config.h"
#if STRATA_HAVE_FABRIC
#include "tiers/remote/remote_tier.h"
#include "tiers/remote/replicated_tier.h"
#endif
#include "util/status_macros.h"

#include "tiers/gpu/gpu_tier.h"
#if STRATA_HAVE_CUDA
#include "tiers/gpu/cuda_device.h"
#endif

namespace strata::internal {
namespace {

// The GPU tier over `device`, or over CUDA's device `options.gpu.device`
// when it is null.
absl::StatusOr<std::unique_ptr<tiers::Tier>> BuildGpu(
    const EngineOptions& options, std::shared_ptr<tiers::GpuDevice> device) {
  if (device == nullptr) {
#if STRATA_HAVE_CUDA
    STRATA_ASSIGN_OR_RETURN(device, tiers::OpenCudaDevice(options.gpu.device));
#else
    return absl::UnimplementedError(
        "tier gpu: this Strata was built without CUDA; rebuild with "
        "-Dcuda=enabled (CUDA toolkit at /usr/local/cuda) or leave Tier::kGpu "
        "out of EngineOptions::tiers");
#endif
  }
  STRATA_ASSIGN_OR_RETURN(
      auto gpu, tiers::GpuTier::Create({.capacity_bytes = options.gpu.capacity_bytes,
                                        .capacity_fraction = options.gpu.capacity_fraction,
                                        .stream_wait_timeout = options.io_timeout,
                                        .log = options.log},
                                       std::move(device)));
  return std::unique_ptr<tiers::Tier>(std::move(gpu));
}

absl::StatusOr<std::unique_ptr<tiers::Tier>> Build(
    Tier kind, const EngineOptions& options,
    TierOverrides& overrides) {
  switch (kind) {
    case Tier::kHost: {
      STRATA_ASSIGN_OR_RETURN(
          auto host, tiers::HostTier::Create({.capacity_bytes = options.host.capacity_bytes,
                                              .numa_node = options.host.numa_node,
                                              .huge_pages = options.host.huge_pages,
                                              .log = options.log}));
      return std::unique_ptr<tiers::Tier>(std::move(host));
    }
    case Tier::kNvme: {
      tiers::NvmeConfig config;
      config.path = options.nvme.path;
      config.capacity_bytes = options.nvme.capacity_bytes;
      config.queue_depth = options.nvme.queue_depth;
      config.register_buffers = options.nvme.register_buffers;
      config.log = options.log;
      return tiers::MakeNvmeTier(config, std::move(overrides.nvme_backend));
    }
#if STRATA_HAVE_FABRIC
    case Tier::kRemote: {
      const RemoteTierOptions& r = options.remote;
      if (r.bootstrap != nullptr && !r.servers.empty()) {
        return absl::InvalidArgumentError(
            "remote.servers and remote.bootstrap are both set; name the "
            "servers one way (a list is StaticBootstrap(servers))");
      }
      // The list given is the static bootstrap; MPI's (strata/mpi.h) or a
      // file's come in through remote.bootstrap.
      const std::shared_ptr<const Bootstrap> bootstrap =
          r.bootstrap != nullptr ? r.bootstrap : StaticBootstrap(r.servers);
      STRATA_ASSIGN_OR_RETURN(const std::vector<std::string> servers,
                              bootstrap->Servers());
      if (servers.empty()) {
        return absl::InvalidArgumentError(
            "remote.servers is empty; name the strata-blockd servers as "
            "host:port (or give remote.bootstrap), or leave Tier::kRemote "
            "out of tiers");
      }
      const tiers::RemoteConfig config{.provider = r.provider,
                                       .server = servers[0],
                                       .secret = r.secret,
                                       .capacity_bytes = r.capacity_bytes,
                                       .reconnect_backoff = r.reconnect_backoff,
                                       .log = options.log};
      if (servers.size() == 1 && r.replication == 1) {
        return tiers::MakeRemoteTier(config);
      }
      return tiers::MakeReplicatedRemoteTier(config, servers, r.replication);
    }
#endif
    case Tier::kGpu:
      return BuildGpu(options, overrides.gpu_device);
    default:
      return absl::UnimplementedError(absl::StrCat(
          "tier ", Sv(TierName(kind)), " is not built in this version of Strata; "
          "leave it out of EngineOptions::tiers"));
  }
}

}  // namespace

TierOverrides::TierOverrides() = default;
TierOverrides::~TierOverrides() = default;
TierOverrides::TierOverrides(TierOverrides&&) noexcept = default;
TierOverrides& TierOverrides::operator=(TierOverrides&&) noexcept = default;

absl::StatusOr<std::unique_ptr<TierChain>> BuildChain(
    const EngineOptions& options, TierOverrides overrides) {
  if (overrides.tiers.contains(Tier::kHost)) {
    return absl::InvalidArgumentError(
        "the host tier cannot be replaced: it is the engine's staging arena");
  }
  std::vector<ChainLink> links;
  for (Tier kind : options.tiers) {
    // The node segment is not a column of the chain (engine/shared_tensors.h);
    // tests may still put a tier of their own in its slot.
    if (kind == Tier::kShm && !overrides.tiers.contains(kind)) continue;
    ChainLink link{.kind = kind};
    if (auto it = overrides.tiers.find(kind); it != overrides.tiers.end()) {
      link.tier = std::move(it->second);
    } else {
      STRATA_ASSIGN_OR_RETURN(link.tier,
                              Build(kind, options, overrides));
    }
    links.push_back(std::move(link));
  }
  auto chain = std::make_unique<TierChain>(std::move(links));
  tiers::Tier& host = chain->tier(chain->host());
  for (int pos = 0; pos < chain->size(); ++pos) {
    if (pos == chain->host()) continue;
    if (chain->kind(pos) == Tier::kNvme && !options.nvme.register_buffers) continue;
    absl::Status registered =
        chain->tier(pos).RegisterHostMemory(static_cast<tiers::HostTier&>(host).arena());
    if (!registered.ok() && options.log) {
      options.log(absl::StrCat(
          "strata: host arena not registered with tier ", Sv(TierName(chain->kind(pos))),
          " (", registered.message(), "); its transfers go on with unregistered "
          "buffers"));
    }
  }
  return chain;
}

}  // namespace strata::internal

namespace strata::testing {

absl::StatusOr<std::unique_ptr<Engine>> OpenWithBackend(
    EngineOptions options, std::unique_ptr<tiers::IoBackend> nvme_backend) {
  internal::TierOverrides overrides;
  overrides.nvme_backend = std::move(nvme_backend);
  return OpenWithTiers(std::move(options), std::move(overrides));
}

}  // namespace strata::testing
