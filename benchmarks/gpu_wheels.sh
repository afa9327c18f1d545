#!/usr/bin/env bash
# Wheels of the baselines the GPU session compares against, for a device machine that has
# no package index (Python 3.12, x86-64): faiss-cpu and flash-kmeans from PyPI, pydensecrf2
# built here (it publishes no binary wheel). They go to .whl/ (keep it out of git); the
# session script installs them when the folder is carried along.
#
#   bash benchmarks/gpu_wheels.sh [PYTHON3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py312=${1:-python3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  faiss-cpu flash-kmeans
"$py312" -m pip wheel -q --no-deps pydensecrf2 -w .whl
ls -la .whl
