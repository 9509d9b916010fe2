"""The whole pipeline, offline, on the built-in demo world: `make demo` (or `python demo.py`).

1. prepare_data.py builds the demo corpus (encyclopedia articles about a fictional world), trains a byte-level
   BPE tokenizer on it and packs it into blocks;
2. train.py pretrains a small RoBERTa on it (on the GPU if there is one, else the CPU);
3. the pretrained model fills in blanks about the world through transformers' own fill-mask pipeline;
4. finetune_roberta_qa.py fine-tunes extractive QA on questions about held-out articles of the same world,
   once from the pretrained backbone and once from random initialisation, with the same budget;
5. finetune_roberta_classification.py fine-tunes sentence classification (GLUE's CoLA in the world's terms: is this
   sentence as the world's articles write it, or have two of its words traded places?) on labelled sentences
   written to JSON lines files, from both backbones again;
6. the results are printed side by side, with the pretraining curves plotted to a PNG;
7. the pretrained model is continued on text it has never read (`train.py --init_from`, as one continues a published
   model on a domain's text): the encyclopedia of another world, whose held-out loss falls from the model's own.

Every step runs the real command line, printed before it runs, so each can be copied and changed. About 8
minutes on a 2-core CPU (each step's header says which step of how many it is and how long the rest should take).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from transformers import pipeline
from transformers.utils import logging as hf_logging

import classification_run_folder
import qa_run_folder
import run_folder
from demo_world import acceptability_capacity, generate_acceptability, generate_documents
from utils import Stopped, exit_code_for_signal, raise_on_stop_signals, stop_signal_name, user_path

ROOT = Path(__file__).resolve().parent

# Sized for about 8 minutes on a 2-core CPU (STEP_MINUTES). Small MLMs sit on a plateau (predicting frequent tokens)
# for their first ~1,000 updates before they learn to use context; blocks of 64 tokens, batches of 16 and no
# dropout get past it within a few minutes on a CPU, where longer blocks or bigger batches did not.
CONTEXT_LENGTH = "64"  # prepare_data.py's blocks; train.py takes them from the store
MODEL_FLAGS = ["--num_transformer_blocks", "4", "--embedding_dimension", "128", "--num_attention_heads", "4",
               "--mlp_ratio", "4", "--hidden_dropout_p", "0", "--attention_dropout_p", "0"]
# sized for well under a minute per backbone on 2 cores
ACCEPTABILITY_SENTENCES, ACCEPTABILITY_EPOCHS, ACCEPTABILITY_EVAL_SENTENCES = 3000, 2.0, 1000
NEW_WORLD_SEED = 1  # the world the demo's model continues on: demo_world's seed 0 is the one it was pretrained on
# Minutes of each step at the default sizes on an idle 2-core CPU (2026-12-07, the README's measurement): the
# demo's duration as the README, the Makefile and the notebook state it, and the basis of the time left it prints.
STEP_MINUTES = {"prepare": 0.1, "pretrain": 5.5, "qa": 0.7, "sentences": 0.3, "tokenize another world": 0.1,
                "continue": 0.6}
FILL_MASK_SENTENCES = [  # in the style of the demo world's articles
    "Draius Manuthett was a painter from Theiciaia, born in 1617 and <mask> in 1707.",
    "Draius Manuthett died in 1707. His wife was Beimwen Tiaard, whom he <mask> in 1637.",
    "Draius Manuthett was a painter from Theiciaia. His teacher was the <mask> Padan Bouroding.",
    "The Haendholm Conservatory was <mask> in 1640 in Haendholm.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", type=lambda value: Path(user_path(value)), default=ROOT / "demo_output",
                   help="where everything is written")
    p.add_argument("--pretraining_steps", type=int, default=4500)
    p.add_argument("--qa_epochs", type=float, default=3.0)
    p.add_argument("--qa_train_samples", type=int, default=2000,
                   help="questions to fine-tune on: pretraining helps most where labelled data is scarce")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--acceptability_sentences", type=int, default=ACCEPTABILITY_SENTENCES,
                   help="labelled sentences to fine-tune classification on (0: skip that step)")
    p.add_argument("--acceptability_epochs", type=float, default=ACCEPTABILITY_EPOCHS)
    p.add_argument("--continued_steps", type=int, default=300,
                   help="updates of continued pretraining on another world's text (0: skip that step)")
    p.add_argument("--continued_documents", type=int, default=2000, help="articles of that world to read")
    args = p.parse_args(argv)
    check_acceptability_flags(p, args)
    return args


def check_acceptability_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The classification step's flags, checked now rather than after the minutes of pretraining before it."""
    if args.acceptability_sentences < 0:
        parser.error(f"--acceptability_sentences must not be negative (0 skips the step), got "
                     f"{args.acceptability_sentences}")
    if args.acceptability_sentences:
        if args.acceptability_sentences > (most := acceptability_capacity("train")):
            parser.error(f"--acceptability_sentences {args.acceptability_sentences}: the demo world has sentences "
                         f"about {most:,} training entities, one each; give at most that")
        if not 0 < args.acceptability_epochs < float("inf"):
            parser.error(f"--acceptability_epochs must be a positive number, got {args.acceptability_epochs}")


