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
second run into a folder in use is refused.

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
import importlib.util
import os
import sys
import time
from pathlib import Path

from folders import QA_RUN, FolderLock, check_output_folder, remove_own_outputs, write_json
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
    squad_question_scores,
    squad_rows,
    squad_v2_summary,
)
from tokenization import load_tokenizer, record_tokenizer, tokenizer_fingerprint, tokenizer_swapped
from utils import (
    ArgumentParser,
    HelpFormatter,
    UsageError,
    duration,
    elapsed_and_eta,
    first_line,
    is_main_process,
    library_versions,
    log,
    looks_local,
    run_cli,
    wandb_offline_unless_logged_in,
)

BACKBONES = ("pretrained_huggingface", "pretrained", "random")
HUB_DATASETS = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}
# transformers' integrations (TrainingArguments.report_to), as of transformers 5
REPORTERS = ("none", "all", "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte",
             "kubeflow", "mlflow", "neptune", "swanlab", "tensorboard", "trackio", "wandb")
EPILOG = """examples:
  # your pretraining against random initialisation, offline, on the demo world (after `python demo.py`)
  python finetune_roberta_qa.py --dataset demo --pretrained_backbone pretrained \\
      --path_to_pretrained_backbone demo_output/pretrain/final_model --max_seq_length 64 --doc_stride 24 \\
      --experiment_name demo_qa
  # roberta-base on SQuAD 1.1: downloads roberta-base (~500 MB) and SQuAD (~35 MB); hours on a CPU: use a GPU
  python finetune_roberta_qa.py --experiment_name squad_roberta_base
  # SQuAD 2.0 from the official files, then ask the fine-tuned model a question
  python finetune_roberta_qa.py --train_file train-v2.0.json --validation_file dev-v2.0.json \\
      --experiment_name squad2
  python ask.py --model runs/squad2 --question "Who wrote it?" --context_file paragraph.txt
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--experiment_name", default="roberta_squad", help="name of the run folder")
    run.add_argument("--working_directory", default="runs", help="parent folder of the run folder")
    run.add_argument("--path_to_cache_dir", default=None,
                     help="folder for every download (the SQuAD dataset, the Hub model and tokenizer) and the "
                          "dataset caches; unset: the Hugging Face caches (~/.cache/huggingface)")
    run.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                     help="replace the outputs of an earlier run in the run folder (only a folder this script "
                          "made; files it did not make are kept)")
    run.add_argument("--seed", type=int, default=42, help="seed of the head's initialisation, shuffling and dropout")
    run.add_argument("--report_to", default="none",
                     help="Trainer loggers, comma-separated: none, all, wandb, tensorboard, mlflow, ... (wandb "
                          "without a login logs offline into the run folder)")

    model = p.add_argument_group("backbone")
    model.add_argument("--pretrained_backbone", choices=BACKBONES, default="pretrained_huggingface",
                       help="where the encoder comes from (see above)")
    model.add_argument("--huggingface_model_name", default="FacebookAI/roberta-base",
                       help="Hub id or local transformers-format folder: the backbone of pretrained_huggingface; "
                            "the architecture and tokenizer of random when --path_to_pretrained_backbone is not given")
    model.add_argument("--path_to_pretrained_backbone", default=None,
                       help="a train.py final_model/ or checkpoints/step_N/ folder (model and tokenizer), for "
                            "pretrained and random")

    data = p.add_argument_group("data")
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

    train = p.add_argument_group("training")
    train.add_argument("--num_train_epochs", type=float, default=2.0, help="passes over the training windows")
    train.add_argument("--per_device_batch_size", type=int, default=16, help="windows per device per micro-step")
    train.add_argument("--gradient_accumulation_steps", type=int, default=2,
                       help="micro-steps per optimizer step (batch = per-device x accumulation x devices)")
    train.add_argument("--learning_rate", type=float, default=3e-5, help="peak learning rate of AdamW")
    train.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    train.add_argument("--warmup_steps", type=float, default=0.06,
                       help="linear warmup: a number of steps, or a fraction of all steps when below 1")
    train.add_argument("--logging_steps", type=int, default=50, help="log the training loss every N steps")
    train.add_argument("--eval_steps", type=int, default=1000,
                       help="evaluate (EM, F1) every N steps, and always at the end (0: only at the end)")
    train.add_argument("--save_steps", type=int, default=1000,
                       help="Trainer checkpoint every N steps, the last 2 kept (0: no checkpoints/ folder)")
    train.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help="bf16 autocast; unset: on where the GPU supports it")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Checking the request (nothing loaded, nothing written)
# ----------------------------------------------------------------------------------------------------------------


def check_numbers(args: argparse.Namespace) -> None:
    positive = ["max_seq_length", "n_best_size", "max_answer_length", "per_device_batch_size",
                "gradient_accumulation_steps", "logging_steps", "num_train_epochs", "learning_rate"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ["doc_stride", "weight_decay", "warmup_steps", "eval_steps", "save_steps"]:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must not be negative, got {getattr(args, name)}")
    for name in ["max_train_samples", "max_eval_samples"]:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")
    check_window_budget(args.max_seq_length, args.doc_stride)
    if args.warmup_steps >= 1 and args.warmup_steps != int(args.warmup_steps):
        raise UsageError(f"--warmup_steps {args.warmup_steps}: give a whole number of steps or a fraction below 1")


def check_data_source(args: argparse.Namespace) -> None:
    files = [f for f in (args.train_file, args.validation_file) if f]
    if files and args.dataset:
        raise UsageError(f"--dataset {args.dataset} and --train_file/--validation_file both given; choose one")
    if len(files) == 1:
        missing = "--validation_file" if args.train_file else "--train_file"
        raise UsageError(f"{missing} is missing: local data needs both --train_file and --validation_file")
    if not files and args.dataset is None:
        args.dataset = "squad"
    if args.path_to_cache_dir and Path(args.path_to_cache_dir).expanduser().exists() \
            and not Path(args.path_to_cache_dir).expanduser().is_dir():
        raise UsageError(f"--path_to_cache_dir {args.path_to_cache_dir} is a file, not a folder")


def check_backbone(args: argparse.Namespace) -> None:
    """The backbone flags fit together and every local model folder holds what is needed (no weights read yet)."""
    if args.pretrained_backbone == "pretrained" and not args.path_to_pretrained_backbone:
        raise UsageError("--pretrained_backbone pretrained needs --path_to_pretrained_backbone (a train.py "
                         "final_model/ or checkpoints/step_N/ folder)")
    if args.pretrained_backbone == "pretrained_huggingface" and args.path_to_pretrained_backbone:
        raise UsageError("--path_to_pretrained_backbone is used by --pretrained_backbone pretrained or random; "
                         "for pretrained_huggingface give --huggingface_model_name")
    source, need_weights = backbone_source(args), args.pretrained_backbone != "random"
    flag = "--path_to_pretrained_backbone" if source == args.path_to_pretrained_backbone else "--huggingface_model_name"
    if looks_local(source):
        from model import check_checkpoint_folder

        try:
            check_checkpoint_folder(source, need_weights=need_weights)
        except ValueError as error:
            raise UsageError(f"{flag}: {error}") from None


def backbone_source(args: argparse.Namespace) -> str:
    """The folder or Hub id that gives the tokenizer and the architecture (and, unless random, the weights)."""
    if args.pretrained_backbone != "pretrained_huggingface" and args.path_to_pretrained_backbone:
        return args.path_to_pretrained_backbone
    return args.huggingface_model_name


def run_folder_flag(run_dir: Path) -> str:
    return f"the run folder {run_dir} (--working_directory/--experiment_name)"


def check_run_folder(args: argparse.Namespace) -> Path:
    """The run folder may receive this run: new, empty, or an earlier run of this script with --overwrite, and
    neither an input of the run nor a precious folder (see folders.check_output_folder). Changes nothing."""
    if not args.experiment_name.strip():
        raise UsageError("--experiment_name is empty; give the run folder a name")
    run_dir = Path(args.working_directory).expanduser() / args.experiment_name
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{run_folder_flag(run_dir)} cannot be made: {parent} is a file")
    inputs = {"--path_to_pretrained_backbone": args.path_to_pretrained_backbone,
              "--huggingface_model_name": args.huggingface_model_name if looks_local(args.huggingface_model_name)
              else None,
              "--train_file": args.train_file, "--validation_file": args.validation_file,
              "--path_to_cache_dir": args.path_to_cache_dir}
    if is_main_process():  # the other processes of a multi-GPU run write nothing, and see the folder mid-creation
        check_output_folder(run_dir, QA_RUN, flag=run_folder_flag(run_dir), overwrite=args.overwrite, inputs=inputs)
    return run_dir


def check_report_to(args: argparse.Namespace) -> list[str]:
    """Known loggers only; wandb installed where asked for, and offline (said so) where it has no login, since
    transformers' WandbCallback would otherwise stop the run at its first step (no TTY) or wait for a key."""
    names = [name.strip() for name in args.report_to.split(",") if name.strip()] or ["none"]
    unknown = [name for name in names if name not in REPORTERS]
    if unknown:
        raise UsageError(f"--report_to {unknown[0]!r} is not a Trainer logger; choose from {', '.join(REPORTERS)}")
    if "none" in names and len(names) > 1:
        raise UsageError("--report_to none cannot be combined with other loggers")
    args.report_to = ",".join(names)
    has_wandb = importlib.util.find_spec("wandb") is not None
    if "wandb" in names or "all" in names and has_wandb:
        note = wandb_offline_unless_logged_in()
        return [note] if note else []
    return []


