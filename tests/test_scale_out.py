"""FSDP on the CPU: train.py's optimizer order and its saving of compiled, sharded models (torch FSDP over gloo).

accelerate runs FSDP only on GPUs, so tests/fsdp_worker.py wraps the model with torch's FSDP itself and runs
train.py's own pieces around it in two processes. What needs a GPU (accelerate's own FSDP wrapping, its sharded
save_state/load_state, DeepSpeed) is checked by benchmarks/gpu_check.py's FSDP leg, not here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_trains_and_saves_the_trained_weights(version, tmp_path, tiny_tokenizer_dir):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               str(ROOT / "tests" / "fsdp_worker.py"), str(version), str(tiny_tokenizer_dir), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["losses"][-1] < report["losses"][0] - 0.5, report["losses"]  # the optimizer reaches the weights
    assert report["keys_equal"] and report["saved_equals_memory"]  # final_model holds what was trained
    assert report["changed_from_initial"] == report["num_weights"], report
    # Weight decay by tensor rank: the matrices keep their shapes under FSDP (FSDP1 needs use_orig_params).
    assert len(report["decayed_matrices"]) >= 10 and all(ndim == 2 for ndim in report["decayed_matrices"])
