"""train.py --init_from: continued pretraining of a published model (init_from.py).

The "published" model is a transformers RobertaForMaskedLM of an odd shape (hidden 48, MLP 80, 2 layers, positions
for 18 tokens) saved by transformers itself with the session's tiny tokenizer; the store is made from that
tokenizer by prepare_data.py. A stand-in Hub cache (HF_HUB_CACHE with one snapshot) gives the Hub-id path offline.
Checks in process (fast): the architecture, tokenizer, length and head refusals, the flags taken from the
checkpoint. Runs through the real command line (slow): the step-0 evaluation is transformers' own loss, a short
run lowers it, the final model loads in transformers, provenance is recorded, resume after SIGKILL is exact,
finetune_roberta_qa.py accepts the result, and under accelerate's FSDP2 preparation with meta-device loading the
weights that train are the loaded ones.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_store, sentences
from safetensors.torch import load_file

import batches
import init_from
import prepare_data
import train
from store import open_store
from utils import UsageError

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 16
REVISION = "0123456789abcdef0123456789abcdef01234567"
# No architecture flag: the published model's (2 layers x 48) must win over the defaults (12 x 768).
RUN = ["--context_length", str(CONTEXT), "--per_gpu_batch_size", "3", "--num_workers", "0", "--seed", "7"]
RESUMABLE = ["--num_training_steps", "12", "--gradient_accumulation_steps", "2", "--num_warmup_steps", "3",
             "--learning_rate", "3e-3", "--logging_steps", "3", "--evaluation_interval", "5",
             "--checkpoint_interval", "4"]



@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_tokenizer):
    """A model folder as transformers writes it: config.json, model.safetensors and the tokenizer."""
    import transformers

    torch.manual_seed(3)
    config = transformers.RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=2,
                                        num_attention_heads=3, intermediate_size=80, max_position_embeddings=20,
                                        layer_norm_eps=1e-5, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                        eos_token_id=2)
    folder = tmp_path_factory.mktemp("published") / "tiny-roberta"
    transformers.RobertaForMaskedLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hub_cache(published, tmp_path_factory):
    """A Hub cache holding `org/tiny-roberta` at REVISION, as snapshot_download leaves it."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--org--tiny-roberta"
    shutil.copytree(published, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return cache


@pytest.fixture(scope="module")
def store(tmp_path_factory, published):
    """Domain text the model has not seen, made into a store with the model's own tokenizer (--hf_model_name)."""
    return build_store(tmp_path_factory.mktemp("store"), published, CONTEXT)


def validate(store, workdir, *extra):
    """train.validate in process, with the command line it was given; the locks it takes are released."""
    argv = ["--path_to_prepped_data", str(store), "--working_directory", str(workdir), *RUN, *extra]
    args = train.parse_args(argv)
    plan = train.validate(args, argv)
    for lock in plan.locks:
        lock.release()
    return args, plan


def run_train(store, workdir, name, *extra, env=None, check=True):
    command = [sys.executable, str(ROOT / "train.py"), "--path_to_prepped_data", str(store), "--working_directory",
               str(workdir), "--experiment_name", name, *RUN, *extra]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_second", "mfu")} for r in records]


# ----------------------------------------------------------------------------------------------------------------
# Checks before anything is built
# ----------------------------------------------------------------------------------------------------------------


def test_the_architecture_comes_from_the_checkpoint_and_defaults_are_not_used(store, published, tmp_path):
    args, plan = validate(store, tmp_path, "--init_from", str(published), "--hidden_dropout_p", "0")
    c = plan.config
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.max_position_embeddings) == (48, 2, 80, 20)
    assert c.hidden_dropout_prob == 0.0 and c.attention_probs_dropout_prob == 0.1  # given: used; default: theirs
    recorded = plan.arguments  # what args.json and the resume checks see; the parsed flags stay as given
    assert [recorded[k] for k in ("embedding_dimension", "num_transformer_blocks", "mlp_ratio")] == [48, 2, 80 / 48]
    assert (args.embedding_dimension, args.num_transformer_blocks) == (768, 12)  # not written back into args
    assert plan.init_folder == published and recorded["init_from"] == str(published.resolve())
    assert c.init_from["source"] == str(published.resolve()) and c.init_from["revision"] is None
    assert c.init_from["sha256"] == hashlib.sha256((published / "model.safetensors").read_bytes()).hexdigest()
    # A flag given on the command line that agrees is accepted.
    validate(store, tmp_path, "--init_from", str(published), "--embedding_dimension", "48", "--layer_norm_eps", "1e-5")


