"""train.py's checkpointer: resume end to end, and saving. Checkpoints are written atomically, verified before
use, rotated only once the new one is complete.

    checkpoints/step_N/   (the names of the run folder are run_folder.py's)
        config.json, model.safetensors, tokenizer files, tokenizer_record.json
                               a model folder (model_folder.py): finetune_roberta_qa.py, transformers and AutoTokenizer
                               load a checkpoint as it is; the record names the tokenizer, so that a swapped one is
                               caught
        accelerate_state/      optimizer, grad scaler and every process's RNG states (`accelerator.save_state`);
                               the weights are not repeated there, except under FSDP/DeepSpeed, whose sharded
                               state accelerate keeps
        trainer_state.json     step, data position, the loss when saved, each process's running log sum, the
                               arguments in effect (and the store's fingerprint)
        manifest.json          size and checksum of every other file; written last: a folder without it is not
                               a checkpoint

Resume, in order: `resolve_resume` and `check_resume` (main process, in train.py's validation, before anything is
built: `latest` chosen and verified, the flags, the store and its tokenizer compared with the checkpoint's);
`agree_on_resume` (every process takes the main process's choice; a DeepSpeed layout must match); then
`Checkpointer.resume` (weights, optimizer, RNG states, data position; metrics.jsonl trimmed to the checkpoint).

Saving: `Checkpointer.save_when_due` writes `checkpoints/tmp-step_N/` and renames it to `step_N/` once its
manifest is written, so a crash or a kill while saving leaves at most a `tmp-` folder (cleaned at the next start)
and never a step_N that looks complete. Old checkpoints are deleted only after that rename, keeping the newest
`num_keep` (at least 2). A non-finite loss or weights are never saved. A full disk (an OSError, or safetensors'
SafetensorError) ends the save with one line naming the path and the space a checkpoint needs, and leaves no
partial checkpoint (or final_model.tmp/) behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType, broadcast_object_list
from safetensors import SafetensorError

import fault_injection
import model_folder
import run_folder
from folders import file_manifest, human_bytes, is_disk_full, is_output_of, verify_manifest, write_json
from metrics import NonFiniteLoss
from qa_run_folder import QA_RUN
from run_folder import CHECKPOINT_FOLDER, step_folders
from store import STORE
from tokenization import tokenizer_mismatch
from utils import EXIT_FAILED, DiskFull, ScriptExit, UsageError, first_line

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
ACCELERATE_STATE = "accelerate_state"
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)  # how torch, accelerate and safetensors fail to write


@dataclass
class TrainState:
    """Where training stands, saved in every checkpoint."""

    step: int = 0  # optimizer updates done
    epoch: int = 0  # the shuffled pass over the train split now being read
    samples_in_epoch: int = 0  # blocks of that epoch consumed, by all processes together
    loss: float | None = None  # mean training loss since the previous checkpoint (finite, or nothing is saved)
    window_loss: list[float] = field(default_factory=list)  # per process: loss summed since the last log line
    args: dict = field(default_factory=dict)  # the arguments in effect when saved


    def window_loss_of(self, rank: int, num_processes: int) -> float:
        """A process's loss sum since the last log line, as saved (the mean of all when the process count changed,
        so that the next log line's mean over processes is the same)."""
        saved = self.window_loss
        return float(saved[rank] if len(saved) == num_processes else sum(saved) / max(len(saved), 1))


MUST_MATCH_ON_RESUME = ["context_length", "seed", "num_transformer_blocks", "embedding_dimension",
                        "num_attention_heads", "mlp_ratio", "layer_norm_eps", "init_from"]
NOT_COMPARED_ON_RESUME = {"resume_from_checkpoint", "overwrite", "store_fingerprint"}


