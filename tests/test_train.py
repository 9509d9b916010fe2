"""train.py: optimizer groups, schedule, data order, resume rules and bad input in process (fast); end-to-end runs
through the real command line (slow): learning, exact resume after SIGKILL/SIGTERM/Ctrl-C, changed flags on
resume, damaged checkpoints, a full disk, the NaN stop, two runs into one folder, two processes.

The runs use a tiny model (2 layers, hidden 48, 3 heads, blocks of 16) on a store that prepare_data.py builds
from generated text with the session's tiny tokenizer. Subprocesses get OMP_NUM_THREADS=1: on a busy 2-core
machine, two OpenMP threads spinning against each other make each step ~50x slower.
"""

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_store, sentences
from safetensors.torch import load_file

import batches
import checkpoints as ckpt
import distributed
import prepare_data
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
def store(tmp_path_factory, tiny_tokenizer_dir):
    """A data store made by prepare_data.py itself (one document a line, blocks of 16, the tiny tokenizer)."""
    return build_store(tmp_path_factory.mktemp("store"), tiny_tokenizer_dir, CONTEXT)


def run_train(store, workdir, name, *extra, env=None, launcher=None, check=True):
    command = [*(launcher or [sys.executable]), str(ROOT / "train.py"), "--path_to_prepped_data", str(store),
               "--working_directory", str(workdir), "--experiment_name", name, *TINY, *extra]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def validate(store, workdir, *extra):
    """train.validate in process; the locks it takes are released again."""
    plan = train.validate(train.parse_args(["--path_to_prepped_data", str(store), "--working_directory",
                                            str(workdir), *TINY, *extra]))
    for lock in plan.locks:
        lock.release()
    return plan


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
    assert {"roberta.embeddings.word_embeddings.weight", "roberta.encoder.layer.0.intermediate.dense.weight",
            "lm_head.dense.weight"} <= decayed
    assert {"roberta.embeddings.LayerNorm.weight", "roberta.encoder.layer.1.output.LayerNorm.bias",
            "lm_head.bias", "lm_head.layer_norm.weight"} <= not_decayed
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    # Every parameter exactly once (the decoder tied to the word embeddings is not a second parameter).
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_learning_rate_is_a_pure_function_of_the_step_and_the_flags():
    args = train.parse_args(["--path_to_prepped_data", "x", "--learning_rate", "1e-3", "--num_warmup_steps", "4",
                             "--num_training_steps", "8"])
    rate = train.lr_schedule(args)
    assert [rate(s) for s in range(8)] == pytest.approx([0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    # The same numbers as stepping transformers' scheduler, which is what an uninterrupted run used to follow.
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1)], lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=4, num_training_steps=8)
    cosine = train.lr_schedule(train.parse_args(["--path_to_prepped_data", "x", "--learning_rate", "1e-3",
                                                 "--num_warmup_steps", "4", "--num_training_steps", "8",
                                                 "--lr_scheduler", "cosine"]))
    for step in range(8):
        assert cosine(step) == scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()


def test_resumed_optimizer_takes_the_flags_settings():
    model = torch.nn.Linear(3, 2)
    args = train.parse_args(["--path_to_prepped_data", "x", "--weight_decay", "0.1", "--adam_beta2", "0.95"])
    optimizer = train.build_optimizer(model, args, torch.device("cpu"))
    saved = optimizer.state_dict()
    changed = train.parse_args(["--path_to_prepped_data", "x", "--weight_decay", "0.3", "--adam_beta2", "0.9"])
    optimizer.load_state_dict(saved)  # brings back weight decay 0.1 and beta2 0.95
    train.apply_optimizer_flags(optimizer, changed)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.9)


def test_epoch_batches_partition_reshuffle_and_skip():
    def order(process, epoch=0, start=0, seed=1):
        return list(batches.EpochBatches(50, 3, 2, process, seed=seed, epoch=epoch, start=start))

    first, second = order(0), order(1)
    assert len(first) == len(second) == 50 // 6  # the incomplete last global batch is dropped
    seen = [i for b in first + second for i in b]
    assert len(set(seen)) == len(seen) and all(len(b) == 3 for b in first + second)  # no block shared
    assert order(0) == first  # the order is a function of (seed, epoch) alone: resumable
    assert order(0, epoch=1) != first and order(0, seed=2) != first
    assert order(0, start=3) == first[3:]  # resuming skips the consumed global batches


