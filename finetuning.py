"""What the two fine-tuning scripts share (finetune_roberta_qa.py and finetune_roberta_classification.py): the flags
of the run and of the backbone, the three backbones, the run folder's checks and claim, the Trainer's loggers, log
lines and saving. Each script keeps what its task needs: its data, its head, its evaluation and its results.

  * flags: `add_run_flags`, `add_backbone_flags`, `check_numbers`, `check_report_to`;
  * backbone: `backbone_source` / `backbone_flag` (which folder or Hub id), `check_backbone` (the flags fit, a local
    folder holds a model), `load_backbone_parts` (tokenizer, folder and architecture, the tokenizer checked to be the
    model's by tokenization's one rule), `backbone_provenance`;
  * run folder: `check_run_folder` (before anything is loaded), `claim_run_folder` (lock, --overwrite, the record);
  * stops: `stopped` (a signal or Ctrl-C, once utils.raise_on_stop_signals is on, as one line);
  * Trainer: `ModelFolderTrainer` (saves model folders), `training_arguments`, `add_log_lines` and
    `training_log_line`, `prepare_loggers`.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import get_available_reporting_integrations

import classification_run_folder
import model_folder
import qa_run_folder
import run_folder
from folders import FolderLock, OutputKind, check_output_folder, remove_own_outputs
from model import RobertaConfig
from tokenization import load_tokenizer, tokenizer_mismatch
from utils import (
    DiskFull,
    ScriptExit,
    Stopped,
    UsageError,
    duration,
    elapsed_and_eta,
    exit_code_for_signal,
    first_line,
    is_main_process,
    library_versions,
    log,
    looks_local,
    out_of_space,
    stop_signal_name,
    wandb_offline_unless_logged_in,
)

BACKBONES = ("pretrained_huggingface", "pretrained", "random")
# transformers' integrations (TrainingArguments.report_to), as of transformers 5
REPORTERS = ("none", "all", "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte",
             "kubeflow", "mlflow", "neptune", "swanlab", "tensorboard", "trackio", "wandb")


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------


def add_run_flags(parser: argparse.ArgumentParser, experiment_name: str, downloads: str):
    """The run group: the run folder, the cache, --overwrite, --seed, --report_to. Returns the group."""
    run = parser.add_argument_group("run")
    run.add_argument("--experiment_name", default=experiment_name, help="name of the run folder")
    run.add_argument("--working_directory", default="runs", help="parent folder of the run folder")
    run.add_argument("--path_to_cache_dir", default=None,
                     help=f"folder for every download ({downloads}, the Hub model and tokenizer) and the dataset "
                          "caches; unset: the Hugging Face caches (~/.cache/huggingface)")
    run.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                     help="replace the outputs of an earlier run in the run folder (only a folder this script "
                          "made; files it did not make are kept)")
    run.add_argument("--seed", type=int, default=42, help="seed of the head's initialisation, shuffling and dropout")
    run.add_argument("--report_to", default="none",
                     help="Trainer loggers, comma-separated: none, all, wandb, tensorboard, mlflow, ... (wandb "
                          "without a login logs offline into the run folder)")
    return run


def add_backbone_flags(parser: argparse.ArgumentParser):
    """The backbone group: --pretrained_backbone and where it comes from. Returns the group."""
    model = parser.add_argument_group("backbone")
    model.add_argument("--pretrained_backbone", choices=BACKBONES, default="pretrained_huggingface",
                       help="where the encoder comes from (see above)")
    model.add_argument("--huggingface_model_name", default="FacebookAI/roberta-base",
                       help="Hub id or local transformers-format folder: the backbone of pretrained_huggingface; "
                            "the architecture and tokenizer of random when --path_to_pretrained_backbone is not given")
    model.add_argument("--path_to_pretrained_backbone", default=None,
                       help=f"a train.py {run_folder.MODEL_FOLDERS} folder (model and tokenizer), for "
                            "pretrained and random")
    return model


def add_training_flags(parser: argparse.ArgumentParser, title: str, unit: str, defaults: dict, helps: dict):
    """The training group: epochs, batch, accumulation, AdamW, warmup, logging, evaluation, checkpoints, bf16.
    `unit` is what a batch holds ("windows", "examples"); `defaults` and `helps` ({flag name: ...}) give each
    script's defaults and the help of flags whose default needs explaining. Returns the group."""
    train = parser.add_argument_group(title)

    def add(name: str, kind, default, text: str) -> None:
        train.add_argument(f"--{name}", type=kind, default=defaults.get(name, default), help=helps.get(name, text))

    add("num_train_epochs", float, 2.0, f"passes over the training {unit}")
    add("per_device_batch_size", int, 16, f"{unit} per device per micro-step")
    add("gradient_accumulation_steps", int, 1, "micro-steps per optimizer step (batch = per-device x accumulation x "
                                               "devices)")
    add("learning_rate", float, 3e-5, "peak learning rate of AdamW")
    add("weight_decay", float, 0.01, "AdamW weight decay")
    add("warmup_steps", float, 0.06, "linear warmup: a number of steps, or a fraction of all steps when below 1")
    add("logging_steps", int, 50, "log the training loss every N steps")
    add("eval_steps", int, 1000, "evaluate every N steps, and always at the end (0: only at the end)")
    add("save_steps", int, 1000, f"Trainer checkpoint every N steps, the last 2 kept (0: no "
                                 f"{qa_run_folder.CHECKPOINTS_DIR}/ folder)")
    train.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help="bf16 autocast; unset: on where the GPU supports it")
    return train


