"""Pretrain RoBERTa with masked language modelling, on one CPU or many GPUs (accelerate).

    python train.py --path_to_prepped_data data_store --experiment_name tiny
    accelerate launch train.py --path_to_prepped_data data_store ...   # DDP, FSDP or DeepSpeed, and mixed
                                                                      # precision, as `accelerate config` sets

The recipe is RoBERTa's (Liu et al. 2019): packed full-length blocks with no padding (the model gets no
attention mask, so PyTorch may pick the flash kernel), dynamic masking drawn afresh for every batch
(`utils.mask_tokens`: 15% of tokens, 80/10/10), AdamW with weight decay on matrices only, warmup then decay,
gradient clipping, gradient accumulation and large global batches.

Data. `--path_to_prepped_data` is a store written by prepare_data.py: splits `train` and `test` of blocks of
exactly `--context_length` ids, and the tokenizer that made them in `<store>/tokenizer/`. `--hf_model_name` is
used only for a store that has no tokenizer folder (and must then be the tokenizer that made the store).

Run folder `<working_directory>/<experiment_name>/` (written by the main process only):
    args.json          resolved arguments, batch arithmetic, model config, world size, library versions
    metrics.jsonl      one JSON object a line; training: step, loss, lr, grad_norm, tokens_per_second (and mfu
                       on a GPU); evaluation: step, eval_loss, eval_accuracy, eval_perplexity
    curves.png         loss and accuracy curves, redrawn at every evaluation
    checkpoints/step_N/
        config.json, model.safetensors, tokenizer files: a transformers-format model folder, so that
                       finetune_roberta_qa.py, transformers and AutoTokenizer load a checkpoint as they are
        accelerate_state/  optimizer, LR scheduler and grad scaler (accelerate.save_state); the weights are
                       not repeated there, except under FSDP/DeepSpeed, whose sharded state accelerate keeps
        process_R.pt   process R's RNG states (dropout) and running log sum
        trainer_state.json  step and data position; written last: a folder without it is incomplete
    final_model/       the trained model in transformers' format with its tokenizer

Checkpoints are written to `checkpoints/tmp-step_N/` and renamed once complete; the oldest are deleted only
after that, keeping `--num_keep_checkpoints` (at least 2). `--resume_from_checkpoint latest` continues from the
newest complete one (or starts afresh when there is none, so a preemptible job can always pass it) and
continues *exactly*: the shuffle of each epoch is seeded by (seed, epoch), the masks of a batch by (seed,
process, micro-step), and dropout's RNG is restored, so the same batches, masks and dropout follow and the
weights end bit-identical on a CPU. SIGTERM saves a checkpoint at the next step boundary and exits with 0.

Throughput. tokens/s counts all processes; on a GPU the log adds the model FLOP utilisation (MFU): training
FLOPs per token (`model.flops_per_token`, MLM head on the predicted 15%) against a bf16/fp16/tf32 matrix
multiply rate measured at start-up. The step never waits for the GPU except at logging steps.

Testing hook: TRAIN_TEST_SIGNAL_AT_STEP="7:KILL" (or "7:TERM") makes the process signal itself after update 7.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from folders import write_json
from utils import ArgumentParser, UsageError, library_versions, mask_tokens, run_cli

SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt"]
SHUFFLE, MASK, EVAL = 1, 2, 3  # tags that keep the derived random streams apart
ARCHITECTURE_KEYS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"]  # a checkpoint must match the flags in these to be resumed


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--experiment_name", default="roberta_pretraining", help="name of the run folder")
    g.add_argument("--working_directory", default="runs", help="parent folder of run folders")
    g.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="delete an existing run folder of the same name and start afresh")
    g.add_argument("--resume_from_checkpoint", default=None, metavar="PATH|latest",
                   help="a checkpoints/step_N folder, or 'latest' (newest complete one of this run, if any)")
    g.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("data")
    g.add_argument("--path_to_prepped_data", required=True, help="data store written by prepare_data.py")
    g.add_argument("--hf_model_name", default="FacebookAI/roberta-base",
                   help="tokenizer to use only if the store has no tokenizer/ folder (Hub id or folder)")
    g.add_argument("--context_length", type=int, default=512, help="tokens per block; must match the store")
    g.add_argument("--masking_probability", type=float, default=0.15)
    g.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes (0: load in-process)")
    g = p.add_argument_group("model")
    g.add_argument("--num_transformer_blocks", type=int, default=12)
    g.add_argument("--num_attention_heads", type=int, default=12)
    g.add_argument("--embedding_dimension", type=int, default=768)
    g.add_argument("--mlp_ratio", type=float, default=4.0, help="MLP width / embedding dimension")
    g.add_argument("--hidden_dropout_p", type=float, default=0.1)
    g.add_argument("--attention_dropout_p", type=float, default=0.1)
    g.add_argument("--layer_norm_eps", type=float, default=1e-5)
    g.add_argument("--initializer_range", type=float, default=0.02)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    g = p.add_argument_group("optimisation")
    g.add_argument("--per_gpu_batch_size", type=int, default=32, help="blocks per process per micro-step")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--num_training_steps", type=int, default=100_000, help="optimizer updates")
    g.add_argument("--num_warmup_steps", type=int, default=10_000)
    g.add_argument("--lr_scheduler", default="linear", choices=SCHEDULERS)
    g.add_argument("--learning_rate", type=float, default=6e-4)
    g.add_argument("--weight_decay", type=float, default=0.01)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.98)
    g.add_argument("--adam_epsilon", type=float, default=1e-6)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="clip the gradient norm (0: no clipping)")
    g = p.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--evaluation_interval", type=int, default=1000)
    g.add_argument("--max_eval_batches", type=int, default=None,
                   help="evaluate on at most this many batches per process (default: the whole test split)")
    g.add_argument("--checkpoint_interval", type=int, default=1000, help="updates between checkpoints")
    g.add_argument("--num_keep_checkpoints", type=int, default=3, help="newest checkpoints kept (at least 2)")
    g.add_argument("--log_wandb", action=argparse.BooleanOptionalAction, default=False,
                   help="also log to Weights & Biases (honours WANDB_MODE=offline)")
    g.add_argument("--wandb_project", default="roberta-pretraining")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """Every problem with the numbers, listed at once, before anything is loaded."""
    problems = []
    for name in ["context_length", "num_transformer_blocks", "num_attention_heads", "embedding_dimension",
                 "per_gpu_batch_size", "gradient_accumulation_steps", "num_training_steps", "logging_steps",
                 "evaluation_interval", "checkpoint_interval"]:
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.embedding_dimension % max(args.num_attention_heads, 1):
        problems.append(f"--embedding_dimension {args.embedding_dimension} does not divide by "
                        f"--num_attention_heads {args.num_attention_heads}")
    if not 0 < args.masking_probability < 1:
        problems.append(f"--masking_probability must be in (0, 1), got {args.masking_probability}")
    for name in ["hidden_dropout_p", "attention_dropout_p", "adam_beta1", "adam_beta2"]:
        if not 0 <= getattr(args, name) < 1:
            problems.append(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    for name in ["learning_rate", "adam_epsilon", "layer_norm_eps", "initializer_range", "mlp_ratio"]:
        if not getattr(args, name) > 0:
            problems.append(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ["weight_decay", "max_grad_norm", "num_workers", "seed", "num_warmup_steps"]:
        if getattr(args, name) < 0:
            problems.append(f"--{name} must not be negative, got {getattr(args, name)}")
    if args.num_warmup_steps > args.num_training_steps:
        problems.append(f"--num_warmup_steps {args.num_warmup_steps} exceeds --num_training_steps "
                        f"{args.num_training_steps}")
    if args.num_keep_checkpoints < 2:
        problems.append(f"--num_keep_checkpoints must be at least 2 (one may be cut off mid-write), "
                        f"got {args.num_keep_checkpoints}")
    if args.max_eval_batches is not None and args.max_eval_batches < 1:
        problems.append(f"--max_eval_batches must be at least 1, got {args.max_eval_batches}")
    if problems:
        raise UsageError("; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# Data store, tokenizer, run folder
# ----------------------------------------------------------------------------------------------------------------


def open_store(path: str, context_length: int):
    """The store's DatasetDict, checked against the data contract (splits, column, block length)."""
    import datasets

    store = Path(path)
    hint = f"write one with `python prepare_data.py --path_to_data_store {path} --context_length {context_length}`"
    if not store.is_dir():
        raise UsageError(f"--path_to_prepped_data {path} does not exist; {hint}")
    if not (store / "dataset_dict.json").is_file():
        raise UsageError(f"--path_to_prepped_data {path} is not a data store (no dataset_dict.json); {hint}")
    try:
        data = datasets.load_from_disk(str(store))
    except Exception as error:  # a damaged store fails in many ways; all mean the same to a user
        raise UsageError(f"--path_to_prepped_data {path} could not be read ({type(error).__name__}: {error}); "
                         f"{hint}") from None
    for split in ("train", "test"):
        if split not in data or "input_ids" not in data[split].column_names or len(data[split]) == 0:
            raise UsageError(f"--path_to_prepped_data {path} needs a non-empty '{split}' split with an input_ids "
                             f"column (it has {dict(data.num_rows)}); {hint}")
        block = len(data[split][0]["input_ids"])
        if block != context_length:
            raise UsageError(f"--context_length {context_length} does not match the store's blocks of {block} "
                             f"tokens; pass --context_length {block} or prepare a store of {context_length}")
    return data


