"""Ask a fine-tuned RoBERTa question-answering model about a text, or answer every question of a SQuAD file.

--model is a folder that finetune_roberta_qa.py wrote (its run folder, or a checkpoints/checkpoint-N inside it),
or any transformers-format RoBERTa question-answering folder or Hub id. The answer is a span of the context: the
context is cut into windows exactly as in evaluation (--max_seq_length tokens of question and context, consecutive
windows sharing --doc_stride tokens of context) and the best span over all windows wins; its score is its start
logit + end logit. With --allow_no_answer (the default for a model fine-tuned on SQuAD 2.0 data) the answer may be
"no answer", when the score of <s> beats the best span by more than --null_score_diff_threshold. Every answer comes
with its no-answer probability, sigmoid(<s> score - best span score), the quantity the official SQuAD 2.0 script
thresholds. The window and answer settings default to those the model was fine-tuned and evaluated with (its run
folder's finetune_args.json), else to finetune_roberta_qa.py's defaults.

With --squad_file, every question of a SQuAD-format JSON file (v1.1 or v2.0) is answered into --output, the
standard {question id: answer} predictions file ("" = no answer) that the official evaluation scripts read. Where
the file has gold answers, the official scores are printed as well: exact match and F1, and for SQuAD 2.0 the
HasAns/NoAns breakdown and the best no-answer threshold.

transformers 5 removed pipeline("question-answering"); this script and qa.answer_questions replace it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import model_folder
import qa_run_folder
from classification_run_folder import CLASSIFICATION_RUN
from folders import check_output_file, write_json
from model import RobertaForQuestionAnswering
from qa import (
    QA_DEFAULTS,
    answer_questions,
    audit_squad,
    check_qa_tokenizer,
    check_window_budget,
    compute_squad_metrics,
    question_budget,
    read_squad_file,
    squad_v2_summary,
)
from qa_run_folder import QA_RUN
from run_folder import PRETRAINING_RUN
from store import STORE
from utils import (
    ArgumentParser,
    DiskFull,
    HelpFormatter,
    UsageError,
    add_running_flags,
    looks_local,
    out_of_space,
    pick_device,
    run_cli,
)

CHUNK = 256  # questions answered between two progress lines of --squad_file
EPILOG = """examples:
  python ask.py --model runs/squad2 --question "Who founded the city?" --context "The city was founded in ..."
  python ask.py --model runs/squad2 --question "Who?" --question "When?" --context_file paragraph.txt --json
  python ask.py --model runs/squad2 --squad_file dev-v2.0.json --output runs/squad2/dev_predictions.json
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help=f"a finetune_roberta_qa.py run folder (or its {qa_run_folder.TRAINER_CHECKPOINT_FOLDER}), "
                        "or a transformers RoBERTa question-answering folder or Hub id")
    ask = p.add_argument_group("one context")
    ask.add_argument("--question", action="append", default=None,
                     help="a question about the context (repeat the flag for several)")
    ask.add_argument("--context", default=None, help="the text that holds the answer")
    ask.add_argument("--context_file", default=None, help="a UTF-8 text file that holds the answer, read whole")
    ask.add_argument("--json", action="store_true",
                     help="print one JSON object per question (question, answer, start, end, score, "
                          "no_answer_probability) instead of text")
    squad = p.add_argument_group("a SQuAD file")
    squad.add_argument("--squad_file", default=None, help="SQuAD-format JSON (v1.1 or v2.0): answer every question")
    squad.add_argument("--output", default=None, help="where --squad_file's {question id: answer} JSON goes")
    squad.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    answers = p.add_argument_group(f"answers (unset: as in the run's {qa_run_folder.RUN_RECORD}, else "
                                   "finetune_roberta_qa.py's "
                                   "defaults " + ", ".join(map(str, QA_DEFAULTS.values())) + ")")
    answers.add_argument("--allow_no_answer", action=argparse.BooleanOptionalAction, default=None,
                         help="allow 'no answer'; unset: as the model was fine-tuned")
    answers.add_argument("--null_score_diff_threshold", type=float, default=0.0,
                         help="'no answer' when the <s> score beats the best span by more than this (a threshold t "
                              "on the no-answer probability is log(t / (1 - t)))")
    answers.add_argument("--max_seq_length", type=int, default=None, help="tokens per window")
    answers.add_argument("--doc_stride", type=int, default=None, help="tokens of context consecutive windows share")
    answers.add_argument("--n_best_size", type=int, default=None, help="top starts and top ends tried per window")
    answers.add_argument("--max_answer_length", type=int, default=None, help="longest answer, in tokens")
    add_running_flags(p, "windows")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Checking the request
# ----------------------------------------------------------------------------------------------------------------


