"""train.py: optimizer groups, data order, checkpoints, and end-to-end runs through the real command line.

The runs use a tiny model (2 layers, hidden 48, 3 heads, blocks of 16) on a store built here with `datasets`
from the session's tiny tokenizer. Subprocesses get OMP_NUM_THREADS=1: on a busy 2-core machine, two
OpenMP threads spinning against each other make each step ~50x slower.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from utils import UsageError

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 16
TINY = ["--context_length", str(CONTEXT), "--num_transformer_blocks", "2", "--embedding_dimension", "48",
        "--num_attention_heads", "3", "--per_gpu_batch_size", "3", "--num_workers", "0", "--seed", "7"]
# Checkpoints at 4 and 8 inside logging windows of 3 updates, so a resume must carry a half-filled window.
RESUMABLE = ["--num_training_steps", "12", "--gradient_accumulation_steps", "2", "--num_warmup_steps", "3",
             "--learning_rate", "3e-3", "--logging_steps", "3", "--evaluation_interval", "5",
             "--checkpoint_interval", "4"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer):
    """A data store as prepare_data.py writes it: packed <s> ... </s> blocks, train/test, tokenizer/ beside."""
    import datasets

    words = "the a of on in river city king queen born died lived wrote painted built north south".split()
    ids = []
    for i in range(1500):
        text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) + f" {i}."
        ids += tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    body = CONTEXT - 2
    blocks = [[tiny_tokenizer.bos_token_id, *ids[k * body:(k + 1) * body], tiny_tokenizer.eos_token_id]
              for k in range(len(ids) // body)]
    path = tmp_path_factory.mktemp("store")
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"input_ids": blocks[:240]}),
                         test=datasets.Dataset.from_dict({"input_ids": blocks[240:263]})).save_to_disk(path)
    tiny_tokenizer.save_pretrained(path / "tokenizer")
    return path


def run_train(store, workdir, name, *extra, env=None, launcher=None, check=True):
    command = [*(launcher or [sys.executable]), str(ROOT / "train.py"), "--path_to_prepped_data", str(store),
               "--working_directory", str(workdir), "--experiment_name", name, *TINY, *extra]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_second", "mfu")} for r in records]


def assert_same_weights(folder_a, folder_b):
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


# ----------------------------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------------------------


def test_weight_decay_only_on_matrices():
    from model import RobertaConfig, RobertaForMaskedLM

    model = RobertaForMaskedLM(RobertaConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2,
                                             num_attention_heads=3, intermediate_size=80, max_position_embeddings=20))
    decay, no_decay = train.param_groups(model, 0.01)
    name = {id(p): n for n, p in model.named_parameters()}
    decayed, not_decayed = {name[id(p)] for p in decay["params"]}, {name[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {"roberta.embeddings.word_embeddings.weight", "roberta.encoder.layer.1.attention.self.query.weight",
            "roberta.encoder.layer.0.intermediate.dense.weight", "lm_head.dense.weight"} <= decayed
    assert {"roberta.embeddings.LayerNorm.weight", "roberta.encoder.layer.1.output.LayerNorm.bias",
            "roberta.encoder.layer.0.attention.self.query.bias", "lm_head.bias", "lm_head.layer_norm.weight"
            } <= not_decayed
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    # Every parameter exactly once (the decoder tied to the word embeddings is not a second parameter).
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert not decayed & not_decayed


def test_optimizer_and_schedule_follow_the_flags():
    from model import RobertaConfig, RobertaForMaskedLM

    model = RobertaForMaskedLM(RobertaConfig(vocab_size=50, hidden_size=12, num_hidden_layers=1,
                                             num_attention_heads=3, intermediate_size=20, max_position_embeddings=10))
    args = train.parse_args(["--path_to_prepped_data", "x", "--learning_rate", "1e-3", "--adam_beta2", "0.97",
                             "--adam_epsilon", "1e-7", "--num_warmup_steps", "4", "--num_training_steps", "8"])
    optimizer, scheduler = train.build_optimizer(model, args, torch.device("cpu"))
    assert optimizer.defaults["betas"] == (0.9, 0.97) and optimizer.defaults["eps"] == 1e-7
    rates = []
    for _ in range(8):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])  # linear warmup, decay


def test_epoch_batches_partition_reshuffle_and_skip():
    def batches(process, epoch=0, start=0, seed=1):
        return list(train.EpochBatches(50, 3, 2, process, seed=seed, epoch=epoch, start=start))

    first, second = batches(0), batches(1)
    assert len(first) == len(second) == 50 // 6  # the incomplete last global batch is dropped
    assert all(len(b) == 3 for b in first + second)
    seen = [i for b in first + second for i in b]
    assert len(set(seen)) == len(seen)  # the processes never share a block
    assert batches(0) == first  # the order is a function of (seed, epoch) alone: resumable
    assert batches(0, epoch=1) != first and batches(0, seed=2) != first
    assert batches(0, start=3) == first[3:]  # resuming skips the consumed global batches


def test_latest_checkpoint_ignores_incomplete_folders(tmp_path):
    for name, complete in [("step_2", True), ("step_10", True), ("step_12", False), ("tmp-step_14", True),
                           ("step_9x", True)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        if complete:
            (tmp_path / name / "trainer_state.json").write_text("{}")
    assert train.find_latest_checkpoint(tmp_path) == tmp_path / "step_10"
    assert train.find_latest_checkpoint(tmp_path / "nothing_here") is None


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in [1, 2, 3, 4, 5]:
        (tmp_path / f"step_{step}").mkdir()
        (tmp_path / f"step_{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "step_6").mkdir()  # incomplete: neither counted nor deleted
    (tmp_path / "tmp-step_7").mkdir()  # left by a crash mid-write
    train.rotate_checkpoints(tmp_path, num_keep=2, keep=tmp_path / "step_5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_4", "step_5", "step_6"]


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one clear line, before any model is built
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--context_length", "32"], "does not match the store's blocks of 16"),
    (["--embedding_dimension", "50"], "does not divide by --num_attention_heads 3"),
    (["--masking_probability", "0"], "--masking_probability must be in \\(0, 1\\)"),
    (["--masking_probability", "1.5"], "--masking_probability must be in \\(0, 1\\)"),
    (["--num_keep_checkpoints", "1"], "at least 2"),
    (["--resume_from_checkpoint", "/no/such/step_5"], "--resume_from_checkpoint /no/such/step_5 does not exist"),
])
def test_bad_arguments(store, tmp_path, extra, message):
    args = train.parse_args(["--path_to_prepped_data", str(store), "--working_directory", str(tmp_path),
                             *TINY, *extra])
    with pytest.raises(UsageError, match=message):
        train.validate(args)


def test_bad_paths(store, tmp_path):
    def check(message, *argv):
        args = train.parse_args(["--working_directory", str(tmp_path / "work"), "--path_to_prepped_data",
                                 str(store), *TINY, *argv])
        with pytest.raises(UsageError, match=message):
            train.validate(args)

    check("does not exist", "--path_to_prepped_data", str(tmp_path / "missing"))
    (tmp_path / "not_a_store").mkdir()
    check("is not a data store", "--path_to_prepped_data", str(tmp_path / "not_a_store"))
    (tmp_path / "a_file").write_text("")
    check("cannot be written", "--working_directory", str(tmp_path / "a_file" / "runs"))
    (tmp_path / "cut_off").mkdir()
    check("not a complete checkpoint", "--resume_from_checkpoint", str(tmp_path / "cut_off"))
    (tmp_path / "work" / "taken").mkdir(parents=True)
    (tmp_path / "work" / "taken" / "metrics.jsonl").write_text("")
    check("already holds a run", "--experiment_name", "taken")


def test_bad_input_exits_2_with_one_line(store, tmp_path):
    result = run_train(tmp_path / "missing_store", tmp_path, "x", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: --path_to_prepped_data")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------------------
# End-to-end runs
# ----------------------------------------------------------------------------------------------------------------


def test_cli_run_learns_and_writes_its_folder(store, tmp_path, tiny_tokenizer):
    run_train(store, tmp_path, "learn", "--num_training_steps", "60", "--num_warmup_steps", "6",
              "--learning_rate", "3e-3", "--logging_steps", "10", "--evaluation_interval", "30",
              "--checkpoint_interval", "30", "--log_wandb", env={"WANDB_MODE": "offline"})
    run = tmp_path / "learn"
    records = metrics(run)
    evals = [r for r in records if "eval_loss" in r]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in evals] == [0, 30, 60] and [r["step"] for r in steps] == [10, 20, 30, 40, 50, 60]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.0, evals
    # ~46 predicted test tokens: after 60 updates the accuracy is a handful of them (seeds 1-6 give 2-11%, before
    # and after the masking draw changed), so only its rise from the untrained model's is checked.
    assert evals[-1]["eval_accuracy"] > evals[0]["eval_accuracy"], evals
    assert all(r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"])) for r in evals)
    assert all({"step", "loss", "lr", "grad_norm", "tokens_per_second"} <= r.keys() for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "args.json").read_text())["summary"]["global_batch_size"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_30", "step_60"]
    assert any((run / "wandb").iterdir())

    # The evaluation is the mean over every predicted token of the test split: recompute it from final_model.
    from model import RobertaForMaskedLM

    model = RobertaForMaskedLM.from_pretrained(run / "final_model").eval()
    args = train.parse_args(["--path_to_prepped_data", str(store), *TINY])
    batches = train.make_eval_batches(train.open_store(str(store), CONTEXT)["test"], tiny_tokenizer, args, 1, 0)
    inputs, labels = torch.cat([b[0] for b in batches]).long(), torch.cat([b[1] for b in batches]).long()
    with torch.no_grad():
        loss = model(inputs, labels=labels).loss.item()
    assert evals[-1]["eval_tokens"] == (labels != -100).sum().item()
    assert evals[-1]["eval_loss"] == pytest.approx(loss, rel=1e-5)

    # The checkpoint contract: transformers' pipeline, our QA model and AutoTokenizer load these folders.
    import transformers

    predictions = transformers.pipeline("fill-mask", model=str(run / "final_model"))("the king <mask> in the city")
    assert len(predictions) == 5 and all("<" not in p["token_str"] for p in predictions)
    from model import RobertaForQuestionAnswering

    RobertaForQuestionAnswering.from_pretrained(run / "checkpoints" / "step_30")
    transformers.AutoTokenizer.from_pretrained(run / "checkpoints" / "step_30")


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    """An uninterrupted run to compare resumed runs with (DataLoader workers on, as resumed runs have not)."""
    workdir = tmp_path_factory.mktemp("reference")
    run_train(store, workdir, "ref", *RESUMABLE, "--num_workers", "1")
    return workdir / "ref"


def test_sigkill_then_resume_equals_uninterrupted(store, tmp_path, reference):
    killed = run_train(store, tmp_path, "run", *RESUMABLE, env={"TRAIN_TEST_SIGNAL_AT_STEP": "7:KILL"}, check=False)
    assert killed.returncode == -9
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4"]
    assert max(r["step"] for r in metrics(tmp_path / "run")) == 6  # logged past the checkpoint before dying
    # Half-written checkpoints, as a kill during saving leaves them: resume must not pick either.
    (checkpoints / "step_8").mkdir()
    (checkpoints / "step_8" / "config.json").write_text("{}")
    (checkpoints / "tmp-step_8").mkdir()
    (checkpoints / "tmp-step_8" / "trainer_state.json").write_text("{}")

    resumed = run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest")
    assert f"resumed from {checkpoints / 'step_4'} at step 4" in resumed.stdout
    assert_same_weights(reference / "final_model", tmp_path / "run" / "final_model")
    assert without_timing(metrics(tmp_path / "run")) == without_timing(metrics(reference))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_12", "step_4", "step_8"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(store, tmp_path, reference):
    stopped = run_train(store, tmp_path, "run", *RESUMABLE, env={"TRAIN_TEST_SIGNAL_AT_STEP": "5:TERM"})
    assert "SIGTERM" in stopped.stdout and not (tmp_path / "run" / "final_model").exists()
    assert train.find_latest_checkpoint(tmp_path / "run" / "checkpoints") == tmp_path / "run" / "checkpoints" / "step_5"
    run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest")
    assert_same_weights(reference / "final_model", tmp_path / "run" / "final_model")
    assert without_timing(metrics(tmp_path / "run")) == without_timing(metrics(reference))

    # A checkpoint of another architecture is refused up front, naming the difference.
    args = train.parse_args(["--path_to_prepped_data", str(store), "--working_directory", str(tmp_path), *TINY,
                             "--embedding_dimension", "60", "--resume_from_checkpoint",
                             str(reference / "checkpoints" / "step_12")])
    with pytest.raises(UsageError, match="hidden_size 48 \\(flags give 60\\)"):
        train.validate(args)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path):
    result = run_train(store, tmp_path, "nan", "--num_training_steps", "6", "--num_warmup_steps", "0",
                       "--learning_rate", "1e30", "--max_grad_norm", "0", "--logging_steps", "1",
                       "--checkpoint_interval", "1", check=False)
    assert result.returncode == 1
    assert "error: the training loss became nan by step 2" in result.stderr
    assert str(tmp_path / "nan" / "checkpoints" / "step_1") in result.stderr
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir()) == ["step_1"]


def test_two_processes_write_everything_once(store, tmp_path, reference):
    # `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (it needs mpirun
    # for more); torchrun through --multi_gpu with ACCELERATE_USE_CPU=1 runs two real DDP processes on gloo.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = run_train(store, tmp_path, "ddp", *RESUMABLE, launcher=launcher, env={"ACCELERATE_USE_CPU": "1"})
    assert "processes: 2 on cpu" in result.stdout
    assert result.stdout.count("global batch size 12") == 1  # 3 per process x 2 accumulation x 2 processes
    assert result.stdout.count("step       6/12 |") == 1
    records = metrics(tmp_path / "ddp")
    train_steps = [r["step"] for r in records if "loss" in r]
    eval_steps = [r["step"] for r in records if "eval_loss" in r]
    assert train_steps == [3, 6, 9, 12] and eval_steps == [0, 5, 10, 12]
    # Same initial weights and the same fixed evaluation masks, however many processes share the test split.
    first_eval = next(r for r in metrics(reference) if "eval_loss" in r)
    assert records[0]["eval_tokens"] == first_eval["eval_tokens"]
    assert records[0]["eval_loss"] == pytest.approx(first_eval["eval_loss"], rel=1e-5)
    assert (tmp_path / "ddp" / "final_model" / "model.safetensors").is_file()
    step_12 = tmp_path / "ddp" / "checkpoints" / "step_12"
    assert (step_12 / "process_0.pt").is_file() and (step_12 / "process_1.pt").is_file()
