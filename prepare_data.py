"""Prepare the pretraining corpus: documents -> split -> (tokenizer) -> tokens -> packed blocks -> data store.

    python prepare_data.py --path_to_data_store data_store                       # Wikipedia + BookCorpus (Hub)
    python prepare_data.py --dataset demo --train_tokenizer 8000 --context_length 128 --path_to_data_store demo_store
    python prepare_data.py --text_files a.txt b.txt --hf_model_name FacebookAI/roberta-base --path_to_data_store s

Sources, each made into a `datasets.Dataset` with one column `text`, one document a row, so that every source
goes through the same split, tokenise and pack code:
  * `--dataset wikipedia_bookcorpus`: English Wikipedia (`wikimedia/wikipedia`, `20231101.en`, parquet) plus
    BookCorpus (`bookcorpus/bookcorpus` from its parquet branch, since datasets 4+ runs no loading scripts).
    BookCorpus has one sentence a row; consecutive sentences are grouped into documents of
    BOOKCORPUS_SENTENCES_PER_DOCUMENT sentences.
  * `--dataset demo`: encyclopedia articles about a fictional world from demo_world.py (world seed 0, the world
    that finetune_roberta_qa.py's `--dataset demo` asks about), a few million tokens, no network.
  * `--text_files`: plain text; a blank line separates documents, and a file without blank lines is one line a
    document.

Split: by document, before tokenising: a seeded (`--dataset_split_seed`) draw of `--test_split_pct` of the
documents goes to `test`; both splits keep the source's order.

Packing (RoBERTa's FULL-SENTENCES): a split's documents are tokenised without special tokens and joined into one
stream, one `</s>` between consecutive documents (`doc1 </s> doc2 </s> doc3`). The stream is cut into pieces of
context_length - 2 tokens and each is framed as `<s> piece </s>`, so every block has exactly context_length ids.
Decoding the blocks' pieces in order and splitting on `</s>` gives back the documents; only the stream's final
remainder (shorter than one piece) is dropped, and its size is reported (a split without one full block is an
error: no store is written). Literal "<s>"/"</s>" strings inside a document are tokenised as text, so a
document cannot forge a separator. Tokenising runs in `--num_workers` processes (datasets.map); the stream is
cut by one sequential pass over the tokenised documents in order, so the store does not depend on how the work
was sharded: any `--num_workers` gives the same bytes. `--max_documents N` keeps the first N documents.

Store (`--path_to_data_store`): `DatasetDict.save_to_disk` with splits `train` and `test`, column `input_ids`
(uint16 when the vocabulary fits, else int32), `tokenizer/` (the tokenizer used, loaded or trained), and
`prepare_data.json` (arguments, library versions, counts, dropped tokens, speed). It is written in a temporary
folder beside the store and moved into place at the end, so a failed run leaves any previous store untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from folders import write_json
from utils import ArgumentParser, UsageError, library_versions, run_cli, train_bpe_tokenizer

DATASETS = ["wikipedia_bookcorpus", "demo"]
WIKIPEDIA = ("wikimedia/wikipedia", "20231101.en")
BOOKCORPUS = ("bookcorpus/bookcorpus", "refs/convert/parquet")  # (repo, revision): the script-free parquet branch
BOOKCORPUS_SENTENCES_PER_DOCUMENT = 64  # about 1,000 tokens: a few pages, so the split and separators are by passage
DEMO_WORLD_SEED = 0  # the demo QA set asks about this world
TOKENIZE_BATCH_DOCUMENTS = 1000  # documents per map batch (memory per worker: one batch)
PACK_READ_DOCUMENTS = 10_000  # documents per read while packing (memory: one read of token ids)
MIN_CONTEXT_LENGTH = 8


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path_to_data_store", required=True, help="folder to write the store into")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help="corpus to prepare (default: wikipedia_bookcorpus, unless --text_files is given)")
    parser.add_argument("--text_files", nargs="+", default=None, metavar="FILE",
                        help="local plain-text files instead of --dataset (blank lines separate documents)")
    parser.add_argument("--test_split_pct", type=float, default=0.005,
                        help="fraction of the documents held out for the test split, in (0, 1)")
    parser.add_argument("--dataset_split_seed", type=int, default=42, help="seed of the train/test draw")
    parser.add_argument("--context_length", type=int, default=512, help="ids per block, <s> and </s> included")
    parser.add_argument("--hf_model_name", default="FacebookAI/roberta-base",
                        help="tokenizer to use: a Hub id or a local tokenizer folder (ignored with --train_tokenizer)")
    parser.add_argument("--train_tokenizer", type=int, default=None, metavar="VOCAB_SIZE",
                        help="train a byte-level BPE tokenizer of this vocabulary size on the train split instead")
    parser.add_argument("--huggingface_cache_dir", default=None, help="cache folder for Hub downloads")
    parser.add_argument("--num_workers", type=int, default=16, help="tokenising processes (capped at the CPU count)")
    parser.add_argument("--max_documents", type=int, default=None,
                        help="use only the first N documents of the source (quick runs)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="replace an existing non-empty store")
    return parser.parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    """Every check that needs no model and no data, so that a typo fails in a second, not after an hour."""
    if args.text_files and args.dataset:
        raise UsageError("give either --dataset or --text_files, not both")
    args.source = "text_files" if args.text_files else (args.dataset or "wikipedia_bookcorpus")
    for path in args.text_files or []:
        if not Path(path).is_file():
            raise UsageError(f"--text_files: {path!r} is not a file")
        if Path(path).stat().st_size == 0:
            raise UsageError(f"--text_files: {path!r} is empty")
    if not 0 < args.test_split_pct < 1:
        raise UsageError(f"--test_split_pct must be a fraction between 0 and 1 (e.g. 0.005), got {args.test_split_pct}")
    if args.context_length < MIN_CONTEXT_LENGTH:
        raise UsageError(f"--context_length must be at least {MIN_CONTEXT_LENGTH}, got {args.context_length}")
    if args.num_workers < 1:
        raise UsageError(f"--num_workers must be at least 1, got {args.num_workers}")
    if args.max_documents is not None and args.max_documents < 2:
        raise UsageError(f"--max_documents must be at least 2 (one for each split), got {args.max_documents}")
    if args.train_tokenizer is not None and args.train_tokenizer < 261:
        raise UsageError(f"--train_tokenizer needs a vocabulary of at least 261 (256 bytes + 5 special tokens), "
                         f"got {args.train_tokenizer}")
    check_store(Path(args.path_to_data_store), args.overwrite)


def check_store(store: Path, overwrite: bool) -> None:
    if store.exists() and not store.is_dir():
        raise UsageError(f"--path_to_data_store {str(store)!r} is a file, not a folder")
    if store.is_dir() and any(store.iterdir()):
        if not overwrite:
            raise UsageError(f"--path_to_data_store {str(store)!r} is not empty; pass --overwrite to replace it")
        resolved = store.resolve()
        precious = [Path.home().resolve(), Path.cwd().resolve(), *Path.cwd().resolve().parents]
        if resolved in precious or (resolved / ".git").exists():
            raise UsageError(f"refusing to replace {str(store)!r} (it holds your home, working folder or a git "
                             f"repository); choose a dedicated store folder")


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


def load_tokenizer(name: str, cache_dir: str | None, context_length: int):
    """The tokenizer of a Hub id or a local folder; any failure becomes one line naming the value."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise UsageError(f"--hf_model_name {name!r} is not a folder (give a tokenizer folder or a Hub id)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the failure is reported below, in one line
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if name.startswith("~") else name,
                                                  cache_dir=cache_dir)
    except Exception as error:  # OSError, ValueError, HTTP errors...: all mean "cannot use this name"
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UsageError(f"--hf_model_name {name!r} is neither a local tokenizer folder nor a reachable Hub id "
                         f"({reason}); pass a folder of tokenizer files, or --train_tokenizer VOCAB_SIZE") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_tokenizer(tokenizer, name, context_length)
    return tokenizer