def check_numbers(args: argparse.Namespace, positive: list[str], non_negative: list[str]) -> None:
    """UsageError for the first flag out of its range (a flag left unset, None, is not checked), and for the
    --warmup_steps, --max_train_samples, --max_eval_samples and --path_to_cache_dir every script has."""
    for names, bad, what in ((positive, lambda v: not 0 < v < math.inf, "must be a positive number"),  # NaN, inf
                             (non_negative, lambda v: not 0 <= v < math.inf, "must be a number, not negative"),
                             (["max_train_samples", "max_eval_samples"], lambda v: v < 1, "must be at least 1")):
        for name in names:
            if getattr(args, name) is not None and bad(getattr(args, name)):
                raise UsageError(f"--{name} {what}, got {getattr(args, name)}")
    if not 0 <= args.seed < 2**32:  # numpy's seeding (the Trainer seeds it) takes no other
        raise UsageError(f"--seed must be between 0 and 2**32 - 1 ({2**32 - 1}), got {args.seed}")
    if args.warmup_steps >= 1 and args.warmup_steps != int(args.warmup_steps):
        raise UsageError(f"--warmup_steps {args.warmup_steps}: give a whole number of steps or a fraction below 1")
    cache = Path(args.path_to_cache_dir).expanduser() if args.path_to_cache_dir else None
    if cache is not None and cache.exists() and not cache.is_dir():
        raise UsageError(f"--path_to_cache_dir {args.path_to_cache_dir} is a file, not a folder")


def check_report_to(args: argparse.Namespace) -> list[str]:
    """Known loggers only; wandb installed where asked for, and offline (said so) where it has no login, since
    transformers' WandbCallback would otherwise stop the run at its first step (no TTY) or wait for a key."""
    names = [name.strip() for name in args.report_to.split(",") if name.strip()] or ["none"]
    unknown = [name for name in names if name not in REPORTERS]
    if unknown:
        raise UsageError(f"--report_to {unknown[0]!r} is not a Trainer logger; choose from {', '.join(REPORTERS)}")
    if "none" in names and len(names) > 1:
        raise UsageError("--report_to none cannot be combined with other loggers")
    args.report_to = ",".join(names)
    installed = get_available_reporting_integrations()
    if missing := [name for name in names if name not in ("none", "all", *installed)]:
        raise UsageError(f"--report_to {missing[0]}: its package is not installed (the Trainer would fail at its "
                         f"first log); install it, or choose from what is: {', '.join(['none', *installed])}")
    has_wandb = importlib.util.find_spec("wandb") is not None
    if "wandb" in names or "all" in names and has_wandb:
        note = wandb_offline_unless_logged_in()
        return [note] if note else []
    return []


