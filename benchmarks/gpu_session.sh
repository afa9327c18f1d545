#!/usr/bin/env bash
# Everything a GPU can show, in one call on the device machine, most valuable first, each
# step under its own time limit so that one slow step cannot use up a short lease:
#   1. build the extension for this card only;
#   2. the tests that need the card (marked cuda or triton: compiled Triton kernels, CUDA CRF,
#      k-means and knn, CPU/GPU agreement);
#   3. the benchmarks, the card's ceilings first, one results JSON per file;
#   4. (all) the rest of the test suite, which CI also runs on CPU.
# Logs and results go to $OUT (default ./gpu-out); copy the JSON files into
# benchmarks/results/ and run `python benchmarks/report.py --update-readme --plot`.
#
#   bash benchmarks/gpu_session.sh [all|tests|bench] [pytest -k expression for benchmarks]
#
# Limits in seconds: TEST_LIMIT (step 2, default 240), BENCH_LIMIT (each benchmark file,
# default 120), REST_LIMIT (step 4, default 240). Carry .whl/ (made by
# benchmarks/gpu_wheels.sh) to compare with pydensecrf, faiss and flash-kmeans on the device.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${1:-all}
select=${2:-}
TEST_LIMIT=${TEST_LIMIT:-240}
BENCH_LIMIT=${BENCH_LIMIT:-120}
REST_LIMIT=${REST_LIMIT:-240}

# Baselines that the device has no index to install from (see benchmarks/gpu_wheels.sh).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

tag=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())")
arch=$(python3 -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')")
export CUDAARCHS="${arch}-real"

echo "== build for sm_${arch} ($tag)"
if ! pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
python3 -m unseg_kernels info | tee "$OUT/info.txt"

# timeout exits 124 when it stops a step; say so, since pytest's own summary is then lost.
run_step() {
  local limit=$1 log=$2
  shift 2
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "!! stopped after ${limit} s: $*" | tee -a "$log"
  return "$rc"
}

card_tests="cuda or triton"  # pytest markers of the tests that need the card
status=0
if [ "$what" != bench ]; then
  echo "== tests that need the card"
  run_step "$TEST_LIMIT" "$OUT/tests.log" python3 -m pytest python_tests -q -ra -m "$card_tests" ||
    status=1
fi
if [ "$what" != tests ]; then
  # Alphabetical order puts the ceilings first and the slow training steps last.
  for bench in benchmarks/bench_*.py; do
    name=$(basename "$bench" .py)
    name=${name#bench_}
    echo "== benchmark $name"
    run_step "$BENCH_LIMIT" "$OUT/bench.log" python3 -m pytest "$bench" -q \
      ${select:+-k "$select"} --benchmark-json="$OUT/$name-$tag.json"
  done
fi
if [ "$what" = all ]; then
  echo "== the rest of the tests"
  run_step "$REST_LIMIT" "$OUT/tests.log" python3 -m pytest python_tests -q -ra \
    -m "not ($card_tests)" || status=1
fi
exit "$status"
