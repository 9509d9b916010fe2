"""benchmarks/throughput.py: rows that survive a stop, compiled rows started only when their allowance fits, the goal
compared like with like, MFU that says whose FLOPs it counts, and the datasheet's peaks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402
from throughput import GATHERED, OURS, REFERENCE_COMPILED, REGIONAL, TRANSFORMERS, Settings  # noqa: E402

from utils import UsageError  # noqa: E402

# Odd tiny shapes: a transposed dimension cannot pass by luck.
TINY = dict(device="cpu", vocab_size=99, hidden=48, layers=1, heads=3, seq=13, batch=3, steps=2, warmup=1,
            compile_backend="aot_eager")
TINY_FLAGS = ["--device", "cpu", "--vocab_size", "99", "--hidden", "48", "--layers", "1", "--heads", "3", "--seq",
              "13", "--batch", "3", "--warmup", "1", "--compile_backend", "aot_eager"]


def row(name, tokens_per_second=None, peak=None, error=None):
    return {"implementation": name, "tokens_per_second": tokens_per_second, "peak_memory_gib": peak,
            "error": error, "status": "timed" if tokens_per_second else "skipped (budget)",
            "vs_transformers": 1.0 if tokens_per_second else None}


def test_the_goal_is_compared_compiled_with_compiled_or_not_checked():
    settings = Settings(**TINY)
    eager_only = [row(OURS, 300), row(REGIONAL, 600), row(TRANSFORMERS, 100),
                  row(REFERENCE_COMPILED, error="skipped (budget): 20 s left, needs ~90 s")]
    goal = throughput.goal_check(eager_only, "NVIDIA H200", settings)
    # Eager transformers is 6x slower than ours compiled, but it is not what the goal compares with.
    assert goal["speedup"]["passed"] is None and goal["memory"]["passed"] is None
    assert goal["speedup"]["text"].startswith("not checked: transformers (sdpa) + compile was not timed (skipped")
    compiled = [row(OURS, 300), row(REGIONAL, 600, peak=10.0), row(TRANSFORMERS, 100),
                row(REFERENCE_COMPILED, 500, peak=12.0)]
    goal = throughput.goal_check(compiled, "NVIDIA H200", settings)
    assert goal["speedup"]["passed"] is False and goal["speedup"]["ratio"] == pytest.approx(1.2)
    assert goal["memory"]["passed"] is True
    assert goal["tokens_per_second"]["passed"] is None  # the 600,000 target is set at roberta-base, not this shape
    compiled[1]["tokens_per_second"] = 760
    assert throughput.goal_check(compiled, "NVIDIA H200", settings)["speedup"]["passed"] is True


def test_mfu_counts_useful_and_executed_flops_and_says_so():
    settings = Settings(**TINY, implementations=(OURS, TRANSFORMERS, f"{GATHERED} + compile"))
    results = {name: throughput.Result(name, status="timed", step_times=[0.01]) for name in settings.implementations}
    rows = {r["implementation"]: r for r in throughput.result_rows(results, settings, peak_flops=1e12)}
    # The same useful FLOPs for every row (ours' count); transformers' dense head runs on all 13 positions, the
    # static heads on k=2 gathered rows per sequence.
    assert len({r["useful_flops_per_token"] for r in rows.values()}) == 1
    assert rows[TRANSFORMERS]["mfu_executed"] > rows[TRANSFORMERS]["mfu"]
    assert rows[OURS]["mfu_executed"] == pytest.approx(rows[f"{GATHERED} + compile"]["mfu_executed"])
    assert rows[OURS]["mfu_executed"] > rows[OURS]["mfu"]  # k/T = 2/13 > 15%: the filler rows run too
    assert "useful" in throughput.FLOPS_COUNTED and "executed" in throughput.markdown_table(list(rows.values()))


@pytest.mark.parametrize("name, tflops", [("NVIDIA H200", 989.4), ("NVIDIA H100 80GB HBM3", 989.4),
                                          ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
                                          ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0),
                                          ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)])
def test_datasheet_peaks_take_the_most_specific_name(name, tflops):
    assert throughput.datasheet_tflops(name) == tflops


def test_a_compiled_row_starts_only_when_its_allowance_fits(monkeypatch):
    monkeypatch.setitem(throughput.COMPILE_ALLOWANCE_S, "cpu", {"eager": 0.0, "regional": 1000.0, "whole": 1000.0})
    settings = Settings(**TINY, implementations=(OURS, REGIONAL, TRANSFORMERS, REFERENCE_COMPILED))
    bench = throughput.Bench(settings, budget_s=120)
    report = bench.run()
    rows = {r["implementation"]: r for r in report["rows"]}
    assert rows[OURS]["timed_steps"] == 2 and rows[TRANSFORMERS]["timed_steps"] == 2
    for name in (REGIONAL, REFERENCE_COMPILED):
        assert rows[name]["status"] == "skipped (budget)" and rows[name]["tokens_per_second"] is None
        assert "allowance 1000 s" in rows[name]["error"]
    assert report["complete"] and report["goal"]["speedup"]["passed"] is None
    # A kind measured in the run replaces its stated allowance, with a margin.
    bench.measured_allowance["regional"] = 8.0
    assert bench.allowance(REGIONAL) == 10.0 and bench.allowance(REFERENCE_COMPILED) == 1000.0


def test_json_rules_and_bad_numbers_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def refused(*args):
        with pytest.raises(UsageError) as refusal:
            throughput.parse_args(list(args))
        assert "\n" not in str(refusal.value)
        return str(refusal.value)

    (tmp_path / "notes.json").write_text('{"mine": 1}')
    assert "is not a report of benchmarks/throughput.py" in refused("--json", "notes.json", "--overwrite")
    (tmp_path / "earlier.json").write_text(json.dumps({"written_by": throughput.SCRIPT}))
    assert "pass --overwrite" in refused("--json", "earlier.json")
    assert throughput.parse_args(["--json", "earlier.json", "--overwrite"])[1] == Path("earlier.json")
    assert "invalid positive float" in refused("--budget_s", "0")
    assert "invalid positive int" in refused("--steps", "0")
    assert "is not a multiple of --heads" in refused("--hidden", "50", "--heads", "3")
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--json", "notes.json"],
                            capture_output=True, text=True)  # through the command line: one line, exit code 2
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stdout == "", result.stderr


@pytest.mark.slow
def test_sigterm_keeps_every_row_timed_so_far(tmp_path):
    out = tmp_path / "rows.json"
    bench = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *TINY_FLAGS, "--steps",
                              "100000", "--implementations", OURS, TRANSFORMERS, "--json", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:  # until both rows have timed steps in the file
        if out.is_file() and all(r["timed_steps"] >= 2 for r in json.loads(out.read_text())["rows"]):
            break
        time.sleep(0.2)
    assert bench.poll() is None, bench.communicate()[0][-3000:]
    bench.send_signal(signal.SIGTERM)
    output, _ = bench.communicate(timeout=60)
    assert bench.returncode == 128 + signal.SIGTERM, output[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["stopped_by"] == "SIGTERM"
    assert all(r["timed_steps"] >= 2 and r["tokens_per_second"] > 0 for r in report["rows"])
    assert "stopped by SIGTERM" in output and f"| {OURS} |" in output
