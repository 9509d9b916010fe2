"""Label text with a fine-tuned RoBERTa classifier: a few texts on the command line, or every row of a file.

--model is a folder that finetune_roberta_classification.py wrote (its run folder, or a checkpoints/checkpoint-N
inside it), or any transformers-format RoBERTa sequence-classification folder or Hub id. Each text (or pair of
texts, with --text_pair) is encoded as in fine-tuning, `<s> first </s></s> second </s>`, truncated to
--max_seq_length tokens (the run's, unless given); the answer is the most probable class and its probability (the
softmax over the classes), or for a regression model the predicted number.

With --input_file (CSV or JSON lines), every row is labelled into --output, one JSON line per row (its index,
label, score and, for classes, the probability of each); where the file has a label column, the scores against it
are printed (accuracy and macro-F1, or Pearson and Spearman correlation for regression).

transformers' pipeline("text-classification") reads the same folders: this script adds the run's settings, the
check that the tokenizer is the model's, file input and output, and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import classification as cls
import classification_run_folder
import model_folder
from classification_run_folder import CLASSIFICATION_RUN
from folders import check_output_file
from model import RobertaForSequenceClassification
from qa_run_folder import QA_RUN, TRAINER_CHECKPOINT_FOLDER, TRAINER_STATE, trainer_checkpoints
from run_folder import PRETRAINING_RUN
from store import STORE
from utils import (
    ArgumentParser,
    HelpFormatter,
    UsageError,
    add_running_flags,
    looks_local,
    pick_device,
    run_cli,
)

CHUNK = 1024  # rows labelled between two progress lines of --input_file
EPILOG = """examples:
  python classify.py --model runs/sst2 --text "A gripping, beautifully shot film." --text "Two hours I want back."
  python classify.py --model runs/rte --text "The cat sat on the mat." --text_pair "A cat was sitting." --json
  python classify.py --model runs/sst2 --input_file reviews.csv --text_column review --output labels.jsonl
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help=f"a finetune_roberta_classification.py run folder (or its {TRAINER_CHECKPOINT_FOLDER}), or a "
                        "transformers RoBERTa sequence-classification folder or Hub id")
    texts = p.add_argument_group("texts on the command line")
    texts.add_argument("--text", action="append", default=None, help="a text to label (repeat for several)")
    texts.add_argument("--text_pair", action="append", default=None,
                       help="the second text of a pair, one per --text (for a model fine-tuned on pairs)")
    texts.add_argument("--json", action="store_true",
                       help="print one JSON object per text (text, label, score, scores) instead of text")
    files = p.add_argument_group("a file")
    files.add_argument("--input_file", default=None, help="CSV or JSON lines file: label every row")
    files.add_argument("--text_column", default=None,
                       help="column of the (first) text; unset: the run's, else sentence or sentence1")
    files.add_argument("--text_pair_column", default=None,
                       help="column of the second text; unset: the run's, else sentence2 beside sentence1")
    files.add_argument("--label_column", default=None,
                       help="column of gold labels to score against; unset: `label` where the file has one")
    files.add_argument("--output", default=None, help="where --input_file's labels go (JSON lines)")
    files.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    run = add_running_flags(p, "inputs")
    run.add_argument("--max_seq_length", type=int, default=None,
                     help="tokens per input; unset: as the model was fine-tuned, else the longest it allows")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Checking the request
# ----------------------------------------------------------------------------------------------------------------


def check_output(args: argparse.Namespace) -> None:
    if not args.output:
        raise UsageError("--input_file needs --output, the JSON lines file to write the labels to")
    check_output_file(args.output, "--output", source=args.input_file, source_flag="--input_file",
                      overwrite=args.overwrite, kinds=(CLASSIFICATION_RUN, QA_RUN, PRETRAINING_RUN, STORE),
                      model=args.model if looks_local(args.model) else None,
                      model_files=(*CLASSIFICATION_RUN.made, *model_folder.FILES, TRAINER_STATE),
                      example_name="labels.jsonl", is_own_output=is_labels_file)


