"""finetune_roberta_qa.py: tiny backbones and local SQuAD files; bad input in-process (one subprocess run checks the
real command line), end-to-end fine-tuning runs marked slow."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import finetune_roberta_qa as finetune
import finetuning
from qa_run_folder import QA_RUN
from utils import UsageError

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
    # one training answer that is not where answer_start says: skipped, as BERT's run_squad.py does
    train["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "misplaced", "question": "Where?", "answers": [{"text": "Place0x1", "answer_start": 3}]})
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
    import torch

    from model import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=72, max_position_embeddings=66)
    folder = tmp_path_factory.mktemp("run") / "final_model"
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _copy_backbone(backbone_dir, folder: Path) -> Path:
    shutil.copytree(backbone_dir, folder)
    return folder


def _embedding_correlation(run_dir, backbone_dir) -> float:
    import torch

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
    detail = json.loads((run_dir / "predictions_detail.json").read_text())
    assert [d["id"] for d in detail] == ids[: len(detail)] and len(detail) == len(predictions)
    assert all(d["prediction"] == predictions[d["id"]] for d in detail)
    # the per-question scores are the ones the averages were made of
    assert 100 * sum(d["exact"] for d in detail) / len(detail) == pytest.approx(scores["exact_match"])
    assert 100 * sum(d["f1"] for d in detail) / len(detail) == pytest.approx(scores["f1"], abs=1e-2)
    final = result.stdout.strip().splitlines()[-1]
    assert final.startswith("final: exact_match") and f"f1 {scores['f1']:.2f}" in final
    made = {p.name for p in run_dir.iterdir()}
    assert made <= set(QA_RUN.made), made - set(QA_RUN.made)  # --overwrite knows every file it may remove
    assert "README.md" in made and "exact_match" in (run_dir / "README.md").read_text()
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
    # SQuAD 2.0 data: the official v2 fields, consistent with the predictions
    assert scores["exact"] == scores["exact_match"] and scores["total"] == len(ids)
    assert (scores["HasAns_total"], scores["NoAns_total"]) == (len(ids) - 1, 1)
    assert scores["no_answer_predictions"] == sum(1 for text in predictions.values() if not text)
    assert scores["best_f1"] >= scores["f1"] and 0.0 <= scores["best_f1_thresh"] <= 1.0
    assert "SQuAD 2.0: HasAns exact" in result.stdout
    # the misplaced training answer was reported, named, and skipped
    assert "1 whose text is not the context's at answer_start (e.g. question misplaced)" in result.stdout
    assert scores["data"]["train_skipped_bad_answers"] == 1 and scores["data"]["train_questions"] == 17
    # EM/F1 were scored at every evaluation inside the Trainer, not only at the end
    steps = [entry["step"] for entry in scores["history"]]
    assert steps == sorted(set(steps)) and len(steps) >= 2 and steps[-1] == scores["global_step"]
    assert scores["history"][-1]["f1"] == scores["f1"] and "HasAns_f1" in scores["history"][-1]
    # provenance: all three from the pretrained folder
    backbone = scores["backbone"]
    assert backbone["weights"] == backbone["architecture"] == backbone["tokenizer"] == str(backbone_dir)
    # the run folder holds the model in transformers' format with its tokenizer; checkpoints too
    from transformers import AutoTokenizer
    from transformers import RobertaForQuestionAnswering as HFRobertaForQuestionAnswering

    assert HFRobertaForQuestionAnswering.from_pretrained(run_dir).config.hidden_size == 48
    assert AutoTokenizer.from_pretrained(run_dir).is_fast
    assert (run_dir / "checkpoints" / "checkpoint-3" / "config.json").is_file()
    args = json.loads((run_dir / "finetune_args.json").read_text())
    assert args["doc_stride"] == 12 and args["pretrained_backbone"] == "pretrained"
    assert "huggingface_model_name" not in args and "huggingface_model_name" in args["not_used"]
    assert _embedding_correlation(run_dir, backbone_dir) > 0.5  # started from the backbone's weights
    # ask.py answers with the run's own window settings, as evaluation did
    import ask

    detail = {d["id"]: d for d in json.loads((run_dir / "predictions_detail.json").read_text())}
    rows = {qa["id"]: (qa["question"], p["context"]) for p in json.loads(dev_file.read_text())["data"][0]["paragraphs"]
            for qa in p["qas"]}
    model, tokenizer = ask.load_model(ask.parse_args(["--model", str(run_dir), "--question", "x"]))
    from qa import answer_questions

    for qid in ids[:3]:
        [answer] = answer_questions(model, tokenizer, [rows[qid][0]], [rows[qid][1]], max_seq_length=48,
                                    doc_stride=12, allow_no_answer=True)
        assert answer["answer"] == detail[qid]["prediction"]


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
    assert "--no-version_2_with_negative, but 1 of 5 evaluation" in result.stdout  # warned, with the count
    assert not (run_dir / "checkpoints").exists()  # --save_steps 0: no empty folder
    assert all(text for text in predictions.values())  # without SQuAD 2.0 there is always a span
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 48
    assert abs(_embedding_correlation(run_dir, backbone_dir)) < 0.2  # fresh weights, not the backbone's
    backbone = scores["backbone"]
    assert backbone["weights"].startswith("random initialisation")
    assert backbone["architecture"] == backbone["tokenizer"] == str(backbone_dir)


# ---- bad input: one line, exit code 2, nothing written ---------------------------------------------------------------


def test_bad_input_on_the_real_command_line_is_one_line(tmp_path, squad_files):
    train_file, dev_file, _ = squad_files
    result = _run("--train_file", train_file, "--validation_file", dev_file, "--max_seq_length", "64",
                  "--doc_stride", "64", "--working_directory", tmp_path / "runs")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == "error: --doc_stride 64 must be below --max_seq_length 64 (it is the overlap of " \
                                    "consecutive windows)"
    assert not (tmp_path / "runs").exists()


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
    truncated = _copy_backbone(backbone, tmp_path / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    mis_shaped = _copy_backbone(backbone, tmp_path / "mis_shaped")
    config = json.loads((mis_shaped / "config.json").read_text())
    (mis_shaped / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    small_vocab = _copy_backbone(backbone, tmp_path / "small_vocab")
    (small_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    big_vocab = _copy_backbone(backbone, tmp_path / "big_vocab")
    (big_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 50265}))
    malformed = _write(tmp_path / "broken.json", '{"data": [')
    wrong_layout = _write(tmp_path / "layout.json", json.dumps({"data": [{"paragraphs": [{"qas": [{"id": 1}]}]}]}))
    duplicates = json.loads(Path(dev_file).read_text())
    duplicates["data"][0]["paragraphs"][1]["qas"].append(dict(duplicates["data"][0]["paragraphs"][0]["qas"][0]))
    duplicated = _write(tmp_path / "dupes.json", json.dumps(duplicates))
    data_folder = tmp_path / "data"
    data_folder.mkdir()
    own_train = _write(data_folder / "train.json", Path(train_file).read_text())
    files = ["--train_file", train_file, "--validation_file", dev_file]
    pretrained = ["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone"]
    return {
        "missing file": (["--pretrained_backbone", "random", "--path_to_pretrained_backbone", backbone,
                          "--train_file", tmp_path / "nope.json", "--validation_file", dev_file], "nope.json"),
        "malformed json": ([*pretrained, backbone, "--train_file", train_file, "--validation_file", malformed],
                           "broken.json"),
        "wrong layout": ([*pretrained, backbone, "--train_file", wrong_layout, "--validation_file", dev_file],
                         "layout.json"),
        "duplicate ids": ([*pretrained, backbone, "--train_file", train_file, "--validation_file", duplicated],
                          "question id 'q100-0' appears more than once"),
        "pretrained without path": (["--pretrained_backbone", "pretrained", *files], "--path_to_pretrained_backbone"),
        "folder without model": ([*pretrained, no_model, *files], "holds no config.json"),
        "run folder instead of model": ([*pretrained, run_folder, *files], "is a train.py run folder, not a model: "
                                        f"pass {run_folder / 'final_model'}"),
        "model without tokenizer": ([*pretrained, no_tokenizer, *files], "holds no tokenizer"),
        "truncated weights": ([*pretrained, truncated, *files], "model.safetensors could not be read"),
        "mis-shaped weights": ([*pretrained, mis_shaped, *files], "mis-shaped weights"),
        "tokenizer larger than vocabulary": ([*pretrained, small_vocab, *files],
                                             "tokens but the model's embedding table only 300 rows"),
        "another model's tokenizer": ([*pretrained, big_vocab, *files], "it is not the tokenizer the model was"),
        "stride not below length": ([*pretrained, backbone, *files, "--max_seq_length", "64", "--doc_stride", "64"],
                                    "--doc_stride 64 must be below --max_seq_length 64"),
        "one file only": ([*pretrained, backbone, "--train_file", train_file], "--validation_file"),
        "unknown logger": ([*pretrained, backbone, *files, "--report_to", "wandb,nope"], "'nope' is not a Trainer"),
        "cache folder is a file": ([*pretrained, backbone, *files, "--path_to_cache_dir", train_file],
                                   "is a file, not a folder"),
        "run folder holds an input": ([*pretrained, backbone, "--train_file", own_train, "--validation_file", dev_file,
                                       "--working_directory", data_folder, "--experiment_name", "."],
                                      "is or holds --train_file"),
    }


BAD_CASES = ["missing file", "malformed json", "wrong layout", "duplicate ids", "pretrained without path",
             "folder without model", "run folder instead of model", "model without tokenizer", "truncated weights",
             "mis-shaped weights", "tokenizer larger than vocabulary", "another model's tokenizer",
             "stride not below length", "one file only", "unknown logger", "cache folder is a file",
             "run folder holds an input"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_error_before_anything_is_written(case, tmp_path, squad_files, backbone_dir):
    train_file, dev_file, _ = squad_files
    args, expected = _bad_inputs(tmp_path, train_file, dev_file, backbone_dir)[case]
    if "--working_directory" not in args:
        args = [*args, "--working_directory", tmp_path / "runs"]
    if "--max_seq_length" not in args:
        args = [*args, "--max_seq_length", "48", "--doc_stride", "12"]
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError) as error:
        finetune.main([str(a) for a in args])
    message = str(error.value)
    assert expected in message and "\n" not in message, message
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.slow
def test_a_logger_that_is_not_installed_and_bf16_without_a_gpu_are_one_line(tmp_path, squad_files, backbone_dir):
    """Both used to pass the checks, claim the run folder, then end in a traceback from the Trainer."""
    import torch
    from transformers.integrations import get_available_reporting_integrations

    absent = next((name for name in finetuning.REPORTERS[2:] if name not in get_available_reporting_integrations()),
                  None)
    if absent:
        result = _run(*_args(tmp_path, squad_files, backbone_dir, "--report_to", absent))
        assert result.returncode == 2 and result.stderr.strip() == (
            f"error: --report_to {absent}: its package is not installed (the Trainer would fail at its first log); "
            f"install it, or choose from what is: {', '.join(['none', *get_available_reporting_integrations()])}")
    if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        result = _run(*_args(tmp_path, squad_files, backbone_dir, "--bf16"))
        assert result.returncode == 2 and "error: --bf16 needs a CUDA GPU that supports bf16" in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_tokenizer_without_offsets_is_refused(tmp_path, squad_files, backbone_dir):
    from transformers import ByT5Tokenizer

    folder = tmp_path / "slow_tokenizer_model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((backbone_dir / name).read_bytes())
    ByT5Tokenizer().save_pretrained(folder)  # a Python tokenizer: no offsets mapping
    train_file, dev_file, _ = squad_files
    with pytest.raises(UsageError, match="has no offsets mapping"):
        finetune.main(["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", str(folder),
                       "--train_file", str(train_file), "--validation_file", str(dev_file),
                       "--working_directory", str(tmp_path / "runs"), "--max_seq_length", "48", "--doc_stride", "12"])
    assert not (tmp_path / "runs").exists()


def _earlier_run(folder: Path) -> Path:
    """A run folder as an earlier run left it, plus a file of the user's."""
    (folder / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    for name in ("finetune_args.json", "eval_results.json", "predictions.json", "config.json"):
        (folder / name).write_text("{}")
    (folder / "notes.txt").write_text("the user's")
    return folder


def _args(tmp_path, squad_files, backbone_dir, *extra):
    train_file, dev_file, _ = squad_files
    return ["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", str(backbone_dir),
            "--train_file", str(train_file), "--validation_file", str(dev_file),
            "--working_directory", str(tmp_path / "runs"), "--experiment_name", "qa", "--max_seq_length", "48",
            "--doc_stride", "12", *extra]


def test_an_earlier_run_needs_overwrite_which_removes_only_our_files(tmp_path, squad_files, backbone_dir, capsys):
    run_dir = _earlier_run(tmp_path / "runs" / "qa")
    with pytest.raises(UsageError, match="already holds a question-answering run folder; pass --overwrite"):
        finetune.main(_args(tmp_path, squad_files, backbone_dir))
    assert (run_dir / "eval_results.json").read_text() == "{}"
    args = finetune.parse_args(_args(tmp_path, squad_files, backbone_dir, "--overwrite"))
    run_dir, _ = finetune.check_request(args)
    lock = finetune.claim_run_folder(args, run_dir)
    try:
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "finetune_args.json", "notes.txt"]
        assert "kept what this script did not make: notes.txt" in capsys.readouterr().out
        with pytest.raises(UsageError, match="is in use by another run"):
            finetune.claim_run_folder(args, run_dir)
    finally:
        lock.release()


