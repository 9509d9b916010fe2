#!/usr/bin/env bash
# The wheels a bare GPU machine may lack, fetched where PyPI can be reached, and installed there only where the
# machine's own are missing or too old.
#
#     benchmarks/fetch_gpu_wheels.sh            # here: downloads them into .whl/ at the repository root (git ignores
#                                               # it; about 50 MB, most of it pyarrow)
#     benchmarks/fetch_gpu_wheels.sh install    # on the GPU machine, from the repository root, with .whl/ carried
#
# A GPU image seen here had torch 2.11, transformers 5.17, accelerate 1.15, huggingface_hub 1.33 and no `datasets`,
# which prepare_data.py, train.py and finetune_roberta_qa.py import. The wheels: datasets and what it needs beyond
# such an image (dill, multiprocess, xxhash, fsspec at a version datasets accepts), pyarrow at requirements.txt's
# floor (24, datasets' own), and accelerate 1.16 (the release CI tests besides the 1.15 floor). All are pure Python
# but pyarrow, multiprocess and xxhash, which are built per Python version: PYTHON_VERSION (default 3.12) must be
# the GPU machine's.
#
# `install` asks pip for the carried packages at requirements.txt's ranges, with no index but .whl/: pip keeps
# every package the machine already has at a version in range and installs only the others (a missing datasets,
# a pyarrow older than 24; an accelerate 1.15 stays, being in range), and then lists what is in use. It installs
# into the machine's own site-packages (a GPU machine lent for a slot runs as root; elsewhere add PIP_USER=1).
# The preflight of benchmarks/gpu_check.py then names anything still missing or out of range.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
WHEEL_DIR="${WHEEL_DIR:-.whl}"
CARRIED=(datasets accelerate pyarrow)  # asked for by name at requirements.txt's ranges; the others come as needs
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0 pyarrow==24.0.0
        accelerate==1.16.0)

if [[ "${1:-fetch}" == "install" ]]; then
    if ! ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
        echo "error: no wheels in $WHEEL_DIR/: run benchmarks/fetch_gpu_wheels.sh where PyPI can be reached, and carry" \
             "$WHEEL_DIR/ here" >&2
        exit 2
    fi
    # Each carried package with its range from requirements.txt (the one list of versions), e.g. "pyarrow>=24".
    mapfile -t SPECS < <(python3 - "${CARRIED[@]}" <<'PY'
import re, sys
wanted = {name.lower() for name in sys.argv[1:]}
for line in open("requirements.txt"):
    line = line.split("#")[0].strip()
    match = re.match(r"([A-Za-z0-9_.\-]+)", line)
    if match and match[1].lower() in wanted:
        print(line.replace(" ", ""))
PY
)
    echo "installing where missing or out of range, from $WHEEL_DIR/ only: ${SPECS[*]}"
    python3 -m pip install --no-index --find-links "$WHEEL_DIR" --disable-pip-version-check --no-warn-script-location \
        "${SPECS[@]}" | grep -v "^Requirement already satisfied" || true
    python3 -m pip list --disable-pip-version-check 2>/dev/null | grep -iE "^(torch|transformers|accelerate|datasets|pyarrow|huggingface.hub|fsspec|dill|multiprocess|xxhash|safetensors|tokenizers) " || true
    exit 0
fi

python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEEL_DIR" "${WHEELS[@]}"
du -sh "$WHEEL_DIR"

# What each wheel declares it needs (extras aside), to compare with what the GPU machine has.
for wheel in "$WHEEL_DIR"/*.whl; do
    echo "== $(basename "$wheel")"
    unzip -p "$wheel" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
