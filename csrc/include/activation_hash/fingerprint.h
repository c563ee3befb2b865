// The 128-bit fingerprint of a code row, shared by the CPU and CUDA kernels (header-only,
// __host__ __device__). activation_hash/reference.py (fingerprint128) is the same function in
// pure PyTorch, bit for bit.
//
// Two independent 64-bit streams run over the words of a row. For word w and stream s:
//     k = rotl(w * M[s], R1[s]) * N[s];   h = rotl(h ^ k, R2[s]) * 5 + D[s]
// from h = SEED[s]; the fingerprint of the first m words is fmix(h ^ m) for each stream, with
//     fmix(h): h ^= h >> 32; h *= F1; h ^= h >> 29; h *= F2; h ^= h >> 32.
// All arithmetic is on uint64 (wrapping). Not a cryptographic hash: it spreads codes uniformly,
// and the collision code verifies full rows anyway.
#pragma once
#include <cstdint>

#include "activation_hash/bits.h"

namespace activation_hash::fp {

constexpr uint64_t kM0 = 0xE71B9592244ECECBull, kM1 = 0xFF3F3F8CFE53B313ull;
constexpr uint64_t kN0 = 0x3FCB4B70F79A7FFDull, kN1 = 0xE427F474114D9FCFull;
constexpr uint64_t kSeed0 = 0x3BCE14AB261DB1D5ull, kSeed1 = 0x15D25341EDC5FE85ull;
constexpr uint64_t kD0 = 0x2A438F2A3172F443ull, kD1 = 0x23EB71643AC5C727ull;
constexpr uint64_t kF1 = 0xF4A3CC3052800E05ull, kF2 = 0x09C9C31AE2F93909ull;

AH_HD inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

AH_HD inline uint64_t fmix(uint64_t h) {
  h ^= h >> 32;
  h *= kF1;
  h ^= h >> 29;
  h *= kF2;
  return h ^ (h >> 32);
}

struct State {
  uint64_t h0 = kSeed0, h1 = kSeed1;

  AH_HD inline void add(uint64_t w) {
    const uint64_t k0 = rotl(w * kM0, 31) * kN0;
    const uint64_t k1 = rotl(w * kM1, 33) * kN1;
    h0 = rotl(h0 ^ k0, 27) * 5 + kD0;
    h1 = rotl(h1 ^ k1, 29) * 5 + kD1;
  }
  // The fingerprint of the m words added so far: out[0], out[1] (as int64 bits).
  AH_HD inline void emit(int64_t m, int64_t* out) const {
    out[0] = static_cast<int64_t>(fmix(h0 ^ static_cast<uint64_t>(m)));
    out[1] = static_cast<int64_t>(fmix(h1 ^ static_cast<uint64_t>(m)));
  }
};

// Fingerprints of row `row` (W words at codes + row * W): for each p < P, the fingerprint of
// its first ends[p] words goes to out[(row * P + p) * 2 + {0, 1}]. ends is non-decreasing.
AH_HD inline void fingerprint_row(const int64_t* codes, int64_t W, const int64_t* ends,
                                  int64_t P, int64_t row, int64_t* out) {
  const int64_t* x = codes + row * W;
  int64_t* o = out + row * P * 2;
  State s;
  int64_t p = 0;
  for (int64_t j = 0; p < P; ++j) {
    while (p < P && ends[p] == j) {
      s.emit(j, o + 2 * p);
      ++p;
    }
    if (p == P || j == W) break;
    s.add(static_cast<uint64_t>(x[j]));
  }
}

// Stream 0 alone (the sort key): one word into h, and the key of a full row of W words from h
// with the low `index_bits` bits replaced by the row index (row < 2^index_bits).
AH_HD inline uint64_t key_add(uint64_t h, uint64_t w) {
  return rotl(h ^ (rotl(w * kM0, 31) * kN0), 27) * 5 + kD0;
}
AH_HD inline int64_t key_finish(uint64_t h, int64_t W, int64_t row, int index_bits) {
  const uint64_t low = index_bits >= 64 ? ~uint64_t(0) : (uint64_t(1) << index_bits) - 1;
  const uint64_t f = fmix(h ^ static_cast<uint64_t>(W));
  return static_cast<int64_t>((f & ~low) | (static_cast<uint64_t>(row) & low));
}

// Sort key of row `row`: stream 0 of its fingerprint (all W words) with the low `index_bits`
// bits replaced by the row index (row < 2^index_bits). One value sort of these keys groups
// rows of equal fingerprint prefix and carries the permutation in the low bits.
AH_HD inline int64_t key_of_row(const int64_t* codes, int64_t W, int64_t row, int index_bits) {
  const int64_t* x = codes + row * W;
  uint64_t h = kSeed0;
  for (int64_t j = 0; j < W; ++j) h = key_add(h, static_cast<uint64_t>(x[j]));
  return key_finish(h, W, row, index_bits);
}

}  // namespace activation_hash::fp
