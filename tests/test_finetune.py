"""finetune_roberta_qa.py through its real command line: tiny backbones, local SQuAD JSON files, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "finetune_roberta_qa.py")
WORDS = "the a of on in river city king queen born died lived wrote painted built north south".split()
TINY = ["--max_seq_length", "48", "--doc_stride", "12", "--per_device_batch_size", "3",
        "--gradient_accumulation_steps", "2", "--logging_steps", "2", "--learning_rate", "1e-3", "--seed", "3"]


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def _paragraph(i: int, sentences: int) -> dict:
    """A context built from the tiny tokenizer's words, with questions whose answers are names in it."""
    names = [f"Place{i}x{j}" for j in range(sentences)]
    context = " ".join(f"The {WORDS[(i + j) % len(WORDS)]} king lived in {names[j]} on the river." for j in
                       range(sentences))
    qas = []
    for j in range(0, sentences, max(sentences // 2, 1)):
        qas.append({"id": f"q{i}-{j}", "question": f"Where did the {WORDS[(i + j) % len(WORDS)]} king live?",
                    "answers": [{"text": names[j], "answer_start": context.index(names[j])}]})
    return {"context": context, "qas": qas}


def _squad(paragraphs, version="1.1") -> dict:
    return {"version": version, "data": [{"title": "Tiny", "paragraphs": paragraphs}]}


@pytest.fixture(scope="module")
def squad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("squad")
    train = _squad([_paragraph(i, 2) for i in range(8)])
    validation = _squad([_paragraph(100, 9), _paragraph(101, 1)], version="v2.0")  # first context: many windows
    validation["data"][0]["paragraphs"][1]["qas"].append(
        {"id": "impossible", "question": "Who painted the city?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "king", "answer_start": 8}]})
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "dev.json").write_text(json.dumps(validation))
    ids = [qa["id"] for p in validation["data"][0]["paragraphs"] for qa in p["qas"]]
    return folder / "train.json", folder / "dev.json", ids


@pytest.fixture(scope="module")
def backbone_dir(tiny_tokenizer, tmp_path_factory):
    """A tiny RobertaForMaskedLM saved as train.py saves final_model/: our save_pretrained + the tokenizer."""
    from model import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=72, max_position_embeddings=66)
    folder = tmp_path_factory.mktemp("run") / "final_model"
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _embedding_correlation(run_dir, backbone_dir) -> float:
    from model import RobertaForMaskedLM, RobertaForQuestionAnswering

    tuned = RobertaForQuestionAnswering.from_pretrained(run_dir).roberta.embeddings.word_embeddings.weight
    start = RobertaForMaskedLM.from_pretrained(backbone_dir).roberta.embeddings.word_embeddings.weight
    return torch.corrcoef(torch.stack([tuned.flatten(), start.flatten()]))[0, 1].item()


def _check_outputs(run_dir, result, ids):
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((run_dir / "eval_results.json").read_text())
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert sorted(predictions) == sorted(ids)
    assert all(isinstance(text, str) for text in predictions.values())
    assert 0.0 <= scores["exact_match"] <= scores["f1"] <= 100.0
    final = result.stdout.strip().splitlines()[-1]
    assert final.startswith("final: exact_match") and f"f1 {scores['f1']:.2f}" in final
    return scores, predictions


@pytest.mark.slow
def test_pretrained_backbone_run_writes_scores_predictions_and_model(tmp_path, squad_files, backbone_dir):
    train_file, dev_file, ids = squad_files
    result = _run("--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", backbone_dir,
                  "--train_file", train_file, "--validation_file", dev_file, "--working_directory", tmp_path,
                  "--experiment_name", "qa", "--num_train_epochs", "2", "--eval_steps", "2", "--save_steps", "3",
                  "--max_train_samples", "7", *TINY)
    run_dir = tmp_path / "qa"
    scores, predictions = _check_outputs(run_dir, result, ids)
    assert scores["train_samples"] == 7 and scores["eval_samples"] == len(ids)
    assert scores["eval_windows"] >= len(ids) + 3  # the long context was cut into several windows
    assert scores["version_2_with_negative"] is True  # the validation file has an unanswerable question
    # EM/F1 were scored at every evaluation inside the Trainer, not only at the end
    steps = [entry["step"] for entry in scores["history"]]
    assert steps == sorted(set(steps)) and len(steps) >= 2 and steps[-1] == scores["global_step"]
    assert scores["history"][-1]["f1"] == scores["f1"]
    # the run folder holds the model in transformers' format with its tokenizer; checkpoints too
    from transformers import AutoTokenizer
    from transformers import RobertaForQuestionAnswering as HFRobertaForQuestionAnswering

    assert HFRobertaForQuestionAnswering.from_pretrained(run_dir).config.hidden_size == 48
    assert AutoTokenizer.from_pretrained(run_dir).is_fast
    assert (run_dir / "checkpoints" / "checkpoint-3" / "config.json").is_file()
    args = json.loads((run_dir / "finetune_args.json").read_text())
    assert args["doc_stride"] == 12 and args["pretrained_backbone"] == "pretrained"
    assert _embedding_correlation(run_dir, backbone_dir) > 0.5  # started from the backbone's weights


@pytest.mark.slow
def test_random_backbone_run_takes_only_the_architecture(tmp_path, squad_files, backbone_dir):
    train_file, dev_file, ids = squad_files
    result = _run("--pretrained_backbone", "random", "--path_to_pretrained_backbone", backbone_dir,
                  "--train_file", train_file, "--validation_file", dev_file, "--working_directory", tmp_path,
                  "--experiment_name", "qa", "--num_train_epochs", "1", "--eval_steps", "0", "--save_steps", "0",
                  "--max_eval_samples", "3", "--no-version_2_with_negative", *TINY)
    run_dir = tmp_path / "qa"
    scores, predictions = _check_outputs(run_dir, result, ids[:3])
    assert len(scores["history"]) == 1 and scores["version_2_with_negative"] is False
    assert not list((run_dir / "checkpoints").glob("checkpoint-*"))
    assert all(text for text in predictions.values())  # without SQuAD 2.0 there is always a span
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 48
    assert abs(_embedding_correlation(run_dir, backbone_dir)) < 0.2  # fresh weights, not the backbone's


# ---- bad input: one line, exit code 2, nothing loaded --------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return path


def _bad_inputs(tmp_path, train_file, dev_file, backbone):
    no_model = tmp_path / "empty"
    no_model.mkdir()
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((backbone / name).read_bytes())
    run_folder = tmp_path / "pretraining_run"
    (run_folder / "final_model").mkdir(parents=True)
    malformed = _write(tmp_path / "broken.json", '{"data": [')
    wrong_layout = _write(tmp_path / "layout.json", json.dumps({"data": [{"paragraphs": [{"qas": [{"id": 1}]}]}]}))
    files = ["--train_file", train_file, "--validation_file", dev_file]
    pretrained = ["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone"]
    return {
        "missing file": (["--pretrained_backbone", "random", "--path_to_pretrained_backbone", backbone,
                          "--train_file", tmp_path / "nope.json", "--validation_file", dev_file], "nope.json"),
        "malformed json": ([*pretrained, backbone, "--train_file", train_file, "--validation_file", malformed],
                           "broken.json"),
        "wrong layout": ([*pretrained, backbone, "--train_file", wrong_layout, "--validation_file", dev_file],
                         "layout.json"),
        "pretrained without path": (["--pretrained_backbone", "pretrained", *files], "--path_to_pretrained_backbone"),
        "folder without model": ([*pretrained, no_model, *files], "holds no model"),
        "run folder instead of model": ([*pretrained, run_folder, *files], "final_model"),
        "model without tokenizer": ([*pretrained, no_tokenizer, *files], "holds no tokenizer"),
        "stride not below length": ([*pretrained, backbone, *files, "--max_seq_length", "64", "--doc_stride", "64"],
                                    "--doc_stride 64 must be below --max_seq_length 64"),
        "one file only": ([*pretrained, backbone, "--train_file", train_file], "--validation_file"),
    }


BAD_CASES = ["missing file", "malformed json", "wrong layout", "pretrained without path", "folder without model",
             "run folder instead of model", "model without tokenizer", "stride not below length", "one file only"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_line(case, tmp_path, squad_files, backbone_dir):
    train_file, dev_file, _ = squad_files
    args, expected = _bad_inputs(tmp_path, train_file, dev_file, backbone_dir)[case]
    result = _run(*args, "--working_directory", tmp_path / "runs")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # stopped before anything was written or loaded


def test_tokenizer_without_offsets_is_refused(tmp_path, squad_files, backbone_dir):
    from transformers import ByT5Tokenizer

    folder = tmp_path / "slow_tokenizer_model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((backbone_dir / name).read_bytes())
    ByT5Tokenizer().save_pretrained(folder)  # a Python tokenizer: no offsets mapping
    train_file, dev_file, _ = squad_files
    result = _run("--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", folder,
                  "--train_file", train_file, "--validation_file", dev_file, "--working_directory", tmp_path / "runs")
    assert result.returncode == 2 and "offsets" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_existing_run_folder_needs_overwrite(tmp_path, squad_files, backbone_dir):
    train_file, dev_file, _ = squad_files
    (tmp_path / "runs" / "qa").mkdir(parents=True)
    (tmp_path / "runs" / "qa" / "eval_results.json").write_text("{}")
    result = _run("--pretrained_backbone", "random", "--path_to_pretrained_backbone", backbone_dir,
                  "--train_file", train_file, "--validation_file", dev_file, "--working_directory", tmp_path / "runs",
                  "--experiment_name", "qa")
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (tmp_path / "runs" / "qa" / "eval_results.json").read_text() == "{}"


def test_local_files_flatten_to_squad_rows(squad_files):
    from finetune_roberta_qa import read_squad_file

    _, dev_file, ids = squad_files
    rows = read_squad_file(str(dev_file), "--validation_file")
    assert [row["id"] for row in rows] == ids
    impossible = next(row for row in rows if row["id"] == "impossible")
    assert impossible["answers"] == {"text": [], "answer_start": []}  # plausible_answers are not answers
    first = rows[0]
    start = first["answers"]["answer_start"][0]
    assert first["context"][start : start + len(first["answers"]["text"][0])] == first["answers"]["text"][0]
    assert set(first) == {"id", "title", "context", "question", "answers"}
