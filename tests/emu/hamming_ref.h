// Shared pieces of the Hamming emulation tests (test_hamming.cpp, test_hamming_topk.cpp): code
// generators and the plain C++ reference distance.
#pragma once
#include "harness.h"

#include <cstdint>

namespace hamming_ref {

// How codes are filled:
//   kRandom: random words;
//   kTies:   words from a pool of 4 values (many equal distances);
//   kEqual:  every row a copy of row 0 (one distance for all pairs);
//   kFar:    rows all zeros or all ones (distances 0 or 64 W: the largest there are);
//   kDescending: row r has its first max(0, 64 W - r) bits set (against a zero query the
//                distance falls with the index: every row of a scan is a new best).
enum Fill { kRandom, kTies, kEqual, kFar, kDescending };

inline void fill(emu_test::Buf<uint64_t>& c, emu_test::Rng& r, Fill mode, int64_t W) {
  const uint64_t pool[4] = {0, ~uint64_t(0), 0x0F0F, uint64_t(1) << 63};
  const int64_t rows = W > 0 ? c.size() / W : 0;
  for (int64_t i = 0; i < c.size(); ++i) {
    switch (mode) {
      case kRandom: c[i] = r.next(); break;
      case kTies: case kEqual: c[i] = pool[r.below(4)]; break;
      case kFar: c[i] = (i / W) % 3 == 0 ? 0 : ~uint64_t(0); break;
      case kDescending: {
        const int64_t row = i / W, w = i % W, bits = 64 * W - row;
        const int64_t n = bits - 64 * w;
        c[i] = n <= 0 ? 0 : n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1;
        break;
      }
    }
  }
  if (mode == kEqual)
    for (int64_t i = W; i < rows * W; ++i) c[i] = c[i % W];
}

inline int32_t distance(const uint64_t* a, const uint64_t* b, int64_t W) {
  int32_t s = 0;
  for (int64_t w = 0; w < W; ++w) s += __builtin_popcountll(a[w] ^ b[w]);
  return s;
}

inline const char* fill_name(Fill f) {
  static const char* names[] = {"random", "ties", "equal", "far", "descending"};
  return names[f];
}

}  // namespace hamming_ref
