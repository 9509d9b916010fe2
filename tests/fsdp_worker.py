"""One process of tests/test_scale_out.py: train.py's FSDP code paths on the CPU, under torchrun with gloo.

accelerate refuses FSDP without a GPU, so this worker wraps the model with torch's FSDP itself (FSDP1 as
accelerate's prepare does, or FSDP2's fully_shard) and tells the Accelerator that FSDP is in effect; the rest is
train.py's own code: the model and optimizer prepared in train.py's order (distributed.py), a compiled module in
front (--compile), and the model folder saved through accelerate's FSDP state-dict gathering
(checkpoints.save_model_folder). Rank 0 then checks that the saved weights are the trained ones.

    torchrun --nproc_per_node 2 tests/fsdp_worker.py VERSION TOKENIZER_DIR OUTPUT_DIR
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import checkpoints  # noqa: E402
import distributed  # noqa: E402
import train  # noqa: E402
from batches import mask_tokens  # noqa: E402
from model import RobertaConfig, RobertaForMaskedLM, RobertaLayer  # noqa: E402


def allow_fsdp1_state_dict_on_cpu() -> None:
    """accelerate gathers FSDP1 weights with FullStateDictConfig(offload_to_cpu=True), which segfaults when the
    shards already live on the CPU (torch 2.13, gloo); on a GPU it is the right setting. Here, no offload."""
    import torch.distributed.fsdp as fsdp

    config = fsdp.FullStateDictConfig
    fsdp.FullStateDictConfig = lambda offload_to_cpu=False, rank0_only=False: config(False, rank0_only)


def wrap(model: torch.nn.Module, version: int, use_orig_params: bool = True) -> torch.nn.Module:
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(model, use_orig_params=use_orig_params, device_id=torch.device("cpu"),
                                        auto_wrap_policy=ModuleWrapPolicy({RobertaLayer}))
    from torch.distributed.fsdp import fully_shard

    for layer in model.roberta.encoder.layer:
        fully_shard(layer)
    return fully_shard(model)


def full_weights(wrapped: torch.nn.Module, raw: torch.nn.Module, version: int) -> dict[str, torch.Tensor]:
    """Every process's view of the complete weights in memory, gathered by torch itself."""
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(wrapped):
            return {k: v.detach().clone() for k, v in raw.state_dict().items()}
    return {k: v.full_tensor().detach().clone() for k, v in wrapped.state_dict().items()}


def main() -> None:
    version, tokenizer_dir, output = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import AutoTokenizer

    accelerator = Accelerator()  # MULTI_CPU over gloo; FSDP is declared below, as accelerate sets it on a GPU
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = SimpleNamespace(fsdp_version=version, use_orig_params=True)
    allow_fsdp1_state_dict_on_cpu()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=96, max_position_embeddings=18, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    raw = RobertaForMaskedLM(config)
    initial = {k: v.detach().clone() for k, v in raw.state_dict().items()}
    args = train.parse_args(["--path_to_prepped_data", "x", "--learning_rate", "3e-3"])
    shapes = {id(p): tuple(p.shape) for p in raw.parameters()}  # FSDP1 turns them into 1-D views of shards
    if version == 1:  # train.py's own preparation, with accelerate's FSDP1 wrapping done as accelerate does it
        plugin = accelerator.state.fsdp_plugin
        plugin.use_orig_params = False  # accelerate's default, which train.py must override
        accelerator.prepare = lambda *objects: tuple(
            wrap(o, 1, plugin.use_orig_params) if isinstance(o, torch.nn.Module) else o for o in objects)
        wrapped, optimizer = distributed.prepare_model_and_optimizer(
            accelerator, raw, lambda model: train.build_optimizer(model, args, torch.device("cpu")), 1.0, 4, False)
    else:  # FSDP2: accelerate swaps an optimizer built before wrapping; here it is built after
        wrapped = wrap(raw, version)
        optimizer = train.build_optimizer(wrapped, args, torch.device("cpu"))
    model = torch.compile(wrapped, backend="eager")  # --compile: the module called, never the one saved
    generator = torch.Generator().manual_seed(accelerator.process_index)
    ids = torch.randint(5, len(tokenizer), (4, 16), generator=generator)
    losses = []
    for _ in range(12):
        inputs, labels = mask_tokens(ids, tokenizer, 0.3, generator)
        loss = model(inputs, labels=labels).loss  # FSDP1 rebuilds the output: the field must survive
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    in_memory = full_weights(wrapped, raw, version)
    checkpoints.save_model_folder(accelerator, wrapped, raw, tokenizer, output / "final_model")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        saved = RobertaForMaskedLM.from_pretrained(output / "final_model").state_dict()
        report = {"losses": losses, "keys_equal": sorted(saved) == sorted(in_memory),
                  "saved_equals_memory": all(torch.equal(saved[k], in_memory[k]) for k in saved),
                  "changed_from_initial": sum(not torch.equal(saved[k], initial[k]) for k in saved),
                  "decayed_matrices": [len(shapes.get(id(p), p.shape)) for p in optimizer.param_groups[0]["params"]],
                  "num_weights": len(saved)}
        (output / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
