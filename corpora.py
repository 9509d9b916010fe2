"""Corpora: every source of text becomes documents (a Dataset with one column `text`), then a train/test split.

Sources (prepare_data.py's flags; see its --help):
  * the built-in demo corpus (demo_world.py, world seed DEMO_WORLD_SEED, no network);
  * local UTF-8 text files: a blank line separates documents, a file without blank lines is one document a line;
  * anything `datasets.load_dataset` reads (a Hub id or a local folder/file of parquet, JSON lines, CSV or text),
    one split or several joined by +, its rows taken as they are or grouped (WikiText articles, N rows);
  * Wikipedia (wikimedia/wikipedia 20231101.en) and BookCorpus (its parquet branch, 64 sentences a document).

Hub corpora are asked about before anything is downloaded (`preflight`): each revision is pinned to a commit sha,
which is what is loaded and recorded. Every failure a reader meets is a UsageError that says what to change.
The split is by document, before tokenising: a seeded draw of a fraction of the non-empty documents is `test`;
both splits keep the source's order.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import itertools
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

import demo_world
from store import TEST, TRAIN
from utils import DiskFull, UsageError, first_line, looks_local, out_of_space
from utils import log as shared_log

DATASETS = ["wikipedia_bookcorpus", "wikipedia", "demo"]
BOOKCORPUS_SENTENCES_PER_DOCUMENT = 64  # about 1,000 tokens: a few pages, so the split and separators are by passage
DEMO_WORLD_SEED = 0  # the demo QA set asks about this world
TEXT_COLUMN = "text"  # the one column of the documents a store is written from
PACK_READ_DOCUMENTS = 10_000  # documents per read when writing or scanning documents
STREAM_READ_ROWS = 1000  # rows per read of a streamed corpus: --max_documents reads at most this many too many
UTF8_CHECK_BYTES = 1 << 20  # validation decodes the head of each text file; the rest is checked while reading
DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".txt", ".json.gz", ".jsonl.gz", ".txt.gz")
LOCAL_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv",
                  ".txt": "text"}


def log(message: str) -> None:
    shared_log(message, prefix="prepare_data: ")


# ----------------------------------------------------------------------------------------------------------------
# Checks of the sources, before anything is read
# ----------------------------------------------------------------------------------------------------------------


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
    if looks_local(name) and not path.exists():
        raise UsageError(f"--dataset_name {name} does not exist (a local folder or file, or a Hub id like "
                         "Salesforce/wikitext)")
    if path.is_file() and not name.endswith(tuple(LOCAL_BUILDERS)):
        raise UsageError(f"--dataset_name {name}: a local file must end in one of {', '.join(LOCAL_BUILDERS)}")
    if path.is_dir():  # datasets reads one format of a folder (the most common) and silently drops the others
        formats: dict[str, int] = {}
        for file in path.rglob("*"):
            suffix = next((s for s in LOCAL_BUILDERS if file.name.endswith(s) or file.name.endswith(s + ".gz")), None)
            if suffix and file.is_file():
                formats[LOCAL_BUILDERS[suffix]] = formats.get(LOCAL_BUILDERS[suffix], 0) + 1
        if len(formats) > 1:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(formats.items()))
            raise UsageError(f"--dataset_name {name} holds data files of several formats ({counts}): datasets would "
                             "read only one of them and drop the rest; convert them to one format, or move the "
                             "others out of the folder")
    if path.is_file() and split != "train":
        raise UsageError(f"--dataset_split {split}: a single local file has one split, train")
    if path.is_file() and config is not None:
        raise UsageError(f"--dataset_config_name {config}: a single local file has no configurations")
    if not all(part and re.fullmatch(r"[\w.-]+", part) for part in split.split("+")):
        raise UsageError(f"--dataset_split {split!r}: give split names joined by +, e.g. train or train+validation")
    if config is not None and not config.strip():
        raise UsageError("--dataset_config_name is empty")

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
        return looks_local(self.path)

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
    return Path(cache_dir).expanduser().absolute() / "hub" if cache_dir else Path(constants.HF_HUB_CACHE)


def datasets_cache_dir(cache_dir: str | None) -> Path:
    import datasets

    default = Path(datasets.config.HF_DATASETS_CACHE)
    return Path(cache_dir).expanduser().absolute() / "datasets" if cache_dir else default


def hub_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def hub_error(what: str, error: Exception) -> UsageError:
    """One line for a failed Hub call: what was asked, why it failed, what to do."""
    reason = first_line(error, 160)
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
    for corpus in corpora:
        if corpus.local:
            files = [p for p in Path(corpus.path).expanduser().rglob("*") if p.is_file()] if Path(
                corpus.path).expanduser().is_dir() else [Path(corpus.path).expanduser()]
            corpus.files = [str(p) for p in files if p.name.endswith(DATA_FILE_SUFFIXES)]
            corpus.download_bytes = sum(Path(p).stat().st_size for p in corpus.files)
    hub = [c for c in corpora if not c.local]
    if tokenizer_name and looks_local(tokenizer_name):
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

    text = first_line(error, 240)
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
    if out_of_space(error):
        return DiskFull(f"{name} could not be downloaded ({text}); free space or pass --huggingface_cache_dir on a "
                        "larger disk")
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
# Documents: every source becomes a Dataset with one column `text`; the split
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
        titles = 0
        for row in rows:
            titles += is_wikitext_title(row)
            if is_wikitext_title(row) and article:
                yield "\n".join(article)
                article = []
            article.append(row)
        if not titles and article:  # else the whole corpus would silently become one document
            raise UsageError("--group_rows wikitext: no headings found (no row like ' = Title = ' starts an "
                             f"article in {len(article):,} rows); use --group_rows none (each row a document) or a "
                             "number of rows per document")
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
        documents = documents_dataset(demo_world.generate_documents(DEMO_WORLD_SEED, args.max_documents),
                                      work / "documents.arrow")
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