def load_tokenizer(store: str, hf_model_name: str):
    """The store's own tokenizer; `hf_model_name` only when the store has none."""
    from transformers import AutoTokenizer

    folder = Path(store) / "tokenizer"
    source = str(folder) if folder.is_dir() else hf_model_name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as error:
        raise UsageError(f"the store has no tokenizer/ folder and --hf_model_name {hf_model_name!r} could not be "
                         f"loaded ({type(error).__name__}); pass a local tokenizer folder") from None
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise UsageError(f"the tokenizer from {source} has no <mask> or <pad> token; masked LM needs both")
    return tokenizer


def check_run_folder(args: argparse.Namespace) -> Path:
    """The run folder's path, after checking that it can be written and holds no other run (unless allowed)."""
    work = Path(args.working_directory)
    try:
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=work, prefix=".write_test"):
            pass
    except OSError as error:
        raise UsageError(f"--working_directory {work} cannot be written ({error.strerror or error}); "
                         "choose a folder you can write to") from None
    run_dir = work / args.experiment_name
    taken = run_dir.is_dir() and any(run_dir.iterdir())
    if taken and args.resume_from_checkpoint is None and not args.overwrite:
        raise UsageError(f"{run_dir} already holds a run; pass --resume_from_checkpoint latest to continue it, "
                         "--overwrite to replace it, or another --experiment_name")
    return run_dir


