"""Fine-tune RoBERTa for sentence or sentence-pair classification (GLUE, or your own labelled text) and score it
with each task's official metrics.

The model is this repository's `model.RobertaForSequenceClassification`: a RoBERTa encoder and transformers'
sentence head on the `<s>` token (dense, tanh, dropout, projection to one logit per class, or to one number for a
regression task). The head always starts fresh, drawn from --seed; --pretrained_backbone says where the encoder
comes from, as in finetune_roberta_qa.py:

  pretrained_huggingface  (the default) the weights, architecture and tokenizer of --huggingface_model_name: a Hub
                          id (by default FacebookAI/roberta-base, a ~500 MB download) or a local transformers-format
                          folder
  pretrained              your own pretraining: a train.py final_model/ or checkpoints/step_N/ folder given as
                          --path_to_pretrained_backbone (weights, architecture and the tokenizer saved beside them)
  random                  RoBERTa's random initialisation; only the architecture (config.json) and the tokenizer
                          come from --path_to_pretrained_backbone when given, else from --huggingface_model_name.
                          The baseline that shows what pretraining is worth

Data, one of:
  --task_name             a GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) from the Hub's
                          nyu-mll/glue at a pinned commit (--dataset_revision to choose another); MNLI is scored on
                          its matched and mismatched validation sets. With --train_file/--validation_file, the task's
                          columns, labels and metrics apply to those files instead (GLUE's data kept locally)
  --train_file, --validation_file   CSV or JSON lines (.csv, .json, .jsonl) files
  --dataset_name          anything datasets.load_dataset reads (a Hub id, pinned to the commit it resolves to, or a
                          local folder), with --dataset_config_name, --train_split and --validation_split
Your own data has a label column (--label_column, default `label`) and its text in `sentence`, or in `sentence1`
and `sentence2` for pairs (as transformers' run_glue.py reads them; other names with --text_column and
--text_pair_column). Labels are classes when they are text or whole numbers (ordered as run_glue.py orders them),
a regression target when they are numbers with fractions; --problem_type insists on one. A pair is read as
RoBERTa reads two segments, `<s> first </s></s> second </s>`; inputs longer than --max_seq_length tokens are
truncated from their longer side, and the run says how many were.

Defaults: the paper's fine-tuning recipe (Table 10): AdamW with beta2 0.98 and epsilon 1e-6, weight decay 0.1, a
linear warmup over the first 6% of the updates then a linear decay, 10 epochs, dropout 0.1; the learning rate and
batch size fairseq's RoBERTa GLUE commands use for each task (1e-5 or 2e-5, 16 or 32), else 2e-5 and 16. The
evaluation runs after every epoch (the paper reports the best epoch; `best` in eval_results.json).

The run folder <working_directory>/<experiment_name>/ receives:
  config.json, model.safetensors, tokenizer files   the fine-tuned model in transformers' format, with the class
                            names (id2label); classify.py, transformers' AutoModelForSequenceClassification and
                            pipeline("text-classification") load the folder as it is
  eval_results.json         the scores as the Trainer names them (eval_accuracy, eval_f1, ...; MNLI's mismatched
                            ones end in _mm), where the weights, the architecture and the tokenizer came from, the
                            labels, what the data checks found, and the scores at every evaluation ("history")
  predictions.jsonl         one line per evaluation example: its text, gold label, prediction and probability
  classification_args.json  the resolved arguments, the library versions and the flags that were not used
  README.md                 what each file and each metric field means
  checkpoints/              Trainer checkpoints, only with --save_steps above 0
--overwrite replaces only a folder this script made, and removes only the files above (anything else stays); a
second run into a folder in use is refused.

Metrics, as fractions (as run_glue.py reports them; GLUE tables print them x 100): accuracy; F1 of the positive
class (MRPC, QQP); Matthews correlation (CoLA); Pearson and Spearman correlation (STS-B); combined_score, the mean
of a task's metrics where it has several. Your own classes: accuracy and macro_f1; your own regression: pearson,
spearmanr and mse.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import torch
import transformers
from datasets import Dataset, DatasetDict, load_dataset
from huggingface_hub import constants
from transformers import DataCollatorWithPadding, set_seed
from transformers.utils import logging as hf_logging

import classification as cls
import classification_run_folder
import finetuning
import run_folder
from classification_run_folder import CLASSIFICATION_RUN
from folders import FolderLock
from model import RobertaConfig, RobertaForSequenceClassification
from tokenization import tokenizer_fingerprint
from utils import (
    ArgumentParser,
    HelpFormatter,
    UsageError,
    duration,
    first_line,
    is_main_process,
    log,
    looks_local,
    raise_on_stop_signals,
    run_cli,
)

EPILOG = f"""examples:
  # roberta-base on RTE with the paper's recipe: downloads roberta-base (~500 MB) and RTE (~1 MB); use a GPU
  python finetune_roberta_classification.py --task_name rte --experiment_name rte_roberta_base
  # your pretraining against random initialisation, on labelled pairs in JSON lines files (the demo writes some)
  python finetune_roberta_classification.py --train_file train.jsonl --validation_file dev.jsonl \\
      --pretrained_backbone pretrained --path_to_pretrained_backbone runs/my_pretraining/{run_folder.FINAL_MODEL_DIR} \\
      --experiment_name my_classifier
  # then label new text
  python classify.py --model runs/my_classifier --text "A sentence to label."
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    finetuning.add_run_flags(p, "roberta_classification", "the dataset")
    model = finetuning.add_backbone_flags(p)
    model.add_argument("--implementation", choices=("ours", "transformers"), default="ours",
                       help="whose RobertaForSequenceClassification is fine-tuned: model.py's, or transformers' "
                            "(the same numbers, within float rounding: a parity check)")

    data = p.add_argument_group("data")
    data.add_argument("--task_name", default=None, help="a GLUE task: " + ", ".join(cls.GLUE_TASKS))
    data.add_argument("--train_file", default=None, help="CSV or JSON lines file to train on")
    data.add_argument("--validation_file", default=None, help="CSV or JSON lines file to evaluate on")
    data.add_argument("--dataset_name", default=None, metavar="NAME_OR_PATH",
                      help="a datasets.load_dataset name: a Hub id or a local folder of data files")
    data.add_argument("--dataset_config_name", default=None, help="the configuration of --dataset_name")
    data.add_argument("--dataset_revision", default=None,
                      help="branch, tag or commit of a Hub dataset; unset: main, or for --task_name the pinned "
                           f"nyu-mll/glue commit {cls.GLUE_REVISION[:10]}")
    data.add_argument("--train_split", default="train", help="split of --dataset_name to train on")
    data.add_argument("--validation_split", default="validation", help="split of --dataset_name to evaluate on")
    data.add_argument("--text_column", default=None,
                      help="column of the (first) text; unset: sentence, or sentence1 where there is no sentence")
    data.add_argument("--text_pair_column", default=None,
                      help="column of the second text of a pair; unset: sentence2 when the text is sentence1")
    data.add_argument("--label_column", default="label", help="column of the labels")
    data.add_argument("--problem_type", choices=("classification", "regression"), default=None,
                      help="classes or a number per example; unset: from the labels (or the GLUE task)")
    data.add_argument("--max_seq_length", type=int, default=None,
                      help="tokens per input, both texts and the special tokens; longer ones are truncated; unset: "
                           "the longest the backbone allows (512 for roberta-base)")
    data.add_argument("--max_train_samples", type=int, default=None,
                      help="train on this many examples, drawn at random; unset: all")
    data.add_argument("--max_eval_samples", type=int, default=None,
                      help="evaluate on the first this many examples of each validation set; unset: all")

    recipe = {"num_train_epochs": cls.RECIPE["num_train_epochs"], "per_device_batch_size": None,
              "learning_rate": None, "weight_decay": cls.RECIPE["weight_decay"],
              "warmup_steps": cls.RECIPE["warmup_ratio"], "eval_steps": None}
    finetuning.add_training_flags(p, "training (unset: the paper's recipe, see above)", "examples", recipe, helps={
        "per_device_batch_size": "examples per device per micro-step; unset: the GLUE task's (16 or 32), else 16",
        "learning_rate": "peak learning rate of AdamW; unset: the GLUE task's (1e-5 or 2e-5), else 2e-5",
        "eval_steps": "evaluate every N steps (0: only at the end); unset: after every epoch"})
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Checking the request (nothing loaded, nothing written)
# ----------------------------------------------------------------------------------------------------------------


