// Self-tests of the emulation header: indices, warp collectives against the CUDA programming
// guide's rules, __syncthreads, shared memory, atomics, integer intrinsics, the thread order
// switch, and the loud failures (partial masks, partial warps, divergent syncs).
#include "harness.h"

#include <sys/wait.h>

#include <string>

namespace {

using emu_test::Buf;
using emu_test::Rng;

unsigned linear_tid() { return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y; }
unsigned linear_bid() { return blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y; }

// ------------------------------------------------------------------ indices
__global__ void index_kernel(uint64_t* out) {
  const uint64_t g = uint64_t(linear_bid()) * (blockDim.x * blockDim.y * blockDim.z) + linear_tid();
  out[g] = uint64_t(threadIdx.x) | uint64_t(threadIdx.y) << 10 | uint64_t(threadIdx.z) << 20 |
           uint64_t(blockIdx.x) << 30 | uint64_t(blockIdx.y) << 40 | uint64_t(blockIdx.z) << 50;
}

void test_indices() {
  const dim3 grids[] = {dim3(1), dim3(3, 2), dim3(2, 1, 3)};
  const dim3 blocks[] = {dim3(1), dim3(33), dim3(8, 4), dim3(5, 3, 2), dim3(1024)};
  for (const dim3& g : grids)
    for (const dim3& b : blocks) {
      emu_test::set_case("indices grid=(%u,%u,%u) block=(%u,%u,%u)", g.x, g.y, g.z, b.x, b.y, b.z);
      const int64_t nb = int64_t(g.x) * g.y * g.z, nt = int64_t(b.x) * b.y * b.z;
      Buf<uint64_t> out(nb * nt);
      launch(g, b, index_kernel, out.data());
      bool ok = true;
      for (unsigned bz = 0; bz < g.z; ++bz) for (unsigned by = 0; by < g.y; ++by) for (unsigned bx = 0; bx < g.x; ++bx)
        for (unsigned tz = 0; tz < b.z; ++tz) for (unsigned ty = 0; ty < b.y; ++ty) for (unsigned tx = 0; tx < b.x; ++tx) {
          const uint64_t bl = bx + by * g.x + bz * g.x * g.y, tl = tx + ty * b.x + tz * b.x * b.y;
          const uint64_t want = uint64_t(tx) | uint64_t(ty) << 10 | uint64_t(tz) << 20 |
                                uint64_t(bx) << 30 | uint64_t(by) << 40 | uint64_t(bz) << 50;
          ok = ok && out[int64_t(bl * nt + tl)] == want;
        }
      CHECK(ok, "threadIdx/blockIdx do not match the linear thread and block ids");
    }
}
AH_EMU_SELFTEST(test_indices);

// ------------------------------------------------------------------ shuffles
constexpr int kShflArgs = 8;
const int kIdxArgs[kShflArgs] = {0, 1, 5, 17, 31, 37, -1, -6};
const unsigned kDeltaArgs[kShflArgs] = {0, 1, 2, 3, 8, 16, 31, 40};
const int kXorArgs[kShflArgs] = {0, 1, 3, 5, 16, 31, 32, 63};
const int kWidths[6] = {1, 2, 4, 8, 16, 32};

// out[(t * 6 + wi) * 4 * kShflArgs + op * kShflArgs + a]: source value read by thread t.
template <typename T>
__global__ void shuffle_kernel(const T* in, T* out) {
  const unsigned t = linear_bid() * (blockDim.x * blockDim.y) + linear_tid();
  const T v = in[t];
  for (int wi = 0; wi < 6; ++wi) {
    const int w = kWidths[wi];
    T* o = out + (int64_t(t) * 6 + wi) * 4 * kShflArgs;
    for (int a = 0; a < kShflArgs; ++a) {
      o[0 * kShflArgs + a] = __shfl_sync(0xffffffffu, v, kIdxArgs[a], w);
      o[1 * kShflArgs + a] = __shfl_up_sync(0xffffffffu, v, kDeltaArgs[a], w);
      o[2 * kShflArgs + a] = __shfl_down_sync(0xffffffffu, v, kDeltaArgs[a], w);
      o[3 * kShflArgs + a] = __shfl_xor_sync(0xffffffffu, v, kXorArgs[a], w);
    }
  }
}

// Source lane by the CUDA C++ Programming Guide ("Warp Shuffle Functions"): lanes are split in
// segments of `width`; __shfl_sync reads lane srcLane % width of the segment; up/down read
// lane -/+ delta unless that leaves the segment (then their own value); xor reads lane ^ mask
// unless that is in a later segment (then their own value).
int guide_source(int op, int lane, int arg, int width) {
  const int seg = lane / width * width;
  switch (op) {
    case 0: return seg + (arg & (width - 1));
    case 1: return lane % width >= arg ? lane - arg : lane;
    case 2: return lane % width + arg < width ? lane + arg : lane;
    default: { const int s = lane ^ arg; return s >= seg + width ? lane : s; }
  }
}

template <typename T>
void shuffle_case(const char* type, dim3 grid, dim3 block, Rng& rng) {
  emu_test::set_case("shuffles<%s> grid=%u block=(%u,%u)", type, grid.x, block.x, block.y);
  const int64_t n = int64_t(grid.x) * block.x * block.y;
  Buf<T> in(n), out(n * 6 * 4 * kShflArgs);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = rng.next();
    std::memcpy(&in[i], &r, sizeof(T));
    if (std::is_floating_point<T>::value) in[i] = T(double(r % 100000) - 5e4 + 0.25);
  }
  launch(grid, block, shuffle_kernel<T>, in.data(), out.data());
  std::vector<T> want(size_t(out.size()));
  for (int64_t t = 0; t < n; ++t) {
    const int lane = int(t % 32);
    const int64_t warp0 = t - lane;  // blocks are whole warps here
    for (int wi = 0; wi < 6; ++wi)
      for (int op = 0; op < 4; ++op)
        for (int a = 0; a < kShflArgs; ++a) {
          const int arg = op == 0 ? kIdxArgs[a] : op == 3 ? kXorArgs[a] : int(kDeltaArgs[a]);
          want[size_t(((t * 6 + wi) * 4 + op) * kShflArgs + a)] =
              in[warp0 + guide_source(op, lane, arg, kWidths[wi])];
        }
  }
  CHECK_EQUAL_BITS(out.data(), want.data(), out.size(), "shuffled");
}

