"""Fine-tune RoBERTa on SQuAD (extractive question answering) and score it by exact match and F1.

The model is always this repository's `model.RobertaForQuestionAnswering`; `--pretrained_backbone` says where its
encoder comes from:

    pretrained_huggingface  published weights: --huggingface_model_name, a Hub id (FacebookAI/roberta-base, the
                            reference: about 92 F1 / 86 EM on SQuAD 1.1 dev) or a local transformers-format folder
    pretrained              a train.py `final_model/` or `checkpoints/step_N/` folder (--path_to_pretrained_backbone),
                            with the tokenizer saved beside it
    random                  RoBERTa's initialisation, with the architecture and tokenizer of
                            --path_to_pretrained_backbone when given, else of --huggingface_model_name

The QA head always starts fresh. Long contexts are cut into windows of --max_seq_length tokens that overlap by
--doc_stride; at evaluation each question's answer is the best valid span over all its windows, and exact match
and F1 (the official SQuAD scoring) are computed at every evaluation and at the end. The run folder
`<working_directory>/<experiment_name>/` receives the fine-tuned model (transformers format, with the tokenizer),
`eval_results.json`, `predictions.json` ({question id: answer}), `finetune_args.json`, and Trainer checkpoints in
`checkpoints/`.

    python finetune_roberta_qa.py --dataset demo --pretrained_backbone pretrained \\
        --path_to_pretrained_backbone runs/demo/final_model --experiment_name demo_qa
    python finetune_roberta_qa.py --dataset squad --pretrained_backbone pretrained_huggingface
    python finetune_roberta_qa.py --train_file train-v2.0.json --validation_file dev-v2.0.json \
        --pretrained_backbone random
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from folders import write_json
from utils import (
    ArgumentParser,
    UsageError,
    compute_squad_metrics,
    library_versions,
    postprocess_qa_predictions,
    prepare_qa_eval_features,
    prepare_qa_train_features,
    run_cli,
)

BACKBONES = ("pretrained_huggingface", "pretrained", "random")
HUB_DATASETS = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MIN_QUESTION_TOKENS = 16  # room a window must leave for the question beside the overlapping context


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--experiment_name", default="roberta_squad", help="name of the run folder")
    run.add_argument("--working_directory", default="runs", help="parent folder of the run folder")
    run.add_argument("--path_to_cache_dir", default=None, help="cache folder for Hub downloads (datasets)")
    run.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                     help="replace the outputs of an existing run folder")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--report_to", default="none", help="Trainer loggers: none, wandb, tensorboard, all")

    model = p.add_argument_group("backbone")
    model.add_argument("--pretrained_backbone", choices=BACKBONES, default="pretrained_huggingface")
    model.add_argument("--huggingface_model_name", default="FacebookAI/roberta-base",
                       help="Hub id or local transformers-format folder (weights for pretrained_huggingface; "
                            "architecture and tokenizer for random when no --path_to_pretrained_backbone)")
    model.add_argument("--path_to_pretrained_backbone", default=None,
                       help="train.py final_model/ or checkpoints/step_N/ folder (model + tokenizer)")

    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=[*HUB_DATASETS, "demo"], default=None,
                      help="squad (rajpurkar/squad), squad_v2 (rajpurkar/squad_v2) or demo (offline, generated); "
                           "default squad unless --train_file/--validation_file are given")
    data.add_argument("--train_file", default=None, help="SQuAD-layout JSON (v1.1 or v2.0) to train on")
    data.add_argument("--validation_file", default=None, help="SQuAD-layout JSON (v1.1 or v2.0) to evaluate on")
    data.add_argument("--version_2_with_negative", action=argparse.BooleanOptionalAction, default=None,
                      help="allow the null answer (SQuAD 2.0); default: on for squad_v2 and for files with "
                           "unanswerable questions")
    data.add_argument("--max_seq_length", type=int, default=384, help="tokens per window (question + context)")
    data.add_argument("--doc_stride", type=int, default=128, help="tokens shared by consecutive windows")
    data.add_argument("--n_best_size", type=int, default=20, help="top starts and ends tried per window")
    data.add_argument("--max_answer_length", type=int, default=30, help="longest answer, in tokens")
    data.add_argument("--max_train_samples", type=int, default=None, help="train on this many questions (shuffled)")
    data.add_argument("--max_eval_samples", type=int, default=None, help="evaluate on the first this many questions")
    data.add_argument("--demo_world_seed", type=int, default=0,
                      help="world of --dataset demo; keep prepare_data.py's so that pretraining saw the same world")

    train = p.add_argument_group("training")
    train.add_argument("--num_train_epochs", type=float, default=2.0)
    train.add_argument("--per_device_batch_size", type=int, default=16, help="windows per device per step")
    train.add_argument("--gradient_accumulation_steps", type=int, default=2)
    train.add_argument("--learning_rate", type=float, default=3e-5)
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--warmup_steps", type=float, default=0.06,
                       help="linear warmup: a number of steps, or a fraction of all steps when below 1")
    train.add_argument("--logging_steps", type=int, default=50)
    train.add_argument("--eval_steps", type=int, default=1000, help="evaluate every N steps (0: only at the end)")
    train.add_argument("--save_steps", type=int, default=1000, help="checkpoint every N steps (0: no checkpoints)")
    train.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help="bf16 autocast (default: on where the GPU supports it)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Checking the request (before any model or dataset is loaded)
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
    if args.doc_stride >= args.max_seq_length:
        raise UsageError(f"--doc_stride {args.doc_stride} must be below --max_seq_length {args.max_seq_length} "
                         "(it is the overlap of consecutive windows)")
    room = args.max_seq_length - args.doc_stride - 4  # <s> question </s></s> context </s>
    if args.max_seq_length - 4 - MIN_QUESTION_TOKENS < 1:
        raise UsageError(f"--max_seq_length {args.max_seq_length} is too short for a question and a context "
                         f"(at least {MIN_QUESTION_TOKENS + 5})")
    if room < MIN_QUESTION_TOKENS:
        suggestion = min(args.max_seq_length // 3, args.max_seq_length - 4 - MIN_QUESTION_TOKENS)
        raise UsageError(f"--doc_stride {args.doc_stride} leaves {room} tokens of --max_seq_length "
                         f"{args.max_seq_length} for the question; keep at least {MIN_QUESTION_TOKENS} "
                         f"(e.g. --doc_stride {suggestion})")
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


def check_backbone(args: argparse.Namespace) -> None:
    if args.pretrained_backbone == "pretrained":
        if not args.path_to_pretrained_backbone:
            raise UsageError("--pretrained_backbone pretrained needs --path_to_pretrained_backbone (a train.py "
                             "final_model/ or checkpoints/step_N/ folder)")
        check_model_folder(args.path_to_pretrained_backbone, need_weights=True)
    elif args.path_to_pretrained_backbone:
        if args.pretrained_backbone == "pretrained_huggingface":
            raise UsageError("--path_to_pretrained_backbone is used by --pretrained_backbone pretrained or random; "
                             "for pretrained_huggingface give --huggingface_model_name")
        check_model_folder(args.path_to_pretrained_backbone, need_weights=False)
    elif _looks_like_path(args.huggingface_model_name):
        check_model_folder(args.huggingface_model_name, need_weights=args.pretrained_backbone != "random")


def _looks_like_path(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_model_folder(path: str, need_weights: bool) -> None:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{path} is not a folder: expected a transformers-format model folder")
    for hint in ("final_model", "checkpoints"):
        if not (folder / "config.json").is_file() and (folder / hint).is_dir():
            raise UsageError(f"{path} is a train.py run folder, not a model: pass {folder / 'final_model'} "
                             "or one of its checkpoints/step_N folders")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{path} holds no model (no config.json): expected a train.py final_model/ or "
                         "checkpoints/step_N/ folder, or a transformers-format folder")
    if need_weights and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(f"{path} holds no weights ({' or '.join(WEIGHT_FILES)})")


def is_main_process() -> bool:
    """True on the process that writes files and logs (rank 0 under torchrun / accelerate launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_run_folder(args: argparse.Namespace) -> Path:
    run_dir = Path(args.working_directory) / args.experiment_name
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} exists and is not a folder")
    if is_main_process() and run_dir.is_dir() and any(run_dir.iterdir()) and not args.overwrite:
        raise UsageError(f"run folder {run_dir} already holds files; choose another --experiment_name or pass "
                         "--overwrite")
    inputs = [args.path_to_pretrained_backbone, args.huggingface_model_name, args.train_file, args.validation_file]
    for path in filter(None, inputs):
        if Path(path).exists() and Path(path).resolve().is_relative_to(run_dir.resolve()):
            raise UsageError(f"{path} lies inside the run folder {run_dir}, which --overwrite would delete; "
                             "choose another --experiment_name")
    return run_dir


