"""Fine-tune RoBERTa for extractive question answering on SQuAD and score it with the official SQuAD metrics.

The model is this repository's `model.RobertaForQuestionAnswering`: a RoBERTa encoder and a new linear head that
gives every token two logits, the scores of the answer's first and last token. The head always starts fresh;
--pretrained_backbone says where the encoder comes from:

  pretrained_huggingface  (the default) the weights, architecture and tokenizer of --huggingface_model_name: a Hub
                          id (by default FacebookAI/roberta-base, a ~500 MB download; about 86 EM / 92 F1 on
                          SQuAD 1.1 dev) or a local transformers-format folder
  pretrained              your own pretraining: a train.py final_model/ or checkpoints/step_N/ folder given as
                          --path_to_pretrained_backbone (weights, architecture and the tokenizer saved beside them)
  random                  RoBERTa's random initialisation; only the architecture (config.json) and the tokenizer
                          come from --path_to_pretrained_backbone when given, else from --huggingface_model_name.
                          The baseline that shows what pretraining is worth

Data: --dataset squad (rajpurkar/squad, SQuAD 1.1, a ~35 MB download, and the default when no files are given),
squad_v2 (rajpurkar/squad_v2, SQuAD 2.0: a third of the questions have no answer in their paragraph), demo (the
offline demo world of demo_world.py), or SQuAD-format JSON files (--train_file and --validation_file, v1.1 or
v2.0). Answers whose text is not found at their answer_start are reported, and the training questions they label
are skipped, as BERT's run_squad.py does; duplicate question ids are an error.

Windows: a question and its paragraph rarely fit in --max_seq_length tokens, so each paragraph is cut into windows.
A window is `<s> question </s></s> a slice of the paragraph </s>`; the slices of one paragraph overlap by
--doc_stride tokens, so that an answer cut by the edge of one window is whole in the next. In training, a window
that does not hold the whole answer is labelled "no answer" (its <s> token). In evaluation, a question's answer
is the best span over all its windows (start logit + end logit, both ends in the paragraph, at most
--max_answer_length tokens); with SQuAD 2.0 it is "no answer" where the score of <s> beats that span.

The run folder <working_directory>/<experiment_name>/ receives:
  config.json, model.safetensors, tokenizer files   the fine-tuned model in transformers' format; ask.py and
                            transformers' AutoModelForQuestionAnswering load the folder as it is
  eval_results.json         the scores, where the weights, the architecture and the tokenizer came from, what
                            the data checks found, and the scores at every evaluation ("history")
  predictions.json          {question id: predicted answer}, "" for "no answer": the official scripts' input
  predictions_detail.json   per question: the question, its gold answers, the prediction, its score and
                            no-answer probability, exact match and F1: the place to read the errors
  finetune_args.json        the resolved arguments, the library versions and the flags that were not used
  README.md                 what each file and each metric field means
  checkpoints/              Trainer checkpoints, only with --save_steps above 0
--overwrite replaces only a folder this script made, and removes only the files above (anything else stays); a
second run into a folder in use is refused. Fine-tuning does not resume: a run stopped by Ctrl-C, SIGTERM or SIGHUP
says so in one line (exit 130, 143, 129), and the same command plus --overwrite starts it again.

Metrics, 0 to 100: exact_match is the share of questions whose prediction equals one of the gold answers after
normalisation (lowercase, no punctuation, no articles a/an/the, single spaces); f1 is the token overlap with the
best-matching gold answer, averaged over questions. With unanswerable questions (SQuAD 2.0) the fields of the
official v2.0 script follow: exact, f1 and total over all questions; HasAns_exact/_f1/_total over the answerable
ones and NoAns_* over the unanswerable ones (where "no answer" is the only right answer: a model that never
answers scores about 50 overall but 0 on HasAns); best_exact and best_f1, the scores had "no answer" been
predicted for every question whose no-answer probability is above best_exact_thresh / best_f1_thresh. The
no-answer probability of a question is sigmoid(score of <s> - score of the best span): above 0.5 exactly when
"no answer" is predicted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import datasets
import huggingface_hub
from datasets import Dataset, DatasetDict, Features, List, Value, load_dataset
from transformers import set_seed

import demo_world
import finetuning
import qa_run_folder
import run_folder
from folders import FolderLock
from model import RobertaForQuestionAnswering
from qa import (
    QA_DEFAULTS,
    audit_squad,
    best_answers,
    check_qa_tokenizer,
    check_window_budget,
    compute_squad_metrics,
    prepare_qa_eval_features,
    prepare_qa_train_features,
    read_squad_file,
    squad_rows,
    squad_v2_summary,
)
from qa_run_folder import QA_RUN
from tokenization import tokenizer_fingerprint
from utils import (
    ArgumentParser,
    HelpFormatter,
    UsageError,
    duration,
    first_line,
    is_main_process,
    log,
    raise_on_stop_signals,
    run_cli,
)

HUB_DATASETS = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}
EPILOG = f"""examples:
  # your pretraining against random initialisation, offline, on the demo world (after `python demo.py`)
  python finetune_roberta_qa.py --dataset demo --pretrained_backbone pretrained \\
      --path_to_pretrained_backbone demo_output/pretrain/{run_folder.FINAL_MODEL_DIR} \\
      --max_seq_length 64 --doc_stride 24 --experiment_name demo_qa
  # roberta-base on SQuAD 1.1: downloads roberta-base (~500 MB) and SQuAD (~35 MB); hours on a CPU: use a GPU
  python finetune_roberta_qa.py --experiment_name squad_roberta_base
  # SQuAD 2.0 from the official files, then ask the fine-tuned model a question
  python finetune_roberta_qa.py --train_file train-v2.0.json --validation_file dev-v2.0.json \\
      --experiment_name squad2
  python ask.py --model runs/squad2 --question "Who wrote it?" --context_file paragraph.txt
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    finetuning.add_run_flags(p, "roberta_squad", "the SQuAD dataset")
    finetuning.add_backbone_flags(p)

    add_data_flags(p.add_argument_group("data"))
    finetuning.add_training_flags(p, "training", "windows", defaults={"gradient_accumulation_steps": 2},
                                  helps={"eval_steps": "evaluate (EM, F1) every N steps, and always at the end (0: "
                                                       "only at the end)"})
    return p