void test_shuffles() {
  Rng rng(11);
  shuffle_case<int>("int", dim3(2), dim3(64), rng);
  shuffle_case<unsigned long long>("ull", dim3(1), dim3(32), rng);
  shuffle_case<long long>("ll", dim3(3), dim3(16, 4), rng);
  shuffle_case<double>("double", dim3(1), dim3(96), rng);
  shuffle_case<float>("float", dim3(2), dim3(32, 2), rng);
}
AH_EMU_SELFTEST(test_shuffles);

// ------------------------------------------------------------------ votes
__global__ void vote_kernel(const int* pred, unsigned* ballot, int* all, int* any) {
  const unsigned t = linear_bid() * blockDim.x + threadIdx.x;
  ballot[t] = __ballot_sync(0xffffffffu, pred[t]);
  all[t] = __all_sync(0xffffffffu, pred[t]);
  any[t] = __any_sync(0xffffffffu, pred[t]);
  __syncwarp();
}

void test_votes() {
  Rng rng(12);
  for (int density : {0, 1, 50, 99, 100}) {
    emu_test::set_case("votes density=%d%%", density);
    const int n = 4 * 64;
    Buf<int> pred(n);
    Buf<unsigned> ballot(n);
    Buf<int> all(n), any(n);
    for (int i = 0; i < n; ++i) pred[i] = rng.below(100) < density ? int(rng.below(7)) + 1 : 0;
    pred[5] = density == 100 ? -3 : pred[5];  // any nonzero predicate counts
    launch(dim3(4), dim3(64), vote_kernel, pred.data(), ballot.data(), all.data(), any.data());
    bool ok = true;
    for (int w = 0; w < n / 32; ++w) {
      unsigned b = 0;
      for (int l = 0; l < 32; ++l) b |= unsigned(pred[w * 32 + l] != 0) << l;
      for (int l = 0; l < 32; ++l) {
        const int t = w * 32 + l;
        ok = ok && ballot[t] == b && all[t] == int(b == 0xffffffffu) && any[t] == int(b != 0);
      }
    }
    CHECK(ok, "ballot/all/any differ from the predicates' bits");
  }
}
AH_EMU_SELFTEST(test_votes);