def check_numbers(args: argparse.Namespace) -> None:
    finetuning.check_numbers(args, positive=["per_device_batch_size", "gradient_accumulation_steps", "logging_steps",
                                             "num_train_epochs", "learning_rate", "max_seq_length"],
                             non_negative=["weight_decay", "warmup_steps", "eval_steps", "save_steps"])
    cls.check_max_seq_length(args.max_seq_length)


def check_data_source(args: argparse.Namespace) -> None:
    """One source of data, its flags consistent, local files present and of a readable kind; fills args.task."""
    files = [f for f in (args.train_file, args.validation_file) if f]
    if len(files) == 1:
        missing = "--validation_file" if args.train_file else "--train_file"
        raise UsageError(f"{missing} is missing: local data needs both --train_file and --validation_file")
    if files and args.dataset_name:
        raise UsageError("--dataset_name and --train_file/--validation_file both given; choose one")
    if args.task_name and args.dataset_name:
        raise UsageError("--task_name and --dataset_name both given: --task_name reads GLUE from nyu-mll/glue")
    if not (files or args.dataset_name or args.task_name):
        raise UsageError("no data: give --task_name (a GLUE task), --train_file and --validation_file, or "
                         "--dataset_name")
    args.task = cls.glue_task(args.task_name) if args.task_name else None
    if args.task and args.problem_type and (args.problem_type == "regression") != args.task.regression:
        kind = "a regression" if args.task.regression else "a classification"
        raise UsageError(f"--problem_type {args.problem_type}, but {args.task.title} is {kind} task")
    hub_only = [flag for flag in ("dataset_config_name", "dataset_revision") if getattr(args, flag)]
    if hub_only and (files or not (args.dataset_name or args.task_name)):
        raise UsageError(f"--{hub_only[0]} applies to --dataset_name or --task_name (from the Hub) only")
    for flag, path in (("--train_file", args.train_file), ("--validation_file", args.validation_file)):
        if path:
            check_data_file(flag, Path(path).expanduser())