# ----------------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------------


def backbone_source(args: argparse.Namespace) -> str:
    """The folder or Hub id that gives the tokenizer and the architecture (and, unless random, the weights)."""
    if args.pretrained_backbone != "pretrained_huggingface" and args.path_to_pretrained_backbone:
        return args.path_to_pretrained_backbone
    return args.huggingface_model_name


def backbone_flag(args: argparse.Namespace) -> str:
    """The flag that named the backbone's source, for messages."""
    return "--path_to_pretrained_backbone" if backbone_source(args) == args.path_to_pretrained_backbone \
        else "--huggingface_model_name"


def check_backbone(args: argparse.Namespace) -> None:
    """The backbone flags fit together and every local model folder holds what is needed (no weights read yet)."""
    if args.pretrained_backbone == "pretrained" and not args.path_to_pretrained_backbone:
        raise UsageError("--pretrained_backbone pretrained needs --path_to_pretrained_backbone (a train.py "
                         f"{run_folder.MODEL_FOLDERS} folder)")
    if args.pretrained_backbone == "pretrained_huggingface" and args.path_to_pretrained_backbone:
        raise UsageError("--path_to_pretrained_backbone is used by --pretrained_backbone pretrained or random; "
                         "for pretrained_huggingface give --huggingface_model_name")
    if looks_local(backbone_source(args)):
        folder = Path(backbone_source(args)).expanduser()
        for script, record in (("finetune_roberta_qa.py", qa_run_folder.RUN_RECORD),
                               ("finetune_roberta_classification.py", classification_run_folder.RUN_RECORD)):
            if qa_run_folder.unfinished_run(folder, record):
                raise UsageError(f"{backbone_flag(args)}: {backbone_source(args)} is a {script} run folder that holds "
                                 "no model yet: its run has not finished, or was stopped before it saved one")
        try:
            model_folder.check(backbone_source(args), need_weights=args.pretrained_backbone != "random")
        except ValueError as error:
            raise UsageError(f"{backbone_flag(args)}: {error}") from None


def load_backbone_parts(args: argparse.Namespace, check_tokenizer: Callable | None = None) -> tuple:
    """(tokenizer, model folder, RobertaConfig, tokenizer warning or None) of the backbone; weights not read yet.

    The tokenizer must be the model's (tokenization.tokenizer_mismatch: ids that fit the embedding table, the
    model's special ids); a tokenizer whose recorded fingerprint differs (swapped for another of the same size) is
    warned about. --max_seq_length may not exceed what the position table allows. Hub ids are downloaded into
    --path_to_cache_dir. Every failure is a UsageError naming the flag. `check_tokenizer(tokenizer, config, source)`
    replaces the identity check with a task's own, which must include it (qa.check_qa_tokenizer)."""
    source, flag = backbone_source(args), backbone_flag(args)
    try:  # the model first: its errors say a missing folder is one, and that the Hub is offline
        folder = model_folder.resolve(source, need_weights=args.pretrained_backbone != "random",
                                      cache_dir=args.path_to_cache_dir)
        config = RobertaConfig.from_pretrained(folder)
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from None
    tokenizer = load_tokenizer(source, flag=flag, cache_dir=args.path_to_cache_dir)
    if args.max_seq_length is not None and args.max_seq_length > config.max_sequence_length:
        raise UsageError(f"--max_seq_length {args.max_seq_length} is longer than {source} allows "
                         f"({config.max_sequence_length} tokens)")
    if check_tokenizer is not None:
        check_tokenizer(tokenizer, config, source)
    elif mismatch := tokenizer_mismatch(tokenizer, config=config):
        raise UsageError(f"the tokenizer of {source} has {mismatch}: it is not the tokenizer the model was trained "
                         "with")
    swapped = model_folder.tokenizer_swapped(folder, tokenizer) if args.pretrained_backbone != "random" else None
    if swapped:
        log(f"WARNING: {swapped}; put back the tokenizer files train.py saved beside the weights")
    return tokenizer, folder, config, swapped


