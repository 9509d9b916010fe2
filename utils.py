"""Helpers shared by the three scripts.

Sections:
  * command-line errors: `UsageError` and `run_cli`, so that bad input ends in one clear line (exit code 2)
  * tokenizer: `load_tokenizer` (the one loader of all three scripts), `train_bpe_tokenizer` (RoBERTa's
    byte-level BPE trained on our own text) and `tokenizer_fingerprint`
  * the data store: the layout prepare_data.py writes and train.py and the notebook read (`STORE_*`, `open_store`)
  * dynamic masking: `mask_tokens` (RoBERTa's fixed count per row, 80/10/10) and `max_predictions_per_seq`, used
    by train.py
  * SQuAD: reading and checking SQuAD files, windows, answers from logits (`answer_questions`), and the official
    v1.1 and v2.0 metrics, used by finetune_roberta_qa.py and ask.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in RoBERTa's vocabulary
BPE_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # a byte-level BPE holds every byte, then the special tokens
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")  # any one marks a tokenizer folder


# ----------------------------------------------------------------------------------------------------------------
# Command-line errors
# ----------------------------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A problem with what the user asked for. Printed as one line, without a traceback; exit code 2."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's `main`, turning a `UsageError` into `error: <message>` on stderr and exit code 2."""
    try:
        main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def is_main_process() -> bool:
    """True on the process that writes files and prints (rank 0 under torchrun / accelerate launch; RANK is set by
    both, and is also right before an Accelerator exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str, prefix: str = "") -> None:
    """One line of progress, printed by the main process only, flushed at once (logs are read while runs go)."""
    if is_main_process():
        print(f"{prefix}{message}", flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line UsageError (exit code 2) rather than usage text plus an error, and
    every value goes through `user_path`, the one path normaliser of all the scripts."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for name, value in vars(namespace).items():
            if isinstance(value, str | Path):
                setattr(namespace, name, user_path(value))
            elif isinstance(value, list):
                setattr(namespace, name, [user_path(v) if isinstance(v, str) else v for v in value])
        return namespace, extras


def user_path(value: str | Path) -> str | Path:
    """`~` and `~/...` expanded to the home folder, as a shell would have (it does not in `--flag=~/x`, nor in
    quotes); any other value unchanged."""
    text = str(value)
    if text == "~" or text.startswith("~/"):
        return type(value)(os.path.expanduser(text))
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as the three scripts show it: the description as written (paragraphs, examples), and every flag's
    default (or "required")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return f"{text} (required)"
        if "(default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on, for the record written beside its outputs."""
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for name in ["torch", "transformers", "datasets", "accelerate", "tokenizers"]:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str | os.PathLike, *, flag: str, cache_dir: str | None = None):
    """The tokenizer in a local folder or of a Hub id; any failure is one UsageError naming `flag` and the value.

    The one tokenizer loader of the three scripts. A folder must hold tokenizer files: from a model folder without
    them, transformers would quietly build a tokenizer of special tokens only, and all that follows would run on
    garbage. Callers check what their task needs on top (a <mask> token, a fast tokenizer with offsets)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    name = str(name_or_path)
    folder = Path(name).expanduser()
    looks_local = folder.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not folder.is_dir():
        raise UsageError(f"{flag} {name} is not a folder: give a tokenizer folder or a Hub id")
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UsageError(f"{flag} {name} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}): save the tokenizer "
                         "in that folder (tokenizer.save_pretrained) or give another")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the failure is reported below, in one line
    try:
        return AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else name, cache_dir=cache_dir)
    except Exception as error:  # OSError, ValueError, HTTP errors...: all mean "cannot use this name"
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        where = "the folder's tokenizer files could not be read" if folder.is_dir() else (
            "not a reachable Hub id; check the name and the network, or give a local tokenizer folder")
        raise UsageError(f"{flag} {name}: {where} ({reason})") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what maps text to ids (vocabulary, merges, added tokens), to tell two tokenizers apart.

    Recorded in a store's prepare_data.json so that training with another tokenizer than the one that made the
    store's ids is refused. Independent of how the tokenizer was loaded (max length, padding side...)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str())["model"]
        content = {"model": model, "added": sorted(tokenizer.get_added_vocab().items())}
    else:
        content = {"vocab": sorted(tokenizer.get_vocab().items())}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=8).hexdigest()


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512):
    """Train RoBERTa's byte-level BPE on `texts` and return it as a transformers `RobertaTokenizer`.

    Special tokens get RoBERTa's ids: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` 4.
    """
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    if vocab_size < BPE_MIN_VOCAB_SIZE:
        raise UsageError(f"a byte-level BPE vocabulary needs at least {BPE_MIN_VOCAB_SIZE} entries (256 bytes + "
                         f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    # transformers 5 takes the vocabulary and merges as objects (`vocab=`, `merges=`); the old
    # `vocab_file=`/`merges_file=` keywords are silently ignored and give a tokenizer of special tokens only.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # As in roberta-base, `<mask>` swallows the space before it: "known <mask> of" must encode as
    # ["known", "<mask>", "Ġof"], since the masked token was "Ġword" in training; without lstrip a lone "Ġ"
    # token would precede the mask and fill-mask predictions would be nonsense.
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    tokenizer = RobertaTokenizer(vocab=model["vocab"], merges=merges, mask_token=mask,
                                 model_max_length=model_max_length)
    sample = "Hello world, this is a tokenizer round trip."
    if tokenizer.decode(tokenizer(sample)["input_ids"], skip_special_tokens=True) != sample:
        raise RuntimeError("the trained tokenizer does not round-trip text; please report this as a bug")
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if encode("the <mask>") != encode("the") + [tokenizer.mask_token_id]:
        raise RuntimeError("the trained tokenizer does not strip the space before <mask>; please report this as a bug")
    return tokenizer


# ----------------------------------------------------------------------------------------------------------------
# The data store: written by prepare_data.py, read by train.py and the notebook
# ----------------------------------------------------------------------------------------------------------------
# `datasets.DatasetDict.save_to_disk` with splits STORE_SPLITS, one column STORE_COLUMN of blocks of exactly
# `context_length` token ids (`<s> ... </s>`), the tokenizer that made the ids in STORE_TOKENIZER_DIR, and the
# record of the run (arguments, counts, tokenizer fingerprint) in STORE_RECORD.

STORE_SPLITS = ("train", "test")
STORE_COLUMN = "input_ids"
STORE_TOKENIZER_DIR = "tokenizer"
STORE_RECORD = "prepare_data.json"


def open_store(path: str | os.PathLike, *, flag: str = "--path_to_prepped_data", context_length: int | None = None):
    """(DatasetDict, record) of a store, checked against the layout above; one UsageError on any problem.

    `record` is the parsed STORE_RECORD ({} for a store written before records existed). With `context_length`,
    the blocks must have that length."""
    import datasets

    store = Path(path)
    hint = f"write one with `python prepare_data.py --path_to_data_store {path} ...`"
    if not store.is_dir():
        raise UsageError(f"{flag} {path} does not exist; {hint}")
    if not (store / "dataset_dict.json").is_file():
        raise UsageError(f"{flag} {path} is not a data store (no dataset_dict.json); {hint}")
    try:
        data = datasets.load_from_disk(str(store))
        record = json.loads((store / STORE_RECORD).read_text()) if (store / STORE_RECORD).is_file() else {}
    except Exception as error:  # a damaged store fails in many ways; all mean the same to a user
        raise UsageError(f"{flag} {path} could not be read ({type(error).__name__}: {str(error)[:200]}); "
                         f"{hint}") from None
    for split in STORE_SPLITS:
        if split not in data or STORE_COLUMN not in data[split].column_names or len(data[split]) == 0:
            raise UsageError(f"{flag} {path} needs a non-empty '{split}' split with an {STORE_COLUMN} column (it has "
                             f"{dict(data.num_rows)}); {hint}")
        block = len(data[split][0][STORE_COLUMN])
        if context_length is not None and block != context_length:
            raise UsageError(f"--context_length {context_length} does not match the store's blocks of {block} "
                             f"tokens; pass --context_length {block} or prepare a store of {context_length}")
    return data, record


def store_tokenizer(path: str | os.PathLike, record: dict, fallback: str | None = None, *,
                    fallback_flag: str = "--hf_model_name"):
    """The tokenizer that made a store's ids: its own STORE_TOKENIZER_DIR, else `fallback`, checked against the
    fingerprint the store recorded, so that no run reads the ids as other tokens."""
    folder = Path(path) / STORE_TOKENIZER_DIR
    if folder.is_dir():
        source, tokenizer = str(folder), load_tokenizer(folder, flag="the store's tokenizer")
    elif fallback:
        source = fallback
        tokenizer = load_tokenizer(fallback, flag=f"{fallback_flag} (the store has no {STORE_TOKENIZER_DIR}/ folder)")
    else:
        raise UsageError(f"the store {path} has no {STORE_TOKENIZER_DIR}/ folder; give the tokenizer that made it")
    recorded = record.get("tokenizer", {})
    if recorded.get("fingerprint") and recorded["fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise UsageError(f"the tokenizer from {source} is not the one that made the store {path} (recorded: "
                         f"{recorded.get('from')}, vocabulary {recorded.get('vocab_size')}; this one: vocabulary "
                         f"{len(tokenizer)}): the store's ids would be read as other tokens")
    return tokenizer


def wandb_logged_in() -> bool:
    """Whether wandb will find credentials: WANDB_API_KEY, an identity token file, or the .netrc entry that `wandb
    login` writes (for WANDB_BASE_URL's host, else a W&B host). Read without importing wandb: wandb caches its
    settings at first use, so asking wandb itself would fix its mode before WANDB_MODE=offline could be set."""
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    if os.environ.get("WANDB_BASE_URL"):
        return urlsplit(os.environ["WANDB_BASE_URL"]).netloc in hosts
    return any("wandb" in host or "coreweave" in host for host in hosts)


def wandb_offline_unless_logged_in() -> str | None:
    """Weights & Biases without a login logs offline instead of stopping the run at a login prompt or at its first
    upload; a WANDB_MODE the user set is left alone. Returns the note to print when it switched to offline; raises
    UsageError when wandb is not installed."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise UsageError("logging to Weights & Biases needs the wandb package: pip install wandb")
    if os.environ.get("WANDB_MODE") or wandb_logged_in():
        return None
    os.environ["WANDB_MODE"] = "offline"
    return ("note: no Weights & Biases login (WANDB_API_KEY or `wandb login`), so wandb logs offline into the run "
            "folder's wandb/ (upload it later with `wandb sync`; WANDB_MODE=online insists on online)")


# ----------------------------------------------------------------------------------------------------------------
# Training curves and the GPU's matrix rate (train.py, benchmarks)
# ----------------------------------------------------------------------------------------------------------------


def plot_training_curves(records: list[dict], path: str | os.PathLike) -> None:
    """Loss and eval-accuracy curves of train.py's metrics.jsonl records, written atomically to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"], r["eval_accuracy"]) for r in records if "eval_loss" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss", alpha=0.7)
    if evals:
        steps, losses, accuracies = zip(*evals, strict=True)
        ax_loss.plot(steps, losses, "o-", label="eval loss")
        ax_acc.plot(steps, [100 * a for a in accuracies], "o-", color="tab:green")
    ax_loss.set(xlabel="update", ylabel="masked-LM loss (nats)", title="loss")
    ax_loss.legend()
    ax_acc.set(xlabel="update", ylabel="masked-token accuracy (%)", title="eval accuracy")
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def readable(x: float, digits: int = 2) -> str:
    """A number for a log line: fixed-point while it is of sane size, scientific beyond (a perplexity of e^700
    prints as 1.014e+304, not as 305 digits)."""
    return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.3e}"


@dataclass
class LossWatch:
    """Warns when the training loss has stayed far above where it started for many updates: a run that diverges
    without ever reaching NaN (a learning rate far too high) would otherwise run to its end and exit 0.

    The starting value is the untrained model's evaluation loss (step 0; ln(vocabulary) or so), else the first
    logged training loss. "Far above" is more than FACTOR times it, which a healthy run never reaches (its loss
    only falls from there, and spikes rarely double it); "many updates" is at least PATIENCE updates over at least
    two log lines, so that one spike is not reported. A warning, not a stop: like loss spikes in large runs, a
    divergence sometimes recovers, and the user judges; it is repeated if the loss recovers and diverges again."""

    FACTOR = 2.0
    PATIENCE = 20
    start: float | None = None
    above_since: int | None = None  # the first update of the run of log lines above the threshold
    lines_above: int = 0
    warned: bool = False

    def start_from(self, records: list[dict]) -> None:
        """The starting value from a run's metrics.jsonl records (on resume: the original start)."""
        first = [r["eval_loss"] for r in records if r.get("step") == 0 and "eval_loss" in r] + \
            [r["loss"] for r in records if "loss" in r]
        self.start = first[0] if first else None

    def update(self, step: int, loss: float, updates: int) -> str | None:
        """Take the loss logged at `step` (the mean over its last `updates` updates); return a warning, or None."""
        if self.start is None:
            self.start = loss
            return None
        if loss <= self.FACTOR * self.start:
            self.above_since, self.lines_above, self.warned = None, 0, False
            return None
        if self.above_since is None:
            self.above_since = step - updates + 1
        self.lines_above += 1
        if self.warned or self.lines_above < 2 or step - self.above_since + 1 < self.PATIENCE:
            return None
        self.warned = True
        return (f"the training loss is diverging: {readable(loss, 4)} at step {step}, above {self.FACTOR:g} x its "
                f"starting value {readable(self.start, 4)} at every log line since step {self.above_since}. The "
                f"learning rate is likely too high: stop the run (Ctrl-C saves a checkpoint), then resume from a "
                f"checkpoint saved before step {self.above_since} or start again (--overwrite), with a lower "
                "--learning_rate or more --num_warmup_steps")


def command_with(parser: argparse.ArgumentParser, argv: list[str], changes: dict[str, str | None]) -> str:
    """The command `argv` ran, with the flags of `changes` set to their value ("" for a flag alone, None to leave
    the flag out): advice that can be run as printed."""
    import shlex

    takes_value = {option: action.nargs != 0 for action in parser._actions for option in action.option_strings}
    kept, i = [], 0
    while i < len(argv):
        name = argv[i].split("=")[0]
        width = 1 if "=" in argv[i] or not takes_value.get(name, False) else 2
        if name.replace("--no-", "--") not in changes:
            kept += argv[i:i + width]
        i += width
    for flag, value in changes.items():
        kept += [] if value is None else [flag, value] if value else [flag]
    return shlex.join(["python", parser.prog, *kept])


def matmul_flops_per_second(device, dtype, size: int = 8192, repeats: int = 10) -> float:
    """The measured rate of `size` x `size` matrix multiplies in `dtype` on `device`: the denominator of MFU (for
    train.py and the benchmarks alike). Three untimed products first; random operands from a private generator,
    so that no other random stream moves."""
    import time

    import torch

    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2))

    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        a @ b
    wait()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    wait()
    return repeats * 2 * size**3 / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------
