"""tests/gpu/run.sh, the one-command GPU check, dry-run on the CPU (its plumbing), and the op
check it runs under compute-sanitizer."""
import json
import os
import subprocess
import sys

import pytest
import torch

import activation_hash as ah

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "gpu", "run.sh")
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
import ops_check  # noqa: E402

needs_extension = pytest.mark.skipif(ah.backend() != "extension",
                                     reason="the GPU check runs the compiled kernels")


@needs_extension
def test_run_sh_dry_run_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("ACTIVATION_HASH_BACKEND", None)
    proc = subprocess.run(["bash", SCRIPT, "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = dict(line.split("\t")[:2] for line in (tmp_path / "steps.tsv").read_text()
                 .splitlines())
    assert steps["build"] == steps["device_tests"] == steps["ops_check"] == "passed"
    assert steps["sanitizers"].startswith("skipped")
    assert "all steps passed" in proc.stdout
    for name in ("relu_pack", "hamming_knn", "collisions", "record"):
        assert steps[f"bench_{name}"] == "passed"
        doc = json.loads((tmp_path / f"bench_{name}.json").read_text())
        assert doc["config"]["device"] == "cpu" and doc["config"]["smoke"] is True
        assert doc["ratios"] and all(v > 0 for v in doc["ratios"].values())
        assert name in proc.stdout  # its ratios are in the summary table
    relu = json.loads((tmp_path / "bench_relu_pack.json").read_text())["ratios"]
    for dtype in ("float32", "float16", "bfloat16"):
        assert f"copy_bandwidth/relu_pack/64x100 {dtype}" in relu
        assert f"copy_bandwidth/relu_pack/2x8x5x3 {dtype} channels_last" in relu
    knn = json.loads((tmp_path / "bench_hamming_knn.json").read_text())["ratios"]
    assert {"torch_matmul_topk/topk/256b", "copy_bandwidth/hamming_distance/256b"} <= set(knn)
    coll = json.loads((tmp_path / "bench_collisions.json").read_text())["ratios"]
    assert {"torch_sort", "torch_unique"} <= set(coll)


def test_run_sh_rejects_bad_arguments():
    for args, said in ((["--device", "tpu"], "--device takes cpu or cuda"),
                       (["--bogus"], "unknown argument '--bogus'")):
        proc = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True)
        assert proc.returncode == 2 and said in proc.stdout, proc.stdout


@needs_extension
def test_ops_check_passes_and_catches_a_wrong_kernel(monkeypatch, capsys):
    assert ops_check.main(["--device", "cpu"]) == 0
    right = ah.ops.hamming_topk

    def off_by_one(q, b, k):
        d, i = right(q, b, k)
        return d + (d.numel() > 0), i

    monkeypatch.setattr(ops_check.ops, "hamming_topk", off_by_one)
    assert ops_check.main(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH on cpu: hamming_topk" in out and "mismatches" in out


def test_ops_check_same_values_contract():
    a = torch.tensor([0.0, float("nan"), 1.0])
    assert ops_check.same_values(a, torch.tensor([-0.0, float("nan"), 1.0]))
    assert not ops_check.same_values(a, torch.tensor([0.0, 1.0, 1.0]))
    assert not ops_check.same_values(a, a[:2])
