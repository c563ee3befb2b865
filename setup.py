"""Build of activation_hash._C: CPU kernels always, CUDA kernels when torch and nvcc allow.

Environment switches:
  ACTIVATION_HASH_CUDA=auto|1|0   build the CUDA kernels when possible (default) / always / never
  CUDA_HOME                       toolkit root; found from nvcc when unset
  TORCH_CUDA_ARCH_LIST            default "8.0;9.0+PTX" when unset and no GPU is visible
  ACTIVATION_HASH_DEBUG=1         -O0 -g
  ACTIVATION_HASH_SKIP_EXTENSION=1  install the Python package only (the Makefile uses it)
"""
import glob
import os
import shutil
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    """The real toolkit root: the directory whose bin/nvcc is the compiler, not a wrapper."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.isfile(os.path.join(os.environ[var], "bin", "nvcc")):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        # Ask nvcc where it lives: wrappers (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`) defeat
        # torch's guess of dirname(dirname(which nvcc)).
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                                 timeout=60)
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    candidates.append(line.split("TOP=", 1)[1].strip())
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        root = os.path.realpath(root)
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
                os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


def want_cuda():
    mode = os.environ.get("ACTIVATION_HASH_CUDA", "auto").lower()
    if mode in ("0", "no", "off", "false"):
        return False, None
    cuda_home = find_cuda_home()
    import torch  # noqa: E402  (only after CUDA_HOME is known)

    ok = torch.version.cuda is not None and cuda_home is not None
    if mode in ("1", "yes", "on", "true") and not ok:
        raise RuntimeError(
            f"ACTIVATION_HASH_CUDA={mode} but CUDA cannot be built: torch.version.cuda="
            f"{torch.version.cuda!r}, CUDA toolkit root={cuda_home!r}")
    return ok, cuda_home


def extension():
    build_cuda, cuda_home = want_cuda()
    if build_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
        import torch
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    debug = os.environ.get("ACTIVATION_HASH_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # at::parallel_for is an inline OpenMP loop in torch's headers: without -fopenmp it runs on
    # one thread. The soname libgomp.so.1 resolves to the runtime torch has already loaded.
    # -ffp-contract=off: no fused multiply-adds, so that float64 kernels (split_pieces) give the
    # bits of the reference's separate products and sums.
    cxx = opt + ["-fvisibility=hidden", "-Wall", "-fopenmp", "-ffp-contract=off"]
    kwargs = dict(
        name="activation_hash._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        define_macros=[],
        # not py_limited_api: csrc/eager.cpp uses torch's Python bindings (libtorch_python),
        # so the module is built for this Python (as torch itself is)
    )
    if build_cuda:
        kwargs["sources"] += sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["extra_compile_args"]["nvcc"] = opt + ["-lineinfo", "--expt-relaxed-constexpr"]
        kwargs["define_macros"].append(("ACTIVATION_HASH_WITH_CUDA", None))
        ext = CUDAExtension(**kwargs)
    else:
        ext = CppExtension(**kwargs)
    return ext, BuildExtension


if os.environ.get("ACTIVATION_HASH_SKIP_EXTENSION") == "1":
    # Metadata-only install (the Makefile builds the extension in place afterwards).
    setup()
else:
    ext, build_ext = extension()
    setup(
        ext_modules=[ext],
        cmdclass={"build_ext": build_ext.with_options(use_ninja=True)},
    )