def backbone_provenance(args: argparse.Namespace, folder: Path, head: str) -> dict:
    """Where the weights, the architecture and the tokenizer came from, for eval_results.json; `head` names the new
    head's key (`qa_head`, `classification_head`)."""
    source = backbone_source(args)
    where = source if looks_local(source) else f"{source} (Hugging Face Hub, files in {folder})"
    weights = f"random initialisation (RoBERTa's, --seed {args.seed})" if args.pretrained_backbone == "random" \
        else where
    return {"pretrained_backbone": args.pretrained_backbone, "weights": weights, "architecture": where,
            "tokenizer": where, head: f"new, random initialisation (--seed {args.seed})"}


# ----------------------------------------------------------------------------------------------------------------
# The run folder: one run at a time, and only our own files replaced
# ----------------------------------------------------------------------------------------------------------------


def run_folder_flag(run_dir: Path) -> str:
    return f"the run folder {run_dir} (--working_directory/--experiment_name)"


def check_bf16(args: argparse.Namespace) -> None:
    """--bf16 asked for where there is no bf16 GPU: one line now, not the Trainer's ValueError after the run folder
    was claimed."""
    if args.bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        raise UsageError("--bf16 needs a CUDA GPU that supports bf16, and there is none here; leave it out (on a CPU "
                         "the run is in float32)")


def check_run_folder(args: argparse.Namespace, kind: OutputKind, inputs: dict[str, str | None],
                     run_record: str) -> Path:
    """The run folder may receive this run: new, empty, or an earlier run of this script with --overwrite, and
    neither an input of the run (`inputs`: flag -> path, beside the backbone's and the cache) nor a precious folder
    (see folders.check_output_folder). A run folder whose run (recognised by its `run_record`) stopped before the
    end is named as one. Changes nothing."""
    if not args.experiment_name.strip():
        raise UsageError("--experiment_name is empty; give the run folder a name")
    run_dir = Path(args.working_directory).expanduser() / args.experiment_name
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{run_folder_flag(run_dir)} cannot be made: {parent} is a file")
    inputs = {"--path_to_pretrained_backbone": args.path_to_pretrained_backbone,
              "--huggingface_model_name": args.huggingface_model_name if looks_local(args.huggingface_model_name)
              else None, **inputs, "--path_to_cache_dir": args.path_to_cache_dir}
    if is_main_process():  # the other processes of a multi-GPU run write nothing, and see the folder mid-creation
        if not args.overwrite and qa_run_folder.stopped_before_the_end(run_dir, run_record):
            raise UsageError(f"{run_folder_flag(run_dir)} holds a fine-tuning run that stopped before it finished (no "
                             f"{qa_run_folder.RESULTS_FILE}); fine-tuning does not resume: pass --overwrite to start "
                             "it again")
        check_output_folder(run_dir, kind, flag=run_folder_flag(run_dir), overwrite=args.overwrite, inputs=inputs)
    return run_dir


def recorded_args(args: argparse.Namespace, unused: dict[str, str], skip: tuple[str, ...] = ()) -> dict:
    """The arguments as used, for the run record; the flags of `unused` ({name: why}, plus the backbone flag that
    was not the source) go under `not_used` when they were given; `skip` names attributes that are not flags."""
    record = {k: v for k, v in vars(args).items() if k not in skip}
    if backbone_source(args) == args.path_to_pretrained_backbone:
        unused = {"huggingface_model_name": "the backbone came from --path_to_pretrained_backbone", **unused}
    else:
        unused = {"path_to_pretrained_backbone": "not given", **unused}
    not_used = {name: f"{record.pop(name)} ({why})" for name, why in unused.items() if record.get(name) is not None}
    for name in unused:
        record.pop(name, None)
    return {**record, "not_used": not_used, "versions": library_versions()}


