// Declarations of the CPU ops that bindings.cpp exports as tfprune._C.
#pragma once
#include <torch/extension.h>

#include <utility>

namespace tfprune {

// First (row, group) of `weight` (out, in) whose group of m input weights holds more than n
// non-zeros, or (-1, -1) when the matrix is n:m sparse.
std::pair<int64_t, int64_t> nm_first_violation(const torch::Tensor& weight, int64_t n, int64_t m);

}  // namespace tfprune