def test_checkpoint_verification_reports_damage_and_falls_back(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        path = folder / f"step_{step}"
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(bytes(range(200)) * 5)
        (path / "config.json").write_text("{}")
        (path / ckpt.STATE_FILE).write_text(json.dumps({"step": step, "loss": 1.0}))
        (path / ckpt.MANIFEST_FILE).write_text(json.dumps({"files": ckpt.file_manifest(path)}))
    (folder / "step_12" / "model.safetensors").write_bytes(b"short")  # truncated
    (folder / "step_8" / ckpt.STATE_FILE).write_text('{"step": 8, "loss": 2.0}')  # changed after saving
    (folder / "step_16").mkdir()  # cut off before its manifest
    reports = []
    assert ckpt.find_intact_checkpoint(folder, report=reports.append) == folder / "step_4"
    assert [r.split(": ")[1] for r in reports] == [f"skipping checkpoint {folder / s}" for s in
                                                   ("step_16", "step_12", "step_8")]
    assert "cut off while being saved" in reports[0] and "has 5 bytes, 1,000 when saved" in reports[1]
    assert "does not match its checksum" in reports[2]
    with pytest.raises(UsageError, match="step_12 cannot be used: model.safetensors has 5 bytes.*the newest intact "
                                         "checkpoint beside it is .*step_4"):
        ckpt.resolve_resume(str(folder / "step_12"), folder)
    assert ckpt.resolve_resume("latest", tmp_path / "no_run_yet") is None  # a fresh start
    shutil.rmtree(folder / "step_4")  # every checkpoint damaged: `latest` is refused, as an explicit path is
    with pytest.raises(UsageError, match="latest: no checkpoint in .* is intact \\(step_16: it has no manifest.json.*"
                                         "step_12: model.safetensors has 5 bytes.*step_8: .*nothing was changed"):
        ckpt.resolve_resume("latest", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["step_12", "step_16", "step_8"]


def test_resume_from_what_is_not_a_checkpoint_says_what_it_is(tmp_path):
    def problem(path):
        with pytest.raises(UsageError) as caught:
            ckpt.resolve_resume(str(path), tmp_path)
        return str(caught.value).split("cannot be used: ")[1]

    for name, record, what in [("store", "prepare_data.json", "it is a data store"),
                               ("qa", "finetune_args.json", "it is a question-answering run folder"),
                               ("run", "args.json", "it is a pretraining run folder: pass latest")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / record).write_text("{}")
        assert problem(tmp_path / name).startswith(what)
    (tmp_path / "run" / "checkpoints" / "step_3").mkdir(parents=True)
    assert problem(tmp_path / "run" / "checkpoints").startswith("it is a checkpoints folder, not one checkpoint")
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert problem(tmp_path / "weights.bin").startswith("it is a file; a checkpoint is a checkpoints/step_N folder")
    (tmp_path / "step_5").mkdir()
    (tmp_path / "step_5" / ckpt.STATE_FILE).write_text("{}")  # its manifest deleted
    assert "the manifest was deleted, or a train.py older than" in problem(tmp_path / "step_5")
    assert "earlier version" not in problem(tmp_path / "step_5")


def test_resume_refuses_another_model_seed_or_store_and_lists_what_changed(tmp_path):
    saved = vars(train.parse_args(["--path_to_prepped_data", "s", "--learning_rate", "1e-3"]))
    (tmp_path / ckpt.STATE_FILE).write_text(json.dumps({"step": 40, "args": {**saved, "store_fingerprint": "abc"}}))
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 400, "max_position_embeddings": 514}))
    config = {"vocab_size": 400, "max_position_embeddings": 514}

    def check(*argv, fingerprint="abc", **config_changes):
        now = vars(train.parse_args(["--path_to_prepped_data", "s", "--learning_rate", "1e-3", *argv]))
        return ckpt.check_resume(tmp_path, now, {**config, **config_changes}, fingerprint)

    assert check() == []
    assert check("--learning_rate", "5e-4", "--per_gpu_batch_size", "16") == [
        "--per_gpu_batch_size 32 -> 16", "--learning_rate 0.001 -> 0.0005",
        "global batch size 32 -> 16 (processes 1 -> 1)"]
    state = json.loads((tmp_path / ckpt.STATE_FILE).read_text())  # saved by 2 processes, resumed on 1
    (tmp_path / ckpt.STATE_FILE).write_text(json.dumps({**state, "window_loss": [0.5, 0.7]}))
    assert check() == ["global batch size 64 -> 32 (processes 2 -> 1)"]
    (tmp_path / ckpt.STATE_FILE).write_text(json.dumps(state))
    for argv, fingerprint, config_changes, message in [
            (["--seed", "1"], "abc", {}, "--seed 42 \\(now 1\\)"),
            (["--embedding_dimension", "384"], "abc", {}, "--embedding_dimension 768 \\(now 384\\)"),
            ([], "xyz", {}, "another store's content"),
            ([], "abc", {"vocab_size": 500}, "vocab_size 400 \\(now 500\\)"),
            (["--num_training_steps", "40"], "abc", {}, "is at update 40, not before --num_training_steps 40")]:
        with pytest.raises(UsageError, match=message):
            check(*argv, fingerprint=fingerprint, **config_changes)


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in [1, 2, 3, 4, 5]:
        (tmp_path / f"step_{step}").mkdir()
        (tmp_path / f"step_{step}" / ckpt.MANIFEST_FILE).write_text("{}")
    (tmp_path / "step_6").mkdir()  # incomplete: neither counted nor deleted
    ckpt.rotate(tmp_path, num_keep=2, keep=tmp_path / "step_5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_4", "step_5", "step_6"]


