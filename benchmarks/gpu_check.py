"""The GPU check: one command for a first GPU slot, that reports whatever breaks within its time budget.

    python benchmarks/gpu_check.py --workdir /tmp/gpu_check --json report.json --markdown report.md
    python benchmarks/gpu_check.py --smoke   # the same legs, tiny, on the CPU (what tests/test_gpu_check.py runs)

Legs, in order, each through the repository's own code and command lines, each its own row:

  preflight   seconds: versions (GPU, driver, CUDA, torch, triton, transformers, accelerate, datasets), a C
              compiler and Python headers, one triton kernel compiled and run, and every import each leg needs.
              A leg whose needs are missing is marked so here, before anything compiles; without a working
              compiler the legs run uncompiled and say so.
  throughput  benchmarks/throughput.py in its own process: ours (regional compile, compiled, eager) against
              transformers (eager, compiled, and compiled with our gathered MLM head), roberta-base, sequence
              512, batch 32, bf16: tokens/s, MFU against the measured matmul rate and the datasheet peak, each
              model's own peak memory, compile seconds. One implementation that fails loses its own row.
  store       prepare_data.py --dataset demo: the offline demo corpus, a trained byte-level BPE, blocks of 512.
  pretrain    train.py --compile in bf16 (accelerate launch) for 100 updates on that store at roberta-base shape:
              the loss falls, and its logged tokens/s is compared with the benchmark at the same shape.
  fsdp2       train.py under `accelerate launch --use_fsdp --fsdp_version 2` with cpu_ram_efficient_loading (the
              case that untied the MLM decoder) and --compile: stopped by SIGTERM halfway, resumed; the loss
              falls, final_model/ loads and equals the last checkpoint.
  qa          finetune_roberta_qa.py --dataset demo --bf16 from whatever model exists (pretrain's final_model/,
              else the newest checkpoint of any run): exact match, F1, windows/s.
  fsdp1       the fsdp2 leg with FSDP1, uncompiled.

Time: --budget_s (default 480) bounds the whole run, and each leg has its own limit. A leg starts only when the
budget left covers its minimum (else its row says `skipped (budget)`) and its scripts are stopped at
min(its limit, the budget left): a stopped training run saves a checkpoint (SIGTERM), which later legs use.
The report (--json, --markdown; both default to files in --workdir) is rewritten after every leg and on
SIGTERM/SIGINT, listing the legs not yet run as `pending`; each script's log stays in <workdir>/logs/.

A bare GPU machine may lack `datasets` (and its dill, multiprocess, fsspec pin): bring the wheels
(benchmarks/fetch_gpu_wheels.sh) and install them as that script says; without them the legs that need
`datasets` are marked in the preflight and the others run. Nothing here uses the network. Exit code 0 when every
leg is `ok`, 1 otherwise, 128 + the signal number when stopped by a signal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
THROUGHPUT = ROOT / "benchmarks" / "throughput.py"
LEGS = ("preflight", "throughput", "store", "pretrain", "fsdp2", "qa", "fsdp1")  # most telling first
AGREEMENT = 0.10  # train.py's tokens/s within 10% of the benchmark's
# What each leg imports (its scripts' imports included); the preflight tries them all in a fresh process.
NEEDS = {"throughput": ["torch", "transformers"],
         "store": ["torch", "transformers", "tokenizers", "datasets", "safetensors"],
         "pretrain": ["torch", "transformers", "datasets", "accelerate", "safetensors"],
         "qa": ["torch", "transformers", "datasets", "accelerate", "safetensors"],
         "fsdp1": ["torch", "transformers", "datasets", "accelerate", "safetensors"],
         "fsdp2": ["torch", "transformers", "datasets", "accelerate", "safetensors"]}
# (time limit, minimum budget left to start) per leg, in seconds: on a GPU (cold: nothing compiled before), and in
# the CPU smoke run. The GPU's limits add up to more than the default budget on purpose: legs that finish early
# leave their time to the next ones, and the last ones are skipped when the budget is spent.
LIMITS = {"gpu": {"preflight": (60, 5), "throughput": (160, 60), "store": (60, 20), "pretrain": (130, 60),
                  "fsdp2": (140, 70), "qa": (90, 40), "fsdp1": (100, 50)},
          "smoke": {"preflight": (60, 2), "throughput": (300, 30), "store": (120, 10), "pretrain": (300, 30),
                    "qa": (300, 30), "fsdp1": (300, 30), "fsdp2": (300, 30)}}
IMPORT_PROBE = """
import importlib, json
failed = {}
for name in %r:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed[name] = (str(error).splitlines() or [type(error).__name__])[0][:150]
print(json.dumps(failed))
"""
TRITON_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def add_one(x, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x + i, tl.load(x + i, mask=i < n) + 1, mask=i < n)
x = torch.zeros(1000, device="cuda")
add_one[(8,)](x, 1000, BLOCK=128)
assert int(x.sum()) == 1000, "wrong result"
print("ok")
"""