def test_an_architecture_flag_that_disagrees_is_refused_naming_both_values(store, published, tmp_path):
    # 768 is the default: given explicitly, it is refused all the same.
    with pytest.raises(UsageError, match=r"disagrees with --embedding_dimension 768 \(the checkpoint's hidden_size is "
                                         r"48\); --mlp_ratio 4.0 \(the checkpoint's intermediate_size is 80"):
        validate(store, tmp_path, "--init_from", str(published), "--embedding_dimension", "768", "--mlp_ratio", "4")
    with pytest.raises(UsageError, match=r"--num_transformer_blocks 4 \(the checkpoint's num_hidden_layers is 2\)"):
        validate(store, tmp_path, "--init_from", str(published), "--num_transformer_blocks=4")
    assert list(tmp_path.iterdir()) == []


def test_a_store_of_another_tokenizer_is_refused_with_the_command_that_fits(published, tmp_path):
    (tmp_path / "corpus.txt").write_text(sentences(280, offset=9000) + "\n")
    command = ["--text_files", str(tmp_path / "corpus.txt"), "--train_tokenizer", "300", "--context_length",
               str(CONTEXT), "--test_split_pct", "0.1", "--num_workers", "1", "--path_to_data_store"]
    prepare_data.main([*command, str(tmp_path / "other")])
    with pytest.raises(UsageError) as error:
        validate(tmp_path / "other", tmp_path / "runs", "--init_from", str(published))
    message = str(error.value)
    assert "was tokenized with a tokenizer trained on its text (vocabulary" in message
    fitting = message.split("Make a store with the checkpoint's tokenizer: ")[1]
    assert "--train_tokenizer" not in fitting and f"--hf_model_name {published}" in fitting
    # The command it gives makes a store that is accepted.
    prepare_data.main(fitting.split()[2:])
    validate(tmp_path / "other_retokenized", tmp_path / "runs", "--init_from", str(published))


def test_a_checkpoint_shorter_than_the_blocks_a_headless_one_and_a_missing_one_are_refused(
        published, tmp_path, tiny_tokenizer_dir):
    import transformers

    (tmp_path / "corpus.txt").write_text(sentences(100) + "\n")
    prepare_data.main(["--text_files", str(tmp_path / "corpus.txt"), "--hf_model_name", str(published),
                       "--context_length", "24", "--test_split_pct", "0.1", "--num_workers", "1",
                       "--path_to_data_store", str(tmp_path / "store24")])
    argv = ["--path_to_prepped_data", str(tmp_path / "store24"), "--working_directory", str(tmp_path / "runs"),
            "--context_length", "24", "--per_gpu_batch_size", "3", "--init_from", str(published)]
    with pytest.raises(UsageError, match="has position embeddings for 18 tokens .*fewer than the store's blocks of "
                                         "24. Make a store with the checkpoint's tokenizer and blocks of 18: "):
        train.validate(train.parse_args(argv), argv)
    encoder = tmp_path / "encoder_only"
    transformers.RobertaModel(transformers.RobertaConfig.from_pretrained(published)).save_pretrained(encoder)
    argv[-1] = str(encoder)
    with pytest.raises(UsageError, match="has no masked-LM head"):
        train.validate(train.parse_args(argv), argv)
    argv[-1] = str(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=f"--init_from: there is no folder {tmp_path / 'nowhere'}$"):
        train.validate(train.parse_args(argv), argv)
    # A missing relative folder whose name could be a Hub id is said to be missing as a folder too.
    argv[-1] = "tiny-roberta-copy"
    with pytest.raises(UsageError, match=f"--init_from: there is no folder {Path.cwd() / 'tiny-roberta-copy'}, and "
                                         "as a Hub id: could not get 'tiny-roberta-copy' from the Hugging Face Hub"):
        train.validate(train.parse_args(argv), argv)


