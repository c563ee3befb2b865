// CPU emulation of the CUDA subset used by csrc/cuda/*.cuh, for tests only (tests/emu, built by
// the top-level CMakeLists.txt; never compiled into the Python package). Include it before any
// kernel header; it defines AH_CUDA_EMULATION, so activation_hash/bits.h marks its helpers
// __host__ __device__, which this header then defines away.
//
// Model. `launch(grid, block, kernel, args...)` runs the blocks one after another (in linear
// block order, or reversed: see below). Each CUDA thread of a block is a user-level fiber with
// its own stack (x86-64: a 6-register context switch in assembly; elsewhere, or with
// -DAH_EMU_UCONTEXT, swapcontext). A fiber runs until it finishes or reaches a sync point and
// then gives the CPU back to the block's scheduler:
//   - __syncthreads / __syncthreads_count/_and/_or: barrier over all live threads of the block;
//   - __ballot_sync, __all_sync, __any_sync, __shfl_sync, __shfl_up_sync, __shfl_down_sync,
//     __shfl_xor_sync, __syncwarp: exchange among the 32 lanes of a warp (warp w of a block =
//     linear thread ids [32 w, 32 w + 32), linear id = x + y Dx + z Dx Dy as on the GPU).
//     Shuffles follow the PTX shfl.sync rules for `width` (out-of-range sources read their own
//     value). Values of 1, 2, 4 or 8 bytes (int, unsigned, long long, float, double, ...).
// __syncthreads waits for the threads of the block that have not exited (as on sm_70+). Lanes of
// a warp run one after another between sync points, so warp-synchronous code that shares data
// through memory without __syncwarp behaves as the race it is on Volta and later GPUs.
// threadIdx/blockIdx/blockDim/gridDim are per-fiber globals set by the scheduler. Static
// `__shared__` arrays are `static` locals: one copy, shared by the threads of the block that
// runs, kept from block to block (so a read-before-write sees the previous block's data, not
// zeros). Dynamic shared memory: AH_DYNAMIC_SHARED(T, name) (also defined for nvcc in
// activation_hash/bits.h), sized by launch_smem(); it is filled with 0xA5 bytes before each block.
//
// Order switch: AH_EMU_ORDER=reverse (environment) runs the blocks and the threads of each
// block in reverse order (waiting threads are resumed by sweeps over the block in that order),
// so that a result depending on the order (a missing __syncthreads, a race on global memory)
// differs between a forward and a reverse run; the tests run both.
//
// Checked loudly (message on stderr, then abort): a warp collective with a mask other than
// 0xffffffff; one in a warp with fewer than 32 threads (blockDim not a multiple of 32) or with
// a lane that has exited; lanes of a warp in different collectives; a block whose threads
// all wait but not at the same kind of sync point (divergent __syncthreads / deadlock);
// invalid launch shapes (0 or more than 1024 threads per block, zero-sized grid dimensions).
//
// NOT emulated (kernels that must be tested here must not rely on it):
//   - partial-mask warp collectives, __activemask, independent thread scheduling and the
//     semantics of divergence within a warp (the lanes of a warp only meet at collectives);
//   - concurrency between blocks: inter-block communication, spin-waits on global memory,
//     grid-wide sync, cooperative groups; blocks never overlap;
//   - the memory model: every access is immediately visible, __threadfence* are no-ops;
//     atomics are plain read-modify-writes (they never interleave, and are not sync points);
//   - streams, events, host/device memory spaces (pointers are host pointers), textures,
//     __constant__ memory semantics (plain globals), printf buffering;
//   - CUB/Thrust, cooperative_groups, tensor-core (mma/wmma) instructions, half/bfloat16
//     device types and their intrinsics, warp-level reductions (__reduce_*_sync), __match_*,
//     math intrinsics (__fmul_rn, __expf, ...) and the device overloads of min/max (write
//     ternaries); only the intrinsics defined below exist;
//   - resource limits (registers, shared memory size) and the timing of anything.
#pragma once