def test_a_second_run_into_a_folder_in_use_is_refused_and_touches_nothing(tmp_path, squad_files, backbone_dir):
    run_dir = _earlier_run(tmp_path / "runs" / "qa")
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from folders import FolderLock
        FolderLock({str(run_dir)!r}, flag="f").acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        with pytest.raises(UsageError, match=f"in use by another run \\(pid {holder.pid} "):
            finetune.main(_args(tmp_path, squad_files, backbone_dir, "--overwrite"))
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_signal_stops_fine_tuning_in_one_line_and_overwrite_starts_it_again(tmp_path, squad_files, backbone_dir):
    """SIGTERM (a scheduler) mid-training used to end silently with exit 143; the next run then called the folder
    an earlier run's. Fine-tuning does not resume: both now say so, and --overwrite starts again."""
    args = _args(tmp_path, squad_files, backbone_dir, "--num_train_epochs", "200", "--logging_steps", "1",
                 "--per_device_batch_size", "3", "--eval_steps", "0")
    process = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for line in process.stdout:
        if line.startswith("step "):  # training has begun
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    run_dir = tmp_path / "runs" / "qa"
    assert process.returncode == 143 and stderr.strip().splitlines()[-1] == (
        "finetune_roberta_qa: stopped by SIGTERM before the run finished; fine-tuning does not resume: the same "
        f"command plus --overwrite starts it again ({run_dir})"), stderr[-2000:]
    again = _run(*args)
    assert again.returncode == 2 and "holds a fine-tuning run that stopped before it finished (no eval_results.json)" \
        in again.stderr and "pass --overwrite to start it again" in again.stderr
    restarted = _run(*args[:args.index("--num_train_epochs")], "--num_train_epochs", "1", "--overwrite")
    assert restarted.returncode == 0 and (run_dir / "eval_results.json").is_file(), restarted.stderr[-2000:]