def add_data_flags(data) -> None:
    data.add_argument("--dataset", choices=[*HUB_DATASETS, "demo"], default=None,
                      help="squad (rajpurkar/squad), squad_v2 (rajpurkar/squad_v2), both downloaded, or demo "
                           "(generated offline); unset: squad, unless --train_file/--validation_file are given")
    data.add_argument("--train_file", default=None, help="SQuAD-format JSON (v1.1 or v2.0) to train on")
    data.add_argument("--validation_file", default=None, help="SQuAD-format JSON (v1.1 or v2.0) to evaluate on")
    data.add_argument("--version_2_with_negative", action=argparse.BooleanOptionalAction, default=None,
                      help="allow the answer 'no answer' (SQuAD 2.0); unset: on when the data has unanswerable "
                           "questions")
    data.add_argument("--max_seq_length", type=int, default=QA_DEFAULTS["max_seq_length"],
                      help="tokens per window: <s> question </s></s> context slice </s>")
    data.add_argument("--doc_stride", type=int, default=QA_DEFAULTS["doc_stride"],
                      help="tokens of context that consecutive windows of one paragraph share")
    data.add_argument("--n_best_size", type=int, default=QA_DEFAULTS["n_best_size"],
                      help="the top starts and the top ends tried per window when searching for the answer")
    data.add_argument("--max_answer_length", type=int, default=QA_DEFAULTS["max_answer_length"],
                      help="longest answer, in tokens")
    data.add_argument("--max_train_samples", type=int, default=None,
                      help="train on this many questions, drawn at random; unset: all")
    data.add_argument("--max_eval_samples", type=int, default=None,
                      help="evaluate on the first this many questions; unset: all")
    data.add_argument("--demo_world_seed", type=int, default=0,
                      help="world of --dataset demo; keep prepare_data.py's so that pretraining saw the same world")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Checking the request (nothing loaded, nothing written)
