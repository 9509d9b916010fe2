"""The question-answering run folder finetune_roberta_qa.py writes, and ask.py reads: its names, and the only code
that writes or reads its records.

    <working_directory>/<experiment_name>/
        config.json, model.safetensors, tokenizer files   the fine-tuned model (a model folder: model_folder.py)
        eval_results.json         the scores, where the backbone came from, what the data checks found, the history
        predictions.json          {question id: predicted answer}, "" for "no answer": the official scripts' input
        predictions_detail.json   per question: question, gold answers, prediction, score, no-answer probability
        finetune_args.json        the resolved arguments (ask.py reads the window and answer settings there)
        README.md                 what each file and each metric field means
        checkpoints/checkpoint-N/ the Trainer's checkpoints (with --save_steps), each a model folder too
        runs/, wandb/             TensorBoard's and Weights & Biases' files (--report_to)
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from folders import LOCK_FILE, OutputKind, write_json
from model_folder import CONFIG_FILE, SAFETENSORS_FILE
from model_folder import WRITTEN as MODEL_FILES
from qa import squad_question_scores

RUN_RECORD = "finetune_args.json"
RESULTS_FILE = "eval_results.json"
PREDICTIONS_FILE = "predictions.json"
DETAILS_FILE = "predictions_detail.json"
README_FILE = "README.md"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_CHECKPOINT = re.compile(r"checkpoint-\d+")  # the Trainer's name for its checkpoints
TRAINER_CHECKPOINT_FOLDER = f"{CHECKPOINTS_DIR}/checkpoint-N"  # for messages
TRAINING_ARGS = "training_args.bin"  # the Trainer's, saved beside the model
TRAINER_STATE = "trainer_state.json"  # the Trainer's, in each of its checkpoints
LOGGER_DIRS = ("runs", "wandb")  # TensorBoard's (TENSORBOARD_LOGGING_DIR) and Weights & Biases' (WANDB_DIR)
TENSORBOARD_DIR, WANDB_DIR = LOGGER_DIRS
_RECORDS = (RUN_RECORD, RESULTS_FILE, PREDICTIONS_FILE, DETAILS_FILE)

QA_RUN = OutputKind(
    "question-answering run folder", "finetune_roberta_qa.py", records=(RUN_RECORD,),
    made=(*_RECORDS, *(name + ".tmp" for name in _RECORDS), CHECKPOINTS_DIR, *MODEL_FILES, TRAINING_ARGS,
          README_FILE, *LOGGER_DIRS, LOCK_FILE),
    inner=TRAINER_CHECKPOINT)


def write_run_record(run_dir: Path, record: dict) -> None:
    write_json(run_dir / RUN_RECORD, record)


def run_record(folder: Path, record: str = RUN_RECORD) -> dict:
    """The `record` (RUN_RECORD; classification_run_folder's for its runs) of the run that made `folder` (the run
    folder, or a Trainer checkpoint inside it), else {}."""
    for candidate in (folder, folder.parent.parent):
        if (candidate / record).is_file():
            try:
                return json.loads((candidate / record).read_text())
            except (OSError, json.JSONDecodeError):
                return {}
    return {}


def unfinished_run(folder: Path, record: str = RUN_RECORD) -> bool:
    """A run folder (recognised by `record`) whose run has not saved its model yet."""
    return folder.is_dir() and not (folder / CONFIG_FILE).is_file() and (folder / record).is_file()


def trainer_checkpoints(run_dir: Path) -> list[Path]:
    """The Trainer's checkpoint folders in a run folder, oldest first (none without --save_steps)."""
    folder = run_dir / CHECKPOINTS_DIR
    found = [p for p in folder.iterdir() if TRAINER_CHECKPOINT.fullmatch(p.name) and p.is_dir()] \
        if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def stopped_before_the_end(folder: Path, record: str = RUN_RECORD) -> bool:
    """A run folder (recognised by `record`) whose run was stopped (a signal, a crash) before it wrote its results:
    fine-tuning does not resume, so only --overwrite starts it again."""
    return (folder / record).is_file() and not (folder / RESULTS_FILE).is_file()


def trainer_output_dir(run_dir: Path, save_steps: int) -> Path:
    """Where the Trainer writes: checkpoints/ with checkpoints, else the run folder itself (no empty folder made)."""
    return run_dir / CHECKPOINTS_DIR if save_steps else run_dir


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / RESULTS_FILE).read_text())


def prediction_details(examples, answers: dict[str, dict], version_2: bool) -> list[dict]:
    """Per question, in evaluation order: what was asked, what is right, what was answered, and its scores."""
    references = {qid: list(a["text"]) for qid, a in zip(examples["id"], examples["answers"], strict=True)}
    predictions = {qid: answer["answer"] for qid, answer in answers.items()}
    exact, f1 = squad_question_scores(predictions, references, version_2)
    return [{"id": qid, "question": question, "gold_answers": references[qid], "prediction": answers[qid]["answer"],
             "start": answers[qid]["start"], "score": round(answers[qid]["score"], 4),
             "no_answer_probability": round(answers[qid]["no_answer_probability"], 4), "exact": exact[qid],
             "f1": round(f1[qid], 4)}
            for qid, question in zip(examples["id"], examples["question"], strict=True)]