#ifndef AH_CUDA_EMULATION
#define AH_CUDA_EMULATION 1
#endif

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) || !defined(__ELF__)
#ifndef AH_EMU_UCONTEXT
#define AH_EMU_UCONTEXT 1
#endif
#endif
#if defined(AH_EMU_UCONTEXT)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define AH_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AH_EMU_ASAN 1
#endif
#endif
#if defined(AH_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

// ---------------------------------------------------------------- qualifiers and types
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __constant__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// __restrict__ is a g++ keyword already.

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------- fibers
namespace ah_emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

#if !defined(AH_EMU_UCONTEXT)
// ah_emu_switch(save, to): pushes the callee-saved registers, stores rsp in *save, loads `to`
// as rsp, pops the registers saved there and returns into that context. A new fiber's stack
// holds 6 register slots (r12 = the Fiber*) and then ah_emu_fiber_start as return address.
extern "C" void ah_emu_switch(void** save, void* to);
extern "C" void ah_emu_fiber_start();
asm(R"(
  .pushsection .text.ah_emu_switch,"axG",@progbits,ah_emu_switch,comdat
  .weak ah_emu_switch
  .hidden ah_emu_switch
  .type ah_emu_switch,@function
ah_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ah_emu_switch,.-ah_emu_switch
  .popsection
  .pushsection .text.ah_emu_fiber_start,"axG",@progbits,ah_emu_fiber_start,comdat
  .weak ah_emu_fiber_start
  .hidden ah_emu_fiber_start
  .type ah_emu_fiber_start,@function
ah_emu_fiber_start:
  movq %r12, %rdi
  call ah_emu_fiber_main
  ud2
  .size ah_emu_fiber_start,.-ah_emu_fiber_start
  .popsection
)");
#endif

struct Fiber;
extern "C" __attribute__((visibility("hidden"))) void ah_emu_fiber_main(Fiber* f);

enum class Wait : int { kNone, kBarrier, kWarp, kDone };

struct Fiber {
  char* stack = nullptr;  // lowest usable address
  size_t stack_size = 0;
#if defined(AH_EMU_UCONTEXT)
  ucontext_t ctx;
#else
  void* sp = nullptr;
#endif
  uint3 tid{0, 0, 0};
  unsigned linear = 0;
  Wait wait = Wait::kNone;
  int barrier_pred = 0;    // after a barrier: its participants
  int barrier_result = 0;  // after a barrier: threads whose predicate was true
};

enum class WarpOp : int { kNone, kBallot, kAll, kAny, kShflIdx, kShflUp, kShflDown, kShflXor,
                          kSync };

struct Warp {
  WarpOp op = WarpOp::kNone;
  int arrived = 0;
  int width = 32;
  int size = 0;
  int exited = 0;
  uint64_t value[32];
  uint32_t arg[32];
  uint64_t result[32];
};

struct Scheduler {
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;  // pooled; each with a PROT_NONE guard page below it
  size_t stack_size = 0;
  std::vector<Warp> warps;
  Fiber* current = nullptr;
#if defined(AH_EMU_UCONTEXT)
  ucontext_t main_ctx;
#else
  void* main_sp = nullptr;
#endif
#if defined(AH_EMU_ASAN)
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  unsigned nthreads = 0, live = 0, at_barrier = 0;
  int barrier_count = 0;
  bool reverse = false;
  std::vector<unsigned char> dynamic_shared;
  uint64_t launches = 0;
  void (*on_launch)(const void* kernel) = nullptr;  // test hook: which kernel ran
};

inline Scheduler& sched() {
  static thread_local Scheduler s;
  return s;
}

inline bool reverse_order() {
  static const bool r = [] {
    const char* e = std::getenv("AH_EMU_ORDER");
    if (e == nullptr || std::strcmp(e, "forward") == 0 || *e == '\0') return false;
    if (std::strcmp(e, "reverse") == 0) return true;
    fail("AH_EMU_ORDER must be 'forward' or 'reverse'");
  }();
  return r;
}

