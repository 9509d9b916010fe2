"""Sharded and multi-process training: accelerate's own FSDP2 code path on the CPU, and the checks train.py makes
after `accelerator.prepare`.

accelerate runs FSDP only on an accelerator. tests/fsdp_accelerate_worker.py runs train.py itself under
`accelerate launch --use_fsdp` in two CPU processes over gloo, with FSDP declared in effect where accelerate would
otherwise silently fall back to DDP: the preparation (`Accelerator._prepare_fsdp2`, `fsdp2_prepare_model` with and
without `cpu_ram_efficient_loading`), the sharded checkpoints and the gathered final model are accelerate's.
accelerate's FSDP1 wrapping refuses a CPU (`device_id` cpu:N), so FSDP1 is checked one level down, through
torch's FSDP1 with train.py's preparation order (tests/fsdp_worker.py), and on a GPU by benchmarks/gpu_check.py.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import set_seed
from conftest import build_store
from safetensors.torch import load_file

import checkpoints
import distributed
from checkpoints import unwrapped_name
from model import RobertaConfig, RobertaForMaskedLM
from utils import UsageError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--context_length", "16", "--num_transformer_blocks", "2", "--embedding_dimension", "48",
        "--num_attention_heads", "3", "--per_gpu_batch_size", "3", "--num_workers", "0", "--seed", "7",
        "--num_training_steps", "20", "--num_warmup_steps", "2", "--learning_rate", "3e-3", "--logging_steps", "5",
        "--evaluation_interval", "10", "--checkpoint_interval", "10"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer_dir):
    return build_store(tmp_path_factory.mktemp("store"), tiny_tokenizer_dir)


def launch_fsdp2(store, workdir, name, processes=2, ram_efficient=True, extra=(), env=None):
    """train.py under `accelerate launch --use_fsdp --fsdp_version 2`, in CPU processes (see the module docstring)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "29541", "--use_fsdp", "--fsdp_version", "2", "--fsdp_cpu_ram_efficient_loading",
               str(ram_efficient).lower(), "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
               "--fsdp_transformer_layer_cls_to_wrap", "RobertaLayer",
               str(ROOT / "tests" / "fsdp_accelerate_worker.py"),
               "--path_to_prepped_data", str(store), "--working_directory", str(workdir), "--experiment_name", name,
               *TINY, *extra]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records if "eval_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("ram_efficient", [True, False], ids=["cpu_ram_efficient_loading", "plain_loading"])
def test_fsdp2_through_accelerate_keeps_the_tie_and_trains_every_parameter(store, tmp_path, ram_efficient):
    result = launch_fsdp2(store, tmp_path, "fsdp2", ram_efficient=ram_efficient)
    assert "processes: 2 on cpu (FSDP2)" in result.stdout  # accelerate's FSDP2 path, not a DDP fallback
    train, evals = losses(tmp_path / "fsdp2")
    assert train[-1] < train[0] - 0.3 and evals[-1] < evals[0], (train, evals)
    probe = torch.load(tmp_path / "fsdp2" / "fsdp_probe.pt")  # gathered from the shards before final_model/
    # The decoder is the embedding matrix at the end of training: one parameter, trained through both uses.
    assert torch.equal(probe["decoder"], probe["embeddings"])
    saved = load_file(tmp_path / "fsdp2" / "final_model" / "model.safetensors")
    embeddings = saved["roberta.embeddings.word_embeddings.weight"]
    assert not any("decoder.weight" in key for key in saved)  # tied in the file as in transformers'
    assert torch.equal(embeddings, probe["embeddings"])  # final_model holds the trained embeddings...
    assert not torch.equal(embeddings, probe["initial"])  # ...not the initial ones
    # Every weight moved from its initial value (train.py draws them after set_seed(--seed)): none was left out.
    set_seed(7)
    initial = RobertaForMaskedLM(RobertaConfig.from_pretrained(tmp_path / "fsdp2" / "final_model")).state_dict()
    assert torch.equal(initial["roberta.embeddings.word_embeddings.weight"], probe["initial"])
    assert [key for key in saved if torch.equal(saved[key], initial[key])] == []


@pytest.mark.slow
def test_fsdp2_stopped_by_sigterm_resumes_on_another_process_count(store, tmp_path):
    """A sharded checkpoint of 2 processes (torch.distributed.checkpoint) resharded onto 3 on resume."""
    launch_fsdp2(store, tmp_path, "resharded", env={"TRAIN_TEST_SIGNAL_AT_STEP": "10:TERM"})
    halfway = tmp_path / "resharded" / "checkpoints" / "step_10"
    assert halfway.is_dir() and not (tmp_path / "resharded" / "final_model").exists()
    result = launch_fsdp2(store, tmp_path, "resharded", processes=3, extra=["--resume_from_checkpoint", "latest"])
    assert f"resumed from {halfway} at step 10" in result.stdout and "global batch size 9" in result.stdout
    train, _ = losses(tmp_path / "resharded")
    assert len(train) == 4 and train[-1] < train[0]
    final, before = (load_file(folder / "model.safetensors") for folder in (tmp_path / "resharded" / "final_model",
                                                                            halfway))
    assert final.keys() == before.keys() and any(not torch.equal(final[k], before[k]) for k in final)


