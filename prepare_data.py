"""Prepare a pretraining corpus: documents -> train/test split -> (tokenizer) -> token ids -> packed blocks -> store.

Examples:
    python prepare_data.py --dataset demo --train_tokenizer 8000 --context_length 128 --path_to_data_store data/demo
    python prepare_data.py --text_files a.txt b.txt --train_tokenizer 32000 --path_to_data_store data/mytext
    python prepare_data.py --dataset_name Salesforce/wikitext --dataset_config_name wikitext-103-raw-v1 \\
        --group_rows wikitext --train_tokenizer 32000 --path_to_data_store data/wikitext103
    python prepare_data.py --dataset wikipedia_bookcorpus --path_to_data_store data/wiki_books_512  # ~15 GB download

Sources (give exactly one; each becomes documents, one a row, that all go through the same split, tokenise and
pack code):
  * --dataset demo: encyclopedia articles about a fictional world from demo_world.py (world seed 0, the world that
    finetune_roberta_qa.py's --dataset demo asks about), a few million tokens, no network.
  * --text_files: plain UTF-8 text; a blank line separates documents, and a file without blank lines is one
    document a line.
  * --dataset_name NAME_OR_PATH: anything `datasets.load_dataset` reads: a Hub dataset id, or a local folder (or
    file) of parquet, JSON lines, CSV or text. Its rows of --dataset_split (default `train`; `train+validation`
    joins several) are the documents, read from --text_column. Only that split is used, so that a corpus's own
    validation and test text stays unseen; the held-out `test` split of the store is drawn from it as below.
    Rows become documents as they are, empty rows dropped (--group_rows none), or grouped: --group_rows wikitext
    joins the rows of each WikiText article (a new article starts at each top-level heading ` = Title = `;
    WikiText's raw rows are lines: headings, paragraphs and blank lines); --group_rows N joins every N
    consecutive non-empty rows (for a corpus of one sentence a row).
  * --dataset wikipedia_bookcorpus: English Wikipedia (wikimedia/wikipedia, 20231101.en, parquet) then BookCorpus
    (bookcorpus/bookcorpus from its parquet branch, since datasets 4+ runs no loading scripts; one sentence a
    row, grouped by 64 into passages of about 1,000 tokens). --dataset wikipedia: Wikipedia alone.

Hub downloads: before anything is downloaded, a pre-flight asks the Hub for every repository the run needs (the
datasets and a Hub tokenizer), resolves each requested branch to its commit sha and adds up the files' sizes; the
data is then loaded at exactly those shas, which prepare_data.json records. A missing repository, revision or
parquet branch stops the run there, in one line. --max_documents N streams the first N documents (no full
download). --huggingface_cache_dir DIR puts every download under DIR: the Hub's files (parquet, the tokenizer)
in DIR/hub (this process's HF_HUB_CACHE: datasets downloads Hub files there whatever cache_dir it is given), the
Arrow cache of datasets in DIR/datasets, and Xet chunks in DIR/xet. A pre-flight disk check compares the free
space with an estimate from measured ratios and refuses, in one line, a run that would not fit
(--skip_disk_check to go ahead anyway).

Split: by document, before tokenising: a seeded (--dataset_split_seed) draw of --test_split_pct (a fraction) of
the non-empty documents goes to `test`; both splits keep the source's order.

Packing: a split's documents are tokenised without special tokens and joined into one stream, one `</s>` between
consecutive documents (`doc1 </s> doc2 </s> doc3`). The stream is cut into pieces of context_length - 2 tokens
at whatever token the cut falls on, as transformers' `group_texts` does, and each piece is framed as
`<s> piece </s>`, so every block has exactly context_length ids. A block may therefore start or end in the middle
of a sentence and hold the end of one document and the start of the next. This is not the paper's
FULL-SENTENCES (whole sentences packed up to 512 tokens, crossing document boundaries with a separator, never
cutting a sentence) nor DOC-SENTENCES (the same, but never crossing a document boundary). Decoding the blocks'
pieces in order and splitting on `</s>` gives back the documents; only the stream's final remainder (shorter than
one piece) is dropped, and its size is reported. Literal "<s>"/"</s>" strings inside a document are tokenised as
text, so a document cannot forge a separator. Tokenising runs in --num_workers processes that hand their ids
back in document order to one packer, so any --num_workers gives the same bytes.

Store (--path_to_data_store): the layout of `datasets.DatasetDict.save_to_disk`, written directly (the token
stream is on disk once): splits `train` and `test`, column `input_ids` (uint16 when the vocabulary fits, else
int32), `tokenizer/` (the tokenizer that made the ids, loaded or trained), `prepare_data.json` (command line,
arguments, sources at their shas, tokenizer size and fingerprint, counts, dropped tokens, speed, library
versions) and a README.md. It is written in a work folder beside the store and renamed into place at the end.

Your files are safe: the store folder must be new, empty, or a store this script wrote (recognised by its
prepare_data.json); --overwrite replaces only the latter, keeps (carries into the new store) any file it did not
make, and never touches the current folder, its parents, home, a git repository or a folder holding an input.
One run at a time per store (a lock file; train.py holds a shared lock while it reads the store). A run killed
mid-way leaves only hidden `.<store>.tmp-*`/`.old-*` folders, which the next run into that store cleans up.

Exit codes: 0 done; 2 bad usage or input (one line `error: ...`, nothing written); 130 interrupted by Ctrl-C,
143 by SIGTERM (the work folder removed, the store as it was); 1 an unexpected error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import folders
from utils import (
    BPE_MIN_VOCAB_SIZE,
    STORE_COLUMN,
    STORE_RECORD,
    STORE_SPLITS,
    STORE_TOKENIZER_DIR,
    ArgumentParser,
    HelpFormatter,
    UsageError,
    library_versions,
    load_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)
from utils import log as shared_log

TRAIN, TEST = STORE_SPLITS
DATASETS = ["wikipedia_bookcorpus", "wikipedia", "demo"]
BOOKCORPUS_SENTENCES_PER_DOCUMENT = 64  # about 1,000 tokens: a few pages, so the split and separators are by passage
DEMO_WORLD_SEED = 0  # the demo QA set asks about this world
TOKENIZE_BATCH_DOCUMENTS = 1000  # documents per task of a tokenising worker (memory per worker: one batch)
PACK_READ_DOCUMENTS = 10_000  # documents per read when writing or scanning documents
STREAM_READ_ROWS = 1000  # rows per read of a streamed corpus: --max_documents reads at most this many too many
SHARD_BYTES = 500 * 10**6  # store shard size, as save_to_disk's default max_shard_size
MIN_CONTEXT_LENGTH = 8
UTF8_CHECK_BYTES = 1 << 20  # validation decodes the head of each text file; the rest is checked while reading
TEXT_COLUMN = "text"  # the one column of a documents dataset, whatever the source called it
SLOW_TOKENIZING_ENV = "PREPARE_DATA_TEST_SECONDS_PER_BATCH"  # tests only: each tokenising task sleeps this long

# Disk estimate, from `python benchmarks/prepare_throughput.py --measure_disk --text_files ...` on WikiText-2's
# validation and test text and Tiny Shakespeare (3.5 MB of text; 2026-11-27): a parquet file (snappy, as the Hub's)
# is 0.571 of the text's UTF-8 bytes, datasets' Arrow cache 1.012; a byte-level BPE trained on that text gives
# 0.266 tokens per byte at 8,000 and 0.234 at 27,134 (what 32,000 reached). roberta-base's 50,265 gives fewer
# tokens per byte on English than either, so the estimate errs high. The store is 2.009 bytes a token at 512
# (uint16, and the 2 framing tokens of each block). For Wikipedia the same ratios give 20.5 GB of text from its
# 11.7 GB of parquet, close to the dataset card's 20.3 GB.
PARQUET_BYTES_PER_TEXT_BYTE = 0.57
ARROW_BYTES_PER_TEXT_BYTE = 1.01
TOKENS_PER_TEXT_BYTE = 0.27
DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".txt", ".json.gz", ".jsonl.gz", ".txt.gz")
LOCAL_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv",
                  ".txt": "text"}


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------

EPILOG = """the commands people run:
  # the offline demo corpus (seconds)
  python prepare_data.py --dataset demo --train_tokenizer 8000 --context_length 128 --path_to_data_store data/demo
  # WikiText-103 from the Hub (~0.3 GB download, ~2 GB of disk; the tokenizer's training takes most of the time)
  python prepare_data.py --dataset_name Salesforce/wikitext --dataset_config_name wikitext-103-raw-v1 \\
      --group_rows wikitext --train_tokenizer 32000 --context_length 512 --path_to_data_store data/wikitext103
  # RoBERTa's Wikipedia + BookCorpus with roberta-base's tokenizer (~15 GB download, ~60 GB disk at the peak)
  python prepare_data.py --dataset wikipedia_bookcorpus --hf_model_name FacebookAI/roberta-base \\
      --context_length 512 --path_to_data_store data/wiki_books_512