# Dynamic masking (train.py)
# ----------------------------------------------------------------------------------------------------------------

_MASKING_TABLES: dict = {}  # (special ids, vocabulary size, device) -> (special ids, ordinary ids) on that device


def _masking_tables(tokenizer, device):
    """The special ids and the ordinary (non-special) ids as tensors on `device`, built once per device.

    Cached because building them means a host-to-device copy, which would make every step wait for the GPU."""
    import torch

    special = tuple(sorted(set(tokenizer.all_special_ids)))
    key = (special, len(tokenizer), str(device))
    if key not in _MASKING_TABLES:
        special_ids = torch.tensor(special, dtype=torch.long)
        ordinary = torch.ones(len(tokenizer), dtype=torch.bool)
        ordinary[special_ids[special_ids < len(tokenizer)]] = False
        _MASKING_TABLES[key] = (special_ids.to(device), ordinary.nonzero().squeeze(-1).to(device))
    return _MASKING_TABLES[key]


def max_predictions_per_seq(context_length: int, mlm_probability: float = 0.15) -> int:
    """The most positions `mask_tokens` can choose in one row of `context_length` tokens: floor(p * n) + 1 for
    n = context_length, at most n.

    The `max_predictions_per_seq` to give `RobertaForMaskedLM.forward` (BERT's flag of that name) for blocks of
    this length masked with this probability: its MLM head then runs on a fixed `batch x k` rows, which
    torch.compile traces into one graph. Special tokens only lower a row's count, so the bound holds for every
    row; the model checks it on the device in eager mode (a row with more would lose the excess)."""
    if context_length < 1 or not 0 <= mlm_probability <= 1:
        raise ValueError(f"need context_length >= 1 and 0 <= mlm_probability <= 1, got {context_length} and "
                         f"{mlm_probability}")
    # The same float64 product as mask_tokens' count, so that the bound cannot round differently from it.
    return min(math.floor(mlm_probability * context_length) + 1, context_length)


