"""The model folder: the one format in which every script saves and reads a model (transformers' layout).

    config.json              the architecture (RobertaConfig.to_dict, with `architectures`)
    model.safetensors        the weights (a Hub model may have pytorch_model.bin instead)
    tokenizer files          the tokenizer that made the model's ids (tokenization.TOKENIZER_SAVED_FILES)
    tokenizer_record.json    that tokenizer's identity (tokenization.tokenizer_identity), written by this repository,
                             so that a tokenizer swapped for another of the same size is caught

train.py writes one in every checkpoint and in final_model/, finetune_roberta_qa.py in its run folder; transformers'
`from_pretrained` loads each as it is. This module is the only code that names these files: model.py's
`save_pretrained`/`from_pretrained` and every script read and write through it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub import constants as hub_constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import run_folder
from tokenization import TOKENIZER_SAVED_FILES, load_tokenizer, tokenizer_identity, tokenizer_mismatch
from utils import UsageError, first_line, looks_local

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS_FILE, PYTORCH_FILE)  # the first found is read
TOKENIZER_RECORD = "tokenizer_record.json"
WRITTEN = (CONFIG_FILE, SAFETENSORS_FILE, TOKENIZER_RECORD, *TOKENIZER_SAVED_FILES)  # what `save` writes
GENERATION_CONFIG = "generation_config.json"  # transformers writes it beside some models
FILES = (*WRITTEN, PYTORCH_FILE, GENERATION_CONFIG)  # all a model folder may hold


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def write_weights(folder: str | os.PathLike, config: dict, state: dict[str, torch.Tensor]) -> None:
    """config.json and model.safetensors (the body of model.py's `save_pretrained`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, folder / SAFETENSORS_FILE, metadata={"format": "pt"})


def save(folder: str | os.PathLike, model, tokenizer) -> None:
    """A whole model folder: the model (its `save_pretrained`), the tokenizer and the tokenizer's record."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    record_tokenizer(folder, tokenizer)


def record_tokenizer(folder: str | os.PathLike, tokenizer) -> None:
    """TOKENIZER_RECORD beside a saved model: the identity of the tokenizer it was trained with."""
    (Path(folder) / TOKENIZER_RECORD).write_text(json.dumps(tokenizer_identity(tokenizer)) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading
# ----------------------------------------------------------------------------------------------------------------


def check(path: str | os.PathLike, need_weights: bool = True) -> Path:
    """A local model folder, checked: config.json, and a weight file when `need_weights`.

    ValueError (one line, with the way out) otherwise; a train.py run folder is recognised and the model folders
    inside it are named. Reads no weights: loading them (`read_state_dict`) is what finds a corrupt file."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{path} is a file, not a folder: expected a transformers-format model folder"
                         if folder.exists() else f"there is no folder {folder.absolute()}")
    if not (folder / CONFIG_FILE).is_file():
        if hint := run_folder.model_folders_in(folder):
            what = "checkpoints folder" if run_folder.step_folders(folder) else "run folder"
            raise ValueError(f"{path} is a train.py {what}, not a model: pass {hint}")
        raise ValueError(f"{path} holds no {CONFIG_FILE}, so no model: expected a train.py "
                         f"{run_folder.MODEL_FOLDERS} folder, or a transformers-format RoBERTa folder")
    if need_weights and weights_file(folder) is None:
        raise ValueError(f"{path} holds no weights: expected {' or '.join(WEIGHT_FILES)} beside {CONFIG_FILE}")
    return folder