def check_tokenizer(tokenizer, name: str, context_length: int) -> None:
    if framing_ids(tokenizer) is None:
        raise UsageError(f"the tokenizer of {name!r} has no <s>/</s> (or [CLS]/[SEP]) tokens to frame blocks with")
    if context_length > tokenizer.model_max_length:
        raise UsageError(f"--context_length {context_length} is longer than the tokenizer of {name!r} allows "
                         f"({tokenizer.model_max_length})")


def framing_ids(tokenizer) -> tuple[int, int] | None:
    """(start id, end/separator id): RoBERTa's <s> and </s>, or BERT-style [CLS] and [SEP]."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return None if start is None or end is None else (start, end)


def train_tokenizer(train_documents, vocab_size: int, context_length: int):
    """Byte-level BPE on the train split only; its model_max_length is the context length (all a model can see)."""
    from tqdm.auto import tqdm

    texts = (text for batch in iter_texts(train_documents) for text in batch)
    texts = tqdm(texts, total=len(train_documents), desc="training tokenizer", unit=" docs")
    return train_bpe_tokenizer(texts, vocab_size, model_max_length=context_length)


def ids_dtype(tokenizer) -> np.dtype:
    """uint16 halves the store when every id fits (vocabularies up to 65,536), else int32."""
    return np.dtype(np.uint16) if len(tokenizer) <= 2**16 else np.dtype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# Documents: every source becomes a Dataset with one column `text`
# ----------------------------------------------------------------------------------------------------------------


def read_text_file_documents(path: str | os.PathLike) -> Iterator[str]:
    """Documents of a plain-text file: blank-line-separated blocks, or one a line if it has no blank line."""
    with open(path, encoding="utf-8") as f:
        has_blank_line = any(not line.strip() for line in f)
    with open(path, encoding="utf-8") as f:
        if not has_blank_line:
            yield from (line.strip() for line in f if line.strip())
            return
        for is_blank, lines in itertools.groupby(f, key=lambda line: not line.strip()):
            if not is_blank:
                yield "".join(lines).strip()


def documents_dataset(texts: Iterable[str], path: Path):
    """A disk-backed Dataset with one column `text` (memory stays flat: texts are written a batch at a time)."""
    import pyarrow as pa
    from datasets import Dataset, Features, Value
    from datasets.arrow_writer import ArrowWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with ArrowWriter(features=Features({"text": Value("string")}), path=str(path)) as writer:
        texts = iter(texts)
        while batch := list(itertools.islice(texts, PACK_READ_DOCUMENTS)):
            writer.write_table(pa.table({"text": pa.array(batch, type=pa.string())}))
        writer.finalize()
    return Dataset.from_file(str(path))


def load_documents(args: argparse.Namespace, cache_dir: Path, num_workers: int):
    """The source's documents as a Dataset with one column `text`, limited to --max_documents."""
    if args.source == "text_files":
        texts = (text for path in args.text_files for text in read_text_file_documents(path))
        try:
            documents = documents_dataset(itertools.islice(texts, args.max_documents), cache_dir / "documents.arrow")
        except UnicodeDecodeError as error:
            raise UsageError(f"--text_files: a file is not UTF-8 text ({error})") from None
    elif args.source == "demo":
        from demo_world import generate_documents

        documents = documents_dataset(generate_documents(DEMO_WORLD_SEED, args.max_documents),
                                      cache_dir / "documents.arrow")
    else:
        documents = load_wikipedia_bookcorpus(args.huggingface_cache_dir, num_workers, args.max_documents)
    if args.max_documents is not None and len(documents) > args.max_documents:
        documents = documents.select(range(args.max_documents))
    return documents