def resolve_resume(args: argparse.Namespace, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None to start afresh."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        return find_latest_checkpoint(run_dir / "checkpoints")
    path = Path(args.resume_from_checkpoint)
    if not path.is_dir():
        raise UsageError(f"--resume_from_checkpoint {path} does not exist; give a checkpoints/step_N folder or "
                         "'latest'")
    if not is_complete_checkpoint(path):
        raise UsageError(f"--resume_from_checkpoint {path} is not a complete checkpoint (no trainer_state.json, "
                         "the last file written); it was cut off while being saved: pick an earlier one")
    return path


def check_checkpoint_matches(path: Path, config: dict) -> None:
    """Refuse a checkpoint whose architecture differs from the flags, naming the differences."""
    saved = json.loads((path / "config.json").read_text())
    differ = [f"{k} {saved.get(k)} (flags give {v})" for k, v in config.items()
              if k in ARCHITECTURE_KEYS and saved.get(k) != v]
    if differ:
        raise UsageError(f"checkpoint {path} has another architecture: " + ", ".join(differ)
                         + "; pass the flags it was trained with")


@dataclass
class Inputs:
    """What validation found: everything main() needs before building the model."""

    data: object
    tokenizer: object
    run_dir: Path
    resume: Path | None
    config: object  # model.RobertaConfig


def validate(args: argparse.Namespace) -> Inputs:
    """Check every argument and input path; raise UsageError on the first problem. Builds no model."""
    check_arguments(args)
    run_dir = check_run_folder(args)
    resume = resolve_resume(args, run_dir)
    data = open_store(args.path_to_prepped_data, args.context_length)
    tokenizer = load_tokenizer(args.path_to_prepped_data, args.hf_model_name)
    config = model_config(args, tokenizer)
    if resume is not None:
        check_checkpoint_matches(resume, config.to_dict())
    return Inputs(data, tokenizer, run_dir, resume, config)


class PackedBlocks(torch.utils.data.Dataset):
    """A split of packed blocks; a list of indices gives one (B, T) int32 tensor in a single read."""

    def __init__(self, split):
        self.split = split.with_format("numpy", columns=["input_ids"])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack(list(self.split[indices]["input_ids"])).astype(np.int32))


def _stacked(batch: torch.Tensor) -> torch.Tensor:
    return batch  # PackedBlocks already returns the whole batch as one tensor


