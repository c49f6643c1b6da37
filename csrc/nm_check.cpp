// nm_first_violation: the first (row, group) of a 2-D weight whose group of m consecutive input
// weights holds more than n non-zeros, or (-1, -1) when the whole matrix is n:m sparse.
#include <torch/extension.h>

#include <limits>

#include "nm_core.h"
#include "ops.h"

namespace {

template <typename T>
std::pair<int64_t, int64_t> first_violation(const T* w, int64_t rows, int64_t cols, int n, int m) {
  const int64_t groups = cols / m;
  int64_t first = std::numeric_limits<int64_t>::max();  // row-major flat group index
#pragma omp parallel for reduction(min : first)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      if (tfprune::group_nonzeros(w + r * cols + g * m, m) > n) {
        first = std::min(first, r * groups + g);
        break;
      }
    }
  }
  if (first == std::numeric_limits<int64_t>::max()) return {-1, -1};
  return {first / groups, first % groups};
}

}  // namespace

namespace tfprune {

std::pair<int64_t, int64_t> nm_first_violation(const torch::Tensor& weight, int64_t n, int64_t m) {
  TORCH_CHECK(weight.dim() == 2, "nm_first_violation: weight must be 2-D (out, in), got ", weight.sizes());
  TORCH_CHECK(weight.device().is_cpu(), "nm_first_violation: CPU tensors only, got ", weight.device());
  TORCH_CHECK(0 < n && n < m, "nm_first_violation: need 0 < n < m, got n=", n, " m=", m);
  TORCH_CHECK(weight.size(1) % m == 0, "nm_first_violation: in_features=", weight.size(1),
              " is not a multiple of m=", m);
  auto w = weight.contiguous();
  std::pair<int64_t, int64_t> result;
  const auto run = [&](auto* data) {
    result = first_violation(data, w.size(0), w.size(1), static_cast<int>(n), static_cast<int>(m));
  };
  AT_DISPATCH_SWITCH(w.scalar_type(), "nm_first_violation",
                     AT_DISPATCH_CASE_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kFloat8_e4m3fn,
                                                          [&] { run(w.data_ptr<scalar_t>()); })
                         AT_DISPATCH_CASE(at::kChar, [&] { run(w.data_ptr<scalar_t>()); }));
  return result;
}

}  // namespace tfprune
