"""Prepare a pretraining corpus: documents -> train/test split -> (tokenizer) -> token ids -> packed blocks -> store.

Examples:
    python prepare_data.py --dataset demo --train_tokenizer 8000 --context_length 128 --path_to_data_store data/demo
    python prepare_data.py --text_files a.txt b.txt --train_tokenizer 32000 --path_to_data_store data/mytext
    python prepare_data.py --dataset_name Salesforce/wikitext --dataset_config_name wikitext-103-raw-v1 \\
        --group_rows wikitext --train_tokenizer 32000 --path_to_data_store data/wikitext103
    python prepare_data.py --dataset wikipedia_bookcorpus --path_to_data_store data/wiki_books_512  # ~15 GB download

Sources (exactly one): --dataset demo (a generated fictional world, offline), --text_files (UTF-8 text; a blank
line separates documents), --dataset_name (anything datasets.load_dataset reads: a Hub id or a local folder or
file), --dataset wikipedia_bookcorpus (RoBERTa's BOOKS + WIKI) or --dataset wikipedia. Hub repositories are
pinned to a commit sha before anything is downloaded, and the free disk is checked against an estimate.

The store holds splits `train` and `test` of blocks `<s> ... </s>` of exactly --context_length ids (documents
joined by `</s>` and cut at whatever token the cut falls on, unlike the paper's FULL-SENTENCES and DOC-SENTENCES,
which never cut a sentence), the tokenizer that made them, prepare_data.json (how it was made) and a README.md. It
is written beside the store and moved into place at the end: an interrupted run leaves the store as it was.
--overwrite replaces only a store this script wrote, and keeps your own files in it. The details: docs/prepare_data.md.

Exit codes: 0 done; 2 bad usage or input (one line `error: ...`, nothing written); 130 Ctrl-C, 143 SIGTERM (the
work folder removed, the store as it was); 1 a full disk, or an unexpected error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import folders
from corpora import (
    DATASETS,
    TEXT_COLUMN,
    Corpus,
    check_dataset_name,
    check_text_file,
    corpora_of,
    datasets_cache_dir,
    download_cache,
    hub_cache_dir,
    iter_texts,
    load_documents,
    preflight,
    split_documents,
)
from store import (
    MIN_CONTEXT_LENGTH,
    RECORD_BLOCK_LENGTH,
    RECORD_COMMAND,
    RECORD_SPLITS,
    RECORD_TOKENIZER,
    RECORD_TOKENIZER_FROM,
    RECORD_TRAINED,
    STORE,
    STORE_RECORD,
    TEST,
    TRAIN,
)
from store_writer import (
    Interrupted,
    framing_ids,
    ids_dtype,
    interruptible,
    tokenize_and_pack,
    write_record,
    write_tokenizer_and_index,
)
from tokenization import BPE_MIN_VOCAB_SIZE, load_tokenizer, tokenizer_identity, train_bpe_tokenizer
from utils import (
    ArgumentParser,
    DiskFull,
    HelpFormatter,
    ScriptExit,
    UsageError,
    exit_code_for_signal,
    library_versions,
    out_of_space,
    run_cli,
)
from utils import log as shared_log

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
                     help=f"replace an existing store (only a folder holding {STORE_RECORD}; files this script "
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
    folders.check_output_folder(args.path_to_data_store, STORE, flag=store_flag(args),
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


def resolve_num_workers(requested: int) -> int:
    """--num_workers, capped at the CPUs this process may use."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(requested, available))


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


def tokenizer_for_new_store(name: str, cache_dir: str | None, context_length: int):
    """The tokenizer to write a new store with: tokenization.load_tokenizer, checked for what packing needs
    (framing tokens, blocks no longer than the tokenizer allows)."""
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


def train_tokenizer(train_documents, vocab_size: int, context_length: int):
    """Byte-level BPE on the train split only; its model_max_length is the context length (all a model can see).

    A corpus too small for the vocabulary asked gives a smaller one (BPE runs out of pairs seen twice): the run goes
    on (the store is right for the vocabulary it has) and says so loudly, here and in prepare_data.json."""
    texts = (text for batch in iter_texts(train_documents) for text in batch)
    texts = tqdm(texts, total=len(train_documents), desc="training tokenizer", unit=" docs")
    tokenizer = train_bpe_tokenizer(texts, vocab_size, model_max_length=context_length)
    if len(tokenizer) < vocab_size:
        log(f"WARNING: --train_tokenizer {vocab_size:,}: the train split only supports a vocabulary of "
            f"{len(tokenizer):,} (no more pairs occur twice); the store uses {len(tokenizer):,}, recorded as "
            f"tokenizer.vocab_size in {STORE_RECORD}. Use more text for a larger vocabulary.")
    return tokenizer


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
    write_tokenizer_and_index(work / "store", tokenizer)
    return {"stats": stats, "tokenizer": tokenizer, "num_workers": num_workers}


