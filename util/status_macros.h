// The two Status macros Abseil 20220623 lacks, defined once for the project.
#ifndef STRATA_UTIL_STATUS_MACROS_H_
#define STRATA_UTIL_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define STRATA_CONCAT_INNER_(a, b) a##b
#define STRATA_CONCAT_(a, b) STRATA_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function if it is not OK.
#define STRATA_RETURN_IF_ERROR(expr)                      \
  do {                                                    \
    if (absl::Status strata_status_ = (expr);             \
        !strata_status_.ok()) {                           \
      return strata_status_;                              \
    }                                                     \
  } while (0)

// `STRATA_ASSIGN_OR_RETURN(auto x, F());` declares x from an OK StatusOr, or
// returns its status.
#define STRATA_ASSIGN_OR_RETURN(lhs, expr) \
  STRATA_ASSIGN_OR_RETURN_IMPL_(STRATA_CONCAT_(strata_or_, __LINE__), lhs, expr)
#define STRATA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();      \
  lhs = std::move(tmp).value()

#endif  // STRATA_UTIL_STATUS_MACROS_H_