"""


def group_rows_value(value: str) -> str:
    """--group_rows: none, wikitext, or a positive number of rows."""
    if value in ("none", "wikitext") or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"expected none, wikitext or a number of rows, got {value!r}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    source = parser.add_argument_group("source (exactly one)")
    source.add_argument("--dataset", default=None, choices=DATASETS,
                        help="a built-in corpus: demo (offline, seconds), wikipedia (~11 GB download) or "
                             "wikipedia_bookcorpus (RoBERTa's BOOKS + WIKI, ~15 GB download, ~60 GB disk at the peak)")
    source.add_argument("--text_files", nargs="+", default=None, metavar="FILE",
                        help="local UTF-8 plain-text files (blank lines separate documents; a file without blank "
                             "lines is one document a line)")
    source.add_argument("--dataset_name", default=None, metavar="NAME_OR_PATH",
                        help="a Hub dataset id or a local folder/file of parquet, JSON lines, CSV or text, read "
                             "with datasets.load_dataset")
    hub = parser.add_argument_group("--dataset_name options")
    hub.add_argument("--dataset_config_name", default=None, metavar="CONFIG",
                     help="the dataset's configuration (subset), e.g. wikitext-103-raw-v1; none: its default")
    hub.add_argument("--dataset_split", default="train", metavar="SPLIT",
                     help="the split(s) whose rows are the documents; join several with +, e.g. train+validation")
    hub.add_argument("--dataset_revision", default=None, metavar="REVISION",
                     help="branch, tag or commit of a Hub dataset; resolved to a commit sha and recorded "
                          "(none: the main branch)")
    hub.add_argument("--text_column", default=TEXT_COLUMN, metavar="COLUMN", help="the column holding the text")
    hub.add_argument("--group_rows", default="none", type=group_rows_value, metavar="{none,wikitext,N}",
                     help="how rows become documents: none (each non-empty row), wikitext (the rows of each "
                          "article, split at ` = Title = ` headings) or N (every N non-empty rows)")
    data = parser.add_argument_group("documents, split and blocks")
    data.add_argument("--test_split_pct", type=float, default=0.005, metavar="FRACTION",
                      help="FRACTION of the documents held out for the test split, despite the name not a "
                           "percentage: 0.005 holds out 0.5%% (at least one document)")
    data.add_argument("--dataset_split_seed", type=int, default=42, help="seed of the train/test draw")
    data.add_argument("--max_documents", type=int, default=None, metavar="N",
                      help="use only the first N documents of the source, streamed from the Hub without the full "
                           "download (quick runs); none: all")
    data.add_argument("--context_length", type=int, default=512,
                      help="ids per block, <s> and </s> included (train.py's --context_length)")
    tok = parser.add_argument_group("tokenizer")
    tok.add_argument("--hf_model_name", default="FacebookAI/roberta-base",
                     help="tokenizer to use: a Hub id or a local tokenizer folder (ignored with --train_tokenizer)")
    tok.add_argument("--train_tokenizer", type=int, default=None, metavar="VOCAB_SIZE",
                     help=f"train a byte-level BPE of this vocabulary size (at least {BPE_MIN_VOCAB_SIZE}) on the "
                          "train split instead; none: use --hf_model_name")
    out = parser.add_argument_group("output and resources")
    out.add_argument("--path_to_data_store", required=True, metavar="FOLDER",
                     help="the store to write: a new or empty folder, or a store of this script with --overwrite")
    out.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                     help="replace an existing store (only a folder holding prepare_data.json; files this script "
                          "did not make are kept)")
    out.add_argument("--huggingface_cache_dir", default=None, metavar="DIR",
                     help="put every Hub download and the datasets cache under DIR (DIR/hub, DIR/datasets, "
                          "DIR/xet); none: the Hugging Face defaults (~/.cache/huggingface)")
    out.add_argument("--num_workers", type=int, default=16, help="tokenising processes (capped at the CPU count)")
    out.add_argument("--skip_disk_check", action=argparse.BooleanOptionalAction, default=False,
                     help="start even when the free disk looks too small for the estimate (e.g. the download is "
                          "already in the cache)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, no data and no network, so that a typo fails in a second, not after an hour."""
    sources = [flag for flag, value in [("--dataset", args.dataset), ("--text_files", args.text_files),
                                        ("--dataset_name", args.dataset_name)] if value]
    if len(sources) > 1:
        raise UsageError(f"give one source, not both {' and '.join(sources)}")
    if not sources:
        raise UsageError("give a source: --dataset demo (offline), --text_files FILE..., --dataset_name NAME_OR_PATH, "
                         "or --dataset wikipedia_bookcorpus (downloads ~15 GB)")
    args.source = "text_files" if args.text_files else "dataset_name" if args.dataset_name else args.dataset
    for flag, value, default in [("--dataset_config_name", args.dataset_config_name, None),
                                 ("--dataset_split", args.dataset_split, "train"),
                                 ("--dataset_revision", args.dataset_revision, None),
                                 ("--text_column", args.text_column, TEXT_COLUMN),
                                 ("--group_rows", args.group_rows, "none")]:
        if value != default and args.source != "dataset_name":
            raise UsageError(f"{flag} applies to --dataset_name only")
    for path in args.text_files or []:
        check_text_file(path)
    if args.dataset_name:
        check_dataset_name(args.dataset_name, args.dataset_config_name, args.dataset_split)
    if not 0 < args.test_split_pct < 1:
        raise UsageError(f"--test_split_pct is a fraction between 0 and 1 (e.g. 0.005 for 0.5%), got "
                         f"{args.test_split_pct}")
    if args.context_length < MIN_CONTEXT_LENGTH:
        raise UsageError(f"--context_length must be at least {MIN_CONTEXT_LENGTH}, got {args.context_length}")
    if args.num_workers < 1:
        raise UsageError(f"--num_workers must be at least 1, got {args.num_workers}")
    if args.max_documents is not None and args.max_documents < 2:
        raise UsageError(f"--max_documents must be at least 2 (one for each split), got {args.max_documents}")
    if args.train_tokenizer is not None and args.train_tokenizer < BPE_MIN_VOCAB_SIZE:
        raise UsageError(f"--train_tokenizer needs a vocabulary of at least {BPE_MIN_VOCAB_SIZE} (256 bytes + 5 "
                         f"special tokens), got {args.train_tokenizer}")
    if args.huggingface_cache_dir:
        cache, store = (Path(p).expanduser().resolve() for p in (args.huggingface_cache_dir, args.path_to_data_store))
        if cache.is_file():
            raise UsageError(f"--huggingface_cache_dir {args.huggingface_cache_dir} is a file, not a folder")
        if cache == store or cache.is_relative_to(store):
            raise UsageError(f"--huggingface_cache_dir {args.huggingface_cache_dir} is inside --path_to_data_store: "
                             "a cache outlives stores; give it a folder of its own")
    folders.check_output_folder(args.path_to_data_store, folders.STORE, flag=store_flag(args),
                                overwrite=args.overwrite, inputs=input_paths(args))


def store_flag(args: argparse.Namespace) -> str:
    return f"--path_to_data_store {args.path_to_data_store}"


def input_paths(args: argparse.Namespace) -> dict[str, str]:
    """Every local path the run reads, by flag: the store may neither be nor hold any of them."""
    paths = {f"--text_files {p}": p for p in args.text_files or []}
    if args.dataset_name and Path(args.dataset_name).expanduser().exists():
        paths["--dataset_name"] = args.dataset_name
    if args.train_tokenizer is None and Path(args.hf_model_name).expanduser().exists():
        paths["--hf_model_name"] = args.hf_model_name
    if args.huggingface_cache_dir:
        paths["--huggingface_cache_dir"] = args.huggingface_cache_dir
    return paths


