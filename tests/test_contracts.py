"""The contracts between modules (CONTRIBUTING.md): each folder format is written by its writer and read back by every
reader of the repository, so that a file or a key renamed on one side fails here; each format's names are spelled by
its owner alone; the one import rule; one exit for a full disk.

The store is made by prepare_data.py, the run folder by train.py through its command line (slow), the model folder by
model_folder.save, the QA run folder's records by qa_run_folder's writers; every reader is the one the scripts use.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from conftest import build_store, sentences
from safetensors import SafetensorError

import ask
import batches
import checkpoints as ckpt
import classification_run_folder
import finetune_roberta_qa as finetune
import finetuning
import folders
import init_from
import model_folder
import prepare_data
import qa_run_folder
import run_folder
import store as store_module
from metrics import LossWatch
from model import RobertaConfig, RobertaForMaskedLM
from store import STORE, open_store
from tokenization import tokenizer_identity, tokenizer_mismatch, train_bpe_tokenizer
from utils import EXIT_FAILED, run_cli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import code_stats  # noqa: E402

# The imports inside functions that the rule allows (CONTRIBUTING.md), by module: optional dependencies, the
# training-only libraries of the modules the notebook imports, the heavy libraries of modules imported everywhere.
ALLOWED_INNER_IMPORTS = {("store.py", "datasets"), ("corpora.py", "datasets"), ("batches.py", "accelerate"),
                         ("metrics.py", "matplotlib"), ("utils.py", "torch"), ("tokenization.py", "transformers"),
                         ("checkpoints.py", "deepspeed"),
                         ("utils.py", "packaging"),
                         ("classification.py", "datasets")}  # load_data_file: classify.py and the notebook start light


# ----------------------------------------------------------------------------------------------------------------
# Owners and rules
# ----------------------------------------------------------------------------------------------------------------


def test_each_folder_format_is_spelled_by_its_owner_alone():
    owners = {"data store": "store.py", "pretraining run folder": "run_folder.py", "checkpoint": "checkpoints.py",
              "model folder": "model_folder.py", "QA run folder": "qa_run_folder.py",
              "classification run folder": "classification_run_folder.py"}
    assert code_stats.naming_modules(code_stats.python_files(ROOT)) == {kind: [owner] for kind, owner in owners.items()}


def test_imports_inside_functions_are_only_the_allowed_ones():
    found = set()
    for path in code_stats.python_files(ROOT):
        for function in code_stats.functions(ast.parse(path.read_text())):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                    found |= {(path.name, name.split(".")[0]) for name in names}
    assert found <= ALLOWED_INNER_IMPORTS, found - ALLOWED_INNER_IMPORTS


def test_the_notebook_modules_import_no_training_library_and_the_scripts_start_light():
    # transformers 5.17 (requirements.txt's floor) itself imports accelerate with AutoTokenizer when it is installed:
    # only what our modules add counts.
    code = "import sys; from transformers import AutoTokenizer; libraries = {'datasets', 'accelerate'}; " \
           "before = libraries & set(sys.modules); import batches, corpora, model, qa, store, tokenization; " \
           "print(sorted(libraries & set(sys.modules) - before), 'store_writer' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["[]", "False"], result.stderr  # nor the store writer's fork hook
    code = "import sys, prepare_data; print('torch' in sys.modules); import model; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_a_full_disk_is_one_line_and_the_same_exit_from_every_script(monkeypatch, capsys, tmp_path):
    def fails(error):
        def main(*args):
            raise error
        return main

    for error in (OSError(28, "No space left on device"), SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)")):
        with pytest.raises(SystemExit) as end:
            run_cli(fails(error))  # a full disk no script foresaw
        assert end.value.code == EXIT_FAILED
        err = capsys.readouterr().err
        assert err.startswith("error: the disk is full: ") and err.count("\n") == 1, err
    with pytest.raises(RuntimeError):  # anything else is a bug and keeps its traceback
        run_cli(fails(RuntimeError("bug")))

    (tmp_path / "corpus.txt").write_text(sentences(50) + "\n")  # prepare_data.py's own line for it
    monkeypatch.setattr(prepare_data, "write_record", fails(OSError(28, "No space left on device", "x.json")))
    monkeypatch.setattr(sys, "argv", ["prepare_data.py", "--text_files", str(tmp_path / "corpus.txt"),
                                      "--train_tokenizer", "300", "--context_length", "16", "--num_workers", "1",
                                      "--path_to_data_store", str(tmp_path / "store")])
    with pytest.raises(SystemExit) as end:
        run_cli(prepare_data.cli)
    assert end.value.code == EXIT_FAILED and not (tmp_path / "store").exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("error: the disk is full: No space left on device: x.json; the work folder is removed")


# ----------------------------------------------------------------------------------------------------------------
# The store: prepare_data.py writes, open_store, batches, --init_from and the README read
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer_dir):
    return build_store(tmp_path_factory.mktemp("store"), tiny_tokenizer_dir, 13)


def test_the_store_as_written_is_what_every_reader_reads(store, tiny_tokenizer, tiny_tokenizer_dir):
    opened = open_store(store)
    record = json.loads((store / store_module.STORE_RECORD).read_text())
    assert opened.block_length == 13 == record[store_module.RECORD_BLOCK_LENGTH]
    train_state = json.loads((store / store_module.TRAIN / store_module.SPLIT_STATE).read_text())
    assert opened.fingerprint == train_state["_fingerprint"] and len(opened.fingerprint) == 16  # what resume compares
    assert record[store_module.RECORD_TOKENIZER]["fingerprint"] == tokenizer_identity(tiny_tokenizer)["fingerprint"]
    assert opened.vocab_size == len(tiny_tokenizer)
    assert tokenizer_mismatch(opened.tokenizer, record[store_module.RECORD_TOKENIZER]) is None
    assert opened.has_own_tokenizer and opened.made_with == str(tiny_tokenizer_dir)  # --hf_model_name
    assert opened.command.startswith("python prepare_data.py --text_files")
    blocks = batches.PackedBlocks(opened.data["train"]).__getitems__([0, 2, 1])
    assert blocks.shape == (3, 13) and blocks.dtype == torch.int32
    assert blocks[:, 0].eq(tiny_tokenizer.bos_token_id).all() and blocks[:, -1].eq(tiny_tokenizer.eos_token_id).all()
    retokenize = init_from.fitting_prepare_command(opened.command, opened.path, "org/model", opened.block_length)
    assert "--context_length 13" in retokenize and "--hf_model_name org/model" in retokenize
    assert record[store_module.RECORD_COMMAND] in (store / store_module.STORE_README).read_text()
    assert sorted(p.name for p in store.iterdir()) == sorted(STORE.made)  # --overwrite knows every entry


# ----------------------------------------------------------------------------------------------------------------
# A model folder: model_folder.save writes; ours, transformers, the tokenizer rule and --init_from read
# ----------------------------------------------------------------------------------------------------------------


def test_a_model_folder_as_saved_is_what_every_reader_reads(tmp_path, tiny_tokenizer):
    torch.manual_seed(5)
    config = RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=80, max_position_embeddings=15)
    model = RobertaForMaskedLM(config).eval()
    folder = tmp_path / "model"
    model_folder.save(folder, model, tiny_tokenizer)
    assert {p.name for p in folder.iterdir()} <= set(model_folder.WRITTEN) <= set(qa_run_folder.QA_RUN.made)
    ids = torch.tensor([[0, 5, 9, 11, 2]])
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    ours = RobertaForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert model_folder.recorded_tokenizer(folder) == tokenizer_identity(tiny_tokenizer)
    reloaded = transformers.AutoTokenizer.from_pretrained(folder)
    assert model_folder.tokenizer_swapped(folder, reloaded) is None
    assert tokenizer_mismatch(reloaded, model_folder.recorded_tokenizer(folder), config) is None
    assert "lm_head.dense.weight" in model_folder.weight_names(folder)
    assert model_folder.weights_file(folder).name == model_folder.SAFETENSORS_FILE  # what provenance hashes
    words = "moon sun star planet comet orbit galaxy nebula quasar pulsar meteor crater eclipse zenith".split()
    other = train_bpe_tokenizer([" ".join(words[(i * 5 + j) % len(words)] for j in range(9)) + f" {i * 7919}."
                                 for i in range(2000)], vocab_size=len(tiny_tokenizer))
    assert len(other) == len(tiny_tokenizer) and "was recorded" in model_folder.tokenizer_swapped(folder, other)


# ----------------------------------------------------------------------------------------------------------------
# The QA run folder's records: finetune_roberta_qa.py writes; ask.py and demo.py read
# ----------------------------------------------------------------------------------------------------------------


def test_the_qa_run_records_are_what_ask_and_demo_read(tmp_path):
    args = finetune.parse_args(["--dataset", "demo", "--max_seq_length", "48", "--doc_stride", "12",
                                "--n_best_size", "7", "--version_2_with_negative"])
    run_dir = tmp_path / "qa"
    run_dir.mkdir()
    qa_run_folder.write_run_record(run_dir, finetune.recorded_args(args))
    checkpoint = run_dir / qa_run_folder.CHECKPOINTS_DIR / "checkpoint-8"
    checkpoint.mkdir(parents=True)
    for folder in (run_dir, checkpoint):  # ask.py --model: the run folder, or one of its Trainer checkpoints
        asked = ask.parse_args(["--model", str(folder), "--question", "q"])
        ask.resolve_settings(asked, qa_run_folder.run_record(folder), RobertaConfig())
        assert (asked.max_seq_length, asked.doc_stride, asked.n_best_size, asked.allow_no_answer) == (48, 12, 7, True)
    assert qa_run_folder.unfinished_run(run_dir)  # a record and no model yet
    validation = {"id": ["a", "b"], "question": ["Who?", "When?"], "answers": [{"text": ["Ann"]}, {"text": []}]}
    answers = {"a": {"answer": "Ann", "start": 0, "score": 1.5, "no_answer_probability": 0.1},
               "b": {"answer": "", "start": 0, "score": 0.2, "no_answer_probability": 0.9}}
    trainer = SimpleNamespace(last_scores={"exact_match": 100.0, "f1": 100.0, "exact": 100.0}, last_answers=answers,
                              state=SimpleNamespace(log_history=[], global_step=8))
    qa_run_folder.write_results(run_dir, args, trainer, validation, {"eval_samples": 2}, {"weights": "w"},
                                {"source": "demo"})
    results = qa_run_folder.read_results(run_dir)  # what demo.py's summary prints
    assert (results["exact_match"], results["f1"], results["no_answer_predictions"]) == (100.0, 100.0, 1)
    assert {p.name for p in run_dir.iterdir()} <= set(qa_run_folder.QA_RUN.made)


# ----------------------------------------------------------------------------------------------------------------
# The pretraining run folder: train.py writes (its command line); resume, fine-tuning, --init_from, demo.py read
# ----------------------------------------------------------------------------------------------------------------


def train_cli(store, workdir, name, *extra, check=True):
    command = [sys.executable, str(ROOT / "train.py"), "--path_to_prepped_data", str(store), "--working_directory",
               str(workdir), "--experiment_name", name, "--num_transformer_blocks", "2", "--embedding_dimension",
               "48", "--num_attention_heads", "3", "--per_gpu_batch_size", "3", "--num_workers", "0", "--seed", "7",
               "--num_training_steps", "4", "--num_warmup_steps", "1", "--logging_steps", "2",
               "--evaluation_interval", "2", "--checkpoint_interval", "2", *extra]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    """A finished train.py run on the store, given no --context_length (the store's block length is used), and started
    with --resume_from_checkpoint latest, as a preemptible job always passes it (a fresh start: no checkpoint yet)."""
    workdir = tmp_path_factory.mktemp("runs")
    train_cli(store, workdir, "run", "--resume_from_checkpoint", "latest")
    return workdir / "run"


@pytest.mark.slow
def test_the_run_folder_as_train_writes_it_is_what_every_reader_reads(run, store):
    opened = open_store(store)
    assert {p.name for p in run.iterdir()} <= set(run_folder.PRETRAINING_RUN.made)  # --overwrite knows them all
    assert run_folder.is_run_folder(run) and "pretraining run folder" in ckpt.not_a_checkpoint(run)
    recorded = run_folder.read_args(run)
    assert recorded["args"]["context_length"] == 13 and recorded["args"]["path_to_prepped_data"] == str(store)
    evals = run_folder.eval_records(run)  # what demo.py prints, and LossWatch starts from
    assert [r["step"] for r in evals] == [0, 2, 4] and {"eval_loss", "eval_accuracy"} <= set(evals[0])
    watch = LossWatch()
    watch.start_from(run_folder.read_metrics(run))
    assert watch.start == evals[0]["eval_loss"]
    assert run_folder.curves_file(run).is_file()
    latest = ckpt.resolve_resume("latest", run_folder.checkpoints_dir(run))  # what --resume_from_checkpoint reads
    assert latest == run_folder.step_dir(run_folder.checkpoints_dir(run), 4) and ckpt.checkpoint_problem(latest) is None
    state = ckpt.read_state(latest)
    assert state.step == 4 and state.args["store_fingerprint"] == opened.fingerprint  # the key resume compares
    assert ckpt.check_resume(latest, {**state.args, "num_training_steps": 6}, model_folder.read_config(latest),
                             opened.fingerprint, 1, opened.tokenizer) == ["--num_training_steps 4 -> 6"]
    for folder in (latest, run_folder.final_model_dir(run)):  # model folders: fine-tuning and --init_from read them
        assert model_folder.check(folder) == folder
        assert model_folder.recorded_tokenizer(folder) == tokenizer_identity(opened.tokenizer)
        finetuning.check_backbone(finetune.parse_args(["--pretrained_backbone", "pretrained", "--dataset", "demo",
                                                       "--path_to_pretrained_backbone", str(folder)]))
    with pytest.raises(ValueError, match=f"is a train.py run folder, not a model: pass {run / 'final_model'}"):
        model_folder.check(run)
    assert not list(run_folder.checkpoints_dir(run).glob("tmp-*")) and not run_folder.final_model_tmp(run).exists()


@pytest.mark.slow
def test_resume_onto_another_store_is_refused_in_one_line_naming_both_stores(run, store, tmp_path):
    """The regression of the third round: train.py read `content_hash`, the store wrote `fingerprint`, and a run
    resumed onto another store whose tokenizer had the same size trained on ids of another vocabulary."""
    (tmp_path / "other.txt").write_text(sentences(300, offset=5000) + "\n")
    words = "moon sun star planet comet orbit galaxy nebula quasar pulsar meteor crater eclipse zenith".split()
    tokenizer = train_bpe_tokenizer([" ".join(words[(i * 5 + j) % len(words)] for j in range(9)) + f" {i * 7919}."
                                     for i in range(2000)], vocab_size=len(open_store(store).tokenizer))
    tokenizer.save_pretrained(tmp_path / "same_size")
    assert len(tokenizer) == open_store(store).vocab_size
    for tokenizer_dir, name, reason in [
            (tmp_path / "same_size", "another_vocabulary", f"another tokenizer (it was trained on the store {store}; "
             f"the tokenizer of --path_to_prepped_data {tmp_path / 'another_vocabulary'} has fingerprint "),
            (store / store_module.STORE_TOKENIZER_DIR, "same_vocabulary", "another store's content (it was trained "
             f"on the store {store}, fingerprint {open_store(store).fingerprint}; --path_to_prepped_data ")]:
        prepare_data.main(["--text_files", str(tmp_path / "other.txt"), "--hf_model_name", str(tokenizer_dir),
                           "--context_length", "13", "--num_workers", "1",
                           "--path_to_data_store", str(tmp_path / name)])
        before = sorted(p for p in run.rglob("*"))
        result = train_cli(tmp_path / name, run.parent, "run", "--resume_from_checkpoint", "latest",
                           "--num_training_steps", "6", check=False)
        assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and line.startswith("error: checkpoint ") and reason in line, line
        assert f"--path_to_prepped_data {tmp_path / name} has fingerprint" in line  # the other store, named
        assert sorted(p for p in run.rglob("*")) == before  # nothing touched


@pytest.mark.slow
@pytest.mark.parametrize("error", ["SafetensorError", "OSError"])
def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing_partial(store, tmp_path, error):
    for at, what in (("2", "could not write checkpoint step_2 to "), ("final", "could not write the final model to ")):
        env_run = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), "--path_to_prepped_data", str(store), "--working_directory",
             str(tmp_path), "--experiment_name", f"full_{at}", "--num_transformer_blocks", "2",
             "--embedding_dimension", "48", "--num_attention_heads", "3", "--per_gpu_batch_size", "3",
             "--num_workers", "0", "--num_training_steps", "4", "--num_warmup_steps", "1", "--checkpoint_interval",
             "2", "--evaluation_interval", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TRAIN_TEST_DISK_FULL_AT_STEP": at,
                 "TRAIN_TEST_DISK_FULL_ERROR": error})
        assert env_run.returncode == EXIT_FAILED, env_run.stderr[-3000:]
        line = env_run.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: the disk is full: {what}") and "nothing partial was left behind" in line, line
        assert "Traceback" not in env_run.stderr
        run = tmp_path / f"full_{at}"
        assert not list(run_folder.checkpoints_dir(run).glob("tmp-*")) and not run_folder.final_model_tmp(run).exists()
        assert not run_folder.final_model_dir(run).exists()
        if at == "final":  # the weights are safe in the last checkpoint, which the line names
            assert str(run_folder.step_dir(run_folder.checkpoints_dir(run), 4)) in line


def test_folder_kinds_are_declared_by_their_owners():
    assert STORE.records == (store_module.STORE_RECORD,)
    assert run_folder.PRETRAINING_RUN.records == (run_folder.ARGS_FILE, run_folder.METRICS_FILE)
    assert qa_run_folder.QA_RUN.records == (qa_run_folder.RUN_RECORD,)
    assert classification_run_folder.CLASSIFICATION_RUN.records == (classification_run_folder.RUN_RECORD,)
    assert not hasattr(folders, "STORE") and not hasattr(folders, "QA_RUN")
