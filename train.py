"""Pretrain RoBERTa with masked language modelling, on one CPU or many GPUs (🤗 Accelerate).

The recipe is RoBERTa's (Liu et al. 2019): packed full-length blocks with no padding (so the model gets no
attention mask and PyTorch may pick the flash kernel), dynamic masking drawn afresh for every batch
(`batches.mask_tokens`: 15% of tokens, 80% <mask> / 10% random / 10% unchanged), AdamW with β2 = 0.98 and weight
decay on matrices only, linear warmup then decay, gradient clipping, accumulation and large global batches. The
defaults are roberta-base's recipe (12 layers x 768, 100,000 updates of 32 blocks per process): a multi-GPU job.
The block length and the tokenizer are the store's. For a first run on a laptop, use the small command at the end
of --help.

Reading order: `main` checks every input first (`validate`: a `Plan`), builds the model and optimizer (`setup`),
then `train` is the loop, top to bottom: update; log when due (metrics.MetricsLogger); evaluate when due; save when
due (checkpoints.Checkpointer, which also resumes). batches.py holds the data order and masking, run_folder.py the
run folder's files, folders.py the rules that keep a user's folders safe. docs/run_folder.md (each run folder's
README.md) describes the run folder and resuming: the same command plus --resume_from_checkpoint latest continues
exactly. SIGTERM, SIGINT (Ctrl-C) and SIGHUP save a checkpoint after the current update and exit 0; a second Ctrl-C
stops at once. A non-finite loss stops the run; a loss that stays far above its starting value is warned about.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

import checkpoints as ckpt
import init_from
import model_folder
import run_folder
from batches import MASK, derived_seed, eval_batches, mask_tokens, max_predictions_per_seq, train_batches
from checkpoints import Checkpointer
from distributed import StopSignal, check_launch, describe, is_sharded, prepare_model_and_optimizer
from folders import FolderLock, check_in_use, check_output_folder
from metrics import MetricsLogger, NonFiniteLoss
from model import IGNORE_INDEX, MLM_PROBABILITY, RobertaConfig, RobertaForMaskedLM, compile_regions
from run_folder import PRETRAINING_RUN
from store import Store, open_store
from utils import (
    ArgumentParser,
    HelpFormatter,
    ScriptExit,
    UsageError,
    command_with,
    exit_code_for_signal,
    is_main_process,
    library_versions,
    run_cli,
    wandb_offline_unless_logged_in,
)

EXAMPLES = """examples:
  python prepare_data.py --dataset demo --train_tokenizer 4000 --context_length 64 --path_to_data_store data/demo
  python train.py --path_to_prepped_data data/demo --experiment_name tiny \\
      --num_transformer_blocks 4 --embedding_dimension 128 --num_attention_heads 4 --per_gpu_batch_size 16 \\
      --num_training_steps 3000 --num_warmup_steps 150 --learning_rate 1e-3
  python train.py ... --resume_from_checkpoint latest     # continue a stopped run
  accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 train.py ... --compile"""
SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt"]
# RobertaConfig's checks, told in the flags' names (init_from.FLAG_FIELDS: which flag sets which field)
CONFIG_FLAGS = {**{field: f"--{flag}" for flag, field in init_from.FLAG_FIELDS.items()},
                "intermediate_size": "--mlp_ratio x --embedding_dimension"}


# ----------------------------------------------------------------------------------------------------------------
# Arguments and checks: everything before the model is built
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=HelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--experiment_name", default="roberta_pretraining", help="name of the run folder")
    g.add_argument("--working_directory", default="runs", help="parent folder of run folders")
    g.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an earlier run of this name (only the files train.py wrote are removed)")
    g.add_argument("--resume_from_checkpoint", default=None, metavar="PATH|latest",
                   help=f"a {run_folder.CHECKPOINT_FOLDER} folder, or 'latest': the newest intact checkpoint of this "
                        "run (a fresh start when there is none, so a preemptible job can always pass it)")
    g.add_argument("--seed", type=int, default=42, help="seed of the initial weights, data order, masks, dropout")
    g = p.add_argument_group("data")
    g.add_argument("--path_to_prepped_data", required=True, help="data store written by prepare_data.py")
    g.add_argument("--hf_model_name", default="FacebookAI/roberta-base",
                   help="tokenizer (Hub id or folder) used only when the store has no tokenizer/ folder; it must be "
                        "the one that made the store")
    g.add_argument("--context_length", type=int, default=None,
                   help="tokens per block: the store's blocks (default: the store's; given, it is checked)")
    g.add_argument("--masking_probability", type=float, default=MLM_PROBABILITY, help="fraction of tokens predicted")
    g.add_argument("--num_workers", type=int, default=4,
                   help="DataLoader workers per process (capped at the spare cores; 0: load in-process)")
    add_model_flags(p.add_argument_group("model (roberta-base by default)"))
    add_optimisation_flags(p.add_argument_group("optimisation"))
    g = p.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--logging_steps", type=int, default=10, help="updates between training log lines")
    g.add_argument("--evaluation_interval", type=int, default=1000, help="updates between evaluations")
    g.add_argument("--max_eval_batches", type=int, default=None,
                   help="evaluate on at most this many batches per process (default: the whole test split)")
    g.add_argument("--checkpoint_interval", type=int, default=1000, help="updates between checkpoints")
    g.add_argument("--num_keep_checkpoints", type=int, default=3, help="newest checkpoints kept (at least 2)")
    g.add_argument("--log_wandb", action=argparse.BooleanOptionalAction, default=False,
                   help="also log to Weights & Biases (offline when not logged in; honours WANDB_MODE)")
    g.add_argument("--wandb_project", default="roberta-pretraining", help="Weights & Biases project")
    return p


def add_model_flags(g) -> None:
    g.add_argument("--init_from", default=None, metavar="NAME_OR_PATH",
                   help="continue pretraining a model: a Hub id, a transformers folder or a "
                        f"{run_folder.FINAL_MODEL_DIR}/ (architecture and weights from there; the store must be made "
                        "with its tokenizer)")
    g.add_argument("--num_transformer_blocks", type=int, default=12, help="encoder layers")
    g.add_argument("--num_attention_heads", type=int, default=12, help="attention heads per layer")
    g.add_argument("--embedding_dimension", type=int, default=768, help="hidden size")
    g.add_argument("--mlp_ratio", type=float, default=4.0, help="MLP width / embedding dimension")
    g.add_argument("--hidden_dropout_p", type=float, default=0.1, help="dropout on embeddings and residual branches")
    g.add_argument("--attention_dropout_p", type=float, default=0.1, help="dropout on attention weights")
    g.add_argument("--layer_norm_eps", type=float, default=1e-5, help="LayerNorm epsilon (RoBERTa's)")
    g.add_argument("--initializer_range", type=float, default=0.02, help="std of the initial weights")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile each layer and the MLM loss (a minute of compilation, then faster GPU steps)")
    g.add_argument("--pad_vocab_to_multiple_of", type=int, default=1, help="round the embedding/decoder rows up to "
                   "a multiple of this (64: faster matmuls; the checkpoint then differs from transformers' shape)")
    g.add_argument("--fsdp_reduce_dtype", choices=["fp32", "bf16"], default="fp32",
                   help="dtype of FSDP's gradient reduction under bf16 mixed precision")


def add_optimisation_flags(g) -> None:
    g.add_argument("--per_gpu_batch_size", type=int, default=32, help="blocks per process per micro-step")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-steps per update")
    g.add_argument("--num_training_steps", type=int, default=100_000, help="optimizer updates in all")
    g.add_argument("--num_warmup_steps", type=int, default=10_000, help="updates of linear learning-rate warmup")
    g.add_argument("--lr_scheduler", default="linear", choices=SCHEDULERS, help="learning-rate shape after warmup")
    g.add_argument("--learning_rate", type=float, default=6e-4, help="peak learning rate")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (matrices only)")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--adam_beta2", type=float, default=0.98, help="AdamW beta2 (RoBERTa's 0.98, for stability)")
    g.add_argument("--adam_epsilon", type=float, default=1e-6, help="AdamW epsilon")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="clip the gradient norm to this (0: no clipping)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """Every problem with the numbers, listed at once (the architecture's are RobertaConfig's to find)."""
    problems = [f"--{n} must be at least 1, got {getattr(args, n)}" for n in [
        "context_length", "per_gpu_batch_size", "gradient_accumulation_steps", "num_training_steps", "logging_steps",
        "evaluation_interval", "checkpoint_interval", "pad_vocab_to_multiple_of"]
        if getattr(args, n) is not None and getattr(args, n) < 1]
    problems += [f"--{n} must be in [0, 1), got {getattr(args, n)}" for n in ["adam_beta1", "adam_beta2"]
                 if not 0 <= getattr(args, n) < 1]
    problems += [f"--{n} must be positive, got {getattr(args, n)}" for n in [
        "learning_rate", "adam_epsilon", "initializer_range", "mlp_ratio"] if not getattr(args, n) > 0]
    problems += [f"--{n} must not be negative, got {getattr(args, n)}" for n in [
        "weight_decay", "max_grad_norm", "num_workers", "seed", "num_warmup_steps"] if getattr(args, n) < 0]
    if not 0 < args.masking_probability < 1:
        problems.append(f"--masking_probability must be in (0, 1), got {args.masking_probability}")
    if args.num_warmup_steps > args.num_training_steps:
        problems.append(f"--num_warmup_steps {args.num_warmup_steps} exceeds --num_training_steps "
                        f"{args.num_training_steps}")
    if args.num_keep_checkpoints < 2:
        problems.append(f"--num_keep_checkpoints must be at least 2 (one may be cut off mid-write), got "
                        f"{args.num_keep_checkpoints}")
    if args.max_eval_batches is not None and args.max_eval_batches < 1:
        problems.append(f"--max_eval_batches must be at least 1, got {args.max_eval_batches}")
    if args.overwrite and args.resume_from_checkpoint:
        problems.append("--overwrite and --resume_from_checkpoint contradict each other: choose one")
    if not args.experiment_name.strip():
        problems.append("--experiment_name is empty; give the run folder a name")
    if problems:
        raise UsageError("; ".join(problems))


@dataclass
class Plan:
    """What validation found and checked: all that main() needs, known before anything is built or written."""

    run_dir: Path
    store: Store  # the data, its tokenizer, its block length and fingerprint
    config: RobertaConfig
    arguments: dict  # the arguments in effect: the flags, with what the store and --init_from decide
    resume: Path | None  # the verified checkpoint to continue from
    changes: list[str]  # flags that differ from the resumed checkpoint's
    locks: list[FolderLock]
    init_folder: Path | None = None  # the local folder of --init_from

    @property
    def data(self):
        return self.store.data

    @property
    def tokenizer(self):
        return self.store.tokenizer

    @property
    def context_length(self) -> int:
        return self.store.block_length


def validate(args: argparse.Namespace, argv: list[str] | None = None) -> Plan:
    """Check every argument and input; raise UsageError (one line) at the first problem. Builds no model, and
    makes the lock files only once every check has passed."""
    check_arguments(args)
    check_launch()
    run_dir = Path(args.working_directory) / args.experiment_name
    if is_main_process():
        check_in_use(run_dir, f"the run folder {run_dir}")  # "in use" before anything else, without a lock file
    plan = checked_plan(args, run_dir, argv)
    if is_main_process():  # held by the main process for the life of the run; the store's shared with other readers
        plan.locks = FolderLock.acquire_all([FolderLock(run_dir, flag=f"the run folder {run_dir}"), FolderLock(
            args.path_to_prepped_data, flag=f"--path_to_prepped_data {args.path_to_prepped_data}", shared=True)])
    return plan


def checked_plan(args: argparse.Namespace, run_dir: Path, argv: list[str] | None) -> Plan:
    """validate's checks, in order: the run folder, the store, the architecture, the batch, the checkpoint."""
    check_output_folder(run_dir, PRETRAINING_RUN, flag=f"the run folder {run_dir}", overwrite=args.overwrite,
                        resuming=args.resume_from_checkpoint is not None,
                        inputs={"--path_to_prepped_data": args.path_to_prepped_data,
                                "--hf_model_name": args.hf_model_name, "--init_from": args.init_from})
    store = checked_store(args)
    arguments = {**vars(args), "context_length": store.block_length}
    if args.init_from:  # the architecture and weights of a published model: checked in init_from.py
        config, init_folder, decided = init_from.checkpoint_config(args, init_from.given_flags(build_parser(), argv),
                                                                   store)
        arguments.update(decided)
    else:
        config, init_folder = model_config(args, store.tokenizer, store.block_length), None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if len(store.data["train"]) < args.per_gpu_batch_size * world_size:
        raise UsageError(f"the train split has {len(store.data['train'])} blocks, fewer than one global batch of "
                         f"{args.per_gpu_batch_size * world_size} (--per_gpu_batch_size x {world_size} processes)")
    if args.log_wandb and (note := wandb_offline_unless_logged_in()) and is_main_process():
        print(note, flush=True)
    # The main process alone chooses and verifies the checkpoint; main() hands its choice to the others.
    resume = ckpt.resolve_resume(args.resume_from_checkpoint, run_folder.checkpoints_dir(run_dir)) \
        if is_main_process() else None
    changes = ckpt.check_resume(resume, arguments, config.to_dict(), store.fingerprint, world_size,
                                store.tokenizer) if resume else []
    return Plan(run_dir, store, config, arguments, resume, changes, [], init_folder)