@dataclass
class Plan:
    """The sizes of one check: the GPU's, or the smoke test's (tiny, CPU, float32, aot_eager)."""

    smoke: bool
    shape: list[str]  # benchmarks/throughput.py's shape flags
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
            steps, fsdp_steps, precision = 40, 12, "no"
        else:
            hidden, layers, heads, seq, batch = 768, 12, 12, 512, 32
            shape = ["--device", "cuda", "--dtype", "bf16", "--steps", "10", "--warmup", "3"]
            store = ["--train_tokenizer", "8000", "--num_workers", str(min(os.cpu_count() or 1, 16))]
            qa = ["--bf16", "--max_train_samples", "1000", "--max_eval_samples", "300", "--num_train_epochs", "1",
                  "--per_device_batch_size", "32", "--max_seq_length", "384", "--doc_stride", "128",
                  "--learning_rate", "1e-4"]
            steps, fsdp_steps, precision = 100, 20, "bf16"
        shape += ["--hidden", str(hidden), "--layers", str(layers), "--heads", str(heads), "--seq", str(seq),
                  "--batch", str(batch)]
        model = ["--context_length", str(seq), "--num_transformer_blocks", str(layers), "--embedding_dimension",
                 str(hidden), "--num_attention_heads", str(heads), "--mlp_ratio", "4"]
        return cls(smoke, shape, ["--context_length", str(seq), *store], model, batch, steps, fsdp_steps, precision,
                   qa)


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
    workdir: Path
    env: dict
    budget_s: float
    start: float = field(default_factory=time.monotonic)
    legs: dict = field(default_factory=dict)  # name -> Leg, every selected leg from the start
    leg_deadline: float = 0.0  # time.monotonic() by which the running leg's scripts must end
    compile_problem: str | None = None  # why nothing can be compiled here (the preflight's finding)
    missing: dict = field(default_factory=dict)  # leg -> ["module: error"], from the preflight
    versions: dict = field(default_factory=dict)
    child: subprocess.Popen | None = None  # the script running now, stopped with the check

    @property
    def store(self) -> Path:
        return self.workdir / "store"

    @property
    def runs(self) -> Path:
        return self.workdir / "runs"

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)


# ----------------------------------------------------------------------------------------------------------------
# Running the scripts: each in its own process group, stopped at the leg's deadline or with the check
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


def stop_child(ctx: Context, grace_s: float = 15.0) -> None:
    """SIGTERM to the running script's whole group (train.py saves a checkpoint on it), SIGKILL after `grace_s`."""
    child, ctx.child = ctx.child, None
    if child is None or child.poll() is not None:
        return
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_script(ctx: Context, log_name: str, argv: list[str], env: dict | None = None) -> None:
    """Run one command from the repository root, its output in <workdir>/logs/<log_name>.log, until the leg's
    deadline; LegError if it fails or runs out of time."""
    log = ctx.workdir / "logs" / f"{log_name}.log"
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


def python_check(ctx: Context, code: str, timeout: float) -> tuple[bool, str]:
    """Run `code` in a fresh interpreter, within the leg's deadline; (succeeded, its last output line or error)."""
    timeout = min(timeout, ctx.leg_deadline - time.monotonic())
    if timeout <= 0.1:
        return False, "not run: no time left (budget)"
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ctx.env,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout:.0f} s"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else ""


# ----------------------------------------------------------------------------------------------------------------
# The legs: each returns (summary line, numbers, checks) or raises
# ----------------------------------------------------------------------------------------------------------------


