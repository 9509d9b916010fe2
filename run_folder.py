"""The pretraining run folder train.py writes: its names, and the only code that reads or writes its files.

    <working_directory>/<experiment_name>/
        README.md            docs/run_folder.md, copied (plus where --init_from's weights came from)
        args.json            the arguments in effect, the batch arithmetic, the model config, the resumes
        metrics.jsonl        one record a line: training (step, loss, ...) and evaluation (step, eval_loss, ...)
        curves.png           the loss and accuracy curves (metrics.py draws them)
        checkpoints/step_N/  a checkpoint (checkpoints.py: its files), written as checkpoints/tmp-step_N/ first
        final_model/         the trained model (a model folder: model_folder.py), written as final_model.tmp/
        wandb/               Weights & Biases' offline files (--log_wandb)

Callers ask this module for paths (`checkpoints_dir`, `final_model_dir`, ...) and records (`read_metrics`,
`eval_records`, `read_args`), so that no other module spells a name of this folder. docs/run_folder.md describes it
to users.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from folders import LOCK_FILE, OutputKind, is_output_of, own_entries, remove_own_outputs, write_json

ARGS_FILE = "args.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
README_FILE = "README.md"
CHECKPOINTS_DIR = "checkpoints"
FINAL_MODEL_DIR = "final_model"
WANDB_DIR = "wandb"
STEP_PREFIX, TMP_PREFIX = "step_", "tmp-"
STEP_FOLDER = re.compile(rf"{STEP_PREFIX}(\d+)")  # checkpoints/step_N
TMP_SUFFIX = ".tmp"  # what write_json, the metrics trim, the curves and the final model write before renaming
CHECKPOINT_FOLDER = f"{CHECKPOINTS_DIR}/{STEP_PREFIX}N"  # for messages
MODEL_FOLDERS = f"{FINAL_MODEL_DIR}/ or {CHECKPOINT_FOLDER}/"  # a run's model folders, for messages
README_SOURCE = Path(__file__).resolve().parent / "docs" / "run_folder.md"

PRETRAINING_RUN = OutputKind(
    "pretraining run folder", "train.py", records=(ARGS_FILE, METRICS_FILE),
    made=(ARGS_FILE, ARGS_FILE + TMP_SUFFIX, METRICS_FILE, METRICS_FILE + TMP_SUFFIX, CURVES_FILE,
          Path(CURVES_FILE).stem + TMP_SUFFIX + Path(CURVES_FILE).suffix, CHECKPOINTS_DIR, FINAL_MODEL_DIR,
          FINAL_MODEL_DIR + TMP_SUFFIX, WANDB_DIR, README_FILE, LOCK_FILE),
    inner=re.compile(rf"({TMP_PREFIX})?{STEP_PREFIX}\d+"), continue_hint="--resume_from_checkpoint latest")


# ----------------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------------


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR


def final_model_dir(run: Path) -> Path:
    return Path(run) / FINAL_MODEL_DIR


def final_model_tmp(run: Path) -> Path:
    return Path(run) / (FINAL_MODEL_DIR + TMP_SUFFIX)


def curves_file(run: Path) -> Path:
    return Path(run) / CURVES_FILE


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"{STEP_PREFIX}{step}"


def tmp_step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"{TMP_PREFIX}{STEP_PREFIX}{step}"


def step_folders(checkpoints: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_N` folder, oldest first (complete or not)."""
    if not checkpoints.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in checkpoints.iterdir()
                  if (m := STEP_FOLDER.fullmatch(p.name)) and p.is_dir())


def is_step_name(name: str) -> bool:
    return STEP_FOLDER.fullmatch(name) is not None


def remove_leftovers(checkpoints: Path) -> list[str]:
    """Remove the `tmp-step_N` folders a crash left while saving (only the lock holder may call this)."""
    removed = []
    for path in checkpoints.glob(f"{TMP_PREFIX}{STEP_PREFIX}*") if checkpoints.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def model_folders_in(folder: Path) -> str | None:
    """For a run folder given where a model folder belongs: which model folders it holds (None: not a run folder)."""
    if (folder / FINAL_MODEL_DIR).is_dir() or (folder / CHECKPOINTS_DIR).is_dir():
        return f"{folder / FINAL_MODEL_DIR} or one of its {CHECKPOINTS_DIR}/{STEP_PREFIX}N folders"
    return None


def is_run_folder(folder: Path) -> bool:
    return is_output_of(folder, PRETRAINING_RUN)


# ----------------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------------


def read_metrics(run: Path) -> list[dict]:
    """The records of metrics.jsonl, in order; a last line cut off by a kill is skipped."""
    path = Path(run) / METRICS_FILE
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def eval_records(run: Path) -> list[dict]:
    """The evaluation records of metrics.jsonl (those with an eval_loss), in order."""
    return [r for r in read_metrics(run) if "eval_loss" in r]


def append_metrics(run: Path, record: dict) -> None:
    with (Path(run) / METRICS_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


def trim_metrics(run: Path, step: int) -> None:
    """Keep the records up to `step` (what a killed run logged after its checkpoint goes), atomically."""
    path = Path(run) / METRICS_FILE
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in read_metrics(run) if r["step"] <= step))
    os.replace(tmp, path)


def write_args(run: Path, record: dict) -> None:
    write_json(Path(run) / ARGS_FILE, record)


def read_args(run: Path) -> dict:
    """args.json of a run ({} when missing or unreadable)."""
    try:
        record = json.loads((Path(run) / ARGS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def recorded_resumes(run: Path) -> list[dict]:
    """The resumes an earlier args.json lists; a missing or damaged one is said and starts the list afresh."""
    path = Path(run) / ARGS_FILE
    try:
        resumes = json.loads(path.read_text()).get("resumes", [])
    except (OSError, ValueError, AttributeError) as error:
        print(f"warning: {path} cannot be read ({type(error).__name__}); it is rewritten, without the list of "
              "earlier resumes", flush=True)
        return []
    return resumes if isinstance(resumes, list) else []


def write_readme(run: Path, addition: str | None = None) -> None:
    """README.md: docs/run_folder.md, and `addition` (a paragraph) after it."""
    shutil.copyfile(README_SOURCE, Path(run) / README_FILE)
    if addition:
        with (Path(run) / README_FILE).open("a") as f:
            f.write(f"\n{addition}\n")


def start(run: Path, overwrite: bool) -> list[str]:
    """Make the folder ready for a run (main process, lock held): with --overwrite the earlier run's files go (the
    user's stay), a crash's half-written checkpoints go. Returns what was done, as lines to print."""
    done = []
    if overwrite and run.is_dir() and own_entries(run, PRETRAINING_RUN):
        kept = remove_own_outputs(run, PRETRAINING_RUN)
        done.append(f"--overwrite: removed the earlier run{'; kept ' + ', '.join(kept) if kept else ''}")
    run.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoints_dir(run)
    done += [f"removed {checkpoints / name}, a checkpoint left half-written by a crash"
             for name in remove_leftovers(checkpoints)]
    return done