def test_run_folder_may_not_be_the_working_directory_itself(tmp_path, monkeypatch, squad_files, backbone_dir):
    """--experiment_name . once deleted every other run in runs/ with --overwrite."""
    other = _earlier_run(tmp_path / "runs" / "other")
    monkeypatch.chdir(tmp_path)
    for name, expected in ((".", "did not write"), ("..", "current directory")):
        with pytest.raises(UsageError, match=expected):
            finetune.main(_args(tmp_path, squad_files, backbone_dir, "--experiment_name", name, "--overwrite"))
    assert (other / "eval_results.json").is_file()


# ---- data checks -------------------------------------------------------------------------------------------------


def _dataset_dict(train_rows, validation_rows):
    from datasets import Dataset, DatasetDict

    return DatasetDict({"train": Dataset.from_list(train_rows, features=finetune.squad_features()),
                        "validation": Dataset.from_list(validation_rows, features=finetune.squad_features())})


def test_bad_training_answers_are_skipped_and_no_answer_data_without_v2_is_warned(squad_files):
    from qa import read_squad_file

    train_file, dev_file, _ = squad_files
    train_rows, dev_rows = read_squad_file(train_file, "t"), read_squad_file(dev_file, "v")
    outside = {**train_rows[1], "id": "outside", "answers": {"text": ["x"], "answer_start": [10_000]}}
    args = finetune.parse_args(["--train_file", str(train_file), "--validation_file", str(dev_file),
                                "--no-version_2_with_negative"])
    train, validation, record, notes = finetune.check_examples(_dataset_dict([*train_rows, outside], dev_rows), args)
    assert len(train) == len(train_rows) - 1 and "misplaced" not in train["id"] and "outside" not in train["id"]
    assert len(validation) == len(dev_rows)
    assert record["train_skipped_bad_answers"] == 2 and record["bad_answer_examples"]["train"] == "misplaced"
    assert "the 2 training questions they label are skipped" in notes[0] and "(e.g. question outside)" in notes[0]
    assert "--no-version_2_with_negative, but 1 of 5 evaluation and 0 of 18 training questions" in notes[1]
    args.version_2_with_negative = None
    finetune.check_examples(_dataset_dict(train_rows, dev_rows), args)
    assert args.version_2_with_negative is True  # the default follows the data