def leg_preflight(ctx: Context):
    import torch

    on_gpu = not ctx.plan.smoke
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "transformers", "accelerate", "datasets", "tokenizers", "safetensors"):
        ok, text = python_check(ctx, f"import {name}; print({name}.__version__)", 30)
        versions[name] = text if ok else "missing"
    if on_gpu:
        versions["gpu"] = torch.cuda.get_device_name()
        smi, driver = shutil.which("nvidia-smi"), ""
        try:
            driver = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], text=True,
                                    capture_output=True, timeout=20).stdout.strip() if smi else ""
        except (OSError, subprocess.TimeoutExpired):
            pass
        versions["driver"] = driver or "unknown"
    ctx.versions = versions
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    toolchain = {"a C compiler": bool(compiler), "Python headers": headers.is_file()}
    checks = toolchain if on_gpu else {}  # the smoke run compiles with aot_eager: no code is generated
    if on_gpu:  # triton builds a small C stub with both at its first kernel
        ok, text = python_check(ctx, TRITON_PROBE, 120)
        checks["a triton kernel compiles and runs"] = ok
        versions["triton_probe"] = text
    problems = [what for what, passed in checks.items() if not passed]
    ctx.compile_problem = f"no {', no '.join(problems)}" if problems and on_gpu else None
    modules = sorted({m for leg, needs in NEEDS.items() if leg in ctx.legs for m in needs})
    ok, text = python_check(ctx, IMPORT_PROBE % modules, 90)  # every module in one fresh process
    failed = json.loads(text) if ok else {}  # a probe that could not finish marks nothing: the legs will tell
    if not ok:
        checks[f"the import check finished ({text})"] = False
    for leg, needs in NEEDS.items():
        if leg in ctx.legs and (missing := [f"{m} ({failed[m]})" for m in needs if m in failed]):
            ctx.missing[leg] = missing
    numbers = {"versions": versions, "compile": ctx.compile_problem or "available", "toolchain": toolchain,
               "missing": {leg: needs for leg, needs in ctx.missing.items()}}
    summary = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "triton_probe")
    if ctx.compile_problem:
        summary += f"; compiled legs run uncompiled: {ctx.compile_problem}"
    if ctx.missing:
        summary += "; missing: " + "; ".join(f"{leg} needs {', '.join(m)}" for leg, m in ctx.missing.items())
    # A missing compiler fails this row (the legs still run, uncompiled); a missing module fails its own legs.
    return summary, numbers, checks


def throughput_implementations(ctx: Context) -> list[str]:
    """Cheap and telling first: the benchmark skips the last ones when its time runs out (each compiled one costs
    its compilation)."""
    eager = ["ours", "transformers (sdpa)"]
    compiled = ["ours + regional compile", "transformers (sdpa) + compile",
                "transformers (sdpa, gathered head) + compile", "ours + compile",
                "ours + regional compile, vocab padded to 64"]
    return eager if ctx.compile_problem else [*eager, *compiled]


def benchmark(ctx: Context, name: str, implementations: list[str], extra: list[str] = ()) -> dict:
    """benchmarks/throughput.py in its own process (its GPU memory freed when it ends); its JSON report."""
    out = ctx.workdir / f"{name}.json"
    budget = max(ctx.leg_deadline - time.monotonic() - 10, 5)
    run_script(ctx, name, [sys.executable, str(THROUGHPUT), *ctx.plan.shape, *extra, "--budget_s", f"{budget:.0f}",
                           "--json", str(out), "--implementations", *implementations])
    return json.loads(out.read_text())


def leg_throughput(ctx: Context):
    report = benchmark(ctx, "throughput", throughput_implementations(ctx))
    rows = {row["implementation"]: row for row in report["rows"]}
    timed = {name: row for name, row in rows.items() if row["tokens_per_second"]}
    numbers = {"device": report["device"], "shape": report["shape"], "matmul_tflops": report["matmul_flops"] / 1e12,
               "datasheet_tflops": (report["datasheet_flops"] or 0) / 1e12 or None, "rows": report["rows"]}
    checks = {f"{name} timed": name in timed for name in rows}
    ours = timed.get("ours + regional compile") or timed.get("ours")
    reference = timed.get("transformers (sdpa) + compile") or timed.get("transformers (sdpa)")
    if not ours:
        return "ours was not timed", numbers, checks
    summary = f"{ours['implementation']}: {ours['tokens_per_second']:,.0f} tok/s"
    if reference:
        ratio = reference["step_ms"] / ours["step_ms"]
        summary += f", {ratio:.2f}x {reference['implementation']}"
        if not ctx.plan.smoke:  # the goals (README): 1.5x transformers compiled, at no more memory
            checks["ours >= 1.5x transformers"] = ratio >= 1.5
            checks["ours' peak memory <= transformers'"] = ours["peak_memory_gib"] <= reference["peak_memory_gib"]
    summary += f", MFU {100 * ours['mfu']:.1f}% of the measured matmul rate"
    return summary, numbers, checks