def claim_run_folder(args: argparse.Namespace, run_dir: Path, kind: OutputKind,
                     write_record: Callable[[Path, dict], None], record: dict) -> FolderLock | None:
    """Lock the run folder for this run (main process), check it again under the lock, clear our own earlier
    outputs with --overwrite (saying what is kept), and write the run's record. Returns the lock to release."""
    if not is_main_process():
        return None
    flag = run_folder_flag(run_dir)
    try:
        lock = FolderLock(run_dir, flag=flag).acquire()
    except OSError as error:  # read-only or full disk, no permission: before anything else was written
        raise UsageError(f"{flag} cannot be created ({error.strerror or error})") from None
    try:
        check_output_folder(run_dir, kind, flag=flag, overwrite=args.overwrite)  # nothing changed it meanwhile?
        kept = remove_own_outputs(run_dir, kind) if args.overwrite else []
        if kept:
            log(f"--overwrite: removed the earlier run's outputs; kept what this script did not make: "
                f"{', '.join(kept)}")
        write_record(run_dir, record)
    except BaseException:
        lock.release()
        raise
    return lock


# ----------------------------------------------------------------------------------------------------------------
# The Trainer
# ----------------------------------------------------------------------------------------------------------------


class ModelFolderTrainer(Trainer):
    """A Trainer that saves model folders (model_folder.save: config, weights, the tokenizer and its record): it would
    write a bare state dict for our models, which are not PreTrainedModels. Set `tokenizer_to_save` first."""

    tokenizer_to_save = None
    last_eval_step = -1  # the step of the last evaluation; the task's `evaluate` sets it

    def train_save_evaluate(self, run_dir: Path, learning_rate: float):
        """Train, refuse weights that diverged (check_finite_weights: `learning_rate` is named in its advice), save
        the model into the run folder, and evaluate the final model unless the last scheduled evaluation was at the
        last step. Returns the Trainer's TrainOutput."""
        output = self.train()
        check_finite_weights(self, learning_rate)
        self.save_model(str(run_dir))
        if self.last_eval_step != self.state.global_step:
            self.evaluate()
        return output

    def _save(self, output_dir=None, state_dict=None):
        if self.args.should_save:
            model_folder.save(output_dir or self.args.output_dir, self.accelerator.unwrap_model(self.model),
                              self.tokenizer_to_save)


def training_arguments(args: argparse.Namespace, run_dir: Path, **task) -> TrainingArguments:
    """The Trainer's arguments from the scripts' shared flags; `task` adds or replaces (label_names, eval_strategy,
    the optimizer's betas...)."""
    values = dict(
        output_dir=str(qa_run_folder.trainer_output_dir(run_dir, args.save_steps)), run_name=args.experiment_name,
        num_train_epochs=args.num_train_epochs, per_device_train_batch_size=args.per_device_batch_size,
        per_device_eval_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler_type="linear",
        logging_steps=args.logging_steps, eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps or None, save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500, save_total_limit=2, seed=args.seed, bf16=args.bf16,
        report_to=args.report_to.split(","), disable_tqdm=not sys.stderr.isatty(), dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available())
    return TrainingArguments(**{**values, **task})


class RunEnding:
    """How a fine-tuning run ends, for both scripts' `main`: `with RunEnding(script, run_dir) as run:`, then
    `run.lock = claim_run_folder(...)`. A signal or Ctrl-C becomes one line (`stopped`), a full disk once the run
    folder is claimed becomes one line (`disk_full`), any other error is left as it is (a bug), and the run folder's
    lock is released however the block ends."""

    def __init__(self, script: str, run_dir: Path):
        self.script, self.run_dir, self.lock = script, run_dir, None

    def __enter__(self) -> RunEnding:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if isinstance(error, Stopped | KeyboardInterrupt):
                raise stopped(self.script, error, self.run_dir, started=self.lock is not None) from None
            if isinstance(error, Exception) and self.lock is not None and (
                    full := disk_full(error, self.run_dir)) is not None:
                raise full from None
        finally:
            if self.lock is not None:
                self.lock.release()
        return False  # any other error goes on as it is