def test_no_training_question_left_is_an_error_and_the_same_file_twice_is_warned(squad_files):
    from qa import read_squad_file

    train_file, dev_file, _ = squad_files
    dev_rows = read_squad_file(dev_file, "v")
    misplaced = [r for r in read_squad_file(train_file, "t") if r["id"] == "misplaced"]
    args = finetune.parse_args(["--train_file", str(dev_file), "--validation_file", str(dev_file)])
    with pytest.raises(UsageError, match="no training question is left once those with bad answers are skipped"):
        finetune.check_examples(_dataset_dict(misplaced, dev_rows), args)
    *_, notes = finetune.check_examples(_dataset_dict(dev_rows, dev_rows), args)
    assert notes == ["warning: --train_file and --validation_file are the same file: the scores will measure "
                     "memorisation, not question answering on unseen text"]


def test_local_files_flatten_to_squad_rows(squad_files):
    from qa import read_squad_file

    _, dev_file, ids = squad_files
    rows = read_squad_file(str(dev_file), "--validation_file")
    assert [row["id"] for row in rows] == ids
    impossible = next(row for row in rows if row["id"] == "impossible")
    assert impossible["answers"] == {"text": [], "answer_start": []}  # plausible_answers are not answers
    first = rows[0]
    start = first["answers"]["answer_start"][0]
    assert first["context"][start : start + len(first["answers"]["text"][0])] == first["answers"]["text"][0]
    assert set(first) == {"id", "title", "context", "question", "answers"}