def check_text_file(path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--text_files: {path} is not a file")
    if file.stat().st_size == 0:
        raise UsageError(f"--text_files: {path} is empty")
    with open(file, "rb") as f:
        head = f.read(UTF8_CHECK_BYTES)
    offset = first_invalid_utf8([head], final=len(head) < UTF8_CHECK_BYTES)
    if offset is not None:
        raise not_utf8(path, offset)


def first_invalid_utf8(chunks: Iterable[bytes], final: bool = True) -> int | None:
    """The byte offset of the first byte that is not UTF-8 in the concatenated chunks, or None.

    With final=False, a character cut by the end of the last chunk is not an error (the file goes on)."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    for chunk in [*chunks, *([b""] if final else [])]:
        pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
        try:
            decoder.decode(chunk, final=final and not chunk)
        except UnicodeDecodeError as error:
            return offset - pending + error.start
        offset += len(chunk)
    return None


def not_utf8(path: str | os.PathLike, offset: int) -> UsageError:
    return UsageError(f"--text_files: {path} is not UTF-8 text (an invalid byte at offset {offset:,}); convert it, "
                      f"e.g. `iconv -f latin1 -t utf-8 {path} > {Path(path).stem}.utf8.txt`")


def check_dataset_name(name: str, config: str | None, split: str) -> None:
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise UsageError(f"--dataset_name {name} does not exist (a local folder or file, or a Hub id like "
                         "Salesforce/wikitext)")
    if path.is_file() and not name.endswith(tuple(LOCAL_BUILDERS)):
        raise UsageError(f"--dataset_name {name}: a local file must end in one of {', '.join(LOCAL_BUILDERS)}")
    if path.is_file() and split != "train":
        raise UsageError(f"--dataset_split {split}: a single local file has one split, train")
    if path.is_file() and config is not None:
        raise UsageError(f"--dataset_config_name {config}: a single local file has no configurations")
    if not all(part and re.fullmatch(r"[\w.-]+", part) for part in split.split("+")):
        raise UsageError(f"--dataset_split {split!r}: give split names joined by +, e.g. train or train+validation")
    if config is not None and not config.strip():
        raise UsageError("--dataset_config_name is empty")


def resolve_num_workers(requested: int) -> int:
    """--num_workers, capped at the CPUs this process may use."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(requested, available))


# ----------------------------------------------------------------------------------------------------------------
# Corpora read through datasets.load_dataset, the Hub pre-flight and the download cache
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """One dataset read with datasets.load_dataset: a Hub id or a local folder/file, and how its rows are read."""

    path: str
    config: str | None = None
    split: str = "train"
    column: str = TEXT_COLUMN
    group_rows: str = "none"  # none, wikitext or a number of rows
    revision: str | None = None  # as asked: a branch, tag or sha (Hub only); None: main
    sha: str | None = None  # the commit the revision resolved to at pre-flight, and the one loaded
    download_bytes: int | None = None  # of the data files the load downloads (Hub: pre-flight; local: the files)
    files: list[str] = field(default_factory=list)
    streamed: bool = False
    label: str = ""  # how messages name it; default "--dataset_name PATH"

    def __post_init__(self):
        self.label = self.label or f"--dataset_name {self.path}"

    @property
    def local(self) -> bool:
        return Path(self.path).expanduser().exists()

    def describe(self) -> str:
        where = f" @ {self.sha[:10]}" if self.sha else ""
        return f"{self.path}{' ' + self.config if self.config else ''}{where} [{self.split}]"

    def record(self) -> dict:
        return {"repo" if not self.local else "path": self.path, "config": self.config, "split": self.split,
                "column": self.column, "group_rows": self.group_rows, "revision_requested": self.revision,
                "revision": self.sha, "download_bytes": self.download_bytes, "streamed": self.streamed}


WIKIPEDIA = Corpus("wikimedia/wikipedia", "20231101.en", label="--dataset's wikimedia/wikipedia")
# datasets 4+ runs no loading scripts, and BookCorpus's main branch is a script: read the Hub's parquet export.
BOOKCORPUS = Corpus("bookcorpus/bookcorpus", revision="refs/convert/parquet",
                    group_rows=str(BOOKCORPUS_SENTENCES_PER_DOCUMENT), label="--dataset's bookcorpus/bookcorpus")


def corpora_of(args: argparse.Namespace) -> list[Corpus]:
    """The datasets.load_dataset corpora of this run (none for demo and text files), fresh copies."""
    if args.source == "dataset_name":
        return [Corpus(args.dataset_name, args.dataset_config_name, args.dataset_split, args.text_column,
                       args.group_rows, args.dataset_revision)]
    return {"wikipedia": [replace(WIKIPEDIA)], "wikipedia_bookcorpus": [replace(WIKIPEDIA), replace(BOOKCORPUS)]
            }.get(args.source, [])


@contextlib.contextmanager
def download_cache(folder: str | None):
    """Every download of the run under `folder`, for the life of the block; nothing changes without a folder.

    datasets passes no cache_dir when it downloads a Hub file (it calls `HfApi.hf_hub_download` with the default,
    `huggingface_hub.constants.HF_HUB_CACHE`, read at each call), whatever cache_dir load_dataset was given: so
    the hub cache of this process is pointed at folder/hub (the constant, and the environment for any process
    started later). The tokenizer gets cache_dir=folder/hub and load_dataset cache_dir=folder/datasets."""
    if not folder:
        yield
        return
    from huggingface_hub import constants

    root = Path(folder).expanduser().absolute()
    settings = {"HF_HUB_CACHE": root / "hub", "HF_DATASETS_CACHE": root / "datasets", "HF_XET_CACHE": root / "xet"}
    saved_env = {name: os.environ.get(name) for name in settings}
    saved_constants = {name: getattr(constants, name) for name in ("HF_HUB_CACHE", "HF_XET_CACHE")}
    try:
        for name, path in settings.items():
            path.mkdir(parents=True, exist_ok=True)
            os.environ[name] = str(path)
            if name in saved_constants:
                setattr(constants, name, str(path))
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, value in saved_constants.items():
            setattr(constants, name, value)


def hub_cache_dir(cache_dir: str | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir).expanduser().absolute() / "hub" if cache_dir else Path(constants.HF_HUB_CACHE)


def datasets_cache_dir(cache_dir: str | None) -> Path:
    import datasets

    default = Path(datasets.config.HF_DATASETS_CACHE)
    return Path(cache_dir).expanduser().absolute() / "datasets" if cache_dir else default


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_error(what: str, error: Exception) -> UsageError:
    """One line for a failed Hub call: what was asked, why it failed, what to do."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    if isinstance(error, RevisionNotFoundError):
        return UsageError(f"{what}: that revision does not exist on the Hub ({reason})")
    if isinstance(error, GatedRepoError):
        return UsageError(f"{what} is gated: accept its terms on its Hub page and log in (`hf auth login`)")
    if isinstance(error, RepositoryNotFoundError):
        return UsageError(f"{what} does not exist on the Hub, or is private (check the name; log in with "
                          "`hf auth login` for a private one)")
    return UsageError(f"{what}: the Hub could not be reached ({reason}); check the network, or use a local source "
                      "(--text_files, a local --dataset_name folder)")


def preflight(corpora: list[Corpus], tokenizer_name: str | None) -> dict:
    """Ask the Hub about every repository of the run before anything is downloaded; pin each to a commit sha.

    Fills each Hub corpus's sha, files and download_bytes (local corpora: their files' size); returns the
    tokenizer repository's {"revision": sha} ({} for a local or trained tokenizer, or offline)."""
    import huggingface_hub

    for corpus in corpora:
        if corpus.local:
            files = [p for p in Path(corpus.path).expanduser().rglob("*") if p.is_file()] if Path(
                corpus.path).expanduser().is_dir() else [Path(corpus.path).expanduser()]
            corpus.files = [str(p) for p in files if p.name.endswith(DATA_FILE_SUFFIXES)]
            corpus.download_bytes = sum(Path(p).stat().st_size for p in corpus.files)
    hub = [c for c in corpora if not c.local]
    if tokenizer_name and Path(tokenizer_name).expanduser().exists():
        tokenizer_name = None  # a local folder
    if hub_offline():
        if hub or tokenizer_name:
            log("HF_HUB_OFFLINE is set: no pre-flight; Hub revisions are not checked or pinned, the cache must hold "
                "everything")
        return {}
    api = huggingface_hub.HfApi()
    for corpus in hub:
        what = f"dataset {corpus.path}" + (f" at revision {corpus.revision}" if corpus.revision else "")
        try:
            info = api.dataset_info(corpus.path, revision=corpus.revision, files_metadata=True)
        except Exception as error:  # HTTP, offline, not found...: all stop the run here, before any download
            if corpus.path == BOOKCORPUS.path and corpus.revision == BOOKCORPUS.revision:
                raise UsageError(
                    f"BookCorpus's parquet export ({corpus.path} at {corpus.revision}) is not available "
                    f"({hub_error(what, error)}); prepare Wikipedia alone with --dataset wikipedia, or a books "
                    "corpus you have checked with --dataset_name (nothing was downloaded)") from None
            raise hub_error(what, error) from None
        corpus.sha = info.sha
        data_files = [s for s in info.siblings or [] if s.rfilename.endswith(DATA_FILE_SUFFIXES)]
        in_config = [s for s in data_files if corpus.config and s.rfilename.startswith(f"{corpus.config}/")]
        chosen = in_config or data_files  # a config is usually a folder; else count every data file (an upper bound)
        if not chosen:
            raise UsageError(f"{what} at {info.sha} holds no data files that datasets reads without a script "
                             "(parquet, JSON lines, CSV, text)")
        corpus.files = [s.rfilename for s in chosen]
        corpus.download_bytes = sum(s.size or 0 for s in chosen)
    if tokenizer_name:
        try:
            return {"revision": api.model_info(tokenizer_name).sha}
        except Exception as error:
            raise hub_error(f"--hf_model_name {tokenizer_name}", error) from None
    return {}