# ----------------------------------------------------------------------------------------------------------------


def check_numbers(args: argparse.Namespace) -> None:
    finetuning.check_numbers(args, positive=["max_seq_length", "n_best_size", "max_answer_length",
                                             "per_device_batch_size", "gradient_accumulation_steps", "logging_steps",
                                             "num_train_epochs", "learning_rate"],
                             non_negative=["doc_stride", "weight_decay", "warmup_steps", "eval_steps", "save_steps"])
    check_window_budget(args.max_seq_length, args.doc_stride)


def check_data_source(args: argparse.Namespace) -> None:
    files = [f for f in (args.train_file, args.validation_file) if f]
    if files and args.dataset:
        raise UsageError(f"--dataset {args.dataset} and --train_file/--validation_file both given; choose one")
    if len(files) == 1:
        missing = "--validation_file" if args.train_file else "--train_file"
        raise UsageError(f"{missing} is missing: local data needs both --train_file and --validation_file")
    if not files and args.dataset is None:
        args.dataset = "squad"


def check_run_folder(args: argparse.Namespace) -> Path:
    return finetuning.check_run_folder(args, QA_RUN, {"--train_file": args.train_file,
                                                      "--validation_file": args.validation_file},
                                       qa_run_folder.RUN_RECORD)


def check_request(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Every check that needs no model and no dataset: the run folder and the notes to print."""
    check_numbers(args)
    check_data_source(args)
    finetuning.check_backbone(args)
    notes = finetuning.check_report_to(args)
    finetuning.check_bf16(args)
    run_dir = check_run_folder(args)
    return run_dir, notes


# ----------------------------------------------------------------------------------------------------------------
# Backbone: tokenizer, architecture, weights (all checked before the run folder exists)
# ----------------------------------------------------------------------------------------------------------------


def load_backbone(args: argparse.Namespace):
    """(tokenizer, config, model, provenance): every way a backbone can be wrong is a UsageError here, before any
    dataset is read or any file written. Hub ids are downloaded into --path_to_cache_dir."""
    tokenizer, folder, config, swapped = finetuning.load_backbone_parts(args, check_tokenizer=check_qa_tokenizer)
    set_seed(args.seed)  # the head's (and, for random, the encoder's) initialisation
    try:
        if args.pretrained_backbone == "random":
            model = RobertaForQuestionAnswering(config)  # RoBERTa's initialisation, in the constructor
        else:
            model = RobertaForQuestionAnswering.from_pretrained(folder)  # encoder weights; fresh QA head
    except ValueError as error:  # truncated or corrupt weights, wrong shapes, missing tensors
        source = finetuning.backbone_source(args)
        raise UsageError(f"{finetuning.backbone_flag(args)}: {str(error).replace(str(folder), source)}") from None
    provenance = {**finetuning.backbone_provenance(args, folder, "qa_head"),
                  "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                  **({"tokenizer_warning": swapped} if swapped else {})}
    return tokenizer, config, model, provenance


# ----------------------------------------------------------------------------------------------------------------
# Data: SQuAD JSON files, the Hub, or the demo world; checked
# ----------------------------------------------------------------------------------------------------------------


def squad_features():
    answers = {"text": List(Value("string")), "answer_start": List(Value("int32"))}
    return Features({"id": Value("string"), "title": Value("string"), "context": Value("string"),
                     "question": Value("string"), "answers": answers})


def read_local_files(args: argparse.Namespace) -> dict | None:
    """The rows of --train_file and --validation_file (layout checked), or None for --dataset."""
    if not args.train_file:
        return None
    rows = {"train": read_squad_file(args.train_file, "--train_file"),
            "validation": read_squad_file(args.validation_file, "--validation_file")}
    for split, flag in (("train", "--train_file"), ("validation", "--validation_file")):
        audit_squad((r["id"] for r in rows[split]), (r["context"] for r in rows[split]),
                    (r["answers"] for r in rows[split]), where=f"{flag} {getattr(args, split + '_file')}")
    return rows


def load_hub_dataset(name: str, cache_dir: str | None):
    """A SQuAD dataset of the Hub, downloaded into `cache_dir` (the Hub's own cache when None).

    datasets 4+ download a Hub dataset's files into the Hub cache whatever load_dataset's cache_dir says; so the
    repository's parquet files are fetched here with snapshot_download(cache_dir=...) and read from that folder."""
    where = {"cache_dir": str(Path(cache_dir).expanduser())} if cache_dir else {}
    try:
        folder = huggingface_hub.snapshot_download(name, repo_type="dataset",
                                                   allow_patterns=["README.md", "*.parquet"], **where)
        return load_dataset(folder, **where)
    except Exception as error:  # offline, no cache, unknown layout: one line with the way out
        reason = first_line(error)
        raise UsageError(f"could not load {name} from the Hugging Face Hub ({type(error).__name__}: {reason}); "
                         "use --train_file/--validation_file or --dataset demo") from None


def load_examples(args: argparse.Namespace, local_rows: dict | None):
    """DatasetDict with `train` and `validation` splits of SQuAD rows."""
    if local_rows is not None:
        return DatasetDict({split: Dataset.from_list(rows, features=squad_features())
                            for split, rows in local_rows.items()})
    if args.dataset == "demo":
        return DatasetDict({split: Dataset.from_list(squad_rows(demo_world.generate_squad(
            seed=args.demo_world_seed, split=split)), features=squad_features()) for split in ("train", "validation")})
    examples = load_hub_dataset(HUB_DATASETS[args.dataset], args.path_to_cache_dir)
    if "train" not in examples or "validation" not in examples:
        raise UsageError(f"{HUB_DATASETS[args.dataset]} has splits {list(examples)}, not train and validation")
    return examples


def data_source(args: argparse.Namespace) -> str:
    if args.train_file:
        return f"--train_file {args.train_file}, --validation_file {args.validation_file}"
    if args.dataset == "demo":
        return f"demo world (--demo_world_seed {args.demo_world_seed})"
    return HUB_DATASETS[args.dataset]


def check_examples(examples, args: argparse.Namespace) -> tuple:
    """(train, validation, data record, warnings): duplicate ids are an error; training questions whose answer
    does not match the context are dropped; --no-version_2_with_negative on unanswerable questions is warned
    about; --version_2_with_negative defaults to whether the data has unanswerable questions."""
    train, validation = examples["train"], examples["validation"]
    names = {"train": f"--train_file {args.train_file}" if args.train_file else f"{data_source(args)} train",
             "validation": f"--validation_file {args.validation_file}" if args.train_file
             else f"{data_source(args)} validation"}
    audits = {split: audit_squad(list(data["id"]), list(data["context"]), list(data["answers"]), where=names[split])
              for split, data in (("train", train), ("validation", validation))}
    notes = [line for split in audits if (line := audits[split].describe(f"warning: {names[split]}",
                                                                       training=split == "train"))]
    if audits["train"].bad_label_rows:
        skip = set(audits["train"].bad_label_rows)
        train = train.select([i for i in range(len(train)) if i not in skip])
    if len(train) == 0:
        raise UsageError(f"{names['train']}: no training question is left once those with bad answers are skipped")
    if args.train_file and Path(args.train_file).resolve() == Path(args.validation_file).resolve():
        notes.append("warning: --train_file and --validation_file are the same file: the scores will measure "
                     "memorisation, not question answering on unseen text")
    unanswerable = {split: audit.unanswerable for split, audit in audits.items()}
    if args.version_2_with_negative is None:
        args.version_2_with_negative = any(unanswerable.values())
    elif not args.version_2_with_negative and any(unanswerable.values()):
        notes.append(f"warning: --no-version_2_with_negative, but {unanswerable['validation']:,} of "
                     f"{audits['validation'].questions:,} evaluation and {unanswerable['train']:,} of "
                     f"{audits['train'].questions:,} training questions have no answer: the model will never "
                     "answer 'no answer', so every one of those evaluation questions counts as wrong")
    record = {"source": data_source(args), **{f"{split}_questions": audit.questions for split, audit in audits.items()},
              **{f"{split}_unanswerable": n for split, n in unanswerable.items()},
              "train_skipped_bad_answers": len(audits["train"].bad_label_rows),
              "validation_kept_bad_answers": len(audits["validation"].bad_questions),
              "bad_answer_examples": {split: (audit.bad_questions or [None])[0] for split, audit in audits.items()}}
    return train, validation, record, notes


def select_samples(train, validation, args: argparse.Namespace):
    """Limit the questions: a seeded random subset for training, the first ones for evaluation."""
    if args.max_train_samples is not None and args.max_train_samples < len(train):
        train = train.shuffle(seed=args.seed).select(range(args.max_train_samples))
    if args.max_eval_samples is not None and args.max_eval_samples < len(validation):
        validation = validation.select(range(args.max_eval_samples))
    return train, validation


def featurize(train, validation, tokenizer, args: argparse.Namespace):
    """Windows for training (with labels) and for evaluation (with example ids and context offsets)."""
    kwargs = {"tokenizer": tokenizer, "max_length": args.max_seq_length, "doc_stride": args.doc_stride}
    train_features = train.map(prepare_qa_train_features, batched=True, remove_columns=train.column_names,
                               fn_kwargs=kwargs, desc="train windows")
    eval_features = validation.map(prepare_qa_eval_features, batched=True, remove_columns=validation.column_names,
                                   fn_kwargs=kwargs, desc="eval windows")
    return train_features, eval_features


# ----------------------------------------------------------------------------------------------------------------
# The run folder: one run at a time, and only our own files replaced
# ----------------------------------------------------------------------------------------------------------------


def recorded_args(args: argparse.Namespace) -> dict:
    """The arguments as used, for finetune_args.json; flags whose value played no part go under `not_used`."""
    unused = {"dataset": "local files given"} if args.train_file else \
        {"train_file": "not given", "validation_file": "not given"}
    if args.dataset != "demo":
        unused["demo_world_seed"] = "only --dataset demo uses it"
    return finetuning.recorded_args(args, unused)


def claim_run_folder(args: argparse.Namespace, run_dir: Path) -> FolderLock | None:
    """Lock the run folder, clear an earlier run's outputs with --overwrite, write finetune_args.json."""
    return finetuning.claim_run_folder(args, run_dir, QA_RUN, qa_run_folder.write_run_record, recorded_args(args))


# ----------------------------------------------------------------------------------------------------------------
# Trainer that scores answers
# ----------------------------------------------------------------------------------------------------------------


def make_trainer(args, model, tokenizer, train_features, eval_examples, eval_features, run_dir: Path):
    """A Trainer whose evaluation post-processes window logits into answers and scores them (official SQuAD).

    transformers' `compute_metrics` only sees windows, not questions, so `evaluate` is overridden, as in
    transformers' examples/pytorch/question-answering/trainer_qa.py."""
    references = {qid: list(a["text"]) for qid, a in zip(eval_examples["id"], eval_examples["answers"], strict=True)}
    model_inputs = eval_features.remove_columns(["example_id", "offset_mapping"])

    class QuestionAnsweringTrainer(finetuning.ModelFolderTrainer):
        last_answers: dict[str, dict] = {}  # {question id: best_answers' dict} of the latest evaluation
        last_scores: dict[str, float] = {}  # compute_squad_metrics of the latest evaluation

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            output = self.predict(model_inputs, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            answers = best_answers(eval_examples, eval_features, output.predictions, n_best_size=args.n_best_size,
                                   max_answer_length=args.max_answer_length,
                                   allow_no_answer=args.version_2_with_negative)
            predictions = {qid: answer["answer"] for qid, answer in answers.items()}
            probabilities = ({qid: answer["no_answer_probability"] for qid, answer in answers.items()}
                             if args.version_2_with_negative else None)
            scores = compute_squad_metrics(predictions, references, probabilities)
            metrics = {**output.metrics, **{f"{metric_key_prefix}_{k}": v for k, v in scores.items()}}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            self.last_answers, self.last_scores = answers, scores
            self.last_eval_step = self.state.global_step
            return metrics

    # No processing_class: the Trainer would "align" the config's special tokens through transformers' config API,
    # which our dataclass config does not have (and every window is already padded, so no collator needs it).
    trainer = QuestionAnsweringTrainer(model=model, args=finetuning.training_arguments(
        args, run_dir, label_names=["start_positions", "end_positions"]), train_dataset=train_features,
        eval_dataset=model_inputs)
    trainer.tokenizer_to_save = tokenizer
    finetuning.add_log_lines(trainer, log_line)
    return trainer


def log_line(step: int, max_steps: int, logs: dict, elapsed: float, steps_done: int) -> str:
    """One readable line for a Trainer log: a training interval, an evaluation, or the end of training."""
    if line := finetuning.training_log_line(step, max_steps, logs, elapsed, steps_done):
        return line
    if "eval_f1" in logs:
        return (f"eval {step}/{max_steps} | exact_match {logs['eval_exact_match']:.2f} | f1 {logs['eval_f1']:.2f} | "
                f"{duration(logs.get('eval_runtime', 0))}")
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------

def summary_lines(results: dict, run_dir: Path) -> list[str]:
    return [*squad_v2_summary(results, results["no_answer_predictions"]),
            f"final: exact_match {results['exact_match']:.2f} f1 {results['f1']:.2f} "
            f"({results['eval_samples']:,} questions) -> {run_dir}"]


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_dir, notes = check_request(args)  # flags, paths, run folder: nothing loaded, nothing written
    raise_on_stop_signals()
    with finetuning.RunEnding("finetune_roberta_qa", run_dir) as run:  # a stop or a full disk: one line
        local_rows = read_local_files(args)  # JSON layout, duplicate ids
        tokenizer, config, model, provenance = load_backbone(args)  # a bad backbone stops the run here
        examples = load_examples(args, local_rows)  # a failed download stops it here: still nothing written
        train, validation, data_record, data_notes = check_examples(examples, args)
        finetuning.resolve_bf16(args)
        run.lock = claim_run_folder(args, run_dir)
        for note in notes + data_notes:
            log(note)
        if not sys.stderr.isatty():
            datasets.disable_progress_bars()
        train, validation = select_samples(train, validation, args)
        train_features, eval_features = featurize(train, validation, tokenizer, args)
        log(f"{args.pretrained_backbone} backbone, weights: {provenance['weights']}; {model.num_parameters():,} "
            f"parameters; "
            f"{len(train):,} training questions ({len(train_features):,} windows), {len(validation):,} evaluation "
            f"questions ({len(eval_features):,} windows)")
        finetuning.prepare_loggers(args, run_dir)
        trainer = make_trainer(args, model, tokenizer, train_features, validation, eval_features, run_dir)
        train_output = trainer.train_save_evaluate(run_dir, args.learning_rate)
        counts = {"eval_samples": len(validation), "eval_windows": len(eval_features), "train_samples": len(train),
                  "train_windows": len(train_features), "train_loss": train_output.training_loss,
                  "train_runtime_s": train_output.metrics.get("train_runtime")}
        if is_main_process():
            results = qa_run_folder.write_results(run_dir, args, trainer, validation, counts, provenance, data_record)
            for line in summary_lines(results, run_dir):
                log(line)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(main)