def checked_store(args: argparse.Namespace) -> Store:
    """The store, its tokenizer fit for masked LM, and --context_length (when given) its block length."""
    store = open_store(args.path_to_prepped_data, tokenizer=args.hf_model_name)
    if store.has_own_tokenizer and is_main_process() and args.hf_model_name != build_parser().get_default(
            "hf_model_name"):
        print(f"note: --hf_model_name {args.hf_model_name} is not used: the store has its own tokenizer/", flush=True)
    if args.context_length is not None and args.context_length != store.block_length:
        raise UsageError(f"--context_length {args.context_length} does not match the store's blocks of "
                         f"{store.block_length} tokens; leave it out (the store's length is used) or prepare a store "
                         f"of {args.context_length}")
    if store.tokenizer.mask_token_id is None or store.tokenizer.pad_token_id is None:
        raise UsageError("the store's tokenizer has no <mask> or <pad> token; masked LM needs both")
    return store


def model_config(args: argparse.Namespace, tokenizer, context_length: int) -> RobertaConfig:
    """The architecture from the flags; RobertaConfig does the checking, reported in the flags' names."""
    try:
        return RobertaConfig(
            vocab_size=-(-len(tokenizer) // args.pad_vocab_to_multiple_of) * args.pad_vocab_to_multiple_of,
            **{field: getattr(args, flag) for flag, field in init_from.FLAG_FIELDS.items()},
            intermediate_size=round(args.mlp_ratio * args.embedding_dimension),
            # RoBERTa's positions start at pad_token_id + 1: context_length + 2 rows for its pad id 1.
            max_position_embeddings=context_length + tokenizer.pad_token_id + 1,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id)
    except ValueError as error:
        message = str(error).removeprefix("invalid RobertaConfig: ")
        for name, flag in CONFIG_FLAGS.items():
            message = message.replace(name, flag)
        raise UsageError(message) from None


# ----------------------------------------------------------------------------------------------------------------
# Model, optimizer and schedule, prepared for the distributed type in effect
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Trainee:
    """What trains, on this process: the prepared (uncompiled) model to call and to gather weights from, our
    RobertaForMaskedLM inside it, and its optimizer."""

    accelerator: Accelerator
    model: torch.nn.Module
    raw_model: RobertaForMaskedLM
    optimizer: torch.optim.Optimizer


def setup(args: argparse.Namespace, plan: Plan, accelerator) -> Trainee:
    """The model (initialised, or --init_from's weights) and optimizer, prepared for the distributed type."""
    set_seed(args.seed)  # the same initial weights on every process
    raw_model = RobertaForMaskedLM(plan.config) if plan.init_folder is None or plan.resume else \
        init_from.load_model(plan.init_folder, plan.config)  # before prepare: what FSDP broadcasts from rank 0
    if args.compile:  # each layer and the MLM loss compiled in place: one layer's compile time, no renamed weights
        compile_regions(raw_model, fullgraph=not is_sharded(accelerator))
    wrapped, optimizer = prepare_model_and_optimizer(
        accelerator, raw_model, lambda model: build_optimizer(model, args, accelerator.device), args.max_grad_norm,
        args.per_gpu_batch_size, args.compile, args.fsdp_reduce_dtype)
    if not is_sharded(accelerator):  # the weights are saved once, in the transformers-format folder
        accelerator.register_save_state_pre_hook(lambda models, weights, folder: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, folder: models.clear())
    set_seed(args.seed, device_specific=True)  # dropout differs between processes
    return Trainee(accelerator, wrapped, raw_model, optimizer)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (linear weights, embeddings), none on biases and LayerNorm (1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device):
    return torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.learning_rate,
                             betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                             fused=device.type == "cuda")


