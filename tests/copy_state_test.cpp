// The named transitions of a copy's state word (engine/copy_state.h): each
// is allowed only from the words the block model permits, and leaves the
// bits it must keep. The engine's invariants (at most one dirty copy, a
// dirty copy dropped only after a lower tier acknowledged it) rest on the
// refusals tested here; the stress and chain suites test the protocol that
// uses them.
#include "engine/copy_state.h"

#include "gtest/gtest.h"

namespace strata::internal {
namespace {

using S = CopyState;

constexpr uint64_t Resident(uint64_t flags = 0) { return S::Resident(flags); }

TEST(CopyStateTest, ClaimedAsTargetTakesAbsentOrStaleIdleCopies) {
  EXPECT_EQ(S(S::Absent()).ClaimedAsTarget(), S(0).With(S::kLoading));
  EXPECT_EQ(S(Resident()).ClaimedAsTarget(), S(0).With(S::kLoading));
  // Who waits keeps waiting for the new owner.
  EXPECT_EQ(S(Resident(S::kWaiters)).ClaimedAsTarget(),
            S(S::kWaiters).With(S::kLoading));
}

TEST(CopyStateTest, ClaimedAsTargetRefusesPinnedMovingAndDirtyCopies) {
  EXPECT_EQ(S(Resident() + 1).ClaimedAsTarget(), 0u);  // pinned
  EXPECT_EQ(S(S(0).With(S::kLoading)).ClaimedAsTarget(), 0u);
  EXPECT_EQ(S(S(0).With(S::kEvicting)).ClaimedAsTarget(), 0u);
  EXPECT_EQ(S(Resident(S::kInFlight)).ClaimedAsTarget(), 0u);
  // A dirty copy holds the newest bytes: a write-back whose source lost the
  // mark to it must not write over it (the lost block of 2026-11-30).
  EXPECT_EQ(S(Resident(S::kDirty)).ClaimedAsTarget(), 0u);
}

TEST(CopyStateTest, ClaimedTakesOnlyIdleResidentCopiesAndKeepsTheirMarks) {
  const uint64_t dirty = Resident(S::kDirty | S::kShared);
  EXPECT_EQ(S(S(dirty).Claimed()).state(), S::kEvicting);
  EXPECT_TRUE(S(S(dirty).Claimed()).dirty());
  EXPECT_EQ(S(Resident() + 1).Claimed(), 0u);
  EXPECT_EQ(S(Resident(S::kInFlight)).Claimed(), 0u);
  EXPECT_EQ(S(S::Absent()).Claimed(), 0u);
  // A failed copy holds no bytes: once unpinned it is claimed and dropped.
  EXPECT_NE(S(Resident(S::kFailed)).Claimed(), 0u);
}

TEST(CopyStateTest, WritePinNeedsASoleIdleCopyAndMarksItDirtyAndNew) {
  const S pinned(S(Resident(S::kPrefetched)).WritePinned());
  EXPECT_EQ(pinned.pins(), 1u);
  EXPECT_TRUE(pinned.exclusive() && pinned.dirty() && pinned.is_new());
  EXPECT_FALSE(pinned.prefetched());
  EXPECT_EQ(S(Resident(S::kShared)).WritePinned(), 0u);  // others to drop first
  EXPECT_EQ(S(Resident() + 1).WritePinned(), 0u);          // read-pinned
  EXPECT_EQ(S(Resident(S::kFailed)).WritePinned(), 0u);
  EXPECT_EQ(S(Resident(S::kInFlight)).WritePinned(), 0u);
}

TEST(CopyStateTest, ReadPinsShareButNotWithAWriterOrACopyInFlight) {
  const S two(S(S(Resident(S::kPrefetched)).ReadPinned()).ReadPinned());
  EXPECT_EQ(two.pins(), 2u);
  EXPECT_FALSE(two.prefetched());
  EXPECT_EQ(S(S(Resident()).WritePinned()).ReadPinned(), 0u);
  EXPECT_EQ(S(Resident(S::kInFlight)).ReadPinned(), 0u);
  EXPECT_EQ(S(Resident(S::kInFlight)).ReadPinnedInFlight(),
            Resident(S::kInFlight) + 1);
  EXPECT_EQ(S(Resident(S::kFailed)).ReadPinnedInFlight(), 0u);
  EXPECT_EQ(S(Resident() + S::kPinMask).ReadPinned(), 0u);  // full of pins
  // The engine's own hold for a copy-out leaves the prefetched mark.
  EXPECT_TRUE(S(S(Resident(S::kPrefetched)).HeldForCopy()).prefetched());
}

TEST(CopyStateTest, LoadingOnlyFromAbsentAndLandedOnlyInFlight) {
  EXPECT_EQ(S(S::kWaiters).Loading(), S(S::kWaiters).With(S::kLoading));
  EXPECT_EQ(S(Resident()).Loading(), 0u);
  const uint64_t flying = Resident(S::kInFlight | S::kShared) + 1;
  EXPECT_EQ(S(flying).Landed(true), Resident(S::kShared) + 1);
  EXPECT_EQ(S(flying).Landed(false), Resident(S::kShared | S::kFailed) + 1);
  EXPECT_EQ(S(Resident()).Landed(true), 0u);
}

}  // namespace
}  // namespace strata::internal
