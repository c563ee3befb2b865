"""The compiled ops against the pure-PyTorch reference, bit for bit."""
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import activation_hash as ah
from activation_hash import reference as ref
from helpers import ISAS, assert_same_values, package_env, run_with_isa

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SLOPES = [0.0, 0.01, 0.2]
SPECIAL = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-30, -1e-30, 1.0, -1.0]


def activations(shape, dtype, device, special_fraction=0.3, seed=0):
    """Random values with -0.0, +0.0, NaN, inf and tiny values sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    pick = torch.rand(shape, generator=g) < special_fraction
    specials = torch.tensor(SPECIAL, dtype=torch.float64)
    x[pick] = specials[torch.randint(len(SPECIAL), (int(pick.sum()),), generator=g)]
    return x.to(dtype=dtype, device=device)


def assert_activation(y, y_torch, x, slope):
    """The contract of relu_pack's y (docs/design.md, section 2): the compiled op computes
    x < 0 ? +0 : x (ReLU; -0.0 and NaN kept) or x > 0 ? x : x * slope on every device, so it
    equals torch's CPU result bit for bit; torch's CUDA relu may return +0.0 for -0.0, so on
    another device y equals torch's result there as values (+-0 not distinguished) and, for
    the compiled op, the op's own CPU result bit for bit. NaN payloads are never specified."""
    if y.device.type == "cpu":
        assert_same_values(y, y_torch)
        return
    assert_same_values(y, y_torch, signed_zeros=False)
    if ah.backend() == "extension":
        assert_same_values(y.cpu(), ah.relu_pack(x.cpu(), slope)[0])


def check_all_ops(x, slope):
    words = ah.pack_signs(x)
    assert torch.equal(words, ref.pack_signs(x))
    y, words2 = ah.relu_pack(x, slope)
    y_ref, _ = ref.relu_pack(x, slope)
    assert torch.equal(words2, words)
    assert_activation(y, y_ref, x, slope)
    n = ref.units_per_sample(x)
    assert torch.equal(ah.unpack_bits(words, n), ref.unpack_bits(words, n))
    g = activations(x.shape, x.dtype, x.device, seed=1)
    assert_same_values(ah.relu_mask_backward(g, words, slope),
                       ref.relu_mask_backward(g, words, slope))


shapes = st.lists(st.integers(1, 9), min_size=0, max_size=3).flatmap(
    lambda rest: st.tuples(st.integers(0, 5), st.just(rest)))


@given(shape=shapes, per_sample=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
       slope=st.sampled_from(SLOPES), seed=st.integers(0, 2**16))
def test_ops_match_reference_random(shape, per_sample, dtype, slope, seed):
    batch, rest = shape
    x = activations((batch, per_sample, *rest), dtype, "cpu", seed=seed)
    check_all_ops(x, slope)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 127, 128, 1000, 4099])
@pytest.mark.parametrize("slope", SLOPES)
def test_ops_match_reference_widths(device, dtype, n, slope):
    check_all_ops(activations((7, n), dtype, device), slope)


def test_bits_are_strictly_positive_and_little_endian(device):
    x = torch.tensor([[1.0, -0.0, 0.0, float("nan"), float("inf"), -float("inf"), 1e-45, -1.0]],
                     device=device)
    assert ah.unpack_bits(ah.pack_signs(x), 8).tolist() == [
        [True, False, False, False, True, False, True, False]]
    bits = torch.rand(5, 300) > 0.5
    words = ah.pack_signs(torch.where(bits, 1.0, -1.0).to(device))
    assert np.array_equal(words.cpu().numpy().view(np.uint8), _packbits_padded(bits.numpy()))