// Stack of each fiber (a guard page below it turns an overflow into SIGSEGV). Kernels with
// large local arrays may need -DAH_EMU_STACK_BYTES=...
#ifndef AH_EMU_STACK_BYTES
#if defined(AH_EMU_ASAN)
#define AH_EMU_STACK_BYTES (512 << 10)
#else
#define AH_EMU_STACK_BYTES (64 << 10)
#endif
#endif

inline void ensure_stacks(Scheduler& s, unsigned n) {
  const size_t want = size_t(AH_EMU_STACK_BYTES);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  s.stack_size = want;
  while (s.stacks.size() < n) {
    void* p = mmap(nullptr, want + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) fail("mmap of a fiber stack failed");
    if (mprotect(p, page, PROT_NONE) != 0) fail("mprotect of a stack guard page failed");
    s.stacks.push_back(static_cast<char*>(p) + page);
  }
}

// Switches from the scheduler into fiber f, or from fiber f back to the scheduler.
inline void enter(Scheduler& s, Fiber& f) {
  s.current = &f;
  threadIdx = f.tid;
#if defined(AH_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, f.stack_size);
#endif
#if defined(AH_EMU_UCONTEXT)
  if (swapcontext(&s.main_ctx, &f.ctx) != 0) fail("swapcontext failed");
#else
  ah_emu_switch(&s.main_sp, f.sp);
#endif
#if defined(AH_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  s.current = nullptr;
}

inline void leave(Scheduler& s, Fiber& f) {
#if defined(AH_EMU_ASAN)
  void* fake = nullptr;
  // A finished fiber's stack is dead: passing nullptr lets ASan drop its fake frames.
  __sanitizer_start_switch_fiber(f.wait == Wait::kDone ? nullptr : &fake,
                                 s.main_stack_bottom, s.main_stack_size);
#endif
#if defined(AH_EMU_UCONTEXT)
  if (swapcontext(&f.ctx, &s.main_ctx) != 0) fail("swapcontext failed");
#else
  ah_emu_switch(&f.sp, s.main_sp);
#endif
#if defined(AH_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, &s.main_stack_bottom, &s.main_stack_size);
#endif
}

#if defined(AH_EMU_UCONTEXT)
inline void ucontext_entry(unsigned lo, unsigned hi) {
  ah_emu_fiber_main(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}
#endif

inline void prepare(Scheduler& s, Fiber& f) {
  f.wait = Wait::kNone;
#if defined(AH_EMU_UCONTEXT)
  if (getcontext(&f.ctx) != 0) fail("getcontext failed");
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = f.stack_size;
  f.ctx.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
              unsigned(p & 0xffffffffu), unsigned(p >> 32));
#else
  // sp = top - 72 with top 16-byte aligned: after the 6 pops and the ret, rsp = top - 16 is
  // 16-byte aligned, as the ABI requires before ah_emu_fiber_start's call.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + f.stack_size) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top) - 9;
  sp[0] = nullptr;                                  // r15
  sp[1] = nullptr;                                  // r14
  sp[2] = nullptr;                                  // r13
  sp[3] = &f;                                       // r12
  sp[4] = nullptr;                                  // rbx
  sp[5] = nullptr;                                  // rbp
  sp[6] = reinterpret_cast<void*>(&ah_emu_fiber_start);  // ret target
  sp[7] = nullptr;
  sp[8] = nullptr;
  f.sp = sp;
#endif
  (void)s;
}

// Called by a fiber: give the CPU back to the scheduler until woken.
inline void block_on(Wait w) {
  Scheduler& s = sched();
  Fiber* f = s.current;
  if (f == nullptr) fail("a CUDA sync primitive was called outside a kernel launched by launch()");
  f->wait = w;
  leave(s, *f);
}

inline Fiber& self() {
  Fiber* f = sched().current;
  if (f == nullptr) fail("a CUDA device primitive was called outside a kernel launched by launch()");
  return *f;
}

// ---------------------------------------------------------------- barrier
// Releases the threads waiting at __syncthreads (all live threads have arrived).
inline void release_barrier(Scheduler& s) {
  for (Fiber& g : s.fibers)
    if (g.wait == Wait::kBarrier) {
      g.barrier_result = s.barrier_count;
      g.barrier_pred = int(s.at_barrier);  // participants
      g.wait = Wait::kNone;
    }
  s.at_barrier = 0;
  s.barrier_count = 0;
}