def load_wikipedia_bookcorpus(cache_dir: str | None, num_workers: int, max_documents: int | None = None):
    """English Wikipedia articles, then BookCorpus passages (the Hub's parquet files; downloads ~25 GB once)."""
    from datasets import concatenate_datasets

    wikipedia = load_hub_dataset(*WIKIPEDIA, cache_dir=cache_dir, num_workers=num_workers)
    if max_documents is not None and len(wikipedia) >= max_documents:
        return wikipedia.select(range(max_documents))
    sentences = load_hub_dataset(BOOKCORPUS[0], revision=BOOKCORPUS[1], cache_dir=cache_dir, num_workers=num_workers)
    books = group_sentences(sentences, BOOKCORPUS_SENTENCES_PER_DOCUMENT)
    return concatenate_datasets([wikipedia, books])


def load_hub_dataset(repo: str, config: str | None = None, revision: str | None = None, cache_dir: str | None = None,
                     num_workers: int = 1):
    """The `text` column of a Hub dataset's train split; a download failure is one line, not a traceback."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(repo, config, split="train", revision=revision, cache_dir=cache_dir,
                               num_proc=num_workers if num_workers > 1 else None)
    except (ConnectionError, OSError) as error:  # offline, unreachable, missing: datasets raises these
        raise UsageError(f"could not load {repo} {config or ''} from the Hub ({str(error).strip()[:200]}); check the "
                         f"network, or prepare --dataset demo or --text_files offline") from None
    return dataset.select_columns(["text"])


def group_sentences(sentences, per_document: int):
    """Join each run of `per_document` consecutive rows (sentences) into one document, separated by spaces.

    One process on purpose: datasets' sharding would cut groups at shard edges, making documents depend on it.
    """
    def join(batch: dict[str, list[str]]) -> dict[str, list[str]]:
        texts = [t.strip() for t in batch["text"]]
        return {"text": [" ".join(texts[i:i + per_document]) for i in range(0, len(texts), per_document)]}

    return sentences.map(join, batched=True, batch_size=per_document * 100, desc="grouping sentences")


def split_documents(documents, test_fraction: float, seed: int) -> dict:
    """{'train', 'test'}: a seeded draw of round(test_fraction * N) documents (at least 1) is the test split."""
    n = len(documents)
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise UsageError(f"the corpus has {n} document(s): too few to hold out {n_test} for testing")
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return {"train": documents.select(np.flatnonzero(~is_test)), "test": documents.select(np.flatnonzero(is_test))}


def iter_texts(documents, batch_size: int = PACK_READ_DOCUMENTS) -> Iterator[list[str]]:
    for start in range(0, len(documents), batch_size):
        yield documents[start:start + batch_size]["text"]


# ----------------------------------------------------------------------------------------------------------------
# Tokenising (parallel) and packing (one sequential pass)
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


def _encode_batch(table, tokenizer, dtype: str):
    """datasets.map function (arrow in, arrow out): one ragged `ids` list per document."""
    import pyarrow as pa

    ids = encode_texts(table.column("text").to_pylist(), tokenizer)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(offsets[-1]))
    return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))})


def tokenize_documents(documents, tokenizer, dtype: np.dtype, num_workers: int, cache_dir: Path, split: str):
    """A Dataset with one ragged column `ids`, row for row the documents, tokenised by `num_workers` processes."""
    from datasets import Features, List, Value

    num_workers = min(num_workers, -(-len(documents) // TOKENIZE_BATCH_DOCUMENTS))  # a small split: no pool
    if num_workers > 1:  # forked workers and the tokenizer's own threads deadlock; the workers are the parallelism
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return documents.with_format("arrow").map(
        _encode_batch, batched=True, batch_size=TOKENIZE_BATCH_DOCUMENTS, remove_columns=["text"],
        fn_kwargs={"tokenizer": tokenizer, "dtype": dtype.name}, features=Features({"ids": List(Value(dtype.name))}),
        num_proc=num_workers if num_workers > 1 else None,
        cache_file_name=str(cache_dir / f"tokens-{split}.arrow"), new_fingerprint=uuid.uuid4().hex,
        load_from_cache_file=False, desc=f"tokenizing {split}")


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


def pack_split(tokenized, context_length: int, start_id: int, end_id: int, dtype: np.dtype, path: Path) -> dict:
    """Stream a split's token ids, in document order, through the packer into an Arrow file of blocks."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    packer, content_hash = BlockPacker(context_length, start_id, end_id, dtype), hashlib.blake2b(digest_size=8)
    features = Features({"input_ids": List(Value(dtype.name), length=context_length)})
    counts = {"documents": 0, "tokens": 0, "separators": 0, "blocks": 0}
    with ArrowWriter(features=features, path=str(path)) as writer, \
            tqdm(total=len(tokenized), desc=f"packing {path.stem}", unit=" docs") as progress:
        for table in tokenized.with_format("arrow").iter(batch_size=PACK_READ_DOCUMENTS):
            column = table.column("ids").combine_chunks()
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
            values = column.flatten().to_numpy(zero_copy_only=False)
            stream = join_documents(lengths, values, end_id, first=counts["documents"] == 0)
            counts["separators"] += len(stream) - len(values)
            counts["documents"] += int(np.count_nonzero(lengths))
            counts["tokens"] += len(values)
            blocks = packer.pack(stream)
            counts["blocks"] += len(blocks)
            content_hash.update(blocks.tobytes())
            flat = pa.array(blocks.reshape(-1))
            writer.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(flat, context_length)}))
            progress.update(len(table))
        writer.finalize()
    return {**counts, "dropped_tokens": packer.remainder, "content_hash": content_hash.hexdigest()}