def _packbits_padded(bits):
    """np.packbits(bitorder="little"), each row padded with zero bytes to whole words."""
    packed = np.packbits(bits, axis=1, bitorder="little")
    out = np.zeros((bits.shape[0], ((bits.shape[1] + 63) // 64) * 8), np.uint8)
    out[:, :packed.shape[1]] = packed
    return out


def test_padding_bits_are_zero(device):
    words = ah.pack_signs(torch.ones(3, 70, device=device))
    assert words[:, 0].eq(-1).all() and words[:, 1].eq((1 << 6) - 1).all()


def test_empty_batch(device):
    for shape in [(0, 5), (0, 3, 4, 4), (0, 64)]:
        x = torch.randn(shape, device=device)
        y, words = ah.relu_pack(x, 0.0)
        assert y.shape == x.shape and words.shape == (0, ref.words_for_bits(ref.units_per_sample(x)))
        assert ah.relu_mask_backward(x, words, 0.0).shape == x.shape
        assert ah.unpack_bits(words, ref.units_per_sample(x)).shape == (0, ref.units_per_sample(x))


def test_zero_units_per_sample(device):
    x = torch.randn(4, 0, device=device)
    assert ah.pack_signs(x).shape == (4, 0)
    assert ah.unpack_bits(ah.pack_signs(x), 0).shape == (4, 0)


def test_non_contiguous_inputs_use_logical_order(device):
    base = activations((6, 40, 3), torch.float32, device)
    for x in [base.transpose(1, 2), base[:, ::2], base[::2], base.permute(2, 0, 1)]:
        assert not x.is_contiguous()
        check_all_ops(x, 0.0)
        check_all_ops(x, 0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_rows(device, dtype):
    """Contiguous views that start one element into their storage (the CUDA kernels' scalar
    path), rows of an odd length."""
    base = activations((7 * 65 + 1,), dtype, device)
    x = base[1:].view(7, 65)
    assert x.is_contiguous() and x.storage_offset() == 1
    check_all_ops(x, 0.0)
    check_all_ops(x, 0.1)


# The CUDA kernel's paths: C % 8 == 0 (16-byte vectors) or not, S = H * W a multiple of 64
# (words written whole) or not (segments straddle words); 5-D channels_last_3d.
CHANNELS_LAST_SHAPES = [(3, 5, 7, 9), (2, 8, 8, 8), (2, 40, 4, 16), (1, 64, 5, 5), (2, 4, 3, 5, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CHANNELS_LAST_SHAPES)
def test_channels_last(device, dtype, shape):
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = activations(shape, dtype, device).contiguous(memory_format=fmt)
    y, words = ah.relu_pack(x, 0.0)
    assert torch.equal(words, ref.pack_signs(x.contiguous()))
    assert y.is_contiguous(memory_format=fmt)
    assert_activation(y, torch.relu(x), x, 0.0)
    assert y.stride() == torch.relu(x).stride()
    check_all_ops(x, 0.05)


@pytest.mark.parametrize("bad", [torch.int32, torch.int64, torch.bool, torch.complex64,
                                 torch.uint8])
def test_bad_dtype_raises_type_error(device, bad):
    x = torch.zeros(2, 3, dtype=bad, device=device)
    with pytest.raises(TypeError, match="float32"):
        ah.pack_signs(x)
    with pytest.raises(TypeError, match="float32"):
        ah.relu_pack(x)


def test_zero_dim_raises_value_error(device):
    with pytest.raises(ValueError, match="batch dimension"):
        ah.pack_signs(torch.tensor(1.0, device=device))
    with pytest.raises(ValueError, match="batch dimension"):
        ah.relu_pack(torch.tensor(1.0, device=device))


def test_bad_words_raise(device):
    g = torch.randn(2, 100, device=device)
    with pytest.raises(ValueError, match=r"shape \[2, 2\]"):
        ah.relu_mask_backward(g, torch.zeros(2, 3, dtype=torch.int64, device=device))
    with pytest.raises(TypeError, match="int64"):
        ah.relu_mask_backward(g, torch.zeros(2, 2, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="2-D"):
        ah.unpack_bits(torch.zeros(4, dtype=torch.int64, device=device), 10)
    with pytest.raises(ValueError, match="n must be >= 0"):
        ah.unpack_bits(torch.zeros(4, 1, dtype=torch.int64, device=device), -1)
    with pytest.raises(ValueError, match=r"shape \[4, 2\] .* got \[4, 1\]"):
        ah.unpack_bits(torch.zeros(4, 1, dtype=torch.int64, device=device), 65)


def test_reference_raises_the_same_errors():
    with pytest.raises(TypeError, match="float32"):
        ref.pack_signs(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="batch dimension"):
        ref.relu_pack(torch.tensor(1.0), 0.0)
    with pytest.raises(ValueError, match=r"shape \[2, 2\]"):
        ref.relu_mask_backward(torch.randn(2, 100), torch.zeros(2, 3, dtype=torch.int64), 0.0)


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_opcheck(device, slope):
    if ah.backend() != "extension":
        pytest.skip("reference backend: no custom ops to check")
    # opcheck compares with allclose (NaN != NaN), so no NaN here; -0.0 and 0.0 stay.
    x = torch.randn(4, 3, 70, device=device)
    x[x.abs() < 0.2] = 0.0
    x[x.abs() > 2.0] = -0.0
    x.requires_grad_()
    torch.library.opcheck(torch.ops.activation_hash.pack_signs, (x.detach(),))
    torch.library.opcheck(torch.ops.activation_hash.relu_pack, (x, slope))
    words = ah.pack_signs(x.detach())
    g = torch.randn(4, 3, 70, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.activation_hash.relu_mask_backward, (g, words, slope))
    torch.library.opcheck(torch.ops.activation_hash.unpack_bits, (words, 210))


class _Seen(torch.Tensor):
    """A tensor subclass whose __torch_function__ notes every call it sees."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


class _SeeingMode(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_eager_entries_agree_with_the_overload_and_overrides_still_see_the_ops(device):
    """A plain tensor takes the eager entry (csrc/eager.cpp): the same values, words and
    gradients as the op called through torch.ops; a __torch_function__ subclass or mode still
    sees the op, and a non-tensor gets a TypeError."""
    if ah.backend() != "extension":
        pytest.skip("reference backend: no custom ops")
    ops = torch.ops.activation_hash
    x = activations((5, 3, 67), torch.float32, device, seed=4)
    for slope in (0.0, 0.2, 1):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        y, words = ah.relu_pack(a, slope)
        y_op, words_op = ops.relu_pack.default(b, float(slope))
        assert_same_values(y, y_op)
        assert torch.equal(words, words_op) and torch.equal(ah.pack_signs(x), words_op)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        (y_op * g).sum().backward()
        assert_same_values(a.grad, b.grad)
    sub = x.as_subclass(_Seen)
    _Seen.seen.clear()
    ah.relu_pack(sub)
    ah.pack_signs(sub)
    assert ops.relu_pack.default in _Seen.seen and ops.pack_signs.default in _Seen.seen
    with _SeeingMode() as mode:
        ah.relu_pack(x, 0.1)
        ah.pack_signs(x)
    assert mode.seen == [ops.relu_pack.default, ops.pack_signs.default]
    with pytest.raises(TypeError, match="relu_pack: x must be a torch.Tensor"):
        ah.relu_pack([1.0, -1.0])
    with pytest.raises(TypeError, match="pack_signs: x must be a torch.Tensor"):
        ah.pack_signs(np.ones((2, 3), dtype=np.float32))


def test_eager_entries_run_from_threads_at_once():
    """They release the GIL around the kernel, as torch's bindings do: threads get their own
    results."""
    xs = [activations((64, 1000), torch.float32, "cpu", seed=s) for s in range(4)]
    got = [None] * len(xs)

    def run(i):
        for _ in range(20):
            got[i] = ah.relu_pack(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, (y, words) in zip(xs, got):
        assert_same_values(y, torch.relu(x))
        assert torch.equal(words, ref.pack_signs(x))


def test_extension_is_in_use():
    # `make test` sets ACTIVATION_HASH_REQUIRE_EXTENSION=1: a missing build must fail here.
    if os.environ.get("ACTIVATION_HASH_REQUIRE_EXTENSION") == "1":
        assert ah.backend() == "extension"
    assert ah.ops.cpu_isa() in {"avx512", "avx2", "scalar", "reference"}


def test_cuda_kernels_registered_when_cuda_is_buildable():
    ops = ["pack_signs", "relu_pack", "relu_mask_backward", "unpack_bits"]
    if ah.backend() != "extension":  # the extension is not loaded: no op is registered
        assert not any(hasattr(torch.ops.activation_hash, op) for op in ops)
        return
    expect_cuda = (ah.backend() == "extension" and torch.version.cuda is not None
                   and shutil.which("nvcc") is not None
                   and os.environ.get("ACTIVATION_HASH_CUDA", "auto") != "0")
    for op in ops:
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"activation_hash::{op}", "CUDA")
        assert has == expect_cuda, (op, has, expect_cuda)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"activation_hash::{op}", "CPU") \
            == (ah.backend() == "extension")


_ISA_SCRIPT = """
import torch, activation_hash as ah
from activation_hash import reference as ref
g = torch.Generator().manual_seed(0)
for n in [1, 5, 63, 64, 65, 200, 1027]:
    for slope in [0.0, 0.1]:
        x = torch.randn(9, n, generator=g)
        x[x.abs() < 0.1] = -0.0
        x[1, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -float("nan")])[:n]
        y, w = ah.relu_pack(x, slope)
        yr, wr = ref.relu_pack(x, slope)
        assert torch.equal(w, wr) and torch.equal(y.view(torch.int32), yr.view(torch.int32))
        assert torch.equal(ah.pack_signs(x), wr)
        gy = torch.randn(9, n, generator=g)
        assert torch.equal(ah.relu_mask_backward(gy, w, slope).view(torch.int32),
                           ref.relu_mask_backward(gy, w, slope).view(torch.int32))
        for dt, it in [(torch.float16, torch.int16), (torch.bfloat16, torch.int16),
                       (torch.float64, torch.int64)]:
            xh = x.to(dt)
            yh, wh = ah.relu_pack(xh, slope)
            yrh, wrh = ref.relu_pack(xh, slope)
            nan = torch.isnan(yh)  # NaN payloads are not specified (helpers.assert_same_values)
            assert torch.equal(wh, wrh) and torch.equal(nan, torch.isnan(yrh)), dt
            assert torch.equal(yh.masked_fill(nan, 0).view(it), yrh.masked_fill(nan, 0).view(it))
print("ok")
"""


@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_kernel_family(isa):
    """The pack kernels of every ISA level this CPU has (capped by ACTIVATION_HASH_ISA in a
    subprocess), bit for bit against the reference."""
    run_with_isa(_ISA_SCRIPT, isa)


_KERNELS_SCRIPT = """
import activation_hash as ah
print(" ".join(f"{k}={v}" for k, v in sorted(ah.ops.cpu_kernels().items())))
print("ok")
"""


def _cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_kernels_follow_the_cap(isa):
    """ACTIVATION_HASH_ISA caps every op group: the pack, fingerprint and regions kernels take
    AVX-512 with F/BW/DQ/VL (no VPOPCNTDQ needed), the Hamming ones only with VPOPCNTDQ."""
    out = run_with_isa(_KERNELS_SCRIPT, isa).split()[0:4]
    got = dict(kv.split("=") for kv in out)
    want = {"scalar": {"hamming": "scalar", "pack": "scalar", "fingerprint": "scalar",
                       "regions": "scalar"},
            "avx2": {"hamming": "avx2", "pack": "avx2", "fingerprint": "scalar",
                     "regions": "avx2"},
            "avx512": {"hamming": "avx512" if _cpu_has("avx512_vpopcntdq") else "avx2",
                       "pack": "avx512", "fingerprint": "avx512", "regions": "avx512"}}[isa]
    assert got == want


def test_unknown_isa_cap_warns():
    env = package_env(ACTIVATION_HASH_ISA="avx-512")
    out = subprocess.run([sys.executable, "-W", "always", "-c",
                          "import activation_hash as ah; print(ah.ops.cpu_isa())"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ACTIVATION_HASH_ISA='avx-512'" in out.stderr, out.stderr


_REFERENCE_SCRIPT = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import activation_hash as ah
    import activation_hash.nn
import torch
assert ah.backend() == "reference", ah.backend()
assert sum("reference" in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]
x = torch.randn(3, 70, requires_grad=True)
y, words = ah.relu_pack(x, 0.0)
y.sum().backward()
assert torch.equal(x.grad, (x > 0).float())
assert torch.equal(ah.unpack_bits(words, 70), x > 0)
print("ok")
"""


def test_import_without_extension_uses_reference_with_one_warning():
    env = dict(os.environ, ACTIVATION_HASH_BACKEND="reference")
    env.pop("ACTIVATION_HASH_REQUIRE_EXTENSION", None)
    out = subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
