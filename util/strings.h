// Debian's Abseil 20220623 has its own absl::string_view (not an alias of
// std::string_view), so absl::StrCat does not take a std::string_view: Sv()
// hands one over without a copy.
#ifndef STRATA_UTIL_STRINGS_H_
#define STRATA_UTIL_STRINGS_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace strata {

inline absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace strata

#endif  // STRATA_UTIL_STRINGS_H_
