"""Comparisons shared by the tests."""
import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_same_values(actual: torch.Tensor, expected: torch.Tensor,
                       signed_zeros: bool = True) -> None:
    """Bit-for-bit equal, except that any NaN equals any NaN (payloads are not specified);
    with signed_zeros=False also -0.0 equals +0.0."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), "NaN positions differ"
    if not signed_zeros:
        nan_a, nan_e = nan_a | (actual == 0), nan_e | (expected == 0)
    a = actual.masked_fill(nan_a, 0).contiguous().view(_INT_OF_SIZE[actual.element_size()])
    e = expected.masked_fill(nan_e, 0).contiguous().view(_INT_OF_SIZE[expected.element_size()])
    bad = (a != e).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} values differ, first at {bad[0].tolist()}: " \
        f"{actual[tuple(bad[0])]} vs {expected[tuple(bad[0])]}"


ISAS = ["scalar", "avx2", "avx512"]  # ACTIVATION_HASH_ISA levels, lowest first


def package_env(**extra: str) -> dict:
    """os.environ for a subprocess that imports the activation_hash under test (PYTHONPATH
    leads with its directory, not an installed copy), plus ``extra``."""
    import os

    import activation_hash as ah

    root = os.path.dirname(os.path.dirname(os.path.abspath(ah.__file__)))
    path = os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH")] if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_with_isa(script: str, isa: str, env: dict | None = None, timeout: int = 300) -> str:
    """Run ``script`` in a fresh interpreter whose kernels are capped at ``isa``
    (ACTIVATION_HASH_ISA, read once per process), importing the activation_hash under test
    (not an installed copy: PYTHONPATH leads with its directory). The script must print "ok"
    last. Skips when this CPU lacks ``isa``; fails when the cap did not take effect."""
    import os
    import subprocess
    import sys

    import pytest

    import activation_hash as ah

    if ah.backend() != "extension":
        pytest.skip("no compiled extension: nothing to dispatch")
    root = os.path.dirname(os.path.dirname(os.path.abspath(ah.__file__)))
    prelude = (
        "import sys, activation_hash as ah\n"
        f"assert ah.__file__.startswith({root!r}), ah.__file__\n"
        f"_got, _order = ah.ops.cpu_isa(), {ISAS!r}\n"
        f"if _order.index(_got) < _order.index({isa!r}):\n"
        "    print('unsupported', _got)\n"
        "    sys.exit(0)\n"
        f"assert _got == {isa!r}, ('ACTIVATION_HASH_ISA did not take effect', _got)\n")
    full_env = package_env(ACTIVATION_HASH_ISA=isa, **(env or {}))
    out = subprocess.run([sys.executable, "-c", prelude + script], env=full_env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode == 0 and out.stdout.startswith("unsupported"):
        pytest.skip(f"this CPU has no {isa} (its kernels run {out.stdout.split()[1]})")
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
    return out.stdout


def cli_user_error(main, argv, capsys) -> str:
    """Run the CLI's ``main(argv)``, which must fail as a user error: exit status 2 and one
    line on stderr, no traceback. Returns that line."""
    import pytest

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


class ResidualBlock(torch.nn.Module):
    """conv-BN-ReLU-conv plus the identity, then ReLU (functional calls: the walks and slices
    see them through the function mode), c channels in and out."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        F = torch.nn.functional
        return F.relu(x + self.conv2(F.relu(self.bn(self.conv1(x)))))
