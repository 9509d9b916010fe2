"""Sentence and sentence-pair classification: what fine-tuning (finetune_roberta_classification.py), labelling
(classify.py) and the notebook share.

Data layout: an example is a row with a label column (`label`) and one or two text columns (`sentence`, or
`sentence1` and `sentence2`, as transformers' run_glue.py reads them); a pair is encoded as RoBERTa was pretrained
to read two segments, `<s> A </s></s> B </s>`, and the head reads the `<s>` token.

Sections:
  * GLUE: the nine tasks of nyu-mll/glue at a pinned revision (`GLUE_TASKS`: columns, labels, official metrics,
    validation splits, the recipe of fairseq's RoBERTa README and the published dev scores);
  * labels: `LabelSpace`, classes (strings or integers, in a fixed order) or a regression target, read from the
    training split and checked against the validation split;
  * metrics: `compute_metrics` and the functions it calls (accuracy, F1, Matthews correlation, Pearson and
    Spearman correlation), written here so that scoring needs no download (`evaluate.load("glue")` fetches its code
    from the Hub at run time) and no scikit-learn or scipy at run time; the tests check each against them;
  * inputs: `encode` (truncation counted) and `classify_texts`, the labelling function of classify.py.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils import UsageError, first_line

# ----------------------------------------------------------------------------------------------------------------
# GLUE
# ----------------------------------------------------------------------------------------------------------------

MIN_SEQ_LENGTH = 8  # <s> first </s></s> second </s> and a few tokens of text: fine-tuning and classify.py alike
GLUE_REPO = "nyu-mll/glue"
# The commit of nyu-mll/glue that main resolved to in July 2026 (parquet files, one folder per task, no loading
# script), as the Hub's resolve cache and pinned projects name it. A pinned sha is what is downloaded, so a run is
# reproducible whatever the repository becomes; --dataset_revision main takes the newest instead.
GLUE_REVISION = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task as nyu-mll/glue stores it, how it is scored, and how RoBERTa was fine-tuned on it."""

    title: str  # the name papers print: "MNLI"
    columns: tuple[str, ...]  # the text column, or the two of a pair
    labels: tuple[str, ...]  # class names in the dataset's label order; () for regression (STS-B)
    metrics: tuple[str, ...]  # the official metrics, as compute_metrics names them (the first is the main one)
    validation: tuple[tuple[str, str], ...] = (("", "validation"),)  # (metric suffix, split): MNLI has two
    # fairseq's examples/roberta/README.glue.md (its --lr and --max-sentences), inside the paper's Table 10 sweep
    learning_rate: float = 1e-5
    batch_size: int = 32
    published_base: str = "-"  # roberta-base dev, fairseq's RoBERTa README (median of five runs)
    published_large: str = "-"  # roberta-large dev, the paper's Table 5 (median of five runs)

    @property
    def regression(self) -> bool:
        return not self.labels


ENTAILMENT = ("entailment", "not_entailment")
GLUE_TASKS = {
    "cola": GlueTask("CoLA", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
                     batch_size=16, published_base="63.6", published_large="68.0"),
    "sst2": GlueTask("SST-2", ("sentence",), ("negative", "positive"), ("accuracy",),
                     published_base="94.8", published_large="96.4"),
    "mrpc": GlueTask("MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
                     batch_size=16, published_base="90.2", published_large="90.9"),
    "qqp": GlueTask("QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
                    published_base="91.9", published_large="92.2"),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), (), ("pearson", "spearmanr"), learning_rate=2e-5,
                     batch_size=16, published_base="91.2", published_large="92.4"),
    "mnli": GlueTask("MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
                     validation=(("", "validation_matched"), ("_mm", "validation_mismatched")),
                     published_base="87.6", published_large="90.2/90.2"),
    "qnli": GlueTask("QNLI", ("question", "sentence"), ENTAILMENT, ("accuracy",), published_base="92.8",
                     published_large="94.7"),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), ENTAILMENT, ("accuracy",), learning_rate=2e-5,
                    batch_size=16, published_base="78.7", published_large="86.6"),
    # Not in fairseq's recipe (the paper's WNLI number comes from a reformulation as SuperGLUE's WSC): RTE's here.
    "wnli": GlueTask("WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
                     learning_rate=2e-5, batch_size=16, published_large="91.3"),
}

# The paper's fine-tuning recipe (Table 10), the defaults of finetune_roberta_classification.py: a learning rate
# from {1e-5, 2e-5, 3e-5} and a batch of 16 or 32 (per GLUE task: fairseq's choice above), weight decay 0.1, a
# linear warmup over the first 6% of the updates and a linear decay to 0, up to 10 epochs, Adam with beta2 0.98 and
# epsilon 1e-6 (Table 9's values for fine-tuning too, as fairseq's GLUE commands pass them), dropout 0.1.
RECIPE = {"learning_rate": 2e-5, "batch_size": 16, "weight_decay": 0.1, "warmup_ratio": 0.06, "num_train_epochs": 10.0,
          "adam_beta2": 0.98, "adam_epsilon": 1e-6}