# ----------------------------------------------------------------------------------------------------------------
# Data: SQuAD JSON files, the Hub, or the demo world
# ----------------------------------------------------------------------------------------------------------------


def squad_rows(squad: dict) -> list[dict]:
    """Flatten SQuAD's official layout (data[].paragraphs[].qas[], v1.1 or v2.0) into one row per question."""
    rows = []
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible", False) else qa["answers"]
                rows.append({
                    "id": str(qa["id"]), "title": str(article.get("title", "")), "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers]},
                })
    return rows


def read_squad_file(path: str, flag: str) -> list[dict]:
    """Rows of a SQuAD-layout JSON file; one clear UsageError naming the file when it cannot be read."""
    try:
        squad = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{flag} {path} does not exist") from None
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


def squad_features():
    from datasets import Features, List, Value

    answers = {"text": List(Value("string")), "answer_start": List(Value("int32"))}
    return Features({"id": Value("string"), "title": Value("string"), "context": Value("string"),
                     "question": Value("string"), "answers": answers})


def load_examples(args: argparse.Namespace, local_rows: dict | None):
    """DatasetDict with `train` and `validation` splits of SQuAD rows."""
    from datasets import Dataset, DatasetDict, load_dataset

    if local_rows is not None:
        return DatasetDict({split: Dataset.from_list(rows, features=squad_features())
                            for split, rows in local_rows.items()})
    if args.dataset == "demo":
        import demo_world

        return DatasetDict({split: Dataset.from_list(squad_rows(demo_world.generate_squad(
            seed=args.demo_world_seed, split=split)), features=squad_features()) for split in ("train", "validation")})
    try:
        return load_dataset(HUB_DATASETS[args.dataset], cache_dir=args.path_to_cache_dir)
    except Exception as error:  # offline, no cache: one line with the way out
        raise UsageError(f"could not load {HUB_DATASETS[args.dataset]} from the Hugging Face Hub "
                         f"({type(error).__name__}); use --train_file/--validation_file or --dataset demo") from None