def apply_optimizer_flags(optimizer, args: argparse.Namespace) -> None:
    """The flags' AdamW settings over those a loaded optimizer state brought back (they may change on resume)."""
    for group in optimizer.param_groups:
        group.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                     weight_decay=args.weight_decay if group["weight_decay"] else 0.0)


def lr_schedule(args: argparse.Namespace):
    """The learning rate of update `step`: transformers' schedules as a pure function of the step and the flags.

    No scheduler state is saved, so a resumed run follows the schedule its own flags give from its update on."""
    probe = torch.optim.SGD([torch.zeros(1)], lr=args.learning_rate)
    shape = get_scheduler(args.lr_scheduler, probe, num_warmup_steps=args.num_warmup_steps,
                          num_training_steps=args.num_training_steps).lr_lambdas[0]
    return lambda step: args.learning_rate * shape(step)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, accelerator, predictions_per_row: int) -> dict:
    """Loss and accuracy over every predicted token of the evaluation set, summed over processes."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, correct, count
    for inputs, labels in batches:
        inputs = inputs.to(accelerator.device, non_blocking=True).long()
        labels = labels.to(accelerator.device, non_blocking=True).long()
        out = model(inputs, attention_mask=None, labels=labels, max_predictions_per_seq=predictions_per_row)
        logits, targets = out.logits.float(), out.logits_labels  # (B*k, V), (B*k,): filler rows labelled -100
        totals += torch.stack([F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX).double(),
                               (logits.argmax(-1) == targets).sum().double(),
                               (targets != IGNORE_INDEX).sum().double()])
    model.train()
    loss_sum, correct, count = accelerator.reduce(totals, reduction="sum").tolist()
    loss = loss_sum / max(count, 1)
    return {"eval_loss": loss, "eval_accuracy": correct / max(count, 1),
            "eval_perplexity": math.exp(min(loss, 700.0)), "eval_tokens": int(count)}


# ----------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------


def train(args, plan: Plan, trainee: Trainee, checkpointer: Checkpointer, logger: MetricsLogger) -> bool:
    """Update; log when due; evaluate when due; save when due; stop on a signal. Returns False when a signal stopped
    the run (after a checkpoint)."""
    accelerator, model, optimizer, state = trainee.accelerator, trainee.model, trainee.optimizer, checkpointer.state
    learning_rate = lr_schedule(args)
    batches = train_batches(plan.data["train"], args.per_gpu_batch_size, args.seed, accelerator, state.epoch,
                            state.samples_in_epoch, args.num_workers)
    test_batches = eval_batches(plan.data["test"], plan.tokenizer, args.per_gpu_batch_size, args.masking_probability,
                                args.seed, accelerator.num_processes, accelerator.process_index, args.max_eval_batches)
    mask_generator, stop = torch.Generator(device=accelerator.device), StopSignal(accelerator)
    # Every row predicts at most k positions (fairseq's count), so the MLM head runs on exactly B*k gathered rows:
    # static shapes, one compiled graph, no host synchronisation in the step.
    k = max_predictions_per_seq(plan.context_length, args.masking_probability)
    if state.step == 0:
        logger.log_eval(0, evaluate(model, test_batches, accelerator, k))
    while state.step < args.num_training_steps:
        # One update: the gradients of --gradient_accumulation_steps micro-batches, each masked afresh.
        lr = learning_rate(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro in range(args.gradient_accumulation_steps):
            state.epoch, state.samples_in_epoch, input_ids = next(batches)
            # A seed per (process, micro-step): the masks need no saved RNG state to be the same on resume.
            micro_step = state.step * args.gradient_accumulation_steps + micro
            mask_generator.manual_seed(derived_seed(args.seed, MASK, accelerator.process_index, micro_step))
            inputs, labels = mask_tokens(input_ids, plan.tokenizer, args.masking_probability, mask_generator)
            with accelerator.accumulate(model):  # no gradient all-reduce until the last micro-step
                loss = model(inputs, attention_mask=None, labels=labels, max_predictions_per_seq=k).loss
                accelerator.backward(loss)  # divides by the accumulation steps
            loss_sum += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        logger.add(loss_sum / args.gradient_accumulation_steps)

        # Log, evaluate, checkpoint, stop: the only places that wait for the device.
        last = state.step == args.num_training_steps
        logger.log_when_due(state, grad_norm, lr, last)
        if state.step % args.evaluation_interval == 0 or last:
            logger.log_eval(state.step, evaluate(model, test_batches, accelerator, k))
        stopping = stop.requested(state.step)
        checkpointer.save_when_due(state, last, stopping)
        if stopping:
            accelerator.print(f"{stop.name}: saved a checkpoint at step {state.step}; continue with "
                              "--resume_from_checkpoint latest")
            return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# The run folder's record, and main
# ----------------------------------------------------------------------------------------------------------------


def start_run(args: argparse.Namespace, plan: Plan, trainee: Trainee, state) -> None:
    """Make the run folder ready and record the plan (main process), then start the trackers (every process)."""
    accelerator, config = trainee.accelerator, plan.config
    if accelerator.is_main_process:
        for line in run_folder.start(plan.run_dir, args.overwrite):
            print(line)
        record_plan(args, plan, trainee, state)
        run_folder.write_readme(plan.run_dir, config.init_from and (
            f"The model was {init_from.describe(config.init_from)}; the full record is model_config.init_from in "
            f"{run_folder.ARGS_FILE} and init_from in each model folder's {model_folder.CONFIG_FILE}."))
    accelerator.wait_for_everyone()
    accelerator.init_trackers(args.wandb_project, config=plan.arguments, init_kwargs={
        "wandb": {"name": args.experiment_name, "dir": str(plan.run_dir)}})


def record_plan(args: argparse.Namespace, plan: Plan, trainee: Trainee, state) -> None:
    """Print the numbers a user checks before leaving a run going, and record them in args.json."""
    acc, c, context_length = trainee.accelerator, plan.config, plan.context_length
    global_batch = args.per_gpu_batch_size * args.gradient_accumulation_steps * acc.num_processes
    planned = args.num_training_steps * global_batch * context_length
    train_tokens = len(plan.data["train"]) * context_length
    summary = {
        "model": f"RobertaForMaskedLM, {c.num_hidden_layers} layers x {c.hidden_size} wide, {c.num_attention_heads}"
                 f" heads, MLP {c.intermediate_size}, vocab {c.vocab_size}, context {context_length}: "
                 f"{trainee.raw_model.num_parameters():,} parameters",
        "processes": f"{acc.num_processes} on {acc.device.type} ({describe(acc)}), mixed precision "
                     f"{acc.mixed_precision}{', compiled' if args.compile else ''}",
        "batch": f"{args.per_gpu_batch_size} per process x {args.gradient_accumulation_steps} accumulation x "
                 f"{acc.num_processes} processes = global batch size {global_batch}",
        "tokens": f"{global_batch * context_length:,} per update; {planned:,} planned over "
                  f"{args.num_training_steps:,} updates ({planned / train_tokens:.2f} epochs of {train_tokens:,} "
                  "training tokens)",
        "start": f"resumed from {plan.resume} at step {state.step}" if plan.resume else
                 init_from.describe(c.init_from) if c.init_from else "from scratch",
        "run folder": str(plan.run_dir)}
    print("\n".join(f"{k:>10}: {v}" for k, v in summary.items()), flush=True)
    for change in plan.changes:
        print(f"    resume: {change} (takes effect from step {state.step})", flush=True)
    resumes = run_folder.recorded_resumes(plan.run_dir) + [
        {"step": state.step, "from": str(plan.resume), "changed": plan.changes}] if plan.resume else []
    not_used = {"hf_model_name": "the store's own tokenizer/ was used"} if plan.store.has_own_tokenizer else {}
    if not args.log_wandb:
        not_used["wandb_project"] = "no --log_wandb"
    if args.init_from:
        not_used["initializer_range"] = "the weights came from --init_from"
    run_folder.write_args(plan.run_dir, {"args": plan.arguments, "not_used": not_used, "summary": summary,
                                         "global_batch_size": global_batch, "model_config": c.to_dict(),
                                         "versions": library_versions(), "resumes": resumes})


def stop_message(error: NonFiniteLoss, args: argparse.Namespace, run: Path, logger: MetricsLogger) -> str:
    """A non-finite loss: the checkpoints with their losses, and a command that resumes from a sound one."""
    return f"error: {error}; stopping without saving. " + ckpt.non_finite_advice(
        run_folder.checkpoints_dir(run), logger.last_finite_step, args.learning_rate,
        lambda changes: command_with(build_parser(), sys.argv[1:], changes))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = validate(args, argv)  # every UsageError comes here, before anything is built or written
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              log_with="wandb" if args.log_wandb else None, project_dir=str(plan.run_dir))
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matrix multiplies on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    plan.resume = ckpt.agree_on_resume(accelerator, plan.resume)  # the main process's choice, on all
    trainee = setup(args, plan, accelerator)
    logger = MetricsLogger(accelerator, plan.run_dir, args, plan.context_length, plan.config)
    checkpointer = Checkpointer(trainee, plan.run_dir, plan.tokenizer, logger, args)
    state = checkpointer.resume(plan.resume)
    if plan.resume is not None:
        apply_optimizer_flags(trainee.optimizer, args)
    state.args = {**plan.arguments, "store_fingerprint": plan.store.fingerprint}
    start_run(args, plan, trainee, state)
    logger.start(state)
    try:
        if train(args, plan, trainee, checkpointer, logger):
            checkpointer.save_final_model()
    except NonFiniteLoss as error:
        accelerator.end_training()
        raise ScriptExit(stop_message(error, args, plan.run_dir, logger)) from None
    except ScriptExit:  # a checkpoint or the final model could not be written (CheckpointError, DiskFull)
        accelerator.end_training()
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, without saving
        raise ScriptExit("error: stopped by a second Ctrl-C before saving; continue from the last checkpoint with "
                         "--resume_from_checkpoint latest", exit_code_for_signal(signal.SIGINT)) from None
    accelerator.end_training()


if __name__ == "__main__":
    run_cli(main)
