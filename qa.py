"""SQuAD question answering: what fine-tuning (finetune_roberta_qa.py), asking (ask.py) and the notebook share.

Data layout: an example is a row {id, context, question, answers: {text: [...], answer_start: [...]}} (the Hub's
`rajpurkar/squad` columns); a feature is one window of at most `max_length` tokens, `<s> question </s></s>
context-slice </s>`, consecutive windows of a long context overlapping by `doc_stride` tokens.

Sections:
  * settings: `QA_DEFAULTS` (window length, stride, answer search) and `check_window_budget`, the one rule for how
    much of a window the question may keep;
  * SQuAD files: `read_squad_file` (official v1.1/v2.0 JSON), `audit_squad` (answers that do not match their
    context), `check_qa_tokenizer`;
  * windows: `prepare_qa_train_features` (with answer labels) and `prepare_qa_eval_features` (with offsets);
  * answers: `best_answers` (the one span search), `postprocess_qa_predictions` and `answer_questions`;
  * metrics: `compute_squad_metrics`, equal to the official v1.1 and v2.0 scripts' output (computed here because
    `evaluate.load("squad")` fetches its code from the Hub at run time and fails offline), `squad_v2_summary`.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tokenization import tokenizer_mismatch
from utils import UsageError

# The defaults of BERT's and RoBERTa's SQuAD runs: windows of 384 tokens sharing 128, the 20 best starts and ends of
# each window tried, answers of at most 30 tokens. finetune_roberta_qa.py's flags default to these; ask.py uses
# them for a model whose run recorded none.
QA_DEFAULTS = {"max_seq_length": 384, "doc_stride": 128, "n_best_size": 20, "max_answer_length": 30}
WINDOW_SPECIAL_TOKENS = 4  # <s> question </s></s> context </s>
MIN_QUESTION_TOKENS = 16  # room a window must leave for the question beside the overlapping context


# ----------------------------------------------------------------------------------------------------------------
# Settings: the window budget
# ----------------------------------------------------------------------------------------------------------------


def question_room(max_length: int, doc_stride: int, special_tokens: int = WINDOW_SPECIAL_TOKENS) -> int:
    """Tokens a window of `max_length` leaves for the question once the special tokens and the `doc_stride` tokens
    of context it shares with the next window are counted."""
    return max_length - doc_stride - special_tokens


def check_window_budget(max_seq_length: int, doc_stride: int) -> None:
    """UsageError unless windows of --max_seq_length sharing --doc_stride tokens leave room for a question."""
    if doc_stride >= max_seq_length:
        raise UsageError(f"--doc_stride {doc_stride} must be below --max_seq_length {max_seq_length} "
                         "(it is the overlap of consecutive windows)")
    if max_seq_length - WINDOW_SPECIAL_TOKENS - MIN_QUESTION_TOKENS < 1:
        raise UsageError(f"--max_seq_length {max_seq_length} is too short for a question and a context "
                         f"(at least {MIN_QUESTION_TOKENS + WINDOW_SPECIAL_TOKENS + 1})")
    room = question_room(max_seq_length, doc_stride)
    if room < MIN_QUESTION_TOKENS:
        suggestion = min(max_seq_length // 3, max_seq_length - WINDOW_SPECIAL_TOKENS - MIN_QUESTION_TOKENS)
        raise UsageError(f"--doc_stride {doc_stride} leaves {room} tokens of --max_seq_length {max_seq_length} for "
                         f"the question; keep at least {MIN_QUESTION_TOKENS} (e.g. --doc_stride {suggestion})")


# ----------------------------------------------------------------------------------------------------------------
# SQuAD files and their audit
# ----------------------------------------------------------------------------------------------------------------


def squad_rows(squad: dict) -> list[dict]:
    """Flatten SQuAD's official layout (data[].paragraphs[].qas[], v1.1 or v2.0) into one row per question.

    A v2.0 question marked `is_impossible` has no answers (its `plausible_answers` are not answers)."""
    rows = []
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            if not isinstance(context, str):
                raise TypeError(f"a context is {type(context).__name__}, not text")
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible", False) else qa["answers"]
                rows.append({
                    "id": str(qa["id"]), "title": str(article.get("title", "")), "context": context,
                    "question": str(qa["question"]),
                    "answers": {"text": [str(a["text"]) for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers]},
                })
    return rows


def read_squad_file(path: str | os.PathLike, flag: str) -> list[dict]:
    """Rows of a SQuAD-layout JSON file; one clear UsageError naming the file when it cannot be read."""
    try:
        squad = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{flag} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {path} is a folder, not a SQuAD JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{flag} {path} is not readable JSON ({error})") from None
    try:
        rows = squad_rows(squad)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UsageError(f"{flag} {path} is not in SQuAD's JSON layout (data[].paragraphs[].qas[] with id, "
                         f"question, answers): {type(error).__name__} {error}") from None
    if not rows:
        raise UsageError(f"{flag} {path} holds no questions")
    return rows


@dataclass
class SquadAudit:
    """What `audit_squad` found in one split of SQuAD rows."""

    questions: int = 0
    unanswerable: int = 0  # questions without an answer (SQuAD 2.0)
    text_mismatch: list[str] = field(default_factory=list)  # ids: an answer text that is not at its answer_start
    start_outside: list[str] = field(default_factory=list)  # ids: an answer_start outside the context
    bad_label_rows: list[int] = field(default_factory=list)  # rows whose first answer (the training label) is bad

    @property
    def bad_questions(self) -> list[str]:
        """Ids of the questions with an answer that does not match the context, each once."""
        return list(dict.fromkeys(self.text_mismatch + self.start_outside))

    def describe(self, where: str, training: bool) -> str | None:
        """One line about the bad answers (None when there are none), saying what is done with them."""
        if not self.text_mismatch and not self.start_outside:
            return None
        parts = []
        if self.text_mismatch:
            parts.append(f"{len(self.text_mismatch):,} whose text is not the context's at answer_start (e.g. "
                         f"question {self.text_mismatch[0]})")
        if self.start_outside:
            parts.append(f"{len(self.start_outside):,} whose answer_start lies outside the context (e.g. question "
                         f"{self.start_outside[0]})")
        action = (f"the {len(self.bad_label_rows):,} training questions they label are skipped, as BERT's "
                  "run_squad.py does" if training else "they are kept: scoring compares answer texts only")
        return f"{where}: answers that do not match their context: {'; '.join(parts)}; {action}"


def audit_squad(ids: Iterable[str], contexts: Iterable[str], answers: Iterable[dict], *, where: str) -> SquadAudit:
    """Check SQuAD rows: duplicate question ids are a UsageError naming one; answers whose text is not found at
    `answer_start` (or empty), and `answer_start` values outside the context, are counted (see `SquadAudit`)."""
    audit, seen = SquadAudit(), set()
    for row, (qid, context, answer) in enumerate(zip(ids, contexts, answers, strict=True)):
        if qid in seen:
            raise UsageError(f"{where}: question id {qid!r} appears more than once; SQuAD ids must be unique "
                             "(answers and scores are keyed by id)")
        seen.add(qid)
        audit.questions += 1
        if not answer["text"]:
            audit.unanswerable += 1
            continue
        for k, (text, start) in enumerate(zip(answer["text"], answer["answer_start"], strict=True)):
            if not 0 <= start < len(context):
                bad = audit.start_outside
            elif not text or context[start : start + len(text)] != text:
                bad = audit.text_mismatch
            else:
                continue
            if not bad or bad[-1] != qid:
                bad.append(qid)
            if k == 0:
                audit.bad_label_rows.append(row)
    return audit


def check_qa_tokenizer(tokenizer, config, source: str) -> None:
    """UsageError unless `tokenizer` can cut SQuAD windows (a fast tokenizer: offsets mapping) and belongs to the
    model of `config` (a RobertaConfig), by tokenization's one rule (`tokenizer_mismatch`): its ids fit the
    embedding table, the table is not far larger (another tokenizer's), its special tokens have the model's ids."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"the tokenizer of {source} ({type(tokenizer).__name__}) has no offsets mapping; SQuAD "
                         "windows need a fast (Rust `tokenizers`) tokenizer with tokenizer.json")
    if mismatch := tokenizer_mismatch(tokenizer, config=config):
        raise UsageError(f"the tokenizer of {source} has {mismatch}: it is not the tokenizer the model was trained "
                         "with")