def is_labels_file(path: Path) -> bool:
    """Whether a file is what --output receives (one JSON object a line, each with index, label and score), so that
    --overwrite replaces only such a file, never a data file named by mistake. An empty file counts as one."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        row = json.loads(first) if first.strip() else {"index": 0, "label": "", "score": 0}
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(row, dict) and {"index", "label", "score"} <= row.keys()


def check_request(args: argparse.Namespace) -> None:
    """Which mode, and every flag of it, before the model is loaded."""
    if args.text and args.input_file:
        raise UsageError("--text and --input_file both given; label texts on the command line, or a file")
    if not args.text and not args.input_file:
        raise UsageError("nothing to label: give --text (and --text_pair for pairs), or --input_file")
    if args.input_file:
        for flag in ("text", "text_pair"):
            if getattr(args, flag):
                raise UsageError(f"--{flag} goes with --text; an --input_file holds its own texts")
        if args.json:
            raise UsageError("--json goes with --text; --input_file writes JSON lines to --output")
        path = Path(args.input_file).expanduser()
        if not path.is_file():
            raise UsageError(f"--input_file {args.input_file} does not exist" if not path.exists() else
                             f"--input_file {args.input_file} is a folder, not a file")
        if path.suffix.lower() not in cls.DATA_SUFFIXES:
            raise UsageError(f"--input_file {args.input_file}: expected a .csv, .json or .jsonl file")
        check_output(args)
    else:
        for flag in ("output", "text_column", "text_pair_column", "label_column"):
            if getattr(args, flag):
                raise UsageError(f"--{flag} goes with --input_file; --text is labelled as given and printed")
        if any(not text.strip() for text in args.text + (args.text_pair or [])):
            raise UsageError("--text is empty; give something to label")
        if args.text_pair and len(args.text_pair) != len(args.text):
            raise UsageError(f"{len(args.text)} --text but {len(args.text_pair)} --text_pair: give one --text_pair "
                             "per --text, or none")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch_size must be positive, got {args.batch_size}")
    cls.check_max_seq_length(args.max_seq_length)  # the fine-tuning script's rule


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace):
    """(model on its device, tokenizer, the text columns it was fine-tuned on or None); every way --model can be
    wrong is a UsageError."""
    model, folder, tokenizer = model_folder.load_fine_tuned(
        args.model, RobertaForSequenceClassification, "classifier.out_proj.weight",
        head="sequence-classification head (classifier)", script="finetune_roberta_classification.py",
        unfinished=classification_run_folder.unfinished_run(Path(args.model).expanduser()),
        saved=trainer_checkpoints(Path(args.model).expanduser()), cache_dir=args.path_to_cache_dir)
    record = classification_run_folder.run_record(folder)
    longest = model.config.max_sequence_length
    args.max_seq_length = args.max_seq_length or min(record.get("max_seq_length") or longest, longest)
    if args.max_seq_length > longest:
        raise UsageError(f"--max_seq_length {args.max_seq_length} is longer than the model allows ({longest} tokens)")
    columns = classification_run_folder.trained_columns(folder)
    return model.to(pick_device(args.device)), tokenizer, columns


def warn_unlike_training(args: argparse.Namespace, trained, pairs_given: bool) -> None:
    """A single text given to a model fine-tuned on pairs, or the reverse: it works, but the model has never seen it."""
    if trained and (trained[1] is not None) != pairs_given:
        print(f"warning: {args.model} was fine-tuned on {'pairs of texts' if trained[1] else 'single texts'}, and is "
              f"given {'pairs' if pairs_given else 'single texts'} here: inputs of a kind it has never seen",
              file=sys.stderr, flush=True)


def note_truncated(args: argparse.Namespace, tokenizer, texts: list[str], pairs: list[str] | None) -> None:
    """Say how many inputs are longer than --max_seq_length (each is truncated, as in fine-tuning)."""
    _, truncated = cls.encode(tokenizer, texts, pairs, args.max_seq_length)
    if truncated:
        print(f"note: {truncated:,} of {len(texts):,} inputs are longer than --max_seq_length {args.max_seq_length} "
              "tokens and are truncated" + (" (a pair loses tokens from its longer text)" if pairs else ""),
              file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Labelling
# ----------------------------------------------------------------------------------------------------------------


def label_texts(args: argparse.Namespace, model, tokenizer, trained) -> None:
    warn_unlike_training(args, trained, pairs_given=bool(args.text_pair))
    note_truncated(args, tokenizer, args.text, args.text_pair)
    results = cls.classify_texts(model, tokenizer, args.text, args.text_pair, max_length=args.max_seq_length,
                                 batch_size=args.batch_size)
    for i, (text, result) in enumerate(zip(args.text, results, strict=True)):
        pair = args.text_pair[i] if args.text_pair else None
        if args.json:
            print(json.dumps({"text": text, **({"text_pair": pair} if pair else {}), **result}, ensure_ascii=False))
            continue
        shown = f"{text!r}" + (f" / {pair!r}" if pair else "")
        if "scores" in result:
            print(f"{result['label']} ({result['score']:.3f}): {shown}")
        else:
            print(f"{result['label']:.4f}: {shown}")


def read_rows(args: argparse.Namespace, trained) -> tuple[list[str], list[str] | None, list | None]:
    """(texts, second texts or None, gold labels or None) of --input_file. The text columns: the flags', else the
    ones the model was fine-tuned on (`trained`), else sentence, or sentence1 and sentence2."""
    data = cls.load_data_file(args.input_file, "--input_file", "label")
    columns, (trained_first, trained_second) = data.column_names, trained or (None, None)
    first = args.text_column or next((c for c in (trained_first, "sentence", "sentence1") if c in columns), None)
    if args.text_pair_column or trained_first:
        second = args.text_pair_column or trained_second
    else:
        second = "sentence2" if first == "sentence1" and "sentence2" in columns else None
    for flag, column in (("--text_column", first), ("--text_pair_column", second)):
        if column is not None and column not in columns or flag == "--text_column" and column is None:
            raise UsageError(f"--input_file {args.input_file} has no text column {column or 'sentence or sentence1'} "
                             f"(its columns: {', '.join(columns)}); name it with {flag}")
    if len(data) == 0:
        raise UsageError(f"--input_file {args.input_file} has no rows")
    if args.label_column is not None and args.label_column not in columns:
        raise UsageError(f"--input_file {args.input_file} has no label column {args.label_column!r} (--label_column; "
                         f"its columns: {', '.join(columns)})")
    label_column = args.label_column or ("label" if "label" in columns else None)
    gold = list(data[label_column]) if label_column else None
    texts, pairs = list(data[first]), list(data[second]) if second else None
    for values, column in ((texts, first), (pairs, second)):
        if values is not None and (empty := cls.check_texts(values, column, f"--input_file {args.input_file}")):
            print(f"warning: --input_file {args.input_file} has {empty:,} empty texts in column {column!r} (labelled "
                  "as a text of no words)", file=sys.stderr, flush=True)
    print(f"labelling the text of column {first!r}" + (f" paired with {second!r}" if second else "") +
          (f", scored against {label_column!r}" if gold is not None else ""), file=sys.stderr, flush=True)
    return texts, pairs, gold


def label_file(args: argparse.Namespace, model, tokenizer, columns) -> None:
    texts, pairs, gold = read_rows(args, columns)
    warn_unlike_training(args, columns, pairs_given=pairs is not None)
    note_truncated(args, tokenizer, texts, pairs)
    start, results = time.perf_counter(), []
    for begin in range(0, len(texts), CHUNK):
        chunk = slice(begin, begin + CHUNK)
        results += cls.classify_texts(model, tokenizer, texts[chunk], pairs[chunk] if pairs else None,
                                      max_length=args.max_seq_length, batch_size=args.batch_size)
        if len(texts) > CHUNK:
            print(f"labelled {len(results):,} of {len(texts):,} rows", file=sys.stderr, flush=True)
    write_lines(args.output, [{"index": i, **result} for i, result in enumerate(results)])
    print(f"labelled {len(texts):,} rows of {args.input_file} in {time.perf_counter() - start:.1f} s -> "
          f"{args.output}")
    if gold is not None:
        print_scores(model, gold, results)


def write_lines(path: str, rows: list[dict]) -> None:
    output = Path(path).expanduser()
    tmp = output.with_name(output.name + ".tmp")
    try:
        with open(tmp, "w") as out:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, output)
    except OSError as error:  # checked writable before the first row; the disk may have filled since
        tmp.unlink(missing_ok=True)
        raise UsageError(f"--output {path} could not be written ({error.strerror or error}); the {len(rows):,} "
                         "labels are lost: free space and run again") from None


def print_scores(model, gold: list, results: list[dict]) -> None:
    regression = model.config.problem_type == "regression"
    names = None if regression else tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    space = cls.LabelSpace(names, origin="the model")
    try:
        targets = np.asarray(space.encode(gold, "--input_file's labels"))
    except UsageError as error:
        print(f"no scores: {error}")
        return
    predicted = np.asarray([r["label"] for r in results] if regression else
                           [names.index(r["label"]) for r in results])
    metrics = ("pearson", "spearmanr", "mse") if regression else ("accuracy", "macro_f1")
    scores = cls.compute_metrics(metrics, predicted, targets, space.num_labels)
    print(" ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" ({len(gold):,} rows with gold labels)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_request(args)
    model, tokenizer, columns = load_model(args)
    if args.input_file:
        label_file(args, model, tokenizer, columns)
    else:
        label_texts(args, model, tokenizer, columns)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(main)