def check_data_file(flag: str, path: Path) -> None:
    if not path.exists():
        raise UsageError(f"{flag} {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{flag} {path} is a folder, not a file (a folder of data files is a --dataset_name)")
    if path.suffix.lower() not in cls.DATA_SUFFIXES:
        raise UsageError(f"{flag} {path}: expected a .csv, .json or .jsonl file (JSON lines: one example a line)")


def check_request(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Every check that needs no model and no dataset: the run folder and the notes to print."""
    check_numbers(args)
    check_data_source(args)
    finetuning.check_backbone(args)
    notes = finetuning.check_report_to(args)
    finetuning.check_bf16(args)
    local_name = args.dataset_name if args.dataset_name and looks_local(args.dataset_name) else None
    run_dir = finetuning.check_run_folder(args, CLASSIFICATION_RUN, {
        "--train_file": args.train_file, "--validation_file": args.validation_file, "--dataset_name": local_name},
        classification_run_folder.RUN_RECORD)
    return run_dir, notes


# ----------------------------------------------------------------------------------------------------------------
# Data: GLUE, a Hub or local dataset, or local files; checked
# ----------------------------------------------------------------------------------------------------------------


def hub_snapshot(repo: str, revision: str, patterns: list[str] | None, cache_dir: str | None,
                 flag: str) -> Path:
    """The files of a Hub dataset at `revision` (its commit's folder, so that the sha is the folder's name),
    downloaded into `cache_dir` or found there; one UsageError when neither works."""
    where = {"cache_dir": str(Path(cache_dir).expanduser())} if cache_dir else {}
    try:
        return Path(huggingface_hub.snapshot_download(repo, repo_type="dataset", revision=revision,
                                                      allow_patterns=patterns, **where))
    except Exception as error:  # offline, unknown id or revision, network: each ends the same way for a user
        offline = " and the Hub is offline (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise UsageError(f"{flag}: could not get {repo} at {revision} from the Hugging Face Hub{offline} "
                         f"({type(error).__name__}: {first_line(error, 160)}); connect once to download it, or "
                         "give local files with --train_file/--validation_file") from None


def load_glue(args: argparse.Namespace):
    """The task's train and validation splits from nyu-mll/glue at the pinned revision (parquet files)."""
    config = next(k for k, v in cls.GLUE_TASKS.items() if v is args.task)
    revision = args.dataset_revision or cls.GLUE_REVISION
    folder = hub_snapshot(cls.GLUE_REPO, revision, [f"{config}/*"], args.path_to_cache_dir,
                          f"--task_name {args.task_name}")
    splits = ["train", *(split for _, split in args.task.validation)]
    files = {split: sorted(str(p) for p in (folder / config).glob(f"{split}-*.parquet")) for split in splits}
    if missing := [split for split, found in files.items() if not found]:
        raise UsageError(f"--task_name {args.task_name}: {cls.GLUE_REPO} at {revision} has no {config}/{missing[0]} "
                         "parquet files")
    args.data_revision = folder.name
    return load_dataset("parquet", data_files=files, **cache_kwargs(args))


def cache_kwargs(args: argparse.Namespace) -> dict:
    return {"cache_dir": str(Path(args.path_to_cache_dir).expanduser() / "datasets")} if args.path_to_cache_dir \
        else {}


def load_named_dataset(args: argparse.Namespace):
    """--dataset_name: a local folder, or a Hub dataset pinned to the commit its revision resolves to."""
    name, splits = args.dataset_name, {"train": args.train_split, "validation": args.validation_split}
    path = Path(name).expanduser()
    if not path.exists():
        if looks_local(name):
            raise UsageError(f"--dataset_name {name} does not exist (a local folder, or a Hub id owner/name)")
        # the whole repository (its layout is its own); a mistyped folder is said to be one too
        path = hub_snapshot(name, args.dataset_revision or "main", None, args.path_to_cache_dir,
                            f"--dataset_name {name} (there is no folder {path.absolute()}; as a Hub id)")
        args.data_revision = path.name
    try:
        parts = {key: load_dataset(str(path), args.dataset_config_name, split=split, **cache_kwargs(args))
                 for key, split in splits.items()}
    except Exception as error:  # a missing split or config, unreadable files: one line with the reason
        raise UsageError(f"--dataset_name {name}: datasets could not load its {' and '.join(splits.values())} "
                         f"splits ({type(error).__name__}: {first_line(error, 200)})") from None
    return DatasetDict(parts)


def load_local_files(args: argparse.Namespace):
    """--train_file and --validation_file (CSV or JSON lines); an empty or unreadable one is a UsageError."""
    return DatasetDict({key: cls.load_data_file(path, f"--{key}_file", "train on" if key == "train" else "score",
                                                **cache_kwargs(args))
                        for key, path in (("train", args.train_file), ("validation", args.validation_file))})


def load_examples(args: argparse.Namespace):
    """{split name: Dataset} with `train` and each validation split (MNLI: validation_matched and _mismatched)."""
    args.data_revision = None
    if args.train_file:
        examples = load_local_files(args)
    elif args.task and not args.dataset_name:
        examples = load_glue(args)
    else:
        examples = load_named_dataset(args)
    if args.task and args.train_file and len(args.task.validation) > 1:
        examples = {"train": examples["train"], args.task.validation[0][1]: examples["validation"]}
    return dict(examples)


def validation_splits(args: argparse.Namespace, examples: dict) -> list[tuple[str, str]]:
    """(metric suffix, split name) of each set scored: MNLI from the Hub has two."""
    names = [split for split in examples if split != "train"]
    if args.task:
        return [(suffix, split) for suffix, split in args.task.validation if split in names]
    return [("", names[0])]


def data_source(args: argparse.Namespace) -> str:
    if args.train_file:
        return f"--train_file {args.train_file}, --validation_file {args.validation_file}"
    if args.dataset_name:
        return f"{args.dataset_name}" + (f" ({args.dataset_config_name})" if args.dataset_config_name else "")
    return f"{cls.GLUE_REPO} {args.task_name}"


def text_columns(args: argparse.Namespace, columns: list[str], where: str) -> tuple[str, str | None]:
    """The text column and the pair's second column (None for single sentences), each present in the split."""
    if args.task and not args.text_column:
        first, second = (*args.task.columns, None)[:2]
    elif args.text_column:
        first, second = args.text_column, args.text_pair_column
    elif "sentence" in columns:
        first, second = "sentence", args.text_pair_column
    elif "sentence1" in columns:
        first, second = "sentence1", args.text_pair_column or ("sentence2" if "sentence2" in columns else None)
    else:
        raise UsageError(f"{where} has no text column sentence or sentence1 (its columns: {', '.join(columns)}); "
                         "name it with --text_column (and --text_pair_column for pairs)")
    for flag, column in (("--text_column", first), ("--text_pair_column", second)):
        if column is not None and column not in columns:
            raise UsageError(f"{where} has no column {column!r} ({flag}; its columns: {', '.join(columns)})")
        if column == args.label_column:
            raise UsageError(f"column {column!r} would be both the text ({flag}) and the label (--label_column): the "
                             "model would read its answer; name the text and the label columns apart")
    if first == second:
        raise UsageError(f"column {first!r} would be both texts of a pair (--text_column and --text_pair_column); "
                         "name the second text's column, or leave --text_pair_column out for single texts")
    return first, second


def check_examples(examples: dict, args: argparse.Namespace) -> tuple[dict, cls.LabelSpace, dict, list[str]]:
    """({split: {"texts", "pairs", "labels" (targets)}}, the label space, the data record, notes): a missing
    column, an empty split, a label the training split never has, or labels of the wrong kind are UsageErrors."""
    where = {split: split_name(args, split) for split in examples}
    rows, notes = {}, []
    for split, data in examples.items():
        if len(data) == 0:
            raise UsageError(f"{where[split]} is empty: there is nothing to "
                             f"{'train on' if split == 'train' else 'score'}")
        if args.label_column not in data.column_names:
            raise UsageError(f"{where[split]} has no label column {args.label_column!r} (its columns: "
                             f"{', '.join(data.column_names)}); name it with --label_column")
        first, second = text_columns(args, data.column_names, where[split])
        # lists, not datasets' lazy Columns: select_samples and the tokenizer index them as lists
        rows[split] = {"texts": list(data[first]), "pairs": list(data[second]) if second else None,
                       "labels": list(data[args.label_column]), "columns": (first, second)}
        empty = sum(cls.check_texts(rows[split][key], column, where[split])
                    for key, column in (("texts", first), ("pairs", second)) if column)
        if empty:
            notes.append(f"warning: {where[split]} has {empty:,} empty texts (read as a text of no words)")
    if args.task:
        for split in rows:
            rows[split]["labels"] = cls.task_label_names(args.task, rows[split]["labels"])
        space = cls.task_label_space(args.task, rows["train"]["labels"], where["train"])
    else:
        space = cls.infer_label_space(rows["train"]["labels"], args.problem_type, where["train"])
    for split in rows:
        rows[split]["targets"] = space.encode(rows[split]["labels"], where[split])
    if args.train_file and Path(args.train_file).resolve() == Path(args.validation_file).resolve():
        notes.append("warning: --train_file and --validation_file are the same file: the scores will measure "
                     "memorisation, not classification of unseen text")
    record = {"source": data_source(args), "revision": args.data_revision, "text_columns": rows["train"]["columns"],
              "label_column": args.label_column,
              **{f"{split}_examples": len(data["targets"]) for split, data in rows.items()}}
    return rows, space, record, notes


def split_name(args: argparse.Namespace, split: str) -> str:
    if args.train_file:
        return f"--{'train' if split == 'train' else 'validation'}_file " \
               f"{args.train_file if split == 'train' else args.validation_file}"
    return f"{data_source(args)} {split}"


def select_samples(rows: dict, args: argparse.Namespace) -> dict:
    """A seeded random subset of the training examples, the first ones of each evaluation set."""
    out = {}
    for split, data in rows.items():
        n = len(data["targets"])
        if split == "train" and args.max_train_samples is not None and args.max_train_samples < n:
            keep = sorted(random.Random(args.seed).sample(range(n), args.max_train_samples))
        elif split != "train" and args.max_eval_samples is not None and args.max_eval_samples < n:
            keep = range(args.max_eval_samples)
        else:
            out[split] = data
            continue
        out[split] = {k: [v[i] for i in keep] if isinstance(v, list) else v for k, v in data.items()}
    return out


def featurize(rows: dict, tokenizer, max_length: int) -> tuple[dict, list[str]]:
    """{split: a Dataset of input_ids, attention_mask and label}, and a note counting the truncated inputs."""
    features, truncated = {}, {}
    for split, data in rows.items():
        encodings, truncated[split] = cls.encode(tokenizer, data["texts"], data["pairs"], max_length)
        features[split] = Dataset.from_dict({"input_ids": encodings["input_ids"],
                                             "attention_mask": encodings["attention_mask"], "label": data["targets"]})
    notes = []
    if any(truncated.values()):
        counts = ", ".join(f"{n:,} of {len(rows[split]['targets']):,} {split}" for split, n in truncated.items() if n)
        pairs = " (a pair loses tokens from its longer text)" if rows["train"]["pairs"] is not None else ""
        notes.append(f"note: {counts} inputs are longer than --max_seq_length {max_length} tokens and are "
                     f"truncated{pairs}")
    return features, notes


# ----------------------------------------------------------------------------------------------------------------
# Backbone and model (all checked before the run folder exists)
# ----------------------------------------------------------------------------------------------------------------


def load_backbone(args: argparse.Namespace):
    """(tokenizer, config, folder, provenance): the tokenizer (checked to be the backbone's) and the architecture;
    the weights are read once the labels are known (`build_model`). Fills in --max_seq_length when unset."""
    tokenizer, folder, config, swapped = finetuning.load_backbone_parts(args)
    if args.max_seq_length is None:
        args.max_seq_length = min(config.max_sequence_length, 512)
    provenance = {**finetuning.backbone_provenance(args, folder, "classification_head"),
                  "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "implementation": args.implementation,
                  **({"tokenizer_warning": swapped} if swapped else {})}
    return tokenizer, config, folder, provenance


def label_config(space: cls.LabelSpace, label_column: str) -> dict:
    """The config fields of the head: the class names (one output named after the label column for regression) and
    the problem type, so that the saved folder tells transformers' pipeline how to read its outputs."""
    id2label = space.id2label() or {0: label_column}
    return {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()},
            "problem_type": "regression" if space.regression else "single_label_classification"}


