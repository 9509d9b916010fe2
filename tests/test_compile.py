"""GPU paths run on the CPU first: train.py --compile under `accelerate launch --mixed_precision bf16` (inductor, as on
a GPU, generating C++ instead of triton), and fused AdamW with train.py's parameter groups. FSDP2 with --compile
through accelerate's own preparation is in tests/test_scale_out.py."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import build_store

import train
from model import RobertaConfig, RobertaForMaskedLM

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_BF16 = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "bf16", "--dynamo_backend", "no"]
TINY = ["--context_length", "16", "--num_transformer_blocks", "1", "--embedding_dimension", "48",
        "--num_attention_heads", "3", "--per_gpu_batch_size", "3", "--num_workers", "0", "--seed", "7",
        "--num_training_steps", "4", "--num_warmup_steps", "1", "--logging_steps", "2", "--evaluation_interval", "4",
        "--checkpoint_interval", "4", "--max_eval_batches", "2"]


def adamw_args(**changes):
    return SimpleNamespace(**{"weight_decay": 0.01, "learning_rate": 1e-2, "adam_beta1": 0.9, "adam_beta2": 0.98,
                              "adam_epsilon": 1e-6, **changes})


def test_fused_adamw_gets_train_pys_parameter_groups_and_steps_as_the_loop_does():
    torch.manual_seed(3)
    config = RobertaConfig(vocab_size=99, hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
                           intermediate_size=96, max_position_embeddings=15)
    fused_model, plain_model = RobertaForMaskedLM(config).eval(), RobertaForMaskedLM(config).eval()  # no dropout
    plain_model.load_state_dict(fused_model.state_dict())
    fused = train.build_optimizer(fused_model, adamw_args(), torch.device("cuda"))  # what a GPU run builds
    plain = train.build_optimizer(plain_model, adamw_args(), torch.device("cpu"))
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    decay, no_decay = fused.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    grouped = [id(p) for group in fused.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in fused_model.parameters())  # each once, the tied matrix too
    train.apply_optimizer_flags(fused, adamw_args(weight_decay=0.1, adam_beta2=0.95))  # a resume's new flags
    train.apply_optimizer_flags(plain, adamw_args(weight_decay=0.1, adam_beta2=0.95))
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0] and fused.param_groups[0]["fused"]
    ids = torch.randint(5, 99, (3, 13))
    labels = torch.where(torch.rand(3, 13) < 0.3, ids, torch.full_like(ids, -100))
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        for _ in range(2):
            model(ids, labels=labels, max_predictions_per_seq=6).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(fused_model.state_dict().items(), plain_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert fused_model.lm_head.decoder.weight is fused_model.roberta.embeddings.word_embeddings.weight


@pytest.mark.slow
def test_train_compiled_in_bf16_under_accelerate_evaluates_as_eager_and_trains(tmp_path, tiny_tokenizer_dir):
    """The README's GPU command on the CPU: `accelerate launch --mixed_precision bf16 train.py --compile`, inductor.
    Its first evaluation (no dropout) equals the uncompiled run's; it trains, saves, and the model loads."""
    store = build_store(tmp_path, tiny_tokenizer_dir)

    def run(name, *extra):
        result = subprocess.run([*LAUNCH_BF16, str(ROOT / "train.py"), "--path_to_prepped_data", str(store),
                                 "--working_directory", str(tmp_path / "runs"), "--experiment_name", name, *TINY,
                                 *extra], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        records = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        return result.stdout, records

    out, compiled = run("compiled", "--compile")
    assert "mixed precision bf16, compiled" in out
    _, eager = run("eager")
    first = [next(r for r in records if "eval_loss" in r) for records in (compiled, eager)]
    assert first[0]["step"] == first[1]["step"] == 0
    assert first[0]["eval_loss"] == pytest.approx(first[1]["eval_loss"], rel=2e-2)  # bf16 rounding, other kernels
    losses = [r["loss"] for r in compiled if "loss" in r]
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    model = RobertaForMaskedLM.from_pretrained(tmp_path / "runs" / "compiled" / "final_model")
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
