"""finetune_roberta_classification.py and classify.py: a tiny "published" backbone made by transformers itself (as
roberta-base would be), labelled files generated here; end-to-end runs marked slow, bad input in-process (one run
checks the real command line)."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import classification_run_folder
import classify
import finetune_roberta_classification as finetune
from classification_run_folder import CLASSIFICATION_RUN
from utils import UsageError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "finetune_roberta_classification.py")
WORDS = "the a of on in river city king queen born died lived wrote painted built north south".split()
TINY = ["--max_seq_length", "40", "--per_device_batch_size", "4", "--logging_steps", "4", "--learning_rate", "2e-3",
        "--warmup_steps", "0.1", "--save_steps", "0", "--seed", "3"]


def _pairs(n: int, seed: int) -> list[dict]:
    """Sentence pairs whose label says whether the second sentence names the queen (the tiny model needs ~150 steps
    to learn it; the tests take fewer: they check the plumbing and the parity of every number, not the learning)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["absent", "present"][i % 2]
        second = [rng.choice(WORDS[:7] + WORDS[9:]) for _ in range(rng.randint(3, 7))]
        for _ in range(3 if label == "present" else 0):
            second.insert(rng.randrange(len(second) + 1), "queen")
        rows.append({"sentence1": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))),
                     "sentence2": " ".join(second), "label": label})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    train = _pairs(48, 0)
    train[5]["sentence1"] = " ".join(["river"] * 60)  # longer than --max_seq_length: truncated, and said so
    return _write_jsonl(folder / "train.jsonl", train), _write_jsonl(folder / "dev.jsonl", _pairs(13, 1))


@pytest.fixture(scope="module")
def published(tiny_tokenizer, tmp_path_factory):
    """A "published" backbone: transformers' own RobertaForMaskedLM saved with a tokenizer, as on the Hub."""
    import torch
    import transformers

    config = transformers.RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=2,
                                        num_attention_heads=3, intermediate_size=72, max_position_embeddings=66,
                                        layer_norm_eps=1e-5, type_vocab_size=1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hub") / "roberta-tiny"
    transformers.RobertaForMaskedLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600)


def _published_args(published, pair_files, working_directory, name, *extra):
    train, dev = pair_files
    return ["--huggingface_model_name", str(published), "--train_file", str(train), "--validation_file", str(dev),
            "--working_directory", str(working_directory), "--experiment_name", name, "--num_train_epochs", "2",
            "--max_train_samples", "40", *TINY, *extra]


@pytest.fixture(scope="module")
def ours_run(published, pair_files, tmp_path_factory):
    """Fine-tuned through the real command line, with this repository's model (the default)."""
    runs = tmp_path_factory.mktemp("runs")
    result = _run(*_published_args(published, pair_files, runs, "ours"))
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "ours", result


@pytest.mark.slow
def test_a_run_writes_scores_predictions_and_a_model_that_transformers_pipeline_reads(ours_run, pair_files):
    run_dir, result = ours_run
    scores = json.loads((run_dir / "eval_results.json").read_text())
    made = {p.name for p in run_dir.iterdir()}
    assert made <= set(CLASSIFICATION_RUN.made), made - set(CLASSIFICATION_RUN.made)  # --overwrite knows them all
    assert scores["labels"] == ["absent", "present"] and scores["eval_examples"] == 13
    assert [e["epoch"] for e in scores["history"]] == [1.0, 2.0]  # evaluated after every epoch (the recipe)
    assert scores["best"]["eval_accuracy"] == max(e["eval_accuracy"] for e in scores["history"])
    assert f"accuracy {100 * scores['eval_accuracy']:.2f}" in result.stdout.strip().splitlines()[-1]
    assert "note: 1 of 40 train inputs are longer than --max_seq_length 40 tokens and are truncated" in result.stdout
    assert scores["train_examples"] == 40  # --max_train_samples: a subset of every column (only the labels were cut)
    args = json.loads((run_dir / "classification_args.json").read_text())
    assert args["learning_rate"] == 2e-3 and args["per_device_batch_size"] == 4 and "versions" in args
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    dev = [json.loads(line) for line in pair_files[1].read_text().splitlines()]
    assert [p["sentence2"] for p in predictions] == [d["sentence2"] for d in dev]
    assert sum(p["prediction"] == p["label"] for p in predictions) / 13 == pytest.approx(scores["eval_accuracy"])
    # transformers' own pipeline reads the folder as it is, and agrees with the predictions written beside it
    from transformers import pipeline

    labeller = pipeline("text-classification", model=str(run_dir), device=-1)
    for row, written in list(zip(dev, predictions, strict=True))[:4]:
        out = labeller({"text": row["sentence1"], "text_pair": row["sentence2"]})
        assert out["label"] == written["prediction"] and out["score"] == pytest.approx(written["probability"],
                                                                                       abs=1e-4)