def build_model(args: argparse.Namespace, config, folder: Path, space: cls.LabelSpace):
    """The model to fine-tune: the backbone's encoder (or RoBERTa's random one) and a new head, in our
    implementation or transformers'; a damaged or mis-shaped checkpoint is a UsageError."""
    labels = label_config(space, args.label_column)
    set_seed(args.seed)  # the encoder's initialisation, for random
    try:
        if args.implementation == "transformers":
            model = transformers_model(args, folder, labels)
        else:
            model = RobertaForSequenceClassification(RobertaConfig.from_dict(config.to_dict(), **labels)) \
                if args.pretrained_backbone == "random" else \
                RobertaForSequenceClassification.from_pretrained(folder, new_head=True, **labels)
    except ValueError as error:  # truncated or corrupt weights, wrong shapes, missing tensors
        source = finetuning.backbone_source(args)
        raise UsageError(f"{finetuning.backbone_flag(args)}: {str(error).replace(str(folder), source)}") from None
    init_head(model, args.seed)
    return model


def transformers_model(args: argparse.Namespace, folder: Path, labels: dict):
    """transformers' RobertaForSequenceClassification from the same folder (--implementation transformers)."""
    hf_config = transformers.AutoConfig.from_pretrained(folder, **labels)
    if args.pretrained_backbone == "random":
        return transformers.RobertaForSequenceClassification(hf_config)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier..." is the point here
    try:
        return transformers.RobertaForSequenceClassification.from_pretrained(
            folder, config=hf_config, ignore_mismatched_sizes=True, attn_implementation="sdpa")
    finally:
        hf_logging.set_verbosity(verbosity)


