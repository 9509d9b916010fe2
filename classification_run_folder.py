"""The classification run folder finetune_roberta_classification.py writes, and classify.py reads: its names, and the
only code that writes or reads its records. It is the question-answering run folder's sibling (qa_run_folder.py):
the Trainer's files, the results file, the README and the loggers' folders are named there and shared.

    <working_directory>/<experiment_name>/
        config.json, model.safetensors, tokenizer files   the fine-tuned model with its class names (model_folder.py)
        eval_results.json         the scores (eval_accuracy, ...), the labels, the backbone, the data, the history
        predictions.jsonl         one line per evaluation example: its text(s), gold label, prediction, probability
        classification_args.json  the resolved arguments (classify.py reads max_seq_length and the text columns)
        README.md                 what each file and each metric field means
        checkpoints/checkpoint-N/ the Trainer's checkpoints (with --save_steps), each a model folder too
        runs/, wandb/             TensorBoard's and Weights & Biases' files (--report_to)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import classification as cls
from folders import LOCK_FILE, OutputKind, write_json
from model_folder import CONFIG_FILE, SAFETENSORS_FILE
from model_folder import WRITTEN as MODEL_FILES
from qa_run_folder import (
    CHECKPOINTS_DIR,
    LOGGER_DIRS,
    README_FILE,
    RESULTS_FILE,
    TRAINER_CHECKPOINT,
    TRAINING_ARGS,
    read_results,
    trainer_output_dir,
)
from qa_run_folder import run_record as _run_record
from qa_run_folder import unfinished_run as _unfinished_run

RUN_RECORD = "classification_args.json"
PREDICTIONS_FILE = "predictions.jsonl"
_RECORDS = (RUN_RECORD, RESULTS_FILE, PREDICTIONS_FILE)

CLASSIFICATION_RUN = OutputKind(
    "classification run folder", "finetune_roberta_classification.py", records=(RUN_RECORD,),
    made=(*_RECORDS, *(name + ".tmp" for name in _RECORDS), CHECKPOINTS_DIR, *MODEL_FILES, TRAINING_ARGS,
          README_FILE, *LOGGER_DIRS, LOCK_FILE),
    inner=TRAINER_CHECKPOINT)

__all__ = ["CLASSIFICATION_RUN", "RUN_RECORD", "PREDICTIONS_FILE", "read_results", "trainer_output_dir",
           "write_run_record", "run_record", "unfinished_run", "trained_columns", "read_predictions", "write_results",
           "run_readme"]


def write_run_record(run_dir: Path, record: dict) -> None:
    write_json(run_dir / RUN_RECORD, record)


def run_record(folder: Path) -> dict:
    """The RUN_RECORD of the run that made `folder` (the run folder, or a checkpoint inside it), else {}."""
    return _run_record(folder, RUN_RECORD)


def unfinished_run(folder: Path) -> bool:
    """A run folder whose run has not saved its model yet."""
    return _unfinished_run(folder, RUN_RECORD)


def trained_columns(folder: Path) -> tuple[str, str | None] | None:
    """(text column, pair column or None) the model of `folder` (a run folder, or a checkpoint in it) was fine-tuned
    on, from its run's results; None when they are not known (not a finished run of this script)."""
    for candidate in (folder, folder.parent.parent):
        try:
            first, second = read_results(candidate)["data"]["text_columns"]
            return first, second
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def read_predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / PREDICTIONS_FILE).read_text().splitlines()]