def select_samples(examples, args: argparse.Namespace):
    """Limit the questions: a seeded random subset for training, the first ones for evaluation."""
    train, validation = examples["train"], examples["validation"]
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


def resolve_version_2(args: argparse.Namespace, local_rows: dict | None) -> None:
    """Default --version_2_with_negative: on for squad_v2 and for local files with unanswerable questions."""
    if args.version_2_with_negative is not None:
        return
    if local_rows is not None:
        args.version_2_with_negative = any(not row["answers"]["text"] for rows in local_rows.values() for row in rows)
    else:
        args.version_2_with_negative = args.dataset == "squad_v2"


# ----------------------------------------------------------------------------------------------------------------
# Backbone: tokenizer, architecture, weights
# ----------------------------------------------------------------------------------------------------------------


def backbone_source(args: argparse.Namespace) -> str:
    """The folder or Hub id that gives the tokenizer and the architecture."""
    if args.pretrained_backbone != "pretrained_huggingface" and args.path_to_pretrained_backbone:
        return args.path_to_pretrained_backbone
    return args.huggingface_model_name


def load_tokenizer(source: str):
    folder = Path(source).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build a tokenizer of special tokens only from config.json, and train on garbage
        raise UsageError(f"{source} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer "
                         "beside the model")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as error:
        hint = ("a model folder needs its tokenizer saved beside it" if Path(source).expanduser().is_dir()
                else "check the Hub id and the network, or pass a local folder")
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        raise UsageError(f"could not load a tokenizer from {source} ({type(error).__name__}: {first_line}); "
                         f"{hint}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"the tokenizer of {source} ({type(tokenizer).__name__}) has no offsets mapping; "
                         "SQuAD windows need a fast (Rust `tokenizers`) tokenizer with tokenizer.json")
    return tokenizer