# ----------------------------------------------------------------------------------------------------------------
# The store: written beside the target, then moved into place
# ----------------------------------------------------------------------------------------------------------------


def make_work_folder(store: Path) -> Path:
    """A fresh hidden folder beside the store (same file system, so the final move is a rename)."""
    work = store.parent / f".{store.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        work.mkdir(parents=True)
    except OSError as error:
        raise UsageError(f"cannot write beside --path_to_data_store {str(store)!r}: {error.strerror}") from None
    return work


def move_into_place(new_store: Path, store: Path) -> None:
    """Replace `store` by `new_store`; the old store is removed only after the new one is in place."""
    old = store.parent / f".{store.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if store.exists():
        store.rename(old)
    new_store.rename(store)
    if old.exists():
        shutil.rmtree(old)


def save_store(blocks: dict[str, Path], hashes: dict[str, str], tokenizer, store_folder: Path) -> None:
    """The splits, fingerprinted by their content (not by where they were written), and the tokenizer."""
    from datasets import Dataset, DatasetDict

    splits = DatasetDict()
    for split, path in blocks.items():
        written = Dataset.from_file(str(path))
        splits[split] = Dataset(written.data, info=written.info, split=split, fingerprint=hashes[split])
    splits.save_to_disk(str(store_folder))
    tokenizer.save_pretrained(str(store_folder / "tokenizer"))


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"prepare_data: {message}", flush=True)