@pytest.mark.slow
def test_transformers_model_through_the_same_script_gives_the_same_metrics(ours_run, published, pair_files,
                                                                           tmp_path):
    """Parity: transformers' RobertaForSequenceClassification fine-tuned on the same data with the same seed (dropout
    on) reaches the same predictions and metrics; losses agree to float rounding."""
    finetune.main(_published_args(published, pair_files, tmp_path, "theirs", "--implementation", "transformers"))
    ours = json.loads((ours_run[0] / "eval_results.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "eval_results.json").read_text())
    for key in ("eval_accuracy", "eval_macro_f1"):
        assert ours[key] == theirs[key], key
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-5)
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
    lines = [[json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
             for run in (ours_run[0], tmp_path / "theirs")]
    for a, b in zip(*lines, strict=True):
        assert a["prediction"] == b["prediction"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


@pytest.mark.slow
def test_classify_labels_a_file_and_scores_it_against_its_labels(ours_run, pair_files, tmp_path, capsys):
    run_dir, _ = ours_run
    output = tmp_path / "labels.jsonl"
    classify.main(["--model", str(run_dir), "--input_file", str(pair_files[1]), "--output", str(output)])
    out, err = capsys.readouterr()
    assert "labelling the text of column 'sentence1' paired with 'sentence2', scored against 'label'" in err
    assert "warning" not in err  # pairs from a file, to a model of pairs: nothing to warn about
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    written = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [w["prediction"] for w in written]  # the run's own max_seq_length and columns
    scores = json.loads((run_dir / "eval_results.json").read_text())
    assert f"accuracy {scores['eval_accuracy']:.4f}" in out
    first = json.loads(pair_files[1].read_text().splitlines()[0])
    classify.main(["--model", str(run_dir), "--text", first["sentence1"], "--text_pair", first["sentence2"], "--json"])
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["label"] == rows[0]["label"] and set(json.loads(line)["scores"]) == {"absent", "present"}
    classify.main(["--model", str(run_dir), "--text", first["sentence1"]])  # one text to a model of pairs
    assert f"warning: {run_dir} was fine-tuned on pairs of texts" in capsys.readouterr().err


@pytest.mark.slow
def test_a_regression_target_from_a_csv_file(published, tmp_path):
    """Float labels make a regression model: one output, MSE, scored with Pearson and Spearman."""
    rows = _pairs(30, 2)
    for row in rows:
        row["label"] = round(len(row["sentence2"].split()) / 2 + (row["sentence2"].count("queen") * 1.5), 2)
    lines = ["sentence1,sentence2,label"] + [f"{r['sentence1']},{r['sentence2']},{r['label']}" for r in rows]
    (tmp_path / "train.csv").write_text("\n".join(lines[:25]) + "\n")
    (tmp_path / "dev.csv").write_text("\n".join(lines[:1] + lines[25:]) + "\n")
    finetune.main(["--huggingface_model_name", str(published), "--train_file", str(tmp_path / "train.csv"),
                   "--validation_file", str(tmp_path / "dev.csv"), "--working_directory", str(tmp_path),
                   "--experiment_name", "sts", "--num_train_epochs", "1", "--eval_steps", "0", *TINY])
    scores = json.loads((tmp_path / "sts" / "eval_results.json").read_text())
    assert scores["problem_type"] == "regression" and scores["labels"] is None
    assert {"eval_pearson", "eval_spearmanr", "eval_mse"} <= set(scores)
    config = json.loads((tmp_path / "sts" / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "label"}
    predictions = [json.loads(line) for line in (tmp_path / "sts" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all(isinstance(p["prediction"], float) for p in predictions)


# ---- GLUE through a stand-in Hub ---------------------------------------------------------------------------------


def _stand_in_glue(tmp_path, monkeypatch, task: str, splits: dict[str, list[dict]]):
    """huggingface_hub.snapshot_download replaced by one that "downloads" nyu-mll/glue's layout (one folder of
    parquet files per task) from a local folder into the cache folder it is given, under the revision's name."""
    import huggingface_hub
    from datasets import Dataset

    calls = []

    def snapshot_download(repo_id, repo_type=None, revision=None, allow_patterns=None, cache_dir=None, **kwargs):
        calls.append({"repo": repo_id, "type": repo_type, "revision": revision, "patterns": allow_patterns,
                      "cache_dir": cache_dir})
        folder = Path(cache_dir) / "datasets--nyu-mll--glue" / "snapshots" / revision
        for split, rows in splits.items():
            (folder / task).mkdir(parents=True, exist_ok=True)
            Dataset.from_list(rows).to_parquet(folder / task / f"{split}-00000-of-00001.parquet")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.mark.slow
def test_mnli_from_the_pinned_hub_revision_is_scored_on_matched_and_mismatched(published, tmp_path, monkeypatch):
    rows = [{"premise": r["sentence1"], "hypothesis": r["sentence2"], "label": i % 3, "idx": i}
            for i, r in enumerate(_pairs(30, 3))]
    calls = _stand_in_glue(tmp_path, monkeypatch, "mnli", {"train": rows[:18], "validation_matched": rows[18:24],
                                                           "validation_mismatched": rows[24:]})
    finetune.main(["--task_name", "MNLI", "--huggingface_model_name", str(published), "--path_to_cache_dir",
                   str(tmp_path / "cache"), "--working_directory", str(tmp_path), "--experiment_name", "mnli",
                   "--num_train_epochs", "1", *TINY])
    [call] = calls
    assert call["repo"] == "nyu-mll/glue" and call["type"] == "dataset" and call["patterns"] == ["mnli/*"]
    assert call["revision"] == finetune.cls.GLUE_REVISION and call["cache_dir"] == str(tmp_path / "cache")
    scores = json.loads((tmp_path / "mnli" / "eval_results.json").read_text())
    assert scores["labels"] == ["entailment", "neutral", "contradiction"]
    assert {"eval_accuracy", "eval_accuracy_mm", "eval_loss_mm"} <= set(scores)
    assert scores["data"]["revision"] == finetune.cls.GLUE_REVISION
    assert scores["published_dev"] == {"roberta-base": "87.6", "roberta-large": "90.2/90.2"}
    predictions = [json.loads(line) for line in (tmp_path / "mnli" / "predictions.jsonl").read_text().splitlines()]
    assert [p["split"] for p in predictions] == ["validation_matched"] * 6 + ["validation_mismatched"] * 6
    assert {p["label"] for p in predictions} <= {"entailment", "neutral", "contradiction"}
    args = json.loads((tmp_path / "mnli" / "classification_args.json").read_text())
    assert args["learning_rate"] == 2e-3  # the flag over fairseq's MNLI 1e-5
    recipe = finetune.parse_args(["--task_name", "mnli"])
    finetune.check_data_source(recipe)
    finetune.resolve_recipe(recipe)
    assert (recipe.learning_rate, recipe.per_device_batch_size) == (1e-5, 32)  # fairseq's MNLI command


def test_a_glue_task_offline_and_not_in_the_cache_is_one_line(published, tmp_path):
    with pytest.raises(UsageError) as error:
        finetune.main(["--task_name", "rte", "--huggingface_model_name", str(published), "--path_to_cache_dir",
                       str(tmp_path / "cache"), "--working_directory", str(tmp_path / "runs")])
    message = str(error.value)
    assert message.startswith("--task_name rte: could not get nyu-mll/glue at bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c")
    assert "the Hub is offline (HF_HUB_OFFLINE is set)" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()


# ---- bad input: one line, exit code 2, nothing written --------------------------------------------------------------


def _bad_inputs(tmp_path, published, pair_files):
    train, dev = pair_files
    rows = [json.loads(line) for line in train.read_text().splitlines()]

    def data(name, transform):
        return _write_jsonl(tmp_path / name, [transform(dict(r)) for r in rows])

    no_label = data("no_label.jsonl", lambda r: {"text": r["sentence1"], "target": r["label"]})
    unseen = data("unseen.jsonl", lambda r: {**r, "label": "neutral" if r["label"] == "absent" else r["label"]})
    floats = data("floats.jsonl", lambda r: {**r, "label": 0.5 if r["label"] == "absent" else 2.25})
    texts = data("texts.jsonl", lambda r: {**r})
    (tmp_path / "broken.jsonl").write_text('{"sentence": "a", "label": 1}\n{"sentence": \n')
    (tmp_path / "header_only.csv").write_text("sentence1,sentence2,label\n\n")
    (tmp_path / "commas.csv").write_text("sentence,label\nthe king,absent\nthe queen, north, south,present\n")
    no_second = _write_jsonl(tmp_path / "no_second.jsonl", [r if i != 7 else {**r, "sentence2": None}
                                                             for i, r in enumerate(rows)])
    lists = data("lists.jsonl", lambda r: {**r, "label": [r["label"]]})
    numbers_as_text = data("numbers_as_text.jsonl", lambda r: {**r, "label": str(len(r["sentence2"]) / 4)})
    other = tmp_path / "other_tokenizer"
    shutil.copytree(published, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": 50265}))
    files = ["--train_file", train, "--validation_file", dev]
    backbone = ["--huggingface_model_name", published]
    dev_rows = [json.loads(line) for line in dev.read_text().splitlines()]
    unlabelled = _write_jsonl(tmp_path / "unlabelled.jsonl", [{**r, "label": None} if i == 2 else r
                                                             for i, r in enumerate(dev_rows)])
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / classification_run_folder.RUN_RECORD).write_text("{}")
    return {
        "no label column": ([*backbone, "--train_file", no_label, "--validation_file", dev],
                            "has no label column 'label' (its columns: text, target); name it with --label_column"),
        "validation labels training never saw": ([*backbone, "--train_file", train, "--validation_file", unseen],
                                                 "rows have labels the training data never has ('neutral')"),
        "regression target for a classification task": ([*backbone, "--task_name", "rte", "--train_file", floats,
                                                          "--validation_file", floats],
                                                         "is a number with a fraction, a regression target"),
        "class labels for a regression task": ([*backbone, "--task_name", "stsb", "--train_file", texts,
                                                "--validation_file", texts], "is not a number, but the task is a "
                                                                             "regression"),
        "problem type against the task": ([*backbone, "--task_name", "stsb", "--problem_type", "classification"],
                                          "but STS-B is a regression task"),
        "regression flag on class labels": ([*backbone, *files, "--problem_type", "regression"],
                                            "label 'absent' is not a number"),
        "another tokenizer's backbone": (["--huggingface_model_name", other, *files],
                                         "it is not the tokenizer the model was trained with"),
        "empty split": ([*backbone, "--train_file", train, "--validation_file", tmp_path / "header_only.csv"],
                        "header_only.csv is empty: there is nothing to score"),
        "unreadable file": ([*backbone, "--train_file", tmp_path / "broken.jsonl", "--validation_file", dev],
                            "broken.jsonl could not be read as json"),
        "no text column": ([*backbone, "--train_file", no_label, "--validation_file", no_label, "--label_column",
                            "target"], "has no text column sentence or sentence1 (its columns: text, target)"),
        "unknown task": ([*backbone, "--task_name", "squad"], "--task_name squad is not a GLUE task"),
        "no data": (backbone, "no data: give --task_name"),
        "one file only": ([*backbone, "--train_file", train], "--validation_file is missing"),
        "not a data file": ([*backbone, "--train_file", tmp_path / "x.txt", "--validation_file", dev],
                            "x.txt does not exist"),
        "sequence longer than the model": ([*backbone, *files, "--max_seq_length", "100"],
                                           "--max_seq_length 100 is longer than"),
        "a sequence too short for text": ([*backbone, *files, "--max_seq_length", "7"],
                                          "--max_seq_length 7 leaves no room for text (at least 8 tokens)"),
        "a row without its second text": ([*backbone, "--train_file", no_second, "--validation_file", dev],
                                          "no_second.jsonl: row 8 has no text in column 'sentence2'"),
        "labels that are lists": ([*backbone, "--train_file", lists, "--validation_file", dev],
                                  "row 1 has the label ['absent'], a list; each row needs one label"),
        "labels that are text reading as fractions": ([*backbone, "--train_file", numbers_as_text, "--validation_file",
                                                       dev], "the labels are text that reads as numbers"),
        "a malformed CSV file": ([*backbone, "--train_file", tmp_path / "commas.csv", "--validation_file", dev],
                                 "commas.csv could not be read as csv (ParserError: Error tokenizing data"),
        "a seed numpy refuses": ([*backbone, *files, "--seed", "-1"], "--seed must be between 0 and 2**32 - 1"),
        "an infinite learning rate": ([*backbone, *files, "--learning_rate", "inf"],
                                      "--learning_rate must be a positive number, got inf"),
        "a mistyped backbone folder": (["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone",
                                        "runs/nothere", *files], "there is no folder"),
        "random with the default Hub backbone, offline": (["--pretrained_backbone", "random", *files],
                                                          "HF_HUB_OFFLINE=1 is set and the Hub cache holds no copy"),
        "the label column as the text": ([*backbone, *files, "--text_column", "label"],
                                         "column 'label' would be both the text (--text_column) and the label"),
        "an unfinished run as the backbone": (["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone",
                                               tmp_path / "unfinished", *files],
                                              "classification.py run folder that holds no model yet: its run has not"),
        "a mistyped dataset folder": ([*backbone, "--dataset_name", "my_data/pairs"],
                                      "(there is no folder "),
        "validation rows without a label": ([*backbone, "--train_file", train, "--validation_file", unlabelled],
                                            "unlabelled.jsonl: 1 rows have no label (the first is row 3)"),
        "one column for both texts": ([*backbone, *files, "--text_pair_column", "sentence1"],
                                      "column 'sentence1' would be both texts of a pair"),
        "a GLUE label out of the task's range": ([*backbone, "--task_name", "mrpc", "--train_file", numbers_as_text,
                                                  "--validation_file", numbers_as_text],
                                                 "rows have labels GLUE MRPC never has ("),
    }


BAD_CASES = ["no label column", "validation labels training never saw", "regression target for a classification task",
             "class labels for a regression task", "problem type against the task", "regression flag on class labels",
             "another tokenizer's backbone", "empty split", "unreadable file", "no text column", "unknown task",
             "no data", "one file only", "not a data file", "sequence longer than the model",
             "a sequence too short for text", "a row without its second text", "labels that are lists",
             "labels that are text reading as fractions",
             "a malformed CSV file", "a seed numpy refuses", "an infinite learning rate", "a mistyped backbone folder",
             "random with the default Hub backbone, offline", "the label column as the text",
             "one column for both texts", "a GLUE label out of the task's range", "an unfinished run as the backbone",
             "validation rows without a label", "a mistyped dataset folder"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_error_before_anything_is_written(case, tmp_path, published, pair_files):
    args, expected = _bad_inputs(tmp_path, published, pair_files)[case]
    args = [*map(str, args), "--working_directory", str(tmp_path / "runs"), "--path_to_cache_dir",
            str(tmp_path / "cache")]
    before = sorted(p for p in tmp_path.rglob("*") if "cache" not in p.parts)
    with pytest.raises(UsageError) as error:
        finetune.main(args)
    message = str(error.value)
    assert expected in message and "\n" not in message, message
    assert sorted(p for p in tmp_path.rglob("*") if "cache" not in p.parts) == before  # nothing written


def test_bad_input_on_the_real_command_line_is_one_line(tmp_path, published, pair_files):
    result = _run("--huggingface_model_name", published, "--train_file", pair_files[0], "--validation_file",
                  pair_files[1], "--label_column", "gold", "--working_directory", tmp_path / "runs")
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --train_file {pair_files[0]} has no label column 'gold'")
    assert not (tmp_path / "runs").exists()


ISSUE_CASES = ["validation labels training never saw", "regression target for a classification task",
               "class labels for a regression task", "another tokenizer's backbone", "empty split"]


@pytest.mark.slow
def test_the_issues_bad_inputs_on_the_real_command_line(tmp_path, published, pair_files):
    """Issue 27's list (the label column named wrongly, above; the Hub offline, beside), each through the script's
    command line: exit code 2, one line on stderr, no traceback, nothing written."""
    for i, case in enumerate(ISSUE_CASES):
        (tmp_path / f"case{i}").mkdir()
        args, expected = _bad_inputs(tmp_path / f"case{i}", published, pair_files)[case]
        before = sorted(tmp_path.rglob("*"))
        result = _run(*args, "--working_directory", tmp_path / "runs", "--path_to_cache_dir", tmp_path / "cache")
        assert result.returncode == 2, (case, result.stderr[-2000:])
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and expected in line, (case, line)
        assert sorted(p for p in tmp_path.rglob("*") if "cache" not in p.parts) == \
            [p for p in before if "cache" not in p.parts], case
    result = _run("--task_name", "rte", "--huggingface_model_name", published, "--working_directory",
                  tmp_path / "runs", "--path_to_cache_dir", tmp_path / "cache")
    assert result.returncode == 2 and "the Hub is offline (HF_HUB_OFFLINE is set)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_inputs_longer_than_max_seq_length_are_counted(tiny_tokenizer):
    rows = {"train": {"texts": ["the king " * 30, "a city"], "pairs": None, "targets": [0, 1]},
            "validation": {"texts": ["north"], "pairs": ["south " * 40], "targets": [1]}}
    features, [note] = finetune.featurize(rows, tiny_tokenizer, 16)
    assert note.startswith("note: 1 of 2 train, 1 of 1 validation inputs are longer than --max_seq_length 16 tokens")
    assert max(len(ids) for ids in features["train"]["input_ids"]) == 16
    pair = features["validation"]["input_ids"][0]
    assert len(pair) == 16 and pair.count(tiny_tokenizer.sep_token_id) == 3  # <s> a </s></s> b </s>: both kept


def test_an_earlier_run_needs_overwrite_which_removes_only_our_files(tmp_path, published, pair_files, capsys):
    run_dir = tmp_path / "runs" / "c"
    run_dir.mkdir(parents=True)
    for name in ("classification_args.json", "eval_results.json", "predictions.jsonl", "config.json"):
        (run_dir / name).write_text("{}")
    (run_dir / "notes.txt").write_text("the user's")
    argv = _published_args(published, pair_files, tmp_path / "runs", "c")
    with pytest.raises(UsageError, match="already holds a classification run folder; pass --overwrite"):
        finetune.main(argv)
    args = finetune.parse_args([*argv, "--overwrite"])
    run_dir, _ = finetune.check_request(args)
    lock = finetune.claim_run_folder(args, run_dir)
    try:
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "classification_args.json", "notes.txt"]
        assert "kept what this script did not make: notes.txt" in capsys.readouterr().out
        with pytest.raises(UsageError, match="is in use by another run"):
            finetune.claim_run_folder(args, run_dir)
    finally:
        lock.release()


def test_help_has_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_code:
        finetune.parse_args(["--help"])
    assert exit_code.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("Table 10", "nyu-mll/glue", "predictions.jsonl", "eval_accuracy", "python classify.py",
                   "(default: FacebookAI/roberta-base)", "(default: 0.1)", "(default: 10.0)"):
        assert phrase in text, phrase
    actions = [a for a in finetune.build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert text.count("(default: ") == len(actions)


# ---- classify.py: bad input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tiny_tokenizer, tmp_path_factory):
    """A classifier folder as the script saves one: our model with class names, the tokenizer, the run record."""
    import torch

    from model import RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path_factory.mktemp("runs") / "c"
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=72, max_position_embeddings=66, id2label={0: "absent", 1: "present"},
                           problem_type="single_label_classification")
    RobertaForSequenceClassification(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    classification_run_folder.write_run_record(folder, {"max_seq_length": 24})
    return folder


@pytest.mark.parametrize(("extra", "expected"), [
    ([], "nothing to label: give --text"),
    (["--text", "a", "--text", "b", "--text_pair", "c"], "2 --text but 1 --text_pair"),
    (["--text", " "], "--text is empty"),
    (["--text", "a", "--max_seq_length", "4"], "--max_seq_length 4 leaves no room for text (at least 8 tokens)"),
    (["--input_file", "{dev}"], "--input_file needs --output"),
    (["--input_file", "{dev}", "--output", "{dev}"], "is the --input_file itself"),
    (["--input_file", "{dev}", "--output", "{model}/config.json"], "is a file of the model folder it reads"),
    (["--input_file", "{dev}", "--output", "{exists}"], "exists; pass --overwrite"),
    (["--input_file", "{dev}", "--output", "{tmp}"], "is a folder; give a file name"),
    (["--text", "a", "--output", "{tmp}/x.jsonl"], "--output goes with --input_file"),
    (["--text", "a", "--max_seq_length", "100"], "--max_seq_length 100 is longer than the model allows"),
    (["--text", "a", "--text_column", "review"], "--text_column goes with --input_file"),
    (["--input_file", "{dev}", "--output", "{data}", "--overwrite"], "is not an output of this script"),
])
def test_classify_bad_input_is_one_clear_error(extra, expected, classifier_dir, pair_files, tmp_path):
    (tmp_path / "exists.jsonl").write_text("mine")  # not labels: even --overwrite leaves it (a data file, say)
    values = {"dev": str(pair_files[1]), "model": str(classifier_dir), "exists": str(tmp_path / "exists.jsonl"),
              "tmp": str(tmp_path), "data": str(tmp_path / "exists.jsonl")}
    with pytest.raises(UsageError) as error:
        classify.main(["--model", str(classifier_dir), *[e.format(**values) for e in extra]])
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert (tmp_path / "exists.jsonl").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "exists.jsonl"]


def test_classify_refuses_a_backbone_without_a_head_and_uses_the_runs_length(classifier_dir, published, capsys):
    with pytest.raises(UsageError, match="has no sequence-classification head"):
        classify.main(["--model", str(published), "--text", "the king"])
    args = classify.parse_args(["--model", str(classifier_dir), "--text", "the king"])
    classify.load_model(args)
    assert args.max_seq_length == 24  # from classification_args.json
    classify.main(["--model", str(classifier_dir), "--text", "the king", "--text", "the queen"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split(" (")[0] in ("absent", "present") and lines[1].endswith("'the queen'")


def test_dataset_name_reads_a_local_folder_or_a_hub_dataset_at_the_commit_it_resolves_to(tmp_path, monkeypatch):
    import huggingface_hub

    folder = tmp_path / "my_data"
    folder.mkdir()
    rows = _pairs(12, 4)
    for split, part in (("train", rows[:8]), ("validation", rows[8:])):
        (folder / f"{split}.csv").write_text("sentence1,sentence2,label\n" + "".join(
            f"{r['sentence1']},{r['sentence2']},{r['label']}\n" for r in part))
    args = finetune.parse_args(["--dataset_name", str(folder)])
    finetune.check_data_source(args)
    examples = finetune.load_examples(args)
    data, space, record, _ = finetune.check_examples(examples, args)
    assert space.names == ("absent", "present") and record["train_examples"] == 8 and record["revision"] is None
    assert data["validation"]["pairs"] == [r["sentence2"] for r in rows[8:]]

    def snapshot_download(repo_id, repo_type=None, revision=None, allow_patterns=None, cache_dir=None, **kwargs):
        assert (repo_id, repo_type, revision) == ("someone/pairs", "dataset", "main")
        target = tmp_path / "cache" / "snapshots" / "0123abcd"  # the commit main resolved to
        shutil.copytree(folder, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    args = finetune.parse_args(["--dataset_name", "someone/pairs"])
    finetune.check_data_source(args)
    *_, record, _ = finetune.check_examples(finetune.load_examples(args), args)
    assert record["revision"] == "0123abcd" and record["source"] == "someone/pairs"


# ---- found by probing as a hostile user (notes/probe_classification.md) ------------------------------------------


def test_classify_names_a_qa_model_and_checks_its_file_before_labelling(classifier_dir, tiny_tokenizer, tmp_path,
                                                                        capsys):
    """A question-answering model is named as one (it was called "a pretrained backbone"); a --label_column the file
    lacks, an empty file and a row without text are one line each, nothing written; the columns read and the
    inputs longer than --max_seq_length are said."""
    from model import RobertaConfig, RobertaForQuestionAnswering

    qa = tmp_path / "qa"
    RobertaForQuestionAnswering(RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=1,
                                              num_attention_heads=3, intermediate_size=72,
                                              max_position_embeddings=66)).save_pretrained(qa)
    tiny_tokenizer.save_pretrained(qa)
    with pytest.raises(UsageError, match="it is a question-answering model, for ask.py, not a model fine-tuned"):
        classify.main(["--model", str(qa), "--text", "the king"])
    rows = [{"sentence": "the king " * 20, "label": "present"}, {"sentence": "north", "label": "absent"}]
    cases = {"rows.jsonl": (rows, ["--label_column", "gold"], "has no label column 'gold' (--label_column; its "
                                                             "columns: sentence, label)"),
             "empty.jsonl": ([], [], "empty.jsonl is empty: there is nothing to label"),
             "no_text.jsonl": ([rows[0], {"sentence": None, "label": "absent"}], [],
                               "no_text.jsonl: row 2 has no text in column 'sentence'"),
             "no_text.csv": (None, [], "no_text.csv: row 2 has no text in column 'sentence'")}  # an empty cell
    (tmp_path / "no_text.csv").write_text("sentence,label\nthe king,present\n,absent\n")
    for name, (content, extra, expected) in cases.items():
        if content is not None:
            _write_jsonl(tmp_path / name, content)
        with pytest.raises(UsageError) as error:
            classify.main(["--model", str(classifier_dir), "--input_file", str(tmp_path / name), "--output",
                           str(tmp_path / "out.jsonl"), *extra])
        assert expected in str(error.value) and not (tmp_path / "out.jsonl").exists(), str(error.value)
    capsys.readouterr()
    classify.main(["--model", str(classifier_dir), "--input_file", str(tmp_path / "rows.jsonl"), "--output",
                   str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert "labelling the text of column 'sentence', scored against 'label'" in err
    assert "note: 1 of 2 inputs are longer than --max_seq_length 24 tokens and are truncated\n" in err
    (tmp_path / "out.jsonl").write_text("")  # its own labels (or an empty file) --overwrite does replace
    classify.main(["--model", str(classifier_dir), "--input_file", str(tmp_path / "rows.jsonl"), "--output",
                   str(tmp_path / "out.jsonl"), "--overwrite"])
    assert [json.loads(line)["index"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [0, 1]


def test_a_full_disk_during_fine_tuning_is_one_line_that_says_to_overwrite(published, pair_files, tmp_path,
                                                                           monkeypatch):
    """torch.save's zip writer reports a full disk as a RuntimeError without an errno (the Trainer's optimizer
    file, found on a real full tmpfs): one line that says how to start again, not a traceback."""
    import finetuning

    def disk_full(self, output_dir=None, state_dict=None):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 400704 vs 400592")

    monkeypatch.setattr(finetuning.ModelFolderTrainer, "_save", disk_full)
    with pytest.raises(finetuning.ScriptExit) as stop:
        finetune.main(_published_args(published, pair_files, tmp_path, "full", "--num_train_epochs", "1",
                                      "--max_train_samples", "4", "--max_eval_samples", "3"))
    assert stop.value.code == 1 and str(stop.value).startswith("error: the disk is full: RuntimeError")
    assert str(stop.value).endswith(f"the run in {tmp_path / 'full'} did not finish: free space and run the same "
                                    "command with --overwrite")


@pytest.mark.slow
def test_a_malformed_file_is_one_line_on_the_command_line(tmp_path, published, pair_files):
    """datasets logs a parser failure as a line of its own before raising: only ours is printed."""
    (tmp_path / "commas.csv").write_text("sentence,label\nthe king,absent\nthe queen, north, south,present\n")
    result = _run("--huggingface_model_name", published, "--train_file", tmp_path / "commas.csv", "--validation_file",
                  pair_files[1], "--working_directory", tmp_path / "runs")
    assert result.returncode == 2 and not (tmp_path / "runs").exists()
    [line] = result.stderr.strip().splitlines()
    assert "could not be read as csv (ParserError: Error tokenizing data. C error: Expected 2 fields in line 3" in line


@pytest.mark.parametrize(("flags", "expected"), [
    (["--acceptability_sentences", "-3"], "--acceptability_sentences must not be negative"),
    (["--acceptability_sentences", "99999"], "the demo world has sentences about 16,620 training entities"),
    (["--acceptability_epochs", "nan"], "--acceptability_epochs must be a positive number, got nan"),
])
def test_the_demos_classification_flags_are_checked_before_its_first_step(flags, expected, capsys):
    """They were used only after pretraining and both QA runs: minutes in, then a traceback or a failed step."""
    import demo

    with pytest.raises(SystemExit) as stop:
        demo.parse_args(flags)
    assert stop.value.code == 2 and expected in capsys.readouterr().err
    assert demo.parse_args(["--acceptability_sentences", "0", "--acceptability_epochs", "nan"])  # the step skipped


def test_weights_that_diverged_are_neither_saved_nor_labelled_with(published, pair_files, classifier_dir, tmp_path):
    """A learning rate far too high made NaN weights that were saved and scored (argmax of NaN is class 0, the
    Trainer logs NaN losses as 0), and classify.py printed 'absent (nan)'. One line each instead."""
    import torch

    import finetuning
    from model import RobertaForSequenceClassification

    with pytest.raises(finetuning.ScriptExit, match=r"^error: training diverged: \d+ weight tensors hold NaN"):
        finetune.main(_published_args(published, pair_files, tmp_path, "nan", "--num_train_epochs", "1",
                                      "--learning_rate", "1e6", "--max_eval_samples", "3"))
    assert "model.safetensors" not in {p.name for p in (tmp_path / "nan").iterdir()}  # no model
    model = RobertaForSequenceClassification.from_pretrained(classifier_dir)
    with torch.no_grad():
        model.classifier.dense.weight[0, 0] = float("nan")
    shutil.copytree(classifier_dir, tmp_path / "c")
    model.save_pretrained(tmp_path / "c")
    with pytest.raises(UsageError, match="1 of its weight tensors hold NaN or infinite values .the first: "
                                         "classifier.dense.weight.: its training diverged"):
        classify.main(["--model", str(tmp_path / "c"), "--text", "the king"])


def test_predictions_keep_a_text_whose_column_is_named_like_a_record_key(tmp_path):
    """A text column named `prediction` (or `index`) lost its text (or the index) to the record's own key."""
    import numpy as np

    import classification as cls

    rows = {"validation": {"texts": ["the king", "the queen"], "pairs": ["north", "south"], "targets": [0, 1],
                           "columns": ("prediction", "index")}}
    logits = {"validation": np.array([[2.0, 0.0], [0.0, 1.0]])}
    path = tmp_path / classification_run_folder.PREDICTIONS_FILE
    classification_run_folder.write_predictions(path, [("", "validation")], logits, rows,
                                                cls.LabelSpace(("absent", "present")))
    first, second = classification_run_folder.read_predictions(tmp_path)
    assert (first["prediction_text"], first["index_text"], first["index"], first["prediction"]) == (
        "the king", "north", 0, "absent")
    assert (second["index"], second["prediction"], second["label"]) == (1, "present", "present")
