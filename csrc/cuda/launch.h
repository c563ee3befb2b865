// Launch configuration shared by the .cu files: grid-stride kernels with a capped grid.
#pragma once
#include <cstdint>

namespace activation_hash::cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// Blocks for `threads` threads of work, at most kMaxBlocks (the kernels loop over the rest).
inline unsigned grid_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

}  // namespace activation_hash::cuda