def derived_seed(*parts: int) -> int:
    """A seed mixed from integers, so that streams of nearby (seed, process, step) are unrelated."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochBatches(torch.utils.data.Sampler):
    """This process's part of every global batch of one epoch, shuffled by (seed, epoch) alone.

    A global batch is `batch_size * num_processes` blocks; the last incomplete one is dropped so that every
    batch has the same shape (no recompilation). `start` skips the global batches already consumed."""

    def __init__(self, num_rows: int, batch_size: int, num_processes: int, process_index: int, seed: int,
                 epoch: int, start: int = 0):
        self.num_rows, self.batch_size, self.seed, self.epoch, self.start = num_rows, batch_size, seed, epoch, start
        self.num_processes, self.process_index = num_processes, process_index
        self.num_batches = num_rows // (batch_size * num_processes)

    def __len__(self) -> int:
        return max(self.num_batches - self.start, 0)

    def __iter__(self):
        order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(
            derived_seed(self.seed, SHUFFLE, self.epoch)))
        global_batch = self.batch_size * self.num_processes
        for g in range(self.start, self.num_batches):
            first = g * global_batch + self.process_index * self.batch_size
            yield order[first:first + self.batch_size].tolist()


def loader_workers(requested: int, accelerator) -> int:
    """At most one worker per spare core of this process: reading packed rows is light, and workers that
    outnumber the cores take CPU time from the training process they feed (PyTorch warns about it too)."""
    cores_per_process = (os.cpu_count() or 1) // max(1, accelerator.num_processes)
    return max(0, min(requested, cores_per_process - 1))


def train_batches(dataset: PackedBlocks, args, accelerator, epoch: int, samples_in_epoch: int):
    """Endless (epoch, samples consumed in the epoch after this batch, input_ids on the device), from a position."""
    global_batch = args.per_gpu_batch_size * accelerator.num_processes
    start = samples_in_epoch // global_batch
    on_gpu = accelerator.device.type == "cuda"
    while True:
        sampler = EpochBatches(len(dataset), args.per_gpu_batch_size, accelerator.num_processes,
                               accelerator.process_index, args.seed, epoch, start)
        # A private generator: DataLoader draws a worker seed from it at every epoch, and drawing from the global
        # RNG instead would shift dropout's random stream between a resumed run and an uninterrupted one.
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=_stacked,
                                             num_workers=loader_workers(args.num_workers, accelerator),
                                             pin_memory=on_gpu,
                                             generator=torch.Generator(), persistent_workers=False)
        for g, batch in enumerate(loader, start=start):
            yield epoch, (g + 1) * global_batch, batch.to(accelerator.device, non_blocking=True).long()
        epoch, start = epoch + 1, 0


def make_eval_batches(split, tokenizer, args, num_processes: int, process_index: int) -> list:
    """This process's evaluation batches, masked once with a fixed seed so that every evaluation compares.

    The evaluated blocks are padded to whole global batches with rows that predict nothing (labels all -100),
    so every process runs the same number of forward passes and no block counts twice."""
    global_batch = args.per_gpu_batch_size * num_processes
    n = len(split) if args.max_eval_batches is None else min(len(split), args.max_eval_batches * global_batch)
    ids = PackedBlocks(split).__getitems__(list(range(n))).long()
    inputs, labels = mask_tokens(ids, tokenizer, args.masking_probability,
                                 torch.Generator().manual_seed(derived_seed(args.seed, EVAL)))
    padding = -n % global_batch
    inputs = torch.cat([inputs, torch.full((padding, ids.size(1)), tokenizer.pad_token_id)])
    labels = torch.cat([labels, torch.full((padding, ids.size(1)), -100)])
    batches = []
    for first in range(process_index * args.per_gpu_batch_size, n + padding, global_batch):
        rows = slice(first, first + args.per_gpu_batch_size)
        batches.append((inputs[rows].int(), labels[rows].int()))
    return batches


# ----------------------------------------------------------------------------------------------------------------
# Model and optimizer
# ----------------------------------------------------------------------------------------------------------------


def model_config(args: argparse.Namespace, tokenizer):
    from model import RobertaConfig

    return RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=args.embedding_dimension,
        num_hidden_layers=args.num_transformer_blocks, num_attention_heads=args.num_attention_heads,
        intermediate_size=round(args.mlp_ratio * args.embedding_dimension),
        hidden_dropout_prob=args.hidden_dropout_p, attention_probs_dropout_prob=args.attention_dropout_p,
        layer_norm_eps=args.layer_norm_eps, initializer_range=args.initializer_range,
        # RoBERTa's positions start at pad_token_id + 1: context_length + 2 rows for its pad id 1.
        max_position_embeddings=args.context_length + tokenizer.pad_token_id + 1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (linear weights, embeddings), none on biases and LayerNorm (1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device):
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                  fused=device.type == "cuda")
    # Not passed to accelerator.prepare: accelerate would step it once per process at every update.
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.num_warmup_steps,
                              num_training_steps=args.num_training_steps)
    return optimizer, scheduler


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype) -> float:
    """The GPU's measured matrix-multiply rate, the denominator of MFU (a private RNG: dropout's is untouched)."""
    n = 8192
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 10 * 2 * n**3 / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, accelerator) -> dict:
    """Loss and accuracy over every predicted token of the evaluation set, summed over processes."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, correct, count
    for inputs, labels in batches:
        inputs = inputs.to(accelerator.device, non_blocking=True).long()
        labels = labels.to(accelerator.device, non_blocking=True).long()
        logits = model(inputs, attention_mask=None, labels=labels).logits.float()  # (N, V): predicted rows only
        targets = labels[labels != -100]
        totals += torch.stack([F.cross_entropy(logits, targets, reduction="sum").double(),
                               (logits.argmax(-1) == targets).sum().double(),
                               torch.tensor(targets.numel(), dtype=torch.float64, device=totals.device)])
    model.train()
    loss_sum, correct, count = accelerator.reduce(totals, reduction="sum").tolist()
    loss = loss_sum / max(count, 1)
    return {"eval_loss": loss, "eval_accuracy": correct / max(count, 1),
            "eval_perplexity": math.exp(min(loss, 700.0)), "eval_tokens": int(count)}


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where training stands: updates done and the data position (shuffled epoch, blocks consumed in it)."""

    step: int = 0
    epoch: int = 0
    samples_in_epoch: int = 0
    num_processes: int = 1
    per_gpu_batch_size: int = 0
    gradient_accumulation_steps: int = 1


def is_complete_checkpoint(path: Path) -> bool:
    return (path / "trainer_state.json").is_file()


def find_latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete `step_N` in `folder`; `tmp-*` and folders cut off mid-write are ignored."""
    steps = [(int(m.group(1)), p) for p in folder.glob("step_*")
             if (m := re.fullmatch(r"step_(\d+)", p.name)) and p.is_dir() and is_complete_checkpoint(p)]
    return max(steps)[1] if steps else None


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_model_folder(accelerator, model, raw_model, tokenizer, folder: Path) -> None:
    """The model in transformers' format with its tokenizer, written by the main process (all must call)."""
    to_save = raw_model
    if is_sharded(accelerator):  # gather the full weights first; every process takes part
        from model import RobertaForMaskedLM

        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            to_save = RobertaForMaskedLM(raw_model.config)
            to_save.load_state_dict(state, strict=False)
    if accelerator.is_main_process:
        to_save.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def process_state(window_loss: torch.Tensor) -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
            else [], "window_loss": window_loss.detach().cpu()}