def make_record(args: argparse.Namespace, argv: list[str], corpora: list[Corpus], tokenizer, tokenizer_hub: dict,
                stats: dict, num_workers: int, total_seconds: float, seconds: dict[str, float]) -> dict:
    """What prepare_data.json holds: the command, the arguments, what was used, the counts per split, the speed."""
    tokens = sum(s["tokens"] for s in stats.values())
    tok = {RECORD_TOKENIZER_FROM: RECORD_TRAINED if args.train_tokenizer else args.hf_model_name,
           **tokenizer_identity(tokenizer), "model_max_length": tokenizer.model_max_length, **tokenizer_hub}
    if args.train_tokenizer:
        tok.update(trained_on=f"{TRAIN} split", vocab_size_requested=args.train_tokenizer)
    return {RECORD_COMMAND: "python prepare_data.py " + shlex.join(argv),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "arguments": {k: v for k, v in vars(args).items() if k != "source"}, "source": args.source,
            "sources": [c.record() for c in corpora], RECORD_BLOCK_LENGTH: args.context_length,
            "num_workers_used": num_workers, RECORD_TOKENIZER: tok, "ids_dtype": ids_dtype(tokenizer).name,
            RECORD_SPLITS: stats, "dropped_tokens": sum(s["dropped_tokens"] for s in stats.values()),
            "seconds": round(total_seconds, 2), "seconds_by_phase": seconds,
            "tokens_per_second": round(tokens / max(total_seconds, 1e-9)), "library_versions": library_versions()}


def summary_line(record: dict, store: Path) -> str:
    parts = [f"{name} {s['documents']:,} docs, {s['tokens']:,} tokens, {s['blocks']:,} blocks"
             for name, s in record[RECORD_SPLITS].items()]
    return (f"prepare_data: done: {' | '.join(parts)} | blocks of {record[RECORD_BLOCK_LENGTH]} | "
            f"{record['dropped_tokens']:,} tokens dropped | {record['seconds']:.1f} s, "
            f"{record['tokens_per_second']:,} tokens/s | store {store}")


def run(args: argparse.Namespace, argv: list[str], store: Path, started: float, seconds: dict) -> dict:
    """With the store locked: clean up after killed runs, pre-flight, check the disk, prepare, swap into place."""
    cleaned = folders.clean_stale_work_folders(store, STORE)
    for line in cleaned:
        log(line)
    if cleaned:  # a store put back from a killed run's swap is replaced only with --overwrite, as any store
        folders.check_output_folder(store, STORE, flag=store_flag(args), overwrite=args.overwrite)
    corpora = corpora_of(args)
    with download_cache(args.huggingface_cache_dir):
        with timed(seconds, "preflight"):
            tokenizer_hub = preflight(corpora, None if args.train_tokenizer else args.hf_model_name)
        if corpora:
            log(plan_line(args, corpora))
        tokenizer = None
        if args.train_tokenizer is None:
            with timed(seconds, "load_tokenizer"):
                tokenizer = tokenizer_for_new_store(args.hf_model_name, args.huggingface_cache_dir, args.context_length)
        itemsize = ids_dtype(tokenizer).itemsize if tokenizer else (2 if args.train_tokenizer <= 2**16 else 4)
        if not args.skip_disk_check:
            log(f"disk: {check_disk(disk_estimate(args, corpora, itemsize)) or 'nothing large to write'}")
        work = folders.make_work_folder(store, store_flag(args))
        try:
            prepared = prepare(args, corpora, tokenizer, work, seconds)
            record = make_record(args, argv, corpora, prepared["tokenizer"], tokenizer_hub, prepared["stats"],
                                 prepared["num_workers"], time.perf_counter() - started, seconds)
            new_store = work / "store"
            write_record(new_store, record)
            new_lock = folders.acquire_lock(new_store, store_flag(args))  # ours from the moment it lands
            carried = folders.move_into_place(new_store, store, STORE)
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
        lock = folders.acquire_lock(store, store_flag(args))
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
    """main() under the exit policy of utils.run_cli: an interruption and a full disk end in one line too."""
    try:
        main()
    except Interrupted as interruption:
        raise ScriptExit(f"prepare_data: interrupted ({interruption}): the work folder is removed and the store is as "
                         "it was", exit_code_for_signal(interruption.signum)) from None
    except OSError as error:
        if not out_of_space(error):
            raise
        raise DiskFull(f"{error.strerror}: {error.filename or ''}; the work folder is removed and the store is as it "
                       "was; free space, or choose folders on a larger disk") from None


if __name__ == "__main__":
    run_cli(cli)