class CheckpointError(ScriptExit):
    """Saving failed (not for lack of space: that is utils.DiskFull): the message says what to do; no partial
    checkpoint was left. One line and EXIT_FAILED."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}", EXIT_FAILED)


# ----------------------------------------------------------------------------------------------------------------
# Finding and verifying
# ----------------------------------------------------------------------------------------------------------------


def is_complete(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def checkpoint_problem(path: Path) -> str | None:
    """None for an intact checkpoint; else why it cannot be used (missing, not a checkpoint, cut off, corrupted...)."""
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return f"it is a file; a checkpoint is a {CHECKPOINT_FOLDER} folder"
    if not is_complete(path):
        return not_a_checkpoint(path) or (
            f"it has no {MANIFEST_FILE}, so its files cannot be verified: the manifest was deleted, or a train.py "
            "older than checksummed checkpoints wrote it" if (path / STATE_FILE).is_file() else
            f"it has no {MANIFEST_FILE}, the last file written: it was cut off while being saved")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        problem = verify_manifest(path, manifest["files"])
        if problem is None:
            TrainState(**json.loads((path / STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its {MANIFEST_FILE} or {STATE_FILE} cannot be read ({type(error).__name__}: {error})"
    return problem


def not_a_checkpoint(path: Path) -> str | None:
    """What a folder without a manifest is, when it is clearly no checkpoint (a store, a run, checkpoints/)."""
    for kind in (STORE, QA_RUN):
        if is_output_of(path, kind):
            return f"it is a {kind.description} ({kind.script}'s), not a checkpoint"
    if run_folder.is_run_folder(path):
        return f"it is a {run_folder.PRETRAINING_RUN.description}: pass latest, or one of its {CHECKPOINT_FOLDER} " \
               "folders, not a checkpoint"
    if step_folders(path):
        intact = find_intact_checkpoint(path, report=lambda _: None)
        return (f"it is a checkpoints folder, not one checkpoint: pass one of its {run_folder.STEP_PREFIX}N folders "
                f"(the newest intact "
                f"is {intact})" if intact else "it is a checkpoints folder, not one checkpoint, and none in it is "
                "intact")
    if not run_folder.is_step_name(path.name) and not (path / STATE_FILE).is_file():
        return f"it is not a checkpoint (no {MANIFEST_FILE} or {STATE_FILE}); a checkpoint is a {CHECKPOINT_FOLDER} " \
               "folder"
    return None


def find_intact_checkpoint(folder: Path, report=print) -> Path | None:
    """The newest checkpoint in `folder` that passes verification; each damaged newer one is reported and skipped."""
    for _, path in reversed(step_folders(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        report(f"warning: skipping checkpoint {path}: {problem}")
    return None


def resolve_resume(requested: str | None, checkpoints: Path) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names (verified), or None to start afresh.

    `latest` starts afresh only when there is no checkpoint at all (so that a preemptible job can always pass it);
    when every checkpoint is damaged it is refused like a damaged explicit path, changing nothing: starting over
    would overwrite the run's metrics and rotate away checkpoints whose other files may still be of use."""
    if requested is None:
        return None
    if requested == "latest":
        skipped: list[str] = []
        intact = find_intact_checkpoint(checkpoints, report=skipped.append)
        if intact is None and skipped:
            problems = "; ".join(line.removeprefix(f"warning: skipping checkpoint {checkpoints}/") for line in skipped)
            raise UsageError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoints} is intact ({problems}); "
                             "nothing was changed. Repair one and pass its path, or start the run again with "
                             "--overwrite (which deletes them)")
        for line in skipped:
            print(line, flush=True)
        return intact
    path = Path(requested)
    problem = checkpoint_problem(path)
    if problem:
        intact = find_intact_checkpoint(path.parent, report=lambda _: None) if path.parent.is_dir() else None
        hint = f"; the newest intact checkpoint beside it is {intact}" if intact else ""
        raise UsageError(f"--resume_from_checkpoint {requested} cannot be used: {problem}{hint}")
    return path