def test_deepspeed_config_gets_our_batch_and_clipping_or_is_refused():
    from distributed import configure_deepspeed

    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
    configure_deepspeed(config, max_grad_norm=0.5, per_process_batch=24, compile=False)
    assert config == {"train_micro_batch_size_per_gpu": 24, "gradient_clipping": 0.5}
    with pytest.raises(UsageError, match="clips gradients at 1.0 but --max_grad_norm is 0.5"):
        configure_deepspeed({"gradient_clipping": 1.0}, 0.5, 24, False)
    with pytest.raises(UsageError, match="stage3_gather_16bit_weights_on_model_save"):
        configure_deepspeed({"zero_optimization": {"stage": 3}}, 1.0, 24, False)
    with pytest.raises(UsageError, match="--compile is not supported under DeepSpeed"):
        configure_deepspeed({}, 1.0, 24, True)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one clear line, before anything is built or written
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--context_length", "32"], "does not match the store's blocks of 16"),
    (["--embedding_dimension", "50"], "--embedding_dimension 50 does not divide by --num_attention_heads 3"),
    (["--masking_probability", "0"], "--masking_probability must be in \\(0, 1\\)"),
    (["--num_keep_checkpoints", "1"], "at least 2"),
    (["--resume_from_checkpoint", "/no/such/step_5"], "/no/such/step_5 cannot be used: it does not exist"),
    (["--resume_from_checkpoint", "latest", "--overwrite"], "contradict each other"),
    (["--per_gpu_batch_size", "5000"], "fewer than one global batch of 5000"),
    (["--experiment_name", ""], "--experiment_name is empty; give the run folder a name"),
])
def test_bad_arguments(store, tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        validate(store, tmp_path, *extra)
    assert list(tmp_path.iterdir()) == []


def test_bad_paths(store, tmp_path):
    def check(message, *argv):
        with pytest.raises(UsageError, match=message):
            validate(store, tmp_path / "work", *argv)

    check("does not exist", "--path_to_prepped_data", str(tmp_path / "missing"))
    (tmp_path / "not_a_store").mkdir()
    check("is not a data store", "--path_to_prepped_data", str(tmp_path / "not_a_store"))
    (tmp_path / "a_file").write_text("")
    check("the run folder .*a_file/x cannot be made: .*a_file is a file", "--working_directory",
          str(tmp_path / "a_file"), "--experiment_name", "x")
    (tmp_path / "work" / "taken").mkdir(parents=True)
    (tmp_path / "work" / "taken" / "metrics.jsonl").write_text("")
    check("already holds a pretraining run folder; pass --resume_from_checkpoint latest", "--experiment_name", "taken")


def test_overwrite_never_reaches_what_is_not_a_run(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("precious")
    cases = [(["--working_directory", ".", "--experiment_name", "."], "current directory"),
             (["--working_directory", str(store.parent), "--experiment_name", store.name], "is or holds "
              "--path_to_prepped_data"),
             (["--working_directory", str(tmp_path), "--experiment_name", "papers"], "did not write")]
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "draft.tex").write_text("precious")
    for argv, message in cases:
        with pytest.raises(UsageError, match=message):
            train.validate(train.parse_args(["--path_to_prepped_data", str(store), *TINY, *argv, "--overwrite"]))
    assert (tmp_path / "notes.txt").read_text() == "precious" and (tmp_path / "papers" / "draft.tex").is_file()
    assert (store / "dataset_dict.json").is_file()


def test_a_text_file_given_as_the_store_gets_advice_that_works(store, tmp_path, tiny_tokenizer_dir):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file.txt").write_text(sentences(200) + "\n")
    with pytest.raises(UsageError) as caught:
        validate(store, tmp_path / "runs", "--path_to_prepped_data", str(tmp_path / "data" / "file.txt"))
    advice = str(caught.value)
    assert "is a file; it needs a data store" in advice
    command = shlex.split(advice.split("`")[1])
    assert command[:2] == ["python", "prepare_data.py"]
    prepare_data.main([*command[2:], "--hf_model_name", str(tiny_tokenizer_dir), "--context_length", str(CONTEXT),
                       "--num_workers", "1"])  # as printed, with the tokenizer it asks for
    validate(store, tmp_path / "runs", "--path_to_prepped_data", command[command.index("--path_to_data_store") + 1])


def test_refusals_leave_no_lock_file(store, tmp_path, monkeypatch):
    """A refused run touches nothing: no .lock in the home folder, a git repository or the current directory."""
    home, repo, here = tmp_path / "home", tmp_path / "repo", tmp_path / "here"
    for folder in (home, repo / ".git", here):
        folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    for argv, message in [(["--working_directory", "~", "--experiment_name", "."], "home folder"),
                          (["--working_directory", str(tmp_path), "--experiment_name", "repo"], "git repository"),
                          (["--working_directory", ".", "--experiment_name", "."], "current directory")]:
        with pytest.raises(UsageError, match=message):
            validate(store, tmp_path, *argv)
    assert not [p for p in tmp_path.rglob(".lock")]


def test_tilde_is_expanded_in_every_scripts_paths(store, tmp_path, monkeypatch):
    import ask
    import finetune_roberta_qa

    monkeypatch.setenv("HOME", str(tmp_path))
    for argv in (["--working_directory", "~", "--experiment_name", "x"], ["--working_directory=~/runs",
                                                                            "--experiment_name", "x"]):
        plan = validate(store, "unused", *argv)
        assert plan.run_dir.parent in (tmp_path, tmp_path / "runs") and "~" not in str(plan.run_dir)
    assert not Path("~").exists()
    assert prepare_data.parse_args(["--path_to_data_store=~/store", "--dataset", "demo"]).path_to_data_store == \
        str(tmp_path / "store")
    assert finetune_roberta_qa.parse_args(["--working_directory=~/qa"]).working_directory == str(tmp_path / "qa")
    assert ask.build_parser().parse_args(["--model=~/m", "--question", "q", "--context", "c"]).model == \
        str(tmp_path / "m")
    assert train.parse_args(["--path_to_prepped_data", "s", "--experiment_name", "~x"]).experiment_name == "~x"


def test_fsdp_on_a_cpu_is_refused_before_anything_is_written(store, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UsageError, match="FSDP was asked for .* but this run has no GPU"):
        validate(store, tmp_path, "--experiment_name", "fsdp")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_output_folder_is_one_line(store, tmp_path, monkeypatch):
    import folders

    real_access = os.access
    monkeypatch.setattr(folders.os, "access", lambda path, mode: False if Path(path) == tmp_path else
                        real_access(path, mode))  # tests run as root, whom no permission stops
    with pytest.raises(UsageError, match=f"cannot be written: {tmp_path} is read-only for you"):
        validate(store, tmp_path, "--experiment_name", "ro")
    assert list(tmp_path.iterdir()) == []


def test_hf_model_name_unused_beside_the_stores_tokenizer_is_said(store, tmp_path, capsys):
    validate(store, tmp_path, "--hf_model_name", "FacebookAI/roberta-large")
    assert "note: --hf_model_name FacebookAI/roberta-large is not used: the store has its own tokenizer/" in \
        capsys.readouterr().out
    validate(store, tmp_path)
    assert "--hf_model_name" not in capsys.readouterr().out


def test_loss_watch_warns_of_a_sustained_divergence_once():
    from metrics import LossWatch
    from utils import readable

    watch = LossWatch()
    watch.start_from([{"step": 0, "eval_loss": 6.0}, {"step": 10, "loss": 5.0}])
    assert watch.start == 6.0
    warned = [s for s in range(10, 70, 10) if watch.update(s, 5.0 if s < 30 else 40.0, 10)]
    assert warned == [40]  # above since step 21, over two lines and 20 updates; once, not at every line
    assert [watch.update(s, 99.0 if s == 90 else 5.0, 10) for s in (80, 90, 100)] == [None] * 3  # a spike: quiet
    watch = LossWatch(start=6.0)
    warnings = [watch.update(s, 1e7, 10) for s in (10, 20, 30)]
    assert warnings[0] is None and "diverging: 1.000e+07 at step 20" in warnings[1] and "since step 1" in warnings[1]
    assert readable(math.exp(700)) == "1.014e+304" and readable(368.7) == "368.70"


def test_a_store_read_with_another_tokenizer_is_refused(store, tmp_path, tiny_tokenizer):
    from tokenization import train_bpe_tokenizer

    swapped = tmp_path / "swapped_store"
    shutil.copytree(store, swapped)
    other = train_bpe_tokenizer([sentences(300, offset=5000), "other words entirely"], vocab_size=300)
    shutil.rmtree(swapped / "tokenizer")
    other.save_pretrained(swapped / "tokenizer")
    with pytest.raises(UsageError, match="is not the one that made the store"):
        validate(swapped, tmp_path / "runs", "--path_to_prepped_data", str(swapped))
    shutil.rmtree(swapped / "tokenizer")  # no tokenizer folder: --hf_model_name must be the right one
    other.save_pretrained(tmp_path / "other_tokenizer")
    with pytest.raises(UsageError, match="is not the one that made the store"):
        validate(swapped, tmp_path / "runs", "--path_to_prepped_data", str(swapped), "--hf_model_name",
                 str(tmp_path / "other_tokenizer"))
    tiny_tokenizer.save_pretrained(tmp_path / "right_tokenizer")
    validate(swapped, tmp_path / "runs", "--path_to_prepped_data", str(swapped), "--hf_model_name",
             str(tmp_path / "right_tokenizer"))


def test_bad_input_exits_2_with_one_line(store, tmp_path):
    result = run_train(tmp_path / "missing_store", tmp_path, "x", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: --path_to_prepped_data")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------------------
# End-to-end runs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_run_learns_and_writes_its_folder(store, tmp_path, tiny_tokenizer):
    # --log_wandb with no W&B login (no key, no ~/.netrc): logged offline into the run folder, said so.
    result = run_train(store, tmp_path, "learn", "--num_training_steps", "60", "--num_warmup_steps", "6",
                       "--learning_rate", "3e-3", "--logging_steps", "10", "--evaluation_interval", "30",
                       "--checkpoint_interval", "30", "--log_wandb",
                       env={"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path), "NETRC": ""})
    assert "no Weights & Biases login" in result.stdout
    run = tmp_path / "learn"
    records = metrics(run)
    evals = [r for r in records if "eval_loss" in r]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in evals] == [0, 30, 60] and [r["step"] for r in steps] == [10, 20, 30, 40, 50, 60]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.5, evals  # from ln(vocabulary) towards the words'
    assert evals[-1]["eval_accuracy"] > evals[0]["eval_accuracy"]
    assert all(r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"])) for r in evals)
    assert all({"step", "loss", "lr", "grad_norm", "tokens_per_second"} <= r.keys() for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((run / "args.json").read_text())
    assert record["global_batch_size"] == 3 and "hf_model_name" in record["not_used"]  # the store's tokenizer won
    assert "metrics.jsonl" in (run / "README.md").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_30", "step_60"]
    assert ckpt.read_state(run / "checkpoints" / "step_60").loss == pytest.approx(
        sum(r["loss"] for r in steps[3:]) / 3)  # the mean training loss since the previous checkpoint
    assert any((run / "wandb").iterdir())

    # The evaluation is the mean over every predicted token of the test split: recompute it from final_model.
    from model import RobertaForMaskedLM

    model = RobertaForMaskedLM.from_pretrained(run / "final_model").eval()
    test = prepare_data_split(store, "test")
    pairs = batches.eval_batches(test, tiny_tokenizer, 3, 0.15, 7, num_processes=1, process_index=0)
    inputs, labels = torch.cat([b[0] for b in pairs]).long(), torch.cat([b[1] for b in pairs]).long()
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

    # --overwrite replaces the run, removing only what train.py wrote.
    (run / "my_notes.txt").write_text("keep me")
    result = run_train(store, tmp_path, "learn", "--num_training_steps", "2", "--num_warmup_steps", "1",
                       "--overwrite")
    assert "kept my_notes.txt" in result.stdout and (run / "my_notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2"]


def prepare_data_split(store, split):
    from store import open_store

    return open_store(store).data[split]


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    """An uninterrupted run to compare resumed runs with (DataLoader workers on, as resumed runs have not)."""
    workdir = tmp_path_factory.mktemp("reference")
    run_train(store, workdir, "ref", *RESUMABLE, "--num_workers", "1")
    return workdir / "ref"


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(store, tmp_path, reference):
    killed = run_train(store, tmp_path, "run", *RESUMABLE, env={"TRAIN_TEST_SIGNAL_AT_STEP": "7:KILL"}, check=False)
    assert killed.returncode == -9
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4"]
    assert max(r["step"] for r in metrics(tmp_path / "run")) == 6  # logged past the checkpoint before dying
    # Half-written checkpoints, as a kill during saving leaves them: resume must pick neither.
    (checkpoints / "step_8").mkdir()
    (checkpoints / "step_8" / "config.json").write_text("{}")
    (checkpoints / "tmp-step_8").mkdir()
    (checkpoints / "tmp-step_8" / ckpt.MANIFEST_FILE).write_text("{}")

    resumed = run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest")
    assert f"resumed from {checkpoints / 'step_4'} at step 4" in resumed.stdout
    assert "skipping checkpoint" in resumed.stdout and "removed" in resumed.stdout  # step_8 named, tmp cleaned
    assert_same_weights(reference / "final_model", tmp_path / "run" / "final_model")
    assert without_timing(metrics(tmp_path / "run")) == without_timing(metrics(reference))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_12", "step_4", "step_8"]


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit_cleanly(store, tmp_path, reference, signal_name):
    stopped = run_train(store, tmp_path, "run", *RESUMABLE, env={"TRAIN_TEST_SIGNAL_AT_STEP": f"5:{signal_name}"})
    assert f"SIG{signal_name}: saved a checkpoint at step 5" in stopped.stdout
    assert not (tmp_path / "run" / "final_model").exists()
    assert ckpt.find_intact_checkpoint(tmp_path / "run" / "checkpoints") == tmp_path / "run" / "checkpoints" / "step_5"
    run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest")
    assert_same_weights(reference / "final_model", tmp_path / "run" / "final_model")
    assert without_timing(metrics(tmp_path / "run")) == without_timing(metrics(reference))


@pytest.mark.slow
def test_damaged_checkpoints_are_named_and_latest_falls_back(store, tmp_path, reference):
    shutil.copytree(reference, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    weights = checkpoints / "step_12" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    optimizer = checkpoints / "step_8" / ckpt.ACCELERATE_STATE / "optimizer.bin"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    optimizer.write_bytes(bytes(data))
    explicit = run_train(store, tmp_path, "run2", *RESUMABLE, "--resume_from_checkpoint", str(weights.parent),
                         check=False)
    assert explicit.returncode == 2 and "step_12 cannot be used: model.safetensors has" in explicit.stderr
    assert f"the newest intact checkpoint beside it is {checkpoints / 'step_4'}" in explicit.stderr
    result = run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest")
    assert f"skipping checkpoint {checkpoints / 'step_12'}: model.safetensors has 1,000 bytes" in result.stdout
    assert f"skipping checkpoint {checkpoints / 'step_8'}: accelerate_state/optimizer.bin does not match" in \
        result.stdout
    assert f"resumed from {checkpoints / 'step_4'} at step 4" in result.stdout
    assert_same_weights(reference / "final_model", tmp_path / "run" / "final_model")


@pytest.mark.slow
def test_a_full_disk_leaves_no_partial_checkpoint_and_the_run_resumes(store, tmp_path, reference):
    full = run_train(store, tmp_path, "run", *RESUMABLE, env={"TRAIN_TEST_DISK_FULL_AT_STEP": "8"}, check=False)
    assert full.returncode == 1
    error = full.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the disk is full: could not write checkpoint step_8 to ") and \
        "a checkpoint needs about" in error and "--resume_from_checkpoint latest" in error
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_4"]
    run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest")
    assert_same_weights(reference / "final_model", tmp_path / "run" / "final_model")


@pytest.mark.slow
def test_resume_with_a_changed_learning_rate_follows_the_new_schedule(store, tmp_path):
    run_train(store, tmp_path, "run", *RESUMABLE, env={"TRAIN_TEST_SIGNAL_AT_STEP": "5:TERM"})
    resumed = run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest",
                        "--learning_rate", "1e-3", "--num_training_steps", "15")
    assert "resume: --learning_rate 0.003 -> 0.001 (takes effect from step 5)" in resumed.stdout
    args = train.parse_args(["--path_to_prepped_data", "x", *RESUMABLE, "--learning_rate", "1e-3",
                             "--num_training_steps", "15"])
    rate = train.lr_schedule(args)
    logged = {r["step"]: r["lr"] for r in metrics(tmp_path / "run") if "lr" in r and r["step"] > 5}
    assert logged == {step: rate(step - 1) for step in (6, 9, 12, 15)}  # the lr of the update that ended there
    record = json.loads((tmp_path / "run" / "args.json").read_text())
    assert record["args"]["learning_rate"] == 1e-3
    assert record["resumes"][0]["step"] == 5 and "--learning_rate 0.003 -> 0.001" in record["resumes"][0]["changed"]
    refused = run_train(store, tmp_path, "run", *RESUMABLE, "--resume_from_checkpoint", "latest", "--seed", "8",
                        "--num_training_steps", "20", check=False)
    assert refused.returncode == 2 and "was trained with --seed 7 (now 8)" in refused.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_and_its_advice_works(store, tmp_path):
    """A learning rate far too high, set on resume: the run stops at the first non-finite loss, names the last
    checkpoint whose weights still gave a finite loss, and resuming from it with a sane rate completes."""
    flags = ["--num_training_steps", "12", "--num_warmup_steps", "0", "--logging_steps", "1",
             "--checkpoint_interval", "2", "--max_grad_norm", "0", "--hidden_dropout_p", "0"]
    run_train(store, tmp_path, "nan", *flags, "--learning_rate", "1e-3", env={"TRAIN_TEST_SIGNAL_AT_STEP": "4:TERM"})
    result = run_train(store, tmp_path, "nan", *flags, "--learning_rate", "1e30", "--resume_from_checkpoint",
                       "latest", check=False)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    checkpoints = tmp_path / "nan" / "checkpoints"
    assert error.startswith("error: the training loss became nan by step 6") or \
        error.startswith("error: the training loss became inf by step 6"), error
    assert f"the last checkpoint whose weights gave a finite loss is {checkpoints / 'step_4'}" in error
    assert "step_2 (loss " in error and "step_4 (loss " in error
    assert all(math.isfinite(ckpt.read_state(path).loss) for path in checkpoints.iterdir())  # no NaN saved
    # Following the advice as printed: resume from step_4 with the rate it was trained at, and the run completes.
    command = shlex.split(error.split(": python ")[1].split(" (more --num_warmup_steps")[0])
    assert command[0] == "train.py" and command[-4:] == ["--resume_from_checkpoint", str(checkpoints / "step_4"),
                                                         "--learning_rate", "0.001"]
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), *command[1:]], cwd=tmp_path,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints / 'step_4'} at step 4" in resumed.stdout
    assert [r["changed"] for r in json.loads((tmp_path / "nan" / "args.json").read_text())["resumes"]] == [
        ["--learning_rate 0.001 -> 1e+30"], []]  # the rate that blew up, then back to the checkpoint's own
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "nan") if "loss" in r)
    assert max(r["step"] for r in metrics(tmp_path / "nan")) == 12


