"""benchmarks/gpu_check.py through its command line at its CPU smoke size: every leg end to end, a report that exists
while the check runs and survives SIGTERM, a budget that skips legs instead of overrunning, and a leg whose needs
are missing that loses only its own row.

The smoke run is the GPU check's own code path (preflight, benchmark table, prepare_data.py, train.py,
finetune_roberta_qa.py, the FSDP legs' launch, stop, resume and checks) at a tiny shape in float32, with aot_eager
standing in for inductor. What only a GPU can show (bf16 speed, inductor, FSDP itself) it cannot.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
LEGS = ["preflight", "throughput", "store", "pretrain", "fsdp2", "qa", "fsdp1"]


def command(tmp_path, *args):
    return [sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"), "--json",
            str(tmp_path / "report.json"), "--markdown", str(tmp_path / "report.md"), *args]


def run_check(tmp_path, *args, env=None):
    return subprocess.run(command(tmp_path, *args), capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def report(tmp_path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


def statuses(tmp_path) -> dict:
    return {leg["name"]: leg["status"] for leg in report(tmp_path)["legs"]}


@pytest.mark.slow
def test_smoke_run_passes_every_leg_and_reports_the_numbers(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    legs = {leg["name"]: leg for leg in report(tmp_path)["legs"]}
    assert list(legs) == LEGS and report(tmp_path)["passed"] and report(tmp_path)["smoke"]
    for leg in legs.values():
        assert leg["status"] == "ok" and leg["error"] is None and all(leg["checks"].values()), leg

    versions = legs["preflight"]["numbers"]["versions"]
    assert versions["torch"] and versions["transformers"] and versions["datasets"] != "missing"
    rows = {row["implementation"]: row for row in legs["throughput"]["numbers"]["rows"]}
    assert set(rows) == {"ours + regional compile", "transformers (sdpa) + compile",
                         "transformers (sdpa, gathered head) + compile", "ours", "transformers (sdpa)",
                         "ours + compile", "ours + regional compile, vocab padded to 64"}
    for row in rows.values():
        assert row["tokens_per_second"] > 0 and row["step_ms"] > 0 and row["mfu"] > 0 and row["vs_transformers"] > 0
        assert row["error"] is None
    assert rows["ours + compile"]["warmup_s"] > 0  # the compilation is timed
    assert "max_predictions_per_seq 10" in legs["throughput"]["numbers"]["shape"]  # ours ran its static head

    assert legs["store"]["numbers"]["vocabulary"] == 600
    pretrain = legs["pretrain"]["numbers"]
    assert pretrain["last_loss"] < pretrain["first_loss"] and pretrain["last_eval_loss"] < pretrain["first_eval_loss"]
    assert pretrain["train_tokens_per_second"] > 0 and pretrain["benchmark_tokens_per_second"] > 0
    qa = legs["qa"]["numbers"]
    assert 0 <= qa["exact_match"] <= 100 and 0 <= qa["f1"] <= 100 and qa["windows_per_second"] > 0
    assert qa["backbone"].endswith("pretrain/final_model")  # the model pretrain saved, not fsdp2's
    for version in (1, 2):  # stopped halfway by SIGTERM, resumed, saved: the CPU stand-in of the FSDP runs
        for check in ("resumed from the halfway checkpoint", "final_model equals the last checkpoint",
                      "the weights trained after the resume"):
            assert legs[f"fsdp{version}"]["checks"][check], check
    assert (tmp_path / "work" / "logs" / "pretrain.log").is_file()  # the logs stay beside the report

    table = (tmp_path / "report.md").read_text()
    assert table.strip() in result.stdout and "| leg | status | seconds | result |" in table
    for name in LEGS:
        assert f"| {name} | ok |" in table
    assert "| ours + regional compile |" in table and "MFU (datasheet)" in table


@pytest.mark.slow
def test_the_report_exists_while_it_runs_and_sigterm_leaves_a_valid_one(tmp_path):
    check = subprocess.Popen(command(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline:  # until the first leg has finished, with the check still running
        if (tmp_path / "report.json").is_file() and statuses(tmp_path)["preflight"] not in ("pending", "running"):
            break
        time.sleep(0.5)
    assert check.poll() is None, "the check ended before its first leg was reported"
    assert statuses(tmp_path)["preflight"] == "ok" and statuses(tmp_path)["qa"] == "pending"
    check.send_signal(signal.SIGTERM)
    output, _ = check.communicate(timeout=120)
    assert check.returncode == 128 + signal.SIGTERM, output[-3000:]
    final = report(tmp_path)
    assert final["stopped_by"] == "SIGTERM" and not final["passed"]
    legs = statuses(tmp_path)
    assert legs["preflight"] == "ok" and "interrupted" in legs.values() and legs["fsdp1"] == "pending", legs
    assert "stopped by SIGTERM" in (tmp_path / "report.md").read_text()


def test_a_tiny_budget_skips_legs_and_ends_in_time(tmp_path):
    start = time.monotonic()
    result = run_check(tmp_path, "--budget_s", "4")
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    legs = statuses(tmp_path)
    assert [name for name, status in legs.items() if status == "skipped (budget)"] == LEGS[1:], legs
    # The budget, plus the interpreter's start-up (imports of torch) and one check stopped at its deadline.
    assert elapsed < 4 + 20, elapsed
    assert "| throughput | skipped (budget) |" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_a_leg_whose_import_is_missing_loses_only_its_own_row(tmp_path):
    hidden = tmp_path / "hidden"
    (hidden / "datasets").mkdir(parents=True)
    (hidden / "datasets" / "__init__.py").write_text("raise ImportError('datasets is hidden by the test')\n")
    result = run_check(tmp_path, "--legs", "preflight", "throughput", "store",
                       env={"PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    legs = {leg["name"]: leg for leg in report(tmp_path)["legs"]}
    assert legs["throughput"]["status"] == "ok"  # torch and transformers alone
    assert legs["store"]["status"] == "missing needs" and legs["store"]["seconds"] == 0  # marked, never started
    assert "datasets (datasets is hidden by the test)" in legs["store"]["error"]
    assert legs["preflight"]["numbers"]["missing"] == {"store": [legs["store"]["error"].split("import ")[1]]}


def test_a_leg_without_its_inputs_is_a_row_not_a_crash(tmp_path):
    """Legs whose inputs are missing fail alone, with the reason in their row, and the exit code says so."""
    result = run_check(tmp_path, "--legs", "qa", "fsdp1")
    assert result.returncode == 1, result.stderr[-3000:]
    legs = {leg["name"]: leg for leg in report(tmp_path)["legs"]}
    assert [(name, leg["status"]) for name, leg in legs.items()] == [("qa", "failed"), ("fsdp1", "failed")]
    assert "no pretrained model to fine-tune" in legs["qa"]["error"]
    assert "needs the store leg" in legs["fsdp1"]["error"]
    assert "| qa | failed |" in result.stdout and "NOT all legs ok" in result.stdout