def check_request(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Every check that needs no model and no dataset: the run folder and the notes to print."""
    check_numbers(args)
    check_data_source(args)
    check_backbone(args)
    notes = check_report_to(args)
    run_dir = check_run_folder(args)
    if args.dataset == "demo":
        try:
            import demo_world  # noqa: F401
        except ImportError as error:
            raise UsageError(f"--dataset demo needs demo_world.py beside this script ({error})") from None
    return run_dir, notes


# ----------------------------------------------------------------------------------------------------------------
# Backbone: tokenizer, architecture, weights (all checked before the run folder exists)
# ----------------------------------------------------------------------------------------------------------------


def backbone_provenance(args: argparse.Namespace, folder: Path) -> dict:
    """Where the weights, the architecture and the tokenizer came from, for eval_results.json."""
    source = backbone_source(args)
    where = source if looks_local(source) else f"{source} (Hugging Face Hub, files in {folder})"
    weights = f"random initialisation (RoBERTa's, --seed {args.seed})" if args.pretrained_backbone == "random" \
        else where
    return {"pretrained_backbone": args.pretrained_backbone, "weights": weights, "architecture": where,
            "tokenizer": where, "qa_head": f"new, random initialisation (--seed {args.seed})"}


def load_backbone(args: argparse.Namespace):
    """(tokenizer, config, model, provenance): every way a backbone can be wrong is a UsageError here, before any
    dataset is read or any file written. Hub ids are downloaded into --path_to_cache_dir."""
    from model import RobertaConfig, RobertaForQuestionAnswering, resolve_checkpoint

    source = backbone_source(args)
    flag = "--path_to_pretrained_backbone" if source == args.path_to_pretrained_backbone else "--huggingface_model_name"
    tokenizer = load_tokenizer(source, flag=flag, cache_dir=args.path_to_cache_dir)
    need_weights = args.pretrained_backbone != "random"
    try:
        folder = resolve_checkpoint(source, need_weights=need_weights, cache_dir=args.path_to_cache_dir)
        config = RobertaConfig.from_pretrained(folder)
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from None
    if args.max_seq_length > config.max_sequence_length:
        raise UsageError(f"--max_seq_length {args.max_seq_length} is longer than {source} allows "
                         f"({config.max_sequence_length} tokens)")
    check_qa_tokenizer(tokenizer, config, source)
    if args.pretrained_backbone != "random" and (swapped := tokenizer_swapped(folder, tokenizer)):
        log(f"WARNING: {swapped}; put back the tokenizer files train.py saved beside the weights")
    from transformers import set_seed

    set_seed(args.seed)  # the head's (and, for random, the encoder's) initialisation
    try:
        if args.pretrained_backbone == "random":
            model = RobertaForQuestionAnswering(config)  # RoBERTa's initialisation, in the constructor
        else:
            model = RobertaForQuestionAnswering.from_pretrained(folder)  # encoder weights; fresh QA head
    except ValueError as error:  # truncated or corrupt weights, wrong shapes, missing tensors
        raise UsageError(f"{flag}: {str(error).replace(str(folder), source)}") from None
    provenance = {**backbone_provenance(args, folder), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                  **({"tokenizer_warning": swapped} if args.pretrained_backbone != "random" and swapped else {})}
    return tokenizer, config, model, provenance


# ----------------------------------------------------------------------------------------------------------------
# Data: SQuAD JSON files, the Hub, or the demo world; checked
# ----------------------------------------------------------------------------------------------------------------


def squad_features():
    from datasets import Features, List, Value

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
    from datasets import load_dataset
    from huggingface_hub import snapshot_download

    where = {"cache_dir": str(Path(cache_dir).expanduser())} if cache_dir else {}
    try:
        folder = snapshot_download(name, repo_type="dataset", allow_patterns=["README.md", "*.parquet"], **where)
        return load_dataset(folder, **where)
    except Exception as error:  # offline, no cache, unknown layout: one line with the way out
        reason = first_line(error)
        raise UsageError(f"could not load {name} from the Hugging Face Hub ({type(error).__name__}: {reason}); "
                         "use --train_file/--validation_file or --dataset demo") from None


def load_examples(args: argparse.Namespace, local_rows: dict | None):
    """DatasetDict with `train` and `validation` splits of SQuAD rows."""
    from datasets import Dataset, DatasetDict

    if local_rows is not None:
        return DatasetDict({split: Dataset.from_list(rows, features=squad_features())
                            for split, rows in local_rows.items()})
    if args.dataset == "demo":
        import demo_world

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
    record, not_used = dict(vars(args)), {}

    def unused(name: str, why: str) -> None:
        value = record.pop(name)
        if value is not None:
            not_used[name] = f"{value} ({why})"

    if backbone_source(args) == args.path_to_pretrained_backbone:
        unused("huggingface_model_name", "the backbone came from --path_to_pretrained_backbone")
    else:
        unused("path_to_pretrained_backbone", "not given")
    if args.train_file:
        unused("dataset", "local files given")
    else:
        unused("train_file", "not given")
        unused("validation_file", "not given")
    if args.dataset != "demo":
        unused("demo_world_seed", "only --dataset demo uses it")
    return {**record, "not_used": not_used, "versions": library_versions()}


def claim_run_folder(args: argparse.Namespace, run_dir: Path) -> FolderLock | None:
    """Lock the run folder for this run (main process), check it again under the lock, clear our own earlier
    outputs with --overwrite (saying what is kept), and record the arguments. Returns the lock to release."""
    if not is_main_process():
        return None
    flag = run_folder_flag(run_dir)
    try:
        lock = FolderLock(run_dir, flag=flag).acquire()
    except OSError as error:  # read-only or full disk, no permission: before anything else was written
        raise UsageError(f"{flag} cannot be created ({error.strerror or error})") from None
    try:
        check_output_folder(run_dir, QA_RUN, flag=flag, overwrite=args.overwrite)  # nothing changed it meanwhile?
        kept = remove_own_outputs(run_dir, QA_RUN) if args.overwrite else []
        if kept:
            log(f"--overwrite: removed the earlier run's outputs; kept what this script did not make: "
                f"{', '.join(kept)}")
        write_json(run_dir / "finetune_args.json", recorded_args(args))
    except BaseException:
        lock.release()
        raise
    return lock


# ----------------------------------------------------------------------------------------------------------------
# Trainer that scores answers
# ----------------------------------------------------------------------------------------------------------------


def make_trainer(args, model, tokenizer, train_features, eval_examples, eval_features, run_dir: Path):
    """A Trainer whose evaluation post-processes window logits into answers and scores them (official SQuAD).

    transformers' `compute_metrics` only sees windows, not questions, so `evaluate` is overridden, as in
    transformers' examples/pytorch/question-answering/trainer_qa.py."""
    from transformers import PrinterCallback, ProgressCallback, Trainer

    references = {qid: list(a["text"]) for qid, a in zip(eval_examples["id"], eval_examples["answers"], strict=True)}
    model_inputs = eval_features.remove_columns(["example_id", "offset_mapping"])

    class QuestionAnsweringTrainer(Trainer):
        last_answers: dict[str, dict] = {}  # {question id: best_answers' dict} of the latest evaluation
        last_scores: dict[str, float] = {}  # compute_squad_metrics of the latest evaluation
        last_eval_step = -1

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

        def _save(self, output_dir=None, state_dict=None):
            # Trainer would write a bare state dict for a model that is not a PreTrainedModel; ours writes
            # config.json + model.safetensors that transformers and our from_pretrained both read.
            if self.args.should_save:
                self.accelerator.unwrap_model(self.model).save_pretrained(output_dir or self.args.output_dir)
                tokenizer.save_pretrained(output_dir or self.args.output_dir)
                record_tokenizer(output_dir or self.args.output_dir, tokenizer)  # for ask.py to check

    # No processing_class: the Trainer would "align" the config's special tokens through transformers' config API,
    # which our dataclass config does not have (and every window is already padded, so no collator needs it).
    trainer = QuestionAnsweringTrainer(model=model, args=training_arguments(args, run_dir),
                                       train_dataset=train_features, eval_dataset=model_inputs)
    log_lines, bar_only = log_callbacks()
    if trainer.pop_callback(ProgressCallback):  # a terminal: keep the bar, without its dictionaries
        trainer.add_callback(bar_only)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(log_lines)
    return trainer


def log_callbacks(line=None):
    """(a callback that logs each Trainer log as one line, made by `line` (default `log_line`), a progress bar that
    prints no logs): the Trainer's own printers show dictionaries of quoted numbers."""
    from transformers import ProgressCallback, TrainerCallback

    line = line or log_line

    class LogLines(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.start_step = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log(line(state.global_step, state.max_steps, logs, time.perf_counter() - self.started,
                         state.global_step - self.start_step))

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # LogLines prints them

    return LogLines(), BarOnly


def log_line(step: int, max_steps: int, logs: dict, elapsed: float, steps_done: int) -> str:
    """One readable line for a Trainer log: a training interval, an evaluation, or the end of training."""
    if "loss" in logs:
        return (f"step {step}/{max_steps} | epoch {logs.get('epoch', 0):.2f} | loss {logs['loss']:.4f} | lr "
                f"{logs.get('learning_rate', 0):.3e} | grad_norm {logs.get('grad_norm') or 0:.3f} | "
                f"{elapsed_and_eta(elapsed, steps_done, max_steps - step)}")
    if "eval_f1" in logs:
        return (f"eval {step}/{max_steps} | exact_match {logs['eval_exact_match']:.2f} | f1 {logs['eval_f1']:.2f} | "
                f"{duration(logs.get('eval_runtime', 0))}")
    if "train_runtime" in logs:
        return (f"trained {step} steps in {duration(logs['train_runtime'])}, mean loss "
                f"{logs.get('train_loss', float('nan')):.4f}")
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())


def training_arguments(args: argparse.Namespace, run_dir: Path):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        # Without checkpoints the Trainer gets the run folder itself, so that no empty checkpoints/ is made.
        output_dir=str(run_dir / "checkpoints" if args.save_steps else run_dir), run_name=args.experiment_name,
        num_train_epochs=args.num_train_epochs, per_device_train_batch_size=args.per_device_batch_size,
        per_device_eval_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler_type="linear",
        logging_steps=args.logging_steps, eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps or None, save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500, save_total_limit=2, seed=args.seed, bf16=args.bf16,
        report_to=args.report_to.split(","), label_names=["start_positions", "end_positions"],
        disable_tqdm=not sys.stderr.isatty(), dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available())


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------

