// The few-row products' shared limit on rows of x, its check, and the dispatch of a runtime row
// count to a kernel compiled for it (one register tile per row).
#ifndef QJAX_NATIVE_FEW_ROWS_H_
#define QJAX_NATIVE_FEW_ROWS_H_

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace qjax {

inline constexpr int64_t kMaxRows = 8;

inline xla::ffi::Error CheckRows(int64_t m, const char* name) {
  if (m < 1 || m > kMaxRows) {
    return xla::ffi::Error::InvalidArgument(std::string(name) + ": x must have 1 to 8 rows");
  }
  return xla::ffi::Error::Success();
}

// Kernel<m>::Run(args...) for m in [1, kMaxRows].
template <template <int> class Kernel, typename... Args>
void DispatchRows(int64_t m, Args&&... args) {
  switch (m) {
    case 1: return Kernel<1>::Run(args...);
    case 2: return Kernel<2>::Run(args...);
    case 3: return Kernel<3>::Run(args...);
    case 4: return Kernel<4>::Run(args...);
    case 5: return Kernel<5>::Run(args...);
    case 6: return Kernel<6>::Run(args...);
    case 7: return Kernel<7>::Run(args...);
    default: return Kernel<8>::Run(args...);
  }
}

}  // namespace qjax

#endif  // QJAX_NATIVE_FEW_ROWS_H_
