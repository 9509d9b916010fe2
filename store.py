"""The data store: its format, and its reader (`open_store`). prepare_data.py writes stores (store_writer.py).

Layout (that of `datasets.DatasetDict.save_to_disk`, written directly so that the token stream is on disk once):
  * STORE_INDEX (`dataset_dict.json`) and one folder per split of STORE_SPLITS (`train`, `test`), each with
    `data-0000i-of-0000N.arrow` shards, `state.json` and `dataset_info.json` (datasets' own names);
  * one column STORE_COLUMN (`input_ids`) of blocks of exactly the store's block length, uint16 when the
    vocabulary fits, else int32. A block is `<s>`, block length - 2 tokens of the split's documents joined by
    `</s>` and cut at whatever token the cut falls on, `</s>`;
  * STORE_TOKENIZER_DIR (`tokenizer/`): the tokenizer that made the ids;
  * STORE_RECORD (`prepare_data.json`): how the store was made. Its keys that readers use are declared below
    (RECORD_*): the command, the block length, the tokenizer's identity (tokenization.tokenizer_identity) and where
    it came from, and per split the counts and a fingerprint (a hash of the split's blocks); and a README.md.

`open_store(path)` checks all of it and returns a `Store`: the splits, the record, the tokenizer (checked against the
recorded identity by tokenization's one rule), the block length, the fingerprint and the vocabulary size. Importing
this module starts nothing and loads no training library: the notebook reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import run_folder
from folders import LOCK_FILE, OutputKind
from tokenization import load_tokenizer, tokenizer_mismatch
from utils import UsageError, first_line

STORE_SPLITS = ("train", "test")
TRAIN, TEST = STORE_SPLITS
STORE_COLUMN = "input_ids"
STORE_TOKENIZER_DIR = "tokenizer"
STORE_RECORD = "prepare_data.json"
STORE_INDEX = "dataset_dict.json"  # what makes split folders a DatasetDict
STORE_README = "README.md"
# A split folder, as datasets' save_to_disk lays it out (load_from_disk reads it): shards, state, features.
SHARD_NAME = "data-{index:05d}-of-{count:05d}.arrow"
SPLIT_STATE, SPLIT_INFO = "state.json", "dataset_info.json"
MIN_CONTEXT_LENGTH = 8  # the shortest block: <s>, </s> and a few tokens

# Keys of STORE_RECORD that readers use; prepare_data.py writes the record with these names.
RECORD_COMMAND = "command"  # the prepare_data.py command line
RECORD_BLOCK_LENGTH = "context_length"  # ids per block
RECORD_TOKENIZER = "tokenizer"  # tokenization.tokenizer_identity of the tokenizer, and RECORD_TOKENIZER_FROM
RECORD_TOKENIZER_FROM = "from"  # a Hub id or folder, or RECORD_TRAINED
RECORD_TRAINED = "trained"  # a byte-level BPE trained on the store's own train split
RECORD_SPLITS = "splits"  # per split: documents, tokens, separators, blocks, dropped_tokens, RECORD_FINGERPRINT
RECORD_FINGERPRINT = "fingerprint"  # of a split: a hash of its blocks (equal stores have equal fingerprints)

STORE = OutputKind("data store", "prepare_data.py", records=(STORE_RECORD,),
                   made=(STORE_RECORD, STORE_INDEX, *STORE_SPLITS, STORE_TOKENIZER_DIR, STORE_README, LOCK_FILE))


@dataclass(frozen=True)
class Store:
    """An opened store: what the data knows, so that no run asks for it again."""

    path: Path
    data: object  # datasets.DatasetDict of STORE_SPLITS
    record: dict  # STORE_RECORD ({} for a store written before records existed)
    tokenizer: object  # the tokenizer that made the ids
    block_length: int  # ids per block, <s> and </s> included

    @property
    def fingerprint(self) -> str | None:
        """The train split's fingerprint (a hash of its blocks), as recorded; None for a store without one."""
        return self.record.get(RECORD_SPLITS, {}).get(TRAIN, {}).get(RECORD_FINGERPRINT)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def has_own_tokenizer(self) -> bool:
        return (self.path / STORE_TOKENIZER_DIR).is_dir()

    @property
    def made_with(self) -> str:
        """Where the store's tokenizer came from, in words."""
        source = self.record.get(RECORD_TOKENIZER, {}).get(RECORD_TOKENIZER_FROM)
        return "a tokenizer trained on its text" if source == RECORD_TRAINED else source or "an unrecorded tokenizer"

    @property
    def command(self) -> str:
        return self.record.get(RECORD_COMMAND, "")


