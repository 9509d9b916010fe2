"""One full MLM training step (forward, backward, AdamW) of our RoBERTa against transformers', side by side.

All implementations get the same weights and the same batches, in one process; their steps are interleaved
(A, B, C, A, B, C, ...) so that a noisy neighbour slows them alike, and the median is reported. The batches are
blocks as the store holds them (`<s> ... </s>`) masked by `batches.mask_tokens`; ours runs its static head
(`max_predictions_per_seq` from `batches.max_predictions_per_seq`), transformers' its dense head.

    python benchmarks/throughput.py                 # CPU: vocab 50265, 4 layers x 256, sequence 128, batch 16
    python benchmarks/throughput.py --device cuda   # GPU: roberta-base, sequence 512, batch 32, bf16, compiled
    python benchmarks/throughput.py --implementations ours "ours (dynamic head)" "ours (unfused qkv)"
    git show HEAD~3:model.py > /tmp/old_model.py && python benchmarks/throughput.py --baseline_model /tmp/old_model.py

The rows, in order: the four that answer the goal (ours, ours compiled as train.py --compile does, transformers
with sdpa, and transformers compiled), then transformers running our gathered head, then the rest. The goal (at
least 1.5x transformers, at no more memory) is checked compiled against compiled only; eager rows are compared
with eager transformers. MFU is given twice: over the useful FLOPs (ours' count: the MLM head on the predicted
tokens only, the same number for every row) and over the FLOPs each implementation runs (transformers' head on
every token).

A short slot: `--budget_s` starts a row only while the time left covers its warm-up (a compiled row's compile
allowance: measured on an earlier row of the same kind, else stated in COMPILE_ALLOWANCE_S) and its timed steps.
`--json` is rewritten after every warm-up, every timed round and on SIGTERM or Ctrl-C, so that a stopped run
leaves every row measured so far (`"complete": false`).

Needs torch and transformers only (no datasets, evaluate or wandb), so it runs on a bare GPU machine.
`benchmarks/gpu_check.py` runs it as a script and reads its --json.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batches import mask_tokens, max_predictions_per_seq  # noqa: E402
from folders import check_report_file  # noqa: E402
from model import RobertaConfig, RobertaForMaskedLM, compile_regions, flops_per_token  # noqa: E402
from utils import (  # noqa: E402
    ArgumentParser,
    UsageError,
    exit_code_for_signal,
    first_line,
    matmul_flops_per_second,
    run_cli,
)

SCRIPT = "benchmarks/throughput.py"  # the signature in its --json (folders.is_own_report)
TRANSFORMERS = "transformers (sdpa)"
GATHERED = "transformers (sdpa, gathered head)"
OURS = "ours"
REGIONAL = "ours + regional compile"
PADDED = "ours + regional compile, vocab padded to 64"
# Every implementation a run can time. "ours" is the static head; the variants switch off (or on) one
# optimisation each, so that its gain is measured in the same process; "baseline" is another model.py
# (--baseline_model). GATHERED is transformers' model with our algorithm: its MLM head runs on the same gathered
# rows as ours, so that the algorithm's gain (scoring only the predicted rows) and the implementation's separate.
# REGIONAL compiles each layer and the head (model.compile_regions, what train.py --compile does) instead of the
# whole model; PADDED also rounds the vocabulary up to a multiple of 64 (train.py --pad_vocab_to_multiple_of 64).
IMPLEMENTATIONS = (TRANSFORMERS, f"{TRANSFORMERS} + compile", GATHERED, f"{GATHERED} + compile", OURS,
                   f"{OURS} + compile", REGIONAL, PADDED, "ours (dynamic head)", "ours (dynamic head) + compile",
                   "ours (unfused qkv)", "baseline", "baseline + compile")
# The goal (README): ours compiled as train.py compiles it, at least GOAL_SPEEDUP x transformers compiled, at no
# more memory; GOAL_TOKENS_PER_SECOND on an H200 at roberta-base, sequence 512, batch 32, bf16.
OURS_COMPILED, REFERENCE_COMPILED = REGIONAL, f"{TRANSFORMERS} + compile"
GOAL_ROWS = (OURS, OURS_COMPILED, TRANSFORMERS, REFERENCE_COMPILED)  # the four rows that answer it, first
GOAL_SPEEDUP, GOAL_TOKENS_PER_SECOND = 1.5, 600_000
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity), by a name torch reports,
# most specific first: "H100 PCIe" must not match "H100".
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0,
                         "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0}
# Seconds a row's warm-up (building it, its first steps, its compilation) is allowed before it starts, by kind.
# Stated from the CPU measurements in docs/gpu.md and the GPU predictions there; a kind measured earlier in the
# same run (its warm-up seconds, with a quarter more) replaces the stated number.
COMPILE_ALLOWANCE_S = {"cuda": {"eager": 15, "regional": 45, "whole": 90},
                       "cpu": {"eager": 5, "regional": 15, "whole": 30}}
PRESETS = {  # the shapes the speed targets are set at (README, Results)
    "cpu": dict(hidden=256, layers=4, heads=4, seq=128, batch=16, steps=12, warmup=3, dtype="fp32"),
    "cuda": dict(hidden=768, layers=12, heads=12, seq=512, batch=32, steps=30, warmup=10, dtype="bf16"),
}


@dataclass
class Settings:
    """One benchmark: the model shape, the batch, how long to time, and which implementations."""

    device: str = "cpu"
    vocab_size: int = 50265
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    seq: int = 128
    batch: int = 16
    steps: int = 12  # timed steps per implementation (the median is reported)
    warmup: int = 3  # untimed steps first (compilation happens here)
    mlm_probability: float = 0.15
    dtype: str = "fp32"  # "bf16": autocast to bfloat16; "fp32": no autocast
    implementations: tuple[str, ...] = (OURS, TRANSFORMERS)
    compile_backend: str = "inductor"  # "aot_eager" traces the same graphs without generating code (CPU smoke runs)
    baseline_model: str | None = None  # path of another model.py, timed as "baseline"

    def __post_init__(self) -> None:
        unknown = [name for name in self.implementations if name not in IMPLEMENTATIONS]
        if unknown:
            raise ValueError(f"unknown implementations {unknown}; choose from {list(IMPLEMENTATIONS)}")
        if any(name.startswith("baseline") for name in self.implementations) and not self.baseline_model:
            raise ValueError("the baseline implementations need baseline_model (a path to another model.py)")

    @classmethod
    def preset(cls, device: str, **overrides) -> Settings:
        return cls(device=device, **{**PRESETS[device], **overrides})

    def config(self) -> RobertaConfig:
        return RobertaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden, num_hidden_layers=self.layers,
                             num_attention_heads=self.heads, intermediate_size=4 * self.hidden,
                             max_position_embeddings=self.seq + 2)

    def padded_config(self) -> RobertaConfig:
        return replace(self.config(), vocab_size=-(-self.vocab_size // 64) * 64)

    @property
    def max_predictions_per_seq(self) -> int:
        return max_predictions_per_seq(self.seq, self.mlm_probability)


@dataclass
class Result:
    name: str
    status: str = "pending"  # pending | warming up | timed | skipped (budget) | failed | stopped
    step_times: list[float] = field(default_factory=list)
    peak_memory_gib: float | None = None  # this model's own: its weights and optimizer state plus a step's peak
    warmup_s: float = 0.0  # the untimed first steps: compilation, for a compiled implementation
    error: str | None = None  # why it has no time (skipped, failed, stopped): the other rows still stand

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_times)


class Stopped(BaseException):
    """SIGTERM or SIGINT: the run writes what it has and ends (a BaseException, so no row's handler takes it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def compile_kind(name: str) -> str:
    """"regional" (each layer and the head, model.compile_regions), "whole" (torch.compile of the model or of the
    gathered-head function) or "eager"."""
    if name in (REGIONAL, PADDED):
        return "regional"
    return "whole" if name.endswith("+ compile") else "eager"


def executed_fraction(name: str, settings: Settings) -> float:
    """The fraction of tokens whose MLM head an implementation runs: every one for transformers' dense head, the
    k gathered rows per sequence for the static heads, the predicted ones for the dynamic head."""
    if name.startswith(TRANSFORMERS) and not name.startswith(GATHERED):
        return 1.0
    if "dynamic head" in name:
        return settings.mlm_probability
    return min(settings.max_predictions_per_seq, settings.seq) / settings.seq


class _Vocabulary:
    """What `batches.mask_tokens` reads of a tokenizer, for a vocabulary of random ids with RoBERTa's special ids."""

    all_special_ids = [0, 1, 2, 3, 4]  # <s> <pad> </s> <unk> <mask>
    mask_token_id = 4

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def make_batches(settings: Settings, count: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of packed blocks (`<s>`, random ordinary ids, `</s>`) masked by `batches.mask_tokens`."""
    generator = torch.Generator().manual_seed(seed)
    vocabulary = _Vocabulary(settings.vocab_size)
    batches = []
    for _ in range(count):
        ids = torch.randint(5, settings.vocab_size, (settings.batch, settings.seq), generator=generator)
        ids[:, 0], ids[:, -1] = 0, 2
        inputs, labels = mask_tokens(ids, vocabulary, settings.mlm_probability, generator)
        batches.append((inputs.to(settings.device), labels.to(settings.device)))
    return batches


def _load_model_module(path: str):
    """Import another model.py (e.g. an older commit's) under its own module name."""
    spec = importlib.util.spec_from_file_location("baseline_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_model"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def build_model(name: str, settings: Settings, folder: str) -> torch.nn.Module:
    """One implementation, with the weights saved in `folder` (each its own copy: no shared optimizer state)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars in the middle of the table
    if name.startswith("transformers"):
        model = transformers.RobertaForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    elif name.startswith("baseline"):
        model = _load_model_module(settings.baseline_model).RobertaForMaskedLM.from_pretrained(folder)
    elif name == PADDED:  # other shapes: its own weights, drawn the same way
        torch.manual_seed(0)
        model = RobertaForMaskedLM(settings.padded_config())
    else:
        model = RobertaForMaskedLM.from_pretrained(folder)
        if "unfused qkv" in name:
            for module in model.modules():
                if hasattr(module, "fused_qkv"):
                    module.fused_qkv = False
    model = model.to(settings.device).train()
    if name in (REGIONAL, PADDED):
        compile_regions(model, backend=settings.compile_backend)
    elif name.endswith("+ compile") and not name.startswith(GATHERED):
        # Ours must trace to one graph: a break there is a bug. transformers' may break where it likes.
        fullgraph = name == f"{OURS} + compile"
        model = torch.compile(model, backend=settings.compile_backend, fullgraph=fullgraph)
    return model


def forward_kwargs(name: str, model: torch.nn.Module, settings: Settings) -> dict:
    """Ours and a baseline that knows the flag get the static head; transformers and 'dynamic head' do not."""
    if name.startswith("transformers") or "dynamic head" in name:
        return {}
    forward = getattr(model, "_orig_mod", model).forward
    if "max_predictions_per_seq" not in inspect.signature(forward).parameters:
        return {}
    return {"max_predictions_per_seq": settings.max_predictions_per_seq}


def build_optimizer(model: torch.nn.Module, settings: Settings) -> torch.optim.AdamW:
    """AdamW as train.py builds it (train.build_optimizer): fused on CUDA. One group: the benchmark times the
    update, whose cost does not depend on which tensors decay."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                             fused=settings.device == "cuda")


def make_step(name: str, model: torch.nn.Module, settings: Settings):
    """(one training step: forward and loss under autocast, backward, AdamW (fused on CUDA); its optimizer)."""
    optimizer = build_optimizer(model, settings)
    autocast_dtype = torch.bfloat16 if settings.dtype == "bf16" else None
    kwargs = forward_kwargs(name, model, settings)
    forward = model
    if name.startswith(GATHERED):  # compiled here, as a function: the whole model is never called
        forward = gathered_head_forward(model, settings)
        if name.endswith("+ compile"):
            forward = torch.compile(forward, backend=settings.compile_backend)

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(settings.device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = forward(input_ids=inputs, labels=labels, **kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, optimizer


def gathered_head_forward(model: torch.nn.Module, settings: Settings):
    """transformers' RobertaForMaskedLM run with our algorithm: its encoder, then its own MLM head on the same
    B x k gathered rows our static head scores (model._first_predicted_rows), and the same loss."""
    from model import MaskedLMOutput, _first_predicted_rows

    k = settings.max_predictions_per_seq

    def forward(input_ids: torch.Tensor, labels: torch.Tensor) -> MaskedLMOutput:
        hidden = model.roberta(input_ids=input_ids).last_hidden_state  # (B, T, C)
        rows, row_labels = _first_predicted_rows(hidden, labels, k)  # (B*k, C), (B*k,)
        logits = model.lm_head(rows)  # (B*k, V)
        loss = torch.nn.functional.cross_entropy(logits.float(), row_labels, reduction="sum")
        return MaskedLMOutput(loss=loss / row_labels.ne(-100).sum().clamp(min=1))

    return forward


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def persistent_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """What a model keeps between steps: its weights (a tied one once) and its optimizer's state."""
    tensors = {id(p): p for p in model.parameters()}
    tensors.update({id(t): t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ----------------------------------------------------------------------------------------------------------------
# The run: rows warmed up one at a time (while the budget covers them), timed in interleaved rounds, written often
# ----------------------------------------------------------------------------------------------------------------


class Bench:
    """The timing of `settings.implementations` within `budget_s`, its report rewritten at `json_path` after every
    warm-up and timed round (and by `stop` on a signal)."""

    def __init__(self, settings: Settings, budget_s: float | None = None, json_path: Path | None = None):
        self.settings, self.json_path = settings, json_path
        self.deadline = time.monotonic() + budget_s if budget_s else float("inf")
        self.results = {name: Result(name) for name in settings.implementations}
        self.batches = make_batches(settings)
        self.steps: dict[str, tuple] = {}  # name -> (step function, persistent bytes), for the warmed-up rows
        self.measured_allowance: dict[str, float] = {}  # compile kind -> seconds its warm-up took here
        self.peak_flops = 0.0
        self.stopped_by: str | None = None
        self.complete = False

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allowance(self, name: str) -> float:
        kind = compile_kind(name)
        if kind in self.measured_allowance:
            return 1.25 * self.measured_allowance[kind]
        return COMPILE_ALLOWANCE_S[self.settings.device][kind]

    def timing_reserve(self) -> float:
        """The seconds the remaining timed rounds take with one more row, at the slowest step seen (1 s before any)."""
        seen = [r.step_s for r in self.results.values() if r.step_times]
        slowest = max(seen, default=1.0)
        return self.settings.steps * slowest * (len(self.steps) + 1)

    def run(self) -> dict:
        self.peak_flops = matmul_rate(self.settings)
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            RobertaForMaskedLM(self.settings.config()).save_pretrained(folder)  # one set of weights for all
            for name in self.settings.implementations:
                needed = self.allowance(name) + self.timing_reserve()
                if self.left() < needed:
                    self.results[name].status = "skipped (budget)"
                    self.results[name].error = (f"skipped (budget): {max(self.left(), 0):.0f} s left, needs "
                                                f"~{needed:.0f} s ({compile_kind(name)} warm-up allowance "
                                                f"{self.allowance(name):.0f} s and its timed steps)")
                    continue
                self.warm_up(name, folder)
                self.write()
                self.timed_round()
        while self.left() > 0 and self.timed_round():
            pass
        self.complete = True
        return self.write()

    def warm_up(self, name: str, folder: str) -> None:
        result, start = self.results[name], time.perf_counter()
        result.status = "warming up"
        self.write()
        try:
            model = build_model(name, self.settings, folder)
            step, optimizer = make_step(name, model, self.settings)
            for i in range(self.settings.warmup):
                step(*self.batches[i % len(self.batches)])
            sync(self.settings.device)
        except Exception as error:  # noqa: BLE001 - one implementation's failure is one row's
            result.status, result.error = "failed", f"warm-up: {type(error).__name__}: {first_line(error)}"
            return
        result.warmup_s = time.perf_counter() - start
        self.measured_allowance.setdefault(compile_kind(name), result.warmup_s)
        self.steps[name] = (step, persistent_bytes(model, optimizer))

    def timed_round(self) -> bool:
        """One timed step of every warmed-up row that has fewer than `settings.steps`; False when none has."""
        due = [name for name in self.steps if len(self.results[name].step_times) < self.settings.steps]
        for name in due:
            self.time_one_step(name)
        if due:
            self.write()
        return bool(due)

    def time_one_step(self, name: str) -> None:
        settings, result = self.settings, self.results[name]
        step, kept = self.steps[name]
        batch = self.batches[len(result.step_times) % len(self.batches)]
        if settings.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        sync(settings.device)
        start = time.perf_counter()
        try:
            step(*batch)
            sync(settings.device)
        except Exception as error:  # noqa: BLE001
            result.status, result.error = "failed", f"step: {type(error).__name__}: {first_line(error)}"
            del self.steps[name]
            return
        result.step_times.append(time.perf_counter() - start)
        result.status = "timed"
        if settings.device == "cuda":  # the other models' memory is constant during this step: left out
            alone = (torch.cuda.max_memory_allocated() - before + kept) / 2**30
            result.peak_memory_gib = max(result.peak_memory_gib or 0.0, alone)

    def stop(self, stopped_by: str) -> dict:
        """A signal: the row in progress and those not started say so; the report keeps every timed step."""
        self.stopped_by = stopped_by
        for result in self.results.values():
            if result.status in ("pending", "warming up"):
                result.status, result.error = "stopped", f"stopped by {stopped_by} before it was timed"
        return self.write()

    def report(self) -> dict:
        settings = self.settings
        rows = result_rows(self.results, settings, self.peak_flops)
        return dict(written_by=SCRIPT, complete=self.complete, stopped_by=self.stopped_by,
                    device=device_name(settings.device), torch=torch.__version__, settings=asdict(settings),
                    shape=describe(settings), matmul_flops=self.peak_flops,
                    datasheet_flops=datasheet_flops(settings.device), flops_counted=FLOPS_COUNTED, rows=rows,
                    goal=goal_check(rows, device_name(settings.device), settings))

    def write(self) -> dict:
        report = self.report()
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.json_path.with_name(self.json_path.name + ".tmp")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            os.replace(tmp, self.json_path)  # a reader, or a kill, never sees half a report
        return report


def matmul_rate(settings: Settings) -> float:
    """Measured FLOP/s of a large square matrix multiply in the benchmark's dtype: the ceiling for MFU."""
    dtype = torch.bfloat16 if settings.dtype == "bf16" and settings.device == "cuda" else torch.float32
    on_gpu = settings.device == "cuda"
    return matmul_flops_per_second(settings.device, dtype, size=8192 if on_gpu else 1024, repeats=20 if on_gpu else 5)


def datasheet_tflops(gpu_name: str) -> float | None:
    """The dense bf16 peak of the card `gpu_name` (as torch names it) from DATASHEET_BF16_TFLOPS, None when unknown.
    The longest matching key wins, so that "H100 PCIe" is not read as the SXM part."""
    matches = [key for key in DATASHEET_BF16_TFLOPS if key in gpu_name]
    return DATASHEET_BF16_TFLOPS[max(matches, key=len)] if matches else None


def datasheet_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    tflops = datasheet_tflops(torch.cuda.get_device_name())
    return tflops * 1e12 if tflops else None


FLOPS_COUNTED = ("mfu: the useful FLOPs, ours' count (model.flops_per_token: the MLM head on the predicted tokens "
                 "only), the same for every row; mfu_executed: the FLOPs that implementation runs (transformers' "
                 "dense head on every token, a static head on its k gathered rows per sequence)")


def result_rows(results: dict[str, Result], settings: Settings, peak_flops: float) -> list[dict]:
    """One dict per implementation, in the order timed: status, step time (median of `timed_steps`), tokens/s,
    speed against transformers in the same mode (eager or compiled), MFU of the useful and of the executed FLOPs
    against the measured matrix rate, useful MFU against the datasheet's peak, peak memory alone, warm-up
    (compile) seconds, error."""
    config, tokens = settings.config(), settings.batch * settings.seq
    useful = flops_per_token(config, settings.seq, settings.mlm_probability)
    sheet = datasheet_flops(settings.device)

    def reference(name: str) -> Result | None:  # transformers in the same mode (eager or compiled)
        ref = results.get(TRANSFORMERS if compile_kind(name) == "eager" else REFERENCE_COMPILED)
        return ref if ref and ref.step_times else None

    rows = []
    for r in results.values():
        executed = flops_per_token(config, settings.seq, executed_fraction(r.name, settings))
        row = dict(implementation=r.name, status=r.status, timed_steps=len(r.step_times), step_ms=None,
                   tokens_per_second=None, vs_transformers=None, vs=None, mfu=None, mfu_executed=None,
                   mfu_datasheet=None, useful_flops_per_token=useful, executed_flops_per_token=executed,
                   peak_memory_gib=r.peak_memory_gib, warmup_s=r.warmup_s, error=r.error)
        if r.step_times:
            ref = reference(r.name)
            rate = tokens / r.step_s
            row.update(step_ms=1e3 * r.step_s, tokens_per_second=rate,
                       vs_transformers=ref.step_s / r.step_s if ref else None, vs=ref.name if ref else None,
                       mfu=useful * rate / peak_flops, mfu_executed=executed * rate / peak_flops,
                       mfu_datasheet=useful * rate / sheet if sheet else None)
        rows.append(row)
    return rows


def goal_check(rows: list[dict], device: str, settings: Settings) -> dict:
    """The goal, like with like: {"speedup", "memory", "tokens_per_second", "eager"}, each {"passed": True, False
    or None (not checked), "text": one line saying what was compared, or why it was not}."""
    by_name = {row["implementation"]: row for row in rows}
    ours, ref = by_name.get(OURS_COMPILED), by_name.get(REFERENCE_COMPILED)

    def missing(row: dict | None, name: str) -> str | None:
        if row is None:
            return f"{name} was not asked for"
        if not row["tokens_per_second"]:
            return f"{name} was not timed ({row['error'] or row['status']})"
        return None

    why = missing(ours, OURS_COMPILED) or missing(ref, REFERENCE_COMPILED)
    if why:
        text = f"not checked: {why}; the goal is compared compiled with compiled only"
        speedup = memory = {"passed": None, "text": text}
    else:
        ratio = ours["tokens_per_second"] / ref["tokens_per_second"]
        speedup = {"passed": ratio >= GOAL_SPEEDUP, "ratio": ratio,
                   "text": f"{OURS_COMPILED} {ratio:.2f}x {REFERENCE_COMPILED} (goal {GOAL_SPEEDUP}x)"}
        if ours["peak_memory_gib"] is None or ref["peak_memory_gib"] is None:
            memory = {"passed": None, "text": "not checked: peak memory is measured on CUDA only"}
        else:
            memory = {"passed": ours["peak_memory_gib"] <= ref["peak_memory_gib"],
                      "text": f"{OURS_COMPILED} {ours['peak_memory_gib']:.2f} GiB, {REFERENCE_COMPILED} "
                              f"{ref['peak_memory_gib']:.2f} GiB (goal: no more)"}
    roberta_base = (settings.hidden, settings.layers, settings.seq, settings.batch, settings.dtype,
                    settings.vocab_size) == (768, 12, 512, 32, "bf16", 50265)
    if "H200" not in device or not roberta_base:
        rate = {"passed": None, "text": f"not checked: the {GOAL_TOKENS_PER_SECOND:,} tokens/s target is set on an "
                                        "H200 at roberta-base, sequence 512, batch 32, bf16"}
    elif why:
        rate = {"passed": None, "text": f"not checked: {why}"}
    else:
        rate = {"passed": ours["tokens_per_second"] >= GOAL_TOKENS_PER_SECOND,
                "text": f"{ours['tokens_per_second']:,.0f} tokens/s (goal {GOAL_TOKENS_PER_SECOND:,})"}
    eager_why = missing(by_name.get(OURS), OURS) or missing(by_name.get(TRANSFORMERS), TRANSFORMERS)
    eager = {"passed": None, "text": f"eager: not compared: {eager_why}" if eager_why else
             f"eager: {OURS} {by_name[OURS]['vs_transformers']:.2f}x {TRANSFORMERS} (reported, not a goal)"}
    return {"speedup": speedup, "memory": memory, "tokens_per_second": rate, "eager": eager}


def describe(settings: Settings) -> str:
    return (f"vocab {settings.vocab_size}, {settings.layers} layers x {settings.hidden}, sequence {settings.seq}, "
            f"batch {settings.batch}, {settings.dtype}, {100 * settings.mlm_probability:.0f}% predicted (ours: "
            f"max_predictions_per_seq {settings.max_predictions_per_seq}), median of up to {settings.steps} steps "
            f"after {settings.warmup} warm-up")


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def run(settings: Settings, budget_s: float | None = None, json_path: Path | None = None) -> dict:
    """Time every implementation of `settings` (see Bench); returns the report that `json_path` holds."""
    if settings.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    return Bench(settings, budget_s, json_path).run()


def markdown_table(rows: list[dict]) -> str:
    lines = ["| implementation | step ms | steps | tokens/s | vs transformers (same mode) | MFU (useful FLOPs) "
             "| MFU (executed FLOPs) | MFU (useful, datasheet) | peak GiB (alone) | warm-up s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def number(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def percent(value) -> str:
        return "-" if not value else f"{100 * value:.1f}%"

    for row in rows:
        if not row.get("tokens_per_second"):
            why = (row.get("error") or row.get("status") or "").replace("|", "/")
            lines.append(f"| {row['implementation']} | {why} | | | | | | | | |")
            continue
        ratio = f"{row['vs_transformers']:.2f}x" if row["vs_transformers"] else "-"
        lines.append(f"| {row['implementation']} | {row['step_ms']:.1f} | {row.get('timed_steps', '-')} "
                     f"| {row['tokens_per_second']:,.0f} | {ratio} | {percent(row['mfu'])} "
                     f"| {percent(row.get('mfu_executed'))} | {percent(row.get('mfu_datasheet'))} "
                     f"| {number(row['peak_memory_gib'], '.2f')} | {number(row.get('warmup_s'), '.0f')} |")
    return "\n".join(lines)


def goal_lines(goal: dict) -> list[str]:
    return [f"- {what}: {'PASSED' if check['passed'] else 'FAILED' if check['passed'] is False else ''}"
            f"{' ' if check['passed'] is not None else ''}{check['text']}" for what, check in goal.items()]


def default_implementations(compile_: bool, baseline: bool) -> list[str]:
    """Without compilation: ours and transformers (and the baseline). With it: the four rows that answer the goal,
    then the gathered head, then ours compiled whole (and the baseline's)."""
    if not compile_:
        return [OURS, TRANSFORMERS] + (["baseline"] if baseline else [])
    return [*GOAL_ROWS, f"{GATHERED} + compile", f"{OURS} + compile"] + \
        (["baseline", "baseline + compile"] if baseline else [])


def output_kinds() -> tuple:
    """The repository's output folders a report must not be written into over their own files: the store and the
    run folders (the QA run's owner needs pyarrow, which a bare GPU machine may lack; then no such folder is there)."""
    import run_folder
    import store

    kinds = [store.STORE, run_folder.PRETRAINING_RUN]
    try:
        import qa_run_folder

        kinds.append(qa_run_folder.QA_RUN)
    except ImportError:
        pass
    return tuple(kinds)


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None, float | None]:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab_size", type=positive(int), default=50265)
    for name in ("hidden", "layers", "heads", "seq", "batch", "steps", "warmup"):
        p.add_argument(f"--{name}", type=positive(int), help="default: the device's preset")
    p.add_argument("--mlm_probability", type=float, default=0.15)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile'd variants (default: on for cuda, off for cpu)")
    p.add_argument("--compile_backend", default="inductor")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="autocast dtype (default: bf16 on cuda)")
    p.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, metavar="NAME",
                   help=f"what to time, in this order (default: ours, transformers, and with --compile the four "
                        f"rows of the goal, the gathered head and ours compiled whole); any of "
                        f"{', '.join(repr(n) for n in IMPLEMENTATIONS)}")
    p.add_argument("--baseline_model", help="another model.py to time as 'baseline' (and 'baseline + compile')")
    p.add_argument("--json", type=Path, help="also write the results to this file, after every row and round")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier --json report of this script "
                   "(never another file)")
    p.add_argument("--budget_s", type=positive(float), help="seconds for the whole run: a row starts only while "
                   "the time left covers its warm-up allowance and its timed steps (default: no limit)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to torch")
    if not 0 < args.mlm_probability < 1:
        raise UsageError(f"--mlm_probability must be between 0 and 1, got {args.mlm_probability}")
    if args.baseline_model and not Path(args.baseline_model).is_file():
        raise UsageError(f"--baseline_model {args.baseline_model} is not a file (a model.py to time)")
    if args.json is not None:
        check_report_file(args.json, "--json", script=SCRIPT, overwrite=args.overwrite, kinds=output_kinds())
    compile_ = args.device == "cuda" if args.compile is None else args.compile
    implementations = args.implementations or default_implementations(compile_, bool(args.baseline_model))
    overrides = {f.name: getattr(args, f.name) for f in fields(Settings)
                 if f.name in vars(args) and getattr(args, f.name) is not None and f.name != "device"}
    try:
        settings = Settings.preset(args.device, **overrides)
        settings = replace(settings, implementations=tuple(dict.fromkeys(implementations)))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if settings.hidden % settings.heads:
        raise UsageError(f"--hidden {settings.hidden} is not a multiple of --heads {settings.heads}")
    if settings.vocab_size <= len(_Vocabulary.all_special_ids) or settings.seq < 4:
        raise UsageError(f"--vocab_size must exceed the {len(_Vocabulary.all_special_ids)} special ids and --seq be at "
                         f"least 4 (<s>, tokens, </s>); got {settings.vocab_size} and {settings.seq}")
    return settings, args.json, args.budget_s


def main(argv: list[str] | None = None) -> int:
    settings, json_path, budget_s = parse_args(argv)
    print(f"device {device_name(settings.device)}, torch {torch.__version__}, {describe(settings)}", flush=True)
    if settings.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    bench = Bench(settings, budget_s, json_path)

    def on_signal(signum, frame):
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        report = bench.run()
    except Stopped as stop:
        for signum in (signal.SIGTERM, signal.SIGINT):  # a second signal now ends the process at once
            signal.signal(signum, signal.SIG_DFL)
        report = bench.stop(str(stop))
        print(f"stopped by {stop}: the rows timed so far{f' are in {json_path}' if json_path else ''}", flush=True)
        print(markdown_table(report["rows"]))
        return exit_code_for_signal(stop.signum)
    print(f"measured matrix-multiply rate: {report['matmul_flops'] / 1e12:.2f} TFLOP/s; {FLOPS_COUNTED}\n")
    print(markdown_table(report["rows"]))
    print("\n" + "\n".join(goal_lines(report["goal"])))
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
