// The catalog: tensors by name and by id, their handles, and the gates that
// send a tensor's pins off the hot path.
//
// Names are looked up when a tensor is created or opened, never on a pin
// (the handle leads straight to the tensor's block table). Ids are never
// reused, so a policy key of a dropped tensor can never name a new one.
// Creating, opening and dropping cost O(1) amortized.
//
// Threads: thread-safe; one reader-writer mutex, held for map operations
// only (Find, called by eviction for every candidate, takes it shared).
#ifndef STRATA_ENGINE_CATALOG_H_
#define STRATA_ENGINE_CATALOG_H_

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "api/strata/strata.h"
#include "engine/block_table.h"
#include "engine/parts.h"

namespace strata::internal {

class Catalog {
 public:
  Catalog(EngineParts& parts, EngineCore* core) : parts_(parts), core_(core) {}

  // Errors: kInvalidArgument (name, shape, dtype, block size, each named),
  // kAlreadyExists, kResourceExhausted (ids or memory for the table).
  absl::StatusOr<Tensor> Create(std::string_view name, const TensorSpec& spec);
  // kNotFound when no tensor has that name.
  absl::StatusOr<Tensor> Open(std::string_view name) const;
  // Checks a handle: kInvalidArgument (empty or another engine's), kNotFound
  // (dropped, or being dropped).
  absl::StatusOr<TensorState*> Check(const Tensor& tensor) const;

  // Registers the state of a shared tensor's handle (shared_tensors.h): an
  // id for its private copies, and the gates; no name (shared tensors are
  // named in the node segment). kResourceExhausted when ids run out.
  absl::Status AddShared(const std::shared_ptr<TensorState>& ts);

  std::shared_ptr<TensorState> Find(uint32_t id) const;
  std::vector<std::shared_ptr<TensorState>> All() const;
  // Forgets a dropped tensor: its name is free again.
  void Forget(const TensorState& ts);
  // Sets or clears `bit` in the gate of every tensor, and of later ones.
  void SetGate(uint32_t bit, bool on);
  size_t size() const;

  static Tensor Handle(std::shared_ptr<TensorState> ts);

  // Checks a name and spec as Create does; the tensor's bytes and block
  // size (the spec's, or the engine's default) come back.
  absl::Status Validate(std::string_view name, const TensorSpec& spec,
                        uint64_t* bytes, uint64_t* block_bytes) const;

 private:
  EngineParts& parts_;
  EngineCore* const core_;
  const std::shared_ptr<StateArena> arena_ = std::make_shared<StateArena>();
  mutable std::shared_mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<TensorState>> by_name_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<TensorState>> by_id_;
  uint32_t next_id_ = 0;
  uint32_t gate_ = 0;  // for new tensors
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_CATALOG_H_