// ------------------------------------------------------------------ __syncthreads + shared
// Block sum by a shared-memory tree (blockDim.x a power of two <= 256): the classic kernel that
// needs every __syncthreads.
__global__ void block_sum_kernel(const int* in, long long* out, int64_t n) {
  __shared__ long long s[256];
  const unsigned t = threadIdx.x;
  long long acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + t; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc += in[i];
  s[t] = acc;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Counting barriers and the early exit of half the block (exited threads leave the barrier).
__global__ void barrier_kinds_kernel(const int* pred, int* out) {
  const unsigned t = threadIdx.x;
  const int p = pred[blockIdx.x * blockDim.x + t];
  const int c = __syncthreads_count(p);
  const int a = __syncthreads_and(p);
  const int o = __syncthreads_or(p);
  if (t % 2 == 1) return;
  __syncthreads();
  const int c2 = __syncthreads_count(1);
  int* r = out + (blockIdx.x * blockDim.x + t) * 4;
  r[0] = c; r[1] = a; r[2] = o; r[3] = c2;
}

// Dynamic shared memory: reverse each block's slice.
__global__ void reverse_kernel(const float* in, float* out) {
  AH_DYNAMIC_SHARED(float, s);
  const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
  s[t] = in[base + t];
  __syncthreads();
  out[base + t] = s[blockDim.x - 1 - t];
}

void test_barriers() {
  Rng rng(13);
  for (unsigned block : {1u, 2u, 32u, 64u, 256u})
    for (unsigned grid : {1u, 3u}) {
      for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000), int64_t(5000)}) {
        emu_test::set_case("block_sum grid=%u block=%u n=%" PRId64, grid, block, n);
        Buf<int> in(n);
        Buf<long long> out(grid);
        for (int64_t i = 0; i < n; ++i) in[i] = int(rng.below(2001)) - 1000;
        launch(dim3(grid), dim3(block), block_sum_kernel, in.data(), out.data(), n);
        std::vector<long long> want(grid, 0);
        for (int64_t i = 0; i < n; ++i) want[size_t(i / block % grid)] += in[i];
        CHECK_EQUAL_BITS(out.data(), want.data(), grid, "block sums");
      }
    }
  for (unsigned block : {2u, 40u, 64u}) {
    emu_test::set_case("barrier kinds block=%u", block);
    const unsigned grid = 3, n = grid * block;
    Buf<int> pred(n), out(4 * n);
    for (unsigned i = 0; i < n; ++i) pred[i] = rng.below(3) == 0 ? 0 : 1;
    pred[block] = 0;                                    // block 1: not all true
    for (unsigned i = 2 * block; i < n; ++i) pred[i] = 1;  // block 2: all true
    launch(dim3(grid), dim3(block), barrier_kinds_kernel, pred.data(), out.data());
    bool ok = true;
    for (unsigned b = 0; b < grid; ++b) {
      int c = 0;
      for (unsigned t = 0; t < block; ++t) c += pred[b * block + t] != 0;
      for (unsigned t = 0; t < block; t += 2) {
        const int* r = &out[(b * block + t) * 4];
        ok = ok && r[0] == c && r[1] == int(c == int(block)) && r[2] == int(c > 0) &&
             r[3] == int((block + 1) / 2);
      }
    }
    CHECK(ok, "__syncthreads_count/and/or or the barrier after early exits is wrong");
  }
  for (unsigned block : {1u, 31u, 128u}) {
    emu_test::set_case("dynamic shared block=%u", block);
    const unsigned grid = 3, n = grid * block;
    Buf<float> in(n), out(n);
    for (unsigned i = 0; i < n; ++i) in[i] = float(i) * 0.5f;
    launch_smem(dim3(grid), dim3(block), block * sizeof(float), reverse_kernel, in.data(), out.data());
    bool ok = true;
    for (unsigned b = 0; b < grid; ++b)
      for (unsigned t = 0; t < block; ++t) ok = ok && out[b * block + t] == in[b * block + block - 1 - t];
    CHECK(ok, "dynamic shared memory reversal is wrong");
  }
}
AH_EMU_SELFTEST(test_barriers);

