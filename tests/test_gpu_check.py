"""benchmarks/gpu_check.py through its command line at its CPU smoke size: every leg end to end, a report that exists
while the check runs and survives SIGTERM, a budget that skips legs instead of overrunning, a leg whose needs are
missing that loses only its own row, folders that are not the check's own left alone, and no process of a leg
left running when the next starts.

The smoke run is the GPU check's own code path (preflight, benchmark table, prepare_data.py, train.py,
finetune_roberta_qa.py, the FSDP legs' launch, stop, resume and checks) at a tiny shape in float32, with aot_eager
standing in for inductor. What only a GPU can show (bf16 speed, inductor, FSDP itself) it cannot.
"""

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import throughput  # noqa: E402

from utils import UsageError  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
LEGS = list(gpu_check.LEGS)
OUT = gpu_check.OutputFolder  # the names the check writes, from their owner


def command(tmp_path, *args):
    return [sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"), "--output_dir",
            str(tmp_path / "out"), *args]


def run_check(tmp_path, *args, env=None):
    return subprocess.run(command(tmp_path, *args), capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def report(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / OUT.REPORT_JSON).read_text())


def statuses(tmp_path) -> dict:
    return {leg["name"]: leg["status"] for leg in report(tmp_path)["legs"]}


def tree(folder: Path) -> dict:
    """Every file under `folder` with its content: what a refused command must leave exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_smoke_run_passes_every_leg_and_reports_the_numbers(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    legs = {leg["name"]: leg for leg in report(tmp_path)["legs"]}
    assert list(legs) == LEGS and report(tmp_path)["passed"] and report(tmp_path)["smoke"]
    for leg in legs.values():
        assert leg["status"] == "ok" and leg["error"] is None and all(leg["checks"].values()), leg

    preflight = legs["preflight"]["numbers"]
    assert preflight["versions"]["torch"] and preflight["versions"]["pyarrow"] and preflight["packages"] == {}
    assert preflight["attention"]["kernel"] in ("flash", "efficient", "math", "cudnn")  # the SDPA that ran
    assert preflight["attention"]["priority_order"][0].isupper()
    environment = json.loads((tmp_path / "out" / OUT.ENVIRONMENT).read_text())
    assert environment["attention"] == preflight["attention"]

    rows = legs["throughput"]["numbers"]["rows"]
    assert [row["implementation"] for row in rows][:5] == [*throughput.GOAL_ROWS, f"{throughput.GATHERED} + compile"]
    for row in rows:
        assert row["tokens_per_second"] > 0 and row["mfu"] > 0 and row["vs_transformers"] > 0, row
        assert row["error"] is None and row["timed_steps"] == 3
    dense = next(row for row in rows if row["implementation"] == throughput.TRANSFORMERS)
    assert dense["mfu_executed"] > dense["mfu"]  # its head runs on every token: more FLOPs than the useful ones
    goal = legs["throughput"]["numbers"]["goal"]
    assert goal["speedup"]["ratio"] > 0 and "transformers (sdpa) + compile" in goal["speedup"]["text"]
    assert "max_predictions_per_seq 10" in legs["throughput"]["numbers"]["shape"]  # ours ran its static head

    assert legs["store"]["numbers"]["vocabulary"] == 600
    pretrain = legs["pretrain"]["numbers"]
    assert pretrain["last_loss"] < pretrain["first_loss"] and pretrain["last_eval_loss"] < pretrain["first_eval_loss"]
    assert pretrain["benchmark_tokens_per_second"] > 0 and "not checked" in pretrain["agreement"]
    qa = legs["qa"]["numbers"]
    assert 0 <= qa["exact_match"] <= 100 and 0 <= qa["f1"] <= 100 and qa["windows_per_second"] > 0
    assert qa["backbone"].endswith("pretrain/final_model")  # the model pretrain saved, not fsdp2's
    for version in (1, 2):  # stopped halfway by SIGTERM, resumed, saved: the CPU stand-in of the FSDP runs
        for check in ("resumed from the halfway checkpoint", "final_model equals the last checkpoint",
                      "the weights trained after the resume"):
            assert legs[f"fsdp{version}"]["checks"][check], check

    # Everything to bring back is in the output folder, small; the store and runs stay in the working folder.
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".lock") == sorted(
        [OUT.REPORT_JSON, OUT.REPORT_MD, OUT.ENVIRONMENT, OUT.LOGS])
    assert sum(p.stat().st_size for p in (tmp_path / "out").iterdir()) < 2_000_000
    with tarfile.open(tmp_path / "out" / OUT.LOGS) as tar:
        logs = gpu_check.WorkFolder.LOGS
        assert {f"{logs}/pretrain.log", f"{logs}/fsdp2-resumed.log", f"{logs}/throughput.log"} <= set(tar.getnames())
    table = (tmp_path / "out" / OUT.REPORT_MD).read_text()
    assert table.strip() in result.stdout and "| leg | status | seconds | result |" in table
    for name in LEGS:
        assert f"| {name} | ok |" in table
    assert "| ours + regional compile |" in table and "MFU (executed FLOPs)" in table and "not checked" in table


@pytest.mark.slow
def test_the_report_exists_while_it_runs_and_sigterm_leaves_a_valid_one(tmp_path):
    check = subprocess.Popen(command(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline:  # until the throughput leg runs, with the check still running
        if (tmp_path / "out" / OUT.REPORT_JSON).is_file() and statuses(tmp_path)["throughput"] == "running":
            break
        time.sleep(0.5)
    assert check.poll() is None, "the check ended before its throughput leg was reported"
    assert statuses(tmp_path)["preflight"] == "ok" and statuses(tmp_path)["qa"] == "pending"
    rows = tmp_path / "work" / gpu_check.WorkFolder.THROUGHPUT
    while time.time() < deadline and not rows.is_file():  # until the benchmark has written its first rows
        time.sleep(0.2)
    check.send_signal(signal.SIGTERM)
    output, _ = check.communicate(timeout=120)
    assert check.returncode == 128 + signal.SIGTERM, output[-3000:]
    final = report(tmp_path)
    assert final["stopped_by"] == "SIGTERM" and not final["passed"]
    legs = statuses(tmp_path)
    assert legs["preflight"] == "ok" and legs["throughput"] == "interrupted" and legs["fsdp1"] == "pending", legs
    assert "stopped by SIGTERM" in (tmp_path / "out" / OUT.REPORT_MD).read_text()
    bench = next(leg for leg in final["legs"] if leg["name"] == "throughput")["numbers"]
    assert bench["complete"] is False and len(bench["rows"]) == 7  # what the benchmark wrote as it stopped


def test_a_tiny_budget_skips_legs_and_ends_in_time(tmp_path):
    start = time.monotonic()
    result = run_check(tmp_path, "--budget_s", "4")
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    legs = statuses(tmp_path)
    assert [name for name, status in legs.items() if status == "skipped (budget)"] == LEGS[1:], legs
    # The budget, plus the interpreter's start-up (imports of torch: slower for a CUDA build) and one script stopped
    # at its deadline; the whole check at this size takes minutes.
    assert elapsed < 4 + 40, elapsed
    assert "| throughput | skipped (budget) |" in (tmp_path / "out" / OUT.REPORT_MD).read_text()


@pytest.mark.slow
def test_a_leg_whose_import_is_missing_loses_only_its_own_row(tmp_path):
    hidden = tmp_path / "hidden"
    (hidden / "datasets").mkdir(parents=True)
    (hidden / "datasets" / "__init__.py").write_text("raise ImportError('datasets is hidden by the test')\n")
    result = run_check(tmp_path, "--legs", "preflight", "store",
                       env={"PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    legs = {leg["name"]: leg for leg in report(tmp_path)["legs"]}
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


def refusal(tmp_path, *args) -> str:
    """gpu_check.main refusing `args` before any leg: its one-line message."""
    with pytest.raises(UsageError) as refused:
        gpu_check.main(["--smoke", *args])
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_folders_and_files_that_are_not_the_checks_own_are_refused_before_any_leg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user = tmp_path / "user"  # a user's folder: a store, a training run, their own report.md
    for path, text in {"store/prepare_data.json": "{}", "runs/mine/args.json": "{}", "report.md": "my notes"}.items():
        (user / path).parent.mkdir(parents=True, exist_ok=True)
        (user / path).write_text(text)
    before = tree(user)
    for flags in (["--workdir", "user"], ["--workdir", "user", "--overwrite"]):
        assert "holds files that benchmarks/gpu_check.py did not write" in refusal(tmp_path, *flags)
    for flag in ("--json", "--markdown"):  # an existing file that is not a report of the check, even --overwrite
        message = refusal(tmp_path, flag, "user/report.md", "--overwrite", "--workdir", "w", "--output_dir", "o")
        assert "exists and is not a report of benchmarks/gpu_check.py" in message
    assert "must be separate folders" in refusal(tmp_path, "--workdir", "o/w", "--output_dir", "o")
    (tmp_path / "a_file").write_text("x")
    assert refusal(tmp_path, "--workdir", "a_file") == "--workdir a_file is a file, not a folder"
    assert tree(user) == before and not (tmp_path / "w").exists() and not (tmp_path / "o").exists()

    for budget in ("0", "-5", "nan"):  # a budget that runs nothing is refused, not the default
        assert "invalid positive number of seconds" in refusal(tmp_path, "--budget_s", budget)
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--budget_s", "0"], capture_output=True,
                            text=True, cwd=tmp_path)  # through the command line: one line, exit code 2
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stdout == "", result.stderr


def test_a_second_check_needs_overwrite_which_replaces_only_its_own_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_check(tmp_path, "--legs", "qa").returncode == 1  # qa alone fails (no model): a report all the same
    first = report(tmp_path)
    (tmp_path / "work" / "my_notes.txt").write_text("keep me")
    (tmp_path / "out" / "my_notes.txt").write_text("keep me too")
    args = ["--legs", "qa", "--workdir", "work", "--output_dir", "out"]
    assert "already holds a GPU check working folder; pass --overwrite" in refusal(tmp_path, *args)
    (tmp_path / "elsewhere.json").write_text(json.dumps(first))  # an earlier report of the check, moved by a user
    assert "holds an earlier report of benchmarks/gpu_check.py" in refusal(
        tmp_path, "--json", "elsewhere.json", "--legs", "qa", "--workdir", "w2", "--output_dir", "o2")
    result = run_check(tmp_path, "--legs", "qa", "--overwrite")
    assert result.returncode == 1 and "no pretrained model" in result.stdout, result.stderr[-2000:]
    assert (tmp_path / "work" / "my_notes.txt").read_text() == "keep me"
    assert (tmp_path / "out" / "my_notes.txt").read_text() == "keep me too"
    assert report(tmp_path)["seconds"] != first["seconds"]


def test_read_only_folders_and_report_paths_are_one_line_before_any_leg(tmp_path, monkeypatch, read_only_mount):
    monkeypatch.chdir(tmp_path)
    read_only = read_only_mount("ro")
    assert refusal(tmp_path, "--workdir", "ro/w").startswith("--workdir ro/w cannot be written")
    assert refusal(tmp_path, "--output_dir", "ro/o").startswith("--output_dir ro/o cannot be written")
    assert refusal(tmp_path, "--json", "ro/r.json").startswith("--json cannot be written")
    assert list(read_only.iterdir()) == [] and not (tmp_path / "gpu_check_work").exists()


SPAWNER = """
import os, signal, subprocess, sys, time
# A launcher that starts a worker in a session of its own (as torchrun does) which ignores SIGTERM, then hangs.
worker = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                           "signal.SIG_IGN); time.sleep(600)"], start_new_session=True)
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(600)
"""


def test_a_stopped_script_leaves_no_process_behind_not_even_in_its_own_session(tmp_path):
    """run_script at a leg's deadline: the launcher's group and its worker in another session are both ended
    (SIGKILL for the one that ignores SIGTERM) before run_script returns."""
    driver = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
        import gpu_check
        gpu_check.become_subreaper()
        work = gpu_check.WorkFolder(Path({str(tmp_path / 'w')!r}))
        ctx = gpu_check.Context(plan=gpu_check.Plan.make(True), work=work,
                                out=gpu_check.OutputFolder(Path({str(tmp_path / 'o')!r})), env={{}}, budget_s=60)
        ctx.leg_deadline = time.monotonic() + 4
        try:
            gpu_check.run_script(ctx, "spawner", [sys.executable, "-c", {SPAWNER!r}, {str(tmp_path / 'pid')!r}])
        except gpu_check.LegError as error:
            print("stopped:", str(error).splitlines()[0][:60])
        print("left:", gpu_check.descendants(__import__("os").getpid()))
    """)
    result = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
    assert "stopped: stopped at the leg's time limit" in result.stdout, result.stdout + result.stderr
    worker = int((tmp_path / "pid").read_text())
    assert "left: []" in result.stdout and not Path(f"/proc/{worker}").exists()