def write_predictions(path: Path, splits: list[tuple[str, str]], logits: dict, rows: dict,
                      space: cls.LabelSpace) -> None:
    """PREDICTIONS_FILE: per evaluation example its texts, gold label, prediction and probability (for regression
    the predicted number), written atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as out:
        for _, split in splits:
            data, first, second = rows[split], *rows[split]["columns"]
            probabilities = None if space.regression else cls.softmax(logits[split])
            first_key, second_key = (_text_key(column) for column in (first, second))
            for i, target in enumerate(data["targets"]):
                row = {"split": split, "index": i, first_key: data["texts"][i],
                       **({second_key: data["pairs"][i]} if second else {}), "label": space.decode(target)}
                if space.regression:
                    row["prediction"] = float(logits[split][i].reshape(-1)[0])
                else:
                    best = int(probabilities[i].argmax())
                    row |= {"prediction": space.decode(best), "probability": round(float(probabilities[i][best]), 4)}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


_PREDICTION_KEYS = ("split", "index", "label", "prediction", "probability")


def _text_key(column: str | None) -> str | None:
    """A text's key in PREDICTIONS_FILE: its column's name, unless that is one of the record's own keys (a text
    column named `index` would lose the index, one named `prediction` the text)."""
    return f"{column}_text" if column in _PREDICTION_KEYS else column


def write_results(run_dir: Path, args: argparse.Namespace, results: dict, splits: list[tuple[str, str]],
                  logits: dict, rows: dict, space: cls.LabelSpace) -> None:
    """The results of a finished run: the scores and records (`results`), the predictions, the README."""
    write_json(run_dir / RESULTS_FILE, results)
    write_predictions(run_dir / PREDICTIONS_FILE, splits, logits, rows, space)
    (run_dir / README_FILE).write_text(run_readme(args, results))


def run_readme(args: argparse.Namespace, results: dict) -> str:
    """The run folder's README.md: what each file and each number is."""
    task = f"GLUE {args.task.title}" if args.task else results["data"]["source"]
    kind = "regression" if results["labels"] is None else "classification"
    lines = [
        f"# {args.experiment_name}: RoBERTa fine-tuned for {kind}",
        "",
        f"Made by `finetune_roberta_classification.py` from the {args.pretrained_backbone} backbone "
        f"(weights: {results['backbone']['weights']}), on {task}. Scores x 100: "
        f"{cls.shown_scores(results['scores'])}.",
        "",
        "| file | what it is |",
        "| --- | --- |",
        f"| `{CONFIG_FILE}`, `{SAFETENSORS_FILE}`, tokenizer files | the fine-tuned model in transformers' format, "
        "with its class names (`id2label`): `python classify.py --model <this folder> --text ...`, transformers' "
        "`AutoModelForSequenceClassification.from_pretrained` or `pipeline(\"text-classification\")` |",
        f"| `{RESULTS_FILE}` | the scores as fractions, named as the Trainer names them (below); the main metric "
        "(`main_metric`) and the evaluation where it was best (`best`: the paper reports the best epoch); the class "
        "names (`labels`); where the weights, the architecture and the tokenizer came from (`backbone`); the data "
        "(`data`); the scores at each evaluation (`history`); for GLUE the published dev scores (x 100) |",
        f"| `{PREDICTIONS_FILE}` | one line per evaluation example: its text(s), `label` (gold), `prediction` and "
        "its `probability` (for regression the predicted number) |",
        f"| `{RUN_RECORD}` | the arguments of the run, the flags that played no part (`not_used`), and the library "
        "versions |",
        f"| `{CHECKPOINTS_DIR}/` | Trainer checkpoints (with `--save_steps` above 0) |",
        f"| `{LOCK_FILE}` | held by the run writing here: a second run into this folder is refused while it lives |",
        "",
        "- `eval_accuracy`: the share of examples whose predicted class is the gold one.",
        "- `eval_f1`: F1 of the positive class (MRPC: equivalent, QQP: duplicate); `eval_macro_f1`: the mean over "
        "classes of each class's F1.",
        "- `eval_matthews_correlation`: Matthews correlation of predicted and gold classes (CoLA), -1 to 1, 0 for "
        "chance.",
        "- `eval_pearson`, `eval_spearmanr`: Pearson and Spearman correlation of predicted and gold numbers (STS-B); "
        "`eval_mse`: their mean squared difference.",
        "- `eval_combined_score`: the mean of the task's two metrics (MRPC, QQP, STS-B), as run_glue.py reports it.",
        "- a suffix `_mm`: the same on MNLI's mismatched validation set (the plain name is the matched one).",
        "- `eval_loss`: the mean cross-entropy (regression: squared error) on the evaluation set.",
    ]
    return "\n".join(lines) + "\n"
