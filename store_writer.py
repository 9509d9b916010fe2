"""Writing a data store (prepare_data.py): tokenising, packing, the split writer, the record and the README.

The format is store.py's; this module writes it. Packing: a split's documents are tokenised without special tokens
and joined into one stream, one `</s>` between consecutive documents (`doc1 </s> doc2 </s> doc3`). The stream is cut
into pieces of context_length - 2 tokens at whatever token the cut falls on, as transformers' `group_texts` does,
and each piece is framed as `<s> piece </s>`. A block may therefore start or end mid-sentence and hold the end of
one document and the start of the next: not the paper's FULL-SENTENCES nor DOC-SENTENCES, which never cut a
sentence. Decoding the pieces in order and splitting on `</s>` gives back the documents; only the stream's final
remainder (shorter than one piece) is dropped. Literal "<s>"/"</s>" strings inside a document are tokenised as
text, so a document cannot forge a separator. Tokenising runs in worker processes that hand their ids back in
document order to one packer, so any number of workers gives the same bytes.

A run that writes a store is `interruptible()`: SIGINT and SIGTERM unwind it (every `finally` runs), and every
process it forks (its tokenising workers, datasets' num_proc workers) dies with it. The store is written in a work
folder beside it and swapped in by folders.move_into_place.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import DatasetInfo, Features, List, Value
from datasets.arrow_writer import ArrowWriter
from datasets.utils.py_utils import asdict  # what save_to_disk uses: Features serialised as datasets does
from tqdm.auto import tqdm

import fault_injection
import folders
from corpora import TEXT_COLUMN
from store import (
    MIN_CONTEXT_LENGTH,
    RECORD_BLOCK_LENGTH,
    RECORD_COMMAND,
    RECORD_FINGERPRINT,
    RECORD_SPLITS,
    RECORD_TOKENIZER,
    RECORD_TOKENIZER_FROM,
    SHARD_NAME,
    SPLIT_INFO,
    SPLIT_STATE,
    STORE_COLUMN,
    STORE_INDEX,
    STORE_README,
    STORE_RECORD,
    STORE_SPLITS,
    STORE_TOKENIZER_DIR,
    TEST,
)
from utils import UsageError

SHARD_BYTES = 500 * 10**6  # store shard size, as save_to_disk's default max_shard_size
TOKENIZE_BATCH_DOCUMENTS = 1000  # documents per task of a tokenising worker (memory per worker: one batch)


# ----------------------------------------------------------------------------------------------------------------
# Blocks: framing and packing
# ----------------------------------------------------------------------------------------------------------------


def framing_ids(tokenizer) -> tuple[int, int] | None:
    """(start id, end/separator id): RoBERTa's <s> and </s>, or BERT-style [CLS] and [SEP]."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return None if start is None or end is None else (start, end)


def ids_dtype(tokenizer) -> np.dtype:
    """uint16 halves the store when every id fits (vocabularies up to 65,536), else int32."""
    return np.dtype(np.uint16) if len(tokenizer) <= 2**16 else np.dtype(np.int32)


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

# ----------------------------------------------------------------------------------------------------------------
# Writing a store: tokenising (worker processes, results in document order), packing, the split writer
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
    if fault_injection.TOKENIZING_DELAY_S:
        time.sleep(fault_injection.TOKENIZING_DELAY_S)
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