@pytest.mark.slow
def test_without_a_checkpoint_the_nan_advice_starts_again_with_overwrite(store, tmp_path):
    flags = ["--num_training_steps", "6", "--num_warmup_steps", "0", "--logging_steps", "1", "--max_grad_norm", "0"]
    result = run_train(store, tmp_path, "nan", *flags, "--learning_rate", "1e30", check=False)
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "no checkpoint was followed by a finite loss: start again" in error, error
    command = shlex.split(error.split(": python ")[1].split(" (more --num_warmup_steps")[0])
    assert command[-3:] == ["--overwrite", "--learning_rate", "1e+29"]
    again = subprocess.run([sys.executable, str(ROOT / "train.py"), *command[1:], "--learning_rate", "1e-3"],
                           cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]  # the command runs as printed (here with a sane rate)


@pytest.mark.slow
def test_a_diverging_loss_is_warned_with_its_step_and_large_numbers_print_readably(store, tmp_path):
    result = run_train(store, tmp_path, "boom", "--learning_rate", "50", "--num_training_steps", "24",
                       "--num_warmup_steps", "0", "--logging_steps", "2", "--evaluation_interval", "12",
                       "--checkpoint_interval", "24")
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: the training loss is "
                                                                               "diverging")]
    assert len(warnings) == 1 and "at step " in warnings[0] and "since step 1" in warnings[0], result.stdout
    logged = [r for r in metrics(tmp_path / "boom") if "warning" in r]
    assert len(logged) == 1 and logged[0]["warning"] == warnings[0].removeprefix("warning: ")
    assert "eval_perplexity 1.014e+304" in result.stdout and not re.search(r"\d{20}", result.stdout)