def test_every_problem_of_an_init_from_is_listed_at_once_with_a_store_command_that_fits(published, tmp_path):
    """The context length was refused first, the tokenizer on the next try, the flags on the one after."""
    (tmp_path / "corpus.txt").write_text(sentences(280, offset=9000) + "\n")
    prepare_data.main(["--text_files", str(tmp_path / "corpus.txt"), "--train_tokenizer", "300", "--context_length",
                       "24", "--test_split_pct", "0.1", "--num_workers", "1", "--path_to_data_store",
                       str(tmp_path / "other")])
    argv = ["--path_to_prepped_data", str(tmp_path / "other"), "--working_directory", str(tmp_path / "runs"),
            "--per_gpu_batch_size", "3", "--init_from", str(published), "--num_transformer_blocks", "4",
            "--pad_vocab_to_multiple_of", "64"]
    with pytest.raises(UsageError) as error:
        train.validate(train.parse_args(argv), argv)
    message = str(error.value)
    for problem in ["it disagrees with --num_transformer_blocks 4 (the checkpoint's num_hidden_layers is 2)",
                    "--pad_vocab_to_multiple_of 64 cannot be applied: the vocabulary is the checkpoint's 362 rows",
                    "has position embeddings for 18 tokens", "was tokenized with a tokenizer trained on its text"]:
        assert problem in message, message
    fitting = message.split("Make a store with the checkpoint's tokenizer and blocks of 18: ")[1]
    prepare_data.main(fitting.split()[2:])
    argv[1], argv[-4:] = str(tmp_path / "other_retokenized"), []
    train.validate(train.parse_args(argv), argv)  # the store the advice makes, and no contrary flags: accepted


def test_an_untied_mlm_head_is_refused_in_one_line_and_a_tied_copy_loads_as_transformers_does(store, published,
                                                                                              tmp_path):
    """transformers' tie_word_embeddings=False: loading it used to put the decoder matrix in place of the input
    embeddings (logits off by up to 37.6). This RoBERTa ties them, so such a checkpoint is refused."""
    import transformers

    from model import RobertaForMaskedLM

    config = transformers.RobertaConfig.from_pretrained(published, tie_word_embeddings=False)
    torch.manual_seed(5)
    transformers.RobertaForMaskedLM(config).save_pretrained(tmp_path / "untied")
    shutil.copy(published / "tokenizer.json", tmp_path / "untied")
    shutil.copy(published / "tokenizer_config.json", tmp_path / "untied")
    result = run_train(store, tmp_path, "run", "--init_from", str(tmp_path / "untied"), *RESUMABLE,
                       check=False)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: --init_from {tmp_path / 'untied'}: its MLM decoder is a matrix of its own, not its word embeddings "
        "(transformers' tie_word_embeddings=False): this RoBERTa ties them, as every published RoBERTa does, so one "
        "of the two would be lost; continue from a checkpoint with tied embeddings"), result.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="its lm_head.decoder.weight is a matrix of its own"):
        RobertaForMaskedLM.from_pretrained(tmp_path / "untied")
    # A tied checkpoint that also saved the decoder (an equal copy) loads, with the file's embeddings as the decoder.
    weights = load_file(published / "model.safetensors")
    shutil.copytree(published, tmp_path / "copy")
    from safetensors.torch import save_file

    save_file({**weights, "lm_head.decoder.weight": weights["roberta.embeddings.word_embeddings.weight"].clone()},
              tmp_path / "copy" / "model.safetensors")
    ours = RobertaForMaskedLM.from_pretrained(tmp_path / "copy")
    assert torch.equal(ours.lm_head.decoder.weight, weights["roberta.embeddings.word_embeddings.weight"])


def test_absurd_vocabulary_padding_is_refused(store, tmp_path):
    with pytest.raises(UsageError, match="--pad_vocab_to_multiple_of must be at most 1024 .*got 1000000"):
        validate(store, tmp_path, "--pad_vocab_to_multiple_of", "1000000")