def save_checkpoint(s: Setup, state: TrainState, window_loss: torch.Tensor) -> Path:
    """Write checkpoints/step_N atomically (tmp folder, renamed once complete), then rotate old ones."""
    folder = s.run_dir / "checkpoints"
    tmp, final = folder / f"tmp-step_{state.step}", folder / f"step_{state.step}"
    if s.accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    s.accelerator.wait_for_everyone()
    save_model_folder(s.accelerator, s.model, s.raw_model, s.tokenizer, tmp)
    s.accelerator.save_state(str(tmp / "accelerate_state"))
    torch.save(process_state(window_loss), tmp / f"process_{s.accelerator.process_index}.pt")
    s.accelerator.wait_for_everyone()
    if s.accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", asdict(state))  # the completion marker: written last
        if final.exists():  # a stale copy, e.g. from before a resume from an earlier step
            shutil.rmtree(final)
        os.replace(tmp, final)
        rotate_checkpoints(folder, s.args.num_keep_checkpoints, keep=final)
    s.accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(folder: Path, num_keep: int, keep: Path) -> None:
    """Delete all but the newest `num_keep` complete checkpoints (never `keep`), and leftover tmp folders."""
    steps = sorted((int(p.name.split("_")[1]), p) for p in folder.glob("step_*")
                   if re.fullmatch(r"step_\d+", p.name) and is_complete_checkpoint(p))
    for _, path in steps[:-num_keep]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob("tmp-step_*"):
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(s: Setup, path: Path) -> tuple[TrainState, torch.Tensor]:
    """Restore weights, optimizer, scheduler, scaler and this process's RNG; return the state and log sum."""
    from model import RobertaForMaskedLM

    s.accelerator.load_state(str(path / "accelerate_state"))
    if not is_sharded(s.accelerator):  # the weights live once, in the transformers-format folder
        s.raw_model.load_state_dict(RobertaForMaskedLM.from_pretrained(path).state_dict())
    state = TrainState(**json.loads((path / "trainer_state.json").read_text()))
    window_loss = torch.zeros((), device=s.accelerator.device)
    own = path / f"process_{s.accelerator.process_index}.pt"
    same_layout = (state.num_processes, state.per_gpu_batch_size, state.gradient_accumulation_steps) == (
        s.accelerator.num_processes, s.args.per_gpu_batch_size, s.args.gradient_accumulation_steps)
    if own.is_file() and same_layout:
        saved = torch.load(own, weights_only=True)
        torch.set_rng_state(saved["torch"])
        if saved["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda"])
        window_loss = saved["window_loss"].to(s.accelerator.device)
    else:
        s.accelerator.print(f"warning: {path} was written by {state.num_processes} processes x batch "
                            f"{state.per_gpu_batch_size} x accumulation {state.gradient_accumulation_steps}; "
                            "training continues from the same data position but not bit-exactly")
    return state, window_loss