@pytest.mark.slow
def test_a_killed_run_with_dataloader_workers_resumes_at_once(store, tmp_path):
    """kill -9 leaves the DataLoader workers alive for a moment; a scheduler restarting the job at once must not
    find the folder "in use"."""
    killed = run_train(store, tmp_path, "run", *RESUMABLE, "--num_workers", "1",
                       env={"TRAIN_TEST_SIGNAL_AT_STEP": "7:KILL"}, check=False)
    assert killed.returncode == -9
    resumed = run_train(store, tmp_path, "run", *RESUMABLE, "--num_workers", "1", "--resume_from_checkpoint",
                        "latest")
    assert "resumed from" in resumed.stdout


@pytest.mark.slow
def test_latest_with_every_checkpoint_damaged_is_refused_and_a_process_change_is_listed(store, tmp_path, reference):
    shutil.copytree(reference, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    # step_8 as 2 processes would have saved it (one running loss each), resumed here on 1: the global batch halves.
    state = json.loads((checkpoints / "step_8" / ckpt.STATE_FILE).read_text())
    (checkpoints / "step_8" / ckpt.STATE_FILE).write_text(json.dumps({**state, "window_loss": [0.0, 0.0]}))
    manifest = ckpt.file_manifest(checkpoints / "step_8")
    manifest.pop(ckpt.MANIFEST_FILE)
    (checkpoints / "step_8" / ckpt.MANIFEST_FILE).write_text(json.dumps({"step": 8, "files": manifest}))
    shutil.copytree(tmp_path / "run", tmp_path / "run2")
    resumed = run_train(store, tmp_path, "run2", *RESUMABLE, "--resume_from_checkpoint",
                        str(tmp_path / "run2" / "checkpoints" / "step_8"))
    assert "resume: global batch size 12 -> 6 (processes 2 -> 1) (takes effect from step 8)" in resumed.stdout

    for path in checkpoints.iterdir():  # every checkpoint truncated
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    refused = run_train(store, tmp_path, "run", *RESUMABLE, "--num_training_steps", "20", "--resume_from_checkpoint",
                        "latest", check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "latest: no checkpoint in" in refused.stderr and "nothing was changed" in refused.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_fsdp_on_a_cpu_and_tilde_through_the_command_line(store, tmp_path):
    fsdp = run_train(store, tmp_path, "fsdp", env={"ACCELERATE_USE_FSDP": "true"}, check=False)
    assert fsdp.returncode == 2 and fsdp.stderr.startswith("error: FSDP was asked for") and \
        fsdp.stderr.count("\n") == 1 and not (tmp_path / "fsdp").exists()
    home = tmp_path / "home"
    home.mkdir()
    result = run_train(store, tmp_path, "x", "--working_directory=~/runs", "--num_training_steps", "2",
                       "--num_warmup_steps", "0", env={"HOME": str(home)})
    assert (home / "runs" / "x" / "final_model").is_dir() and not (tmp_path / "~").exists()
    from transformers import AutoTokenizer

    from model_folder import TOKENIZER_RECORD, tokenizer_swapped

    final = home / "runs" / "x" / "final_model"  # its tokenizer's fingerprint, for finetune to check
    assert (final / TOKENIZER_RECORD).is_file() and tokenizer_swapped(final, AutoTokenizer.from_pretrained(final)) \
        is None
    assert f"final model: {home / 'runs' / 'x' / 'final_model'}" in result.stdout


@pytest.fixture
def read_only_mount(tmp_path):
    """A folder on a read-only filesystem (a tmpfs mounted read-only; skipped where mounting is not allowed), holding
    what `fill(folder)` put there before it became read-only."""
    mounted = []

    def make(name, fill=lambda folder: None):
        folder = tmp_path / name
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(folder)
        fill(folder)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)])


