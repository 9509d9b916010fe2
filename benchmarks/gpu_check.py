"""The GPU check: one command for a first GPU slot, that reports whatever breaks within its time budget.

    python benchmarks/gpu_check.py --output_dir $OUT --workdir /tmp/gpu_check   # a GPU slot: $OUT comes back
    python benchmarks/gpu_check.py --smoke   # the same legs, tiny, on the CPU (what tests/test_gpu_check.py runs)

Two folders. --output_dir (default gpu_check_output) receives everything to bring back, a few small files:
gpu_check.json and gpu_check.md (the report), gpu_check_environment.json (the preflight's record: versions,
packages, the attention kernel) and gpu_check_logs.tar.gz (every script's log, each trimmed to its last MB).
--workdir (default gpu_check_work) receives the large things the legs make: the data store, the runs and their
checkpoints (gigabytes at roberta-base), the full logs. Each is this script's own: a folder that holds files it did
not write is refused, and one holding an earlier check is replaced only with --overwrite, which removes this
script's own entries and nothing else (WorkFolder and OutputFolder declare them). A lock keeps a second check out.

Legs, in order, each through the repository's own code and command lines, each its own row:

  preflight   benchmarks/preflight.py, one interpreter: versions (GPU, driver, CUDA, cuDNN, every package), the
              packages missing or outside requirements.txt's ranges (pyarrow included), every import each leg
              needs, a C compiler, the Python headers and one triton kernel, and one attention forward and backward
              at the benchmark's shape with the kernel that ran and torch's SDPA priority order. A leg whose imports
              fail is marked `missing needs` here; without a working compiler the legs run uncompiled.
  throughput  benchmarks/throughput.py: the four rows that answer the goal (ours, ours compiled as train.py
              --compile does, transformers sdpa, transformers sdpa compiled), then transformers with our gathered
              head, then ours compiled whole; roberta-base, sequence 512, batch 32, bf16. Its rows are kept even
              when it is stopped at the leg's limit (it rewrites them after every step round and on SIGTERM). The
              goal is checked compiled against compiled, or the row says why it was not.
  store       prepare_data.py --dataset demo: the offline demo corpus, a trained byte-level BPE, blocks of 512.
  pretrain    train.py --compile in bf16 (accelerate launch) for 100 updates on that store at roberta-base shape:
              the loss falls; its logged tokens/s is reported beside the benchmark's at the same shape (not
              checked: train.py's log does not synchronise the device, the benchmark does).
  fsdp2       train.py under `accelerate launch --use_fsdp --fsdp_version 2` with cpu_ram_efficient_loading (the
              case that untied the MLM decoder) and --compile: stopped by SIGTERM halfway, resumed; the loss
              falls, final_model/ loads and equals the last checkpoint.
  qa          finetune_roberta_qa.py --dataset demo --bf16 from whatever model exists (pretrain's final_model/,
              else the newest checkpoint of any run): exact match, F1, windows/s.
  fsdp1       the fsdp2 leg with FSDP1, uncompiled.

Time: --budget_s (default 480) bounds the whole run, and each leg has its own limit. A leg starts only when the
budget left covers its minimum (else its row says `skipped (budget)`) and its scripts are stopped at
min(its limit, the budget left): a stopped training run saves a checkpoint (SIGTERM), which later legs use. Every
process a leg started, torchrun's workers in their own sessions included, is gone before the next leg starts.
The report is rewritten after every leg and on SIGTERM/SIGINT, listing the legs not yet run as `pending`.

A bare GPU machine may lack packages (the preflight names them): bring their wheels with
benchmarks/fetch_gpu_wheels.sh and install them as docs/gpu.md says. Nothing here uses the network. Exit code 0
when every leg is `ok`, 1 otherwise, 2 for bad usage (before anything is written), 128 + the signal number when
stopped by a signal.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402

from fault_injection import SIGNAL_AT_STEP_ENV  # noqa: E402
from folders import (  # noqa: E402
    LOCK_FILE,
    FolderLock,
    OutputKind,
    check_in_use,
    check_output_folder,
    check_report_file,
    is_output_of,
    remove_own_outputs,
    report_signature,
)
from utils import ArgumentParser, UsageError, exit_code_for_signal, run_cli  # noqa: E402

SCRIPT = "benchmarks/gpu_check.py"  # the signature in its reports (folders.is_own_report)
PREFLIGHT = ROOT / "benchmarks" / "preflight.py"
THROUGHPUT = ROOT / "benchmarks" / "throughput.py"
LEGS = ("preflight", "throughput", "store", "pretrain", "fsdp2", "qa", "fsdp1")  # most telling first
# What each leg imports (its scripts' imports included); the preflight tries them all in one process.
NEEDS = {"throughput": ["torch", "transformers"],
         "store": ["torch", "transformers", "tokenizers", "datasets", "pyarrow", "safetensors"],
         "pretrain": ["torch", "transformers", "datasets", "accelerate", "safetensors"],
         "qa": ["torch", "transformers", "datasets", "accelerate", "safetensors"],
         "fsdp1": ["torch", "transformers", "datasets", "accelerate", "safetensors"],
         "fsdp2": ["torch", "transformers", "datasets", "accelerate", "safetensors"]}
# (time limit, minimum budget left to start) per leg, in seconds: on a GPU (cold: nothing compiled before), and in
# the CPU smoke run. The GPU's limits add up to more than the default budget on purpose: legs that finish early
# leave their time to the next ones, and the last ones are skipped when the budget is spent. docs/gpu.md gives
# the predicted seconds of each.
LIMITS = {"gpu": {"preflight": (60, 10), "throughput": (200, 60), "store": (60, 20), "pretrain": (130, 60),
                  "fsdp2": (140, 70), "qa": (90, 40), "fsdp1": (100, 50)},
          "smoke": {"preflight": (120, 2), "throughput": (300, 30), "store": (120, 10), "pretrain": (300, 30),
                    "qa": (300, 30), "fsdp1": (300, 30), "fsdp2": (300, 30)}}
STOP_GRACE_S = 15.0  # between SIGTERM and SIGKILL: time for a training run's checkpoint, or the benchmark's rows
LOG_TAIL_BYTES = 1 << 20  # the part of each log that goes into the tarball


class WorkFolder:
    """The owner of --workdir's layout: the only code that names what the legs write there."""

    RECORD = "gpu_check_workdir.json"  # marks the folder as this script's: its arguments and start time
    STORE, RUNS, LOGS = "store", "runs", "logs"
    PREFLIGHT, THROUGHPUT, PRETRAIN_BENCHMARK = "preflight.json", "throughput.json", "pretrain-benchmark.json"
    KIND = OutputKind("GPU check working folder", SCRIPT, records=(RECORD,),
                      made=(RECORD, STORE, RUNS, LOGS, PREFLIGHT, THROUGHPUT, PRETRAIN_BENCHMARK, LOCK_FILE,
                            *(name + ".tmp" for name in (RECORD, PREFLIGHT, THROUGHPUT, PRETRAIN_BENCHMARK))))

    def __init__(self, path: Path):
        self.path = path
        self.store, self.runs, self.logs = path / self.STORE, path / self.RUNS, path / self.LOGS

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def benchmark_json(self, name: str) -> Path:
        return self.path / {"throughput": self.THROUGHPUT, "pretrain-benchmark": self.PRETRAIN_BENCHMARK}[name]