def read_context(args: argparse.Namespace) -> str:
    if args.context is not None and args.context_file:
        raise UsageError("--context and --context_file both given; choose one")
    if args.context_file:
        try:
            context = Path(args.context_file).expanduser().read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--context_file {args.context_file} does not exist") from None
        except IsADirectoryError:
            raise UsageError(f"--context_file {args.context_file} is a folder, not a text file") from None
        except UnicodeDecodeError:
            raise UsageError(f"--context_file {args.context_file} is not UTF-8 text") from None
        except OSError as error:
            raise UsageError(f"--context_file {args.context_file} cannot be read ({error.strerror})") from None
        flag = f"--context_file {args.context_file}"
    elif args.context is not None:
        context, flag = args.context, "--context"
    else:
        raise UsageError("--question needs the text that holds the answer: --context TEXT or --context_file FILE")
    if not context.strip():
        raise UsageError(f"{flag} is empty: there is nothing to find an answer in")
    return context


def check_output(args: argparse.Namespace) -> None:
    if not args.output:
        raise UsageError("--squad_file needs --output, the predictions file to write")
    check_output_file(args.output, "--output", source=args.squad_file, source_flag="--squad_file",
                      overwrite=args.overwrite, kinds=(QA_RUN, CLASSIFICATION_RUN, PRETRAINING_RUN, STORE),
                      model=args.model if looks_local(args.model) else None,
                      model_files=(*QA_RUN.made, *model_folder.FILES, qa_run_folder.TRAINER_STATE),
                      example_name=qa_run_folder.PREDICTIONS_FILE)


def check_request(args: argparse.Namespace) -> None:
    """Which mode, and every flag of it, before the model is loaded."""
    if args.question and args.squad_file:
        raise UsageError("--question and --squad_file both given; ask about one context, or answer a SQuAD file")
    if not args.question and not args.squad_file:
        raise UsageError("nothing to answer: give --question with --context/--context_file, or --squad_file")
    if args.squad_file:
        for flag in ("context", "context_file"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag} goes with --question; a --squad_file holds its own contexts")
        if args.json:
            raise UsageError("--json goes with --question; --squad_file writes JSON to --output")
        check_output(args)
    else:
        if args.output:
            raise UsageError("--output goes with --squad_file; answers to --question are printed")
        empty = [q for q in args.question if not q.strip()]
        if empty:
            raise UsageError("--question is empty; ask something")
    for name in ("max_seq_length", "doc_stride", "n_best_size", "max_answer_length", "batch_size"):
        value = getattr(args, name)
        if value is not None and (value < 0 or value == 0 and name != "doc_stride"):
            raise UsageError(f"--{name} must be positive, got {value}")
    if not math.isfinite(args.null_score_diff_threshold):
        raise UsageError("--null_score_diff_threshold must be a finite number")


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


def resolve_settings(args: argparse.Namespace, record: dict, config) -> None:
    """Window and answer settings: the flag, else the run's, else finetune_roberta_qa.py's default."""
    for name, default in QA_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, record.get(name, default))
    if args.allow_no_answer is None:
        args.allow_no_answer = bool(record.get("version_2_with_negative", False))
    if args.max_seq_length > config.max_sequence_length:
        raise UsageError(f"--max_seq_length {args.max_seq_length} is longer than the model allows "
                         f"({config.max_sequence_length} tokens)")
    check_window_budget(args.max_seq_length, args.doc_stride)


def load_model(args: argparse.Namespace):
    """(model on its device, tokenizer); every way --model can be wrong is a UsageError."""
    model, folder, tokenizer = model_folder.load_fine_tuned(
        args.model, RobertaForQuestionAnswering, "qa_outputs.weight", head="question-answering head (qa_outputs)",
        script="finetune_roberta_qa.py", unfinished=qa_run_folder.unfinished_run(Path(args.model).expanduser()),
        saved=qa_run_folder.trainer_checkpoints(Path(args.model).expanduser()), cache_dir=args.path_to_cache_dir)
    check_qa_tokenizer(tokenizer, model.config, args.model)  # a fast one, for the offsets
    resolve_settings(args, qa_run_folder.run_record(folder), model.config)
    return model.to(pick_device(args.device)), tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Answering
# ----------------------------------------------------------------------------------------------------------------


def answer_settings(args: argparse.Namespace) -> dict:
    return {"max_seq_length": args.max_seq_length, "doc_stride": args.doc_stride, "n_best_size": args.n_best_size,
            "max_answer_length": args.max_answer_length, "allow_no_answer": args.allow_no_answer,
            "batch_size": args.batch_size, "null_score_diff_threshold": args.null_score_diff_threshold}