def stopped(script: str, stop: BaseException, run_dir: Path, started: bool) -> ScriptExit:
    """A stop by a signal (utils.Stopped) or Ctrl-C as one line: what is left and the command that starts again
    (fine-tuning does not resume)."""
    name, signum = stop_signal_name(stop)
    left = ("fine-tuning does not resume: the same command plus --overwrite starts it again" if started else
            "nothing was written")
    return ScriptExit(f"{script}: stopped by {name} before the run finished; {left} ({run_dir})",
                      exit_code_for_signal(signum))


def disk_full(error: Exception, run_dir: Path) -> ScriptExit | None:
    """A full disk while the run wrote (the Trainer's checkpoint, the model, the results) as one line that says how
    to start again (fine-tuning does not resume, and the run folder now holds an unfinished run); None for any other
    error."""
    if not out_of_space(error):
        return None
    return DiskFull(f"{type(error).__name__}: {first_line(error)}; the run in {run_dir} did not finish: free space "
                    "and run the same command with --overwrite")


def check_finite_weights(trainer: Trainer, learning_rate: float) -> None:
    """After training, before the model is saved: weights that became NaN or infinite (a learning rate far too high)
    would be saved and scored as a model (argmax of NaN is class 0, so the scores even look plausible), and the
    Trainer's log shows such losses as 0. One line instead, nothing saved as a model."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    bad = sum(not torch.isfinite(p).all() for p in model.parameters())
    if not bad:
        return
    first = next((entry["step"] for entry in trainer.state.log_history for key in ("loss", "grad_norm")
                  if isinstance(entry.get(key), float) and not math.isfinite(entry[key])), None)
    seen = f", first seen in the log at step {first}" if first is not None else ""
    raise ScriptExit(f"error: training diverged: {bad} weight tensors hold NaN or infinite values{seen}; no model was "
                     f"saved. Lower --learning_rate ({learning_rate:g}) and run the same command with --overwrite")


def resolve_bf16(args: argparse.Namespace) -> None:
    if args.bf16 is None:
        args.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def add_log_lines(trainer: Trainer, line: Callable[[int, int, dict, float, int], str]) -> None:
    """Each Trainer log printed as one line made by `line(step, max_steps, logs, elapsed, steps_done)`, instead of
    the Trainer's dictionaries of quoted numbers; on a terminal the progress bar stays, without them."""

    class LogLines(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.start_step = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log(line(state.global_step, state.max_steps, logs, time.perf_counter() - self.started,
                         state.global_step - self.start_step))

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # LogLines prints them

    if trainer.pop_callback(ProgressCallback):  # a terminal: keep the bar, without its dictionaries
        trainer.add_callback(BarOnly)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogLines())


def training_log_line(step: int, max_steps: int, logs: dict, elapsed: float, steps_done: int) -> str | None:
    """The line of a training interval or of the end of training; None for any other log (an evaluation's)."""
    if "loss" in logs:
        return (f"step {step}/{max_steps} | epoch {logs.get('epoch', 0):.2f} | loss {logs['loss']:.4f} | lr "
                f"{logs.get('learning_rate', 0):.3e} | grad_norm {logs.get('grad_norm') or 0:.3f} | "
                f"{elapsed_and_eta(elapsed, steps_done, max_steps - step)}")
    if "train_runtime" in logs:
        return (f"trained {step} steps in {duration(logs['train_runtime'])}, mean loss "
                f"{logs.get('train_loss', float('nan')):.4f}")
    return None


def prepare_loggers(args: argparse.Namespace, run_dir: Path) -> None:
    """Loggers write into the run folder (wandb/, runs/) unless the user's environment says otherwise."""
    loggers = args.report_to.split(",")
    if "wandb" in loggers or "all" in loggers:
        os.environ.setdefault("WANDB_DIR", str(run_dir.absolute()))  # wandb makes its wandb/ inside
    if "tensorboard" in loggers or "all" in loggers:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir.absolute() / qa_run_folder.TENSORBOARD_DIR))