@contextlib.contextmanager
def timed(seconds: dict[str, float], phase: str):
    """Add the time spent inside the block to seconds[phase], for the record's breakdown."""
    start = time.perf_counter()
    yield
    seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - start, 3)


def prepare(args: argparse.Namespace, tokenizer, work: Path, started: float, seconds: dict[str, float]) -> dict:
    """Everything after the checks: load, split, (train a tokenizer,) tokenise, pack, save. Returns the record."""
    num_workers, cache = resolve_num_workers(args.num_workers), work / "cache"
    with timed(seconds, "load"):
        documents = load_documents(args, cache, num_workers)
        splits = split_documents(documents, args.test_split_pct, args.dataset_split_seed)
    log(f"{len(documents):,} documents from {args.source}: {len(splits['train']):,} train, {len(splits['test']):,} "
        f"test; tokenizing with {num_workers} worker(s)")
    if tokenizer is None:
        with timed(seconds, "train_tokenizer"):
            tokenizer = train_tokenizer(splits["train"], args.train_tokenizer, args.context_length)
    stats, blocks = tokenize_and_pack(splits, tokenizer, args.context_length, num_workers, cache, seconds)
    for split, counts in stats.items():
        if counts["blocks"] == 0:  # an empty split is of no use to train.py (and datasets cannot reload it)
            raise UsageError(f"the {split} split holds {counts['tokens'] + counts['separators']:,} tokens, fewer than "
                             f"one block of {args.context_length}; use more data, a larger --test_split_pct or a "
                             f"smaller --context_length (no store written)")
    with timed(seconds, "save"):
        save_store(blocks, {split: s["content_hash"] for split, s in stats.items()}, tokenizer, work / "store")
    return make_record(args, tokenizer, stats, num_workers, time.perf_counter() - started, seconds)