def mask_tokens(input_ids, tokenizer, mlm_probability: float = 0.15, generator=None):
    """RoBERTa's dynamic masking, drawn as fairseq draws it: returns `(inputs, labels)`, `input_ids` untouched.

    Each row (the last dimension is the sequence) with n maskable tokens (every token that is not special:
    padding, `<s>`, `</s>` and the others are never chosen) gets exactly int(mlm_probability * n + U), U ~ U[0, 1),
    predicted positions, drawn without replacement: floor(p * n) or one more, p * n on average. This is fairseq's
    `mask_tokens_dataset.py` (the paper's code); transformers' collator flips a coin per token instead, which gives
    the same mean but a count that varies from row to row. A chosen token becomes `<mask>` 80% of the time, a
    random non-special token 10%, and stays as it is 10% (a coin per chosen token). `labels` holds the original id
    at chosen positions and -100 elsewhere.

    Runs on the tensor's device with no host synchronisation and no data-dependent shape (random scores, special
    tokens ranked last, the `count` first of each row chosen), so it can sit inside a compiled step. `generator`
    (on that same device) makes the draw reproducible; successive calls with one generator draw afresh.
    `max_predictions_per_seq(T, mlm_probability)` bounds the count of a row of T tokens.
    """
    import torch

    special_ids, ordinary_ids = _masking_tables(tokenizer, input_ids.device)
    draw = dict(device=input_ids.device, generator=generator)
    ids = input_ids.reshape(-1, input_ids.size(-1))  # (B, T): any leading dimensions are rows
    B, T = ids.shape
    maskable = ~torch.isin(ids, special_ids)  # (B, T)
    n = maskable.sum(dim=1, keepdim=True)  # (B, 1)
    # int(p * n + U): probabilistic rounding, in float64 so that the count agrees with max_predictions_per_seq.
    count = (n.double() * mlm_probability + torch.rand((B, 1), dtype=torch.float64, **draw)).floor().long()
    count = torch.minimum(count, n)
    # Without replacement and without nonzero(): a random score per token (special tokens scored above every
    # ordinary one), and the positions of the `count` lowest scores chosen. Ranks are scattered back to positions.
    scores = torch.rand((B, T), **draw).masked_fill(~maskable, 2.0)  # ordinary tokens score in [0, 1)
    by_score = scores.argsort(dim=1)  # (B, T): positions, lowest score first
    first_ranks = torch.arange(T, device=ids.device) < count  # (B, T): rank r is chosen when r < count
    chosen = torch.zeros_like(maskable).scatter(1, by_score, first_ranks)  # (B, T)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))

    action = torch.rand((B, T), **draw)  # < 0.8: <mask>; 0.8..0.9: random token; >= 0.9: unchanged
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), (B, T), **draw)].to(ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs.reshape(input_ids.shape), labels.reshape(input_ids.shape)


# ----------------------------------------------------------------------------------------------------------------
# SQuAD: files, windows, answers, metrics (finetune_roberta_qa.py, ask.py)
# ----------------------------------------------------------------------------------------------------------------
# Data layout: an example is a row {id, context, question, answers: {text: [...], answer_start: [...]}} (the Hub's
# `rajpurkar/squad` columns); a feature is one window of at most `max_length` tokens, `<s> question </s></s>
# context-slice </s>`, consecutive windows of a long context overlapping by `doc_stride` tokens.


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
    model of `config` (a RobertaConfig): its ids fit the embedding table, it is not a much smaller vocabulary than
    the table (another tokenizer), and its special tokens have the ids the model was trained with."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"the tokenizer of {source} ({type(tokenizer).__name__}) has no offsets mapping; SQuAD "
                         "windows need a fast (Rust `tokenizers`) tokenizer with tokenizer.json")
    size = len(tokenizer)
    if size > config.vocab_size:
        raise UsageError(f"the tokenizer of {source} has {size:,} tokens but the model's embedding table only "
                         f"{config.vocab_size:,} rows: they do not belong together")
    if size < config.vocab_size // 2:
        raise UsageError(f"the tokenizer of {source} has {size:,} tokens but the model's embedding table "
                         f"{config.vocab_size:,} rows: it is not the tokenizer the model was trained with")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ours, theirs = getattr(tokenizer, name, None), getattr(config, name)
        if ours is not None and ours != theirs:
            raise UsageError(f"the tokenizer of {source} has {name} {ours} but the model's config.json says "
                             f"{theirs}: they do not belong together")