// ------------------------------------------------------------------ atomics
__global__ void atomics_kernel(const unsigned* in, int64_t n, int* hist, unsigned long long* mx,
                               unsigned long long* mn, unsigned* bits, int* cas_sum,
                               float* fsum) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const unsigned v = in[i];
    atomicAdd(&hist[v % 16], 1);
    atomicMax(mx, (unsigned long long)v * 3);
    atomicMin(mn, (unsigned long long)v + 7);
    atomicOr(bits, 1u << (v % 32));
    int old = *cas_sum, assumed;
    do {
      assumed = old;
      old = atomicCAS(cas_sum, assumed, assumed + int(v % 5));
    } while (old != assumed);
    atomicAdd(fsum, 1.0f);
  }
}

void test_atomics() {
  Rng rng(14);
  for (unsigned grid : {1u, 4u})
    for (int64_t n : {int64_t(1), int64_t(777)}) {
      emu_test::set_case("atomics grid=%u n=%" PRId64, grid, n);
      Buf<unsigned> in(n);
      Buf<int> hist(16), cas_sum(1);
      Buf<unsigned long long> mx(1), mn(1);
      Buf<unsigned> bits(1);
      Buf<float> fsum(1);
      for (int64_t i = 0; i < n; ++i) in[i] = unsigned(rng.next());
      for (int k = 0; k < 16; ++k) hist[k] = 0;
      mx[0] = 0; mn[0] = ~0ull; bits[0] = 0; cas_sum[0] = 0; fsum[0] = 0.0f;
      launch(dim3(grid), dim3(64), atomics_kernel, in.data(), n, hist.data(), mx.data(), mn.data(),
             bits.data(), cas_sum.data(), fsum.data());
      int h[16] = {0};
      unsigned long long wmx = 0, wmn = ~0ull;
      unsigned wbits = 0;
      int wsum = 0;
      for (int64_t i = 0; i < n; ++i) {
        const unsigned v = in[i];
        ++h[v % 16];
        wmx = std::max(wmx, (unsigned long long)v * 3);
        wmn = std::min(wmn, (unsigned long long)v + 7);
        wbits |= 1u << (v % 32);
        wsum += int(v % 5);
      }
      CHECK_EQUAL_BITS(hist.data(), h, 16, "histogram");
      CHECK(mx[0] == wmx && mn[0] == wmn && bits[0] == wbits && cas_sum[0] == wsum &&
            fsum[0] == float(n), "atomicMax/Min/Or/CAS/Add(float) results");
    }
  // Return values of the other atomics.
  emu_test::set_case("atomic return values");
  int i = 10;
  unsigned u = 5;
  bool ok = atomicSub(&i, 3) == 10 && i == 7 && atomicExch(&i, 42) == 7 && i == 42;
  ok = ok && atomicInc(&u, 5u) == 5 && u == 0 && atomicInc(&u, 5u) == 0 && u == 1;
  ok = ok && atomicDec(&u, 5u) == 1 && u == 0 && atomicDec(&u, 5u) == 0 && u == 5;
  ok = ok && atomicAnd(&u, 4u) == 5 && u == 4 && atomicXor(&u, 6u) == 4 && u == 2;
  ok = ok && atomicCAS(&u, 3u, 9u) == 2 && u == 2 && atomicCAS(&u, 2u, 9u) == 2 && u == 9;
  CHECK(ok, "atomicSub/Exch/Inc/Dec/And/Xor/CAS return values");
}
AH_EMU_SELFTEST(test_atomics);