def check_max_seq_length(value: int | None) -> None:
    """--max_seq_length (None: the model's) must leave room for text beside RoBERTa's special tokens."""
    if value is not None and value < MIN_SEQ_LENGTH:
        raise UsageError(f"--max_seq_length {value} leaves no room for text (at least {MIN_SEQ_LENGTH} tokens)")

def glue_task(name: str) -> GlueTask:
    """The task of a --task_name ("MNLI", "sst-2" and "sst2" alike), or a UsageError listing the nine."""
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise UsageError(f"--task_name {name} is not a GLUE task; choose from {', '.join(GLUE_TASKS)} (or give your "
                         "own data with --train_file/--validation_file or --dataset_name)")
    return GLUE_TASKS[key]


# ----------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpace:
    """What the model predicts: `names` of the classes in index order, or a number (`names` is None)."""

    names: tuple[str, ...] | None
    origin: str = field(default="the training data", compare=False)  # whose labels they are, for messages

    @property
    def regression(self) -> bool:
        return self.names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.names is None else len(self.names)

    def id2label(self) -> dict[int, str] | None:
        return None if self.names is None else dict(enumerate(self.names))

    def encode(self, values: Sequence, where: str) -> list:
        """The model's targets for a split's label values: class indices, or floats; UsageError on a value that is
        not one of the classes (naming it, and how many rows have such values), or a row without a label."""
        _refuse_missing(values, where)
        if self.names is None:
            if (bad := next((v for v in values if not _is_number(v)), None)) is not None:
                raise UsageError(f"{where}: label {bad!r} is not a number, but the task is a regression")
            return [float(v) for v in values]
        index = {name: i for i, name in enumerate(self.names)}
        unknown = [v for v in values if _label_name(v) not in index]
        if unknown:
            examples = ", ".join(sorted({repr(_clip(_label_name(v))) for v in unknown})[:3])
            raise UsageError(f"{where}: {len(unknown):,} rows have labels {self.origin} never has ({examples}); "
                             f"the model can only predict {_short(self.names)}")
        return [index[_label_name(v)] for v in values]

    def decode(self, target: int | float) -> str | float:
        return float(target) if self.names is None else self.names[int(target)]


def _label_name(value) -> str:
    """How a label value is named: integers (1 and 1.0) as their integer, anything else as its text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _clip(text: str, limit: int = 40) -> str:
    """A label as shown in a message: a long one (a sentence given as the label column) cut short."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(_clip(name)) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return math.isfinite(value)
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def infer_label_space(values: Sequence, problem_type: str | None, where: str) -> LabelSpace:
    """The label space of a training split's label column: text or integer labels are classes (sorted: integers
    numerically, text alphabetically, as run_glue.py orders them), numbers with a fraction a regression target.
    `problem_type` ("classification" or "regression", from the flag) insists, and a column that contradicts it is
    a UsageError naming an example value."""
    _refuse_missing(values, where)
    if (row := next((i for i, v in enumerate(values) if isinstance(v, list | dict)), None)) is not None:
        raise UsageError(f"{where}: row {row + 1} has the label {values[row]!r}, a {type(values[row]).__name__}; "
                         "each row needs one label, a class or a number (several labels per row is not supported)")
    fractional = next((v for v in values if isinstance(v, float) and not v.is_integer()), None)
    if problem_type is None and fractional is None and all(isinstance(v, str) and _is_number(v) for v in values) \
            and (text := next((v for v in values if not float(v).is_integer()), None)) is not None:
        raise UsageError(f"{where}: the labels are text that reads as numbers ({text!r}): say whether they are a "
                         "number per example (--problem_type regression) or the names of classes (--problem_type "
                         "classification)")
    if problem_type == "regression":
        if bad := next((v for v in values if not _is_number(v)), None):
            raise UsageError(f"{where}: label {bad!r} is not a number, but the task is a regression (a number per "
                             "example); give numeric labels, or a classification task")
        return LabelSpace(None)
    if fractional is not None:
        if problem_type == "classification":
            raise UsageError(f"{where}: label {fractional!r} is a number with a fraction, a regression target, but the "
                             "task is a classification; give class labels, or --problem_type regression")
        return LabelSpace(None)
    names = sorted({_label_name(v) for v in values}, key=lambda n: (0, int(n), n) if _is_integer_text(n) else (1, 0, n))
    if len(names) < 2:
        raise UsageError(f"{where}: every row has the label {names[0]!r}; a classifier needs at least two classes "
                         "(or --problem_type regression for a numeric target)")
    return LabelSpace(tuple(names))


