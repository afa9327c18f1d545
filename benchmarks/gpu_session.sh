#!/usr/bin/env bash
# Everything a GPU can show, in one call on the device machine: build the extension for the
# card, run the whole test suite on it (compiled Triton, CUDA kernels, CPU/GPU agreement),
# measure the card's ceilings and run the benchmarks. Logs and results JSON go to $OUT
# (default ./gpu-out); copy the JSON files into benchmarks/results/ and run
# `python benchmarks/report.py --update-readme --plot`.
#
#   bash benchmarks/gpu_session.sh [all|tests|bench] [pytest -k expression for benchmarks]
#
# Carry .whl/ (made by benchmarks/gpu_wheels.sh) to compare with pydensecrf, faiss and
# flash-kmeans on the device.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${1:-all}
select=${2:-}

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

status=0
if [ "$what" != bench ]; then
  echo "== tests"
  python3 -m pytest python_tests -q -ra 2>&1 | tee "$OUT/tests.log"
  status=${PIPESTATUS[0]}
fi
if [ "$what" != tests ]; then
  for bench in benchmarks/bench_*.py; do
    name=$(basename "$bench" .py)
    name=${name#bench_}
    echo "== benchmark $name"
    python3 -m pytest "$bench" -q ${select:+-k "$select"} \
      --benchmark-json="$OUT/$name-$tag.json" 2>&1 | tail -25 | tee -a "$OUT/bench.log"
  done
fi
exit "$status"
