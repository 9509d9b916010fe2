"""train.py's checkpoints: written atomically, verified before use, rotated only once the new one is complete.

    checkpoints/step_N/
        config.json, model.safetensors, tokenizer files   a transformers-format model folder: finetune_roberta_qa.py,
                                                          transformers and AutoTokenizer load a checkpoint as it is
        tokenizer_record.json  the tokenizer's fingerprint, so that a swapped tokenizer is caught (also in
                               final_model/)
        accelerate_state/      optimizer, grad scaler and every process's RNG states (`accelerator.save_state`);
                               the weights are not repeated there, except under FSDP/DeepSpeed, whose sharded
                               state accelerate keeps
        trainer_state.json     step, data position, the loss when saved, each process's running log sum, the
                               arguments in effect
        manifest.json          size and checksum of every other file; written last: a folder without it is not
                               a checkpoint

A checkpoint is written to `checkpoints/tmp-step_N/` and renamed to `step_N/` once its manifest is written, so a
crash or a kill while saving leaves at most a `tmp-` folder (cleaned at the next start) and never a step_N that
looks complete. Old checkpoints are deleted only after that rename, keeping the newest `num_keep` (at least 2).
Resuming verifies the manifest first: a damaged checkpoint is reported by name and `latest` falls back to the
newest intact one. A full disk ends the save with one line naming the path and the space a checkpoint needs,
and leaves no partial checkpoint behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fault_injection
from folders import file_manifest, human_bytes, is_disk_full, verify_manifest, write_json
from tokenization import record_tokenizer
from utils import UsageError, first_line

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
ACCELERATE_STATE = "accelerate_state"
STEP_FOLDER = re.compile(r"step_(\d+)")


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


class CheckpointError(Exception):
    """Saving failed (e.g. the disk is full): the message says what to do; no partial checkpoint was left."""


# ----------------------------------------------------------------------------------------------------------------
# Finding and verifying
# ----------------------------------------------------------------------------------------------------------------


def step_folders(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_N` folder, oldest first (complete or not)."""
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir()
                  if (m := STEP_FOLDER.fullmatch(p.name)) and p.is_dir())


def is_complete(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def checkpoint_problem(path: Path) -> str | None:
    """None for an intact checkpoint; else why it cannot be used (missing, not a checkpoint, cut off, corrupted...)."""
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is a file; a checkpoint is a checkpoints/step_N folder"
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
    kinds = {"prepare_data.json": "a data store (prepare_data.py's)", "finetune_args.json": "a question-answering "
             "run folder (finetune_roberta_qa.py's)", "args.json": "a pretraining run folder: pass latest, or one of "
             "its checkpoints/step_N folders", "metrics.jsonl": "a pretraining run folder: pass latest, or one of "
             "its checkpoints/step_N folders"}
    for record, kind in kinds.items():
        if (path / record).is_file():
            return f"it is {kind}, not a checkpoint"
    if step_folders(path):
        intact = find_intact_checkpoint(path, report=lambda _: None)
        return (f"it is a checkpoints folder, not one checkpoint: pass one of its step_N folders (the newest intact "
                f"is {intact})" if intact else "it is a checkpoints folder, not one checkpoint, and none in it is "
                "intact")
    if not STEP_FOLDER.fullmatch(path.name) and not (path / STATE_FILE).is_file():
        return f"it is not a checkpoint (no {MANIFEST_FILE} or {STATE_FILE}); a checkpoint is a checkpoints/step_N " \
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


def check_resume(path: Path, args: dict, config: dict, store_fingerprint: str | None,
                 num_processes: int = 1) -> list[str]:
    """Refuse a checkpoint of another model, seed or store; return the flags that changed ("--name old -> new"),
    and the global batch when it changed (the processes too): they take effect from the resumed update (train.py's
    docstring says how)."""
    state = read_state(path)
    differ = [f"--{k} {state.args[k]} (now {args[k]})" for k in MUST_MATCH_ON_RESUME
              if k in state.args and state.args[k] != args[k]]
    saved_config = json.loads((path / "config.json").read_text())
    differ += [f"{k} {saved_config.get(k)} (now {config[k]})" for k in ("vocab_size", "max_position_embeddings")
               if saved_config.get(k) != config[k]]
    if state.args.get("store_fingerprint") not in (None, store_fingerprint):
        differ.append("another store's content")
    if differ:
        raise UsageError(f"checkpoint {path} was trained with {', '.join(differ)}: resume with the flags and store "
                         "it was trained with, or start a new run")
    if args["num_training_steps"] <= state.step:
        raise UsageError(f"checkpoint {path} is at update {state.step}, not before --num_training_steps "
                         f"{args['num_training_steps']}: raise --num_training_steps to train further")
    changes = [f"--{k} {state.args[k]} -> {v}" for k, v in args.items()
               if k in state.args and k not in NOT_COMPARED_ON_RESUME and state.args[k] != v]
    saved_processes = len(state.window_loss) or 1  # one running loss sum per process
    batch = [a.get("per_gpu_batch_size", 0) * a.get("gradient_accumulation_steps", 1) * n
             for a, n in ((state.args, saved_processes), (args, num_processes))]
    if batch[0] != batch[1] or saved_processes != num_processes:
        changes.append(f"global batch size {batch[0]} -> {batch[1]} (processes {saved_processes} -> "
                       f"{num_processes})")
    return changes


def recorded_resumes(args_file: Path) -> list[dict]:
    """The resumes an earlier args.json lists; a missing or damaged one is said and starts the list afresh."""
    try:
        resumes = json.loads(args_file.read_text()).get("resumes", [])
    except (OSError, ValueError, AttributeError) as error:
        print(f"warning: {args_file} cannot be read ({type(error).__name__}); it is rewritten, without the list of "
              "earlier resumes", flush=True)
        return []
    return resumes if isinstance(resumes, list) else []


def read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / STATE_FILE).read_text()))