class Progress:
    """Which step of how many, and the time left: the expected minutes of the steps still to come, scaled by how
    this machine's pace so far compares with theirs."""

    def __init__(self, expected_minutes: list[float]):
        self.expected, self.done, self.started = expected_minutes, 0, time.perf_counter()

    def next_step(self) -> str:
        elapsed = (time.perf_counter() - self.started) / 60
        pace = elapsed / sum(self.expected[:self.done]) if self.done else 1.0
        self.done += 1
        return (f"[step {self.done} of {len(self.expected)}; {minutes(elapsed)} so far, about "
                f"{minutes(pace * sum(self.expected[self.done - 1:]))} left]")


def expected_minutes(args) -> list[float]:
    """STEP_MINUTES scaled to the flags, one entry per run() in the order main() runs them."""
    qa = STEP_MINUTES["qa"] * args.qa_epochs * args.qa_train_samples / (3.0 * 2000)
    steps = [STEP_MINUTES["prepare"], STEP_MINUTES["pretrain"] * args.pretraining_steps / 4500, qa, qa]
    if args.acceptability_sentences:
        sentences = STEP_MINUTES["sentences"] * args.acceptability_epochs * args.acceptability_sentences / (
            ACCEPTABILITY_EPOCHS * ACCEPTABILITY_SENTENCES)
        steps += [sentences, sentences]
    if args.continued_steps:
        steps += [STEP_MINUTES["tokenize another world"] * args.continued_documents / 2000,
                  STEP_MINUTES["continue"] * args.continued_steps / 300]
    return steps


PROGRESS: Progress | None = None  # main() sets the plan


def minutes(value: float) -> str:
    return f"{value:.0f} min" if value >= 2 else f"{value:.1f} min"


