// Turning system error numbers into Status values with a useful message.
#ifndef STRATA_UTIL_ERRORS_H_
#define STRATA_UTIL_ERRORS_H_

#include <string_view>

#include "absl/status/status.h"

namespace strata {

// Like absl::ErrnoToStatus, but maps the errors a storage engine meets to the
// codes STYLE.md asks for (ENOSPC/EDQUOT: kResourceExhausted, EAGAIN/EINTR/
// EBUSY: kUnavailable, EIO: kDataLoss is *not* used: an EIO says nothing about
// the bytes, so it is kInternal with the errno named). The message is
// "<what>: <strerror> (<ENAME>)" followed by `advice` when it is not empty.
absl::Status ErrnoStatus(int err, std::string_view what,
                         std::string_view advice = {});

}  // namespace strata

#endif  // STRATA_UTIL_ERRORS_H_
