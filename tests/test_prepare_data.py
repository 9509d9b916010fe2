"""prepare_data.py: packing, splitting, sources, the store, safety of the user's files, the Hub paths, bad input.

Stores are built in process with prepare_data.main (the project's own code, without an interpreter start); the
command line itself is run by one fast test (bad input) and by the end-to-end tests marked slow. Every store is
checked against its documents independently: decoding every block's content in order and splitting on </s> must
give back each document exactly once, in order, except what the final remainder of each split dropped. The Hub is
never reached: its functions (datasets.load_dataset, huggingface_hub.HfApi) are replaced by local stand-ins.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import hold_lock_in_another_process

import corpora
import fault_injection
import folders
import prepare_data
import store_writer as store_module
from corpora import read_text_file_documents, split_documents
from demo_world import generate_documents
from store import STORE, STORE_COLUMN, STORE_RECORD, STORE_SPLITS, STORE_TOKENIZER_DIR
from store_writer import BlockPacker, join_documents, pack_documents
from tokenization import BPE_MIN_VOCAB_SIZE, tokenizer_fingerprint
from utils import UsageError

ROOT = Path(__file__).resolve().parent.parent
BOS, SEP = 0, 2  # <s>, </s>
TRAIN, TEST = STORE_SPLITS


def run_prepare(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "prepare_data.py"), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def main(*args) -> dict:
    return prepare_data.main([str(a) for a in args])


def store_rows(store: Path, split: str) -> np.ndarray:
    from datasets import load_from_disk

    return load_from_disk(str(store))[split].with_format("numpy")[:][STORE_COLUMN]


def record_of(store: Path) -> dict:
    return json.loads((store / STORE_RECORD).read_text())


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: compare before and after to prove nothing was touched (the lock
    file aside: a run that takes the lock writes its pid there)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != folders.LOCK_FILE}


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# Packing, splitting, documents, in process
# ----------------------------------------------------------------------------------------------------------------


def test_pack_documents_on_a_worked_example():
    # stream: 5 6 7 </s> 8 </s> 9 10 11 12; pieces of 3 framed by <s> ... </s>; the final 12 is dropped
    blocks, dropped = pack_documents([[5, 6, 7], [8], [], [9, 10, 11, 12]], context_length=5, start_id=BOS, end_id=SEP)
    assert blocks.tolist() == [[0, 5, 6, 7, 2], [0, 2, 8, 2, 2], [0, 9, 10, 11, 2]]
    assert dropped == 1


def test_packing_does_not_depend_on_how_the_stream_is_fed():
    # what makes any --num_workers give the same store: the blocks depend on the documents, not on the chunks
    rng = np.random.default_rng(3)
    documents = [rng.integers(5, 300, size=rng.integers(0, 40)) for _ in range(101)]
    expected, dropped = pack_documents(documents, context_length=13, start_id=BOS, end_id=SEP, dtype=np.uint16)
    for trial in range(5):
        cuts = np.sort(rng.choice(np.arange(1, len(documents)), size=trial * 7 + 1, replace=False))
        packer, pieces, first = BlockPacker(13, BOS, SEP, np.dtype(np.uint16)), [], True
        for chunk in np.split(np.arange(len(documents)), cuts):
            lengths = np.array([len(documents[i]) for i in chunk])
            values = np.concatenate([documents[i] for i in chunk]).astype(np.uint16)
            pieces.append(packer.pack(join_documents(lengths, values, SEP, first=first)))
            first = False
        assert np.array_equal(np.concatenate(pieces), expected) and packer.remainder == dropped
    assert expected.shape[1] == 13 and (expected[:, 0] == BOS).all() and (expected[:, -1] == SEP).all()


def test_split_documents_follows_the_fraction_and_the_seed_and_drops_empty_documents():
    from datasets import Dataset

    documents = Dataset.from_dict({"text": [f"document {i}" for i in range(203)]})
    splits = split_documents(documents, test_fraction=0.1, seed=5)
    train, test = list(splits[TRAIN]["text"]), list(splits[TEST]["text"])
    assert len(test) == 20 and len(train) == 183 and sorted(train + test) == sorted(documents["text"])
    assert train == sorted(train, key=lambda t: int(t.split()[1]))  # both keep the source's order
    assert list(split_documents(documents, 0.1, seed=5)[TEST]["text"]) == test
    assert list(split_documents(documents, 0.1, seed=6)[TEST]["text"]) != test
    with_blanks = Dataset.from_dict({"text": ["a", "", "  \n", None, "b", "c"]})
    kept = split_documents(with_blanks, 0.3, seed=0)
    assert sorted([*kept[TRAIN]["text"], *kept[TEST]["text"]]) == ["a", "b", "c"]


def test_text_file_documents(tmp_path):
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("  First line\nstill first.\n\n\n Second é.\n   \nThird\n")
    lines = tmp_path / "lines.txt"
    lines.write_text("one\n two two \nthree")
    assert list(read_text_file_documents(paragraphs)) == ["First line\nstill first.", "Second é.", "Third"]
    assert list(read_text_file_documents(lines)) == ["one", "two two", "three"]


def test_rows_become_documents_as_asked():
    rows = [" = Alpha = \n", "\n", " Alpha is a letter .\n", " = = History = = \n", " Old .\n", "", None,
            " = Beta = \n", " Beta follows .\n"]
    assert list(corpora.group_rows(rows, "none")) == ["= Alpha =", "Alpha is a letter .", "= = History = =",
                                                          "Old .", "= Beta =", "Beta follows ."]
    assert list(corpora.group_rows(rows, "wikitext")) == [
        "= Alpha =\nAlpha is a letter .\n= = History = =\nOld .", "= Beta =\nBeta follows ."]
    sentences = [f"sentence {i} ." for i in range(10)]  # BookCorpus: one sentence a row, 64 a document
    assert list(corpora.group_rows(sentences, "4")) == [
        "sentence 0 . sentence 1 . sentence 2 . sentence 3 .", "sentence 4 . sentence 5 . sentence 6 . sentence 7 .",
        "sentence 8 . sentence 9 ."]
    assert corpora.BOOKCORPUS.group_rows == str(corpora.BOOKCORPUS_SENTENCES_PER_DOCUMENT)
    with pytest.raises(UsageError, match="--group_rows wikitext: no headings found"):  # not "1 document"
        list(corpora.group_rows(["just text .", "more text ."], "wikitext"))


def test_special_token_text_inside_a_document_is_not_a_separator(tiny_tokenizer):
    (ids,) = store_module.encode_texts(["a </s> b <s> c"], tiny_tokenizer)
    assert SEP not in ids and BOS not in ids
    assert tiny_tokenizer.decode(ids) == "a </s> b <s> c"


def test_num_workers_is_capped_at_the_cpus():
    assert 1 <= prepare_data.resolve_num_workers(10**6) <= (os.cpu_count() or 1)
    assert prepare_data.resolve_num_workers(1) == 1


def test_first_invalid_utf8_finds_the_offset_across_chunks():
    data = "naïve café ".encode() * 3 + b"\xe9t\xe9" + b"ok"
    bad = len("naïve café ".encode() * 3)
    for size in [1, 2, 3, 7, 1000]:
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert corpora.first_invalid_utf8(chunks) == bad
    assert corpora.first_invalid_utf8(["é".encode()[:1]], final=False) is None  # cut, the file goes on
    assert corpora.first_invalid_utf8(["é".encode()[:1]], final=True) == 0


# ----------------------------------------------------------------------------------------------------------------
# Stores built in process, checked against their documents
# ----------------------------------------------------------------------------------------------------------------


def pieces_of(rows: np.ndarray) -> list[list[int]]:
    """The blocks' contents (framing <s> and </s> removed) joined in order, split on the </s> separators."""
    stream = rows[:, 1:-1].reshape(-1)
    return [piece[piece != SEP].tolist() if i else piece.tolist()
            for i, piece in enumerate(np.split(stream, np.flatnonzero(stream == SEP)))]


