// Runner of the CUDA emulation tests: `emu_tests` runs every test (exit 1 on failure),
// `emu_tests --list` prints the kernel names that have a test, `emu_tests NAME...` runs the tests
// whose name contains one of the NAMEs. AH_EMU_ORDER=reverse runs blocks and threads backwards.
#include "harness.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <chrono>
#include <set>

namespace {

std::set<std::string>* g_launched = nullptr;

// "void ns::name<...>(...)" or "ns::name(...)" -> "name".
std::string kernel_base_name(const void* fn) {
  Dl_info info;
  if (dladdr(fn, &info) == 0 || info.dli_sname == nullptr) return "?";
  int status = 0;
  char* dem = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string s = status == 0 && dem != nullptr ? dem : info.dli_sname;
  std::free(dem);
  if (s.rfind("void ", 0) == 0) s = s.substr(5);
  const size_t end = s.find_first_of("<(");
  if (end != std::string::npos) s = s.substr(0, end);
  const size_t colon = s.rfind("::");
  return colon == std::string::npos ? s : s.substr(colon + 2);
}

void record_launch(const void* kernel) {
  if (g_launched != nullptr) g_launched->insert(kernel_base_name(kernel));
}

#if !defined(AH_EMU_ASAN)
void on_crash(int sig) {
  const char* head = "\nCRASH (signal ";
  char num[8];
  int k = 0;
  int v = sig;
  do { num[k++] = char('0' + v % 10); v /= 10; } while (v > 0 && k < 7);
  ssize_t r = write(2, head, std::strlen(head));
  while (k > 0) r = write(2, &num[--k], 1);
  const char* mid = ") in case [";
  r = write(2, mid, std::strlen(mid));
  const char* label = emu_test::state().label;
  r = write(2, label, std::strlen(label));
  r = write(2, "]: out-of-bounds access, stack overflow or emulator abort\n", 58);
  (void)r;
  signal(sig, SIG_DFL);
  raise(sig);
}

#endif

void install_crash_handlers() {
#if !defined(AH_EMU_ASAN)
  static char altstack[1 << 16];
  stack_t ss{};
  ss.ss_sp = altstack;
  ss.ss_size = sizeof altstack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_handler = on_crash;
  sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGILL}) sigaction(sig, &sa, nullptr);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> filters;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--list") {
      std::set<std::string> names;
      for (const emu_test::Test& t : emu_test::registry())
        if (t.kernel) names.insert(t.name);
      for (const std::string& n : names) std::printf("%s\n", n.c_str());
      return 0;
    }
    if (a == "--help" || a == "-h") {
      std::printf("usage: %s [--list] [NAME...]\n", argv[0]);
      return 0;
    }
    filters.push_back(a);
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  install_crash_handlers();
  ah_emu::sched().on_launch = record_launch;
  const char* order = std::getenv("AH_EMU_ORDER");
  std::printf("CUDA emulation tests, thread order: %s\n", order && *order ? order : "forward");
  emu_test::State& st = emu_test::state();
  int failed_tests = 0, ran = 0;
  for (const emu_test::Test& t : emu_test::registry()) {
    if (!filters.empty()) {
      bool hit = false;
      for (const std::string& f : filters) hit = hit || t.name.find(f) != std::string::npos;
      if (!hit) continue;
    }
    ++ran;
    const long failures0 = st.failures, checks0 = st.checks, cases0 = st.cases;
    std::set<std::string> launched;
    g_launched = &launched;
    const auto t0 = std::chrono::steady_clock::now();
    std::snprintf(st.label, sizeof st.label, "%s", t.name.c_str());
    t.fn();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    g_launched = nullptr;
    const long own_checks = st.checks - checks0;
    std::snprintf(st.label, sizeof st.label, "%s", t.name.c_str());
    if (t.kernel)
      CHECK(launched.count(t.name) == 1, "the test registered for kernel %s (%s) never launched "
            "it (launched: %zu other kernels)", t.name.c_str(), t.file, launched.size());
    CHECK(own_checks > 0, "test %s made no checks", t.name.c_str());
    const bool ok = st.failures == failures0;
    failed_tests += !ok;
    std::printf("%-5s %-30s %6ld cases %8ld checks %7.2f s%s\n", ok ? "ok" : "FAIL",
                t.name.c_str(), st.cases - cases0, st.checks - checks0, secs,
                t.kernel ? "" : "  (emulator self-test)");
  }
  if (ran == 0) {
    std::fprintf(stderr, "no test matched\n");
    return 1;
  }
  std::printf("%d of %d tests failed, %ld failed checks, %" PRIu64 " kernel launches\n",
              failed_tests, ran, st.failures, ah_emu::sched().launches);
  return failed_tests == 0 ? 0 : 1;
}