def _refuse_missing(values: Sequence, where: str) -> None:
    """UsageError when rows have no label (null, empty, NaN: a CSV's empty cell), counted, the first named."""
    missing = [i for i, v in enumerate(values) if v is None or isinstance(v, float) and math.isnan(v) or v == ""]
    if missing:
        raise UsageError(f"{where}: {len(missing):,} rows have no label (the first is row {missing[0] + 1})")


def _is_integer_text(text: str) -> bool:
    return text.lstrip("-").isdigit()


def task_label_space(task: GlueTask, values: Sequence, where: str) -> LabelSpace:
    """A GLUE task's fixed label space, with the split's values checked against it (names or their indices)."""
    if task.regression:
        return infer_label_space(values, "regression", where)
    if next((v for v in values if isinstance(v, float) and not v.is_integer()), None) is not None:
        infer_label_space(values, "classification", where)  # raises: a regression target for a classification task
    return LabelSpace(task.labels, origin=f"GLUE {task.title}")


def task_label_names(task: GlueTask, values: Sequence) -> list:
    """A GLUE split's labels as class names: nyu-mll/glue stores indices into the task's names."""
    if task.regression:
        return list(values)
    return [task.labels[int(float(v))] if _is_number(v) and float(v).is_integer() and 0 <= float(v) < len(task.labels)
            else v for v in values]  # float(): "1" and "1.0" in a text column too; anything else is named as it is