def tokenize_and_pack(splits: dict, tokenizer, context_length: int, num_workers: int, cache: Path,
                      seconds: dict[str, float]) -> tuple[dict[str, dict], dict[str, Path]]:
    """Each split's documents -> token ids (parallel) -> blocks in an Arrow file. Returns (counts, block files)."""
    dtype, (start_id, end_id) = ids_dtype(tokenizer), framing_ids(tokenizer)
    stats, blocks = {}, {}
    for split, documents in splits.items():
        with timed(seconds, "tokenize"):
            tokenized = tokenize_documents(documents, tokenizer, dtype, num_workers, cache, split)
        with timed(seconds, "pack"):
            blocks[split] = cache / f"{split}.arrow"
            stats[split] = pack_split(tokenized, context_length, start_id, end_id, dtype, blocks[split])
        for path in cache.glob(f"tokens-{split}*.arrow"):  # the packed blocks replace them: free the disk now
            path.unlink()
    return stats, blocks


def make_record(args: argparse.Namespace, tokenizer, stats: dict, num_workers: int, total_seconds: float,
                seconds: dict[str, float]) -> dict:
    """What prepare_data.json holds: the arguments, what was used, the counts per split and the speed."""
    tokens = sum(s["tokens"] for s in stats.values())
    return {"arguments": {k: v for k, v in vars(args).items() if k != "source"}, "source": args.source,
            "context_length": args.context_length, "num_workers_used": num_workers,
            "tokenizer": {"from": "trained" if args.train_tokenizer else args.hf_model_name,
                          "vocab_size": len(tokenizer), "model_max_length": tokenizer.model_max_length},
            "ids_dtype": ids_dtype(tokenizer).name, "splits": stats,
            "dropped_tokens": sum(s["dropped_tokens"] for s in stats.values()),
            "seconds": round(total_seconds, 2), "seconds_by_phase": seconds,
            "tokens_per_second": round(tokens / max(total_seconds, 1e-9)), "library_versions": library_versions()}


def summary_line(record: dict, store: Path) -> str:
    parts = [f"{name} {s['documents']:,} docs, {s['tokens']:,} tokens, {s['blocks']:,} blocks"
             for name, s in record["splits"].items()]
    return (f"prepare_data: done: {' | '.join(parts)} | blocks of {record['context_length']} | "
            f"{record['dropped_tokens']:,} tokens dropped | {record['seconds']:.1f} s, "
            f"{record['tokens_per_second']:,} tokens/s | store {store}")


def main(argv: list[str] | None = None) -> dict:
    """Check everything, prepare the store in a work folder beside it, move it into place; returns the record."""
    started, seconds = time.perf_counter(), {}
    args = parse_args(argv)
    validate_args(args)
    tokenizer = None
    if args.train_tokenizer is None:
        with timed(seconds, "load_tokenizer"):
            tokenizer = load_tokenizer(args.hf_model_name, args.huggingface_cache_dir, args.context_length)
    store = Path(args.path_to_data_store).absolute()
    work = make_work_folder(store)
    try:
        record = prepare(args, tokenizer, work, started, seconds)
        write_json(work / "store" / "prepare_data.json", record)
        move_into_place(work / "store", store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(summary_line(record, store), flush=True)
    return record


if __name__ == "__main__":
    run_cli(main)