V2_FIELDS = ("exact", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1", "NoAns_total",
             "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")


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
    scores, answers = trainer.last_scores, trainer.last_answers
    history = [{k.removeprefix("eval_"): v for k, v in entry.items()
                if k in ("step", "eval_exact_match", "eval_f1", "eval_HasAns_f1", "eval_NoAns_f1", "eval_best_f1")}
               for entry in trainer.state.log_history if "eval_f1" in entry]
    no_answer = sum(1 for answer in answers.values() if not answer["answer"])
    results = {**scores, "no_answer_predictions": no_answer, **counts, "global_step": trainer.state.global_step,
               "version_2_with_negative": args.version_2_with_negative, "backbone": provenance, "data": data,
               "history": history}
    write_json(run_dir / "eval_results.json", results)
    write_json(run_dir / "predictions.json", {qid: answer["answer"] for qid, answer in answers.items()})
    write_json(run_dir / "predictions_detail.json", prediction_details(validation, answers, "exact" in scores))
    (run_dir / "README.md").write_text(run_readme(args, results))
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
        "| `config.json`, `model.safetensors`, tokenizer files | the fine-tuned model in transformers' format: "
        "`python ask.py --model <this folder> --question ... --context ...`, or transformers' "
        "`AutoModelForQuestionAnswering.from_pretrained` |",
        "| `eval_results.json` | the scores (below), the counts of questions and windows, where the weights, the "
        "architecture and the tokenizer came from (`backbone`), what the data checks found (`data`), and the "
        "scores at each evaluation (`history`) |",
        "| `predictions.json` | `{question id: predicted answer}`, `\"\"` for \"no answer\": the input of the "
        "official SQuAD evaluation scripts |",
        "| `predictions_detail.json` | one entry per question: `question`, `gold_answers`, `prediction`, `start` (its "
        "character offset in the paragraph), `score` (start + end logit), `no_answer_probability`, `exact` (1 or "
        "0) and `f1` (0 to 1) |",
        "| `finetune_args.json` | the arguments of the run, the flags that played no part (`not_used`), and the "
        "library versions |",
        "| `checkpoints/` | Trainer checkpoints (with `--save_steps` above 0) |",
        "| `.lock` | held by the run writing here: a second run into this folder is refused while it lives |",
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


