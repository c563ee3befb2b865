#!/usr/bin/env bash
# One command for a machine with a GPU (tests/gpu/README.md): build, device tests, sanitizers,
# benches, one summary table. Needs CUDA torch (any recent version: the extension is built
# against the torch it finds), nvcc, pytest/hypothesis/numpy/scikit-learn; FAISS is optional.
#
#   tests/gpu/run.sh [--device cuda|cpu] [--out DIR] [--python PY] [--full]
#
# --device cpu is the dry run of the plumbing on a machine without a GPU (a test calls it):
# the same steps on the CPU, the benches at their smoke sizes, no sanitizers.
# --full: the benches at their --quick sizes on the CPU as well (slow; figures, not plumbing).
# Exit status: 0 when every step passed. Each step's log is in DIR (default build/gpu-run).
# Every step has a time limit (a step over it fails and the rest still run); on one GPU the
# whole run is planned for about 6 minutes (build 1-2, tests 1-2, sanitizers 1-3, benches 1).
set -u
cd "$(dirname "$0")/../.."
DEVICE=cuda
OUT=build/gpu-run
PY=${PYTHON:-}
FULL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:?--device needs cpu or cuda}; shift 2 ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
    --full) FULL=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (expected --device, --out, --python, --full)"; exit 2 ;;
  esac
done
case "$DEVICE" in cpu|cuda|cuda:*) ;; *) echo "run.sh: --device takes cpu or cuda, got '$DEVICE'"; exit 2 ;; esac
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STEPS="$OUT/steps.tsv"
: >"$STEPS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ACTIVATION_HASH_REQUIRE_EXTENSION=1
TIMEOUT=$(command -v timeout || true)

# step NAME SECONDS COMMAND...: run it with a time limit, log to $OUT/NAME.log, record the result.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc
  echo "== $name: $*"
  if [ -n "$TIMEOUT" ]; then "$TIMEOUT" "$limit" "$@" >"$OUT/$name.log" 2>&1; rc=$?
  else "$@" >"$OUT/$name.log" 2>&1; rc=$?; fi
  local status=passed
  [ $rc -eq 0 ] || status="FAILED (exit $rc)"
  [ $rc -eq 124 ] && status="FAILED (over ${limit} s)"
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >>"$STEPS"
  echo "   $status in $((SECONDS - t0)) s (log: $OUT/$name.log)"
  [ $rc -eq 0 ] || tail -n 15 "$OUT/$name.log"
  return $rc
}

skip() { printf '%s\t%s\t0\n' "$1" "skipped: $2" >>"$STEPS"; echo "== $1: skipped ($2)"; }

"$PY" - <<'EOF' | tee "$OUT/environment.txt"
import platform, shutil, subprocess, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}: sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
else:
    print("no GPU visible to torch")
nvcc = shutil.which("nvcc")
if nvcc:
    print(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip()
          .splitlines()[-1])
EOF

# 1. The extension, in place, against this torch (CUDA kernels required on a GPU run).
if [ "$DEVICE" = cpu ]; then
  step build 600 "$PY" setup.py --quiet build_ext --inplace
else
  step build 420 env ACTIVATION_HASH_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py --quiet build_ext --inplace
fi || { echo "build failed: nothing else can run"; exit 1; }

# 2. The device-parametrized tests, on this device only; every op on its edge cases.
KEY=${DEVICE%%:*}
REQUIRE=$([ "$KEY" = cuda ] && echo 1 || echo 0)
step device_tests 300 env ACTIVATION_HASH_REQUIRE_GPU=$REQUIRE "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_ops.py tests/test_nn.py tests/test_collisions.py tests/test_hamming.py -k "$KEY"
step ops_check 120 "$PY" tests/gpu/ops_check.py --device "$DEVICE"

# 3. compute-sanitizer over the op checks (GPU only, where the tool works on this machine).
if [ "$KEY" = cuda ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck; do
    step "sanitizer_$tool" 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$PY" tests/gpu/ops_check.py --device "$DEVICE" --small
  done
else
  skip sanitizers "$([ "$KEY" = cuda ] && echo 'no compute-sanitizer on PATH' || echo 'CPU dry run')"
fi

# 4. The benches of the CUDA path, on this device, JSON into $OUT.
SIZE=--quick
[ "$KEY" = cpu ] && [ $FULL = 0 ] && SIZE=--smoke
for b in relu_pack hamming_knn collisions record; do
  step "bench_$b" 150 "$PY" "bench/$b.py" --device "$DEVICE" $SIZE --json "$OUT/bench_$b.json"
done

# 5. One summary table: every step, then the ratios of every bench.
"$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(out, "steps.tsv"))]
print(f"\n{'step':<24} {'result':<28} {'seconds':>8}")
for name, status, sec in rows:
    print(f"{name:<24} {status:<28} {sec:>8}")
for name in ("relu_pack", "hamming_knn", "collisions", "record"):
    path = os.path.join(out, f"bench_{name}.json")
    if not os.path.exists(path):
        continue
    doc = json.load(open(path))
    print(f"\n{name} ({doc['config'].get('device')}, {doc['config'].get('gpu', 'no GPU')}): "
          "ratio = baseline seconds / ours")
    for key, value in doc["ratios"].items():
        print(f"  {key:<64} {value:8.3f}")
failed = [r[0] for r in rows if r[1].startswith("FAILED")]
print(f"\n{'all steps passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
sys.exit(1 if failed else 0)
EOF