def load_rows(corpus: Corpus, cache_dir: str | None, streaming: bool, num_workers: int = 1):
    """datasets.load_dataset of the corpus's split(s), at its pinned sha; a failure is one UsageError."""
    import datasets

    path, kwargs = corpus.path, {"streaming": streaming}
    local = Path(path).expanduser()
    if local.is_file():
        suffix = next(s for s in LOCAL_BUILDERS if local.name.endswith(s))
        path, kwargs["data_files"] = LOCAL_BUILDERS[suffix], str(local)
    elif local.is_dir():
        path = str(local)
    else:
        kwargs["revision"] = corpus.sha or corpus.revision
    if cache_dir:
        kwargs["cache_dir"] = str(datasets_cache_dir(cache_dir))
    if not streaming and num_workers > 1:
        kwargs["num_proc"] = num_workers
    parts = []
    for split in corpus.split.split("+"):
        try:
            parts.append(datasets.load_dataset(path, corpus.config, split=split, **kwargs))
        except Exception as error:
            raise load_error(corpus, error) from None
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_error(corpus: Corpus, error: Exception) -> UsageError:
    """datasets' many load failures, each as what to change."""
    from datasets.exceptions import DatasetNotFoundError

    text = (str(error).strip().splitlines() or [type(error).__name__])[0][:240]
    name = corpus.label
    if "BuilderConfig" in text or "Config name is missing" in text:
        return UsageError(f"--dataset_config_name {corpus.config}: {text}")
    if text.startswith(("Bad split", "Unknown split")):
        return UsageError(f"--dataset_split {corpus.split}: {text}")
    if isinstance(error, DatasetNotFoundError):
        return UsageError(f"{name}: {text}")
    if isinstance(error, ConnectionError):
        return UsageError(f"{name}: the Hub could not be reached ({text}); check the network or use a local folder")
    if isinstance(error, FileNotFoundError) or type(error).__name__ in ("EmptyDatasetError", "DataFilesNotFoundError"):
        return UsageError(f"{name}: no data files that datasets can read ({text})")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UsageError(f"{name}: the disk filled up while downloading ({text}); free space or pass "
                          "--huggingface_cache_dir on a larger disk")
    return UsageError(f"{name}: datasets could not load it ({type(error).__name__}: {text})")


def check_rows(corpus: Corpus, rows) -> None:
    """The first row of a streamed corpus: the dataset is not empty and --text_column holds text."""
    features = getattr(rows, "features", None)
    try:
        first = next(iter(rows), None)
    except Exception as error:
        if "BatchSize must be greater than 0" not in str(error):  # datasets streaming a parquet file of no rows
            raise load_error(corpus, error) from None
        first = None
    if first is None:
        raise UsageError(f"{corpus.label}: split {corpus.split} has no rows")
    if corpus.column not in first:
        raise UsageError(f"--text_column {corpus.column}: {corpus.path} has no such column; its columns are "
                         f"{', '.join(first)}")
    feature = features.get(corpus.column) if features else None
    dtype = getattr(feature, "dtype", None)
    if feature is not None and dtype not in ("string", "large_string"):
        raise UsageError(f"--text_column {corpus.column} holds {dtype or type(feature).__name__}, not text; text "
                         f"columns of {corpus.path}: " + (", ".join(
                             k for k, v in features.items() if getattr(v, "dtype", None) in ("string", "large_string"))
                             or "none"))
    if feature is None and not isinstance(first[corpus.column], str | None):
        raise UsageError(f"--text_column {corpus.column} holds {type(first[corpus.column]).__name__}, not text")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


def load_store_tokenizer(name: str, cache_dir: str | None, context_length: int):
    """utils.load_tokenizer, plus what packing needs: framing tokens, and blocks no longer than the tokenizer allows."""
    tokenizer = load_tokenizer(name, flag="--hf_model_name",
                               cache_dir=str(hub_cache_dir(cache_dir)) if cache_dir else None)
    check_tokenizer(tokenizer, name, context_length)
    return tokenizer


def check_tokenizer(tokenizer, name: str, context_length: int) -> None:
    if framing_ids(tokenizer) is None:
        raise UsageError(f"the tokenizer of {name} has no <s>/</s> (or [CLS]/[SEP]) tokens to frame blocks with")
    if context_length > tokenizer.model_max_length:
        raise UsageError(f"--context_length {context_length} is longer than the tokenizer of {name} allows "
                         f"({tokenizer.model_max_length})")