def init_head(model, seed: int) -> None:
    """RoBERTa's initialisation of the head (normal weights, zero biases) from a generator of its own seeded with
    `seed`: the same head whichever implementation, and whatever drew random numbers before."""
    generator = torch.Generator().manual_seed(seed)
    std = model.config.initializer_range
    with torch.no_grad():
        for layer in (model.classifier.dense, model.classifier.out_proj):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
            layer.bias.zero_()


# ----------------------------------------------------------------------------------------------------------------
# The run folder: one run at a time, and only our own files replaced
# ----------------------------------------------------------------------------------------------------------------


def resolve_recipe(args: argparse.Namespace) -> None:
    """The learning rate and batch size left unset: the GLUE task's (fairseq's choice), else the recipe's."""
    if args.learning_rate is None:
        args.learning_rate = args.task.learning_rate if args.task else cls.RECIPE["learning_rate"]
    if args.per_device_batch_size is None:
        args.per_device_batch_size = args.task.batch_size if args.task else cls.RECIPE["batch_size"]


def recorded_args(args: argparse.Namespace) -> dict:
    """The arguments as used, for classification_args.json; flags that played no part go under `not_used`."""
    unused = {} if args.dataset_name else {"train_split": "only --dataset_name uses it",
                                           "validation_split": "only --dataset_name uses it"}
    return finetuning.recorded_args(args, unused, skip=("task",))