# ----------------------------------------------------------------------------------------------------------------
# Windows (features) and their answer labels
# ----------------------------------------------------------------------------------------------------------------


def _qa_windows(examples, tokenizer, max_length: int, doc_stride: int):
    """Tokenize question/context pairs into overlapping windows (one encoding per window, question first)."""
    questions = _fit_questions([q.lstrip() for q in examples["question"]], tokenizer, max_length, doc_stride)
    return tokenizer(questions, list(examples["context"]), truncation="only_second", max_length=max_length,
                     stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                     padding="max_length")


def _fit_questions(questions: list[str], tokenizer, max_length: int, doc_stride: int) -> list[str]:
    """Cut questions so long that no context window would fit beside them (the tokenizer would panic)."""
    budget = question_room(max_length, doc_stride, tokenizer.num_special_tokens_to_add(pair=True)) - 1
    if budget < 1:
        raise ValueError(f"doc_stride {doc_stride} leaves no room for a question in {max_length} tokens")
    offsets = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [q if len(o) <= budget else q[: o[budget - 1][1]] for q, o in zip(questions, offsets, strict=True)]


def _context_span(sequence_ids: list) -> tuple[int, int]:
    """First and last token index of the context (sequence 1) in one window."""
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return first, last


def _answer_tokens(offsets, sequence_ids, answers) -> tuple[int, int]:
    """Token indices of the answer's first and last token (inclusive), or (0, 0) when it is not all in the window."""
    if len(answers["answer_start"]) == 0:  # SQuAD 2.0 unanswerable question: point at <s>
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first, last = _context_span(sequence_ids)
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:  # overshoot by one, then step back
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def prepare_qa_train_features(examples, tokenizer, max_length: int = QA_DEFAULTS["max_seq_length"],
                              doc_stride: int = QA_DEFAULTS["doc_stride"]) -> dict:
    """Batched `datasets.map` function: SQuAD examples -> training windows with answer labels.

    Each window gets `start_positions`/`end_positions`, the indices of the answer's first and last token
    (inclusive), or 0 (the `<s>` token) for both when the answer is not entirely inside the window or the
    question has none. `tokenizer` must be a fast tokenizer (offsets mapping). Use with `remove_columns`.
    """
    encoded = _qa_windows(examples, tokenizer, max_length, doc_stride)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    offset_mapping = encoded.pop("offset_mapping")
    encoded["start_positions"], encoded["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        start, end = _answer_tokens(offsets, encoded.sequence_ids(i), examples["answers"][sample_map[i]])
        encoded["start_positions"].append(start)
        encoded["end_positions"].append(end)
    return dict(encoded)


def prepare_qa_eval_features(examples, tokenizer, max_length: int = QA_DEFAULTS["max_seq_length"],
                              doc_stride: int = QA_DEFAULTS["doc_stride"]) -> dict:
    """Batched `datasets.map` function: SQuAD examples -> evaluation windows (the same windows, in the same order,
    as `prepare_qa_train_features`).

    Each window carries `example_id` (its example's `id`) and `offset_mapping`, the (start, end) character span of
    each token in the context, None for tokens outside the context, so that `postprocess_qa_predictions` can map
    a token span back to text and reject spans in the question.
    """
    encoded = _qa_windows(examples, tokenizer, max_length, doc_stride)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    encoded["example_id"] = [examples["id"][s] for s in sample_map]
    encoded["offset_mapping"] = [
        [span if seq == 1 else None for span, seq in zip(offsets, encoded.sequence_ids(i), strict=True)]
        for i, offsets in enumerate(encoded["offset_mapping"])
    ]
    return dict(encoded)

# ----------------------------------------------------------------------------------------------------------------
# Answers: the span search over windows
# ----------------------------------------------------------------------------------------------------------------


def _window_offsets(features) -> list:
    """Per window, an (T, 3) int array of (in context, start char, end char) per token, read from `offset_mapping`.

    A datasets.Dataset is read through Arrow: turning ~400 (start, end) pairs per window into Python objects one
    window at a time would cost more than the post-processing itself."""
    if hasattr(features, "with_format"):  # a datasets.Dataset: its Arrow column, in the dataset's row order
        column = features.with_format("arrow")["offset_mapping"].combine_chunks()
    else:
        column = pa.array(list(features["offset_mapping"]), type=pa.list_(pa.list_(pa.int64())))
    tokens = column.flatten()  # one [start, end] per token; null outside the context
    table = np.stack([tokens.is_valid().to_numpy(zero_copy_only=False).astype(np.int64),
                      pc.list_element(tokens, 0).fill_null(0).to_numpy(zero_copy_only=False),
                      pc.list_element(tokens, 1).fill_null(0).to_numpy(zero_copy_only=False)], axis=1)
    bounds = column.offsets.to_numpy() - column.offsets[0].as_py()
    return [table[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _best_span(start_logits, end_logits, offsets, n_best_size: int, max_answer_length: int):
    """(score, start char, end char) of one window's best valid span, or None: among the top `n_best_size` starts
    and ends, end not before start, at most `max_answer_length` tokens, both in the context."""
    starts = np.argsort(start_logits)[::-1][:n_best_size]
    ends = np.argsort(end_logits)[::-1][:n_best_size]
    scores = start_logits[starts][:, None] + end_logits[ends][None, :]  # (n_best, n_best)
    length = ends[None, :] - starts[:, None] + 1
    valid = (offsets[starts, 0] == 1)[:, None] & (offsets[ends, 0] == 1)[None, :] & (length >= 1)
    valid &= length <= max_answer_length
    if not valid.any():
        return None
    i, j = np.unravel_index(np.where(valid, scores, -np.inf).argmax(), scores.shape)
    return float(scores[i, j]), int(offsets[starts[i], 1]), int(offsets[ends[j], 2])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def best_answers(examples, features, predictions, n_best_size: int = QA_DEFAULTS["n_best_size"],
                 max_answer_length: int = QA_DEFAULTS["max_answer_length"],
                 allow_no_answer: bool = False, null_score_diff_threshold: float = 0.0) -> dict[str, dict]:
    """Window logits -> one answer per example: the search that evaluation and `answer_questions` both use.

    `examples` has columns `id` and `context`; `features` (the output of `prepare_qa_eval_features`, a
    datasets.Dataset or a dict of columns) has columns `example_id` and `offset_mapping`; `predictions` is
    `(start_logits, end_logits)`, each (num_features, seq_len), row i for feature i. Returns, per example id,
    {"answer", "start", "end", "score", "no_answer_probability"}:

    * the answer is the best-scoring span over all the example's windows, the score of a span being its start
      logit + end logit, among the `n_best_size` top starts and ends of each window, with end >= start, at most
      `max_answer_length` tokens, both ends in the context; `start`/`end` are its character offsets in the
      context (`answer == context[start:end]`) and `score` its start + end logit;
    * the null score is the start + end logit of `<s>`, the lowest over the windows (BERT's run_squad.py), and
      `no_answer_probability` is sigmoid(null score - best span score): above 0.5 exactly when the null score
      wins. This is the "na_prob" the official SQuAD 2.0 script thresholds;
    * with `allow_no_answer`, the answer is empty when the null score beats the best span by more than
      `null_score_diff_threshold` (0 ⇔ a no-answer probability above 0.5; a threshold t on the probability is
      log(t / (1 - t)) here). An empty answer has start = end = 0 and the null score as its score. An example
      with no valid span at all (e.g. an empty context) gets the empty answer too, with probability 1.
    """
    start_logits, end_logits = np.asarray(predictions[0]), np.asarray(predictions[1])
    windows: dict[str, list[int]] = {}
    for i, example_id in enumerate(features["example_id"]):
        windows.setdefault(example_id, []).append(i)
    offsets = _window_offsets(features)
    answers = {}
    for example_id, context in zip(examples["id"], examples["context"], strict=True):
        best, null_score = None, float("inf")
        for i in windows.get(example_id, []):
            null_score = min(null_score, float(start_logits[i, 0] + end_logits[i, 0]))
            span = _best_span(start_logits[i], end_logits[i], offsets[i], n_best_size, max_answer_length)
            if span is not None and (best is None or span[0] > best[0]):
                best = span
        no_answer_probability = 1.0 if best is None else _sigmoid(null_score - best[0])
        if best is None or (allow_no_answer and null_score - best[0] > null_score_diff_threshold):
            answers[example_id] = {"answer": "", "start": 0, "end": 0, "score": null_score,
                                   "no_answer_probability": no_answer_probability}
        else:
            score, start, end = best
            answers[example_id] = {"answer": context[start:end], "start": start, "end": end, "score": score,
                                   "no_answer_probability": no_answer_probability}
    return answers


def postprocess_qa_predictions(examples, features, predictions, n_best_size: int = QA_DEFAULTS["n_best_size"],
                               max_answer_length: int = QA_DEFAULTS["max_answer_length"],
                               version_2_with_negative: bool = False,
                               null_score_diff_threshold: float = 0.0) -> dict[str, str]:
    """Per-window start/end logits -> {example id: answer text}: the answers of `best_answers` (see there), with
    the null answer "" allowed when `version_2_with_negative`."""
    answers = best_answers(examples, features, predictions, n_best_size, max_answer_length,
                           allow_no_answer=version_2_with_negative, null_score_diff_threshold=null_score_diff_threshold)
    return {example_id: answer["answer"] for example_id, answer in answers.items()}


def answer_questions(model, tokenizer, questions: Sequence[str], contexts: Sequence[str],
                     max_seq_length: int = QA_DEFAULTS["max_seq_length"], doc_stride: int = QA_DEFAULTS["doc_stride"],
                     n_best_size: int = QA_DEFAULTS["n_best_size"],
                     max_answer_length: int = QA_DEFAULTS["max_answer_length"], allow_no_answer: bool = False,
                     batch_size: int = 32, null_score_diff_threshold: float = 0.0) -> list[dict]:
    """Answer each question from its context with an extractive QA model: one dict per question, in order, with
    `answer` (text), `start` and `end` (character offsets: `answer == context[start:end]`), `score` (start + end
    logit of the answer) and `no_answer_probability`.

    The windows and the search are evaluation's own (`prepare_qa_eval_features`, `best_answers`): a context
    longer than `max_seq_length` tokens with its question is cut into windows overlapping by `doc_stride` tokens,
    and the best span over all windows wins. With `allow_no_answer` (SQuAD 2.0 models), the answer is empty
    (start = end = 0) where the null score wins by more than `null_score_diff_threshold`. `model` is this
    repository's `RobertaForQuestionAnswering` or a transformers `AutoModelForQuestionAnswering` (anything
    returning `start_logits`/`end_logits`); it runs on its own device, in eval mode, without gradients, and is left
    in the mode it was in. `tokenizer` must be fast (offsets mapping)."""
    questions, contexts = list(questions), list(contexts)
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts: give one context per question")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} has no offsets mapping: answering needs a fast tokenizer")
    if not questions:
        return []
    examples = {"id": [str(i) for i in range(len(questions))], "question": questions, "context": contexts}
    features = prepare_qa_eval_features(examples, tokenizer, max_length=max_seq_length, doc_stride=doc_stride)
    input_ids, attention_mask = torch.tensor(features["input_ids"]), torch.tensor(features["attention_mask"])
    device = next(model.parameters()).device
    logits = np.full((2, *input_ids.shape), -1e9, dtype=np.float32)  # positions cut off below never win
    # Windows of similar length share a batch, cut to their longest: the padding a short window would carry in a
    # batch of full windows costs as much as real tokens. (Right padding only; else every window keeps its width.)
    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for begin in range(0, len(order), batch_size):
                rows = order[begin : begin + batch_size]
                width = int(lengths[rows].max()) if tokenizer.padding_side == "right" else input_ids.size(1)
                output = model(input_ids=input_ids[rows, :width].to(device),
                               attention_mask=attention_mask[rows, :width].to(device))
                for k, name in enumerate(("start_logits", "end_logits")):
                    logits[k, rows.numpy(), :width] = output[name].float().cpu().numpy()
    finally:
        model.train(was_training)
    answers = best_answers(examples, features, (logits[0], logits[1]), n_best_size, max_answer_length,
                           allow_no_answer=allow_no_answer, null_score_diff_threshold=null_score_diff_threshold)
    return [answers[example_id] for example_id in examples["id"]]

# ----------------------------------------------------------------------------------------------------------------
# The official SQuAD v1.1 and v2.0 metrics
# ----------------------------------------------------------------------------------------------------------------


def normalize_squad_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the official SQuAD v1.1 script (on normalised text)."""
    pred_tokens, gold_tokens = normalize_squad_answer(prediction).split(), normalize_squad_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _squad_v2_f1(gold: str, prediction: str) -> float:
    """compute_f1 of the official v2.0 script: as v1.1, except that two empty answers agree (F1 1)."""
    gold_tokens = normalize_squad_answer(gold).split() if gold else []
    pred_tokens = normalize_squad_answer(prediction).split() if prediction else []
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    num_same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_question_scores(predictions: dict[str, str], references: dict[str, list[str]],
                          version_2: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Per question (exact match, F1), each 0 or 1 / in [0, 1], the maximum over the gold answers.

    v2.0 (the official script's get_raw_scores): gold answers that normalise to nothing are dropped, and a
    question left without any is scored against [""] (only an empty prediction is right). v1.1: every gold
    answer counts as it is. A question without a prediction is scored as if the prediction were ""."""
    exact, f1 = {}, {}
    for qid, golds in references.items():
        prediction = predictions.get(qid, "")
        if version_2:
            golds = [g for g in golds if normalize_squad_answer(g)] or [""]
            exact[qid] = max(float(normalize_squad_answer(g) == normalize_squad_answer(prediction)) for g in golds)
            f1[qid] = max(_squad_v2_f1(g, prediction) for g in golds)
        else:
            exact[qid] = max(float(normalize_squad_answer(g) == normalize_squad_answer(prediction)) for g in golds)
            f1[qid] = max(_squad_f1(prediction, g) for g in golds)
    return exact, f1


def _best_no_answer_threshold(predictions: dict[str, str], scores: dict[str, float], na_probs: dict[str, float],
                              has_answer: dict[str, bool]) -> tuple[float, float]:
    """find_best_thresh of the official v2.0 script, step for step: walk the questions by increasing no-answer
    probability (a stable sort: ties keep their order in `na_probs`), starting from the score of answering
    nothing (every unanswerable question right), and keep the best running total and the probability where it
    was reached. Note that a prediction counts as an answer by its raw text (`"the"` is not "no answer" here)."""
    current = best = sum(1 for qid in has_answer if not has_answer[qid])
    best_threshold = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions[qid] else 0
        current += diff
        if current > best:
            best, best_threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), best_threshold


def compute_squad_metrics(predictions: dict[str, str], references: dict[str, list[str]],
                          no_answer_probabilities: dict[str, float] | None = None) -> dict[str, float]:
    """Official SQuAD scores on 0-100 over the questions in `references`.

    `predictions` maps a question id to the predicted answer text ("" = no answer; a missing id counts as "");
    `references` maps a question id to its gold answer texts, an empty list for an unanswerable question.

    SQuAD 1.1 data (every question answerable) without `no_answer_probabilities`: {"exact_match", "f1"}, the
    official v1.1 script (answers normalised: lowercase, no punctuation, no articles, single spaces; exact match
    and token F1 each the maximum over the gold answers).

    Data with unanswerable questions, or `no_answer_probabilities` given ({id: probability that there is no
    answer}, e.g. `best_answers`' no_answer_probability): the official v2.0 script (evaluate-v2.0.py) with its
    defaults, key for key: `exact`, `f1`, `total`; `HasAns_exact`, `HasAns_f1`, `HasAns_total` over the answerable
    questions and `NoAns_*` over the others (each group only where it has questions); `best_exact`,
    `best_exact_thresh`, `best_f1`, `best_f1_thresh`: the scores had every question whose no-answer probability is
    above the threshold been answered with "", at the best threshold (without probabilities, 0.0 for every
    question, the script's default). `exact_match` and `f1` repeat `exact` and `f1` for code written for v1.1.
    """
    total = len(references)
    if total == 0:
        return {"exact_match": 0.0, "f1": 0.0}
    predictions = {**predictions, **{qid: "" for qid in references if qid not in predictions}}
    version_2 = no_answer_probabilities is not None or not all(references.values())
    exact, f1 = squad_question_scores(predictions, references, version_2)
    if not version_2:
        return {"exact_match": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total}
    if no_answer_probabilities is None:
        na_probs = {qid: 0.0 for qid in predictions}
    else:
        missing = [qid for qid in references if qid not in no_answer_probabilities]
        if missing:
            raise ValueError(f"no_answer_probabilities lacks {len(missing)} of the questions, e.g. {missing[0]!r}")
        na_probs = dict(no_answer_probabilities)
    has_answer = {qid: bool(golds) for qid, golds in references.items()}
    # apply_no_ans_threshold with the script's default threshold 1.0: a probability above it predicts "" instead
    exact_thresh = {q: float(not has_answer[q]) if na_probs[q] > 1.0 else s for q, s in exact.items()}
    f1_thresh = {q: float(not has_answer[q]) if na_probs[q] > 1.0 else s for q, s in f1.items()}
    results = {"exact": 100.0 * sum(exact_thresh.values()) / total, "f1": 100.0 * sum(f1_thresh.values()) / total,
               "total": total}
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        group = [qid for qid in references if has_answer[qid] == wanted]
        if group:
            results[f"{prefix}_exact"] = 100.0 * sum(exact_thresh[q] for q in group) / len(group)
            results[f"{prefix}_f1"] = 100.0 * sum(f1_thresh[q] for q in group) / len(group)
            results[f"{prefix}_total"] = len(group)
    results["best_exact"], results["best_exact_thresh"] = _best_no_answer_threshold(predictions, exact, na_probs,
                                                                                    has_answer)
    results["best_f1"], results["best_f1_thresh"] = _best_no_answer_threshold(predictions, f1, na_probs, has_answer)
    return {"exact_match": results["exact"], **results}


def squad_v2_summary(scores: dict, no_answer_predictions: int) -> list[str]:
    """Log lines for the SQuAD 2.0 fields of `compute_squad_metrics` ([] for v1.1 scores): the HasAns/NoAns
    breakdown, how often "no answer" was predicted, the best threshold, and a warning when the model (nearly)
    never answers, whose overall score is then what answering nothing scores."""
    if "exact" not in scores:
        return []
    n = scores["total"]
    parts = [f"{group} exact {scores[f'{group}_exact']:.2f} f1 {scores[f'{group}_f1']:.2f} "
             f"({scores[f'{group}_total']:,})" for group in ("HasAns", "NoAns") if f"{group}_total" in scores]
    lines = [f"SQuAD 2.0: {'; '.join(parts)}; 'no answer' predicted for {no_answer_predictions:,} of {n:,}; best f1 "
             f"{scores['best_f1']:.2f} at no-answer probability {scores['best_f1_thresh']:.3f}"]
    if scores.get("HasAns_total") and no_answer_predictions >= 0.95 * n:
        lines.append(f"warning: the model answers 'no answer' to {no_answer_predictions:,} of {n:,} questions: its "
                     f"exact match {scores['exact']:.1f} is what answering nothing scores here (HasAns f1 "
                     f"{scores['HasAns_f1']:.1f})")
    return lines