def leg_store(ctx: Context):
    run_script(ctx, "store", [sys.executable, str(ROOT / "prepare_data.py"), "--dataset", "demo",
                              "--path_to_data_store", str(ctx.store), *ctx.plan.store_args, "--overwrite"])
    record_path = ctx.store / "prepare_data.json"  # prepare_data.py's record of what it wrote
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    blocks = {split: info.get("blocks") for split, info in record.get("splits", {}).items()}
    vocabulary = store_vocabulary(ctx)
    return f"vocabulary {vocabulary:,}, blocks {blocks or '?'}", {"vocabulary": vocabulary, "blocks": blocks}, {}


def store_vocabulary(ctx: Context) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(ctx.store / "tokenizer"))


def compile_flags(ctx: Context) -> list[str]:
    return [] if ctx.plan.smoke or ctx.compile_problem else ["--compile"]


def train_command(ctx: Context, name: str, steps: int, extra: list[str], launch: list[str]) -> list[str]:
    """train.py through `accelerate launch` on one process."""
    plan = ctx.plan
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", plan.mixed_precision, "--dynamo_backend", "no", *launch,
            str(ROOT / "train.py"), "--path_to_prepped_data", str(ctx.store), "--working_directory", str(ctx.runs),
            "--experiment_name", name, *plan.model_args, "--per_gpu_batch_size", str(plan.batch),
            "--num_training_steps", str(steps), "--num_warmup_steps", str(max(steps // 10, 1)),
            "--learning_rate", "5e-4" if not plan.smoke else "3e-3", "--logging_steps", str(max(steps // 8, 1)),
            "--evaluation_interval", str(steps), "--checkpoint_interval", str(steps), "--max_eval_batches", "4",
            "--num_workers", "2" if not plan.smoke else "0", "--seed", "0", "--overwrite", *extra]


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """train.py's metrics.jsonl: (training records, evaluation records)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise LegError(f"{path} was not written")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


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
    train, evals = read_metrics(ctx.runs / "pretrain")
    numbers, checks = loss_checks(train, evals)
    # The median over logging windows, the first left out (it holds the compilation).
    logged = statistics.median([r["tokens_per_second"] for r in train[1:]] or [train[0]["tokens_per_second"]])
    numbers.update(train_tokens_per_second=logged, mfu=train[-1].get("mfu"), compiled=bool(extra))
    summary = (f"loss {numbers['first_loss']:.2f} -> {numbers['last_loss']:.2f}, eval {numbers['first_eval_loss']:.2f}"
               f" -> {numbers['last_eval_loss']:.2f}; {logged:,.0f} tok/s logged{'' if extra else ' (uncompiled)'}")
    # The benchmark of what train.py ran (its vocabulary, its compilation), when the leg's time allows.
    name = "ours + regional compile" if extra else "ours"
    if ctx.leg_deadline - time.monotonic() < (20 if plan.smoke else 45):
        numbers["agreement_not_checked"] = "no time left for the benchmark (budget)"
        return summary, numbers, checks
    row = benchmark(ctx, "pretrain-benchmark", [name], ["--vocab_size", str(store_vocabulary(ctx))])["rows"][0]
    if row["tokens_per_second"]:
        ratio = logged / row["tokens_per_second"]
        numbers.update(benchmark_tokens_per_second=row["tokens_per_second"], ratio=ratio)
        summary += f" vs {row['tokens_per_second']:,.0f} benchmark ({name}): {ratio:.2f}x"
        if plan.smoke:  # at a tiny shape on a shared CPU, step time is overhead and noise: reported, not checked
            numbers["agreement_not_checked"] = "smoke run"
        else:
            agreement = f"train.py's tokens/s within {100 * AGREEMENT:.0f}% of the benchmark's"
            checks[agreement] = abs(ratio - 1) <= AGREEMENT
    return summary, numbers, checks


def newest_model(ctx: Context) -> Path | None:
    """pretrain's final_model/, else the newest complete checkpoint of any run (a stopped run saved one)."""
    final = ctx.runs / "pretrain" / "final_model"
    if (final / "model.safetensors").is_file():
        return final
    candidates = [p for p in ctx.runs.glob("*/checkpoints/step_*") if (p / "manifest.json").is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def leg_qa(ctx: Context):
    backbone = newest_model(ctx)
    if backbone is None:
        raise LegError("no pretrained model to fine-tune: pretrain left neither final_model/ nor a checkpoint")
    run_dir = ctx.runs / "qa"
    run_script(ctx, "qa", [sys.executable, str(ROOT / "finetune_roberta_qa.py"), "--dataset", "demo",
                           "--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", str(backbone),
                           "--working_directory", str(ctx.runs), "--experiment_name", "qa",
                           "--gradient_accumulation_steps", "1", "--eval_steps", "0", "--save_steps", "0",
                           "--logging_steps", "10", "--seed", "0", "--overwrite", *ctx.plan.qa_args])
    results = json.loads((run_dir / "eval_results.json").read_text())
    epochs = float(ctx.plan.qa_args[ctx.plan.qa_args.index("--num_train_epochs") + 1])
    windows_per_second = results["train_windows"] * epochs / results["train_runtime_s"]
    numbers = {"backbone": str(backbone), "exact_match": results["exact_match"], "f1": results["f1"],
               "train_windows": results["train_windows"], "train_loss": results["train_loss"],
               "windows_per_second": windows_per_second}
    checks = {"scores in [0, 100]": all(0 <= results[k] <= 100 for k in ("exact_match", "f1")),
              "training loss finite": math.isfinite(results["train_loss"])}
    return (f"EM {results['exact_match']:.1f}, F1 {results['f1']:.1f}; {windows_per_second:,.1f} training windows/s "
            f"(from {backbone.relative_to(ctx.workdir)})", numbers, checks)


def leg_fsdp(ctx: Context, version: int):
    """FSDP`version`: stopped by SIGTERM halfway (a sharded checkpoint), resumed to the end; the loss falls, and
    final_model/ loads and equals the last checkpoint's gathered weights."""
    need_store(ctx)
    import torch
    from safetensors.torch import load_file

    from model import RobertaForMaskedLM

    steps, name, on_gpu = ctx.plan.fsdp_steps, f"fsdp{version}", not ctx.plan.smoke
    extra = compile_flags(ctx) if version == 2 else []
    # Wrapped a layer at a time (attention reads its query/key/value weights directly: a Linear must not be a
    # unit). accelerate refuses FSDP without an accelerator: the CPU smoke run checks the rest of the leg (launch,
    # stop, resume, final_model against the checkpoint) without it; tests/test_scale_out.py runs FSDP2 on the CPU.
    launch = ["--use_fsdp", "--fsdp_version", str(version), "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_transformer_layer_cls_to_wrap", "RobertaLayer",
              "--fsdp_cpu_ram_efficient_loading", "true"] if on_gpu else []
    first = train_command(ctx, name, steps, extra, launch)
    run_script(ctx, f"{name}-first-half", first, env={"TRAIN_TEST_SIGNAL_AT_STEP": f"{steps // 2}:TERM"})
    resume = [arg for arg in first if arg != "--overwrite"] + ["--resume_from_checkpoint", "latest"]
    run_script(ctx, f"{name}-resumed", resume)
    run_dir = ctx.runs / name
    numbers, checks = loss_checks(*read_metrics(run_dir))
    log = (ctx.workdir / "logs" / f"{name}-resumed.log").read_text(errors="replace")
    checks["resumed from the halfway checkpoint"] = f"step_{steps // 2} at step {steps // 2}" in log
    if on_gpu:
        checks[f"FSDP{version} was in effect"] = f"(FSDP{version})" in log
    final, checkpoint = run_dir / "final_model", run_dir / "checkpoints" / f"step_{steps}"
    model = RobertaForMaskedLM.from_pretrained(final).eval()  # raises on missing or mis-shaped weights
    ids = torch.randint(5, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        checks["final_model loads and predicts finite logits"] = bool(torch.isfinite(model(ids).logits).all())
    a, b = load_file(final / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    checks["final_model equals the last checkpoint"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    halfway = run_dir / "checkpoints" / f"step_{steps // 2}"
    first_weights = load_file(halfway / "model.safetensors") if halfway.is_dir() else a
    checks["the weights trained after the resume"] = any(not torch.equal(a[k], first_weights[k]) for k in a)
    where = (f"FSDP{version}{' + compile' if extra else ''}" if on_gpu else f"CPU stand-in for FSDP{version}")
    return f"{where}: loss {numbers['first_loss']:.2f} -> {numbers['last_loss']:.2f}, resumed", numbers, checks


def need_store(ctx: Context) -> None:
    if not (ctx.store / "prepare_data.json").is_file():
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
    return {"device": ctx.versions.get("gpu") or ("CPU" if ctx.plan.smoke else "GPU"),
            "versions": ctx.versions, "smoke": ctx.plan.smoke, "workdir": str(ctx.workdir),
            "budget_s": ctx.budget_s, "seconds": time.monotonic() - ctx.start, "stopped_by": stopped_by,
            "legs": [vars(leg) for leg in legs], "passed": all(leg.status == "ok" for leg in legs)}


def markdown_report(report: dict) -> str:
    import throughput

    state = "all legs ok" if report["passed"] else "NOT all legs ok"
    if report["stopped_by"]:
        state += f", stopped by {report['stopped_by']}"
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "triton_probe")
    lines = [f"GPU check on {report['device']}{' (--smoke)' if report['smoke'] else ''}: {state}, "
             f"{report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget", "", versions or "", "",
             "| leg | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for leg in report["legs"]:
        result = leg["summary"] or ""
        if leg["error"]:
            result += (" " if result else "") + leg["error"].strip().splitlines()[0]
        lines.append(f"| {leg['name']} | {leg['status']} | {leg['seconds']:.0f} | {result.replace('|', '/')} |")
    bench = next((leg for leg in report["legs"] if leg["name"] == "throughput" and leg["numbers"]), None)
    if bench:
        lines += ["", f"Throughput, {bench['numbers']['shape']}:", "", throughput.markdown_table(
            bench["numbers"]["rows"])]
    return "\n".join(lines) + "\n"


def write_report(ctx: Context, json_path: Path, markdown_path: Path, stopped_by: str | None = None) -> str:
    """Both files replaced atomically: a reader (or a kill) never sees half a report."""
    report = report_of(ctx, stopped_by)
    text = markdown_report(report)
    for path, content in ((json_path, json.dumps(report, indent=2, default=str) + "\n"), (markdown_path, text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, float32, aot_eager compile")
    p.add_argument("--legs", nargs="+", choices=LEGS, default=list(LEGS), help="run only these legs")
    p.add_argument("--workdir", "--output_dir", type=Path, default=Path("gpu_check_output"),
                   help="where the store, runs, logs and (by default) the report go (default: %(default)s)")
    p.add_argument("--budget_s", type=float, default=None,
                   help="seconds for the whole check (default: 480; 1800 with --smoke)")
    p.add_argument("--json", type=Path, help="the report as JSON (default: <workdir>/report.json)")
    p.add_argument("--markdown", type=Path, help="the report as markdown (default: <workdir>/report.md)")
    args = p.parse_args(argv)
    args.budget_s = args.budget_s or (1800.0 if args.smoke else 480.0)
    if args.budget_s <= 0:
        p.error(f"--budget_s must be positive, got {args.budget_s}")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA device is visible to torch: run on a GPU machine, or pass --smoke for the CPU check")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = args.json or workdir / "report.json", args.markdown or workdir / "report.md"
    ctx = Context(plan=Plan.make(args.smoke), workdir=workdir, env=script_env(args.smoke), budget_s=args.budget_s)
    ctx.legs = {name: Leg(name) for name in LEGS if name in args.legs}

    def on_signal(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    stopped_by, code = None, 0
    try:
        write_report(ctx, json_path, markdown_path)  # every leg pending: a report exists from the first second
        for name in ctx.legs:
            run_leg(ctx, name)
            write_report(ctx, json_path, markdown_path)
    except Interrupted as stop:
        stop_child(ctx, grace_s=5.0)
        stopped_by, code = str(stop), 128 + stop.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    text = write_report(ctx, json_path, markdown_path, stopped_by)
    print(f"\n{text}\nreport: {json_path}, {markdown_path}; logs: {workdir / 'logs'}", flush=True)
    return code or (0 if report_of(ctx)["passed"] else 1)


if __name__ == "__main__":
    sys.exit(main())