# ---- downloads, loggers, records, help ---------------------------------------------------------------------------


SQUAD_CARD = """---
dataset_info:
  config_name: plain_text
  features:
  - name: id
    dtype: string
  - name: title
    dtype: string
  - name: context
    dtype: string
  - name: question
    dtype: string
  - name: answers
    sequence:
    - name: text
      dtype: string
    - name: answer_start
      dtype: int32
  splits:
  - name: train
    num_examples: 4
  - name: validation
    num_examples: 4
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: validation
    path: plain_text/validation-*
  default: true
---
# Stand-in for rajpurkar/squad
"""


def _stand_in_hub(tmp_path, monkeypatch, backbone_dir):
    """huggingface_hub.snapshot_download and AutoTokenizer.from_pretrained replaced by stand-ins that "download"
    from local folders into the cache folder they are given, as the real ones do (repo folders under cache_dir)."""
    import huggingface_hub
    import transformers
    from datasets import Dataset

    repos = {"some-user/roberta": backbone_dir, "rajpurkar/squad": tmp_path / "squad_repo"}
    rows = [{"id": f"q{i}", "title": "t", "context": "The queen was born in the north.", "question": "Who?",
             "answers": {"text": ["queen"], "answer_start": [4]}} for i in range(4)]
    (repos["rajpurkar/squad"] / "plain_text").mkdir(parents=True)
    (repos["rajpurkar/squad"] / "README.md").write_text(SQUAD_CARD)  # the Hub repository's layout: card + parquet
    for split in ("train", "validation"):
        Dataset.from_list(rows).to_parquet(repos["rajpurkar/squad"] / "plain_text" / f"{split}-00000-of-00001.parquet")
    calls = []

    def snapshot_download(repo_id, repo_type=None, allow_patterns=None, cache_dir=None, **kwargs):
        calls.append((repo_id, cache_dir))
        assert cache_dir is not None, f"{repo_id} would be downloaded to the default cache"
        kind = "datasets" if repo_type == "dataset" else "models"
        folder = Path(cache_dir) / f"{kind}--{repo_id.replace('/', '--')}" / "snapshots" / "0"
        shutil.copytree(repos[repo_id], folder, dirs_exist_ok=True)
        return str(folder)

    real_from_pretrained = transformers.AutoTokenizer.from_pretrained

    def tokenizer_from_pretrained(name, cache_dir=None, **kwargs):
        calls.append((name, cache_dir))
        return real_from_pretrained(snapshot_download(name, cache_dir=cache_dir), **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer_from_pretrained)
    return calls