// __syncthreads with a predicate; returns {threads whose predicate is true, participants}.
struct BarrierResult {
  int count, participants;
};
inline BarrierResult syncthreads_impl(int pred) {
  Scheduler& s = sched();
  Fiber& f = self();
  s.barrier_count += pred != 0;
  ++s.at_barrier;
  if (s.at_barrier == s.live) {  // last live thread to arrive
    f.wait = Wait::kBarrier;
    release_barrier(s);
  } else {
    block_on(Wait::kBarrier);
  }
  return {f.barrier_result, f.barrier_pred};
}

// ---------------------------------------------------------------- warp collectives
inline void check_mask(unsigned mask, const char* what) {
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda_emu: %s with mask 0x%08x: only the full mask 0xffffffff is "
                         "emulated\n", what, mask);
    std::fflush(stderr);
    std::abort();
  }
}

inline const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kSync: return "__syncwarp";
    default: return "?";
  }
}

// Source lane of a shuffle by the PTX shfl.sync rules (c = clamp | segmask << 8).
inline int shfl_source(WarpOp op, int lane, uint32_t b, int width) {
  const int segmask = (32 - width) & 31;
  const int clamp = op == WarpOp::kShflUp ? 0 : 31;
  const int min_lane = lane & segmask;
  const int max_lane = min_lane | (clamp & ~segmask);
  int64_t j;
  bool ok;
  switch (op) {
    case WarpOp::kShflUp: j = int64_t(lane) - int64_t(b); ok = j >= max_lane; break;
    case WarpOp::kShflDown: j = int64_t(lane) + int64_t(b); ok = j <= max_lane; break;
    case WarpOp::kShflXor: j = int64_t(lane ^ int(b)); ok = j <= max_lane; break;
    default: j = min_lane | (int(b & 31) & ~segmask); ok = j <= max_lane; break;
  }
  return ok ? int(j) : lane;
}