@pytest.mark.slow
def test_fsdp1_trains_and_saves_the_trained_weights(tmp_path, tiny_tokenizer_dir):
    """FSDP1 one level down: torch's FSDP1 wrapping with train.py's preparation order (see tests/fsdp_worker.py)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               str(ROOT / "tests" / "fsdp_worker.py"), "1", str(tiny_tokenizer_dir), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["losses"][-1] < report["losses"][0] - 0.5, report["losses"]  # the optimizer reaches the weights
    assert report["keys_equal"] and report["saved_equals_memory"]  # final_model holds what was trained
    assert report["changed_from_initial"] == report["num_weights"], report
    # Weight decay by tensor rank: the matrices keep their shapes under FSDP (FSDP1 needs use_orig_params).
    assert len(report["decayed_matrices"]) >= 10 and all(ndim == 2 for ndim in report["decayed_matrices"])


# ----------------------------------------------------------------------------------------------------------------
# What train.py checks after preparation, and what it refuses before
# ----------------------------------------------------------------------------------------------------------------


def tiny_model() -> RobertaForMaskedLM:
    return RobertaForMaskedLM(RobertaConfig(vocab_size=99, hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
                                            intermediate_size=96, max_position_embeddings=15))


def test_tie_weights_restores_the_tie_after_a_rebuild_on_the_meta_device():
    model = tiny_model()
    model.to("meta")  # what accelerate's FSDP2 loading does before re-tying: every parameter a new tensor
    model.lm_head.decoder.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.decoder.weight))
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    model.tie_weights()
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight


def test_a_lost_tie_or_a_parameter_outside_the_optimizer_is_refused_by_name():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    distributed.check_prepared(model, model, optimizer)  # intact: nothing to say
    untied = tiny_model()
    untied.lm_head.decoder.weight = torch.nn.Parameter(untied.lm_head.decoder.weight.detach().clone())
    with pytest.raises(UsageError, match="lm_head.decoder.weight is no longer roberta.embeddings.word_embeddings"):
        distributed.check_prepared(untied, untied, torch.optim.AdamW(untied.parameters()))
    missing = torch.optim.AdamW([p for n, p in model.named_parameters() if n != "lm_head.bias"])
    with pytest.raises(UsageError, match="parameter lm_head.bias is in no optimizer group"):
        distributed.check_prepared(model, model, missing)
    # (torch's optimizers refuse this themselves; a wrapper's groups are only read)
    twice = SimpleNamespace(param_groups=[{"params": list(model.parameters())}, {"params": [model.lm_head.bias]}])
    with pytest.raises(UsageError, match="lm_head.bias is in several optimizer groups"):
        distributed.check_prepared(model, model, twice)
    assert unwrapped_name("module._fsdp_wrapped_module.roberta.x._orig_mod.weight") == "roberta.x.weight"


def test_deepspeed_configs_with_their_own_optimizer_or_schedule_are_refused():
    for section in ("optimizer", "scheduler"):
        with pytest.raises(UsageError, match=f'has its own "{section}" section'):
            distributed.configure_deepspeed({section: {"type": "AdamW"}}, 1.0, 8, False)


def fake_accelerator(backend="NO", distributed_type="NO", processes=1, plugin=None):
    from accelerate.utils import DistributedType, DynamoBackend

    state = SimpleNamespace(dynamo_plugin=SimpleNamespace(backend=DynamoBackend(backend)), fsdp_plugin=plugin)
    return SimpleNamespace(state=state, distributed_type=DistributedType(distributed_type), num_processes=processes)


def test_compile_and_accelerates_dynamo_backend_are_not_both_applied():
    with pytest.raises(UsageError, match="--compile and accelerate's --dynamo_backend inductor would compile"):
        distributed.prepare_model_and_optimizer(fake_accelerator("INDUCTOR"), tiny_model(), None, 1.0, 8, True)


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_reduces_gradients_in_float32_unless_asked_otherwise(version):
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=version)
    plugin.set_mixed_precision("bf16")  # what accelerate does for --mixed_precision bf16: reduce in bf16
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16
    distributed.reduce_in_fp32(plugin, "fp32")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.float32
    assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16  # the compute dtype is untouched
    distributed.reduce_in_fp32(plugin, "bf16")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16


def test_a_deepspeed_checkpoint_is_resumed_only_on_its_process_count():
    checkpoints.check_resume_layout(fake_accelerator(distributed_type="DEEPSPEED", processes=4), 4)
    checkpoints.check_resume_layout(fake_accelerator(distributed_type="FSDP", processes=4), 2)  # DCP reshards
    with pytest.raises(UsageError, match="saved by 2 processes and cannot be loaded by 4"):
        checkpoints.check_resume_layout(fake_accelerator(distributed_type="DEEPSPEED", processes=4), 2)


@dataclass
class Gathering:
    hosts: list

    def __call__(self, objects):
        return self.hosts


def test_dataloader_workers_count_the_processes_of_this_host_without_local_world_size(monkeypatch):
    import socket

    import batches

    here = socket.gethostname()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)  # srun and mpirun do not set it
    monkeypatch.setattr("accelerate.utils.gather_object", Gathering([here, here, "other", "other", here, "other"]))
    assert batches.processes_on_this_node(SimpleNamespace(num_processes=6)) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert batches.processes_on_this_node(SimpleNamespace(num_processes=16)) == 8


def test_the_vocabulary_can_be_padded_for_faster_matrix_multiplies(store, tmp_path):
    import train

    def config(*extra):
        plan = train.validate(train.parse_args(["--path_to_prepped_data", str(store), "--working_directory",
                                                str(tmp_path), *TINY, *extra]))
        for lock in plan.locks:
            lock.release()
        return plan.config, len(plan.tokenizer)

    (plain, size), (padded, _) = config(), config("--pad_vocab_to_multiple_of", "64")
    assert plain.vocab_size == size  # off by default: transformers' shapes
    assert padded.vocab_size % 64 == 0 and size <= padded.vocab_size < size + 64
    with pytest.raises(UsageError, match="--pad_vocab_to_multiple_of must be at least 1"):
        config("--pad_vocab_to_multiple_of", "0")
