"""ask.py: answers with their place in the context, SQuAD files into predictions and official scores, bad input in
one line. The model folders are built with the project's own code, as finetune_roberta_qa.py writes them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ask
from qa import compute_squad_metrics
from utils import UsageError

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = " ".join(f"The king of city {i} lived north of the river and built a bridge." for i in range(12))
RUN_SETTINGS = {"max_seq_length": 48, "doc_stride": 12, "n_best_size": 20, "max_answer_length": 30,
                "version_2_with_negative": True}


def _config(tokenizer):
    from model import RobertaConfig

    return RobertaConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                         intermediate_size=72, max_position_embeddings=66)


@pytest.fixture(scope="module")
def run_dir(tiny_tokenizer, tmp_path_factory):
    """A fine-tuning run folder: model and tokenizer at the top, finetune_args.json beside them."""
    import torch

    from model import RobertaForQuestionAnswering

    folder = tmp_path_factory.mktemp("runs") / "qa"
    torch.manual_seed(0)
    RobertaForQuestionAnswering(_config(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    (folder / "finetune_args.json").write_text(json.dumps(RUN_SETTINGS))
    return folder


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory):
    king = "The king of city 3"
    paragraphs = [{"context": CONTEXT, "qas": [
        {"id": "a", "question": "Who lived north?", "answers": [{"text": king, "answer_start": CONTEXT.index(king)}]},
        {"id": "b", "question": "What was built?", "answers": [{"text": "a bridge", "answer_start": 50}]},
        {"id": "c", "question": "Who painted it?", "answers": [], "is_impossible": True}]}]
    path = tmp_path_factory.mktemp("squad") / "dev.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_one_question_prints_the_answer_its_score_and_where_it_is(run_dir, capsys):
    ask.main(["--model", str(run_dir), "--question", "Who lived north?", "--context", CONTEXT, "--no-allow_no_answer"])
    out = capsys.readouterr().out
    answer = re.search(r"^answer: +(.+)$", out, re.M).group(1)
    start, end = map(int, re.search(r"characters (\d+)-(\d+) of the context", out).groups())
    assert CONTEXT[start:end] == answer and f"[{answer}]" in out
    assert re.search(r"^score: +-?\d+\.\d\d \(start \+ end logit\); no-answer probability 0\.\d{3}$", out, re.M)


def test_json_answers_several_questions_with_the_runs_window_settings(run_dir, tmp_path, capsys):
    (tmp_path / "paragraph.txt").write_text(CONTEXT, encoding="utf-8")
    ask.main(["--model", str(run_dir), "--question", "Who lived north?", "--question", "What was built?",
              "--context_file", str(tmp_path / "paragraph.txt"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["question"] for line in lines] == ["Who lived north?", "What was built?"]
    for line in lines:
        assert set(line) == {"question", "answer", "start", "end", "score", "no_answer_probability"}
        assert CONTEXT[line["start"] : line["end"]] == line["answer"]
    args = ask.parse_args(["--model", str(run_dir), "--question", "q"])
    ask.load_model(args)
    assert (args.max_seq_length, args.doc_stride, args.allow_no_answer) == (48, 12, True)  # from finetune_args.json
    args = ask.parse_args(["--model", str(run_dir), "--question", "q", "--doc_stride", "20", "--no-allow_no_answer"])
    ask.load_model(args)
    assert (args.max_seq_length, args.doc_stride, args.allow_no_answer) == (48, 20, False)  # flags win


def test_squad_file_gives_standard_predictions_and_the_official_scores(run_dir, squad_file, tmp_path, capsys):
    output = tmp_path / "predictions.json"
    ask.main(["--model", str(run_dir), "--squad_file", str(squad_file), "--output", str(output)])
    predictions = json.loads(output.read_text())
    assert list(predictions) == ["a", "b", "c"] and all(isinstance(v, str) for v in predictions.values())
    out = capsys.readouterr().out
    scores = json.loads(out.strip().splitlines()[-1])
    references = {"a": ["The king of city 3"], "b": ["a bridge"], "c": []}
    assert scores["exact"] == compute_squad_metrics(predictions, references)["exact"]
    assert scores["HasAns_total"] == 2 and scores["NoAns_total"] == 1 and "SQuAD 2.0: HasAns exact" in out
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        ask.main(["--model", str(run_dir), "--squad_file", str(squad_file), "--output", str(output)])
    ask.main(["--model", str(run_dir), "--squad_file", str(squad_file), "--output", str(output), "--overwrite"])


def _bad_cases(tmp_path, run_dir, squad_file, tiny_tokenizer):
    from model import RobertaForMaskedLM

    backbone = tmp_path / "pretrain" / "final_model"
    RobertaForMaskedLM(_config(tiny_tokenizer)).save_pretrained(backbone)
    tiny_tokenizer.save_pretrained(backbone)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "finetune_args.json").write_text("{}")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    existing = tmp_path / "existing.json"
    existing.write_text("the user's")
    data = json.loads(squad_file.read_text())
    data["data"][0]["paragraphs"][0]["qas"].append(dict(data["data"][0]["paragraphs"][0]["qas"][0]))
    (tmp_path / "dupes.json").write_text(json.dumps(data))
    (tmp_path / "link").symlink_to(run_dir)
    (tmp_path / "other_run").mkdir()
    (tmp_path / "other_run" / "finetune_args.json").write_text("{}")
    (tmp_path / "other_run" / "predictions.json").write_text("the run's")
    model = ["--model", str(run_dir)]
    one = [*model, "--question", "Who?", "--context", CONTEXT]
    squad = [*model, "--squad_file", str(squad_file)]
    return {
        "nothing to answer": (model, "nothing to answer"),
        "no context": ([*model, "--question", "Who?"], "--context TEXT or --context_file FILE"),
        "two contexts": ([*one, "--context_file", "x.txt"], "--context and --context_file both given"),
        "empty question": ([*model, "--question", " ", "--context", CONTEXT], "--question is empty"),
        "empty context": ([*model, "--question", "Who?", "--context", "  "], "--context is empty"),
        "missing context file": ([*model, "--question", "Who?", "--context_file", str(tmp_path / "no.txt")],
                                 "no.txt does not exist"),
        "not utf-8": ([*model, "--question", "Who?", "--context_file", str(tmp_path / "latin1.txt")], "not UTF-8"),
        "question and squad file": ([*one, "--squad_file", str(squad_file)], "both given"),
        "squad file without output": (squad, "--squad_file needs --output"),
        "output exists": ([*squad, "--output", str(existing)], "exists; pass --overwrite"),
        "output is the input": ([*squad, "--output", str(squad_file), "--overwrite"], "is the --squad_file itself"),
        "output without squad file": ([*one, "--output", "p.json"], "--output goes with --squad_file"),
        "duplicate ids": ([*model, "--squad_file", str(tmp_path / "dupes.json"), "--output", str(tmp_path / "o.json")],
                          "question id 'a' appears more than once"),
        "no model": (["--model", str(tmp_path / "nowhere"), "--question", "Who?", "--context", CONTEXT],
                     f"does not exist: there is no folder {tmp_path / 'nowhere'}"),
        "output is the model's config": ([*squad, "--output", str(run_dir / "config.json"), "--overwrite"],
                                         "is a file of the model folder it reads"),
        "output is the model's weights": ([*squad, "--output", str(run_dir / "model.safetensors"), "--overwrite"],
                                          "is a file of the model folder it reads"),
        "output reaches the weights through a link": (
            [*squad, "--output", str(tmp_path / "other_run" / ".." / "link" / "model.safetensors"), "--overwrite"],
            "is a file of the model folder it reads"),
        "output over a run's own predictions": (
            [*squad, "--output", str(tmp_path / "other_run" / "predictions.json"), "--overwrite"],
            "would replace finetune_roberta_qa.py's own output in"),
        "backbone without qa head": (["--model", str(backbone), "--question", "Who?", "--context", CONTEXT],
                                     "has no question-answering head"),
        "pretraining run folder": (["--model", str(backbone.parent), "--question", "Who?", "--context", CONTEXT],
                                   "is a train.py run folder"),
        "unfinished run": (["--model", str(unfinished), "--question", "Who?", "--context", CONTEXT],
                           "holds no model yet"),
        "stride not below length": ([*one, "--doc_stride", "48"], "--doc_stride 48 must be below --max_seq_length 48"),
        "longer than the model": ([*one, "--max_seq_length", "100"], "longer than the model allows (64 tokens)"),
        "no gpu": ([*one, "--device", "cuda"], "no CUDA GPU"),
    }


BAD = ["nothing to answer", "no context", "two contexts", "empty question", "empty context", "missing context file",
       "not utf-8", "question and squad file", "squad file without output", "output exists", "output is the input",
       "output without squad file", "duplicate ids", "no model", "backbone without qa head", "pretraining run folder",
       "unfinished run", "stride not below length", "longer than the model", "no gpu", "output is the model's config",
       "output is the model's weights", "output reaches the weights through a link",
       "output over a run's own predictions"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_clear_error(case, tmp_path, run_dir, squad_file, tiny_tokenizer, capsys):
    import torch

    if case == "no gpu" and torch.cuda.is_available():
        pytest.skip("there is a GPU here")
    args, expected = _bad_cases(tmp_path, run_dir, squad_file, tiny_tokenizer)[case]
    with pytest.raises(UsageError) as error:
        ask.main(args)
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert capsys.readouterr().out == ""  # nothing answered, nothing printed
    assert (tmp_path / "existing.json").read_text() == "the user's" and not (tmp_path / "o.json").exists()
    assert (tmp_path / "other_run" / "predictions.json").read_text() == "the run's"
    assert json.loads((run_dir / "config.json").read_text())["model_type"] == "roberta"


def test_a_model_whose_tokenizer_was_swapped_warns(run_dir, tiny_tokenizer, tmp_path, capsys):
    import shutil

    from model_folder import TOKENIZER_RECORD, record_tokenizer

    folder = tmp_path / "qa"
    shutil.copytree(run_dir, folder)
    record_tokenizer(folder, tiny_tokenizer)  # as finetune_roberta_qa.py records it
    ask.main(["--model", str(folder), "--question", "Who lived north?", "--context", CONTEXT])
    assert "warning" not in capsys.readouterr().err
    record = json.loads((folder / TOKENIZER_RECORD).read_text())
    (folder / TOKENIZER_RECORD).write_text(json.dumps({**record, "fingerprint": "0123456789abcdef"}))
    ask.main(["--model", str(folder), "--question", "Who lived north?", "--context", CONTEXT])
    assert f"warning: the tokenizer in {folder} is not the one its model was trained with" in capsys.readouterr().err


def test_a_mistyped_local_model_says_the_path_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=f"--model runs/nonexistent does not exist: there is no folder "
                                         f"{tmp_path / 'runs' / 'nonexistent'}, and as a Hub id"):
        ask.main(["--model", "runs/nonexistent", "--question", "Who?", "--context", CONTEXT])


def test_an_unwritable_output_is_refused_before_the_first_question(run_dir, squad_file, tmp_path, monkeypatch,
                                                                    capsys):
    import folders

    real_access = folders.os.access
    monkeypatch.setattr(folders.os, "access", lambda path, mode: False if Path(path) == tmp_path else
                        real_access(path, mode))  # tests run as root, whom no permission stops
    with pytest.raises(UsageError, match=f"--output cannot be written: {tmp_path} is read-only for you"):
        ask.main(["--model", str(run_dir), "--squad_file", str(squad_file), "--output", str(tmp_path / "p.json")])
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_output_into_the_model_is_refused_on_the_command_line_and_the_model_still_loads(run_dir, squad_file):
    for name in ("config.json", "model.safetensors", "predictions.json"):
        result = subprocess.run([sys.executable, str(ROOT / "ask.py"), "--model", str(run_dir), "--squad_file",
                                 str(squad_file), "--output", str(run_dir / name), "--overwrite"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "model folder it reads" in \
            result.stderr, result.stderr
    ask.load_model(ask.parse_args(["--model", str(run_dir), "--question", "q"]))


def test_bad_input_on_the_real_command_line_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "ask.py"), "--model", str(tmp_path / "nowhere"),
                             "--question", "Who?"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "error: --question needs the text that holds the answer: --context TEXT or " \
                                    "--context_file FILE"


def test_help_says_every_default_and_shows_examples(capsys):
    with pytest.raises(SystemExit):
        ask.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 32)" in text and "(default: auto)" in text and "examples:" in text
    assert "pipeline(\"question-answering\")" in text and "--squad_file" in text