def _qa_windows(examples, tokenizer, max_length: int, doc_stride: int):
    """Tokenize question/context pairs into overlapping windows (one encoding per window, question first)."""
    questions = _fit_questions([q.lstrip() for q in examples["question"]], tokenizer, max_length, doc_stride)
    return tokenizer(questions, list(examples["context"]), truncation="only_second", max_length=max_length,
                     stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                     padding="max_length")


def _fit_questions(questions: list[str], tokenizer, max_length: int, doc_stride: int) -> list[str]:
    """Cut questions so long that no context window would fit beside them (the tokenizer would panic)."""
    budget = max_length - doc_stride - tokenizer.num_special_tokens_to_add(pair=True) - 1
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


def prepare_qa_train_features(examples, tokenizer, max_length: int = 384, doc_stride: int = 128) -> dict:
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


def prepare_qa_eval_features(examples, tokenizer, max_length: int = 384, doc_stride: int = 128) -> dict:
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


def _window_offsets(features) -> list:
    """Per window, an (T, 3) int array of (in context, start char, end char) per token, read from `offset_mapping`.

    A datasets.Dataset is read through Arrow: turning ~400 (start, end) pairs per window into Python objects one
    window at a time would cost more than the post-processing itself."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

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
    import numpy as np

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
    import math

    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def best_answers(examples, features, predictions, n_best_size: int = 20, max_answer_length: int = 30,
                 allow_no_answer: bool = False, null_score_diff_threshold: float = 0.0) -> dict[str, dict]:
    """The one search from window logits to answers, shared by evaluation and `answer_questions`.

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
    import numpy as np

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