// ------------------------------------------------------------------ integer intrinsics
void test_intrinsics() {
  emu_test::set_case("integer intrinsics");
  Rng rng(15);
  bool ok = true;
  for (int k = 0; k < 2000; ++k) {
    uint64_t v = rng.next();
    if (k % 7 == 0) v >>= rng.below(64);
    if (k == 0) v = 0;
    const unsigned v32 = unsigned(v);
    int pc = 0, pc32 = 0, clz = 64, clz32 = 32, ffs = 0, ffs32 = 0;
    for (int b = 0; b < 64; ++b)
      if ((v >> b) & 1) { ++pc; clz = 63 - b; if (ffs == 0) ffs = b + 1; }
    for (int b = 0; b < 32; ++b)
      if ((v32 >> b) & 1) { ++pc32; clz32 = 31 - b; if (ffs32 == 0) ffs32 = b + 1; }
    unsigned rev = 0;
    for (int b = 0; b < 32; ++b) rev |= ((v32 >> b) & 1u) << (31 - b);
    ok = ok && __popcll(v) == pc && __popc(v32) == pc32 && __clzll((long long)v) == clz &&
         __clz(int(v32)) == clz32 && __ffsll((long long)v) == ffs && __ffs(int(v32)) == ffs32 &&
         __brev(v32) == rev && __brevll(v) >> 32 == __brev(unsigned(v));
  }
  CHECK(ok, "__popc/__popcll/__clz/__clzll/__ffs/__ffsll/__brev differ from bit loops");
}
AH_EMU_SELFTEST(test_intrinsics);

// ------------------------------------------------------------------ thread order switch
__global__ void order_kernel(unsigned* counter, unsigned* seq) {
  seq[atomicAdd(counter, 1u)] = linear_bid() * blockDim.x + threadIdx.x;
}

void test_order() {
  const char* env = std::getenv("AH_EMU_ORDER");
  const bool reverse = env != nullptr && std::strcmp(env, "reverse") == 0;
  emu_test::set_case("thread order (%s)", reverse ? "reverse" : "forward");
  const unsigned grid = 3, block = 40, n = grid * block;
  Buf<unsigned> counter(1), seq(n);
  counter[0] = 0;
  launch(dim3(grid), dim3(block), order_kernel, counter.data(), seq.data());
  bool ok = counter[0] == n;
  for (unsigned k = 0; k < n; ++k) ok = ok && seq[k] == (reverse ? n - 1 - k : k);
  CHECK(ok, "threads did not run in %s order", reverse ? "reverse" : "forward");
}
AH_EMU_SELFTEST(test_order);

// ------------------------------------------------------------------ loud failures
// Runs fn in a child process; the child must abort with `message` on stderr.
template <typename Fn>
void expect_abort(const char* what, const char* message, Fn fn) {
  emu_test::set_case("abort: %s", what);
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    signal(SIGABRT, SIG_DFL);
    fn();
    _exit(0);
  }
  close(fds[1]);
  std::string err;
  char buf[4096];
  ssize_t r;
  while ((r = read(fds[0], buf, sizeof buf)) > 0) err.append(buf, size_t(r));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT &&
            err.find(message) != std::string::npos,
        "expected an abort with '%s', got status %d and stderr '%s'", message, status, err.c_str());
}

__global__ void partial_mask_kernel(int* out) { out[threadIdx.x] = __ballot_sync(0x0000ffffu, 1); }
__global__ void shfl_kernel(int* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1); }
__global__ void divergent_kernel(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  else out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
}
__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
}
__global__ void mixed_kernel(int* out) {
  if (threadIdx.x % 2) out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
  else out[threadIdx.x] = __any_sync(0xffffffffu, 1);
}

void test_loud_failures() {
  static int out[1024];
  expect_abort("partial mask", "only the full mask 0xffffffff is emulated",
               [] { launch(dim3(1), dim3(32), partial_mask_kernel, out); });
  expect_abort("partial warp", "in a partial warp",
               [] { launch(dim3(1), dim3(48), shfl_kernel, out); });
  expect_abort("divergent sync", "deadlock in block",
               [] { launch(dim3(1), dim3(32), divergent_kernel, out); });
  expect_abort("exited lane", "needs all 32 lanes",
               [] { launch(dim3(1), dim3(32), early_exit_kernel, out); });
  expect_abort("mixed collectives", "meet in different collectives",
               [] { launch(dim3(1), dim3(32), mixed_kernel, out); });
  expect_abort("empty block", "invalid block shape",
               [] { launch(dim3(1), dim3(0), shfl_kernel, out); });
  expect_abort("outside a kernel", "outside a kernel", [] { __syncthreads(); });
}
AH_EMU_SELFTEST(test_loud_failures);

}  // namespace