def write_results(run_dir: Path, args, trainer, validation, counts: dict, provenance: dict, data: dict) -> dict:
    """The results of a finished run (the trainer's last evaluation): scores, predictions, details, README."""
    scores, answers = trainer.last_scores, trainer.last_answers
    history = [{k.removeprefix("eval_"): v for k, v in entry.items()
                if k in ("step", "eval_exact_match", "eval_f1", "eval_HasAns_f1", "eval_NoAns_f1", "eval_best_f1")}
               for entry in trainer.state.log_history if "eval_f1" in entry]
    no_answer = sum(1 for answer in answers.values() if not answer["answer"])
    results = {**scores, "no_answer_predictions": no_answer, **counts, "global_step": trainer.state.global_step,
               "version_2_with_negative": args.version_2_with_negative, "backbone": provenance, "data": data,
               "history": history}
    write_json(run_dir / RESULTS_FILE, results)
    write_json(run_dir / PREDICTIONS_FILE, {qid: answer["answer"] for qid, answer in answers.items()})
    write_json(run_dir / DETAILS_FILE, prediction_details(validation, answers, "exact" in scores))
    (run_dir / README_FILE).write_text(run_readme(args, results))
    return results


def run_readme(args: argparse.Namespace, results: dict) -> str:
    """The run folder's README.md: what each file and each number is."""
    v2 = "exact" in results
    lines = [
        f"# {args.experiment_name}: RoBERTa fine-tuned for extractive question answering",
        "",
        f"Made by `finetune_roberta_qa.py` from the {args.pretrained_backbone} backbone "
        f"(weights: {results['backbone']['weights']}), on {results['data']['source']}.",
        f"Exact match {results['exact_match']:.2f}, F1 {results['f1']:.2f} on {results['eval_samples']:,} "
        "evaluation questions" + (f" (answerable ones: F1 {results['HasAns_f1']:.2f}; 'no answer' predicted for "
                                  f"{results['no_answer_predictions']:,})." if "HasAns_f1" in results else "."),
        "",
        "| file | what it is |",
        "| --- | --- |",
        f"| `{CONFIG_FILE}`, `{SAFETENSORS_FILE}`, tokenizer files | the fine-tuned model in transformers' format: "
        "`python ask.py --model <this folder> --question ... --context ...`, or transformers' "
        "`AutoModelForQuestionAnswering.from_pretrained` |",
        f"| `{RESULTS_FILE}` | the scores (below), the counts of questions and windows, where the weights, the "
        "architecture and the tokenizer came from (`backbone`), what the data checks found (`data`), and the "
        "scores at each evaluation (`history`) |",
        f"| `{PREDICTIONS_FILE}` | `{{question id: predicted answer}}`, `\"\"` for \"no answer\": the input of the "
        "official SQuAD evaluation scripts |",
        f"| `{DETAILS_FILE}` | one entry per question: `question`, `gold_answers`, `prediction`, `start` (its "
        "character offset in the paragraph), `score` (start + end logit), `no_answer_probability`, `exact` (1 or "
        "0) and `f1` (0 to 1) |",
        f"| `{RUN_RECORD}` | the arguments of the run, the flags that played no part (`not_used`), and the "
        "library versions |",
        f"| `{CHECKPOINTS_DIR}/` | Trainer checkpoints (with `--save_steps` above 0) |",
        f"| `{LOCK_FILE}` | held by the run writing here: a second run into this folder is refused while it lives |",
        "",
        "Scores are 0 to 100, as the official SQuAD scripts give them. Answers are compared after normalisation "
        "(lowercase, no punctuation, no articles a/an/the, single spaces).",
        "",
        "- `exact_match`: the share of questions whose prediction equals one of the gold answers.",
        "- `f1`: per question, the token overlap (harmonic mean of precision and recall) with the best-matching "
        "gold answer; averaged.",
    ]
    if v2:
        lines += [
            "- `exact`, `f1`, `total`: the official SQuAD 2.0 script's fields over all questions (`exact` is "
            "`exact_match`); an unanswerable question counts as right only when the prediction is empty.",
            "- `HasAns_exact`, `HasAns_f1`, `HasAns_total`: the same over the answerable questions only.",
            "- `NoAns_exact`, `NoAns_f1`, `NoAns_total`: the same over the unanswerable questions only (exact and "
            "F1 are equal there: right or wrong). A model that never answers scores 100 here and 0 on HasAns.",
            "- `best_exact`, `best_f1`: the scores had \"no answer\" been predicted for every question whose "
            "no-answer probability is above `best_exact_thresh` / `best_f1_thresh` (the official script's "
            "search over thresholds).",
            "- `no_answer_predictions`: how many predictions are \"no answer\".",
            "",
            "The no-answer probability of a question is sigmoid(score of `<s>` - score of the best span), the "
            "score of a span being its start logit + end logit (the lowest `<s>` score over the question's "
            "windows). \"No answer\" is predicted where it is above 0.5; `ask.py --null_score_diff_threshold "
            "log(t / (1 - t))` applies another threshold t.",
        ]
    return "\n".join(lines) + "\n"