def summary_lines(results: dict, run_dir: Path) -> list[str]:
    return [*squad_v2_summary(results, results["no_answer_predictions"]),
            f"final: exact_match {results['exact_match']:.2f} f1 {results['f1']:.2f} "
            f"({results['eval_samples']:,} questions) -> {run_dir}"]


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def prepare_loggers(args: argparse.Namespace, run_dir: Path) -> None:
    """Loggers write into the run folder (wandb/, runs/) unless the user's environment says otherwise."""
    loggers = args.report_to.split(",")
    if "wandb" in loggers or "all" in loggers:
        os.environ.setdefault("WANDB_DIR", str(run_dir.absolute()))
    if "tensorboard" in loggers or "all" in loggers:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir.absolute() / "runs"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_dir, notes = check_request(args)  # flags, paths, run folder: nothing loaded, nothing written
    local_rows = read_local_files(args)  # JSON layout, duplicate ids
    tokenizer, config, model, provenance = load_backbone(args)  # a bad backbone stops the run here
    examples = load_examples(args, local_rows)  # a failed download stops it here: still nothing written
    train, validation, data_record, data_notes = check_examples(examples, args)
    if args.bf16 is None:
        import torch

        args.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    lock = claim_run_folder(args, run_dir)
    try:
        for note in notes + data_notes:
            log(note)
        import datasets

        if not sys.stderr.isatty():
            datasets.disable_progress_bars()
        train, validation = select_samples(train, validation, args)
        train_features, eval_features = featurize(train, validation, tokenizer, args)
        log(f"{args.pretrained_backbone} backbone, weights: {provenance['weights']}; {model.num_parameters():,} "
            f"parameters; "
            f"{len(train):,} training questions ({len(train_features):,} windows), {len(validation):,} evaluation "
            f"questions ({len(eval_features):,} windows)")
        prepare_loggers(args, run_dir)
        trainer = make_trainer(args, model, tokenizer, train_features, validation, eval_features, run_dir)
        train_output = trainer.train()
        trainer.save_model(str(run_dir))
        if trainer.last_eval_step != trainer.state.global_step:  # else the last scheduled evaluation was at the end
            trainer.evaluate()
        counts = {"eval_samples": len(validation), "eval_windows": len(eval_features), "train_samples": len(train),
                  "train_windows": len(train_features), "train_loss": train_output.training_loss,
                  "train_runtime_s": train_output.metrics.get("train_runtime")}
        if is_main_process():
            results = write_results(run_dir, args, trainer, validation, counts, provenance, data_record)
            for line in summary_lines(results, run_dir):
                log(line)
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(main)