def clean_leftovers(folder: Path) -> list[str]:
    """Remove `tmp-step_*` folders a crash left while saving (only the lock holder may call this)."""
    removed = []
    for path in folder.glob("tmp-step_*") if folder.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


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
# Saving
# ----------------------------------------------------------------------------------------------------------------


def save(accelerator, wrapped, raw_model, tokenizer, folder: Path, state: TrainState, num_keep: int) -> Path:
    """checkpoints/step_N: model folder, accelerate state, then (main process) state and manifest, rename, rotate.

    Every process must call it (gathering sharded weights and accelerate's state need them all). On a failed
    write the tmp folder is removed and CheckpointError says why (a full disk named as such)."""
    tmp, final = folder / f"tmp-step_{state.step}", folder / f"step_{state.step}"
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
    except (OSError, RuntimeError) as error:  # torch and safetensors report a full disk as RuntimeError
        earlier = step_folders(folder)  # the size of the newest checkpoint, else fp32 weights + AdamW's two moments
        needed = size_of(earlier[-1][1]) if earlier else 12 * raw_model.num_parameters()
        raise abandon(tmp, error, needed) from None
    accelerator.wait_for_everyone()
    return final


def save_model_folder(accelerator, wrapped, raw_model, tokenizer, folder: Path) -> None:
    """The model in transformers' format with its tokenizer (every process calls; the main process writes).

    Under FSDP/DeepSpeed every process takes part in gathering the full weights from the prepared model, which
    must be the uncompiled one: a compiled module's keys carry `_orig_mod.`. They load strictly, so a key that
    does not match fails loudly instead of saving the initial weights."""
    from accelerate.utils import DistributedType

    to_save = raw_model
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        state = accelerator.get_state_dict(wrapped)
        if accelerator.is_main_process:
            to_save = type(raw_model)(raw_model.config)
            to_save.load_state_dict(strip_wrapper_prefixes(state), strict=True)
    if accelerator.is_main_process:
        to_save.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        record_tokenizer(folder, tokenizer)


WRAPPER_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")  # compile, FSDP1, checkpointing


def unwrapped_name(name: str) -> str:
    """A parameter's or state-dict key's name without what wrappers add: torch.compile's `_orig_mod.`, FSDP1's
    `_fsdp_wrapped_module.`, activation checkpointing's, and DDP's leading `module.`."""
    parts = [part for part in name.split(".") if part not in WRAPPER_PARTS]
    return ".".join(parts[1:] if parts and parts[0] == "module" else parts)


def strip_wrapper_prefixes(state: dict) -> dict:
    """State-dict keys as the unwrapped model names them (`unwrapped_name`)."""
    return {unwrapped_name(key): value for key, value in state.items()}


def save_final_model(accelerator, wrapped, raw_model, tokenizer, run_dir: Path) -> Path:
    final, tmp = run_dir / "final_model", run_dir / "final_model.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model_folder(accelerator, wrapped, raw_model, tokenizer, tmp)
    except (OSError, RuntimeError) as error:
        raise abandon(tmp, error, 4 * raw_model.num_parameters()) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def load(accelerator, raw_model, path: Path, sharded: bool) -> TrainState:
    """Weights, optimizer, grad scaler and this process's RNG states from a verified checkpoint; returns its state."""
    if not sharded:  # the weights live once, in the transformers-format folder
        raw_model.load_state_dict(type(raw_model).from_pretrained(path).state_dict(), strict=True)
    accelerator.load_state(str(path / ACCELERATE_STATE))  # last: building the model above draws random numbers
    return read_state(path)


def rotate(folder: Path, num_keep: int, keep: Path) -> None:
    """Delete all but the newest `num_keep` complete checkpoints (never `keep`); incomplete ones are not counted."""
    complete = [path for _, path in step_folders(folder) if is_complete(path)]
    for path in complete[:-num_keep]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def abandon(tmp: Path, error: BaseException, needed_bytes: int) -> CheckpointError:
    """Remove a checkpoint that failed while being written; return the error to raise (disk full named as such)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if is_disk_full(error, tmp.parent, needed_bytes):
        free = shutil.disk_usage(tmp.parent).free
        return CheckpointError(
            f"the disk is full: could not write checkpoint {tmp.name.removeprefix('tmp-')} to {tmp.parent} "
            f"({human_bytes(free)} free, a checkpoint needs about {human_bytes(needed_bytes)}); nothing partial "
            "was left behind. Free some space (or lower --num_keep_checkpoints), then continue with "
            "--resume_from_checkpoint latest")
    return CheckpointError(f"could not write checkpoint {tmp} ({type(error).__name__}: {first_line(error, 300)}); "
                           "nothing partial was left behind")


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
