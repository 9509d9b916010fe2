"""One full MLM training step (forward, backward, AdamW) of our RoBERTa against transformers', side by side.

All implementations get the same weights and the same batches, in one process; their steps are interleaved
(A, B, C, A, B, C, ...) so that a noisy neighbour slows them alike, and the median is reported. The batches are
blocks as the store holds them (`<s> ... </s>`) masked by `utils.mask_tokens`; ours runs its static head
(`max_predictions_per_seq` from `utils.max_predictions_per_seq`), transformers' its dense head.

    python benchmarks/throughput.py                 # CPU: vocab 50265, 4 layers x 256, sequence 128, batch 16
    python benchmarks/throughput.py --device cuda   # GPU: roberta-base, sequence 512, batch 32, bf16, compiled
    python benchmarks/throughput.py --implementations ours "ours (dynamic head)" "ours (unfused qkv)"
    git show HEAD~3:model.py > /tmp/old_model.py && python benchmarks/throughput.py --baseline_model /tmp/old_model.py

Needs torch and transformers only (no datasets, evaluate or wandb), so it runs on a bare GPU machine.
`benchmarks/gpu_check.py` imports `Settings`, `run` and `markdown_table` from here.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batches import mask_tokens, max_predictions_per_seq  # noqa: E402
from model import RobertaConfig, RobertaForMaskedLM, compile_regions, flops_per_token  # noqa: E402
from utils import first_line, matmul_flops_per_second  # noqa: E402

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
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity), by a name torch reports.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0,
                         "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0}
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
    implementations: tuple[str, ...] = (TRANSFORMERS, OURS)
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
    step_times: list[float] = field(default_factory=list)
    peak_memory_gib: float | None = None  # this model's own: its weights and optimizer state plus a step's peak
    warmup_s: float = 0.0  # the untimed first steps: compilation, for a compiled implementation
    error: str | None = None  # set when this implementation failed: the other rows still stand

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_times)


class _Vocabulary:
    """What `utils.mask_tokens` reads of a tokenizer, for a vocabulary of random ids with RoBERTa's special ids."""

    all_special_ids = [0, 1, 2, 3, 4]  # <s> <pad> </s> <unk> <mask>
    mask_token_id = 4

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def make_batches(settings: Settings, count: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of packed blocks (`<s>`, random ordinary ids, `</s>`) masked by `utils.mask_tokens`."""
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


def build_models(settings: Settings, results: dict[str, Result]) -> dict[str, torch.nn.Module]:
    """Every implementation of `settings`, from one set of weights (ours, saved in transformers' format). One that
    fails to build gets its error in `results` and is left out."""
    torch.manual_seed(0)
    models = {}
    with tempfile.TemporaryDirectory() as folder:
        RobertaForMaskedLM(settings.config()).save_pretrained(folder)
        for name in settings.implementations:
            try:
                models[name] = build_model(name, settings, folder)
            except Exception as error:  # noqa: BLE001 - one implementation's failure is one row's
                results[name].error = f"build: {type(error).__name__}: {first_line(error)}"
    return models


def forward_kwargs(name: str, model: torch.nn.Module, settings: Settings) -> dict:
    """Ours and a baseline that knows the flag get the static head; transformers and 'dynamic head' do not."""
    if name.startswith("transformers") or "dynamic head" in name:
        return {}
    forward = getattr(model, "_orig_mod", model).forward
    if "max_predictions_per_seq" not in inspect.signature(forward).parameters:
        return {}
    return {"max_predictions_per_seq": settings.max_predictions_per_seq}


def make_step(name: str, model: torch.nn.Module, settings: Settings):
    """(one training step: forward and loss under autocast, backward, AdamW (fused on CUDA); its optimizer)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                                  fused=settings.device == "cuda")
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


def time_steps(models: dict[str, torch.nn.Module], settings: Settings, results: dict[str, Result],
               deadline: float = float("inf")) -> None:
    """Warm each implementation up (compilation happens here), then time them interleaved. An implementation that
    fails, or whose warm-up would start after `deadline` (time.monotonic()), keeps its error and is not timed."""
    batches = make_batches(settings)
    steps = {}
    for name, model in models.items():
        if time.monotonic() > deadline:
            results[name].error = "skipped (budget)"
            continue
        start = time.perf_counter()
        try:
            step, optimizer = make_step(name, model, settings)
            for i in range(settings.warmup):
                step(*batches[i % len(batches)])
            sync(settings.device)
        except Exception as error:  # noqa: BLE001 - one implementation's failure is one row's
            results[name].error = f"warm-up: {type(error).__name__}: {first_line(error)}"
            continue
        results[name].warmup_s = time.perf_counter() - start
        steps[name] = (step, persistent_bytes(model, optimizer))
    for i in range(settings.steps):
        for name, (step, kept) in list(steps.items()):
            if settings.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            sync(settings.device)
            start = time.perf_counter()
            try:
                step(*batches[i % len(batches)])
                sync(settings.device)
            except Exception as error:  # noqa: BLE001
                results[name].error = f"step: {type(error).__name__}: {first_line(error)}"
                del steps[name]
                continue
            results[name].step_times.append(time.perf_counter() - start)
            if settings.device == "cuda":  # the other models' memory is constant during this step: left out
                alone = (torch.cuda.max_memory_allocated() - before + kept) / 2**30
                results[name].peak_memory_gib = max(results[name].peak_memory_gib or 0.0, alone)


def matmul_rate(settings: Settings) -> float:
    """Measured FLOP/s of a large square matrix multiply in the benchmark's dtype: the ceiling for MFU."""
    dtype = torch.bfloat16 if settings.dtype == "bf16" and settings.device == "cuda" else torch.float32
    on_gpu = settings.device == "cuda"
    return matmul_flops_per_second(settings.device, dtype, size=8192 if on_gpu else 1024, repeats=20 if on_gpu else 5)


def datasheet_flops(device: str) -> float | None:
    """The card's dense bf16 peak from its datasheet (DATASHEET_BF16_TFLOPS), None when unknown."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in DATASHEET_BF16_TFLOPS.items() if key in name), None)


def result_rows(results: dict[str, Result], settings: Settings, peak_flops: float) -> list[dict]:
    """One dict per implementation: step time, tokens/s, speed against transformers, MFU against the measured
    matrix rate and against the datasheet's peak, peak memory alone, warm-up (compile) seconds, error."""
    useful = flops_per_token(settings.config(), settings.seq, settings.mlm_probability)
    tokens = settings.batch * settings.seq
    sheet = datasheet_flops(settings.device)

    def reference(name: str) -> Result | None:  # transformers in the same mode (eager or compiled)
        ref = results.get(TRANSFORMERS + (" + compile" if "compile" in name else ""))
        return ref if ref and ref.step_times else None

    rows = []
    for r in results.values():
        row = dict(implementation=r.name, step_ms=None, tokens_per_second=None, vs_transformers=None, mfu=None,
                   mfu_datasheet=None, peak_memory_gib=r.peak_memory_gib, warmup_s=r.warmup_s, error=r.error)
        if r.step_times:
            ref = reference(r.name)
            rate = tokens / r.step_s
            row.update(step_ms=1e3 * r.step_s, tokens_per_second=rate,
                       vs_transformers=ref.step_s / r.step_s if ref else None, mfu=useful * rate / peak_flops,
                       mfu_datasheet=useful * rate / sheet if sheet else None)
        rows.append(row)
    return rows


def describe(settings: Settings) -> str:
    return (f"vocab {settings.vocab_size}, {settings.layers} layers x {settings.hidden}, sequence {settings.seq}, "
            f"batch {settings.batch}, {settings.dtype}, {100 * settings.mlm_probability:.0f}% predicted (ours: "
            f"max_predictions_per_seq {settings.max_predictions_per_seq}), median of {settings.steps} steps after "
            f"{settings.warmup} warm-up")


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def run(settings: Settings, budget_s: float | None = None) -> dict:
    """Time every implementation of `settings`; returns {device, settings, shape, matmul_flops, datasheet_flops,
    rows}. With `budget_s`, implementations whose warm-up would start after 70% of it are skipped."""
    deadline = time.monotonic() + 0.7 * budget_s if budget_s else float("inf")
    if settings.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak_flops = matmul_rate(settings)
    results = {name: Result(name) for name in settings.implementations}
    time_steps(build_models(settings, results), settings, results, deadline)
    return dict(device=device_name(settings.device), torch=torch.__version__, settings=asdict(settings),
                shape=describe(settings), matmul_flops=peak_flops, datasheet_flops=datasheet_flops(settings.device),
                rows=result_rows(results, settings, peak_flops))


def markdown_table(rows: list[dict]) -> str:
    lines = ["| implementation | step ms | tokens/s | vs transformers | MFU (measured matmul) | MFU (datasheet) "
             "| peak GiB (alone) | warm-up s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def number(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['implementation']} | {row['error'].replace('|', '/')} | | | | | | |")
            continue
        ratio = f"{row['vs_transformers']:.2f}x" if row["vs_transformers"] else "-"
        mfu_sheet = f"{100 * row['mfu_datasheet']:.1f}%" if row.get("mfu_datasheet") else "-"
        lines.append(f"| {row['implementation']} | {row['step_ms']:.1f} | {row['tokens_per_second']:,.0f} | {ratio} "
                     f"| {100 * row['mfu']:.1f}% | {mfu_sheet} | {number(row['peak_memory_gib'], '.2f')} "
                     f"| {number(row.get('warmup_s'), '.0f')} |")
    return "\n".join(lines)


def parse_args() -> tuple[Settings, Path | None]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab_size", type=int, default=50265)
    for name in ("hidden", "layers", "heads", "seq", "batch", "steps", "warmup"):
        p.add_argument(f"--{name}", type=int, help="default: the device's preset")
    p.add_argument("--mlm_probability", type=float, default=0.15)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile'd variants (default: on for cuda, off for cpu)")
    p.add_argument("--compile_backend", default="inductor")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="autocast dtype (default: bf16 on cuda)")
    p.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, metavar="NAME",
                   help=f"what to time (default: transformers and ours, each also compiled with --compile); "
                        f"any of {', '.join(repr(n) for n in IMPLEMENTATIONS)}")
    p.add_argument("--baseline_model", help="another model.py to time as 'baseline' (and 'baseline + compile')")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--budget_s", type=float, help="skip the implementations whose warm-up would start after 70%% "
                   "of this many seconds (default: no limit)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    compile_ = args.device == "cuda" if args.compile is None else args.compile
    implementations = args.implementations
    if implementations is None:
        implementations = [TRANSFORMERS, OURS] + (["baseline"] if args.baseline_model else [])
        implementations += [f"{name} + compile" for name in implementations] if compile_ else []
        implementations += [REGIONAL] if compile_ else []
    overrides = {f.name: getattr(args, f.name) for f in fields(Settings)
                 if f.name in vars(args) and getattr(args, f.name) is not None and f.name != "device"}
    settings = Settings.preset(args.device, **overrides)
    return replace(settings, implementations=tuple(implementations)), args.json, args.budget_s


def main() -> None:
    settings, json_path, budget_s = parse_args()
    print(f"device {device_name(settings.device)}, torch {torch.__version__}, {describe(settings)}", flush=True)
    report = run(settings, budget_s)
    print(f"measured matrix-multiply rate: {report['matmul_flops'] / 1e12:.2f} TFLOP/s\n")
    print(markdown_table(report["rows"]))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
