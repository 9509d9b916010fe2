"""benchmarks/gpu_check.py: the GPU check's legs end to end at its CPU smoke size, through its command line.

The smoke run is the GPU check's own code path (benchmark table, prepare_data.py, train.py, finetune_roberta_qa.py,
the FSDP leg's launch and checks) at a tiny shape in float32, with aot_eager standing in for inductor: about a
minute and a half on a 2-core CPU. What only a GPU can show (bf16 speed, inductor, FSDP itself) it cannot.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
LEGS = ["throughput", "store", "pretrain", "qa", "fsdp"]


def run_check(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"),
                           "--json", str(tmp_path / "report.json"), "--markdown", str(tmp_path / "report.md"), *args],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_smoke_run_passes_every_leg_and_reports_the_numbers(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    legs = {leg["name"]: leg for leg in report["legs"]}
    assert list(legs) == LEGS and report["passed"] and report["smoke"]
    for leg in legs.values():
        assert leg["status"] == "ok" and leg["error"] is None and all(leg["checks"].values()), leg

    rows = {row["implementation"]: row for row in legs["throughput"]["numbers"]["rows"]}
    assert set(rows) == {"transformers (sdpa)", "transformers (sdpa) + compile", "ours", "ours + compile"}
    for row in rows.values():
        assert row["tokens_per_second"] > 0 and row["step_ms"] > 0 and 0 < row["mfu"] and row["vs_transformers"] > 0
    assert "max_predictions_per_seq 10" in legs["throughput"]["numbers"]["shape"]  # ours ran its static head

    assert legs["store"]["numbers"]["vocabulary"] == 600
    pretrain = legs["pretrain"]["numbers"]
    assert pretrain["last_loss"] < pretrain["first_loss"] and pretrain["last_eval_loss"] < pretrain["first_eval_loss"]
    assert pretrain["train_tokens_per_second"] > 0 and pretrain["benchmark_tokens_per_second"] > 0
    assert pretrain["ratio"] > 0
    qa = legs["qa"]["numbers"]
    assert 0 <= qa["exact_match"] <= 100 and 0 <= qa["f1"] <= 100 and qa["windows_per_second"] > 0
    for version in (1, 2):  # stopped halfway by SIGTERM, resumed, saved: the CPU stand-in of the FSDP runs
        for check in ("resumed from the halfway checkpoint", "final_model equals the last checkpoint",
                      "the weights trained after the resume"):
            assert legs["fsdp"]["checks"][f"FSDP{version}: {check}"], check
    assert (tmp_path / "work" / "runs" / "pretrain" / "final_model" / "model.safetensors").is_file()

    # One summary table at the end of the output, the same as the markdown file, with a row per leg.
    table = (tmp_path / "report.md").read_text()
    assert table.strip() in result.stdout and "| leg | status | seconds | result |" in table
    for name in LEGS:
        assert f"| {name} | ok |" in table
    assert "| ours + compile |" in table


def test_a_failing_leg_is_a_row_not_a_crash(tmp_path):
    """Legs whose inputs are missing fail alone, with the reason in their row, and the exit code says so."""
    result = run_check(tmp_path, "--legs", "qa", "fsdp")
    assert result.returncode == 1, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(leg["name"], leg["status"]) for leg in report["legs"]] == [("qa", "failed"), ("fsdp", "failed")]
    assert "needs the pretrain leg" in report["legs"][0]["error"] and not report["passed"]
    assert "| qa | failed |" in result.stdout and "NOT all legs ok" in result.stdout