# ----------------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl, the curves plot and the trackers (wandb); only the main process writes."""

    def __init__(self, run_dir: Path, accelerator):
        self.path, self.plot_path, self.accelerator = run_dir / "metrics.jsonl", run_dir / "curves.png", accelerator
        self.main = accelerator.is_main_process

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a last line cut off by a kill
                records.append(json.loads(line))
        return records

    def keep_until(self, step: int) -> None:
        """On resume: drop what a killed run logged after its checkpoint, so no step appears twice."""
        if self.main:
            kept = [r for r in self.records() if r["step"] <= step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def plot(self) -> None:
        if not self.main:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.records()
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"], r["eval_accuracy"]) for r in records if "eval_loss" in r]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
        if train:
            ax_loss.plot(*zip(*train, strict=True), label="train loss", alpha=0.7)
        if evals:
            steps, losses, accuracies = zip(*evals, strict=True)
            ax_loss.plot(steps, losses, "o-", label="eval loss")
            ax_acc.plot(steps, [100 * a for a in accuracies], "o-", color="tab:green")
        ax_loss.set(xlabel="update", ylabel="masked-LM loss (nats)", title="loss")
        ax_loss.legend()
        ax_acc.set(xlabel="update", ylabel="masked-token accuracy (%)", title="eval accuracy")
        fig.tight_layout()
        tmp = self.plot_path.with_name("curves.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, self.plot_path)


class StopRequest:
    """SIGTERM sets a flag; all processes agree on it at a step boundary (over gloo: no GPU synchronisation)."""

    def __init__(self, num_processes: int):
        self.flag = False
        signal.signal(signal.SIGTERM, self._on_signal)
        self.group = None
        if num_processes > 1:
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo")

    def _on_signal(self, signum, frame) -> None:
        self.flag = True

    def requested(self) -> bool:
        if self.group is None:
            return self.flag
        import torch.distributed as dist

        flag = torch.tensor([int(self.flag)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


class NonFiniteLoss(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything the loop uses, built once by setup()."""

    args: argparse.Namespace
    accelerator: object
    model: torch.nn.Module  # prepared (and maybe compiled): call it
    raw_model: torch.nn.Module  # our RobertaForMaskedLM itself: save and load it
    optimizer: object
    scheduler: object
    tokenizer: object
    train_data: PackedBlocks
    eval_batches: list
    run_dir: Path
    log: MetricsLog
    stop: StopRequest
    tokens_per_update: int
    flops_per_token: float
    peak_flops: float | None = None  # measured matrix rate of one GPU; None on a CPU
    timer: dict = field(default_factory=dict)


def train_step(s: Setup, state: TrainState, batches, mask_generator: torch.Generator):
    """One optimizer update over `gradient_accumulation_steps` micro-batches; returns (mean loss, grad norm, lr).

    Nothing here waits for the GPU: the losses stay on the device until a logging step reads them."""
    args, accelerator = s.args, s.accelerator
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro in range(args.gradient_accumulation_steps):
        state.epoch, state.samples_in_epoch, input_ids = next(batches)
        # A fresh seed per (process, micro-step): the masks need no saved RNG state to be the same on resume.
        micro_step = state.step * args.gradient_accumulation_steps + micro
        mask_generator.manual_seed(derived_seed(args.seed, MASK, accelerator.process_index, micro_step))
        inputs, labels = mask_tokens(input_ids, s.tokenizer, args.masking_probability, mask_generator)
        with accelerator.accumulate(s.model):  # no gradient all-reduce until the last micro-step
            loss = s.model(inputs, attention_mask=None, labels=labels).loss
            # A batch with nothing to predict (possible only for tiny batches) has a NaN mean: count it as 0.
            loss = torch.where((labels != -100).any(), loss, torch.zeros_like(loss))
            accelerator.backward(loss)  # divides by the accumulation steps
        loss_sum += loss.detach()
    assert accelerator.sync_gradients, "the update must end on a gradient-synchronising micro-step"
    grad_norm = accelerator.clip_grad_norm_(s.model.parameters(), args.max_grad_norm or float("inf"))
    lr = s.scheduler.get_last_lr()[0]  # the rate this update uses
    s.optimizer.step()
    if not s.optimizer.step_was_skipped:  # fp16: the scaler skips updates with inf gradients
        s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return loss_sum / args.gradient_accumulation_steps, grad_norm, lr


def log_training(s: Setup, state: TrainState, window_loss: torch.Tensor, grad_norm, lr: float,
                 window_steps: int) -> None:
    """The logging step: the only place the loop waits for the device."""
    loss = s.accelerator.reduce(window_loss, reduction="mean").item() / window_steps
    check_finite(loss, s, state)
    elapsed = time.perf_counter() - s.timer["start"]
    tokens_per_second = s.timer["steps"] * s.tokens_per_update / max(elapsed, 1e-9)
    record = {"step": state.step, "loss": loss, "lr": lr,
              "grad_norm": None if grad_norm is None else float(grad_norm),
              "tokens_per_second": round(tokens_per_second, 1), "epoch": state.epoch}
    line = (f"step {state.step:>7}/{s.args.num_training_steps} | loss {loss:.4f} | lr {record['lr']:.3e} | "
            f"grad_norm {record['grad_norm'] or 0:.3f} | {tokens_per_second:,.0f} tok/s")
    if s.peak_flops:
        record["mfu"] = tokens_per_second * s.flops_per_token / (s.peak_flops * s.accelerator.num_processes)
        line += f" | mfu {100 * record['mfu']:.1f}%"
    s.log.write(record)
    if s.accelerator.is_main_process:
        from tqdm.auto import tqdm

        tqdm.write(line)
    restart_timer(s)


def check_finite(loss: float, s: Setup, state: TrainState) -> None:
    if not math.isfinite(loss):
        latest = find_latest_checkpoint(s.run_dir / "checkpoints")
        raise NonFiniteLoss(
            f"the training loss became {loss} by step {state.step}; stopping without saving. The last good "
            f"checkpoint is {latest or '(none yet)'}; resume from it with a lower --learning_rate, more "
            "--num_warmup_steps or --max_grad_norm, or bf16 instead of fp16")


def restart_timer(s: Setup) -> None:
    s.timer.update(start=time.perf_counter(), steps=0)


def run_evaluation(s: Setup, step: int) -> None:
    metrics = evaluate(s.model, s.eval_batches, s.accelerator)
    s.log.write({"step": step, **metrics})
    s.log.plot()
    if s.accelerator.is_main_process:
        from tqdm.auto import tqdm

        tqdm.write(f"eval {step:>7}/{s.args.num_training_steps} | eval_loss {metrics['eval_loss']:.4f} | "
                   f"eval_accuracy {100 * metrics['eval_accuracy']:.2f}% | "
                   f"eval_perplexity {metrics['eval_perplexity']:.2f}")
    restart_timer(s)


def debug_signal(step: int) -> None:
    """The testing hook TRAIN_TEST_SIGNAL_AT_STEP="N:KILL|TERM": signal this process after update N."""
    spec = os.environ.get("TRAIN_TEST_SIGNAL_AT_STEP")
    if spec and int(spec.split(":")[0]) == step:
        os.kill(os.getpid(), getattr(signal, "SIG" + spec.split(":")[1]))


def train(s: Setup, state: TrainState, window_loss: torch.Tensor) -> bool:
    """The loop: update, log, evaluate, checkpoint. Returns False when stopped early by SIGTERM."""
    from tqdm.auto import tqdm

    args, accelerator = s.args, s.accelerator
    batches = train_batches(s.train_data, args, accelerator, state.epoch, state.samples_in_epoch)
    mask_generator = torch.Generator(device=accelerator.device)
    # The bar shows on the main process in a terminal; in a log file (disable=None: not a TTY) it would only
    # interleave carriage returns with the log lines, which say the same every --logging_steps.
    progress = tqdm(total=args.num_training_steps, initial=state.step,
                    disable=None if accelerator.is_main_process else True,
                    desc="training", dynamic_ncols=True, mininterval=1.0)
    if state.step == 0:
        run_evaluation(s, 0)
    restart_timer(s)
    saved_step = state.step
    while state.step < args.num_training_steps:
        loss, grad_norm, lr = train_step(s, state, batches, mask_generator)
        state.step += 1
        window_loss += loss
        s.timer["steps"] += 1
        progress.update(1)
        last = state.step == args.num_training_steps
        if state.step % args.logging_steps == 0 or last:
            steps_since_log = state.step - (state.step - 1) // args.logging_steps * args.logging_steps
            log_training(s, state, window_loss, grad_norm, lr, steps_since_log)
            window_loss.zero_()
        if state.step % args.evaluation_interval == 0 or last:
            run_evaluation(s, state.step)
        debug_signal(state.step)
        stop = s.stop.requested()
        if state.step % args.checkpoint_interval == 0 or last or stop:
            check_finite(accelerator.reduce(window_loss, reduction="sum").item(), s, state)
            path = save_checkpoint(s, state, window_loss)
            saved_step = state.step
            restart_timer(s)
            if stop:
                accelerator.print(f"\nSIGTERM: saved {path} at step {state.step}; continue with "
                                  "--resume_from_checkpoint latest")
                progress.close()
                return False
    progress.close()
    assert saved_step == state.step
    return True


# ----------------------------------------------------------------------------------------------------------------
# Set-up and main
# ----------------------------------------------------------------------------------------------------------------


def make_accelerator(args: argparse.Namespace, run_dir: Path):
    from accelerate import Accelerator

    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              log_with="wandb" if args.log_wandb else None, project_dir=str(run_dir))
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matrix multiplies on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def prepare_run_folder(args: argparse.Namespace, inputs: Inputs, accelerator) -> None:
    """Create (or, with --overwrite, empty) the run folder; main process only, the others wait."""
    if accelerator.is_main_process:
        if args.overwrite and inputs.resume is None and inputs.run_dir.exists():
            shutil.rmtree(inputs.run_dir)
        inputs.run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def build(args: argparse.Namespace, inputs: Inputs, accelerator) -> Setup:
    """Model, optimizer, scheduler, data and logging, prepared by accelerate."""
    from accelerate.utils import set_seed

    from model import RobertaForMaskedLM, flops_per_token

    global_batch = args.per_gpu_batch_size * accelerator.num_processes
    if len(inputs.data["train"]) < global_batch:
        raise UsageError(f"the train split has {len(inputs.data['train'])} blocks, fewer than one global batch of "
                         f"{global_batch} (--per_gpu_batch_size x processes)")
    peak = None
    if accelerator.device.type == "cuda":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
        peak = matmul_flops_per_second(accelerator.device, dtype)
    set_seed(args.seed)  # the same initial weights on every process
    raw_model = RobertaForMaskedLM(inputs.config)
    optimizer, scheduler = build_optimizer(raw_model, args, accelerator.device)
    model, optimizer = accelerator.prepare(raw_model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    accelerator.register_for_checkpointing(scheduler)
    if not is_sharded(accelerator):  # the weights are saved once, in the transformers-format folder
        accelerator.register_save_state_pre_hook(lambda models, weights, folder: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, folder: models.clear())
    if args.compile:
        model = torch.compile(model)
    set_seed(args.seed, device_specific=True)  # dropout differs between processes
    eval_batches = make_eval_batches(inputs.data["test"], inputs.tokenizer, args, accelerator.num_processes,
                                     accelerator.process_index)
    return Setup(args=args, accelerator=accelerator, model=model, raw_model=raw_model, optimizer=optimizer,
                 scheduler=scheduler, tokenizer=inputs.tokenizer, train_data=PackedBlocks(inputs.data["train"]),
                 eval_batches=eval_batches, run_dir=inputs.run_dir, log=MetricsLog(inputs.run_dir, accelerator),
                 stop=StopRequest(accelerator.num_processes),
                 tokens_per_update=global_batch * args.gradient_accumulation_steps * args.context_length,
                 flops_per_token=flops_per_token(inputs.config, args.context_length, args.masking_probability),
                 peak_flops=peak)


def summary(s: Setup, inputs: Inputs, state: TrainState) -> dict:
    """The numbers a user checks before leaving a run going: printed, and recorded in args.json."""
    a, acc, c = s.args, s.accelerator, inputs.config
    global_batch = a.per_gpu_batch_size * a.gradient_accumulation_steps * acc.num_processes
    planned = a.num_training_steps * s.tokens_per_update
    train_tokens = len(inputs.data["train"]) * a.context_length
    return {
        "model": f"RobertaForMaskedLM, {c.num_hidden_layers} layers x {c.hidden_size} wide, "
                 f"{c.num_attention_heads} heads, MLP {c.intermediate_size}, vocab {c.vocab_size}, "
                 f"context {a.context_length}",
        "parameters": f"{s.raw_model.num_parameters():,} ({s.raw_model.num_parameters(True):,} without embeddings)",
        "processes": f"{acc.num_processes} on {acc.device.type}, mixed precision {acc.mixed_precision}"
                     f"{', compiled' if a.compile else ''}",
        "batch": f"{a.per_gpu_batch_size} per process x {a.gradient_accumulation_steps} accumulation x "
                 f"{acc.num_processes} processes = global batch size {global_batch}",
        "tokens": f"{s.tokens_per_update:,} per update; {planned:,} planned over {a.num_training_steps:,} updates "
                  f"({planned / train_tokens:.2f} epochs of {train_tokens:,} training tokens)",
        "evaluation": f"{inputs.data['test'].num_rows:,} test blocks, {len(s.eval_batches)} batches per process",
        "start": f"resumed from {inputs.resume} at step {state.step}" if inputs.resume else "from scratch",
        "run folder": str(s.run_dir),
        "global_batch_size": global_batch,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    inputs = validate(args)  # every UsageError comes before the model is built
    accelerator = make_accelerator(args, inputs.run_dir)
    prepare_run_folder(args, inputs, accelerator)
    s = build(args, inputs, accelerator)
    state = TrainState(num_processes=accelerator.num_processes, per_gpu_batch_size=args.per_gpu_batch_size,
                       gradient_accumulation_steps=args.gradient_accumulation_steps)
    window_loss = torch.zeros((), device=accelerator.device)
    if inputs.resume is not None:
        state, window_loss = load_checkpoint(s, inputs.resume)
        state.num_processes, state.per_gpu_batch_size = accelerator.num_processes, args.per_gpu_batch_size
        state.gradient_accumulation_steps = args.gradient_accumulation_steps
    if args.resume_from_checkpoint is not None:  # drop what was logged after the checkpoint (all if none)
        s.log.keep_until(state.step if inputs.resume is not None else -1)
    info = summary(s, inputs, state)
    if accelerator.is_main_process:
        write_json(inputs.run_dir / "args.json", {"args": vars(args), "summary": info,
                                                  "model_config": inputs.config.to_dict(),
                                                  "versions": library_versions()})
        print("\n".join(f"{k:>11}: {v}" for k, v in info.items() if k != "global_batch_size"), flush=True)
    accelerator.init_trackers(args.wandb_project, config={**vars(args), **info},
                              init_kwargs={"wandb": {"name": args.experiment_name, "dir": str(inputs.run_dir)}})
    try:
        finished = train(s, state, window_loss)
    except NonFiniteLoss as error:
        accelerator.end_training()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if finished:
        save_final_model(s)
    accelerator.end_training()


def save_final_model(s: Setup) -> None:
    final, tmp = s.run_dir / "final_model", s.run_dir / "final_model.tmp"
    if s.accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    save_model_folder(s.accelerator, s.model, s.raw_model, s.tokenizer, tmp)
    s.accelerator.wait_for_everyone()
    if s.accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        s.log.plot()
        print(f"final model: {final}", flush=True)


if __name__ == "__main__":
    run_cli(main)
