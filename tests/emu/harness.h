// Tiny test harness of the CUDA emulation tests (tests/emu/*.cpp, built by CMakeLists.txt).
//
// A kernel test is a function registered for the name of the csrc/cuda/*.cuh kernel it covers:
//
//   static void test_my_kernel() { ... launch(grid, block, my_kernel<...>, args...); ... }
//   AH_KERNEL_TEST(my_kernel, test_my_kernel);
//
// `emu_tests --list` prints the registered kernel names; the ctest `emu_kernel_list` compares
// them with the __global__ kernels of csrc/cuda/*.cuh, so a kernel without a test fails CI. When
// a kernel test runs, the harness checks that it launched the kernel it is registered for (by
// symbol name) and that it made at least one check. AH_EMU_SELFTEST(fn) registers tests of
// the emulator itself (not listed).
#pragma once
#include "cuda_emu.h"  // first: defines the CUDA keywords the kernel headers use

#include <cinttypes>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

namespace emu_test {

struct Test {
  std::string name;  // kernel name, or the self-test's function name
  void (*fn)();
  bool kernel;
  const char* file;
};

inline std::vector<Test>& registry() {
  static std::vector<Test> r;
  return r;
}

inline bool add(const char* name, void (*fn)(), bool kernel, const char* file) {
  registry().push_back({name, fn, kernel, file});
  return true;
}

#define AH_KERNEL_TEST(kernel_name, fn) \
  static const bool ah_kernel_test_##kernel_name = ::emu_test::add(#kernel_name, fn, true, __FILE__)
#define AH_EMU_SELFTEST(fn) \
  static const bool ah_emu_selftest_##fn = ::emu_test::add(#fn, fn, false, __FILE__)

// ------------------------------------------------------------------ state and checks
struct State {
  char label[512] = "";  // the case being run, printed with failures and crashes
  long checks = 0;
  long failures = 0;
  long failures_printed = 0;
  long cases = 0;
};
inline State& state() {
  static State s;
  return s;
}

// Names the current case (printf-style); shown with every failure of the case.
inline void set_case(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void set_case(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(state().label, sizeof state().label, fmt, ap);
  va_end(ap);
  ++state().cases;
}

inline bool check_impl(bool ok, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
inline bool check_impl(bool ok, const char* file, int line, const char* fmt, ...) {
  State& s = state();
  ++s.checks;
  if (ok) return true;
  ++s.failures;
  if (s.failures_printed < 20) {
    ++s.failures_printed;
    std::fprintf(stderr, "FAIL %s:%d [%s] ", file, line, s.label);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\n");
  } else if (s.failures_printed == 20) {
    ++s.failures_printed;
    std::fprintf(stderr, "(further failures not printed)\n");
  }
  return false;
}
#define CHECK(cond, ...) ::emu_test::check_impl(bool(cond), __FILE__, __LINE__, __VA_ARGS__)

// Bitwise comparison of n elements; reports the first differing element. Returns true if equal.
template <typename T>
inline bool check_equal_bits(const T* got, const T* want, int64_t n, const char* what,
                             const char* file, int line) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      uint64_t g = 0, w = 0;
      std::memcpy(&g, &got[i], sizeof(T));
      std::memcpy(&w, &want[i], sizeof(T));
      return check_impl(false, file, line, "%s[%" PRId64 "]: got 0x%0*" PRIx64 ", want 0x%0*" PRIx64,
                        what, i, int(2 * sizeof(T)), g, int(2 * sizeof(T)), w);
    }
  }
  return check_impl(true, file, line, "%s", what);
}
#define CHECK_EQUAL_BITS(got, want, n, what) \
  ::emu_test::check_equal_bits(got, want, n, what, __FILE__, __LINE__)

// ------------------------------------------------------------------ buffers
// A kernel's array: its end touches a PROT_NONE page, so a read or write past the end crashes
// (the harness names the case); the bytes before it are filled with a sentinel and checked by
// front_intact(). Under AddressSanitizer, a plain heap array (ASan guards both ends).
template <typename T>
class Buf {
 public:
  explicit Buf(int64_t n) : n_(n) {
#if defined(AH_EMU_ASAN)
    data_ = static_cast<T*>(std::malloc(n > 0 ? size_t(n) * sizeof(T) : 1));
#else
    page_ = size_t(sysconf(_SC_PAGESIZE));
    const size_t bytes = size_t(n) * sizeof(T);
    const size_t data_pages = (bytes + kFront + page_ - 1) / page_;
    map_bytes_ = (data_pages + 1) * page_;
    void* p = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    map_ = static_cast<unsigned char*>(p);
    if (mprotect(map_ + data_pages * page_, page_, PROT_NONE) != 0) std::abort();
    front_ = map_ + data_pages * page_ - bytes;
    std::memset(map_, kSentinel, size_t(front_ - map_));
    data_ = reinterpret_cast<T*>(front_);
#endif
    fill_bytes(0xCD);
  }
  ~Buf() {
#if defined(AH_EMU_ASAN)
    std::free(data_);
#else
    munmap(map_, map_bytes_);
#endif
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }
  void fill_bytes(int byte) { if (n_ > 0) std::memset(data_, byte, size_t(n_) * sizeof(T)); }
  // The kFront bytes before the array still hold the sentinel (no write before the start).
  bool front_intact() const {
#if defined(AH_EMU_ASAN)
    return true;
#else
    const unsigned char* lo = front_ - kFront;
    for (const unsigned char* q = lo; q < front_; ++q)
      if (*q != kSentinel) return false;
    return true;
#endif
  }

 private:
  static constexpr size_t kFront = 256;
  static constexpr unsigned char kSentinel = 0x5B;
  int64_t n_;
  T* data_ = nullptr;
#if !defined(AH_EMU_ASAN)
  size_t page_ = 0, map_bytes_ = 0;
  unsigned char* map_ = nullptr;
  unsigned char* front_ = nullptr;
#endif
};

// ------------------------------------------------------------------ data
struct Rng {  // splitmix64
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  int64_t below(int64_t n) { return int64_t(next() % uint64_t(n)); }
};

// Activations with the edge cases of the sign rule: +-0, NaNs of both signs, +-inf, denormals,
// tiny values, and ordinary values of both signs.
template <typename T>
inline T edgy_value(Rng& r) {
  const int64_t k = r.below(16);
  switch (k) {
    case 0: return T(0.0);
    case 1: return T(-0.0);
    case 2: return std::numeric_limits<T>::quiet_NaN();
    case 3: return -std::numeric_limits<T>::quiet_NaN();
    case 4: return std::numeric_limits<T>::infinity();
    case 5: return -std::numeric_limits<T>::infinity();
    case 6: return std::numeric_limits<T>::denorm_min() * T(r.below(5) + 1);
    case 7: return -std::numeric_limits<T>::denorm_min() * T(r.below(5) + 1);
    case 8: return T((r.uniform() - 0.5) * 1e-30);
    default: return T((r.uniform() - 0.5) * 8.0);
  }
}

}  // namespace emu_test