def framing_ids(tokenizer) -> tuple[int, int] | None:
    """(start id, end/separator id): RoBERTa's <s> and </s>, or BERT-style [CLS] and [SEP]."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return None if start is None or end is None else (start, end)


def train_tokenizer(train_documents, vocab_size: int, context_length: int):
    """Byte-level BPE on the train split only; its model_max_length is the context length (all a model can see).

    A corpus too small for the vocabulary asked gives a smaller one (BPE runs out of pairs seen twice): the run goes
    on (the store is right for the vocabulary it has) and says so loudly, here and in prepare_data.json."""
    from tqdm.auto import tqdm

    texts = (text for batch in iter_texts(train_documents) for text in batch)
    texts = tqdm(texts, total=len(train_documents), desc="training tokenizer", unit=" docs")
    tokenizer = train_bpe_tokenizer(texts, vocab_size, model_max_length=context_length)
    if len(tokenizer) < vocab_size:
        log(f"WARNING: --train_tokenizer {vocab_size:,}: the train split only supports a vocabulary of "
            f"{len(tokenizer):,} (no more pairs occur twice); the store uses {len(tokenizer):,}, recorded as "
            "tokenizer.vocab_size in prepare_data.json. Use more text for a larger vocabulary.")
    return tokenizer


def ids_dtype(tokenizer) -> np.dtype:
    """uint16 halves the store when every id fits (vocabularies up to 65,536), else int32."""
    return np.dtype(np.uint16) if len(tokenizer) <= 2**16 else np.dtype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# Documents: every source becomes a Dataset with one column `text`
# ----------------------------------------------------------------------------------------------------------------


def read_text_file_documents(path: str | os.PathLike) -> Iterator[str]:
    """Documents of a plain-text file: blank-line-separated blocks, or one a line if it has no blank line.

    Bytes that are not UTF-8 are a UsageError naming the file and the byte offset."""
    try:
        with open(path, encoding="utf-8") as f:
            has_blank_line = any(not line.strip() for line in f)
        with open(path, encoding="utf-8") as f:
            if not has_blank_line:
                yield from (line.strip() for line in f if line.strip())
                return
            for is_blank, lines in itertools.groupby(f, key=lambda line: not line.strip()):
                if not is_blank:
                    yield "".join(lines).strip()
    except UnicodeDecodeError:  # only now read the bytes again, to say where
        with open(path, "rb") as f:
            offset = first_invalid_utf8(iter(lambda: f.read(1 << 20), b""))
        raise not_utf8(path, offset if offset is not None else 0) from None


def documents_dataset(texts: Iterable[str], path: Path):
    """A disk-backed Dataset with one column `text` (memory stays flat: texts are written a batch at a time)."""
    import pyarrow as pa
    from datasets import Dataset, Features, Value
    from datasets.arrow_writer import ArrowWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with ArrowWriter(features=Features({TEXT_COLUMN: Value("string")}), path=str(path)) as writer:
        texts = iter(texts)
        while batch := list(itertools.islice(texts, PACK_READ_DOCUMENTS)):
            writer.write_table(pa.table({TEXT_COLUMN: pa.array(batch, type=pa.string())}))
        writer.finalize()
    return Dataset.from_file(str(path))


def is_wikitext_title(row: str) -> bool:
    """` = Title = ` (an article), not ` = = Section = = `."""
    row = row.strip()
    return len(row) > 4 and row.startswith("= ") and row.endswith(" =") and not row.startswith("= =")


def group_rows(rows: Iterable[str | None], how: str) -> Iterator[str]:
    """Documents from rows, in order: each non-empty row (none), WikiText articles (wikitext), or N rows at a time."""
    rows = (row.strip() for row in rows if row and row.strip())
    if how == "none":
        yield from rows
    elif how == "wikitext":
        article: list[str] = []
        for row in rows:
            if is_wikitext_title(row) and article:
                yield "\n".join(article)
                article = []
            article.append(row)
        if article:
            yield "\n".join(article)
    else:
        while group := list(itertools.islice(rows, int(how))):
            yield " ".join(group)


def corpus_rows(rows, column: str, batch_size: int = PACK_READ_DOCUMENTS) -> Iterator[str | None]:
    """The text of each row, in order, read a batch at a time (a Dataset or a streamed IterableDataset)."""
    for batch in rows.iter(batch_size=batch_size):
        yield from batch[column]


def load_corpus_documents(corpus: Corpus, cache_dir: str | None, work: Path, num_workers: int,
                          max_documents: int | None):
    """A corpus's documents as a Dataset with one column `text`.

    With max_documents the split is streamed and only its first documents are read (no full download); rows that
    need grouping are written to the work folder; otherwise the loaded dataset itself is used (no copy)."""
    check_rows(corpus, load_rows(corpus, cache_dir, streaming=True))
    if max_documents is not None:
        corpus.streamed = True
        rows = load_rows(corpus, cache_dir, streaming=True)
        texts = corpus_rows(rows, corpus.column, STREAM_READ_ROWS)
        documents = itertools.islice(group_rows(texts, corpus.group_rows), max_documents)
        return documents_dataset(documents, work / f"documents-{uuid.uuid4().hex[:8]}.arrow")
    rows = load_rows(corpus, cache_dir, streaming=False, num_workers=num_workers).select_columns([corpus.column])
    if corpus.group_rows != "none":
        return documents_dataset(group_rows(corpus_rows(rows, corpus.column), corpus.group_rows),
                                 work / f"documents-{uuid.uuid4().hex[:8]}.arrow")
    return rows.rename_column(corpus.column, TEXT_COLUMN) if corpus.column != TEXT_COLUMN else rows


def load_documents(args: argparse.Namespace, corpora: list[Corpus], work: Path, num_workers: int):
    """The source's documents as a Dataset with one column `text`, limited to --max_documents."""
    from datasets import concatenate_datasets

    if args.source == "text_files":
        texts = (text for path in args.text_files for text in read_text_file_documents(path))
        documents = documents_dataset(itertools.islice(texts, args.max_documents), work / "documents.arrow")
    elif args.source == "demo":
        from demo_world import generate_documents

        documents = documents_dataset(generate_documents(DEMO_WORLD_SEED, args.max_documents), work / "documents.arrow")
    else:
        parts, remaining = [], args.max_documents
        for corpus in corpora:
            if remaining is not None and remaining <= 0:
                break
            parts.append(load_corpus_documents(corpus, args.huggingface_cache_dir, work, num_workers, remaining))
            remaining = None if remaining is None else remaining - len(parts[-1])
        documents = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if args.max_documents is not None and len(documents) > args.max_documents:
        documents = documents.select(range(args.max_documents))
    return documents


def nonempty_rows(documents) -> np.ndarray:
    """Indices of the documents with any non-space text (a vectorised pass over the Arrow column)."""
    import pyarrow.compute as pc

    keep = []
    for start in range(0, len(documents), 10 * PACK_READ_DOCUMENTS):
        column = documents.with_format("arrow")[start:start + 10 * PACK_READ_DOCUMENTS].column(TEXT_COLUMN)
        length = pc.utf8_length(pc.utf8_trim_whitespace(column.fill_null("")))
        keep.append(np.flatnonzero(pc.greater(length, 0).to_numpy(zero_copy_only=False)) + start)
    return np.concatenate(keep) if keep else np.empty(0, dtype=np.int64)


def split_documents(documents, test_fraction: float, seed: int) -> dict:
    """{'train', 'test'}: a seeded draw of round(test_fraction * N) of the N non-empty documents (at least 1) is the
    test split; empty documents are dropped."""
    keep = nonempty_rows(documents)
    n = len(keep)
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise UsageError(f"the corpus has {n} non-empty document(s): too few to hold out {n_test} for testing and "
                         "train on the rest; give more text")
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return {TRAIN: documents.select(keep[~is_test], keep_in_memory=True),
            TEST: documents.select(keep[is_test], keep_in_memory=True)}


def iter_texts(documents, batch_size: int = PACK_READ_DOCUMENTS) -> Iterator[list[str]]:
    for start in range(0, len(documents), batch_size):
        yield [(text or "").strip() for text in documents[start:start + batch_size][TEXT_COLUMN]]


# ----------------------------------------------------------------------------------------------------------------
# Tokenising (worker processes, results in document order) and packing (one sequential pass)
# ----------------------------------------------------------------------------------------------------------------