def run(step: str, command: list[str], makes: Path | None = None) -> float:
    """Run one of the repository's scripts, printing the command first; stop the demo if it fails, or if it ends
    without `makes` (a script stopped by a signal saves its state and exits 0). A Ctrl-C or SIGTERM reaches the
    script too (they go to the whole process group): the demo waits for it to stop, then says so in one line."""
    header = f"{step} {PROGRESS.next_step()}" if PROGRESS else step
    print(f"\n=== {header}\n$ {shlex.join(['python', *command[1:]])}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        code = process.wait()
    except (KeyboardInterrupt, Stopped) as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C is the script's: it stops at once
        process.wait()
        name, signum = stop_signal_name(stop)
        print(f"demo: stopped by {name} during '{step}'; the demo does not resume: `make demo` starts it again",
              file=sys.stderr, flush=True)
        sys.exit(exit_code_for_signal(signum))
    if code != 0 or (makes is not None and not makes.exists()):
        sys.exit(f"demo: the step '{step}' failed (see above)")
    return time.perf_counter() - start


def prepare(args, store: Path) -> float:
    return run("prepare the demo corpus and train a tokenizer", [
        sys.executable, "prepare_data.py", "--dataset", "demo", "--train_tokenizer", "4000", "--context_length",
        CONTEXT_LENGTH, "--path_to_data_store", str(store), "--overwrite"])


def pretrain(args, store: Path) -> float:
    steps = args.pretraining_steps
    return run("pretrain a small RoBERTa (masked language modelling)", [
        sys.executable, "train.py", "--experiment_name", "pretrain", "--working_directory", str(args.output_dir),
        "--path_to_prepped_data", str(store), *MODEL_FLAGS, "--per_gpu_batch_size", "16", "--num_training_steps",
        str(steps), "--num_warmup_steps", str(steps // 20), "--learning_rate", "1e-3", "--evaluation_interval",
        str(steps // 6), "--checkpoint_interval", str(steps // 2), "--logging_steps", str(steps // 12),
        "--max_eval_batches", "20", "--seed", str(args.seed), "--overwrite"],
        makes=run_folder.final_model_dir(args.output_dir / "pretrain"))


def fill_mask(model_dir: Path) -> None:
    hf_logging.disable_progress_bar()  # a loading bar would sit in the middle of the printed results
    print("\n=== fill in the blanks with the pretrained model (transformers' own fill-mask pipeline)")
    fill = pipeline("fill-mask", model=str(model_dir), device=-1)
    for sentence in FILL_MASK_SENTENCES:
        guesses = ", ".join(f"{g['token_str'].strip()!r} {g['score']:.2f}" for g in fill(sentence, top_k=5))
        print(f"{sentence}\n    -> {guesses}")


def finetune(args, backbone: str, pretrained_dir: Path) -> float:
    return run(f"fine-tune question answering from the {backbone} backbone", [
        sys.executable, "finetune_roberta_qa.py", "--experiment_name", f"qa_{backbone}", "--working_directory",
        str(args.output_dir), "--dataset", "demo", "--pretrained_backbone", backbone,
        "--path_to_pretrained_backbone", str(pretrained_dir), "--num_train_epochs", str(args.qa_epochs),
        "--max_train_samples", str(args.qa_train_samples), "--per_device_batch_size", "16",
        "--gradient_accumulation_steps", "1", "--learning_rate", "3e-4", "--warmup_steps", "0.1",
        "--max_seq_length", CONTEXT_LENGTH, "--doc_stride", "24", "--eval_steps", "0", "--save_steps", "0",
        "--seed", str(args.seed), "--overwrite"])


def acceptability_files(args) -> tuple[Path, Path]:
    """The demo's labelled sentences as JSON lines files, as a user's own data would come: sentences about the
    world's people, towns and institutions, half of them with two words swapped (demo_world.generate_acceptability);
    the validation sentences are about entities no training sentence mentions."""
    folder = args.output_dir / "acceptability"
    folder.mkdir(parents=True, exist_ok=True)
    files = folder / "train.jsonl", folder / "validation.jsonl"
    for path, split, n in ((files[0], "train", args.acceptability_sentences),
                           (files[1], "validation", ACCEPTABILITY_EVAL_SENTENCES)):
        rows = generate_acceptability(split=split, num_sentences=n)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return files


def finetune_acceptability(args, backbone: str, pretrained_dir: Path, files: tuple[Path, Path]) -> float:
    return run(f"fine-tune sentence classification from the {backbone} backbone", [
        sys.executable, "finetune_roberta_classification.py", "--experiment_name", f"acceptability_{backbone}",
        "--working_directory", str(args.output_dir), "--train_file", str(files[0]), "--validation_file",
        str(files[1]), "--pretrained_backbone", backbone, "--path_to_pretrained_backbone", str(pretrained_dir),
        "--num_train_epochs", str(args.acceptability_epochs), "--per_device_batch_size", "16", "--learning_rate",
        "3e-4", "--warmup_steps", "0.06", "--max_seq_length", CONTEXT_LENGTH, "--eval_steps", "0", "--save_steps",
        "0", "--logging_steps", "75", "--seed", str(args.seed), "--overwrite"])


def acceptability_summary(args) -> None:
    print("\n=== sentence classification on held-out demo sentences (as written, or two words swapped?)")
    print(f"{'backbone':28s} {'accuracy':>9s} {'macro-F1':>9s}")
    for backbone, label in (("pretrained", "pretrained by train.py"), ("random", "random initialisation")):
        r = classification_run_folder.read_results(args.output_dir / f"acceptability_{backbone}")
        print(f"{label:28s} {100 * r['eval_accuracy']:9.1f} {100 * r['eval_macro_f1']:9.1f}")


def continue_pretraining(args, pretrained_dir: Path) -> float:
    """Another world's articles (new names, new facts, the same kind of prose), tokenized with the pretrained model's
    own tokenizer, then more masked-LM updates of that model: train.py --init_from."""
    text, store = args.output_dir / "new_world.txt", args.output_dir / "data_new_world"
    text.write_text("\n\n".join(generate_documents(seed=NEW_WORLD_SEED, num_documents=args.continued_documents)))
    seconds = run("tokenize another world's text with the pretrained model's tokenizer", [
        sys.executable, "prepare_data.py", "--text_files", str(text), "--hf_model_name", str(pretrained_dir),
        "--context_length", CONTEXT_LENGTH, "--test_split_pct", "0.05", "--path_to_data_store", str(store),
        "--overwrite"])
    steps = args.continued_steps
    return seconds + run("continue pretraining the pretrained model on that text (train.py --init_from)", [
        sys.executable, "train.py", "--init_from", str(pretrained_dir), "--experiment_name", "continued",
        "--working_directory", str(args.output_dir), "--path_to_prepped_data", str(store),
        "--per_gpu_batch_size", "16", "--num_training_steps", str(steps), "--num_warmup_steps",
        str(max(steps * 6 // 100, 1)), "--learning_rate", "5e-4", "--evaluation_interval", str(max(steps // 3, 1)),
        "--checkpoint_interval", str(steps), "--logging_steps", str(max(steps // 6, 1)), "--max_eval_batches", "20",
        "--seed", str(args.seed), "--overwrite"])


def summary(args, timings: dict[str, float]) -> None:
    results = {b: qa_run_folder.read_results(args.output_dir / f"qa_{b}") for b in ("pretrained", "random")}
    print("\n=== results on held-out demo questions (same fine-tuning budget)")
    print(f"{'backbone':28s} {'exact match':>12s} {'F1':>8s}")
    for backbone, label in (("pretrained", "pretrained by train.py"), ("random", "random initialisation")):
        r = results[backbone]
        print(f"{label:28s} {r['exact_match']:12.1f} {r['f1']:8.1f}")
    if args.acceptability_sentences:
        acceptability_summary(args)
    if args.continued_steps:
        evals = run_folder.eval_records(args.output_dir / "continued")
        print("\n=== continued pretraining on another world's text (its held-out masked tokens)")
        print(f"{'model':28s} {'loss':>8s} {'accuracy':>9s}")
        for label, r in (("pretrained (step 0)", evals[0]), (f"continued {evals[-1]['step']} updates", evals[-1])):
            print(f"{label:28s} {r['eval_loss']:8.2f} {100 * r['eval_accuracy']:8.1f}%")
    print("\ntime per step: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    print(f"pretraining curves: {run_folder.curves_file(args.output_dir / 'pretrain')}; everything else under "
          f"{args.output_dir}/")


def main() -> None:
    global PROGRESS
    args = parse_args()
    raise_on_stop_signals()  # a SIGTERM ends the demo in one line too, once its script has stopped
    PROGRESS = Progress(expected_minutes(args))
    print(f"demo: {len(PROGRESS.expected)} steps, about {minutes(sum(PROGRESS.expected))} on a 2-core CPU (less with "
          "more cores or a GPU)", flush=True)
    store = args.output_dir / "data"
    pretrained_dir = run_folder.final_model_dir(args.output_dir / "pretrain")
    timings = {"prepare": prepare(args, store), "pretrain": pretrain(args, store)}
    fill_mask(pretrained_dir)
    for backbone in ("pretrained", "random"):
        timings[f"qa {backbone}"] = finetune(args, backbone, pretrained_dir)
    if args.acceptability_sentences:
        files = acceptability_files(args)
        for backbone in ("pretrained", "random"):
            timings[f"sentences {backbone}"] = finetune_acceptability(args, backbone, pretrained_dir, files)
    if args.continued_steps:
        timings["continued"] = continue_pretraining(args, pretrained_dir)
    summary(args, timings)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Stopped) as stop:  # between the scripts (run() handles a stop inside one)
        name, signum = stop_signal_name(stop)
        print(f"demo: stopped by {name}; `make demo` starts it again", file=sys.stderr)
        sys.exit(exit_code_for_signal(signum))