def test_a_hub_id_is_read_from_the_hub_cache_with_its_revision(store, published, hub_cache, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))  # read when a file is looked up
    args, plan = validate(store, tmp_path, "--init_from", "org/tiny-roberta")
    assert plan.config.init_from["source"] == "org/tiny-roberta" and plan.config.init_from["revision"] == REVISION
    assert plan.arguments["init_from"] == "org/tiny-roberta" and plan.config.hidden_size == 48
    model = init_from.load_model(plan.init_folder, plan.config)
    theirs = load_file(published / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in theirs.items() if k in model.state_dict())


# ----------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def continued(store, published, tmp_path_factory):
    """An uninterrupted continued run (DataLoader workers on, as the resumed one has not)."""
    workdir = tmp_path_factory.mktemp("continued")
    result = run_train(store, workdir, "run", "--init_from", str(published), *RESUMABLE, "--num_workers", "1")
    return workdir / "run", result


@pytest.mark.slow
def test_step_0_is_transformers_own_loss_and_a_short_run_lowers_it(store, published, continued, tiny_tokenizer):
    import transformers

    run, result = continued
    assert "--init_from's own loss: the baseline to beat" in result.stdout
    assert f"start: initialised from {published.resolve()} (model.safetensors sha256" in result.stdout
    evals = [r for r in metrics(run) if "eval_loss" in r]
    # transformers' RobertaForMaskedLM on the same fixed evaluation masks: the mean over every predicted token.
    theirs = transformers.RobertaForMaskedLM.from_pretrained(published).eval()
    test = open_store(store).data["test"]
    pairs = batches.eval_batches(test, tiny_tokenizer, 3, 0.15, 7, num_processes=1, process_index=0)
    inputs, labels = torch.cat([b[0] for b in pairs]).long(), torch.cat([b[1] for b in pairs]).long()
    with torch.no_grad():
        loss = theirs(input_ids=inputs, labels=labels).loss.item()
    assert evals[0]["step"] == 0 and evals[0]["eval_tokens"] == (labels != -100).sum().item()
    assert evals[0]["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert evals[-1]["step"] == 12 and evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5, evals

    # The final model in transformers: its weights are the trained ones, its logits ours.
    from model import RobertaForMaskedLM

    final = transformers.RobertaForMaskedLM.from_pretrained(run / "final_model").eval()
    ours = RobertaForMaskedLM.from_pretrained(run / "final_model").eval()
    saved = load_file(run / "final_model" / "model.safetensors")
    assert all(torch.equal(final.state_dict()[k], v) for k, v in saved.items())
    with torch.no_grad():
        torch.testing.assert_close(final(input_ids=inputs).logits, ours(inputs).logits, atol=1e-5, rtol=0)
    assert not torch.equal(saved["roberta.embeddings.word_embeddings.weight"],
                           load_file(published / "model.safetensors")["roberta.embeddings.word_embeddings.weight"])

    # Provenance: args.json, the run's README, the final model's config.json.
    record = json.loads((run / "args.json").read_text())
    source = record["model_config"]["init_from"]
    assert source["source"] == str(published.resolve()) and len(source["sha256"]) == 64
    assert record["args"]["embedding_dimension"] == 48 and "initializer_range" in record["not_used"]
    assert source["sha256"][:16] in (run / "README.md").read_text()
    assert json.loads((run / "final_model" / "config.json").read_text())["init_from"] == source


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(store, published, continued, tmp_path):
    reference, _ = continued
    killed = run_train(store, tmp_path, "run", "--init_from", str(published), *RESUMABLE,
                       env={"TRAIN_TEST_SIGNAL_AT_STEP": "7:KILL"}, check=False)
    assert killed.returncode == -9
    resumed = run_train(store, tmp_path, "run", "--init_from", str(published), *RESUMABLE,
                        "--resume_from_checkpoint", "latest")
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / 'step_4'} at step 4" in resumed.stdout
    a, b = load_file(reference / "final_model" / "model.safetensors"), load_file(
        tmp_path / "run" / "final_model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert without_timing(metrics(tmp_path / "run")) == without_timing(metrics(reference))
    # Without --init_from the checkpoint is refused: it was continued from a model, not built from the flags.
    refused = run_train(store, tmp_path, "run", *RESUMABLE, "--num_training_steps", "20",
                        "--resume_from_checkpoint", "latest", check=False)
    assert refused.returncode == 2 and f"--init_from {published.resolve()} (now None)" in refused.stderr


@pytest.mark.slow
def test_a_resume_needs_only_its_checkpoint_and_keeps_the_provenance_it_started_with(store, published, continued,
                                                                                      tmp_path):
    """The --init_from folder replaced by other weights (as a Hub `main` that moved), or gone (a cleared cache):
    the checkpoint holds every weight; the provenance stays the one recorded when the run started."""
    reference, _ = continued
    source = tmp_path / "model"
    shutil.copytree(published, source)
    run_train(store, tmp_path, "changed", "--init_from", str(source), *RESUMABLE,
              env={"TRAIN_TEST_SIGNAL_AT_STEP": "5:TERM"})
    shutil.copytree(tmp_path / "changed", tmp_path / "gone")
    started = json.loads((tmp_path / "changed" / "args.json").read_text())["model_config"]["init_from"]
    weights = load_file(source / "model.safetensors")
    from safetensors.torch import save_file

    save_file({k: v + 1 for k, v in weights.items()}, source / "model.safetensors")  # the folder changed
    run_train(store, tmp_path, "changed", "--init_from", str(source), *RESUMABLE, "--resume_from_checkpoint",
              "latest")
    shutil.rmtree(source)  # the folder is gone
    run_train(store, tmp_path, "gone", "--init_from", str(source), *RESUMABLE, "--resume_from_checkpoint", "latest")
    for run in (tmp_path / "changed", tmp_path / "gone"):
        a, b = load_file(reference / "final_model" / "model.safetensors"), load_file(
            run / "final_model" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), run
        assert json.loads((run / "final_model" / "config.json").read_text())["init_from"] == started
        assert json.loads((run / "args.json").read_text())["model_config"]["init_from"] == started
        assert started["sha256"][:16] in (run / "README.md").read_text()


@pytest.mark.slow
def test_finetuning_accepts_a_continued_final_model(continued):
    import finetune_roberta_qa as finetune
    import finetuning

    run, _ = continued
    args = finetune.parse_args(["--pretrained_backbone", "pretrained", "--path_to_pretrained_backbone",
                                str(run / "final_model"), "--dataset", "demo", "--max_seq_length", "16",
                                "--doc_stride", "4"])
    finetuning.check_backbone(args)
    _, config, model, provenance = finetune.load_backbone(args)
    saved = load_file(run / "final_model" / "model.safetensors")
    embeddings = "roberta.embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[embeddings], saved[embeddings])
    assert config.hidden_size == 48 and provenance["weights"] == str(run / "final_model")


@pytest.mark.slow
def test_under_fsdp2_meta_device_loading_the_loaded_weights_are_what_trains(store, published, tmp_path):
    """accelerate's own FSDP2 preparation (cpu_ram_efficient_loading) in two gloo processes, through train.setup;
    only rank 0 loads the checkpoint, rank 1 starts from random weights (tests/init_from_fsdp_worker.py)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
               str(ROOT / "tests" / "init_from_fsdp_worker.py"), str(published), str(store), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    reports = [json.loads((tmp_path / f"report_{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["fsdp2"] for r in reports) and reports[1]["random_before_prepare"]
    names = load_file(published / "model.safetensors").keys()
    assert all(not r["different"] and sorted(r["equal"]) == sorted(names) for r in reports), reports


@pytest.mark.slow
def test_two_processes_start_from_the_same_loaded_weights(store, published, continued, tmp_path):
    from test_train import LAUNCH_2_PROCESSES

    command = [*LAUNCH_2_PROCESSES, str(ROOT / "train.py"), "--path_to_prepped_data", str(store), "--working_directory",
               str(tmp_path), "--experiment_name", "ddp", *RUN, "--init_from", str(published),
               "--num_training_steps", "2", "--num_warmup_steps", "1", "--evaluation_interval", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "processes: 2 on cpu (DDP on CPU (gloo))" in result.stdout
    # The step-0 evaluation over both processes is the single-process one: the same checkpoint, the same masks.
    single, ddp = metrics(continued[0])[0], metrics(tmp_path / "ddp")[0]
    assert ddp["step"] == 0 and ddp["eval_tokens"] == single["eval_tokens"]
    assert ddp["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-5)