// One lane's part in a warp collective; returns this lane's result.
inline uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, uint32_t arg, int width) {
  check_mask(mask, op_name(op));
  Scheduler& s = sched();
  Fiber& f = self();
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("shuffle width must be a power of 2 in [1, 32]");
  Warp& w = s.warps[f.linear / 32];
  const int lane = int(f.linear % 32);
  if (w.size != 32) {
    std::fprintf(stderr, "cuda_emu: %s in a partial warp (%d threads; block of %u threads is "
                         "not a multiple of 32): a full mask names lanes that do not exist\n",
                 op_name(op), w.size, s.nthreads);
    std::fflush(stderr);
    std::abort();
  }
  if (w.exited > 0) {
    std::fprintf(stderr, "cuda_emu: %s in warp %u after %d of its lanes exited: a full-mask "
                         "collective needs all 32 lanes\n", op_name(op), f.linear / 32, w.exited);
    std::fflush(stderr);
    std::abort();
  }
  if (w.arrived == 0) {
    w.op = op;
    w.width = width;
  } else if (w.op != op || w.width != width) {
    std::fprintf(stderr, "cuda_emu: lanes of warp %u meet in different collectives (%s width %d "
                         "and %s width %d)\n", f.linear / 32, op_name(w.op), w.width,
                 op_name(op), width);
    std::fflush(stderr);
    std::abort();
  }
  w.value[lane] = value;
  w.arg[lane] = arg;
  if (++w.arrived < 32) {
    block_on(Wait::kWarp);
    return w.result[lane];
  }
  // Last lane to arrive computes everybody's result and wakes the warp.
  switch (op) {
    case WarpOp::kBallot: case WarpOp::kAll: case WarpOp::kAny: {
      uint64_t bits = 0;
      for (int l = 0; l < 32; ++l) bits |= uint64_t(w.value[l] != 0) << l;
      const uint64_t r = op == WarpOp::kBallot ? bits
                         : op == WarpOp::kAll  ? uint64_t(bits == 0xffffffffu)
                                               : uint64_t(bits != 0);
      for (int l = 0; l < 32; ++l) w.result[l] = r;
      break;
    }
    case WarpOp::kSync:
      for (int l = 0; l < 32; ++l) w.result[l] = 0;
      break;
    default:
      for (int l = 0; l < 32; ++l) w.result[l] = w.value[shfl_source(op, l, w.arg[l], width)];
  }
  w.arrived = 0;
  w.op = WarpOp::kNone;
  const unsigned base = f.linear / 32 * 32;
  for (unsigned l = 0; l < 32; ++l) {
    Fiber& g = s.fibers[base + l];
    if (g.wait == Wait::kWarp) g.wait = Wait::kNone;
  }
  return w.result[lane];
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && (sizeof(T) == 1 || sizeof(T) == 2 ||
                                                          sizeof(T) == 4 || sizeof(T) == 8),
                "warp shuffles take values of 1, 2, 4 or 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

// ---------------------------------------------------------------- block runner
struct Launch {
  void (*body)(void*);
  void* arg;
};

inline void run_block(Scheduler& s) {
  const unsigned n = s.nthreads;
  s.live = n;
  s.at_barrier = 0;
  s.barrier_count = 0;
  for (Warp& w : s.warps) {
    w.arrived = 0;
    w.exited = 0;
    w.op = WarpOp::kNone;
  }
  for (Fiber& f : s.fibers) prepare(s, f);
  if (!s.dynamic_shared.empty()) std::memset(s.dynamic_shared.data(), 0xA5, s.dynamic_shared.size());
  // Sweep the threads in order until all are done; each runs until it finishes or waits.
  while (s.live > 0) {
    bool progressed = false;
    for (unsigned k = 0; k < n; ++k) {
      Fiber& f = s.fibers[s.reverse ? n - 1 - k : k];
      if (f.wait != Wait::kNone) continue;
      enter(s, f);
      progressed = true;
      if (f.wait == Wait::kDone) {
        --s.live;
        // A barrier all of whose remaining live threads already wait is released now.
        if (s.live > 0 && s.at_barrier > 0 && s.at_barrier == s.live) release_barrier(s);
        // A lane that exits while its warp waits in a collective can never be matched.
        Warp& w = s.warps[f.linear / 32];
        ++w.exited;
        if (w.arrived > 0) {
          std::fprintf(stderr, "cuda_emu: thread %u exited while its warp waits in %s: a full-mask "
                               "collective needs all 32 lanes\n", f.linear, op_name(w.op));
          std::fflush(stderr);
          std::abort();
        }
      }
    }
    if (!progressed) {
      unsigned at_warp = 0;
      for (Fiber& f : s.fibers) at_warp += f.wait == Wait::kWarp;
      std::fprintf(stderr, "cuda_emu: deadlock in block (%u,%u,%u): %u live threads, %u at "
                           "__syncthreads, %u in warp collectives (divergent sync, or a lane "
                           "that skipped a collective)\n", blockIdx.x, blockIdx.y, blockIdx.z,
                   s.live, s.at_barrier, at_warp);
      std::fflush(stderr);
      std::abort();
    }
  }
}

inline void run_grid(dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* arg) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64)
    fail("invalid block shape: 1..1024 threads, blockDim.z <= 64");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    fail("invalid grid shape: every dimension >= 1, gridDim.y and .z <= 65535");
  Scheduler& s = sched();
  if (s.current != nullptr) fail("launch() from inside a kernel (dynamic parallelism) is not emulated");
  s.reverse = reverse_order();
  s.nthreads = unsigned(nthreads);
  s.body = body;
  s.body_arg = arg;
  ensure_stacks(s, s.nthreads);
  s.fibers.assign(s.nthreads, Fiber{});
  for (unsigned t = 0; t < s.nthreads; ++t) {
    Fiber& f = s.fibers[t];
    f.stack = s.stacks[t];
    f.stack_size = s.stack_size;
    f.linear = t;
    f.tid = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
  }
  s.warps.assign((s.nthreads + 31) / 32, Warp{});
  for (size_t w = 0; w < s.warps.size(); ++w)
    s.warps[w].size = int(s.nthreads - 32 * w < 32 ? s.nthreads - 32 * w : 32);
  s.dynamic_shared.assign(smem, 0);
  gridDim = grid;
  blockDim = block;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t b = s.reverse ? blocks - 1 - k : k;
    blockIdx = uint3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y),
                     unsigned(b / (uint64_t(grid.x) * grid.y))};
    run_block(s);
  }
  threadIdx = uint3{0, 0, 0};
  blockIdx = uint3{0, 0, 0};
  ++s.launches;
}

