"""The GPU check: one command on a bare GPU machine, a few minutes on one H100/H200, one table at the end.

    python benchmarks/gpu_check.py --json gpu_check.json --markdown gpu_check.md
    python benchmarks/gpu_check.py --smoke   # the same legs, tiny, on the CPU (what tests/test_gpu_check.py runs)

Legs, each run through the repository's own code and command lines; each catches its own failure and reports it as
a row (status `failed` with the reason, or `check failed` when it ran but a check did not hold), never as a crash:

  throughput  benchmarks/throughput.py: transformers (sdpa) eager and compiled against ours eager and compiled, same
              weights and batches, roberta-base shape, sequence 512, batch 32, bf16 autocast, fused AdamW, one full
              training step; ours on its static MLM head (`max_predictions_per_seq`) with `utils.mask_tokens` masks.
  store       prepare_data.py --dataset demo: the offline demo corpus, a byte-level BPE tokenizer, blocks of 512.
  pretrain    train.py --compile in bf16 (accelerate launch) for a few hundred steps on that store at the same model
              shape: its loss must fall, and the tokens/s it logs (metrics.jsonl) must agree within 10% with the
              benchmark of `ours + compile` at its exact shape (its vocabulary), measured right after it.
  qa          finetune_roberta_qa.py --dataset demo --bf16 from the model train.py saved: exact match, F1, windows/s.
  fsdp        train.py under `accelerate launch --use_fsdp` on one GPU, short: the loss falls, final_model/ loads,
              and its weights equal those of the last checkpoint.

A bare GPU machine with torch, transformers, accelerate, tokenizers, safetensors, pyarrow, pandas, xxhash,
matplotlib and numpy lacks `datasets` (and its dill, multiprocess, fsspec pin), which prepare_data.py, train.py and
finetune_roberta_qa.py import. On a machine with PyPI access run `benchmarks/fetch_gpu_wheels.sh` (wheels into
`.whl/`), bring `.whl/` along, and on the GPU machine:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site

The throughput leg needs only torch and transformers; without `datasets` the other legs report it and fail alone.
Nothing here uses the network (HF_HUB_OFFLINE=1 for every script). Exit code 0 when every leg is `ok`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402
import torch  # noqa: E402

LEGS = ("throughput", "store", "pretrain", "qa", "fsdp")
AGREEMENT = 0.10  # train.py's tokens/s within 10% of the benchmark's


@dataclass
class Plan:
    """The sizes of one check: the GPU's, or the smoke test's (tiny, CPU, float32)."""

    smoke: bool
    benchmark: throughput.Settings
    store_args: list[str]
    model_args: list[str]  # train.py's model shape, the benchmark's
    batch: int
    train_steps: int
    fsdp_steps: int
    train_extra: list[str]  # --compile on the GPU
    mixed_precision: str  # accelerate launch --mixed_precision
    qa_args: list[str]
    timeout_s: int  # per subprocess


def make_plan(smoke: bool) -> Plan:
    if not smoke:
        bench = throughput.Settings.preset(
            "cuda", implementations=(throughput.TRANSFORMERS, f"{throughput.TRANSFORMERS} + compile", throughput.OURS,
                                     f"{throughput.OURS} + compile"))
        qa = ["--bf16", "--max_train_samples", "1500", "--max_eval_samples", "300", "--num_train_epochs", "1",
              "--per_device_batch_size", "32", "--max_seq_length", "384", "--doc_stride", "128",
              "--learning_rate", "1e-4"]
        extra, precision, steps, fsdp_steps, timeout = ["--compile"], "bf16", 200, 40, 600
        store = ["--train_tokenizer", "8000", "--num_workers", str(min(os.cpu_count() or 1, 16))]
    else:
        bench = throughput.Settings(
            device="cpu", vocab_size=600, hidden=64, layers=2, heads=2, seq=64, batch=8, steps=3, warmup=2,
            compile_backend="aot_eager", implementations=(throughput.TRANSFORMERS,
                                                          f"{throughput.TRANSFORMERS} + compile", throughput.OURS,
                                                          f"{throughput.OURS} + compile"))
        qa = ["--no-bf16", "--max_train_samples", "48", "--max_eval_samples", "24", "--num_train_epochs", "1",
              "--per_device_batch_size", "8", "--max_seq_length", "64", "--doc_stride", "24",
              "--learning_rate", "1e-3"]
        extra, precision, steps, fsdp_steps, timeout = [], "no", 40, 12, 300
        store = ["--train_tokenizer", "600", "--max_documents", "150", "--num_workers", "1"]
    model = ["--context_length", str(bench.seq), "--num_transformer_blocks", str(bench.layers),
             "--embedding_dimension", str(bench.hidden), "--num_attention_heads", str(bench.heads), "--mlp_ratio", "4"]
    return Plan(smoke=smoke, benchmark=bench, store_args=["--context_length", str(bench.seq), *store],
                model_args=model, batch=bench.batch, train_steps=steps, fsdp_steps=fsdp_steps, train_extra=extra,
                mixed_precision=precision, qa_args=qa, timeout_s=timeout)


class LegError(Exception):
    """A leg could not run (a script failed, an input is missing): the row says why."""


@dataclass
class Leg:
    name: str
    status: str = "not run"  # ok | check failed | failed | not run
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
    store: Path
    legs: dict = field(default_factory=dict)  # name -> Leg, as they finish


# ----------------------------------------------------------------------------------------------------------------
# Running the scripts
# ----------------------------------------------------------------------------------------------------------------


def script_env(smoke: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if smoke:  # a tiny model on a shared CPU: one thread each, or OpenMP threads spin against each other
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_script(ctx: Context, log_name: str, argv: list[str], env: dict | None = None) -> None:
    """Run one command from the repository root, its output in <workdir>/logs/<log_name>.log; LegError if it fails."""
    log = ctx.workdir / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(argv)}\n  (log: {log})", flush=True)
    try:
        with log.open("w") as out:
            result = subprocess.run(argv, cwd=ROOT, env={**ctx.env, **(env or {})}, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=ctx.plan.timeout_s)
    except subprocess.TimeoutExpired:
        raise LegError(f"timed out after {ctx.plan.timeout_s} s: {failure_excerpt(log)}") from None
    if result.returncode != 0:
        raise LegError(f"exit code {result.returncode}: {failure_excerpt(log)}")


def failure_excerpt(log: Path, lines: int = 12) -> str:
    """The error line of a failed script (its last exception or `error:` line) first, then the log's last lines."""
    text = log.read_text(errors="replace").splitlines()
    errors = [line.strip() for line in text if re.match(r"^\s*(\w+\.)*\w*(Error|Exception|Interrupt)\b:?|^error:", line)
              and "ChildFailedError" not in line]
    head = errors[-1] if errors else "(no error line)"
    return f"{head} (log: {log})\n" + "\n".join(text[-lines:])