def load_config(source: str, args: argparse.Namespace):
    from model import RobertaConfig

    try:
        config = RobertaConfig.from_pretrained(source)
    except ValueError as error:
        raise UsageError(f"could not read the architecture of {source}: {error}") from None
    if args.max_seq_length > config.max_sequence_length:
        raise UsageError(f"--max_seq_length {args.max_seq_length} is longer than {source} allows "
                         f"({config.max_sequence_length} tokens)")
    return config


def build_model(args: argparse.Namespace, config):
    from model import RobertaForQuestionAnswering

    if args.pretrained_backbone == "random":
        return RobertaForQuestionAnswering(config)  # RoBERTa's initialisation, in the constructor
    try:
        return RobertaForQuestionAnswering.from_pretrained(backbone_source(args))  # encoder weights; fresh QA head
    except ValueError as error:
        raise UsageError(str(error)) from None


# ----------------------------------------------------------------------------------------------------------------
# Trainer that scores answers
# ----------------------------------------------------------------------------------------------------------------


def make_trainer(args, model, tokenizer, train_features, eval_examples, eval_features, run_dir: Path):
    """A Trainer whose evaluation post-processes window logits into answers and scores them (EM, F1).

    transformers' `compute_metrics` only sees windows, not questions, so `evaluate` is overridden, as in
    transformers' examples/pytorch/question-answering/trainer_qa.py."""
    from transformers import Trainer

    references = {qid: list(a["text"]) for qid, a in zip(eval_examples["id"], eval_examples["answers"], strict=True)}
    model_inputs = eval_features.remove_columns(["example_id", "offset_mapping"])

    class QuestionAnsweringTrainer(Trainer):
        last_predictions: dict[str, str] = {}  # {question id: answer} of the latest evaluation
        last_metrics: dict[str, float] = {}
        last_eval_step = -1

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            output = self.predict(model_inputs, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            predictions = postprocess_qa_predictions(
                eval_examples, eval_features, output.predictions, n_best_size=args.n_best_size,
                max_answer_length=args.max_answer_length, version_2_with_negative=args.version_2_with_negative)
            scores = compute_squad_metrics(predictions, references)
            metrics = {**output.metrics, **{f"{metric_key_prefix}_{k}": v for k, v in scores.items()}}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            self.last_predictions, self.last_metrics = predictions, metrics
            self.last_eval_step = self.state.global_step
            return metrics

        def _save(self, output_dir=None, state_dict=None):
            # Trainer would write a bare state dict for a model that is not a PreTrainedModel; ours writes
            # config.json + model.safetensors that transformers and our from_pretrained both read.
            if self.args.should_save:
                self.accelerator.unwrap_model(self.model).save_pretrained(output_dir or self.args.output_dir)
                tokenizer.save_pretrained(output_dir or self.args.output_dir)

    # No processing_class: the Trainer would "align" the config's special tokens through transformers' config API,
    # which our dataclass config does not have (and every window is already padded, so no collator needs it).
    return QuestionAnsweringTrainer(model=model, args=training_arguments(args, run_dir),
                                    train_dataset=train_features, eval_dataset=model_inputs)


def training_arguments(args: argparse.Namespace, run_dir: Path):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"), num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_batch_size, per_device_eval_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler_type="linear",
        logging_steps=args.logging_steps, eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps or None, save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500, save_total_limit=2, seed=args.seed, bf16=args.bf16, report_to=args.report_to,
        label_names=["start_positions", "end_positions"], disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def check_request(args: argparse.Namespace):
    """Every check that needs no model or dataset; returns the run folder, tokenizer, config and local rows."""
    check_numbers(args)
    check_data_source(args)
    check_backbone(args)
    run_dir = check_run_folder(args)
    local_rows = None
    if args.train_file:
        local_rows = {"train": read_squad_file(args.train_file, "--train_file"),
                      "validation": read_squad_file(args.validation_file, "--validation_file")}
    if args.dataset == "demo":
        try:
            import demo_world  # noqa: F401
        except ImportError as error:
            raise UsageError(f"--dataset demo needs demo_world.py beside this script ({error})") from None
    resolve_version_2(args, local_rows)
    if args.bf16 is None:
        import torch

        args.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    source = backbone_source(args)
    tokenizer, config = load_tokenizer(source), load_config(source, args)
    if len(tokenizer) > config.vocab_size:
        raise UsageError(f"the tokenizer of {source} has {len(tokenizer):,} tokens but the model's vocabulary only "
                         f"{config.vocab_size:,}: they do not belong together")
    return run_dir, tokenizer, config, local_rows


def write_results(run_dir: Path, args, trainer, metrics: dict, counts: dict) -> None:
    history = [{k.removeprefix("eval_"): v for k, v in entry.items() if k in ("step", "eval_exact_match", "eval_f1")}
               for entry in trainer.state.log_history if "eval_f1" in entry]
    results = {"exact_match": metrics["eval_exact_match"], "f1": metrics["eval_f1"], **counts,
               "global_step": trainer.state.global_step, "pretrained_backbone": args.pretrained_backbone,
               "backbone": backbone_source(args), "dataset": args.dataset or "local files",
               "version_2_with_negative": args.version_2_with_negative, "history": history}
    write_json(run_dir / "eval_results.json", results)
    write_json(run_dir / "predictions.json", trainer.last_predictions)


def start_run(args: argparse.Namespace, run_dir: Path) -> None:
    """Seed everything, quiet progress bars in log files, and create the run folder with the resolved arguments."""
    import datasets
    from transformers import set_seed

    set_seed(args.seed)
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    if is_main_process():
        if args.overwrite and run_dir.is_dir():
            shutil.rmtree(run_dir)  # start afresh: no stale checkpoints or predictions of an earlier run
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "finetune_args.json", {**vars(args), "versions": library_versions()})