def check_resume(path: Path, arguments: dict, config: dict, store_fingerprint: str | None,
                 num_processes: int = 1, tokenizer=None) -> list[str]:
    """Refuse a checkpoint of another model, seed, store or tokenizer (`arguments`: the run's arguments in effect;
    `tokenizer`: the store's); return the flags that changed ("--name old -> new"), and the global batch when it
    changed (the processes too): they take effect from the resumed update (train.py's docstring says how)."""
    state = read_state(path)
    differ = [f"--{k} {state.args[k]} (now {arguments[k]})" for k in MUST_MATCH_ON_RESUME
              if k in state.args and state.args[k] != arguments[k]]
    saved_config = model_folder.read_config(path)
    differ += [f"{k} {saved_config.get(k)} (now {config[k]})" for k in ("vocab_size", "max_position_embeddings")
               if saved_config.get(k) != config[k]]
    if tokenizer is not None and (mismatch := tokenizer_mismatch(tokenizer, model_folder.recorded_tokenizer(path))):
        differ.append(f"another tokenizer (the store's has {mismatch})")
    if state.args.get("store_fingerprint") not in (None, store_fingerprint):
        differ.append(f"another store's content (it was trained on the store {state.args.get('path_to_prepped_data')}"
                      f", fingerprint {state.args['store_fingerprint']}; --path_to_prepped_data "
                      f"{arguments.get('path_to_prepped_data')} has fingerprint {store_fingerprint})")
    if differ:
        raise UsageError(f"checkpoint {path} was trained with {', '.join(differ)}: resume with the flags and store "
                         "it was trained with, or start a new run")
    if arguments["num_training_steps"] <= state.step:
        raise UsageError(f"checkpoint {path} is at update {state.step}, not before --num_training_steps "
                         f"{arguments['num_training_steps']}: raise --num_training_steps to train further")
    changes = [f"--{k} {state.args[k]} -> {v}" for k, v in arguments.items()
               if k in state.args and k not in NOT_COMPARED_ON_RESUME and state.args[k] != v]
    saved_processes = len(state.window_loss) or 1  # one running loss sum per process
    batch = [a.get("per_gpu_batch_size", 0) * a.get("gradient_accumulation_steps", 1) * n
             for a, n in ((state.args, saved_processes), (arguments, num_processes))]
    if batch[0] != batch[1] or saved_processes != num_processes:
        changes.append(f"global batch size {batch[0]} -> {batch[1]} (processes {saved_processes} -> "
                       f"{num_processes})")
    return changes


def read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / STATE_FILE).read_text()))


def agree_on_resume(accelerator, resume: Path | None) -> Path | None:
    """The checkpoint the main process chose and verified, on every process, checked against this launch. Only the
    main process resolves `latest` and checks the manifests: on many nodes, ranks reading a shared filesystem could
    otherwise pick different checkpoints (one saved in between, one damaged in one node's view), and every rank
    would read every file to verify it."""
    if accelerator.num_processes > 1:
        chosen = broadcast_object_list([str(resume) if resume else None], from_process=0)[0]
        resume = Path(chosen) if chosen else None
    if resume is not None:
        check_resume_layout(accelerator, len(read_state(resume).window_loss))
    return resume


def check_resume_layout(accelerator, saved_processes: int) -> None:
    """A DeepSpeed checkpoint holds one optimizer partition per process and loads only at the same count; FSDP's
    sharded checkpoints (torch.distributed.checkpoint) reshard on load, and DDP's are whole."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and saved_processes != accelerator.num_processes:
        raise UsageError(f"this DeepSpeed checkpoint was saved by {saved_processes} processes and cannot be loaded by "
                         f"{accelerator.num_processes}: resume with --num_processes {saved_processes}")


def checkpoint_summaries(folder: Path) -> str:
    """'step_800 (loss 2.3100), step_1000 (loss 7.9200)': the complete checkpoints and the loss each was saved at."""
    parts = []
    for _, path in step_folders(folder):
        if is_complete(path):
            try:
                loss = read_state(path).loss
            except (OSError, ValueError, TypeError):
                loss = None
            parts.append(f"{path.name} (loss {loss:.4f})" if loss is not None else path.name)
    return ", ".join(parts) or "(none)"


def non_finite_advice(folder: Path, last_finite_step: int, learning_rate: float, command) -> str:
    """What to do after a NaN: the checkpoints with their losses, the newest one whose weights still gave a finite
    loss afterwards (a logged loss of update k is computed with the weights of update k - 1), and a command that
    runs as printed: `command(changes)` is the run's own command line with those flags changed."""
    good = [path for step, path in step_folders(folder) if step < last_finite_step and is_complete(path)]
    saved_rate = read_state(good[-1]).args.get("learning_rate", learning_rate) if good else learning_rate
    rate = saved_rate if saved_rate < learning_rate else learning_rate / 10  # the checkpoint's own, if lower
    if good:
        advice = f"the last checkpoint whose weights gave a finite loss is {good[-1]}: resume from it"
        changes = {"--resume_from_checkpoint": str(good[-1]), "--overwrite": None}
    else:
        advice = "no checkpoint was followed by a finite loss: start again"
        changes = {"--resume_from_checkpoint": None, "--overwrite": ""}
    return (f"Checkpoints and the loss each was saved at: {checkpoint_summaries(folder)}; {advice} with a lower "
            f"--learning_rate: {command({**changes, '--learning_rate': f'{rate:g}'})} (more --num_warmup_steps, a "
            "lower --max_grad_norm or bf16 instead of fp16 help too, and take effect on resume)")