def test_a_backbone_whose_tokenizer_was_swapped_for_one_of_the_same_size_warns(backbone_dir, tmp_path, capsys):
    from model_folder import TOKENIZER_RECORD
    from tokenization import tokenizer_fingerprint, train_bpe_tokenizer

    folder = _copy_backbone(backbone_dir, tmp_path / "final_model")
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(folder)
    (folder / TOKENIZER_RECORD).write_text(json.dumps({"fingerprint": tokenizer_fingerprint(own),
                                                       "vocab_size": len(own)}))  # as train.py records it
    argv = ["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone", str(folder), "--dataset", "demo",
            "--max_seq_length", "48", "--doc_stride", "12"]
    *_, provenance = finetune.load_backbone(finetune.parse_args(argv))
    assert "WARNING" not in capsys.readouterr().out and "tokenizer_warning" not in provenance
    words = "moon sun star planet comet orbit galaxy nebula quasar pulsar meteor crater eclipse zenith".split()
    other = train_bpe_tokenizer([" ".join(words[(i * 5 + j) % len(words)] for j in range(9)) + f" {i * 7919}."
                                 for i in range(2000)], vocab_size=len(own))
    assert len(other) == len(own) and tokenizer_fingerprint(other) != tokenizer_fingerprint(own)
    other.save_pretrained(folder)  # the swap: same size, other tokens
    *_, provenance = finetune.load_backbone(finetune.parse_args(argv))
    out = capsys.readouterr().out
    assert f"WARNING: the tokenizer in {folder} is not the one its model was trained with" in out
    assert provenance["tokenizer_warning"] in out


def test_every_download_goes_to_the_cache_folder(tmp_path, monkeypatch, backbone_dir):
    calls = _stand_in_hub(tmp_path, monkeypatch, backbone_dir)
    cache = tmp_path / "cache"
    args = finetune.parse_args(["--huggingface_model_name", "some-user/roberta", "--dataset", "squad",
                                "--path_to_cache_dir", str(cache), "--max_seq_length", "48", "--doc_stride", "12"])
    finetune.check_request(args)
    tokenizer, config, model, provenance = finetune.load_backbone(args)
    examples = finetune.load_examples(args, None)
    assert len(examples["train"]) == 4 and examples["validation"][0]["answers"]["text"] == ["queen"]
    assert {name for name, _ in calls} == {"some-user/roberta", "rajpurkar/squad"}
    assert all(where == str(cache) for _, where in calls)
    for split in ("train", "validation"):  # datasets' own Arrow cache went there too
        assert all(Path(f["filename"]).is_relative_to(cache) for f in examples[split].cache_files)
    assert provenance["weights"].startswith("some-user/roberta (Hugging Face Hub, files in " + str(cache))
    assert model.config.hidden_size == 48 and len(tokenizer) == config.vocab_size


def test_wandb_without_a_login_logs_offline_and_says_so(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.chdir(tmp_path)
    args = finetune.parse_args(["--report_to", "wandb"])
    [note] = finetuning.check_report_to(args)
    assert "no Weights & Biases login" in note and "offline" in note and os.environ["WANDB_MODE"] == "offline"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert finetuning.check_report_to(finetune.parse_args(["--report_to", "wandb"])) == []
    assert "WANDB_MODE" not in os.environ  # logged in (`wandb login` wrote .netrc): left to wandb
    monkeypatch.setenv("WANDB_MODE", "online")
    (tmp_path / "netrc").unlink()
    assert finetuning.check_report_to(finetune.parse_args(["--report_to", "wandb"])) == []  # the user insists


def test_finetune_args_record_what_was_used(tmp_path, squad_files, backbone_dir):
    args = finetune.parse_args(_args(tmp_path, squad_files, backbone_dir))
    record = finetune.recorded_args(args)
    assert "huggingface_model_name" not in record and "dataset" not in record and "demo_world_seed" not in record
    assert record["not_used"]["huggingface_model_name"].startswith("FacebookAI/roberta-base (the backbone came")
    assert record["path_to_pretrained_backbone"] == str(backbone_dir) and "torch" in record["versions"]


def test_help_has_every_flag_with_its_default_the_whole_description_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_code:
        finetune.parse_args(["--help"])
    assert exit_code.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # as if the terminal were infinitely wide
    for phrase in ("pretrained_huggingface", "random", "Windows:", "--doc_stride tokens", "HasAns_exact",
                   "predictions_detail.json", "(default: FacebookAI/roberta-base)", "(default: 128)", "examples:",
                   "python ask.py", "~500 MB"):
        assert phrase in text, phrase
    actions = [a for a in finetune.build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert len(actions) > 25
    for action in actions:
        assert action.help and action.option_strings[0] in text, action
    assert text.count("(default: ") == len(actions)  # every flag says its default