def postprocess_qa_predictions(examples, features, predictions, n_best_size: int = 20, max_answer_length: int = 30,
                               version_2_with_negative: bool = False,
                               null_score_diff_threshold: float = 0.0) -> dict[str, str]:
    """Per-window start/end logits -> {example id: answer text}: the answers of `best_answers` (see there), with
    the null answer "" allowed when `version_2_with_negative`."""
    answers = best_answers(examples, features, predictions, n_best_size, max_answer_length,
                           allow_no_answer=version_2_with_negative, null_score_diff_threshold=null_score_diff_threshold)
    return {example_id: answer["answer"] for example_id, answer in answers.items()}


def answer_questions(model, tokenizer, questions: Sequence[str], contexts: Sequence[str], max_seq_length: int = 384,
                     doc_stride: int = 128, n_best_size: int = 20, max_answer_length: int = 30,
                     allow_no_answer: bool = False, batch_size: int = 32,
                     null_score_diff_threshold: float = 0.0) -> list[dict]:
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
    import numpy as np
    import torch

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


def normalize_squad_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, squeeze spaces."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the official SQuAD v1.1 script (on normalised text)."""
    from collections import Counter

    pred_tokens, gold_tokens = normalize_squad_answer(prediction).split(), normalize_squad_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _squad_v2_f1(gold: str, prediction: str) -> float:
    """compute_f1 of the official v2.0 script: as v1.1, except that two empty answers agree (F1 1)."""
    from collections import Counter

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