def encode_texts(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each text, without special tokens; a literal "</s>" in the text is just text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a tokenizer without a Rust backend
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    previous, backend.encode_special_tokens = backend.encode_special_tokens, True  # text cannot inject separators
    try:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous


def encode_range(documents, start: int, stop: int, tokenizer, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, ids end to end) of documents[start:stop]."""
    texts = [(text or "").strip() for text in
             documents.with_format("arrow")[start:stop].column(TEXT_COLUMN).to_pylist()]
    if os.environ.get(SLOW_TOKENIZING_ENV):
        time.sleep(float(os.environ[SLOW_TOKENIZING_ENV]))
    ids = encode_texts(texts, tokenizer)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return lengths, np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))


_WORKER: dict = {}  # what forked tokenising workers read: the splits, the tokenizer, the ids dtype


def _init_worker() -> None:
    """In each tokenising worker: Ctrl-C (sent to the whole process group) is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_task(task: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    split, start, stop = task
    return encode_range(_WORKER["splits"][split], start, stop, _WORKER["tokenizer"], _WORKER["dtype"])


@contextlib.contextmanager
def encoder(splits: dict, tokenizer, dtype: np.dtype, num_workers: int):
    """A function split -> iterator of (lengths, ids) per batch of documents, in document order, computed by
    `num_workers` forked processes (here, with one); the processes end with the block, however it ends."""
    def batches(split: str) -> list[tuple[str, int, int]]:
        n = len(splits[split])
        return [(split, a, min(a + TOKENIZE_BATCH_DOCUMENTS, n)) for a in range(0, n, TOKENIZE_BATCH_DOCUMENTS)]

    import multiprocessing

    if num_workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield lambda split: (encode_range(splits[split], a, b, tokenizer, dtype) for _, a, b in batches(split))
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # forked workers and the tokenizer's own threads deadlock
    _WORKER.update(splits=splits, tokenizer=tokenizer, dtype=dtype)
    pool = multiprocessing.get_context("fork").Pool(num_workers, initializer=_init_worker)
    try:
        yield lambda split: pool.imap(_encode_task, batches(split))
    finally:
        pool.terminate()
        pool.join()
        _WORKER.clear()


def join_documents(lengths: np.ndarray, values: np.ndarray, separator_id: int, first: bool) -> np.ndarray:
    """The stream of some consecutive documents: `</s>` before each one, except before a split's first document.

    `values` holds the documents' ids end to end, `lengths` their lengths; empty documents add nothing.
    """
    lengths = lengths[lengths > 0]
    stream = np.empty(len(values) + len(lengths), dtype=values.dtype)
    starts = np.cumsum(lengths + 1) - lengths  # where each document's ids begin, after its separator
    is_separator = np.zeros(len(stream), dtype=bool)
    is_separator[starts - 1] = True
    stream[is_separator] = separator_id
    stream[~is_separator] = values
    return stream[1:] if first and len(stream) else stream


class BlockPacker:
    """Cuts a token stream, fed in pieces, into blocks `<s> + (context_length - 2) tokens + </s>`.

    The tail that does not fill a block is carried to the next piece, so the blocks depend only on the stream,
    not on how it was fed; after the last piece `remainder` tokens are left over (fewer than one block's worth).
    """

    def __init__(self, context_length: int, start_id: int, end_id: int, dtype: np.dtype):
        self.context_length, self.start_id, self.end_id, self.dtype = context_length, start_id, end_id, dtype
        self.carry = np.empty(0, dtype=dtype)

    def pack(self, stream: np.ndarray) -> np.ndarray:
        """The blocks (N, context_length) completed by `stream`."""
        stream = np.concatenate([self.carry, stream.astype(self.dtype, copy=False)])
        body = self.context_length - 2
        n_blocks = len(stream) // body
        self.carry = stream[n_blocks * body:].copy()
        blocks = np.empty((n_blocks, self.context_length), dtype=self.dtype)
        blocks[:, 0], blocks[:, -1] = self.start_id, self.end_id
        blocks[:, 1:-1] = stream[:n_blocks * body].reshape(n_blocks, body)
        return blocks

    @property
    def remainder(self) -> int:
        return len(self.carry)


def pack_documents(documents_ids: Iterable[Iterable[int]], context_length: int, start_id: int, end_id: int,
                   dtype=np.int64) -> tuple[np.ndarray, int]:
    """(blocks, dropped tokens) for token-id lists in memory: the packing of the store, for small inputs and tests."""
    documents_ids = [np.asarray(list(ids), dtype=dtype) for ids in documents_ids]
    lengths = np.array([len(ids) for ids in documents_ids], dtype=np.int64)
    values = np.concatenate(documents_ids) if documents_ids else np.empty(0, dtype=dtype)
    packer = BlockPacker(context_length, start_id, end_id, np.dtype(dtype))
    blocks = packer.pack(join_documents(lengths, values, end_id, first=True))
    return blocks, packer.remainder


class SplitWriter:
    """A split's blocks written straight into the store's final layout, that of `Dataset.save_to_disk`:
    `<split>/data-00000-of-0000N.arrow` shards of about SHARD_BYTES, `state.json` and `dataset_info.json`.

    Writing the layout directly (rather than blocks to a file, then save_to_disk copying it) keeps one copy of the
    token stream on disk. The fingerprint is a hash of the blocks, so equal stores have equal fingerprints."""

    def __init__(self, store: Path, split: str, context_length: int, dtype: np.dtype):
        from datasets import Features, List, Value

        self.folder, self.split = store / split, split
        self.folder.mkdir(parents=True)
        self.features = Features({STORE_COLUMN: List(Value(dtype.name), length=context_length)})
        self.rows_per_shard = max(1, SHARD_BYTES // (context_length * dtype.itemsize))
        self.context_length, self.hash = context_length, hashlib.blake2b(digest_size=8)
        self.shards: list[Path] = []
        self.writer, self.in_shard, self.rows = None, 0, 0

    def write(self, blocks: np.ndarray) -> None:
        import pyarrow as pa
        from datasets.arrow_writer import ArrowWriter

        self.hash.update(blocks.tobytes())
        self.rows += len(blocks)
        while len(blocks):
            if self.writer is None:
                self.shards.append(self.folder / f"shard-{len(self.shards):05d}.arrow")
                self.writer, self.in_shard = ArrowWriter(features=self.features, path=str(self.shards[-1])), 0
            take = blocks[:self.rows_per_shard - self.in_shard]
            flat = pa.array(take.reshape(-1))
            self.writer.write_table(pa.table({STORE_COLUMN: pa.FixedSizeListArray.from_arrays(flat,
                                                                                              self.context_length)}))
            self.in_shard, blocks = self.in_shard + len(take), blocks[len(take):]
            if self.in_shard == self.rows_per_shard:
                self._close_shard()

    def _close_shard(self) -> None:
        self.writer.finalize()
        self.writer.close()
        self.writer = None

    def close(self) -> str:
        """Finish the shards and write the metadata; returns the split's fingerprint."""
        from datasets import DatasetInfo
        from datasets.utils.py_utils import asdict  # what save_to_disk uses: Features serialised as datasets does

        if self.writer is not None:
            self._close_shard()
        names = [f"data-{i:05d}-of-{len(self.shards):05d}.arrow" for i in range(len(self.shards))]
        for shard, name in zip(self.shards, names, strict=True):
            shard.rename(self.folder / name)
        fingerprint = self.hash.hexdigest()
        state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint,
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": self.split}
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(DatasetInfo(features=self.features))
        info = {key: info[key] for key in sorted(info)}
        (self.folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
        return fingerprint


def pack_split(batches: Iterable[tuple[np.ndarray, np.ndarray]], writer: SplitWriter, start_id: int, end_id: int,
               dtype: np.dtype, total: int) -> dict:
    """Stream a split's token ids, in document order, through the packer into the store."""
    from tqdm.auto import tqdm

    packer = BlockPacker(writer.context_length, start_id, end_id, dtype)
    counts = {"documents": 0, "tokens": 0, "separators": 0, "blocks": 0}
    with tqdm(total=total, desc=f"tokenizing and packing {writer.split}", unit=" docs") as progress:
        for lengths, values in batches:
            stream = join_documents(lengths, values, end_id, first=counts["documents"] == 0)
            counts["separators"] += len(stream) - len(values)
            counts["documents"] += int(np.count_nonzero(lengths))
            counts["tokens"] += len(values)
            blocks = packer.pack(stream)
            counts["blocks"] += len(blocks)
            writer.write(blocks)
            progress.update(len(lengths))
    return {**counts, "dropped_tokens": packer.remainder}


def tokenize_and_pack(splits: dict, tokenizer, context_length: int, num_workers: int, store: Path) -> dict:
    """Each split's documents -> token ids (worker processes) -> blocks in the store. Returns the counts per split."""
    dtype, (start_id, end_id) = ids_dtype(tokenizer), framing_ids(tokenizer)
    stats = {}
    with encoder(splits, tokenizer, dtype, num_workers) as encode:
        for split, documents in splits.items():
            writer = SplitWriter(store, split, context_length, dtype)
            stats[split] = pack_split(encode(split), writer, start_id, end_id, dtype, len(documents))
            if stats[split]["blocks"] == 0:
                raise too_small(split, stats, context_length)
            stats[split]["fingerprint"] = writer.close()
    return stats


def too_small(split: str, stats: dict, context_length: int) -> UsageError:
    """A split without one full block, and the flag to change, with a value that would give it one."""
    counts = stats[split]
    have = counts["tokens"] + counts["separators"]
    advice = []
    if have + 2 >= MIN_CONTEXT_LENGTH:
        advice.append(f"--context_length {have + 2} or less")
    if split == TEST:
        advice.append("a larger --test_split_pct (the test split needs about "
                      f"{context_length - 2 - have:,} more tokens)")
    advice.append("more text")
    return UsageError(f"the {split} split holds {have:,} tokens, fewer than one block of {context_length} needs "
                      f"({context_length - 2} + <s> and </s>); use {' or '.join(advice)} (no store written)")


# ----------------------------------------------------------------------------------------------------------------
# The store: lock, work folder beside it, atomic swap, what a killed run left
# ----------------------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: unwind (removing the work folder), then exit 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_RUNNING: dict = {"pid": None}  # the process of the run in progress, whose forked children are its workers


def _after_fork_in_child() -> None:
    """In every process forked by a run (our tokenising workers, and datasets' num_proc workers): the default
    SIGINT/SIGTERM (so that a pool's terminate() ends it, not the parent's handler), and death with the parent even
    by SIGKILL (Linux prctl PR_SET_PDEATHSIG), so that no worker outlives a killed run."""
    if _RUNNING["pid"] is None or os.getppid() != _RUNNING["pid"]:
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise Interrupted in the main thread, so that every `finally` runs; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _RUNNING["pid"] = os.getpid()
    try:
        yield
    finally:
        _RUNNING["pid"] = None
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def uninterruptible():
    """SIGINT/SIGTERM held back during the block (the swap: never half a store), and discarded after it: once the
    new store is in place the run has succeeded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        for s in signals:  # a pending signal whose action becomes SIG_IGN is discarded
            signal.signal(s, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def work_folder_name(store: Path, kind: str) -> str:
    return f".{store.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def make_work_folder(store: Path) -> Path:
    """A fresh hidden folder beside the store (same file system, so the final move is a rename)."""
    work = store.parent / work_folder_name(store, "tmp")
    try:
        work.mkdir()
    except OSError as error:
        raise UsageError(f"cannot write beside --path_to_data_store {store}: {error.strerror}") from None
    return work


def clean_stale_work_folders(store: Path) -> list[str]:
    """Remove what runs killed mid-way left beside the store (their pid is not alive on this host).

    Called with the store's lock held, so no live run is writing there. A `.tmp-` folder is a work folder: only this
    script's files. An `.old-` folder is a previous store caught mid-swap: if the store holds no store of its own,
    it is put back; files of yours in it are moved back into the store; the rest is removed. Returns what was done.
    """
    pattern = re.compile(rf"^\.{re.escape(store.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")
    done = []
    for entry in sorted(store.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or not entry.is_dir() or folders.pid_alive(int(match[2])):
            continue
        if match[1] == "old":
            done.extend(restore_old_store(entry, store))
        if entry.exists():
            shutil.rmtree(entry)
            done.append(f"removed {entry.name}, left by a killed run (pid {match[2]})")
    return done


def restore_old_store(old: Path, store: Path) -> list[str]:
    """Bring back from a half-swapped `old` folder the previous store (if the store has none) and the user's files."""
    done = []
    store_is_empty = not folders.own_entries(store, folders.STORE) and not folders.foreign_entries(store, folders.STORE)
    movable = [p for p in old.iterdir() if p.name != folders.LOCK_FILE] if store_is_empty else \
        folders.foreign_entries(old, folders.STORE)
    for entry in movable:
        if (store / entry.name).exists():
            raise UsageError(f"{old} (left by a killed run) holds {entry.name}, and so does the store: move what you "
                             "want to keep out of it, delete it, and run again")
        entry.rename(store / entry.name)
    if movable:
        done.append(f"moved back {', '.join(sorted(p.name for p in movable))} from {old.name} (a run was killed "
                    "while replacing the store)")
    return done


def move_into_place(new_store: Path, store: Path) -> list[str]:
    """Replace `store` by `new_store`, carrying over the files in `store` this script did not make (returned).

    Two renames, signals held back: the old store moves aside, the new one into place; then the user's files move
    in, and the old store is removed only after the new one is in place."""
    old = store.parent / work_folder_name(store, "old")
    with uninterruptible():
        store.rename(old)
        new_store.rename(store)
        carried = []
        for entry in folders.foreign_entries(old, folders.STORE):
            entry.rename(store / entry.name)
            carried.append(entry.name)
    shutil.rmtree(old)
    return carried


def acquire_lock(folder: Path, flag: str) -> folders.FolderLock:
    try:
        return folders.FolderLock(folder, flag=flag, shared=False).acquire()
    except OSError as error:
        raise UsageError(f"{flag} cannot be written ({error.strerror}): choose a folder you can write to") from None


def write_store_readme(store: Path, record: dict) -> None:
    """A short description of the store, for whoever finds the folder."""
    splits = "\n".join(f"| `{name}` | {s['blocks']:,} | {s['documents']:,} | {s['tokens']:,} |"
                       for name, s in record["splits"].items())
    tok = record["tokenizer"]
    sources = "\n".join(f"- `{s.get('repo') or s.get('path')}` config `{s['config']}`, split `{s['split']}`, column "
                        f"`{s['column']}`, rows grouped: {s['group_rows']}, revision `{s['revision']}`"
                        for s in record["sources"]) or f"- `{record['source']}`"
    (store / "README.md").write_text(f"""# Data store for RoBERTa pretraining

Written by `prepare_data.py` on {record['created']}. Read it with `datasets.load_from_disk` (or `train.py
--path_to_prepped_data`); `{STORE_RECORD}` holds everything below and more.

Made with:

```bash
{record['command']}
```

Sources:
{sources}

| split | blocks | documents | tokens |
| --- | --- | --- | --- |
{splits}

- Column `{STORE_COLUMN}`: blocks of exactly {record['context_length']} token ids (`{record['ids_dtype']}`): `<s>`,
  {record['context_length'] - 2} tokens of the split's documents joined by `</s>` and cut at arbitrary tokens,
  `</s>`. {record['dropped_tokens']:,} tokens of the streams' final remainders were dropped.
- `{STORE_TOKENIZER_DIR}/`: the tokenizer that made the ids ({tok['from']}, vocabulary {tok['vocab_size']:,},
  fingerprint `{tok['fingerprint']}`); train with this tokenizer only.
- The split is by document: a draw (seed {record['arguments']['dataset_split_seed']}) of
  {record['arguments']['test_split_pct']} of the documents is `test`.
""")


# ----------------------------------------------------------------------------------------------------------------
# Disk
# ----------------------------------------------------------------------------------------------------------------


def disk_estimate(args: argparse.Namespace, corpora: list[Corpus], itemsize: int) -> dict[Path, dict[str, int]]:
    """{folder: {what: bytes}} this run will write at its peak, from measured ratios (see the constants above)."""
    store_parent = Path(args.path_to_data_store).expanduser().absolute().parent
    per_token = itemsize * args.context_length / (args.context_length - 2)
    needs: dict[Path, dict[str, int]] = {}

    def add(folder: Path, what: str, size: float) -> None:
        needs.setdefault(folder, {})[what] = needs.get(folder, {}).get(what, 0) + int(size)

    if args.source == "text_files":
        text = sum(Path(p).stat().st_size for p in args.text_files)
        add(store_parent, "documents (work folder)", text * ARROW_BYTES_PER_TEXT_BYTE)
        add(store_parent, "store", text * TOKENS_PER_TEXT_BYTE * per_token)
    for corpus in corpora:
        if args.max_documents is not None or corpus.download_bytes is None:
            continue  # streamed: a few files' worth
        parquet = all(f.endswith(".parquet") for f in corpus.files)
        text = corpus.download_bytes / (PARQUET_BYTES_PER_TEXT_BYTE if parquet else 1.0)
        if not corpus.local:
            add(hub_cache_dir(args.huggingface_cache_dir), f"{corpus.path} download", corpus.download_bytes)
        add(datasets_cache_dir(args.huggingface_cache_dir), f"{corpus.path} Arrow cache",
            text * ARROW_BYTES_PER_TEXT_BYTE)
        if corpus.group_rows != "none":
            add(store_parent, f"{corpus.path} grouped documents (work folder)", text * ARROW_BYTES_PER_TEXT_BYTE)
        add(store_parent, "store", text * TOKENS_PER_TEXT_BYTE * per_token)
    return needs


def check_disk(needs: dict[Path, dict[str, int]]) -> str:
    """Refuse (one line) when a file system has less free space than the estimate of what goes there."""
    by_device: dict[int, tuple[Path, int, list[str]]] = {}
    for folder, parts in needs.items():
        existing = next(p for p in [folder, *folder.parents] if p.exists())
        device = existing.stat().st_dev
        path, total, names = by_device.get(device, (existing, 0, []))
        by_device[device] = (path, total + sum(parts.values()),
                             names + [f"{what} {folders.human_bytes(size)}" for what, size in parts.items()])
    lines = []
    for path, total, names in by_device.values():
        free = shutil.disk_usage(path).free
        if free < total:
            raise UsageError(f"not enough disk at {path}: {folders.human_bytes(free)} free, this run needs about "
                             f"{folders.human_bytes(total)} there ({'; '.join(names)}); free space, choose folders on "
                             "a larger disk (--path_to_data_store, --huggingface_cache_dir), or pass "
                             "--skip_disk_check if part of it is already in the cache")
        lines.append(f"{path}: about {folders.human_bytes(total)} of {folders.human_bytes(free)} free")
    return "; ".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    shared_log(message, prefix="prepare_data: ")


@contextlib.contextmanager
def timed(seconds: dict[str, float], phase: str):
    """Add the time spent inside the block to seconds[phase], for the record's breakdown."""
    start = time.perf_counter()
    yield
    seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - start, 3)


def plan_line(args: argparse.Namespace, corpora: list[Corpus]) -> str:
    parts = []
    for corpus in corpora:
        size = "streamed: the first documents only" if args.max_documents is not None else (
            f"{len(corpus.files)} files, {folders.human_bytes(corpus.download_bytes or 0)}"
            if corpus.download_bytes is not None else "size unknown offline")
        parts.append(f"{corpus.describe()} ({size})")
    where = f" into {hub_cache_dir(args.huggingface_cache_dir)}" if any(not c.local for c in corpora) else ""
    return f"reading {' + '.join(parts)}{where}"


def prepare(args: argparse.Namespace, corpora: list[Corpus], tokenizer, work: Path,
            seconds: dict[str, float]) -> dict:
    """Everything after the checks: load, split, (train a tokenizer,) tokenise and pack into work/store."""
    num_workers = resolve_num_workers(args.num_workers)
    with timed(seconds, "load"):
        documents = load_documents(args, corpora, work / "cache", num_workers)
        splits = split_documents(documents, args.test_split_pct, args.dataset_split_seed)
    log(f"{len(splits[TRAIN]) + len(splits[TEST]):,} documents: {len(splits[TRAIN]):,} train, "
        f"{len(splits[TEST]):,} test; tokenizing with {num_workers} worker(s)")
    if tokenizer is None:
        with timed(seconds, "train_tokenizer"):
            tokenizer = train_tokenizer(splits[TRAIN], args.train_tokenizer, args.context_length)
    with timed(seconds, "tokenize_and_pack"):
        stats = tokenize_and_pack(splits, tokenizer, args.context_length, num_workers, work / "store")
    tokenizer.save_pretrained(str(work / "store" / STORE_TOKENIZER_DIR))
    (work / "store" / "dataset_dict.json").write_text(json.dumps({"splits": list(STORE_SPLITS)}))
    return {"stats": stats, "tokenizer": tokenizer, "num_workers": num_workers}


def make_record(args: argparse.Namespace, argv: list[str], corpora: list[Corpus], tokenizer, tokenizer_hub: dict,
                stats: dict, num_workers: int, total_seconds: float, seconds: dict[str, float]) -> dict:
    """What prepare_data.json holds: the command, the arguments, what was used, the counts per split, the speed."""
    tokens = sum(s["tokens"] for s in stats.values())
    tok = {"from": "trained" if args.train_tokenizer else args.hf_model_name, "vocab_size": len(tokenizer),
           "fingerprint": tokenizer_fingerprint(tokenizer), "model_max_length": tokenizer.model_max_length,
           **tokenizer_hub}
    if args.train_tokenizer:
        tok.update(trained_on=f"{TRAIN} split", vocab_size_requested=args.train_tokenizer)
    return {"command": "python prepare_data.py " + shlex.join(argv),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "arguments": {k: v for k, v in vars(args).items() if k != "source"}, "source": args.source,
            "sources": [c.record() for c in corpora], "context_length": args.context_length,
            "num_workers_used": num_workers, "tokenizer": tok, "ids_dtype": ids_dtype(tokenizer).name,
            "splits": stats, "dropped_tokens": sum(s["dropped_tokens"] for s in stats.values()),
            "seconds": round(total_seconds, 2), "seconds_by_phase": seconds,
            "tokens_per_second": round(tokens / max(total_seconds, 1e-9)), "library_versions": library_versions()}


def summary_line(record: dict, store: Path) -> str:
    parts = [f"{name} {s['documents']:,} docs, {s['tokens']:,} tokens, {s['blocks']:,} blocks"
             for name, s in record["splits"].items()]
    return (f"prepare_data: done: {' | '.join(parts)} | blocks of {record['context_length']} | "
            f"{record['dropped_tokens']:,} tokens dropped | {record['seconds']:.1f} s, "
            f"{record['tokens_per_second']:,} tokens/s | store {store}")


def run(args: argparse.Namespace, argv: list[str], store: Path, started: float, seconds: dict) -> dict:
    """With the store locked: clean up after killed runs, pre-flight, check the disk, prepare, swap into place."""
    cleaned = clean_stale_work_folders(store)
    for line in cleaned:
        log(line)
    if cleaned:  # a store put back from a killed run's swap is replaced only with --overwrite, as any store
        folders.check_output_folder(store, folders.STORE, flag=store_flag(args), overwrite=args.overwrite)
    corpora = corpora_of(args)
    with download_cache(args.huggingface_cache_dir):
        with timed(seconds, "preflight"):
            tokenizer_hub = preflight(corpora, None if args.train_tokenizer else args.hf_model_name)
        if corpora:
            log(plan_line(args, corpora))
        tokenizer = None
        if args.train_tokenizer is None:
            with timed(seconds, "load_tokenizer"):
                tokenizer = load_store_tokenizer(args.hf_model_name, args.huggingface_cache_dir, args.context_length)
        itemsize = ids_dtype(tokenizer).itemsize if tokenizer else (2 if args.train_tokenizer <= 2**16 else 4)
        if not args.skip_disk_check:
            log(f"disk: {check_disk(disk_estimate(args, corpora, itemsize)) or 'nothing large to write'}")
        work = make_work_folder(store)
        try:
            prepared = prepare(args, corpora, tokenizer, work, seconds)
            record = make_record(args, argv, corpora, prepared["tokenizer"], tokenizer_hub, prepared["stats"],
                                 prepared["num_workers"], time.perf_counter() - started, seconds)
            new_store = work / "store"
            folders.write_json(new_store / STORE_RECORD, record)
            write_store_readme(new_store, record)
            new_lock = acquire_lock(new_store, store_flag(args))  # the new store is ours from the moment it lands
            carried = move_into_place(new_store, store)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if carried:
        log(f"kept your files in the store: {', '.join(carried)}")
    new_lock.release()
    return record


def main(argv: list[str] | None = None) -> dict:
    """Check everything, lock the store, prepare it in a work folder beside it, move it into place; returns the record.

    Raises UsageError (bad input: nothing written) or Interrupted (SIGINT/SIGTERM: the work folder removed)."""
    started, seconds = time.perf_counter(), {}
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    validate_args(args)
    store = Path(args.path_to_data_store).expanduser().resolve()  # a symlinked store is replaced where it lives
    existed = store.exists()
    with interruptible():
        lock = acquire_lock(store, store_flag(args))
        try:
            record = run(args, argv, store, started, seconds)
        except BaseException:
            lock.release()
            if not existed:  # leave no empty folder behind
                (store / folders.LOCK_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    store.rmdir()
            raise
        lock.release()
    print(summary_line(record, store), flush=True)
    return record


def cli() -> None:
    """The command line: one line and exit code 2 for bad input, 130/143 for Ctrl-C/SIGTERM."""
    try:
        main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as interruption:
        print(f"prepare_data: interrupted ({interruption}): the work folder is removed and the store is as it was",
              file=sys.stderr)
        sys.exit(128 + interruption.signum)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: the disk filled up ({error.strerror}: {error.filename or ''}); the work folder is removed and "
              "the store is as it was; free space, or choose folders on a larger disk", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