def train_command(ctx: Context, name: str, steps: int, extra: list[str], launch: list[str]) -> list[str]:
    """train.py through `accelerate launch`, with only the flags the train.py of every branch keeps."""
    plan = ctx.plan
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", plan.mixed_precision, "--dynamo_backend", "no", *launch,
            str(ROOT / "train.py"), "--path_to_prepped_data", str(ctx.store), "--working_directory",
            str(ctx.workdir / "runs"), "--experiment_name", name, *plan.model_args, "--per_gpu_batch_size",
            str(plan.batch), "--num_training_steps", str(steps), "--num_warmup_steps", str(max(steps // 10, 1)),
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


def logged_tokens_per_second(train: list[dict]) -> float:
    """The median over logging windows, the first left out (it holds torch.compile's compilation)."""
    windows = [r["tokens_per_second"] for r in train[1:]] or [train[0]["tokens_per_second"]]
    return statistics.median(windows)


def benchmark(settings: throughput.Settings) -> dict:
    """throughput.run, then the GPU memory it cached handed back, for the scripts that run after it."""
    try:
        return throughput.run(settings)
    finally:
        gc.collect()
        torch._dynamo.reset()  # compiled code holds on to the benchmark's models
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def store_vocabulary(store: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(store / "tokenizer"))


# ----------------------------------------------------------------------------------------------------------------
# The legs: each returns (summary line, numbers, checks) or raises
# ----------------------------------------------------------------------------------------------------------------


def leg_throughput(ctx: Context):
    report = benchmark(ctx.plan.benchmark)
    rows = {row["implementation"]: row for row in report["rows"]}
    print(f"{report['shape']}\n{throughput.markdown_table(report['rows'])}", flush=True)
    numbers = {"device": report["device"], "shape": report["shape"], "matmul_tflops": report["matmul_flops"] / 1e12,
               "rows": report["rows"]}
    checks = {"every implementation timed": all(row["tokens_per_second"] > 0 for row in report["rows"])}
    best = rows.get(f"{throughput.OURS} + compile") or rows[throughput.OURS]
    ratio = f" ({best['vs_transformers']:.2f}x transformers)" if best["vs_transformers"] else ""
    return f"{best['implementation']}: {best['tokens_per_second']:,.0f} tok/s{ratio}, MFU {100 * best['mfu']:.1f}%", \
        numbers, checks


def leg_store(ctx: Context):
    try:
        import datasets  # noqa: F401
    except ImportError as error:
        raise LegError(f"`datasets` is not installed ({error}): bring the wheels (benchmarks/fetch_gpu_wheels.sh) "
                       "and install them as this script's docstring says") from None
    run_script(ctx, "store", [sys.executable, str(ROOT / "prepare_data.py"), "--dataset", "demo",
                              "--path_to_data_store", str(ctx.store), *ctx.plan.store_args, "--overwrite"])
    record_path = ctx.store / "prepare_data.json"  # prepare_data.py's record of what it wrote
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    blocks = {split: info.get("blocks") for split, info in record.get("splits", {}).items()}
    vocabulary = store_vocabulary(ctx.store)
    return f"vocabulary {vocabulary:,}, blocks {blocks or '?'}", {"vocabulary": vocabulary, "blocks": blocks}, {}


def leg_pretrain(ctx: Context):
    need(ctx, "store")
    plan = ctx.plan
    run_script(ctx, "pretrain", train_command(ctx, "pretrain", plan.train_steps, plan.train_extra, []))
    train, evals = read_metrics(ctx.workdir / "runs" / "pretrain")
    numbers, checks = loss_checks(train, evals)
    logged = logged_tokens_per_second(train)
    # The benchmark of what train.py runs, at its exact shape (the store's vocabulary), right after it.
    compiled = "--compile" in plan.train_extra
    name = f"{throughput.OURS} + compile" if compiled else throughput.OURS
    settings = replace(plan.benchmark, vocab_size=store_vocabulary(ctx.store), implementations=(name,))
    bench = benchmark(settings)["rows"][0]["tokens_per_second"]
    ratio = logged / bench
    numbers.update(train_tokens_per_second=logged, benchmark_tokens_per_second=bench, ratio=ratio,
                   mfu=train[-1].get("mfu"))
    agreement = f"train.py's tokens/s within {100 * AGREEMENT:.0f}% of the benchmark's"
    if plan.smoke:  # at a tiny shape on a shared CPU, step time is overhead and noise: reported, not checked
        numbers["agreement_not_checked"] = "smoke run"
    else:
        checks[agreement] = abs(ratio - 1) <= AGREEMENT
    return (f"loss {numbers['first_loss']:.2f} -> {numbers['last_loss']:.2f}, eval {numbers['first_eval_loss']:.2f} -> "
            f"{numbers['last_eval_loss']:.2f}; {logged:,.0f} tok/s logged vs {bench:,.0f} benchmark ({name}): "
            f"{ratio:.2f}x"), numbers, checks


def leg_qa(ctx: Context):
    need(ctx, "pretrain")
    backbone = ctx.workdir / "runs" / "pretrain" / "final_model"
    run_dir = ctx.workdir / "runs" / "qa"
    run_script(ctx, "qa", [sys.executable, str(ROOT / "finetune_roberta_qa.py"), "--dataset", "demo",
                           "--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", str(backbone),
                           "--working_directory", str(ctx.workdir / "runs"), "--experiment_name", "qa",
                           "--gradient_accumulation_steps", "1", "--eval_steps", "0", "--save_steps", "0",
                           "--logging_steps", "10", "--seed", "0", "--overwrite", *ctx.plan.qa_args])
    results = json.loads((run_dir / "eval_results.json").read_text())
    epochs = float(ctx.plan.qa_args[ctx.plan.qa_args.index("--num_train_epochs") + 1])
    windows_per_second = results["train_windows"] * epochs / results["train_runtime_s"]
    numbers = {"exact_match": results["exact_match"], "f1": results["f1"], "train_windows": results["train_windows"],
               "train_loss": results["train_loss"], "windows_per_second": windows_per_second}
    checks = {"scores in [0, 100]": all(0 <= results[k] <= 100 for k in ("exact_match", "f1")),
              "training loss finite": math.isfinite(results["train_loss"])}
    return (f"EM {results['exact_match']:.1f}, F1 {results['f1']:.1f}; {windows_per_second:,.1f} training windows/s",
            numbers, checks)


def leg_fsdp(ctx: Context):
    """FSDP1, then FSDP2 with --compile: each stopped by SIGTERM halfway (a sharded checkpoint), resumed to the end;
    the loss falls, and final_model/ loads and equals the last checkpoint's gathered weights."""
    need(ctx, "store")
    on_gpu = ctx.plan.benchmark.device == "cuda"
    summaries, numbers, checks = [], {}, {}
    for version, extra in ((1, []), (2, ctx.plan.train_extra)):
        summary, run_numbers, run_checks = fsdp_run(ctx, version, extra, on_gpu)
        summaries.append(summary)
        numbers[f"fsdp{version}"] = run_numbers
        checks.update({f"FSDP{version}: {name}": ok for name, ok in run_checks.items()})
    return "; ".join(summaries), numbers, checks


def fsdp_run(ctx: Context, version: int, extra: list[str], on_gpu: bool):
    steps, name = ctx.plan.fsdp_steps, f"fsdp{version}"
    # Wrapped a layer at a time (attention reads its query/key/value weights directly: a Linear must not be a unit).
    launch = ["--use_fsdp", "--fsdp_version", str(version), "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_transformer_layer_cls_to_wrap", "RobertaLayer"] if on_gpu else []
    # accelerate refuses FSDP without an accelerator ("no available devices"): a CPU smoke run checks the rest of
    # the leg (launch, stop, resume, final_model against the checkpoint) without it.
    first = train_command(ctx, name, steps, extra, launch)
    run_script(ctx, f"{name}-first-half", first, env={"TRAIN_TEST_SIGNAL_AT_STEP": f"{steps // 2}:TERM"})
    resume = [arg for arg in first if arg != "--overwrite"] + ["--resume_from_checkpoint", "latest"]
    run_script(ctx, f"{name}-resumed", resume)
    run_dir = ctx.workdir / "runs" / name
    numbers, checks = loss_checks(*read_metrics(run_dir))
    log = (ctx.workdir / "logs" / f"{name}-resumed.log").read_text(errors="replace")
    checks["resumed from the halfway checkpoint"] = f"step_{steps // 2} at step {steps // 2}" in log
    final, checkpoint = run_dir / "final_model", run_dir / "checkpoints" / f"step_{steps}"
    from model import RobertaForMaskedLM

    model = RobertaForMaskedLM.from_pretrained(final).eval()  # raises on missing or mis-shaped weights
    ids = torch.randint(5, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        checks["final_model loads and predicts finite logits"] = bool(torch.isfinite(model(ids).logits).all())
    from safetensors.torch import load_file

    a, b = load_file(final / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    checks["final_model equals the last checkpoint"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first_weights = load_file(run_dir / "checkpoints" / f"step_{steps // 2}" / "model.safetensors") if (
        run_dir / "checkpoints" / f"step_{steps // 2}").is_dir() else a
    checks["the weights trained after the resume"] = any(not torch.equal(a[k], first_weights[k]) for k in a)
    where = f"FSDP{version}{' + compile' if extra else ''}" if on_gpu else f"CPU stand-in for FSDP{version}"
    return f"{where}: loss {numbers['first_loss']:.2f} -> {numbers['last_loss']:.2f}, resumed", numbers, checks


def need(ctx: Context, leg: str) -> None:
    if ctx.legs.get(leg) is None or ctx.legs[leg].status == "failed":
        raise LegError(f"needs the {leg} leg, which did not run or failed")


LEG_FUNCTIONS = {"throughput": leg_throughput, "store": leg_store, "pretrain": leg_pretrain, "qa": leg_qa,
                 "fsdp": leg_fsdp}


def run_leg(ctx: Context, name: str) -> Leg:
    leg = Leg(name)
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    try:
        leg.summary, leg.numbers, leg.checks = LEG_FUNCTIONS[name](ctx)
        failed = [what for what, passed in leg.checks.items() if not passed]
        leg.status = "check failed" if failed else "ok"
        if failed:
            leg.error = "failed checks: " + "; ".join(failed)
    except Exception as error:  # every leg reports its own failure; the others still run
        leg.status = "failed"
        leg.error = f"{type(error).__name__}: {error}" if isinstance(error, LegError) else traceback.format_exc()
    leg.seconds = time.perf_counter() - start
    print(f"--- {name}: {leg.status} in {leg.seconds:.0f} s. {leg.summary}" + (f"\n{leg.error}" if leg.error else ""),
          flush=True)
    return leg


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def markdown_report(report: dict) -> str:
    lines = [f"GPU check on {report['device']}, torch {report['torch']}{' (--smoke)' if report['smoke'] else ''}: "
             f"{'all legs ok' if report['passed'] else 'NOT all legs ok'}, {report['seconds']:.0f} s", "",
             "| leg | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for leg in report["legs"]:
        result = leg["summary"] or ""
        if leg["error"]:
            result += (" " if result else "") + leg["error"].strip().splitlines()[0]
        lines.append(f"| {leg['name']} | {leg['status']} | {leg['seconds']:.0f} | {result.replace('|', '/')} |")
    bench = next((leg for leg in report["legs"] if leg["name"] == "throughput" and leg["numbers"]), None)
    if bench:
        lines += ["", f"Throughput, {bench['numbers']['shape']}:", "",
                  throughput.markdown_table(bench["numbers"]["rows"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, float32, aot_eager compile")
    p.add_argument("--legs", nargs="+", choices=LEGS, default=list(LEGS), help="run only these legs")
    p.add_argument("--workdir", type=Path, help="where the store, runs and logs go (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--markdown", type=Path, help="write the report as markdown here")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA device is visible to torch: run on a GPU machine, or pass --smoke for the CPU check")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args.smoke)
    if args.smoke:  # the benchmark in this process: one thread, as the scripts get (see script_env)
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = Context(plan=plan, workdir=workdir, env=script_env(args.smoke), store=workdir / "store")
        start = time.perf_counter()
        for name in LEGS:
            if name in args.legs:
                ctx.legs[name] = run_leg(ctx, name)
        device = throughput.device_name(plan.benchmark.device)
        report = {"device": device, "torch": torch.__version__, "smoke": args.smoke, "workdir": str(workdir),
                  "seconds": time.perf_counter() - start, "legs": [vars(leg) for leg in ctx.legs.values()],
                  "passed": all(leg.status == "ok" for leg in ctx.legs.values())}
    text = markdown_report(report)
    print("\n" + text, flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