def check_store_gives_back_documents(store: Path, record: dict, documents: list[str], tokenizer) -> dict:
    """Blocks are framed and full; decoding them gives each document once, in order; only remainders are lost.

    Returns {split: decoded complete documents}.
    """
    index = {text: i for i, text in enumerate(documents)}
    assert len(index) == len(documents), "test documents must be unique"
    context_length, decoded = record["context_length"], {}
    for split in STORE_SPLITS:
        rows = store_rows(store, split)
        assert rows.shape == (record["splits"][split]["blocks"], context_length)
        assert (rows[:, 0] == BOS).all() and (rows[:, -1] == SEP).all()
        *complete, last = pieces_of(rows)
        texts = [tokenizer.decode(ids, clean_up_tokenization_spaces=False) for ids in complete]
        positions = [index[text] for text in texts]  # KeyError: a decoded document that is no document
        assert positions == sorted(set(positions)), "documents out of order or duplicated"
        following = [documents[i] for i in range(positions[-1] + 1 if positions else 0, len(documents))]
        assert any(tokenizer(d, add_special_tokens=False)["input_ids"][:len(last)] == last for d in following)
        assert record["splits"][split]["dropped_tokens"] < context_length - 2
        decoded[split] = texts
    assert not set(decoded[TRAIN]) & set(decoded[TEST])
    # no token lost but the remainders, none duplicated: every document's tokens plus one separator between
    # consecutive documents of a split fill the blocks exactly, up to the dropped remainders
    tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in documents)
    in_blocks = sum(s["blocks"] for s in record["splits"].values()) * (context_length - 2)
    assert tokens + len(documents) - 2 == in_blocks + record["dropped_tokens"]
    return decoded


DEMO_ARGS = ["--dataset", "demo", "--max_documents", 300, "--train_tokenizer", 400, "--context_length", 29,
             "--test_split_pct", 0.1, "--num_workers", 2]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("demo") / "store"
    return store, main(*DEMO_ARGS, "--path_to_data_store", store)


def test_demo_store_layout_and_record(demo_store):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from store import open_store

    store, record = demo_store
    splits = load_from_disk(str(store))
    assert set(splits) == set(STORE_SPLITS) and splits[TRAIN].column_names == [STORE_COLUMN]
    assert str(splits[TRAIN].features[STORE_COLUMN].feature.dtype) == "uint16"  # vocabulary 400 fits
    opened = open_store(store)
    assert opened.record == record == record_of(store) and opened.block_length == 29
    assert record["splits"][TEST]["documents"] == 30 and record["splits"][TRAIN]["documents"] == 270
    assert record["arguments"]["context_length"] == 29 and record["arguments"]["dataset_split_seed"] == 42
    assert {"torch", "transformers", "datasets", "tokenizers"} <= set(record["library_versions"])
    assert record["tokens_per_second"] > 0 and record["command"].startswith("python prepare_data.py --dataset demo")
    tokenizer = AutoTokenizer.from_pretrained(store / STORE_TOKENIZER_DIR)
    assert record["tokenizer"] == {"from": "trained", "vocab_size": 400, "model_max_length": 29,
                                   "fingerprint": tokenizer_fingerprint(tokenizer), "trained_on": "train split",
                                   "vocab_size_requested": 400}
    readme = (store / "README.md").read_text()
    assert record["command"] in readme and record["tokenizer"]["fingerprint"] in readme and "README.md" in \
        STORE.made
    assert sorted(p.name for p in store.iterdir()) == sorted(
        [".lock", "README.md", "dataset_dict.json", STORE_RECORD, TEST, STORE_TOKENIZER_DIR, TRAIN])