@pytest.mark.slow
def test_read_only_folders_are_one_line_and_a_read_only_store_is_read(store, tmp_path, read_only_mount):
    read_only = read_only_mount("ro")
    result = run_train(store, read_only, "x", check=False)
    assert result.returncode == 2 and result.stderr == f"error: the run folder {read_only / 'x'} cannot be written: " \
        f"{read_only} is read-only for you; choose a folder you can write to\n"
    on_media = read_only_mount("media", lambda folder: shutil.copytree(store, folder / "store",
                                                                       ignore=shutil.ignore_patterns(".lock")))
    run_train(on_media / "store", tmp_path, "from_media", "--num_training_steps", "2", "--num_warmup_steps", "0")
    assert (tmp_path / "from_media" / "final_model").is_dir()


@pytest.mark.slow
def test_overwrite_keeps_a_symlinked_checkpoints_folder(store, tmp_path, reference):
    shutil.copytree(reference, tmp_path / "run")
    elsewhere = tmp_path / "big_disk" / "checkpoints"
    shutil.move(tmp_path / "run" / "checkpoints", elsewhere)
    (elsewhere / "notes.txt").write_text("the user's")
    (tmp_path / "run" / "checkpoints").symlink_to(elsewhere)
    run_train(store, tmp_path, "run", "--overwrite", "--num_training_steps", "4", "--num_warmup_steps", "0",
              "--checkpoint_interval", "4")
    assert (tmp_path / "run" / "checkpoints").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt", "step_4"]


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused_and_touches_nothing(store, tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "--path_to_prepped_data", str(store), "--working_directory",
               str(tmp_path), "--experiment_name", "busy", *TINY, "--num_training_steps", "100000",
               "--num_warmup_steps", "10", "--checkpoint_interval", "100000", "--evaluation_interval", "100000"]
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for_a_training_line(tmp_path / "busy")
        before = {p: p.stat().st_mtime_ns for p in (tmp_path / "busy").iterdir() if p.name != "metrics.jsonl"}
        for extra in ([], ["--resume_from_checkpoint", "latest"], ["--overwrite"]):
            second = run_train(store, tmp_path, "busy", *extra, check=False)
            assert second.returncode == 2 and f"is in use by another run (pid {first.pid} on " in second.stderr, \
                second.stderr
        # The store it reads: a new prepare_data.py into it is refused, naming this train.py run (not the
        # prepare_data.py run that made the store and is long gone).
        remake = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--text_files",
                                 str(store.parent / "corpus.txt"), "--path_to_data_store", str(store), "--overwrite"],
                                capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert remake.returncode == 2 and f"(pid {first.pid} on " in remake.stderr and "train.py --path_to_prepped" \
            in remake.stderr, remake.stderr
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / "busy").iterdir() if p.name != "metrics.jsonl"} == before
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and "SIGTERM: saved a checkpoint" in out