inline unsigned char* dynamic_shared_bytes() {
  Scheduler& s = sched();
  if (s.current == nullptr) fail("dynamic shared memory used outside a kernel");
  if (s.dynamic_shared.empty()) fail("AH_DYNAMIC_SHARED in a kernel launched without shared bytes (use launch_smem)");
  return s.dynamic_shared.data();
}

}  // namespace ah_emu

// Entry of every fiber (called from ah_emu_fiber_start or ucontext_entry). `used`: the assembly
// stub's reference is invisible to the compiler.
extern "C" __attribute__((used, visibility("hidden"))) inline void ah_emu_fiber_main(
    ah_emu::Fiber* f) {
  ah_emu::Scheduler& s = ah_emu::sched();
#if defined(AH_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &s.main_stack_bottom, &s.main_stack_size);
#endif
  s.body(s.body_arg);
  f->wait = ah_emu::Wait::kDone;
  ah_emu::leave(s, *f);
  ah_emu::fail("a finished fiber was resumed");
}

// ---------------------------------------------------------------- device API
inline void __syncthreads() { ah_emu::syncthreads_impl(0); }
inline int __syncthreads_count(int pred) { return ah_emu::syncthreads_impl(pred).count; }
inline int __syncthreads_or(int pred) { return ah_emu::syncthreads_impl(pred).count > 0; }
inline int __syncthreads_and(int pred) {
  const ah_emu::BarrierResult r = ah_emu::syncthreads_impl(pred);
  return r.count == r.participants;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ah_emu::warp_op(ah_emu::WarpOp::kSync, mask, 0, 0, 32);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(ah_emu::warp_op(ah_emu::WarpOp::kBallot, mask, uint64_t(pred != 0), 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return int(ah_emu::warp_op(ah_emu::WarpOp::kAll, mask, uint64_t(pred != 0), 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return int(ah_emu::warp_op(ah_emu::WarpOp::kAny, mask, uint64_t(pred != 0), 0, 32));
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return ah_emu::from_bits<T>(ah_emu::warp_op(ah_emu::WarpOp::kShflIdx, mask,
                                              ah_emu::to_bits(var), uint32_t(src_lane), width));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ah_emu::from_bits<T>(ah_emu::warp_op(ah_emu::WarpOp::kShflUp, mask,
                                              ah_emu::to_bits(var), delta, width));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ah_emu::from_bits<T>(ah_emu::warp_op(ah_emu::WarpOp::kShflDown, mask,
                                              ah_emu::to_bits(var), delta, width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return ah_emu::from_bits<T>(ah_emu::warp_op(ah_emu::WarpOp::kShflXor, mask,
                                              ah_emu::to_bits(var), uint32_t(lane_mask), width));
}

// Integer intrinsics.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned long long __brevll(unsigned long long x) {
  unsigned long long r = 0;
  for (int i = 0; i < 64; ++i) r |= ((x >> i) & 1ull) << (63 - i);
  return r;
}
template <typename T>
inline T __ldg(const T* p) { return *p; }

// Atomics (the overloads CUDA defines). Fibers of one OS thread never interleave inside them.
#define AH_EMU_ATOMIC(name, T, expr)          \
  inline T name(T* address, T val) {          \
    const T old = *address;                   \
    *address = (expr);                        \
    return old;                               \
  }
AH_EMU_ATOMIC(atomicAdd, int, old + val)
AH_EMU_ATOMIC(atomicAdd, unsigned int, old + val)
AH_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
AH_EMU_ATOMIC(atomicAdd, float, old + val)
AH_EMU_ATOMIC(atomicAdd, double, old + val)
AH_EMU_ATOMIC(atomicSub, int, old - val)
AH_EMU_ATOMIC(atomicSub, unsigned int, old - val)
AH_EMU_ATOMIC(atomicExch, int, val)
AH_EMU_ATOMIC(atomicExch, unsigned int, val)
AH_EMU_ATOMIC(atomicExch, unsigned long long, val)
AH_EMU_ATOMIC(atomicExch, float, val)
AH_EMU_ATOMIC(atomicMin, int, val < old ? val : old)
AH_EMU_ATOMIC(atomicMin, unsigned int, val < old ? val : old)
AH_EMU_ATOMIC(atomicMin, long long, val < old ? val : old)
AH_EMU_ATOMIC(atomicMin, unsigned long long, val < old ? val : old)
AH_EMU_ATOMIC(atomicMax, int, val > old ? val : old)
AH_EMU_ATOMIC(atomicMax, unsigned int, val > old ? val : old)
AH_EMU_ATOMIC(atomicMax, long long, val > old ? val : old)
AH_EMU_ATOMIC(atomicMax, unsigned long long, val > old ? val : old)
AH_EMU_ATOMIC(atomicAnd, int, old & val)
AH_EMU_ATOMIC(atomicAnd, unsigned int, old & val)
AH_EMU_ATOMIC(atomicAnd, unsigned long long, old & val)
AH_EMU_ATOMIC(atomicOr, int, old | val)
AH_EMU_ATOMIC(atomicOr, unsigned int, old | val)
AH_EMU_ATOMIC(atomicOr, unsigned long long, old | val)
AH_EMU_ATOMIC(atomicXor, int, old ^ val)
AH_EMU_ATOMIC(atomicXor, unsigned int, old ^ val)
AH_EMU_ATOMIC(atomicXor, unsigned long long, old ^ val)
AH_EMU_ATOMIC(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
AH_EMU_ATOMIC(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)
#undef AH_EMU_ATOMIC
#define AH_EMU_ATOMIC_CAS(T)                               \
  inline T atomicCAS(T* address, T compare, T val) {       \
    const T old = *address;                                \
    if (old == compare) *address = val;                    \
    return old;                                            \
  }
AH_EMU_ATOMIC_CAS(int)
AH_EMU_ATOMIC_CAS(unsigned int)
AH_EMU_ATOMIC_CAS(unsigned long long)
AH_EMU_ATOMIC_CAS(unsigned short)
#undef AH_EMU_ATOMIC_CAS

// Dynamic shared memory: AH_DYNAMIC_SHARED(float, buf); declares `float* buf`.
#define AH_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::ah_emu::dynamic_shared_bytes())

// ---------------------------------------------------------------- launch
namespace ah_emu {

template <typename... Params, typename... Args>
void launch_smem(dim3 grid, dim3 block, size_t smem_bytes, void (*kernel)(Params...),
                 Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel arity and argument count differ");
  // Arguments are converted to the kernel's parameter types once, as <<<>>> does, and every
  // thread gets the same values.
  struct Frame {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  Frame frame{kernel, std::tuple<std::decay_t<Params>...>(static_cast<Params>(args)...)};
  auto body = [](void* p) {
    Frame& fr = *static_cast<Frame*>(p);
    std::apply([&](const auto&... a) { fr.kernel(a...); }, fr.params);
  };
  Scheduler& s = sched();
  if (s.on_launch != nullptr) s.on_launch(reinterpret_cast<const void*>(kernel));
  run_grid(grid, block, smem_bytes, body, &frame);
}

// kernel<<<grid, block>>>(args...) on the CPU.
template <typename... Params, typename... Args>
void launch(dim3 grid, dim3 block, void (*kernel)(Params...), Args&&... args) {
  launch_smem(grid, block, 0, kernel, std::forward<Args>(args)...);
}

}  // namespace ah_emu

using ah_emu::launch;
using ah_emu::launch_smem;