# ----------------------------------------------------------------------------------------------------------------
# Metrics (each checked against scikit-learn or scipy in the tests)
# ----------------------------------------------------------------------------------------------------------------


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's for MRPC and QQP: class 1, "equivalent" / "duplicate"); 0 when the class
    is neither predicted nor present (scikit-learn's zero_division=0)."""
    tp = np.sum((predictions == positive) & (labels == positive))
    wrong = np.sum((predictions == positive) != (labels == positive))
    return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """The mean over classes of each class's F1 (scikit-learn's average="macro" over the classes that occur in the
    labels or the predictions)."""
    present = np.union1d(np.unique(labels), np.unique(predictions))
    return float(np.mean([f1(predictions, labels, positive=c) for c in present if 0 <= c < num_labels]))


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (CoLA's metric), in the multi-class form scikit-learn computes; 0 when undefined."""
    classes = np.union1d(labels, predictions)
    true = np.searchsorted(classes, labels)
    predicted = np.searchsorted(classes, predictions)
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (true, predicted), 1)
    t_sum, p_sum, n = confusion.sum(axis=1), confusion.sum(axis=0), confusion.sum()
    covariance = np.trace(confusion) * n - t_sum @ p_sum
    denominator = math.sqrt((n * n - p_sum @ p_sum) * (n * n - t_sum @ t_sum))
    return float(covariance / denominator) if denominator else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation coefficient (STS-B's main metric); NaN when either side is constant, as scipy."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(np.clip(dx @ dy / denominator, -1.0, 1.0)) if denominator else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy.stats.rankdata's "average")."""
    order = np.argsort(x, kind="stable")
    sorted_x = np.asarray(x)[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's of the ranks."""
    return pearson(_ranks(np.asarray(x)), _ranks(np.asarray(y)))


def compute_metrics(metrics: Sequence[str], predictions: np.ndarray, labels: np.ndarray,
                    num_labels: int) -> dict[str, float]:
    """The named metrics of predicted classes (or numbers, for regression) against the labels, as fractions (as
    transformers' run_glue.py reports them); for the GLUE tasks with two metrics `combined_score` is their mean, as
    run_glue.py adds it."""
    compute = {"accuracy": lambda: accuracy(predictions, labels), "f1": lambda: f1(predictions, labels),
               "macro_f1": lambda: macro_f1(predictions, labels, num_labels),
               "matthews_correlation": lambda: matthews_correlation(predictions, labels),
               "pearson": lambda: pearson(predictions, labels), "spearmanr": lambda: spearman(predictions, labels),
               "mse": lambda: float(np.mean((np.asarray(predictions, float) - labels) ** 2))}
    scores = {name: compute[name]() for name in metrics}
    if tuple(metrics) in (("accuracy", "f1"), ("pearson", "spearmanr")):  # GLUE's MRPC, QQP and STS-B
        scores["combined_score"] = float(np.mean(list(scores.values())))
    return scores


def shown_scores(scores: dict) -> str:
    """`accuracy 81.20, accuracy_mm 80.10`: the `eval_` metrics of an evaluation x 100, as GLUE tables print them
    (the mean squared error as it is; the loss and the runtime left out)."""
    return ", ".join(f"{k.removeprefix('eval_')} {v if 'mse' in k else 100 * v:.2f}" for k, v in scores.items()
                     if k.startswith("eval_") and v is not None and not k.startswith(("eval_loss", "eval_runtime")))


def metrics_for(task: GlueTask | None, labels: LabelSpace) -> tuple[str, ...]:
    """The metrics of a run: a GLUE task's official ones; for other data accuracy and macro-F1 (classes) or Pearson,
    Spearman and the mean squared error (regression)."""
    if task is not None:
        return task.metrics
    return ("pearson", "spearmanr", "mse") if labels.regression else ("accuracy", "macro_f1")


def predictions_from_logits(logits: np.ndarray, labels: LabelSpace) -> np.ndarray:
    """Predicted class indices (argmax), or the predicted numbers (regression)."""
    logits = np.asarray(logits)
    return logits.reshape(-1) if labels.regression else logits.argmax(axis=-1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# Inputs and predictions
# ----------------------------------------------------------------------------------------------------------------

DATA_SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "json"}  # a data file's suffix -> datasets' builder


def load_data_file(path: str, flag: str, nothing_to: str, **kwargs):
    """A CSV or JSON lines file (`path`, given as `flag`) as a datasets.Dataset. A file without a row (a CSV file
    with only its header) is a UsageError saying there is nothing `nothing_to` ("train on", "label"), and one that
    datasets cannot parse is one with the parser's own reason (datasets logs it as an extra line and raises a
    generic error). `kwargs` go to datasets.load_dataset."""
    import datasets

    builder = DATA_SUFFIXES[Path(path).suffix.lower()]
    if not _has_rows(Path(path).expanduser(), header=builder == "csv"):
        raise UsageError(f"{flag} {path} is empty: there is nothing to {nothing_to}")
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()  # "Generating train split" bars, in a log
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to read file ..." line: said below
    try:
        return datasets.load_dataset(builder, data_files=str(Path(path).expanduser()), split="train", **kwargs)
    except Exception as error:  # malformed CSV or JSON: say which file and the parser's reason
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise UsageError(f"{flag} {path} could not be read as {builder} ({type(cause).__name__}: "
                         f"{first_line(cause, 200)})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)


def _has_rows(path: Path, header: bool) -> bool:
    """Whether a data file has a row beyond its header (read only as far as that row)."""
    with open(path, "rb") as f:
        lines = (line for line in f if line.strip())
        return next(itertools.islice(lines, int(header), None), None) is not None



def check_texts(values: Sequence, column: str, where: str) -> int:
    """A text column's values are text (the tokenizer fails on anything else with a message that names neither the
    row nor the column): UsageError on the first row that is missing or not a string. Returns how many are empty
    (or only spaces), which the tokenizer accepts as a text of no words."""
    for row, value in enumerate(values, start=1):
        if not isinstance(value, str):
            empty = value is None or isinstance(value, float) and math.isnan(value)  # a CSV's empty cell is NaN
            what = "has no text" if empty else f"holds {value!r} ({type(value).__name__}), not text"
            raise UsageError(f"{where}: row {row:,} {what} in column {column!r}; every row needs its text")
    return sum(not value.strip() for value in values)


def encode(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> tuple[dict, int]:
    """(the tokenizer's encodings truncated to `max_length` tokens, how many inputs were longer): a pair loses
    tokens from its longer side first, as transformers truncates ("longest_first")."""
    full = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=False, verbose=False)
    truncated = sum(len(ids) > max_length for ids in full["input_ids"])
    if not truncated:
        return full, 0
    return tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                     max_length=max_length), truncated


def classify_texts(model, tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                   max_length: int, batch_size: int = 32) -> list[dict]:
    """Label texts (or text pairs) with a fine-tuned RobertaForSequenceClassification: per input `label` (the class
    name, or the number for regression), `score` (its probability; the number itself for regression) and
    `scores` ({class: probability}). The inputs are encoded as in fine-tuning, truncated to `max_length` tokens."""
    space = LabelSpace(None if model.config.problem_type == "regression" else
                       tuple(model.config.id2label[i] for i in range(model.config.num_labels)))
    device = next(model.parameters()).device
    results = []
    model.eval()
    for begin in range(0, len(texts), batch_size):
        chunk = slice(begin, begin + batch_size)
        encodings, _ = encode(tokenizer, texts[chunk], pairs[chunk] if pairs is not None else None, max_length)
        batch = tokenizer.pad(encodings, return_tensors="pt")
        with torch.no_grad():
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).logits.float().cpu()
        results += [_prediction(row, space) for row in logits.numpy()]
    return results


def _prediction(logits: np.ndarray, space: LabelSpace) -> dict:
    if space.regression:
        return {"label": float(logits[0]), "score": float(logits[0])}
    probabilities = softmax(logits)
    best = int(probabilities.argmax())
    return {"label": space.names[best], "score": float(probabilities[best]),
            "scores": {name: float(p) for name, p in zip(space.names, probabilities, strict=True)}}