LAUNCH_2_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.slow
def test_two_processes_write_everything_once_and_resume(store, tmp_path, reference):
    # `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (it needs mpirun for
    # more); torchrun through --multi_gpu with ACCELERATE_USE_CPU=1 runs two real DDP processes on gloo.
    result = run_train(store, tmp_path, "ddp", *RESUMABLE, launcher=LAUNCH_2_PROCESSES,
                       env={"ACCELERATE_USE_CPU": "1", "TRAIN_TEST_SIGNAL_AT_STEP": "10:KILL"}, check=False)
    assert "processes: 2 on cpu (DDP on CPU (gloo))" in result.stdout
    assert result.stdout.count("global batch size 12") == 1  # 3 per process x 2 accumulation x 2 processes
    assert result.stdout.count("step       6/12 |") == 1
    step_8 = tmp_path / "ddp" / "checkpoints" / "step_8"
    assert sorted(p.name for p in (step_8 / ckpt.ACCELERATE_STATE).iterdir()) == [
        "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"]
    assert len(ckpt.read_state(step_8).window_loss) == 2  # each process's running log sum
    run_train(store, tmp_path, "ddp", *RESUMABLE, "--resume_from_checkpoint", "latest", launcher=LAUNCH_2_PROCESSES,
              env={"ACCELERATE_USE_CPU": "1"})
    records = metrics(tmp_path / "ddp")
    assert [r["step"] for r in records if "loss" in r] == [3, 6, 9, 12]
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 5, 10, 12]
    # Same initial weights and the same fixed evaluation masks, however many processes share the test split.
    first_eval = next(r for r in metrics(reference) if "eval_loss" in r)
    assert records[0]["eval_tokens"] == first_eval["eval_tokens"]
    assert records[0]["eval_loss"] == pytest.approx(first_eval["eval_loss"], rel=1e-5)
    assert (tmp_path / "ddp" / "final_model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_worker_with_a_checkpoint(store, tmp_path):
    command = [*LAUNCH_2_PROCESSES, str(ROOT / "train.py"), "--path_to_prepped_data", str(store),
               "--working_directory", str(tmp_path), "--experiment_name", "launched", *TINY,
               "--num_training_steps", "100000", "--num_warmup_steps", "10", "--logging_steps", "5",
               "--checkpoint_interval", "100000", "--evaluation_interval", "100000"]
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    wait_for_a_training_line(tmp_path / "launched")
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker
    output, _ = launcher.communicate(timeout=120)
    checkpoint = ckpt.find_intact_checkpoint(tmp_path / "launched" / "checkpoints")
    assert checkpoint is not None, output[-3000:]
    assert int(checkpoint.name.split("_")[1]) % distributed.STOP_CHECK_STEPS == 0  # both agreed on one update
    assert f"SIGTERM: saved a checkpoint at step {checkpoint.name.split('_')[1]}" in output
    # The launcher reports its own signal (a SignalException traceback); no worker failed or was killed.
    assert "ChildFailedError" not in output and "Root Cause" not in output, output[-3000:]


def wait_for_a_training_line(run_dir: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and any("loss" in r for r in metrics(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no training line in {run_dir} after {timeout} s")