def test_demo_store_decodes_back_to_the_documents(demo_store):
    from transformers import AutoTokenizer

    store, record = demo_store
    tokenizer = AutoTokenizer.from_pretrained(store / STORE_TOKENIZER_DIR)
    decoded = check_store_gives_back_documents(store, record, generate_documents(0, 300), tokenizer)
    assert len(decoded[TEST]) >= 28


def test_trained_tokenizer_round_trips_text(demo_store):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_store[0] / STORE_TOKENIZER_DIR)
    assert [tokenizer.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    assert tokenizer.model_max_length >= 29
    for text in [generate_documents(0, 301)[-1], "Unseen words: Zürich, naïve café — 42 × 3!\n  indented"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """Two files, one of blank-line-separated documents (some of several lines), one of a document a line."""
    folder = tmp_path_factory.mktemp("text")
    articles = generate_documents(seed=0, num_documents=400)[-36:]  # not in the demo store's 300
    (folder / "a.txt").write_text("\n\n".join(articles[:24]) + "\n")
    lines = [article.replace("\n", " ") for article in articles[24:]]
    (folder / "b.txt").write_text("\n".join(lines) + "\n")
    return [folder / "a.txt", folder / "b.txt"], articles[:24] + lines


def text_args(store, text_files, tokenizer_dir, *extra) -> list:
    return ["--text_files", *text_files[0], "--hf_model_name", tokenizer_dir, "--context_length", 23,
            "--test_split_pct", 0.25, "--path_to_data_store", store, *extra]


@pytest.fixture(scope="module")
def text_stores(tmp_path_factory, text_files, tiny_tokenizer_dir):
    """The same text files prepared with one and with two workers; with two, shards of 100 blocks."""
    folder = tmp_path_factory.mktemp("text_stores")
    records = {1: main(*text_args(folder / "1", text_files, tiny_tokenizer_dir, "--num_workers", 1))}
    saved = store_module.SHARD_BYTES, store_module.TOKENIZE_BATCH_DOCUMENTS
    store_module.SHARD_BYTES, store_module.TOKENIZE_BATCH_DOCUMENTS = 100 * 23 * 2, 4  # many shards and tasks
    try:
        records[2] = main(*text_args(folder / "2", text_files, tiny_tokenizer_dir, "--num_workers", 2))
    finally:
        store_module.SHARD_BYTES, store_module.TOKENIZE_BATCH_DOCUMENTS = saved
    return folder, records


def test_text_files_store_with_a_local_tokenizer(text_stores, text_files, tiny_tokenizer_dir, tiny_tokenizer):
    folder, records = text_stores
    record = records[2]
    assert record["splits"][TEST]["documents"] == 9 and record["splits"][TRAIN]["documents"] == 27
    check_store_gives_back_documents(folder / "2", record, text_files[1], tiny_tokenizer)
    saved = (folder / "2" / STORE_TOKENIZER_DIR / "tokenizer.json").read_text()
    assert saved == (Path(tiny_tokenizer_dir) / "tokenizer.json").read_text()
    assert record["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tiny_tokenizer)
    assert record["tokenizer"]["from"] == str(tiny_tokenizer_dir)
    assert record["tokenizer"]["vocab_size"] == len(tiny_tokenizer)


def test_one_and_two_workers_give_the_same_blocks(text_stores):
    from datasets import load_from_disk

    folder, records = text_stores
    assert records[1]["splits"] == records[2]["splits"]  # counts and the fingerprints, a hash of the blocks
    shards = sorted(p.name for p in (folder / "2" / TRAIN).glob("*.arrow"))
    assert len(shards) > 2 and shards[0] == f"data-00000-of-{len(shards):05d}.arrow"
    for split in STORE_SPLITS:
        assert np.array_equal(store_rows(folder / "1", split), store_rows(folder / "2", split))
        state = json.loads((folder / "2" / split / "state.json").read_text())
        assert state["_fingerprint"] == records[2]["splits"][split]["fingerprint"] and state["_split"] == split
        assert len(load_from_disk(str(folder / "2"))[split]) == records[2]["splits"][split]["blocks"]
    assert (folder / "1" / TRAIN / "data-00000-of-00001.arrow").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2"]  # no work folders left behind


def test_another_seed_changes_the_split(tmp_path, text_stores, text_files, tiny_tokenizer_dir):
    folder, records = text_stores
    other = main(*text_args(tmp_path / "other", text_files, tiny_tokenizer_dir, "--dataset_split_seed", 7,
                            "--num_workers", 1))
    assert other["splits"][TEST]["documents"] == records[1]["splits"][TEST]["documents"]
    assert not np.array_equal(store_rows(tmp_path / "other", TEST), store_rows(folder / "1", TEST))


# ----------------------------------------------------------------------------------------------------------------
# Nothing of the user's is destroyed
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def old_store(tmp_path, demo_store):
    """A copy of the demo store, with files of the user's beside the store's own."""
    store = tmp_path / "store"
    shutil.copytree(demo_store[0], store)
    (store / "train.log").write_text("the user's log")
    (store / "notes").mkdir()
    (store / "notes" / "todo.txt").write_text("the user's notes")
    return store


def test_overwrite_replaces_a_store_and_carries_the_users_files(old_store, text_files, tiny_tokenizer_dir, capsys):
    record = main(*text_args(old_store, text_files, tiny_tokenizer_dir, "--overwrite", "--num_workers", 1))
    assert record_of(old_store)["source"] == "text_files" == record["source"]
    assert (old_store / "train.log").read_text() == "the user's log"
    assert (old_store / "notes" / "todo.txt").read_text() == "the user's notes"
    assert "kept your files in the store: notes, train.log" in capsys.readouterr().out
    assert siblings(old_store) == ["store"]  # no work folder, no old store left


def test_a_symlinked_store_is_replaced_where_it_lives(old_store, text_files, tiny_tokenizer_dir):
    link = old_store.parent / "link"
    link.symlink_to(old_store)
    main(*text_args(link, text_files, tiny_tokenizer_dir, "--overwrite", "--num_workers", 1))
    assert link.is_symlink() and record_of(old_store)["source"] == "text_files"
    assert (old_store / "train.log").read_text() == "the user's log" and siblings(old_store) == ["link", "store"]


def test_overwrite_never_replaces_what_is_not_a_store(tmp_path, monkeypatch, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "mytext.txt").write_text("A document of mine.\n\nAnother one.\n")
    before = listing(tmp_path)
    cases = [(corpus, ["--text_files", corpus / "mytext.txt"], "is or holds --text_files"),  # the probe's case
             (tmp_path / "notes", ["--dataset", "demo"], "did not write"),
             (tmp_path, ["--dataset", "demo"], "is or holds --text_files|did not write")]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_text("mine")
    before = listing(tmp_path)
    for store, source, message in cases:
        with pytest.raises(UsageError, match=message):
            main(*source, "--train_tokenizer", 300, "--path_to_data_store", store, "--overwrite")
    with pytest.raises(UsageError, match="is or holds --hf_model_name"):
        main("--dataset", "demo", "--hf_model_name", tiny_tokenizer_dir, "--path_to_data_store", tiny_tokenizer_dir,
             "--overwrite")
    monkeypatch.chdir(corpus)
    with pytest.raises(UsageError, match="current directory"):
        main("--dataset", "demo", "--train_tokenizer", 300, "--path_to_data_store", ".", "--overwrite")
    assert listing(tmp_path) == before


def test_without_overwrite_an_existing_store_is_kept(old_store):
    before = listing(old_store)
    with pytest.raises(UsageError, match="already holds a data store; pass --overwrite"):
        main("--dataset", "demo", "--train_tokenizer", 300, "--path_to_data_store", old_store)
    assert listing(old_store) == before


@pytest.mark.parametrize("shared", [False, True], ids=["another prepare", "a training run reading it"])
def test_a_store_in_use_is_refused_and_untouched(old_store, shared):
    before = listing(old_store)
    holder = hold_lock_in_another_process(old_store, shared)
    try:
        with pytest.raises(UsageError, match="in use by another run"):
            main(*DEMO_ARGS, "--path_to_data_store", old_store, "--overwrite")
    finally:
        holder.kill()
        holder.wait()
    assert listing(old_store) == before and siblings(old_store) == ["store"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_what_a_killed_run_left_is_cleaned_up(old_store, text_files, tiny_tokenizer_dir, capsys):
    pid = dead_pid()
    work = old_store.parent / f".store.tmp-{pid}-0123abcd"
    (work / "store" / TRAIN).mkdir(parents=True)
    old = old_store.parent / f".store.old-{pid}-4567abcd"  # killed between the swap and moving the user's files
    (old / TRAIN).mkdir(parents=True)
    (old / "mine.txt").write_text("the user's")
    alive = old_store.parent / f".store.tmp-{os.getppid()}-89abcdef"  # a live process's: not touched
    alive.mkdir()
    main(*text_args(old_store, text_files, tiny_tokenizer_dir, "--overwrite", "--num_workers", 1))
    out = capsys.readouterr().out
    assert f"removed .store.tmp-{pid}-0123abcd, left by a killed run (pid {pid})" in out
    assert "moved back mine.txt" in out and (old_store / "mine.txt").read_text() == "the user's"
    assert siblings(old_store) == [alive.name, "store"]


def test_a_store_lost_mid_swap_is_put_back(tmp_path, demo_store, text_files, tiny_tokenizer_dir, capsys):
    old = tmp_path / f".store.old-{dead_pid()}-4567abcd"  # killed between the two renames: no store at all
    shutil.copytree(demo_store[0], old)
    # the next run into the store puts it back, and then, like any store, replaces it only with --overwrite
    with pytest.raises(UsageError, match="already holds a data store; pass --overwrite"):
        main(*text_args(tmp_path / "store", text_files, tiny_tokenizer_dir))
    assert "moved back" in capsys.readouterr().out
    assert record_of(tmp_path / "store") == demo_store[1] and siblings(tmp_path / "store") == ["store"]


def test_a_failed_run_leaves_nothing_behind(tmp_path, tiny_tokenizer_dir):
    text = tmp_path / "short.txt"
    text.write_text("\n".join(f"line {i} of a short file" for i in range(40)))
    with pytest.raises(UsageError, match=r"the test split holds \d+ tokens, fewer than one block of 64 needs .*; use "
                                         r"--context_length \d+ or less or a larger --test_split_pct"):
        main("--text_files", text, "--hf_model_name", tiny_tokenizer_dir, "--context_length", 64, "--test_split_pct",
             0.05, "--num_workers", 1, "--path_to_data_store", tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]  # no store, no work folder


def test_non_utf8_text_is_named_with_its_byte_offset(tmp_path, monkeypatch):
    head = tmp_path / "latin1.txt"
    head.write_bytes("Café au lait.\n".encode() + "Crème brûlée\n".encode("latin-1"))
    with pytest.raises(UsageError, match=f"--text_files: {head} is not UTF-8 text \\(an invalid byte at offset 17\\)"):
        main("--text_files", head, "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "s")
    monkeypatch.setattr(corpora, "UTF8_CHECK_BYTES", 16)  # past the checked head: found while reading
    late = tmp_path / "late.txt"
    late.write_bytes(b"fine text\n" * 100 + b"\xff\n")
    with pytest.raises(UsageError, match="late.txt is not UTF-8 text \\(an invalid byte at offset 1,000\\)"):
        main("--text_files", late, "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.txt", "latin1.txt"]


def test_a_vocabulary_larger_than_the_corpus_allows_is_reported(tmp_path, capsys):
    text = tmp_path / "small.txt"
    text.write_text("\n".join(f"the cat sat on mat number {i % 7}" for i in range(200)))
    record = main("--text_files", text, "--train_tokenizer", 5000, "--context_length", 16, "--test_split_pct", 0.2,
                  "--num_workers", 1, "--path_to_data_store", tmp_path / "s")
    reached = record["tokenizer"]["vocab_size"]
    assert reached < 5000 and record["tokenizer"]["vocab_size_requested"] == 5000
    assert f"WARNING: --train_tokenizer 5,000: the train split only supports a vocabulary of {reached:,}" in \
        capsys.readouterr().out


def test_a_store_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UsageError, match="store cannot be made: .*a_file is a file"):
        main("--dataset", "demo", "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "a_file" / "store")


# ----------------------------------------------------------------------------------------------------------------
# --dataset_name: local folders for real, the Hub through stand-ins
# ----------------------------------------------------------------------------------------------------------------


def parquet_folder(folder: Path, documents: list[str], column: str = "body") -> Path:
    """A local dataset: two parquet files of rows {id, <column>}, with blank rows among them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rows = [text for document in documents for text in (document, "")]
    half = len(rows) // 2
    for i, part in enumerate([rows[:half], rows[half:]]):
        pq.write_table(pa.table({"id": list(range(len(part))), column: part}),
                       folder / f"train-{i:05d}-of-00002.parquet")
    return folder


def test_dataset_name_local_parquet_with_its_own_column(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    documents = [text.replace("\n", " ") for text in generate_documents(0, 60)[-40:]]
    folder = parquet_folder(tmp_path / "corpus", documents)
    record = main("--dataset_name", folder, "--text_column", "body", "--hf_model_name", tiny_tokenizer_dir,
                  "--context_length", 23, "--test_split_pct", 0.2, "--num_workers", 1,
                  "--huggingface_cache_dir", tmp_path / "cache", "--path_to_data_store", tmp_path / "store")
    assert record["splits"][TRAIN]["documents"] + record["splits"][TEST]["documents"] == 40  # blank rows dropped
    assert record["sources"] == [{"path": str(folder), "config": None, "split": "train", "column": "body",
                                  "group_rows": "none", "revision_requested": None, "revision": None,
                                  "download_bytes": record["sources"][0]["download_bytes"], "streamed": False}]
    check_store_gives_back_documents(tmp_path / "store", record, documents, tiny_tokenizer)
    assert (tmp_path / "cache" / "datasets").is_dir()  # the Arrow cache went where it was told


@pytest.fixture(scope="module")
def small_parquet(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("small_parquet")
    pq.write_table(pa.table({"body": ["a b c", "d e f"], "n": [1, 2]}), folder / "train.parquet")
    (folder / "empty").mkdir()
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), folder / "empty" / "train.parquet")
    (folder / "blank").mkdir()
    pq.write_table(pa.table({"text": ["", "  ", None]}), folder / "blank" / "train.parquet")
    return folder


DATASET_ERRORS = {
    "missing column": (["--text_column", "content"], "--text_column content: .* no such column; its columns are "
                                                     "body, n"),
    "a column of numbers": (["--text_column", "n"], "--text_column n holds int64, not text; text columns .*: body"),
    "unknown config": (["--text_column", "body", "--dataset_config_name", "nope"],
                       "--dataset_config_name nope: BuilderConfig 'nope' not found. Available: \\['default'\\]"),
    "unknown split": (["--text_column", "body", "--dataset_split", "validation"],
                      "--dataset_split validation: Bad split: validation. Available splits: \\['train'\\]"),
}


@pytest.mark.parametrize("case", list(DATASET_ERRORS))
def test_dataset_name_errors_are_one_line_before_any_work(case, small_parquet, tmp_path):
    args, message = DATASET_ERRORS[case]
    with pytest.raises(UsageError, match=message):
        main("--dataset_name", small_parquet / "train.parquet" if case.startswith(("missing", "a column")) else
             small_parquet, *args, "--train_tokenizer", 300, "--huggingface_cache_dir", tmp_path / "c",
             "--path_to_data_store", tmp_path / "store")
    for folder, message in [("empty", "split train has no rows"), ("blank", "0 non-empty document")]:
        with pytest.raises(UsageError, match=message):
            main("--dataset_name", small_parquet / folder, "--train_tokenizer", 300, "--huggingface_cache_dir",
                 tmp_path / "c", "--path_to_data_store", tmp_path / "store")
    assert not (tmp_path / "store").exists()


class FakeHub:
    """Stand-ins for the Hub: huggingface_hub.HfApi (pre-flight) and datasets.load_dataset (the data).

    `repos` maps (repo, revision asked) to (sha, {file: size}); `data` maps a repo to its rows. Every call is
    recorded, with the hub cache in force at the time of the call."""

    def __init__(self, monkeypatch, repos: dict, data: dict, models: dict | None = None):
        import datasets
        import huggingface_hub

        self.repos, self.data, self.models, self.calls, self.rows_read = repos, data, models or {}, [], 0
        monkeypatch.setattr(corpora, "hub_offline", lambda: False)
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: self)
        monkeypatch.setattr(datasets, "load_dataset", self.load_dataset)

    def dataset_info(self, repo, revision=None, files_metadata=False):
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        self.calls.append(("dataset_info", repo, revision))
        response = SimpleNamespace(status_code=404, headers={}, request=None)  # what the errors read of a response
        if repo not in {r for r, _ in self.repos}:
            raise RepositoryNotFoundError(f"404 Client Error: Repository Not Found for {repo}", response=response)
        if (repo, revision) not in self.repos:
            raise RevisionNotFoundError(f"404 Client Error: Revision Not Found for {revision}", response=response)
        sha, files = self.repos[repo, revision]
        return SimpleNamespace(sha=sha, siblings=[SimpleNamespace(rfilename=f, size=s) for f, s in files.items()])

    def model_info(self, repo):
        self.calls.append(("model_info", repo))
        return SimpleNamespace(sha=self.models[repo])

    def load_dataset(self, path, name=None, split=None, streaming=False, revision=None, cache_dir=None,
                     num_proc=None, **kwargs):
        from datasets import Dataset, IterableDataset
        from huggingface_hub import constants

        self.calls.append(("load_dataset", path, name, split, revision, streaming, cache_dir, constants.HF_HUB_CACHE))
        rows = self.data[path]
        if not streaming:
            return Dataset.from_dict(rows)

        def generate():
            for i in range(len(next(iter(rows.values())))):
                self.rows_read += 1
                yield {column: values[i] for column, values in rows.items()}

        return IterableDataset.from_generator(generate)

    def loads(self) -> list[tuple]:
        return [call for call in self.calls if call[0] == "load_dataset"]


WIKI_SHA, BOOKS_SHA = "a" * 40, "b" * 40


def wiki_books_hub(monkeypatch, articles, sentences, books_branch=True) -> FakeHub:
    repos = {("wikimedia/wikipedia", None): (WIKI_SHA, {"20231101.en/train-00000-of-00002.parquet": 6 * 10**9,
                                                        "20231101.en/train-00001-of-00002.parquet": 5 * 10**9,
                                                        "20231101.fr/train-00000-of-00001.parquet": 9 * 10**9,
                                                        "README.md": 10**4})}
    if books_branch:
        repos["bookcorpus/bookcorpus", "refs/convert/parquet"] = (BOOKS_SHA, {"plain_text/train/0000.parquet": 10**9})
    else:
        repos["bookcorpus/bookcorpus", None] = ("c" * 40, {"bookcorpus.py": 10**4})
    data = {"wikimedia/wikipedia": {"id": list(range(len(articles))), "title": ["t"] * len(articles),
                                    "text": articles},
            "bookcorpus/bookcorpus": {"text": sentences}}
    return FakeHub(monkeypatch, repos, data)


def test_wikipedia_bookcorpus_pins_every_revision_at_preflight(tmp_path, monkeypatch, tiny_tokenizer_dir,
                                                               tiny_tokenizer):
    """The default corpus's code, from the pre-flight to the store, with stand-ins for the Hub."""
    articles = generate_documents(seed=0, num_documents=430)[-30:]
    sentences = [f"sentence {i} ." for i in range(150)]
    hub = wiki_books_hub(monkeypatch, articles, sentences)
    monkeypatch.setattr(store_module, "TOKENIZE_BATCH_DOCUMENTS", 4)  # documents and blocks straddle the batches
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10**15))
    store = tmp_path / "store"
    record = main("--dataset", "wikipedia_bookcorpus", "--path_to_data_store", store, "--hf_model_name",
                  tiny_tokenizer_dir, "--context_length", 17, "--test_split_pct", 0.2, "--num_workers", 2)
    first_load = hub.calls.index(next(c for c in hub.calls if c[0] == "load_dataset"))
    assert hub.calls[:first_load] == [("dataset_info", "wikimedia/wikipedia", None),
                                      ("dataset_info", "bookcorpus/bookcorpus", "refs/convert/parquet")]
    full_loads = [(path, name, revision) for _, path, name, _, revision, streaming, *_ in hub.loads() if not streaming]
    assert full_loads == [("wikimedia/wikipedia", "20231101.en", WIKI_SHA), ("bookcorpus/bookcorpus", None, BOOKS_SHA)]
    assert [(s["repo"], s["config"], s["revision"], s["download_bytes"]) for s in record["sources"]] == [
        ("wikimedia/wikipedia", "20231101.en", WIKI_SHA, 11 * 10**9),  # the config's files only
        ("bookcorpus/bookcorpus", None, BOOKS_SHA, 10**9)]
    per_document = corpora.BOOKCORPUS_SENTENCES_PER_DOCUMENT
    books = [" ".join(sentences[start:start + per_document]) for start in range(0, 150, per_document)]
    assert record["source"] == "wikipedia_bookcorpus"
    check_store_gives_back_documents(store, record, articles + books, tiny_tokenizer)


def test_a_missing_bookcorpus_branch_stops_before_any_download(tmp_path, monkeypatch):
    hub = wiki_books_hub(monkeypatch, ["an article"], ["a sentence ."], books_branch=False)
    with pytest.raises(UsageError, match="BookCorpus's parquet export .* is not available .* --dataset wikipedia"):
        main("--dataset", "wikipedia_bookcorpus", "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "s")
    assert hub.loads() == [] and not (tmp_path / "s").exists()
    with pytest.raises(UsageError, match="dataset nobody/nothing does not exist on the Hub"):
        main("--dataset_name", "nobody/nothing", "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "s")
    with pytest.raises(UsageError, match="dataset wikimedia/wikipedia at revision v9: that revision does not exist"):
        main("--dataset_name", "wikimedia/wikipedia", "--dataset_revision", "v9", "--train_tokenizer", 300,
             "--path_to_data_store", tmp_path / "s")
    assert hub.loads() == []


def test_max_documents_streams_only_a_prefix(tmp_path, monkeypatch):
    articles = [f"article number {i} about things" for i in range(5000)]
    hub = wiki_books_hub(monkeypatch, articles, ["a sentence ."])
    record = main("--dataset", "wikipedia_bookcorpus", "--max_documents", 50, "--train_tokenizer", 300,
                  "--context_length", 16, "--test_split_pct", 0.1, "--num_workers", 1,
                  "--path_to_data_store", tmp_path / "s")
    assert all(streaming for *_, streaming, _, _ in [c[:6] + c[6:] for c in hub.loads()])
    assert {c[1] for c in hub.loads()} == {"wikimedia/wikipedia"}  # 50 articles: BookCorpus is not even opened
    assert hub.rows_read <= 50 + 1 + 1000  # what was asked, the peek, at most one batch read ahead
    assert record["splits"][TRAIN]["documents"] + record["splits"][TEST]["documents"] == 50
    assert record["sources"][0]["streamed"] is True


def test_the_cache_dir_takes_every_download(tmp_path, monkeypatch, tiny_tokenizer):
    from huggingface_hub import constants

    hub = FakeHub(monkeypatch, {("someone/corpus", None): ("d" * 40, {"data/train.parquet": 1000})},
                  {"someone/corpus": {"text": [f"document {i} of the corpus" for i in range(40)]}},
                  models={"someone/tokenizer": "e" * 40})
    tokenizer_calls = []

    def load_tokenizer(name, *, flag, cache_dir=None):
        tokenizer_calls.append((name, cache_dir, constants.HF_HUB_CACHE))
        return tiny_tokenizer

    monkeypatch.setattr(prepare_data, "load_tokenizer", load_tokenizer)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10**15))
    default_cache = constants.HF_HUB_CACHE
    cache = tmp_path / "hf"
    record = main("--dataset_name", "someone/corpus", "--hf_model_name", "someone/tokenizer", "--context_length", 12,
                  "--test_split_pct", 0.2, "--num_workers", 1, "--huggingface_cache_dir", cache,
                  "--path_to_data_store", tmp_path / "s")
    for _, _, _, _, revision, _, cache_dir, hub_cache in hub.loads():
        assert revision == "d" * 40 and cache_dir == str(cache / "datasets") and hub_cache == str(cache / "hub")
    assert tokenizer_calls == [("someone/tokenizer", str(cache / "hub"), str(cache / "hub"))]
    assert record["tokenizer"]["revision"] == "e" * 40
    assert constants.HF_HUB_CACHE == default_cache and "HF_HUB_CACHE" not in os.environ  # restored after the run


def test_the_disk_check_refuses_a_run_that_would_not_fit(tmp_path, monkeypatch, text_files):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(UsageError, match=f"not enough disk at {tmp_path}: 1.0 KB free, this run needs about .* there "
                                         "\\(documents \\(work folder\\) .*; store .*\\); .*--skip_disk_check"):
        main("--text_files", *text_files[0], "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    # Wikipedia + BookCorpus: the download, the Arrow cache and the store, each where it goes
    wiki_books_hub(monkeypatch, ["an article"], ["a sentence ."])
    with pytest.raises(UsageError, match="needs about .* \\(wikimedia/wikipedia download 11.0 GB; "
                                         "bookcorpus/bookcorpus download 1.0 GB; wikimedia/wikipedia Arrow cache .*; "
                                         "store .*\\)"):
        main("--dataset", "wikipedia_bookcorpus", "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "s",
             "--huggingface_cache_dir", tmp_path / "hf")


# ----------------------------------------------------------------------------------------------------------------
# The command line explains itself; bad input is one line
# ----------------------------------------------------------------------------------------------------------------


def test_help_gives_every_flag_its_default_and_the_whole_description():
    parser = prepare_data.build_parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.dest == "help":
            continue
        help_text = " ".join(parser._get_formatter()._expand_help(action).split())
        assert help_text in text, action.dest
        expected = "(required)" if action.required else f"(default: {action.default})"
        assert help_text.endswith(expected), (action.dest, help_text)
    for paragraph in ["whatever token", "FULL-SENTENCES", "DOC-SENTENCES", "Exit codes:", "docs/prepare_data.md"]:
        assert paragraph in text
    reference = (ROOT / "docs" / "prepare_data.md").read_text()  # what --help leaves to the reference page
    assert all(words in reference for words in ["## Packing", "## The store", "--huggingface_cache_dir DIR"])
    assert "not a percentage: 0.005 holds out 0.5%" in text and "~15 GB download" in text
    assert text.count("python prepare_data.py") >= 7  # the examples and the epilog's commands


BAD_INPUTS = {
    "no source": ([], "give a source: --dataset demo"),
    "missing text file": (["--text_files", "no/such/file.txt"], "is not a file"),
    "unknown dataset": (["--dataset", "wikipedia_2001"], "invalid choice"),
    "two sources": (["--dataset", "demo", "--dataset_name", "x/y"], "not both --dataset and --dataset_name"),
    "a dataset_name flag without it": (["--dataset", "demo", "--text_column", "body"], "applies to --dataset_name"),
    "context under 8": (["--dataset", "demo", "--train_tokenizer", 300, "--context_length", 7], "at least 8"),
    "context over the tokenizer's": (["--dataset", "demo", "--context_length", 65, "--hf_model_name", "{tok}"],
                                     "longer than the tokenizer"),
    "split fraction 0": (["--dataset", "demo", "--test_split_pct", 0], "between 0 and 1"),
    "split fraction 1.5": (["--dataset", "demo", "--test_split_pct", 1.5], "between 0 and 1"),
    "vocabulary too small": (["--dataset", "demo", "--train_tokenizer", 100], f"at least {BPE_MIN_VOCAB_SIZE}"),
    "unreachable hub id": (["--dataset", "demo", "--hf_model_name", "nobody-here/no-such-tokenizer"],
                           "not a reachable Hub id"),
    "missing local dataset": (["--dataset_name", "./no/such/folder"], "does not exist"),
    "bad group_rows": (["--dataset_name", "x/y", "--group_rows", "paragraphs"], "expected none, wikitext or a number"),
    "not a number": (["--dataset", "demo", "--context_length", "many"], "invalid int value"),
    "the cache inside the store": (["--dataset", "demo", "--train_tokenizer", 300, "--huggingface_cache_dir",
                                    "{store}/hf"], "inside --path_to_data_store"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_destroys_nothing(case, old_store, tiny_tokenizer_dir):
    args, message = BAD_INPUTS[case]
    before = listing(old_store)
    with pytest.raises(UsageError, match=message):
        main(*[str(a).replace("{tok}", str(tiny_tokenizer_dir)).replace("{store}", str(old_store)) for a in args],
             "--path_to_data_store", old_store, "--overwrite")  # even with --overwrite, a real store stays as it was
    assert listing(old_store) == before and siblings(old_store) == ["store"]


def test_bad_input_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = run_prepare("--text_files", tmp_path / "missing.txt", "--path_to_data_store", tmp_path / "s")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --text_files: {tmp_path / 'missing.txt'} is not a file"]
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------------------------------
# End to end through the command line, and interruptions (slow)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dataset_name_through_the_command_line(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    documents = [text.replace("\n", " ") for text in generate_documents(0, 50)[-30:]]
    folder = parquet_folder(tmp_path / "corpus", documents, column="content")
    result = run_prepare("--dataset_name", folder, "--text_column", "content", "--hf_model_name", tiny_tokenizer_dir,
                         "--context_length", 23, "--test_split_pct", 0.2, "--num_workers", 2,
                         "--huggingface_cache_dir", tmp_path / "cache", "--path_to_data_store", tmp_path / "store")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prepare_data: done:" in result.stdout and "tokens/s" in result.stdout
    record = record_of(tmp_path / "store")
    assert record["command"].startswith(f"python prepare_data.py --dataset_name {folder} --text_column content")
    check_store_gives_back_documents(tmp_path / "store", record, documents, tiny_tokenizer)


@pytest.mark.slow
def test_mixed_formats_in_a_folder_and_wikitext_without_headings_are_refused(tmp_path, tiny_tokenizer_dir):
    """datasets reads one format of a folder and drops the others; --group_rows wikitext on text without headings
    would make the whole corpus one document: both refused in one line, through the command line."""
    documents = [text.replace("\n", " ") for text in generate_documents(0, 30)[-20:]]
    folder = parquet_folder(tmp_path / "mixed", documents[:10])
    (folder / "more.csv").write_text("body\n" + "\n".join(f'"{d}"' for d in documents[10:]) + "\n")
    common = ["--text_column", "body", "--hf_model_name", tiny_tokenizer_dir, "--context_length", 23,
              "--num_workers", 1, "--huggingface_cache_dir", tmp_path / "cache"]
    result = run_prepare("--dataset_name", folder, *common, "--path_to_data_store", tmp_path / "store")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert f"--dataset_name {folder} holds data files of several formats (1 csv, 2 parquet)" in result.stderr
    (folder / "more.csv").unlink()
    with pytest.raises(UsageError, match="--group_rows wikitext: no headings found"):
        main("--dataset_name", folder, *common, "--group_rows", "wikitext", "--path_to_data_store",
             tmp_path / "store2")
    assert not (tmp_path / "store").exists() and not (tmp_path / "store2").exists()
    with pytest.raises(UsageError, match="no headings found"):
        list(corpora.group_rows(["just text .", "more text ."], "wikitext"))


def workers_of(pid: int) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def dead(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_slow_prepare(store: Path, tiny_tokenizer_dir: Path) -> subprocess.Popen:
    """A prepare whose tokenising tasks each take a second (a testing hook), stopped at its first progress line."""
    command = [sys.executable, str(ROOT / "prepare_data.py"), "--dataset", "demo", "--max_documents", "400",
               "--hf_model_name", str(tiny_tokenizer_dir), "--context_length", "29", "--num_workers", "2",
               "--path_to_data_store", str(store)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, fault_injection.SLOW_TOKENIZING_ENV: "1"})
    for line in process.stdout:
        if "tokenizing with 2 worker(s)" in line:
            break
    deadline = time.time() + 30
    while len(workers_of(process.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return process


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_an_interrupted_run_cleans_up_and_exits_with_one_line(tmp_path, tiny_tokenizer_dir, signum):
    process = start_slow_prepare(tmp_path / "store", tiny_tokenizer_dir)
    workers = workers_of(process.pid)
    assert len(workers) >= 2 and any(p.name.startswith(".store.tmp-") for p in tmp_path.iterdir())
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert stderr.strip().splitlines()[-1] == (f"prepare_data: interrupted ({signal.Signals(signum).name}): the work "
                                               "folder is removed and the store is as it was")
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no work folder; the store folder this run made is gone too
    assert all(dead(pid) for pid in workers)


@pytest.mark.slow
def test_a_second_prepare_into_the_same_store_is_refused_while_the_first_runs(tmp_path, tiny_tokenizer_dir):
    process = start_slow_prepare(tmp_path / "store", tiny_tokenizer_dir)
    try:
        result = run_prepare("--dataset", "demo", "--train_tokenizer", 300, "--path_to_data_store", tmp_path / "store",
                             "--overwrite")
        assert result.returncode == 2 and "is in use by another run (pid" in result.stderr
        assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".lock"]  # the first run's, untouched
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


@pytest.mark.slow
def test_a_killed_run_leaves_no_worker_and_the_next_run_cleans_its_folder(tmp_path, tiny_tokenizer_dir, text_files):
    process = start_slow_prepare(tmp_path / "store", tiny_tokenizer_dir)
    workers = workers_of(process.pid)
    process.kill()
    process.communicate(timeout=60)
    deadline = time.time() + 10
    while not all(dead(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert all(dead(pid) for pid in workers)  # the workers die with their parent
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".store.tmp-")]
    assert len(left) == 1
    result = run_prepare(*text_args(tmp_path / "store", text_files, tiny_tokenizer_dir, "--num_workers", 1))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"removed {left[0]}, left by a killed run" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