def open_store(path: str | os.PathLike, *, flag: str = "--path_to_prepped_data", tokenizer: str | None = None,
               tokenizer_flag: str = "--hf_model_name") -> Store:
    """The store at `path`, checked against the layout above; one UsageError on any problem.

    Its tokenizer is its own STORE_TOKENIZER_DIR, else `tokenizer` (a Hub id or folder: a store written before
    stores held their tokenizer), checked against the identity the store recorded."""
    import datasets  # here, not above: the notebook imports this module (through batches.py) without datasets

    folder = Path(path)
    hint = f"write one with `python prepare_data.py --path_to_data_store {path} ...`"
    if folder.is_file():  # a text file given where its store belongs: the command that makes a store of it
        raise UsageError(f"{flag} {path} is a file; it needs a data store, the folder prepare_data.py writes: "
                         f"`python prepare_data.py --text_files {path} --path_to_data_store "
                         f"{folder.with_name(folder.name.split('.')[0] + '_store')}` (add --hf_model_name or "
                         "--train_tokenizer to choose the tokenizer)")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path} does not exist; {hint}")
    if not (folder / STORE_INDEX).is_file():
        other = any(folder.iterdir()) and ("it holds other files: give the folder prepare_data.py wrote, or write a "
                                           "store to a new folder (`python prepare_data.py --path_to_data_store "
                                           "NEW_FOLDER ...`)")
        raise UsageError(f"{flag} {path} is not a data store (no {STORE_INDEX}); "
                         f"{run_folder_hint(folder) or other or hint}")
    try:
        data = datasets.load_from_disk(str(folder))
        record = json.loads((folder / STORE_RECORD).read_text()) if (folder / STORE_RECORD).is_file() else {}
    except Exception as error:  # a damaged store fails in many ways; all mean the same to a user
        raise UsageError(f"{flag} {path} could not be read ({type(error).__name__}: {first_line(error)}); "
                         f"{hint}") from None
    lengths = set()
    for split in STORE_SPLITS:
        if split not in data or STORE_COLUMN not in data[split].column_names or len(data[split]) == 0:
            raise UsageError(f"{flag} {path} needs a non-empty '{split}' split with an {STORE_COLUMN} column (it has "
                             f"{dict(data.num_rows)}); {hint}")
        lengths.add(len(data[split][0][STORE_COLUMN]))
    if len(lengths) > 1:
        raise UsageError(f"{flag} {path} has blocks of different lengths in its splits ({sorted(lengths)}); {hint}")
    return Store(folder, data, record, store_tokenizer(folder, record, tokenizer, tokenizer_flag), lengths.pop())


def run_folder_hint(folder: Path) -> str | None:
    """A pretraining run folder given where its store belongs: the store it was trained on, not a command that
    would write a store into the run folder."""
    if not run_folder.is_run_folder(folder):
        return None
    store = run_folder.read_args(folder).get("args", {}).get("path_to_prepped_data")
    return f"it is a pretraining run folder (train.py's){f', trained on the store {store}' if store else ''}"


def check_contents(store: Store, flag: str = "--path_to_prepped_data") -> None:
    """Every block of every split read once, against what the record promises: each id a token of the store's
    tokenizer (below its vocabulary size), each split's hash its recorded fingerprint. One UsageError naming the
    first damaged block (an id out of range) or split (a changed hash) otherwise, before any training: a damaged id
    would fail only when its batch is drawn, hours in, or never. Reads the whole store once: 1.4 s of one core per
    GB measured (about 20 s for a 14 GB store), plus reading it from disk (docs/prepare_data.md)."""
    command = store.command + ("" if "--overwrite" in store.command.split() else " --overwrite")
    remake = f"make it again: {command}" if store.command else "make it again with prepare_data.py --overwrite"
    for split in STORE_SPLITS:
        digest, first = hashlib.blake2b(digest_size=8), 0  # store_writer's fingerprint: the blocks' bytes in order
        for chunk in store.data[split].data.table.column(STORE_COLUMN).chunks:
            ids = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), store.block_length)
            if len(ids) and (int(ids.max()) >= store.vocab_size or int(ids.min()) < 0):
                row = int(np.flatnonzero(((ids >= store.vocab_size) | (ids < 0)).any(axis=1))[0])
                bad = ids[row][(ids[row] >= store.vocab_size) | (ids[row] < 0)]
                raise UsageError(f"{flag} {store.path} is damaged: block {first + row:,} of its {split} split holds "
                                 f"id {int(bad[0]):,}, outside its tokenizer's {store.vocab_size:,} tokens; {remake}")
            digest.update(np.ascontiguousarray(ids))
            first += len(chunk)
        recorded = store.record.get(RECORD_SPLITS, {}).get(split, {}).get(RECORD_FINGERPRINT)
        if recorded and digest.hexdigest() != recorded:
            raise UsageError(f"{flag} {store.path} is damaged: its {split} split's blocks do not match the fingerprint "
                             f"its {STORE_RECORD} records ({recorded}; now {digest.hexdigest()}): a file was changed "
                             f"since prepare_data.py made it; {remake}")


def store_tokenizer(folder: Path, record: dict, fallback: str | None, fallback_flag: str):
    """The tokenizer that made a store's ids: its own STORE_TOKENIZER_DIR, else `fallback`, checked against the
    identity the store recorded, so that no run reads the ids as other tokens."""
    if (folder / STORE_TOKENIZER_DIR).is_dir():
        source = str(folder / STORE_TOKENIZER_DIR)
        tokenizer = load_tokenizer(folder / STORE_TOKENIZER_DIR, flag="the store's tokenizer")
    elif fallback:
        source = fallback
        tokenizer = load_tokenizer(fallback, flag=f"{fallback_flag} (the store has no {STORE_TOKENIZER_DIR}/ folder)")
    else:
        raise UsageError(f"the store {folder} has no {STORE_TOKENIZER_DIR}/ folder; give the tokenizer that made it")
    recorded = record.get(RECORD_TOKENIZER, {})
    if mismatch := tokenizer_mismatch(tokenizer, recorded):
        raise UsageError(f"the tokenizer from {source} is not the one that made the store {folder} (recorded: "
                         f"{recorded.get(RECORD_TOKENIZER_FROM)}; this one has {mismatch}): the store's ids would be "
                         "read as other tokens")
    return tokenizer