def claim_run_folder(args: argparse.Namespace, run_dir: Path) -> FolderLock | None:
    """Lock the run folder, clear an earlier run's outputs with --overwrite, write classification_args.json."""
    return finetuning.claim_run_folder(args, run_dir, CLASSIFICATION_RUN, classification_run_folder.write_run_record,
                                       recorded_args(args))


# ----------------------------------------------------------------------------------------------------------------
# Trainer that scores every validation set with the task's metrics
# ----------------------------------------------------------------------------------------------------------------


def make_trainer(args, model, tokenizer, features: dict, rows: dict, space: cls.LabelSpace, run_dir: Path):
    """A Trainer whose evaluation scores each validation set (MNLI: both) with the official metrics; the scores of
    the second set end in its suffix (`eval_accuracy_mm`), as in transformers' run_glue.py."""
    splits = validation_splits(args, features)
    metrics = cls.metrics_for(args.task, space)
    gold = {split: np.asarray(rows[split]["targets"]) for _, split in splits}

    class ClassificationTrainer(finetuning.ModelFolderTrainer):
        last_scores: dict[str, float] = {}
        last_logits: dict[str, np.ndarray] = {}

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            start, scores = time.perf_counter(), {}
            for suffix, split in splits:
                output = self.predict(features[split], ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
                predicted = cls.predictions_from_logits(output.predictions, space)
                values = cls.compute_metrics(metrics, predicted, gold[split], space.num_labels)
                scores |= {f"{metric_key_prefix}_{k}{suffix}": v for k, v in values.items()}
                scores[f"{metric_key_prefix}_loss{suffix}"] = output.metrics.get(f"{metric_key_prefix}_loss")
                self.last_logits[split] = output.predictions
            scores[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
            self.log(dict(scores))  # a copy: log() adds the epoch to the dict it is given
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scores)
            self.last_scores, self.last_eval_step = scores, self.state.global_step
            return scores

    # No processing_class: the Trainer would "align" the config's special tokens through transformers' config API,
    # which our dataclass config does not have; the collator pads each batch to its longest input.
    eval_strategy = "epoch" if args.eval_steps is None else "steps" if args.eval_steps else "no"
    trainer = ClassificationTrainer(
        model=model, args=finetuning.training_arguments(
            args, run_dir, label_names=["labels"], eval_strategy=eval_strategy, adam_beta2=cls.RECIPE["adam_beta2"],
            adam_epsilon=cls.RECIPE["adam_epsilon"]),
        train_dataset=features["train"], eval_dataset=features[splits[0][1]],
        data_collator=DataCollatorWithPadding(tokenizer))
    trainer.tokenizer_to_save = tokenizer
    finetuning.add_log_lines(trainer, log_line)
    return trainer


def log_line(step: int, max_steps: int, logs: dict, elapsed: float, steps_done: int) -> str:
    """One readable line for a Trainer log; evaluations show each metric x 100, as GLUE tables print them."""
    if line := finetuning.training_log_line(step, max_steps, logs, elapsed, steps_done):
        return line
    loss = f" | loss {logs['eval_loss']:.4f}" if logs.get("eval_loss") is not None else ""
    shown = cls.shown_scores(logs).replace(", ", " | ")
    return f"eval {step}/{max_steps} | {shown}{loss} | {duration(logs.get('eval_runtime', 0))}"


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


def write_results(run_dir: Path, args, trainer, rows: dict, space: cls.LabelSpace, counts: dict, provenance: dict,
                  data: dict) -> dict:
    """eval_results.json (the last evaluation's scores, as the Trainer names them, and the run's records),
    predictions.jsonl and README.md; returns the results."""
    scores = trainer.last_scores
    history = [{k: v for k, v in entry.items() if k in ("step", "epoch") or k.startswith("eval_")
                and k != "eval_runtime"} for entry in trainer.state.log_history if "eval_runtime" in entry]
    main_metric = f"eval_{cls.metrics_for(args.task, space)[0]}"
    best = max(history, key=lambda entry: entry.get(main_metric) or float("-inf")) if history else {}
    results = {**scores, "scores": scores, **counts, "global_step": trainer.state.global_step,
               "main_metric": main_metric, "best": best, "labels": list(space.names) if space.names else None,
               "problem_type": "regression" if space.regression else "single_label_classification",
               **({"published_dev": {"roberta-base": args.task.published_base,
                                     "roberta-large": args.task.published_large}} if args.task else {}),
               "backbone": provenance, "data": data, "history": history}
    classification_run_folder.write_results(run_dir, args, results, validation_splits(args, rows),
                                            trainer.last_logits, rows, space)
    return results


def summary_lines(args, results: dict, run_dir: Path) -> list[str]:
    lines = [f"final (x 100): {cls.shown_scores(results['scores'])} ({results['eval_examples']:,} evaluation "
             f"examples) -> {run_dir}"]
    if args.task:
        lines.insert(0, f"published {args.task.title} dev scores (x 100, median of five runs): roberta-base "
                        f"{args.task.published_base} (fairseq's RoBERTa README), roberta-large "
                        f"{args.task.published_large} (the paper's Table 5)")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace):
    """Everything that can fail on bad input after check_request, before anything is written: the backbone, the
    data and its labels, the inputs, the model. Returns (tokenizer, model, rows, features, space, records, notes)."""
    resolve_recipe(args)
    tokenizer, config, folder, provenance = load_backbone(args)
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar (--implementation transformers)
    examples = load_examples(args)
    rows, space, data_record, data_notes = check_examples(examples, args)
    rows = select_samples(rows, args)
    features, truncation_notes = featurize(rows, tokenizer, args.max_seq_length)
    model = build_model(args, config, folder, space)
    return tokenizer, model, rows, features, space, provenance, data_record, data_notes + truncation_notes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_dir, notes = check_request(args)  # flags, paths, run folder: nothing loaded, nothing written
    raise_on_stop_signals()  # a signal or Ctrl-C from here is one line (below), whatever was written or not
    with finetuning.RunEnding("finetune_roberta_classification", run_dir) as run:  # a stop or a full disk: one line
        tokenizer, model, rows, features, space, provenance, data_record, data_notes = prepare(args)
        finetuning.resolve_bf16(args)
        run.lock = claim_run_folder(args, run_dir)
        for note in notes + data_notes:
            log(note)
        evaluated = sum(len(rows[split]["targets"]) for split in rows if split != "train")
        kind = "regression" if space.regression else f"{space.num_labels} classes ({', '.join(space.names)})"
        log(f"{args.pretrained_backbone} backbone, weights: {provenance['weights']}; {model.num_parameters():,} "
            f"parameters ({args.implementation}); {kind}; {len(rows['train']['targets']):,} training and "
            f"{evaluated:,} evaluation examples")
        finetuning.prepare_loggers(args, run_dir)
        trainer = make_trainer(args, model, tokenizer, features, rows, space, run_dir)
        train_output = trainer.train_save_evaluate(run_dir, args.learning_rate)
        counts = {"eval_examples": evaluated, "train_examples": len(rows["train"]["targets"]),
                  "train_loss": train_output.training_loss,
                  "train_runtime_s": train_output.metrics.get("train_runtime")}
        if is_main_process():
            results = write_results(run_dir, args, trainer, rows, space, counts, provenance, data_record)
            for line in summary_lines(args, results, run_dir):
                log(line)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(main)