class OutputFolder:
    """The owner of --output_dir's layout: the few small files to bring back from the machine."""

    REPORT_JSON, REPORT_MD = "gpu_check.json", "gpu_check.md"
    ENVIRONMENT, LOGS = "gpu_check_environment.json", "gpu_check_logs.tar.gz"
    KIND = OutputKind("GPU check output folder", SCRIPT, records=(REPORT_JSON,),
                      made=(REPORT_JSON, REPORT_MD, ENVIRONMENT, LOGS, LOCK_FILE,
                            *(name + ".tmp" for name in (REPORT_JSON, REPORT_MD, ENVIRONMENT, LOGS))))

    def __init__(self, path: Path, json_path: Path | None = None, markdown_path: Path | None = None):
        self.path = path
        self.json, self.markdown = json_path or path / self.REPORT_JSON, markdown_path or path / self.REPORT_MD
        self.environment, self.logs = path / self.ENVIRONMENT, path / self.LOGS


@dataclass
class Plan:
    """The sizes of one check: the GPU's, or the smoke test's (tiny, CPU, float32, aot_eager)."""

    smoke: bool
    shape: list[str]  # benchmarks/throughput.py's shape flags
    attention: list[str]  # benchmarks/preflight.py's: the benchmark's attention shape
    store_args: list[str]
    model_args: list[str]  # train.py's model shape, the benchmark's
    batch: int
    train_steps: int
    fsdp_steps: int
    mixed_precision: str  # accelerate launch --mixed_precision
    qa_args: list[str]

    @classmethod
    def make(cls, smoke: bool) -> Plan:
        if smoke:
            hidden, layers, heads, seq, batch = 64, 2, 2, 64, 8
            shape = ["--device", "cpu", "--vocab_size", "600", "--dtype", "fp32", "--steps", "3", "--warmup", "2",
                     "--compile_backend", "aot_eager"]
            store = ["--train_tokenizer", "600", "--max_documents", "150", "--num_workers", "1"]
            qa = ["--no-bf16", "--max_train_samples", "48", "--max_eval_samples", "24", "--num_train_epochs", "1",
                  "--per_device_batch_size", "8", "--max_seq_length", "64", "--doc_stride", "24",
                  "--learning_rate", "1e-3"]
            steps, fsdp_steps, precision, dtype = 40, 12, "no", "fp32"
        else:
            hidden, layers, heads, seq, batch = 768, 12, 12, 512, 32
            shape = ["--device", "cuda", "--dtype", "bf16", "--steps", "10", "--warmup", "3"]
            store = ["--train_tokenizer", "8000", "--num_workers", str(min(os.cpu_count() or 1, 16))]
            qa = ["--bf16", "--max_train_samples", "1000", "--max_eval_samples", "300", "--num_train_epochs", "1",
                  "--per_device_batch_size", "32", "--max_seq_length", "384", "--doc_stride", "128",
                  "--learning_rate", "1e-4"]
            steps, fsdp_steps, precision, dtype = 100, 20, "bf16", "bf16"
        shape += ["--hidden", str(hidden), "--layers", str(layers), "--heads", str(heads), "--seq", str(seq),
                  "--batch", str(batch)]
        attention = ["--device", "cpu" if smoke else "cuda", "--batch", str(batch), "--heads", str(heads), "--seq",
                     str(seq), "--head_dim", str(hidden // heads), "--dtype", dtype]
        model = ["--context_length", str(seq), "--num_transformer_blocks", str(layers), "--embedding_dimension",
                 str(hidden), "--num_attention_heads", str(heads), "--mlp_ratio", "4"]
        return cls(smoke, shape, attention, ["--context_length", str(seq), *store], model, batch, steps, fsdp_steps,
                   precision, qa)


class LegError(Exception):
    """A leg could not run (a script failed, an input is missing): the row says why."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached the check: the running leg stops, the report is written, the check exits."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Leg:
    name: str
    status: str = "pending"  # ok | check failed | failed | missing needs | skipped (budget) | interrupted | pending
    seconds: float = 0.0
    summary: str = ""  # one line for the table
    numbers: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # {what: passed}
    error: str | None = None


@dataclass
class Context:
    plan: Plan
    work: WorkFolder
    out: OutputFolder
    env: dict
    budget_s: float
    start: float = field(default_factory=time.monotonic)
    legs: dict = field(default_factory=dict)  # name -> Leg, every selected leg from the start
    leg_deadline: float = 0.0  # time.monotonic() by which the running leg's scripts must end
    compile_problem: str | None = None  # why nothing can be compiled here (the preflight's finding)
    missing: dict = field(default_factory=dict)  # leg -> ["module: error"], from the preflight
    versions: dict = field(default_factory=dict)
    child: subprocess.Popen | None = None  # the script running now, stopped with the check
    write_failed: bool = False  # the report could not be written once (said once, the legs go on)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)


# ----------------------------------------------------------------------------------------------------------------
# Running the scripts: each in its own process group, stopped at the leg's deadline or with the check; every
# process it started is gone before the next one starts
# ----------------------------------------------------------------------------------------------------------------


def script_env(smoke: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if smoke:  # a tiny model on a shared CPU: one thread each, or OpenMP threads spin against each other
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _own_group_dying_with_us() -> None:  # in the child, before exec: its own group, SIGTERM when we die (Linux)
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def become_subreaper() -> bool:
    """Processes orphaned below us (torchrun's workers, which run in sessions of their own, when their launcher
    dies) are re-parented to this process instead of init, so that `end_descendants` still finds them (Linux)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, state) of every process below `root`, from /proc (empty where there is none)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            state, ppid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(int(ppid), []).append((int(entry), state))
    found, todo = [], [root]
    while todo:
        for pid, state in children.get(todo.pop(), []):
            found.append((pid, state))
            todo.append(pid)
    return found


def _reap_zombies() -> None:
    for pid, state in descendants(os.getpid()):
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def end_descendants(grace_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace_s`, to every process still below this one, and wait until each is gone;
    returns the pids that had to be ended."""
    _reap_zombies()
    alive = [pid for pid, state in descendants(os.getpid()) if state != "Z"]
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in alive:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap_zombies()
            if not [pid for pid, state in descendants(os.getpid()) if state != "Z"]:
                return alive
            time.sleep(0.1)
    _reap_zombies()
    return alive


def stop_child(ctx: Context, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the running script's whole group (train.py saves a checkpoint on it, the benchmark writes its rows),
    SIGKILL after `grace_s`; then every process it left behind (a launcher's workers in their own sessions)."""
    child, ctx.child = ctx.child, None
    if child is not None and child.poll() is None:
        for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                break
            try:
                child.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    left = end_descendants(grace_s=min(grace_s, 10.0))
    if left:
        print(f"  ended {len(left)} process(es) the script left running: {left}", flush=True)


def run_script(ctx: Context, log_name: str, argv: list[str], env: dict | None = None) -> None:
    """Run one command from the repository root, its output in the working folder's log `log_name`, until the leg's
    deadline; LegError if it fails or runs out of time. Every process it started is gone when this returns."""
    log = ctx.work.log(log_name)
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout = ctx.leg_deadline - time.monotonic()
    if timeout < 1:
        raise LegError(f"no time left for {log_name} (budget)")
    print(f"$ {shlex.join(argv)}\n  (log: {log}, at most {timeout:.0f} s)", flush=True)
    with log.open("w") as out:
        ctx.child = subprocess.Popen(argv, cwd=ROOT, env={**ctx.env, **(env or {})}, stdout=out,
                                     stderr=subprocess.STDOUT, preexec_fn=_own_group_dying_with_us)
        try:
            code = ctx.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_child(ctx)
            raise LegError(f"stopped at the leg's time limit ({timeout:.0f} s): {failure_excerpt(log)}") from None
        finally:
            stop_child(ctx)
    if code != 0:
        raise LegError(f"exit code {code}: {failure_excerpt(log)}")


def failure_excerpt(log: Path, lines: int = 12) -> str:
    """The error line of a failed script (its last exception or `error:` line) first, then the log's last lines."""
    text = log.read_text(errors="replace").splitlines()
    errors = [line.strip() for line in text if line.lstrip().startswith("error:") or (
        ("Error" in line or "Exception" in line) and ":" in line and "ChildFailedError" not in line
        and not line.lstrip().startswith(("File ", "raise ", "warn")))]
    head = errors[-1] if errors else "(no error line)"
    return f"{head} (log: {log})\n" + "\n".join(text[-lines:])


# ----------------------------------------------------------------------------------------------------------------
# The legs: each returns (summary line, numbers, checks) or raises
# ----------------------------------------------------------------------------------------------------------------


def leg_preflight(ctx: Context):
    """benchmarks/preflight.py in one interpreter; its record goes to the output folder as the environment."""
    modules = sorted({m for leg, needs in NEEDS.items() if leg in ctx.legs for m in needs})
    path = ctx.work.path / WorkFolder.PREFLIGHT
    run_script(ctx, "preflight", [sys.executable, str(PREFLIGHT), "--json", str(path), *ctx.plan.attention,
                                  "--imports", *modules])
    record = json.loads(path.read_text())
    write_atomically(ctx.out.environment, json.dumps(record, indent=2) + "\n")
    ctx.versions = {k: v for k, v in record.get("versions", {}).items() if v and k != "platform"}
    on_gpu = not ctx.plan.smoke
    tools = record.get("toolchain", {})
    checks = {}
    if on_gpu:  # the smoke run compiles with aot_eager: no code is generated
        checks = {"a C compiler": bool(tools.get("c_compiler")), "Python headers": bool(tools.get("python_headers")),
                  "a triton kernel compiles and runs": str(tools.get("triton_kernel", "")).startswith("ok")}
        problems = [what for what, passed in checks.items() if not passed]
        ctx.compile_problem = f"no {', no '.join(problems)}" if problems else None
    failed = record.get("imports", {})
    for leg, needs in NEEDS.items():
        if leg in ctx.legs and (missing := [f"{m} ({failed[m]})" for m in needs if m in failed]):
            ctx.missing[leg] = missing
    packages = record.get("packages", {})
    checks["packages within requirements.txt's ranges"] = not packages
    attention = record.get("attention", {})
    numbers = {"versions": ctx.versions, "packages": packages, "toolchain": tools, "attention": attention,
               "compile": ctx.compile_problem or "available", "missing": dict(ctx.missing)}
    summary = (f"torch {ctx.versions.get('torch')}, transformers {ctx.versions.get('transformers')}, accelerate "
               f"{ctx.versions.get('accelerate')}; attention kernel: {attention.get('kernel', attention.get('error'))}"
               f" (cuDNN {ctx.versions.get('cudnn', '-')})")
    if packages:
        summary += "; packages: " + ", ".join(f"{name} {problem}" for name, problem in packages.items())
    if ctx.compile_problem:
        summary += f"; compiled legs run uncompiled: {ctx.compile_problem}"
    if ctx.missing:
        summary += "; missing: " + "; ".join(f"{leg} needs {', '.join(m)}" for leg, m in ctx.missing.items())
    return summary, numbers, checks


def throughput_implementations(ctx: Context) -> list[str]:
    """The four rows of the goal first, then the gathered head, then ours compiled whole and with a padded
    vocabulary: the benchmark starts each only while its time covers the row's compile allowance."""
    if ctx.compile_problem:
        return [throughput.OURS, throughput.TRANSFORMERS]
    return [*throughput.GOAL_ROWS, f"{throughput.GATHERED} + compile", f"{throughput.OURS} + compile",
            throughput.PADDED]


def benchmark(ctx: Context, name: str, implementations: list[str], extra: list[str] = ()) -> tuple[dict, str | None]:
    """benchmarks/throughput.py in its own process (its GPU memory freed when it ends): (its JSON report, which
    may be partial, and why it ended early, or None). LegError only when it left no report at all."""
    out = ctx.work.benchmark_json(name)
    budget = max(ctx.leg_deadline - time.monotonic() - 20, 5)  # its start-up and the stop grace left aside
    stopped = None
    try:
        run_script(ctx, name, [sys.executable, str(THROUGHPUT), *ctx.plan.shape, *extra, "--budget_s",
                               f"{budget:.0f}", "--json", str(out), "--implementations", *implementations])
    except LegError as error:
        if not out.is_file():
            raise
        stopped = str(error).splitlines()[0]
    return json.loads(out.read_text()), stopped


def leg_throughput(ctx: Context):
    report, stopped = benchmark(ctx, "throughput", throughput_implementations(ctx))
    return throughput_row(ctx, report, stopped)


def throughput_row(ctx: Context, report: dict, stopped: str | None):
    """(summary, numbers, checks) of the benchmark's report, complete or partial."""
    rows = {row["implementation"]: row for row in report["rows"]}
    numbers = {"device": report["device"], "shape": report["shape"], "matmul_tflops": report["matmul_flops"] / 1e12,
               "datasheet_tflops": (report["datasheet_flops"] or 0) / 1e12 or None, "rows": report["rows"],
               "goal": report["goal"], "flops_counted": report["flops_counted"], "complete": report["complete"]}
    checks = {f"{name} timed": bool(row["tokens_per_second"]) for name, row in rows.items()
              if name in throughput.GOAL_ROWS}
    if stopped:
        checks["the benchmark ended within the leg's time"] = False
    if not ctx.plan.smoke:  # the goal, where it was checked (compiled against compiled): passed or failed
        for verdict in report["goal"].values():
            if verdict["passed"] is not None:
                checks[f"goal: {verdict['text']}"] = verdict["passed"]
    timed = [row for row in report["rows"] if row["tokens_per_second"]]
    if not timed:
        return f"no row was timed ({stopped or 'see the log'})", numbers, checks
    best = max(timed, key=lambda row: row["tokens_per_second"])
    summary = (f"{len(timed)} of {len(rows)} rows timed; fastest {best['implementation']} "
               f"{best['tokens_per_second']:,.0f} tok/s, MFU {100 * best['mfu']:.1f}% (useful FLOPs); goal "
               f"{report['goal']['speedup']['text']}")
    return summary, numbers, checks


def salvage_throughput(ctx: Context) -> None:
    """After a signal stopped the check during the throughput leg: the rows the benchmark wrote on its way out."""
    leg, path = ctx.legs.get("throughput"), ctx.work.benchmark_json("throughput")
    if leg is not None and leg.status == "interrupted" and path.is_file():
        try:
            leg.summary, leg.numbers, _ = throughput_row(ctx, json.loads(path.read_text()), "stopped")
        except (OSError, ValueError, KeyError):
            pass


def leg_store(ctx: Context):
    run_script(ctx, "store", [sys.executable, str(ROOT / "prepare_data.py"), "--dataset", "demo",
                              "--path_to_data_store", str(ctx.work.store), *ctx.plan.store_args])
    vocabulary, blocks = store_facts(ctx)
    return f"vocabulary {vocabulary:,}, blocks {blocks}", {"vocabulary": vocabulary, "blocks": blocks}, {}


def store_facts(ctx: Context) -> tuple[int, dict]:
    """(vocabulary size, {split: blocks}) of the store leg's store, through the store's own reader."""
    import store

    made = store.open_store(ctx.work.store)
    return made.vocab_size, {split: made.data[split].num_rows for split in made.data}


def compile_flags(ctx: Context) -> list[str]:
    return [] if ctx.plan.smoke or ctx.compile_problem else ["--compile"]


def train_command(ctx: Context, name: str, steps: int, extra: list[str], launch: list[str]) -> list[str]:
    """train.py through `accelerate launch` on one process, into a new run folder of the working folder."""
    plan = ctx.plan
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", plan.mixed_precision, "--dynamo_backend", "no", *launch,
            str(ROOT / "train.py"), "--path_to_prepped_data", str(ctx.work.store), "--working_directory",
            str(ctx.work.runs), "--experiment_name", name, *plan.model_args, "--per_gpu_batch_size", str(plan.batch),
            "--num_training_steps", str(steps), "--num_warmup_steps", str(max(steps // 10, 1)),
            "--learning_rate", "5e-4" if not plan.smoke else "3e-3", "--logging_steps", str(max(steps // 8, 1)),
            "--evaluation_interval", str(steps), "--checkpoint_interval", str(steps), "--max_eval_batches", "4",
            "--num_workers", "2" if not plan.smoke else "0", "--seed", "0", *extra]


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """train.py's metrics, through its run folder's owner: (training records, evaluation records)."""
    import run_folder

    records = run_folder.read_metrics(run_dir)
    if not records:
        raise LegError(f"{run_dir} holds no training records")
    return [r for r in records if "loss" in r], run_folder.eval_records(run_dir)


def loss_checks(train: list[dict], evals: list[dict]) -> tuple[dict, dict]:
    """Numbers and checks of a falling loss: first vs last logged training loss, first vs last evaluation."""
    if len(train) < 2 or len(evals) < 2:
        raise LegError(f"expected several training and evaluation records, got {len(train)} and {len(evals)}")
    numbers = {"first_loss": train[0]["loss"], "last_loss": train[-1]["loss"],
               "first_eval_loss": evals[0]["eval_loss"], "last_eval_loss": evals[-1]["eval_loss"]}
    checks = {"training loss falls": train[-1]["loss"] < train[0]["loss"],
              "evaluation loss falls": evals[-1]["eval_loss"] < evals[0]["eval_loss"],
              "losses finite": all(math.isfinite(v) for v in numbers.values())}
    return numbers, checks


def leg_pretrain(ctx: Context):
    need_store(ctx)
    plan, extra = ctx.plan, compile_flags(ctx)
    run_script(ctx, "pretrain", train_command(ctx, "pretrain", plan.train_steps, extra, []))
    train, evals = read_metrics(ctx.work.runs / "pretrain")
    numbers, checks = loss_checks(train, evals)
    # The median over logging windows, the first left out (it holds the compilation).
    logged = statistics.median([r["tokens_per_second"] for r in train[1:]] or [train[0]["tokens_per_second"]])
    numbers.update(train_tokens_per_second=logged, mfu=train[-1].get("mfu"), compiled=bool(extra))
    summary = (f"loss {numbers['first_loss']:.2f} -> {numbers['last_loss']:.2f}, eval {numbers['first_eval_loss']:.2f}"
               f" -> {numbers['last_eval_loss']:.2f}; {logged:,.0f} tok/s logged{'' if extra else ' (uncompiled)'}")
    # The benchmark of what train.py ran (its vocabulary, its compilation), when the leg's time allows: reported,
    # not checked. train.py's log times its updates without waiting for the device, the benchmark each step with.
    name = throughput.REGIONAL if extra else throughput.OURS
    if ctx.leg_deadline - time.monotonic() < (20 if plan.smoke else 45):
        numbers["agreement"] = "not measured: no time left for the benchmark (budget)"
        return summary, numbers, checks
    report, _ = benchmark(ctx, "pretrain-benchmark", [name], ["--vocab_size", str(store_facts(ctx)[0])])
    row = report["rows"][0]
    if row["tokens_per_second"]:
        ratio = logged / row["tokens_per_second"]
        numbers.update(benchmark_tokens_per_second=row["tokens_per_second"], ratio=ratio,
                       agreement="reported, not checked: train.py's logged rate is not synchronised with the "
                                 "device; it adds data loading, masking, clipping and logging")
        summary += f" vs {row['tokens_per_second']:,.0f} benchmark ({name}): {ratio:.2f}x (reported)"
    return summary, numbers, checks


def newest_model(ctx: Context) -> Path | None:
    """pretrain's final_model/, else the newest complete checkpoint of any run (a stopped run saved one)."""
    import checkpoints
    import model_folder
    import run_folder

    final = run_folder.final_model_dir(ctx.work.runs / "pretrain")
    if (final / model_folder.SAFETENSORS_FILE).is_file():
        return final
    candidates = [path for run in sorted(ctx.work.runs.iterdir()) if run.is_dir()
                  for _, path in run_folder.step_folders(run_folder.checkpoints_dir(run))
                  if (path / checkpoints.MANIFEST_FILE).is_file()] if ctx.work.runs.is_dir() else []
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def leg_qa(ctx: Context):
    backbone = newest_model(ctx)
    if backbone is None:
        raise LegError("no pretrained model to fine-tune: pretrain left neither final_model/ nor a checkpoint")
    run_dir = ctx.work.runs / "qa"
    run_script(ctx, "qa", [sys.executable, str(ROOT / "finetune_roberta_qa.py"), "--dataset", "demo",
                           "--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", str(backbone),
                           "--working_directory", str(ctx.work.runs), "--experiment_name", "qa",
                           "--gradient_accumulation_steps", "1", "--eval_steps", "0", "--save_steps", "0",
                           "--logging_steps", "10", "--seed", "0", *ctx.plan.qa_args])
    import qa_run_folder

    results = qa_run_folder.read_results(run_dir)
    epochs = float(ctx.plan.qa_args[ctx.plan.qa_args.index("--num_train_epochs") + 1])
    windows_per_second = results["train_windows"] * epochs / results["train_runtime_s"]
    numbers = {"backbone": str(backbone), "exact_match": results["exact_match"], "f1": results["f1"],
               "train_windows": results["train_windows"], "train_loss": results["train_loss"],
               "windows_per_second": windows_per_second}
    checks = {"scores in [0, 100]": all(0 <= results[k] <= 100 for k in ("exact_match", "f1")),
              "training loss finite": math.isfinite(results["train_loss"])}
    return (f"EM {results['exact_match']:.1f}, F1 {results['f1']:.1f}; {windows_per_second:,.1f} training windows/s "
            f"(from {backbone.relative_to(ctx.work.path)})", numbers, checks)


def leg_fsdp(ctx: Context, version: int):
    """FSDP`version`: stopped by SIGTERM halfway (a sharded checkpoint), resumed to the end; the loss falls, and
    final_model/ loads and equals the last checkpoint's gathered weights."""
    need_store(ctx)
    steps, name, on_gpu = ctx.plan.fsdp_steps, f"fsdp{version}", not ctx.plan.smoke
    extra = compile_flags(ctx) if version == 2 else []
    # Wrapped a layer at a time (attention reads its query/key/value weights directly: a Linear must not be a
    # unit). accelerate refuses FSDP without an accelerator: the CPU smoke run checks the rest of the leg (launch,
    # stop, resume, final_model against the checkpoint) without it; tests/test_scale_out.py runs FSDP2 on the CPU.
    launch = ["--use_fsdp", "--fsdp_version", str(version), "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_transformer_layer_cls_to_wrap", "RobertaLayer",
              "--fsdp_cpu_ram_efficient_loading", "true"] if on_gpu else []
    first = train_command(ctx, name, steps, extra, launch)
    run_script(ctx, f"{name}-first-half", first, env={SIGNAL_AT_STEP_ENV: f"{steps // 2}:TERM"})
    run_script(ctx, f"{name}-resumed", first + ["--resume_from_checkpoint", "latest"])
    run_dir = ctx.work.runs / name
    numbers, checks = loss_checks(*read_metrics(run_dir))
    log = ctx.work.log(f"{name}-resumed").read_text(errors="replace")
    import run_folder

    halfway = run_folder.step_dir(run_folder.checkpoints_dir(run_dir), steps // 2)
    checks["resumed from the halfway checkpoint"] = f"resumed from {halfway} at step {steps // 2}" in log
    if on_gpu:
        checks[f"FSDP{version} was in effect"] = f"(FSDP{version})" in log
    checks.update(final_model_checks(run_dir, steps))
    where = (f"FSDP{version}{' + compile' if extra else ''}" if on_gpu else f"CPU stand-in for FSDP{version}")
    return f"{where}: loss {numbers['first_loss']:.2f} -> {numbers['last_loss']:.2f}, resumed", numbers, checks


def final_model_checks(run_dir: Path, steps: int) -> dict:
    """final_model/ loads and predicts, equals the last checkpoint, and differs from the halfway one."""
    import torch
    from safetensors.torch import load_file

    import run_folder
    from model import RobertaForMaskedLM
    from model_folder import SAFETENSORS_FILE

    checkpoints = run_folder.checkpoints_dir(run_dir)
    final, last, halfway = (run_folder.final_model_dir(run_dir), run_folder.step_dir(checkpoints, steps),
                            run_folder.step_dir(checkpoints, steps // 2))
    model = RobertaForMaskedLM.from_pretrained(final).eval()  # raises on missing or mis-shaped weights
    ids = torch.randint(5, model.config.vocab_size, (2, 16))
    checks = {}
    with torch.no_grad():
        checks["final_model loads and predicts finite logits"] = bool(torch.isfinite(model(ids).logits).all())
    a, b = load_file(final / SAFETENSORS_FILE), load_file(last / SAFETENSORS_FILE)
    checks["final_model equals the last checkpoint"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first_weights = load_file(halfway / SAFETENSORS_FILE) if halfway.is_dir() else a
    checks["the weights trained after the resume"] = any(not torch.equal(a[k], first_weights[k]) for k in a)
    return checks


def need_store(ctx: Context) -> None:
    if "store" not in ctx.legs or ctx.legs["store"].status != "ok":
        raise LegError("needs the store leg's data store, which was not written")


LEG_FUNCTIONS = {"preflight": leg_preflight, "throughput": leg_throughput, "store": leg_store,
                 "pretrain": leg_pretrain, "qa": leg_qa, "fsdp1": lambda ctx: leg_fsdp(ctx, 1),
                 "fsdp2": lambda ctx: leg_fsdp(ctx, 2)}


def run_leg(ctx: Context, name: str) -> None:
    """Run one leg into ctx.legs[name]: skipped when its needs are missing or the budget cannot cover its minimum,
    stopped at min(its limit, the budget left)."""
    import traceback

    leg, (limit, minimum) = ctx.legs[name], LIMITS["smoke" if ctx.plan.smoke else "gpu"][name]
    print(f"\n=== {name} ({ctx.left():.0f} s of the budget left)", flush=True)
    if name in ctx.missing:
        leg.status, leg.error = "missing needs", "cannot import " + "; ".join(ctx.missing[name])
    elif ctx.left() < minimum:
        leg.status, leg.error = "skipped (budget)", f"{ctx.left():.0f} s left, it needs at least {minimum} s"
    else:
        ctx.leg_deadline = time.monotonic() + min(limit, ctx.left())
        start = time.perf_counter()
        leg.status = "running"
        write_report(ctx)  # the report says which leg runs now
        try:
            leg.summary, leg.numbers, leg.checks = LEG_FUNCTIONS[name](ctx)
            failed = [what for what, passed in leg.checks.items() if not passed]
            leg.status = "check failed" if failed else "ok"
            leg.error = "failed checks: " + "; ".join(failed) if failed else None
        except Interrupted as stop:
            leg.status, leg.error = "interrupted", f"stopped by {stop}"
            raise
        except Exception as error:  # every leg reports its own failure; the others still run
            leg.status = "failed"
            leg.error = f"{type(error).__name__}: {error}" if isinstance(error, LegError) else traceback.format_exc()
        finally:
            leg.seconds = time.perf_counter() - start
    print(f"--- {name}: {leg.status} in {leg.seconds:.0f} s. {leg.summary}" + (f"\n{leg.error}" if leg.error else ""),
          flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Report: rewritten after every leg and on a signal
# ----------------------------------------------------------------------------------------------------------------


def report_of(ctx: Context, stopped_by: str | None = None) -> dict:
    legs = list(ctx.legs.values())
    return {"written_by": SCRIPT, "device": ctx.versions.get("gpu") or ("CPU" if ctx.plan.smoke else "GPU"),
            "versions": ctx.versions, "smoke": ctx.plan.smoke, "workdir": str(ctx.work.path),
            "output_dir": str(ctx.out.path), "budget_s": ctx.budget_s, "seconds": time.monotonic() - ctx.start,
            "stopped_by": stopped_by, "legs": [vars(leg) for leg in legs],
            "passed": all(leg.status == "ok" for leg in legs)}


def markdown_report(report: dict) -> str:
    state = "all legs ok" if report["passed"] else "NOT all legs ok"
    if report["stopped_by"]:
        state += f", stopped by {report['stopped_by']}"
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines = [f"<!-- {report_signature(SCRIPT)} -->",
             f"GPU check on {report['device']}{' (--smoke)' if report['smoke'] else ''}: {state}, "
             f"{report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget", "", versions or "", "",
             "| leg | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for leg in report["legs"]:
        result = leg["summary"] or ""
        if leg["error"]:
            result += (" " if result else "") + leg["error"].strip().splitlines()[0]
        lines.append(f"| {leg['name']} | {leg['status']} | {leg['seconds']:.0f} | {result.replace('|', '/')} |")
    bench = next((leg for leg in report["legs"] if leg["name"] == "throughput" and leg["numbers"]), None)
    if bench:
        numbers = bench["numbers"]
        lines += ["", f"Throughput, {numbers['shape']}{'' if numbers['complete'] else ' (stopped early: partial)'}:",
                  "", throughput.markdown_table(numbers["rows"]), "", f"MFU: {numbers['flops_counted']}.", "",
                  "Goal (compiled against compiled only):", *throughput.goal_lines(numbers["goal"])]
    preflight = next((leg for leg in report["legs"] if leg["name"] == "preflight" and leg["numbers"]), None)
    if preflight and preflight["numbers"].get("attention"):
        attention = preflight["numbers"]["attention"]
        lines += ["", f"Attention at {attention.get('shape')}: kernel {attention.get('kernel')}, operators "
                      f"{attention.get('operators')}, device kernels {attention.get('device_kernels')}, SDPA "
                      f"priority {attention.get('priority_order')}"]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content) if isinstance(content, bytes) else tmp.write_text(content)
    os.replace(tmp, path)


def logs_tarball(work: WorkFolder) -> bytes:
    """Every log of the working folder, each trimmed to its last LOG_TAIL_BYTES, as a .tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for log in sorted(work.logs.glob("*.log")) if work.logs.is_dir() else []:
            data = log.read_bytes()
            data = data[-LOG_TAIL_BYTES:] if len(data) > LOG_TAIL_BYTES else data
            info = tarfile.TarInfo(f"{WorkFolder.LOGS}/{log.name}")
            info.size, info.mtime = len(data), int(log.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_report(ctx: Context, stopped_by: str | None = None) -> str:
    """The report (JSON and markdown) and the logs' tarball, each replaced atomically: a reader (or a kill) never
    sees half a file. A failed write is said once; the legs go on."""
    report = report_of(ctx, stopped_by)
    text = markdown_report(report)
    try:
        write_atomically(ctx.out.json, json.dumps(report, indent=2, default=str) + "\n")
        write_atomically(ctx.out.markdown, text)
        write_atomically(ctx.out.logs, logs_tarball(ctx.work))
    except OSError as error:
        if not ctx.write_failed:
            print(f"warning: the report could not be written ({error.strerror or error}); the check goes on",
                  file=sys.stderr, flush=True)
        ctx.write_failed = True
    return text


# ----------------------------------------------------------------------------------------------------------------
# Command line: the arguments and both folders checked before any leg
# ----------------------------------------------------------------------------------------------------------------


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # 0, negative and nan alike: a budget that runs nothing is a mistake
        raise ValueError(text)
    return value


positive_seconds.__name__ = "positive number of seconds"


def parse_args(argv: list[str] | None = None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, float32, aot_eager compile")
    p.add_argument("--legs", nargs="+", choices=LEGS, default=list(LEGS), help="run only these legs")
    p.add_argument("--output_dir", type=Path, default=Path("gpu_check_output"),
                   help="the few small files to bring back: report, environment, logs (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=Path("gpu_check_work"),
                   help="the store, the runs and their checkpoints, the full logs (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier check's outputs in these folders (only this script's own files)")
    p.add_argument("--budget_s", type=positive_seconds, default=None,
                   help="seconds for the whole check, more than 0 (default: 480; 1800 with --smoke)")
    p.add_argument("--json", type=Path, help=f"the report as JSON (default: <output_dir>/{OutputFolder.REPORT_JSON})")
    p.add_argument("--markdown", type=Path,
                   help=f"the report as markdown (default: <output_dir>/{OutputFolder.REPORT_MD})")
    args = p.parse_args(argv)
    args.budget_s = args.budget_s or (1800.0 if args.smoke else 480.0)
    return args


def check_folders(args) -> tuple[WorkFolder, OutputFolder]:
    """Every folder and file rule, before anything is written: UsageError (one line) on the first problem."""
    work_path, out_path = (Path(p).expanduser().absolute() for p in (args.workdir, args.output_dir))
    if work_path.resolve() == out_path.resolve() or work_path.resolve().is_relative_to(out_path.resolve()) or \
            out_path.resolve().is_relative_to(work_path.resolve()):
        raise UsageError(f"--workdir {args.workdir} and --output_dir {args.output_dir} must be separate folders, "
                         "neither inside the other: the output folder is the small one to bring back")
    check_output_folder(work_path, WorkFolder.KIND, flag=f"--workdir {args.workdir}", overwrite=args.overwrite)
    check_output_folder(out_path, OutputFolder.KIND, flag=f"--output_dir {args.output_dir}", overwrite=args.overwrite)
    reports = [(flag, Path(path).expanduser().absolute()) for flag, path in (("--json", args.json),
                                                                           ("--markdown", args.markdown)) if path]
    if len(reports) == 2 and reports[0][1] == reports[1][1]:
        raise UsageError("--json and --markdown name the same file")
    for flag, path in reports:
        if path.resolve().is_relative_to(work_path.resolve()) or path.resolve().is_relative_to(out_path.resolve()):
            raise UsageError(f"{flag} {path} lies inside --workdir or --output_dir, whose files this script names "
                             "itself; leave it out, or give a path elsewhere")
        check_report_file(path, flag, script=SCRIPT, overwrite=args.overwrite,
                          kinds=(*throughput.output_kinds(), WorkFolder.KIND, OutputFolder.KIND))
    for path, flag in ((work_path, "--workdir"), (out_path, "--output_dir")):
        check_in_use(path, flag)
    return WorkFolder(work_path), OutputFolder(out_path, *(Path(p).expanduser().absolute() if p else None
                                                          for p in (args.json, args.markdown)))


def claim_folders(args, work: WorkFolder, out: OutputFolder) -> list[FolderLock]:
    """Lock both folders, clear an earlier check's own outputs (--overwrite), and mark the working folder ours."""
    locks = FolderLock.acquire_all([FolderLock(work.path, flag="--workdir"),
                                    FolderLock(out.path, flag="--output_dir")])
    for path, kind in ((work.path, WorkFolder.KIND), (out.path, OutputFolder.KIND)):
        if args.overwrite and is_output_of(path, kind):
            remove_own_outputs(path, kind)
    write_atomically(work.path / WorkFolder.RECORD, json.dumps(
        {"written_by": SCRIPT, "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    return locks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work, out = check_folders(args)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise UsageError("no CUDA device is visible to torch: run on a GPU machine, or pass --smoke for the CPU check")
    locks = claim_folders(args, work, out)
    become_subreaper()
    ctx = Context(plan=Plan.make(args.smoke), work=work, out=out, env=script_env(args.smoke), budget_s=args.budget_s)
    ctx.legs = {name: Leg(name) for name in LEGS if name in args.legs}

    def on_signal(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    stopped_by, code = None, 0
    try:
        write_report(ctx)  # every leg pending: a report exists from the first second
        for name in ctx.legs:
            run_leg(ctx, name)
            write_report(ctx)
    except Interrupted as stop:
        stop_child(ctx, grace_s=5.0)
        salvage_throughput(ctx)
        stopped_by, code = str(stop), exit_code_for_signal(stop.signum)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    text = write_report(ctx, stopped_by)
    print(f"\n{text}\nreport: {out.json}, {out.markdown}; environment: {out.environment}; logs: {out.logs} "
          f"(full: {work.logs})", flush=True)
    for lock in locks:
        lock.release()
    return code or (0 if report_of(ctx)["passed"] else 1)


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