def log(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_dir, tokenizer, config, local_rows = check_request(args)
    examples = load_examples(args, local_rows)  # before the run folder exists: a failed download leaves nothing
    start_run(args, run_dir)
    train, validation = select_samples(examples, args)
    train_features, eval_features = featurize(train, validation, tokenizer, args)
    model = build_model(args, config)
    log(f"{args.pretrained_backbone} backbone from {backbone_source(args)}: {model.num_parameters():,} parameters; "
        f"{len(train):,} training questions ({len(train_features):,} windows), {len(validation):,} evaluation "
        f"questions ({len(eval_features):,} windows)")
    trainer = make_trainer(args, model, tokenizer, train_features, validation, eval_features, run_dir)
    train_output = trainer.train()
    trainer.save_model(str(run_dir))
    if trainer.last_eval_step != trainer.state.global_step:  # else the last scheduled evaluation was at the end
        trainer.evaluate()
    metrics = trainer.last_metrics
    counts = {"eval_samples": len(validation), "eval_windows": len(eval_features), "train_samples": len(train),
              "train_windows": len(train_features), "train_loss": train_output.training_loss,
              "train_runtime_s": train_output.metrics.get("train_runtime")}
    if is_main_process():
        write_results(run_dir, args, trainer, metrics, counts)
    log(f"final: exact_match {metrics['eval_exact_match']:.2f} f1 {metrics['eval_f1']:.2f} "
        f"({len(validation):,} questions) -> {run_dir}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(main)
