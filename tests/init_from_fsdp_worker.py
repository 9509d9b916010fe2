"""One process of tests/test_init_from.py's FSDP check: train.py's setup under accelerate's own FSDP2 preparation
with cpu_ram_efficient_loading, on the CPU over gloo.

accelerate refuses FSDP without a GPU when it builds its plugin from the environment, so the Accelerator is told
that FSDP2 is in effect; `accelerator.prepare` (inside train.setup) then runs accelerate's `_prepare_fsdp2` and
`fsdp2_prepare_model`: the other ranks' models go to the meta device and rank 0's state dict is broadcast. Here only
rank 0 loads the checkpoint (the others build random weights), so equal weights on every rank afterwards mean the
weights that train are rank 0's loaded ones.

    torchrun --nproc_per_node 2 tests/init_from_fsdp_worker.py CHECKPOINT_DIR STORE_DIR OUTPUT_DIR
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import init_from  # noqa: E402
import train  # noqa: E402

EMBEDDINGS = "roberta.embeddings.word_embeddings.weight"


def main() -> None:
    checkpoint, store, output = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from safetensors.torch import load_file

    from model import RobertaForMaskedLM

    accelerator = Accelerator()  # MULTI_CPU over gloo; FSDP2 is declared below, as accelerate sets it on a GPU
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, cpu_ram_efficient_loading=True, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["RobertaLayer"])
    argv = ["--path_to_prepped_data", store, "--init_from", checkpoint, "--context_length", "16",
            "--per_gpu_batch_size", "3", "--working_directory", str(output), "--num_workers", "0"]
    args = train.parse_args(argv)
    plan = train.validate(args, argv)
    saved = load_file(Path(checkpoint) / "model.safetensors")
    built = {}

    def random_weights(folder, config):
        built["model"] = RobertaForMaskedLM(config)
        built["differed"] = not torch.equal(built["model"].state_dict()[EMBEDDINGS], saved[EMBEDDINGS])
        return built["model"]

    if not accelerator.is_main_process:  # only rank 0 loads: the others must receive its weights
        init_from.load_model = random_weights
    fsdp2 = accelerator.is_fsdp2
    trainee = train.setup(args, plan, accelerator)
    wrapped, optimizer = trainee.model, trainee.optimizer
    weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
               for k, v in wrapped.state_dict().items()}
    from torch.distributed.fsdp import FSDPModule

    report = {"rank": accelerator.process_index, "fsdp2": fsdp2 and isinstance(wrapped, FSDPModule),
              "random_before_prepare": built.get("differed", False),
              "equal": sorted(k for k in saved if k in weights and torch.equal(weights[k], saved[k])),
              "different": sorted(k for k in saved if k in weights and not torch.equal(weights[k], saved[k])),
              "optimizer_params": sum(len(g["params"]) for g in optimizer.param_groups)}
    (output / f"report_{accelerator.process_index}.json").write_text(json.dumps(report))
    for lock in plan.locks:
        lock.release()


if __name__ == "__main__":
    main()
