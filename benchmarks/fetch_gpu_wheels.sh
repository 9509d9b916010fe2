#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels that benchmarks/gpu_check.py needs on a bare GPU machine.
#
# The GPU machine has torch, transformers, accelerate, tokenizers, safetensors, pyarrow, pandas, xxhash, matplotlib
# and numpy (and, through transformers, huggingface_hub, filelock, packaging, pyyaml, tqdm), but not `datasets`,
# which prepare_data.py, train.py and finetune_roberta_qa.py import. These are the wheels datasets needs beyond that
# list: datasets itself, dill and multiprocess, and fsspec at a version datasets accepts (<= 2026.9.0; the machine's
# own fsspec, brought by huggingface_hub, may be newer). All are pure Python. The versions are the ones the test
# suite runs with. evaluate and wandb are not needed: the scripts run offline and fall back without them.
#
#     benchmarks/fetch_gpu_wheels.sh            # writes .whl/ at the repository root (git ignores it)
#
# Then carry .whl/ to the GPU machine and, from the repository root there:
#
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#     python3 benchmarks/gpu_check.py --json gpu_check.json --markdown gpu_check.md
#
# PYTHON_VERSION (default 3.12) must be the GPU machine's Python (multiprocess ships one wheel per Python version);
# WHEEL_DIR (default .whl) is where the wheels go.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
WHEEL_DIR="${WHEEL_DIR:-.whl}"
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0)

python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEEL_DIR" "${WHEELS[@]}"

# What each wheel declares it needs (extras aside), to compare with what the GPU machine has.
for wheel in "$WHEEL_DIR"/*.whl; do
    echo "== $(basename "$wheel")"
    unzip -p "$wheel" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