def weights_file(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def resolve(path_or_hub_id: str | os.PathLike, need_weights: bool = True,
            cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a model: a folder as it is (checked), or a Hub id downloaded into `cache_dir` (the Hub's
    own cache when None). Only config.json and one weight file are fetched. ValueError on failure."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return check(path, need_weights)
    if path.exists():
        raise ValueError(f"{path_or_hub_id} is a file, not a folder: expected a transformers-format folder or a Hub id")
    missing = f"there is no folder {path.absolute()}"
    if looks_local(path_or_hub_id):
        raise ValueError(missing)
    hub_id = str(path_or_hub_id)
    try:  # a name that could be either: a mistyped relative path is said to be one too, not only a Hub id
        folder = _snapshot(hub_id, [CONFIG_FILE, *([SAFETENSORS_FILE] if need_weights else [])], cache_dir)
        if need_weights and not (folder / SAFETENSORS_FILE).is_file():  # never both weight files
            folder = _snapshot(hub_id, [PYTORCH_FILE], cache_dir)
    except ValueError as error:
        raise ValueError(f"{missing}, and as a Hub id: {error}") from None
    return check(folder, need_weights)


def _snapshot(hub_id: str, patterns: list[str], cache_dir: str | os.PathLike | None = None) -> Path:
    where = {"cache_dir": str(Path(cache_dir).expanduser())} if cache_dir else {}  # else the Hub's own cache
    try:
        return Path(huggingface_hub.snapshot_download(hub_id, allow_patterns=patterns, **where))
    except Exception as error:  # offline, unknown id, gated repo, network error: all end the same way for a user
        if hub_constants.HF_HUB_OFFLINE:  # the cut-off library text would not say so plainly
            raise ValueError(f"could not get {hub_id!r} from the Hugging Face Hub: HF_HUB_OFFLINE=1 is set and the "
                             "Hub cache holds no copy of it; download it where the Hub is reachable, or pass a local "
                             "transformers-format folder") from None
        raise ValueError(
            f"could not get {hub_id!r} from the Hugging Face Hub ({type(error).__name__}: {first_line(error)}); "
            "check the id and the network, or pass a local transformers-format folder"
        ) from None


def read_config(folder: Path) -> dict:
    return json.loads((folder / CONFIG_FILE).read_text())


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder; a truncated or corrupt file is a one-line ValueError naming it."""
    path = weights_file(folder) or folder / PYTORCH_FILE
    try:
        if path.name == SAFETENSORS_FILE:
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # SafetensorError, UnpicklingError, EOFError, RuntimeError...: all mean "damaged"
        reason = first_line(error, 160)
        raise ValueError(f"{path} could not be read ({type(error).__name__}: {reason}): the file is truncated or "
                         "corrupt; save or download it again") from None


def weight_names(path: str | os.PathLike) -> set[str]:
    """Names of the tensors in a model folder, read from the safetensors header where there is one."""
    folder = check(path, need_weights=True)
    if (folder / SAFETENSORS_FILE).is_file():
        try:
            with safe_open(str(folder / SAFETENSORS_FILE), framework="pt") as weights:
                return set(weights.keys())
        except Exception:
            pass  # reported with its reason by read_state_dict below
    return set(read_state_dict(folder))


def same_tensor(folder: Path, name: str, other: str) -> bool:
    """Whether two weights of a model folder hold the same values (or either is absent: nothing to disagree), read
    lazily from safetensors: a weight tied to another is saved once, or as an equal copy."""
    if (folder / SAFETENSORS_FILE).is_file():
        try:
            with safe_open(str(folder / SAFETENSORS_FILE), framework="pt") as weights:
                names = set(weights.keys())
                return name not in names or other not in names or torch.equal(weights.get_tensor(name),
                                                                               weights.get_tensor(other))
        except Exception:
            pass  # reported with its reason by read_state_dict below
    state = read_state_dict(folder)
    return name not in state or other not in state or torch.equal(state[name], state[other])


def recorded_tokenizer(folder: str | os.PathLike) -> dict | None:
    """The identity of the tokenizer the model of `folder` was trained with, as recorded there (None: not recorded
    or unreadable)."""
    try:
        recorded = json.loads((Path(folder) / TOKENIZER_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def tokenizer_swapped(folder: str | os.PathLike, tokenizer) -> str | None:
    """Why `tokenizer` is not the one the model of `folder` was trained with, by the record there (None when it is,
    or when nothing was recorded). A tokenizer swapped for another of the same size passes every shape check, and
    the model would read its ids as other tokens."""
    mismatch = tokenizer_mismatch(tokenizer, recorded_tokenizer(folder))
    if mismatch is None:
        return None
    return f"the tokenizer in {folder} is not the one its model was trained with ({mismatch})"


# The task heads of the fine-tuned models this repository makes: their weight -> (what the model is, what uses it)
FINE_TUNED_HEADS = {"qa_outputs.weight": ("a question-answering model", "ask.py"),
                    "classifier.out_proj.weight": ("a sentence-classification model", "classify.py")}


def load_fine_tuned(name: str, model_class, head_weight: str, *, head: str, script: str, unfinished: bool,
                    saved: list[Path], cache_dir: str | None = None):
    """(model, folder, tokenizer) of a fine-tuned model given as ask.py's or classify.py's --model (a run folder, a
    checkpoint in it, any transformers-format folder or Hub id), for `model_class` whose task head has the weight
    `head_weight` (`head` names it in messages, `script` is the script that fine-tunes it). `unfinished`: the folder
    is a run folder of `script` that holds no model yet (`saved`: its Trainer checkpoints, the newest named). Every way
    --model can be wrong is a UsageError; a tokenizer that is not the model's by its recorded fingerprint is warned
    about on stderr."""
    if unfinished:
        raise UsageError(f"--model {name} is a {script} run folder that holds no model yet (the run has not "
                         "finished, or was stopped): " + (f"give its newest checkpoint, {saved[-1]}, or wait for it to "
                         "finish" if saved else "it saved no checkpoint (--save_steps 0); wait for it to finish, or "
                         "run it again"))
    try:
        folder = resolve(name, need_weights=True, cache_dir=cache_dir)
        if head_weight not in (names := weight_names(folder)):
            other = next((f"{what}, for {user}" for weight, (what, user) in FINE_TUNED_HEADS.items()
                          if weight in names), "a pretrained backbone")
            raise UsageError(f"--model {name} has no {head}: it is {other}, not a model fine-tuned for this task; "
                             f"fine-tune it with {script} --pretrained_backbone pretrained "
                             f"--path_to_pretrained_backbone {name}")
        model = model_class.from_pretrained(folder)
        if bad := [weight for weight, p in model.named_parameters() if not torch.isfinite(p).all()]:
            raise UsageError(f"--model {name}: {len(bad)} of its weight tensors hold NaN or infinite values (the "
                             f"first: {bad[0]}): its training diverged, and every output would be NaN")
    except ValueError as error:
        if not Path(name).expanduser().exists():  # a mistyped local path, or a Hub id (resolve says which)
            raise UsageError(f"--model {name} does not exist: {error}") from None
        raise UsageError(f"--model {error}") from None
    tokenizer = load_tokenizer(folder if looks_local(name) else name, flag="--model", cache_dir=cache_dir)
    if mismatch := tokenizer_mismatch(tokenizer, config=model.config):
        raise UsageError(f"the tokenizer of {name} has {mismatch}: it is not the tokenizer the model was trained with")
    if swapped := tokenizer_swapped(folder, tokenizer):
        print(f"warning: {swapped}; the outputs will be wrong: put back the tokenizer files saved with the model",
              file=sys.stderr, flush=True)
    return model, folder, tokenizer
