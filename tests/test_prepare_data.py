"""prepare_data.py: packing, splitting, sources, the store, same store for any --num_workers, and bad input.

The end-to-end tests run the script through its real command line at tiny sizes and check the store against the
documents independently: decoding every block's content in order and splitting on </s> must give back each
document exactly once, in order, except what the final remainder of each split dropped.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import prepare_data
from demo_world import generate_documents
from prepare_data import BlockPacker, join_documents, pack_documents, read_text_file_documents, split_documents

ROOT = Path(__file__).resolve().parent.parent
BOS, SEP = 0, 2  # <s>, </s>


def run_prepare(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "prepare_data.py"), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def run_ok(*args) -> dict:
    result = run_prepare(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prepare_data: done:" in result.stdout and "tokens/s" in result.stdout
    store = Path(args[list(args).index("--path_to_data_store") + 1])
    return json.loads((store / "prepare_data.json").read_text())


def store_rows(store: Path, split: str) -> np.ndarray:
    from datasets import load_from_disk

    return load_from_disk(str(store))[split].with_format("numpy")[:]["input_ids"]


# ----------------------------------------------------------------------------------------------------------------
# Packing and splitting, in process
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


def test_split_documents_follows_the_fraction_and_the_seed():
    from datasets import Dataset

    documents = Dataset.from_dict({"text": [f"document {i}" for i in range(203)]})
    splits = split_documents(documents, test_fraction=0.1, seed=5)
    train, test = list(splits["train"]["text"]), list(splits["test"]["text"])
    assert len(test) == 20 and len(train) == 183 and sorted(train + test) == sorted(documents["text"])
    assert train == sorted(train, key=lambda t: int(t.split()[1]))  # both keep the source's order
    assert list(split_documents(documents, 0.1, seed=5)["test"]["text"]) == test
    assert list(split_documents(documents, 0.1, seed=6)["test"]["text"]) != test


def test_text_file_documents(tmp_path):
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("  First line\nstill first.\n\n\n Second é.\n   \nThird\n")
    lines = tmp_path / "lines.txt"
    lines.write_text("one\n two two \nthree")
    assert list(read_text_file_documents(paragraphs)) == ["First line\nstill first.", "Second é.", "Third"]
    assert list(read_text_file_documents(lines)) == ["one", "two two", "three"]


def test_bookcorpus_sentences_are_grouped_into_documents():
    from datasets import Dataset

    sentences = Dataset.from_dict({"text": [f"sentence {i} ." for i in range(10)]})
    grouped = list(prepare_data.group_sentences(sentences, per_document=4)["text"])
    assert grouped == ["sentence 0 . sentence 1 . sentence 2 . sentence 3 .",
                       "sentence 4 . sentence 5 . sentence 6 . sentence 7 .", "sentence 8 . sentence 9 ."]


def test_special_token_text_inside_a_document_is_not_a_separator(tiny_tokenizer):
    (ids,) = prepare_data.encode_texts(["a </s> b <s> c"], tiny_tokenizer)
    assert SEP not in ids and BOS not in ids
    assert tiny_tokenizer.decode(ids) == "a </s> b <s> c"


def test_num_workers_is_capped_at_the_cpus():
    assert 1 <= prepare_data.resolve_num_workers(10**6) <= (os.cpu_count() or 1)
    assert prepare_data.resolve_num_workers(1) == 1


# ----------------------------------------------------------------------------------------------------------------
# End to end through the command line
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
    for split in ["train", "test"]:
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
    assert not set(decoded["train"]) & set(decoded["test"])
    # no token lost but the remainders, none duplicated: every document's tokens plus one separator between
    # consecutive documents of a split fill the blocks exactly, up to the dropped remainders
    tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in documents)
    in_blocks = sum(s["blocks"] for s in record["splits"].values()) * (context_length - 2)
    assert tokens + len(documents) - 2 == in_blocks + record["dropped_tokens"]
    return decoded


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("demo") / "store"
    record = run_ok("--dataset", "demo", "--max_documents", 300, "--train_tokenizer", 400, "--context_length", 29,
                    "--test_split_pct", 0.1, "--num_workers", 2, "--path_to_data_store", store)
    return store, record


def test_demo_store_layout_and_record(demo_store):
    from datasets import load_from_disk

    store, record = demo_store
    splits = load_from_disk(str(store))
    assert set(splits) == {"train", "test"} and splits["train"].column_names == ["input_ids"]
    assert str(splits["train"].features["input_ids"].feature.dtype) == "uint16"  # vocabulary 400 fits
    assert record["splits"]["test"]["documents"] == 30 and record["splits"]["train"]["documents"] == 270
    assert record["arguments"]["context_length"] == 29 and record["arguments"]["dataset_split_seed"] == 42
    assert {"torch", "transformers", "datasets", "tokenizers"} <= set(record["library_versions"])
    assert record["tokens_per_second"] > 0 and record["tokenizer"]["vocab_size"] == 400


def test_demo_store_decodes_back_to_the_documents(demo_store):
    from transformers import AutoTokenizer

    store, record = demo_store
    tokenizer = AutoTokenizer.from_pretrained(store / "tokenizer")
    decoded = check_store_gives_back_documents(store, record, generate_documents(0, 300), tokenizer)
    assert len(decoded["test"]) >= 28


def test_trained_tokenizer_round_trips_text(demo_store):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_store[0] / "tokenizer")
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


def text_args(store, text_files, tokenizer_dir, *extra) -> list[str]:
    return [str(a) for a in ["--text_files", *text_files[0], "--hf_model_name", tokenizer_dir, "--context_length", 23,
                             "--test_split_pct", 0.25, "--path_to_data_store", store, *extra]]


@pytest.fixture(scope="module")
def text_stores(tmp_path_factory, text_files, tiny_tokenizer_dir):
    """The same text files prepared with one and with two workers (the two runs side by side, to save time)."""
    folder = tmp_path_factory.mktemp("text_stores")
    runs = {workers: subprocess.Popen([sys.executable, str(ROOT / "prepare_data.py"), *text_args(
        folder / str(workers), text_files, tiny_tokenizer_dir, "--num_workers", workers)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for workers in [1, 2]}
    records = {}
    for workers, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
        records[workers] = json.loads((folder / str(workers) / "prepare_data.json").read_text())
    return folder, records


def test_text_files_store_with_a_local_tokenizer(text_stores, text_files, tiny_tokenizer_dir, tiny_tokenizer):
    folder, records = text_stores
    record = records[2]
    assert record["splits"]["test"]["documents"] == 9 and record["splits"]["train"]["documents"] == 27
    check_store_gives_back_documents(folder / "2", record, text_files[1], tiny_tokenizer)
    saved = (folder / "2" / "tokenizer" / "tokenizer.json").read_text()
    assert saved == (Path(tiny_tokenizer_dir) / "tokenizer.json").read_text()


def test_one_and_two_workers_give_the_same_store(text_stores):
    folder, records = text_stores
    files = sorted(p.relative_to(folder / "1") for p in (folder / "1").rglob("*") if p.is_file())
    assert Path("train/data-00000-of-00001.arrow") in files and Path("tokenizer/tokenizer.json") in files
    for name in files:
        if name != Path("prepare_data.json"):  # it records the arguments and timings
            assert (folder / "1" / name).read_bytes() == (folder / "2" / name).read_bytes(), name
    assert records[1]["splits"] == records[2]["splits"]
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2"]  # no work folders left behind


def test_another_seed_changes_the_split_and_overwrite_replaces(tmp_path, text_stores, text_files, tiny_tokenizer_dir):
    folder, records = text_stores
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "old.txt").write_text("old")
    # in process, to save an interpreter start; the command line is what the other tests run
    other = prepare_data.main(text_args(tmp_path / "other", text_files, tiny_tokenizer_dir, "--dataset_split_seed", 7,
                                        "--overwrite", "--num_workers", 1))
    assert not (tmp_path / "other" / "old.txt").exists()
    assert other["splits"]["test"]["documents"] == records[1]["splits"]["test"]["documents"]
    assert not np.array_equal(store_rows(tmp_path / "other", "test"), store_rows(folder / "1", "test"))
    assert [p.name for p in tmp_path.iterdir()] == ["other"]


def test_wikipedia_bookcorpus_path_with_a_stand_in_for_the_hub(tmp_path, monkeypatch, tiny_tokenizer_dir,
                                                                tiny_tokenizer):
    """The default source's code, from what load_dataset returns to the store (the download itself needs the Hub)."""
    from datasets import Dataset

    articles = generate_documents(seed=0, num_documents=430)[-30:]
    hub = {"wikimedia/wikipedia": Dataset.from_dict({"id": list(range(30)), "title": ["t"] * 30, "text": articles}),
           "bookcorpus/bookcorpus": Dataset.from_dict({"text": [f"sentence {i} ." for i in range(150)]})}
    calls = []

    def stand_in(repo, config=None, revision=None, cache_dir=None, num_workers=1):
        calls.append((repo, config, revision))
        return hub[repo].select_columns(["text"])

    monkeypatch.setattr(prepare_data, "load_hub_dataset", stand_in)
    # small batches, so that documents and blocks straddle the reads: the carried tail must join them seamlessly
    monkeypatch.setattr(prepare_data, "TOKENIZE_BATCH_DOCUMENTS", 4)
    monkeypatch.setattr(prepare_data, "PACK_READ_DOCUMENTS", 3)
    store = tmp_path / "store"
    record = prepare_data.main(["--path_to_data_store", str(store), "--hf_model_name", str(tiny_tokenizer_dir),
                                "--context_length", "17", "--test_split_pct", "0.2", "--num_workers", "1"])
    assert calls == [("wikimedia/wikipedia", "20231101.en", None),
                     ("bookcorpus/bookcorpus", None, "refs/convert/parquet")]
    per_document = prepare_data.BOOKCORPUS_SENTENCES_PER_DOCUMENT
    books = [" ".join(f"sentence {i} ." for i in range(start, min(start + per_document, 150)))
             for start in range(0, 150, per_document)]
    assert record["source"] == "wikipedia_bookcorpus"
    check_store_gives_back_documents(store, record, articles + books, tiny_tokenizer)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing destroyed