def show(context: str, answer: dict, width: int = 60) -> str:
    """The answer in its place: `...text before [answer] text after...`."""
    before = context[max(0, answer["start"] - width) : answer["start"]]
    after = context[answer["end"] : answer["end"] + width]
    snippet = f"{'...' if answer['start'] > width else ''}{before}[{answer['answer']}]{after}"
    return " ".join((snippet + ("..." if answer["end"] + width < len(context) else "")).split())


def warn_of_cut_questions(args: argparse.Namespace, tokenizer, questions: list[str]) -> None:
    """A question longer than a window leaves room for is cut to its first tokens (as evaluation cuts it): the
    answer is to that part only, so it is said, with the flags that make room."""
    budget = question_budget(tokenizer, args.max_seq_length, args.doc_stride)
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False, verbose=False)["input_ids"]]
    if cut := [n for n in lengths if n > budget]:
        which = "a question of" if len(questions) == 1 else f"{len(cut):,} question(s) of up to"
        print(f"warning: {which} {max(cut):,} tokens: only the first {budget} fit beside the context in windows of "
              f"--max_seq_length {args.max_seq_length} sharing --doc_stride {args.doc_stride}, so the answer is to "
              "that part; a longer --max_seq_length (up to the model's) or a shorter --doc_stride makes room",
              file=sys.stderr, flush=True)


def ask(args: argparse.Namespace, model, tokenizer, context: str) -> None:
    warn_of_cut_questions(args, tokenizer, args.question)
    answers = answer_questions(model, tokenizer, args.question, [context] * len(args.question),
                               **answer_settings(args))
    for question, answer in zip(args.question, answers, strict=True):
        if args.json:
            print(json.dumps({"question": question, **answer}, ensure_ascii=False))
            continue
        print(f"question: {question}")
        if answer["answer"]:
            print(f"answer:   {answer['answer']}")
            print(f"score:    {answer['score']:.2f} (start + end logit); no-answer probability "
                  f"{answer['no_answer_probability']:.3f}")
            print(f"where:    characters {answer['start']}-{answer['end']} of the context: {show(context, answer)}")
        else:
            print("answer:   (no answer)")
            print(f"score:    {answer['score']:.2f} (the <s> score); no-answer probability "
                  f"{answer['no_answer_probability']:.3f}")


def answer_squad_file(args: argparse.Namespace, model, tokenizer, rows: list[dict]) -> None:
    warn_of_cut_questions(args, tokenizer, [r["question"] for r in rows])
    start, predictions, probabilities = time.perf_counter(), {}, {}
    for begin in range(0, len(rows), CHUNK):
        chunk = rows[begin : begin + CHUNK]
        answers = answer_questions(model, tokenizer, [r["question"] for r in chunk], [r["context"] for r in chunk],
                                   **answer_settings(args))
        for row, answer in zip(chunk, answers, strict=True):
            predictions[row["id"]] = answer["answer"]
            probabilities[row["id"]] = answer["no_answer_probability"]
        if len(rows) > CHUNK:
            print(f"answered {len(predictions):,} of {len(rows):,} questions", file=sys.stderr, flush=True)
    try:
        write_json(args.output, predictions)
    except OSError as error:  # checked writable before the first question; the disk may have filled since
        lost = f"--output {args.output} could not be written ({error.strerror or error}); the " \
               f"{len(predictions):,} answers are lost: free space and run again"
        raise (DiskFull(lost) if out_of_space(error) else UsageError(lost)) from None
    seconds = time.perf_counter() - start
    print(f"answered {len(rows):,} questions of {args.squad_file} in {seconds:.1f} s -> {args.output}")
    references = {r["id"]: r["answers"]["text"] for r in rows}
    if not any(references.values()):
        print("the file holds no gold answers: no scores")
        return
    scores = compute_squad_metrics(predictions, references, probabilities if args.allow_no_answer else None)
    print(f"exact_match {scores['exact_match']:.2f} f1 {scores['f1']:.2f} ({len(rows):,} questions)")
    for line in squad_v2_summary(scores, sum(1 for text in predictions.values() if not text)):
        print(line)
    print(json.dumps(scores))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_request(args)
    context, rows = None, None
    if args.squad_file:
        rows = read_squad_file(args.squad_file, "--squad_file")
        audit_squad((r["id"] for r in rows), (r["context"] for r in rows), (r["answers"] for r in rows),
                    where=f"--squad_file {args.squad_file}")  # duplicate ids: an error naming one
    else:
        context = read_context(args)
    model, tokenizer = load_model(args)
    if rows is not None:
        answer_squad_file(args, model, tokenizer, rows)
    else:
        ask(args, model, tokenizer, context)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(main)