# ----------------------------------------------------------------------------------------------------------------
# The checkpointer: loading a verified checkpoint, saving when due, the final model
# ----------------------------------------------------------------------------------------------------------------


class Checkpointer:
    """train.py's checkpoints, from loading the one the run resumes from to saving the final model.

    `trainee` holds the accelerator, the prepared model (to gather weights from: the uncompiled one), our
    RobertaForMaskedLM inside it and the optimizer; `logger` gives the losses a checkpoint records. Every process
    calls every method (gathering weights and accelerate's state need them all); the main process writes."""

    def __init__(self, trainee, run: Path, tokenizer, logger, args):
        self.trainee, self.accelerator, self.run, self.tokenizer = trainee, trainee.accelerator, run, tokenizer
        self.logger, self.folder = logger, run_folder.checkpoints_dir(run)
        self.interval, self.num_keep, self.sharded = args.checkpoint_interval, args.num_keep_checkpoints, \
            trainee.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.trim_metrics = args.resume_from_checkpoint is not None  # even when `latest` found nothing
        self.state, self.last_saved = TrainState(), 0

    def resume(self, path: Path | None) -> TrainState:
        """The state to start from: `path`'s (weights, optimizer, grad scaler, this process's RNG states, the data
        position), else a fresh one; what a killed run logged after its checkpoint leaves metrics.jsonl."""
        if path is not None:
            raw_model = self.trainee.raw_model
            if not self.sharded:  # the weights live once, in the model folder
                raw_model.load_state_dict(type(raw_model).from_pretrained(path).state_dict(), strict=True)
            self.accelerator.load_state(str(path / ACCELERATE_STATE))  # last: building the model draws numbers
            self.state = read_state(path)
        if self.trim_metrics and self.accelerator.is_main_process:
            run_folder.trim_metrics(self.run, self.state.step)
        self.last_saved = self.state.step
        return self.state

    def save_when_due(self, state: TrainState, last: bool, stopping: bool) -> None:
        """checkpoints/step_N every --checkpoint_interval updates, at the last one and when a signal asks to stop."""
        if state.step % self.interval == 0 or last or stopping:
            self.save(state)

    def save(self, state: TrainState) -> Path:
        """A checkpoint with the loss it was saved at; refused (NonFiniteLoss: the run stops) when that loss or any
        weight is not finite."""
        state.loss, state.window_loss = self.logger.checkpoint_losses(state.step, self.last_saved)
        shards = [p.to_local() if hasattr(p, "to_local") else p for p in self.trainee.model.parameters()]  # FSDP2
        broken = torch.stack([~torch.isfinite(p.detach()).all() for p in shards]).any().float()  # blown-up weights
        if not math.isfinite(state.loss) or self.accelerator.reduce(broken, reduction="sum").item():
            raise NonFiniteLoss(state.loss, state.step)
        path = save(self.accelerator, self.trainee.model, self.trainee.raw_model, self.tokenizer, self.folder, state,
                    self.num_keep)
        self.last_saved = state.step
        self.logger.restart_clock()  # the throughput counts training only
        return path

    def save_final_model(self) -> Path:
        final = save_final_model(self.accelerator, self.trainee.model, self.trainee.raw_model, self.tokenizer, self.run)
        self.accelerator.print(f"final model: {final}")
        return final