# ----------------------------------------------------------------------------------------------------------------

BAD_INPUTS = {
    "missing text file": (["--text_files", "no/such/file.txt"], "is not a file"),
    "unknown dataset": (["--dataset", "wikipedia_2001"], "invalid choice"),
    "context under 8": (["--dataset", "demo", "--train_tokenizer", 300, "--context_length", 7], "at least 8"),
    "context over the tokenizer's": (["--dataset", "demo", "--context_length", 65, "--hf_model_name", "{tok}"],
                                     "longer than the tokenizer"),
    "split fraction 0": (["--dataset", "demo", "--test_split_pct", 0], "between 0 and 1"),
    "split fraction 1.5": (["--dataset", "demo", "--test_split_pct", 1.5], "between 0 and 1"),
    "unreachable hub id": (["--dataset", "demo", "--hf_model_name", "nobody-here/no-such-tokenizer"],
                           "neither a local tokenizer folder nor a reachable Hub id"),
    "dataset and text files": (["--dataset", "demo", "--text_files", "{tok}/tokenizer.json"], "not both"),
    "not a number": (["--context_length", "many"], "invalid int value"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_destroys_nothing(case, tmp_path, tiny_tokenizer_dir):
    args, message = BAD_INPUTS[case]
    store = tmp_path / "store"
    store.mkdir()
    (store / "precious.txt").write_text("keep me")
    args = [str(a).replace("{tok}", str(tiny_tokenizer_dir)) for a in args]
    result = run_prepare(*args, "--path_to_data_store", store, "--overwrite")  # even with --overwrite
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["store"] and (store / "precious.txt").read_text() == "keep me"


def test_a_split_too_small_for_one_block_writes_no_store(tmp_path, tiny_tokenizer_dir):
    text = tmp_path / "short.txt"
    text.write_text("\n".join(f"line {i} of a short file" for i in range(40)))
    store = tmp_path / "store"
    store.mkdir()
    (store / "precious.txt").write_text("keep me")
    with pytest.raises(prepare_data.UsageError, match="the test split holds .* fewer than one block of 64"):
        prepare_data.main(["--text_files", str(text), "--hf_model_name", str(tiny_tokenizer_dir), "--context_length",
                           "64", "--test_split_pct", "0.05", "--num_workers", "1", "--path_to_data_store", str(store),
                           "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt", "store"]  # no work folder left behind
    assert [p.name for p in store.iterdir()] == ["precious.txt"]


def test_non_empty_store_without_overwrite_is_refused(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "precious.txt").write_text("keep me")
    result = run_prepare("--dataset", "demo", "--train_tokenizer", 300, "--path_to_data_store", store)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --path_to_data_store {str(store)!r} is not empty; pass --overwrite to replace it"]
    assert [p.name for p in store.iterdir()] == ["precious.txt"]