class SplitWriter:
    """A split's blocks written straight into the store's final layout, that of `Dataset.save_to_disk`:
    `<split>/data-00000-of-0000N.arrow` shards of about SHARD_BYTES, `state.json` and `dataset_info.json`.

    Writing the layout directly (rather than blocks to a file, then save_to_disk copying it) keeps one copy of the
    token stream on disk. The fingerprint is a hash of the blocks, so equal stores have equal fingerprints."""

    def __init__(self, store: Path, split: str, context_length: int, dtype: np.dtype):
        self.folder, self.split = store / split, split
        self.folder.mkdir(parents=True)
        self.features = Features({STORE_COLUMN: List(Value(dtype.name), length=context_length)})
        self.rows_per_shard = max(1, SHARD_BYTES // (context_length * dtype.itemsize))
        self.context_length, self.hash = context_length, hashlib.blake2b(digest_size=8)
        self.shards: list[Path] = []
        self.writer, self.in_shard, self.rows = None, 0, 0

    def write(self, blocks: np.ndarray) -> None:
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
        if self.writer is not None:
            self._close_shard()
        names = [SHARD_NAME.format(index=i, count=len(self.shards)) for i in range(len(self.shards))]
        for shard, name in zip(self.shards, names, strict=True):
            shard.rename(self.folder / name)
        fingerprint = self.hash.hexdigest()
        state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint,
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": self.split}
        (self.folder / SPLIT_STATE).write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(DatasetInfo(features=self.features))
        info = {key: info[key] for key in sorted(info)}
        (self.folder / SPLIT_INFO).write_text(json.dumps(info, indent=2))
        return fingerprint


def pack_split(batches: Iterable[tuple[np.ndarray, np.ndarray]], writer: SplitWriter, start_id: int, end_id: int,
               dtype: np.dtype, total: int) -> dict:
    """Stream a split's token ids, in document order, through the packer into the store."""
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
            stats[split][RECORD_FINGERPRINT] = writer.close()
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


def write_tokenizer_and_index(folder: Path, tokenizer) -> None:
    """The tokenizer that made the ids, and the index of the splits: what turns split folders into a store."""
    tokenizer.save_pretrained(str(folder / STORE_TOKENIZER_DIR))
    (folder / STORE_INDEX).write_text(json.dumps({"splits": list(STORE_SPLITS)}))


def write_record(folder: Path, record: dict) -> None:
    """STORE_RECORD (how the store was made) and the README that describes it to whoever finds the folder."""
    folders.write_json(folder / STORE_RECORD, record)
    write_store_readme(folder, record)


def write_store_readme(store: Path, record: dict) -> None:
    """A short description of the store, for whoever finds the folder."""
    splits = "\n".join(f"| `{name}` | {s['blocks']:,} | {s['documents']:,} | {s['tokens']:,} |"
                       for name, s in record[RECORD_SPLITS].items())
    tok, block = record[RECORD_TOKENIZER], record[RECORD_BLOCK_LENGTH]
    made_with = tok[RECORD_TOKENIZER_FROM]
    sources = "\n".join(f"- `{s.get('repo') or s.get('path')}` config `{s['config']}`, split `{s['split']}`, column "
                        f"`{s['column']}`, rows grouped: {s['group_rows']}, revision `{s['revision']}`"
                        for s in record["sources"]) or f"- `{record['source']}`"
    (store / STORE_README).write_text(f"""# Data store for RoBERTa pretraining

Written by `prepare_data.py` on {record['created']}. Read it with `datasets.load_from_disk` (or `train.py
--path_to_prepped_data`); `{STORE_RECORD}` holds everything below and more.

Made with:

```bash
{record[RECORD_COMMAND]}
```

Sources:
{sources}

| split | blocks | documents | tokens |
| --- | --- | --- | --- |
{splits}

- Column `{STORE_COLUMN}`: blocks of exactly {block} token ids (`{record['ids_dtype']}`): `<s>`,
  {block - 2} tokens of the split's documents joined by `</s>` and cut at arbitrary tokens,
  `</s>`. {record['dropped_tokens']:,} tokens of the streams' final remainders were dropped.
- `{STORE_TOKENIZER_DIR}/`: the tokenizer that made the ids ({made_with}, vocabulary {tok['vocab_size']:,},
  fingerprint `{tok['fingerprint']}`); train with this tokenizer only.
- The split is by document: a draw (seed {record['arguments']['dataset_split_seed']}) of
  {record['arguments']['test_split_pct']} of the documents is `test`.
""")

# ----------------------------------------------------------------------------------------------------------------
# The writing run's signals: SIGINT/SIGTERM unwind it, its forked workers die with it
# ----------------------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: unwind (removing the work folder), then exit 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_RUNNING: dict = {"pid": None}  # the process of the run in progress, whose forked children are its workers


def _exit_by_signal(signum, frame) -> None:
    """SIGTERM in a forked worker: exit by unwinding, not on the spot. A worker waiting for its next task holds the
    task queue's lock; dying there (SIG_DFL), as under a SIGTERM to the whole process group, would leave the lock
    taken, and Pool.terminate() in the parent waits for that lock forever. SystemExit releases it on the way out."""
    raise SystemExit(128 + signum)


def _after_fork_in_child() -> None:
    """In every process forked by a run (our tokenising workers, and datasets' num_proc workers): the default
    SIGINT and an exit on SIGTERM (so that a pool's terminate() ends it, not the parent's handler), and death with
    the parent even by SIGKILL (Linux prctl PR_SET_PDEATHSIG), so that no worker outlives a killed run."""
    if _RUNNING["pid"] is None or os.getppid() != _RUNNING["pid"]:
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _exit_by_signal)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise Interrupted in the main thread, so that every `finally` runs; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    if not _RUNNING.get("hooked"):  # once per process, and only in a process that writes a store
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _RUNNING["hooked"] = True
    _RUNNING["pid"] = os.getpid()
    try:
        yield
    finally:
        _RUNNING["pid"] = None
        for s, h in previous.items():
            signal.signal(s, h)
