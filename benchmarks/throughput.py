"""One full MLM training step (forward, backward, AdamW) of our RoBERTa against transformers', side by side.

Both models get the same weights and the same batch, in one process; steps of the implementations are
interleaved (A, B, C, A, B, C, ...) so that a noisy neighbour slows them alike, and the median is reported.

    python benchmarks/throughput.py                 # CPU: vocab 50265, 4 layers x 256, sequence 128, batch 16
    python benchmarks/throughput.py --device cuda   # GPU: roberta-base, sequence 512, batch 32, bf16, compiled

Needs torch and transformers only (no datasets, evaluate or wandb), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import IGNORE_INDEX, RobertaConfig, RobertaForMaskedLM, flops_per_token  # noqa: E402

PRESETS = {  # the shapes the issues set targets at
    "cpu": dict(hidden=256, layers=4, heads=4, seq=128, batch=16, steps=12, warmup=3),
    "cuda": dict(hidden=768, layers=12, heads=12, seq=512, batch=32, steps=30, warmup=10),
}


@dataclass
class Result:
    name: str
    step_times: list[float] = field(default_factory=list)
    peak_memory_gib: float | None = None

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_times)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab_size", type=int, default=50265)
    for name in ("hidden", "layers", "heads", "seq", "batch", "steps", "warmup"):
        p.add_argument(f"--{name}", type=int, help="default: the device's preset")
    p.add_argument("--mlm_probability", type=float, default=0.15)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile'd variants (default: on for cuda, off for cpu)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="autocast dtype (default: bf16 on cuda)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    for name, value in PRESETS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.compile = args.device == "cuda" if args.compile is None else args.compile
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    return args


def make_batch(args, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens with `mlm_probability` of positions predicted (labels -100 elsewhere), as train.py feeds."""
    ids = torch.randint(5, args.vocab_size, (args.batch, args.seq), generator=generator)
    predicted = torch.rand(ids.shape, generator=generator) < args.mlm_probability
    labels = torch.where(predicted, ids, IGNORE_INDEX)
    inputs = torch.where(predicted, 4, ids)  # <mask>
    return inputs.to(args.device), labels.to(args.device)


def build_models(args) -> dict[str, torch.nn.Module]:
    """Ours, and transformers' (sdpa attention) loaded from the folder ours saved: identical weights."""
    import transformers

    config = RobertaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                           max_position_embeddings=args.seq + 2)
    torch.manual_seed(0)
    ours = RobertaForMaskedLM(config)
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        theirs = transformers.RobertaForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    models = {"transformers (sdpa)": theirs, "ours": ours}
    if args.compile:
        # Separate copies, so that the compiled and eager variants do not share optimizer state.
        with tempfile.TemporaryDirectory() as folder:
            ours.save_pretrained(folder)
            models["transformers (sdpa) + compile"] = torch.compile(
                transformers.RobertaForMaskedLM.from_pretrained(folder, attn_implementation="sdpa"))
            models["ours + compile"] = torch.compile(RobertaForMaskedLM.from_pretrained(folder))
    return {name: m.to(args.device).train() for name, m in models.items()}


def make_step(model: torch.nn.Module, args):
    """One training step: forward and loss under autocast, backward, AdamW (fused on CUDA)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                                  fused=args.device == "cuda")
    autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(args.device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(models: dict, args) -> dict[str, Result]:
    steps = {name: make_step(model, args) for name, model in models.items()}
    results = {name: Result(name) for name in models}
    generator = torch.Generator().manual_seed(1)
    batches = [make_batch(args, generator) for _ in range(4)]
    for step in steps.values():  # warm-up (and compilation) outside the timed region
        for i in range(args.warmup):
            step(*batches[i % len(batches)])
        sync(args.device)
    for i in range(args.steps):
        for name, step in steps.items():
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            start = time.perf_counter()
            step(*batches[i % len(batches)])
            sync(args.device)
            results[name].step_times.append(time.perf_counter() - start)
            if args.device == "cuda":
                peak = torch.cuda.max_memory_allocated() / 2**30
                results[name].peak_memory_gib = max(results[name].peak_memory_gib or 0.0, peak)
    return results


def matmul_rate(args) -> float:
    """Measured FLOP/s of a large square matrix multiply in the benchmark's dtype: the ceiling for MFU."""
    n = 8192 if args.device == "cuda" else 1024
    dtype = torch.bfloat16 if args.dtype == "bf16" and args.device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=args.device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(args.device)
    repeats = 20 if args.device == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(args.device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def report(results: dict[str, Result], args, peak_flops: float) -> list[dict]:
    config = RobertaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                           max_position_embeddings=args.seq + 2)
    useful = flops_per_token(config, args.seq, args.mlm_probability)
    tokens = args.batch * args.seq
    baseline = results["transformers (sdpa)"].step_s
    rows = []
    print(f"\n{'implementation':32s} {'step ms':>9s} {'tokens/s':>11s} {'vs tf sdpa':>10s} {'MFU':>6s} "
          f"{'peak GiB':>9s}")
    for r in results.values():
        memory = f"{r.peak_memory_gib:.2f}" if r.peak_memory_gib is not None else "-"
        row = dict(implementation=r.name, step_ms=1e3 * r.step_s, tokens_per_second=tokens / r.step_s,
                   speedup_vs_transformers_sdpa=baseline / r.step_s, mfu=useful * tokens / r.step_s / peak_flops,
                   peak_memory_gib=r.peak_memory_gib)
        rows.append(row)
        print(f"{r.name:32s} {row['step_ms']:9.1f} {row['tokens_per_second']:11,.0f} "
              f"{row['speedup_vs_transformers_sdpa']:9.2f}x {100 * row['mfu']:5.1f}% {memory:>9s}")
    for ours, theirs in (("ours", "transformers (sdpa)"), ("ours + compile", "transformers (sdpa) + compile")):
        if ours in results and theirs in results:
            print(f"ratio {ours} / {theirs}: {results[theirs].step_s / results[ours].step_s:.2f}x faster")
    return rows


def main() -> None:
    args = parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {device_name}, torch {torch.__version__}, vocab {args.vocab_size}, {args.layers} layers x "
          f"{args.hidden}, sequence {args.seq}, batch {args.batch}, {args.dtype}, "
          f"{100 * args.mlm_probability:.0f}% predicted, median of {args.steps} steps after {args.warmup} warm-up")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak_flops = matmul_rate(args)
    print(f"measured matrix-multiply rate: {peak_flops / 1e12:.1f} TFLOP/s")
    results = time_steps(build_models(args), args)
    rows = report(results, args, peak_flops)
    if args.json:
        args.json.write_text(json.dumps(dict(device=device_name, args={k: str(v) for k, v in vars(args).items()},
                                             matmul_flops=peak_flops, results=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