def save(accelerator, wrapped, raw_model, tokenizer, folder: Path, state: TrainState, num_keep: int) -> Path:
    """checkpoints/step_N: model folder, accelerate state, then (main process) state and manifest, rename, rotate.

    Every process must call it (gathering sharded weights and accelerate's state need them all). On a failed
    write the tmp folder is removed and CheckpointError says why (a full disk named as such)."""
    tmp, final = run_folder.tmp_step_dir(folder, state.step), run_folder.step_dir(folder, state.step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        save_model_folder(accelerator, wrapped, raw_model, tokenizer, tmp)
        fault_injection.check_disk_full(state.step)
        accelerator.save_state(str(tmp / ACCELERATE_STATE))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(tmp / STATE_FILE, asdict(state))
            write_json(tmp / MANIFEST_FILE, {"step": state.step, "files": file_manifest(tmp)})  # last: complete
            if final.exists():  # a stale copy, e.g. from before a resume from an earlier step
                shutil.rmtree(final)
            os.replace(tmp, final)
            rotate(folder, num_keep, keep=final)
    except WRITE_ERRORS as error:
        earlier = step_folders(folder)  # the size of the newest checkpoint, else fp32 weights + AdamW's two moments
        needed = size_of(earlier[-1][1]) if earlier else 12 * raw_model.num_parameters()
        raise abandon(tmp, f"checkpoint {final.name}", error, needed, "Free some space (or lower "
                      "--num_keep_checkpoints), then continue with --resume_from_checkpoint latest") from None
    accelerator.wait_for_everyone()
    return final


def save_model_folder(accelerator, wrapped, raw_model, tokenizer, folder: Path) -> None:
    """The model in transformers' format with its tokenizer (every process calls; the main process writes).

    Under FSDP/DeepSpeed every process takes part in gathering the full weights from the prepared model, which
    must be the uncompiled one: a compiled module's keys carry `_orig_mod.`. They load strictly, so a key that
    does not match fails loudly instead of saving the initial weights."""
    to_save = raw_model
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        state = accelerator.get_state_dict(wrapped)
        if accelerator.is_main_process:
            to_save = type(raw_model)(raw_model.config)
            to_save.load_state_dict(strip_wrapper_prefixes(state), strict=True)
    if accelerator.is_main_process:
        model_folder.save(folder, to_save, tokenizer)


WRAPPER_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")  # compile, FSDP1, checkpointing


def unwrapped_name(name: str) -> str:
    """A parameter's or state-dict key's name without what wrappers add: torch.compile's `_orig_mod.`, FSDP1's
    `_fsdp_wrapped_module.`, activation checkpointing's, and DDP's leading `module.`."""
    parts = [part for part in name.split(".") if part not in WRAPPER_PARTS]
    return ".".join(parts[1:] if parts and parts[0] == "module" else parts)


def strip_wrapper_prefixes(state: dict) -> dict:
    """State-dict keys as the unwrapped model names them (`unwrapped_name`)."""
    return {unwrapped_name(key): value for key, value in state.items()}


def save_final_model(accelerator, wrapped, raw_model, tokenizer, run: Path) -> Path:
    """final_model/, written as final_model.tmp/ and renamed once complete; a failed write leaves neither."""
    final, tmp = run_folder.final_model_dir(run), run_folder.final_model_tmp(run)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model_folder(accelerator, wrapped, raw_model, tokenizer, tmp)
        fault_injection.check_disk_full(fault_injection.FINAL_MODEL)
    except WRITE_ERRORS as error:
        newest = step_folders(run_folder.checkpoints_dir(run))
        kept = f"the trained weights are in {newest[-1][1]}, a model folder that loads as it is" if newest else \
            "no checkpoint holds the trained weights"
        raise abandon(tmp, "the final model", error, 4 * raw_model.num_parameters(), f"Free some space; {kept}") \
            from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def rotate(folder: Path, num_keep: int, keep: Path) -> None:
    """Delete all but the newest `num_keep` complete checkpoints (never `keep`); incomplete ones are not counted."""
    complete = [path for _, path in step_folders(folder) if is_complete(path)]
    for path in complete[:-num_keep]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def abandon(tmp: Path, what: str, error: BaseException, needed_bytes: int, advice: str) -> ScriptExit:
    """Remove a folder that failed while being written; return the error to raise: DiskFull for a full disk (the
    one exit every script gives it), else CheckpointError."""
    shutil.rmtree(tmp, ignore_errors=True)
    if is_disk_full(error, tmp.parent, needed_bytes):
        free = shutil.disk_usage(tmp.parent).free
        return DiskFull(
            f"could not write {what} to {tmp.parent} ({human_bytes(free)} free, "
            f"{'a checkpoint' if what.startswith('checkpoint') else what} needs about {human_bytes(needed_bytes)}); "
            f"nothing partial was left behind. {advice}")
    return CheckpointError(f"could not write {what} to {tmp.parent} ({type(error).__name__}: "
                           f"{first_line(error, 300)}); nothing partial was left behind")


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
