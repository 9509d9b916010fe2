"""One process of tests/test_scale_out.py: train.py itself under `accelerate launch --use_fsdp`, on the CPU.

On a machine without an accelerator, accelerate builds its FSDP plugin from the launcher's FSDP_* variables and then
silently runs MULTI_CPU (plain DDP over gloo), and train.py refuses such a launch (`distributed.check_launch`).
This worker changes those two decisions, and nothing else: train.py's refusal is lifted, and once accelerate's state
exists, FSDP is declared in effect with the plugin accelerate itself built. Everything after is
accelerate's own code (`Accelerator.prepare` -> `_prepare_fsdp2` / `prepare_model`, `fsdp2_prepare_model` with
`cpu_ram_efficient_loading`, the sharded `save_state` / `load_state`, `get_state_dict`) and train.py's `main`, run as
`__main__` with the arguments given here.

With TEST_COMPILE_BACKEND set (e.g. aot_eager), train.py's `--compile` uses that torch.compile backend instead of
inductor: the same graphs traced through FSDP2's hooks, without generating code.

For the test it also writes <run folder>/fsdp_probe.pt: the word embeddings right after initialisation (before
accelerate prepares the model) and the trained ones gathered from the shards right before final_model/ is saved.

    accelerate launch --use_fsdp --fsdp_version 2 ... tests/fsdp_accelerate_worker.py TRAIN_PY_ARGUMENTS...
"""

import functools
import os
import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import accelerate.state  # noqa: E402
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402

import checkpoints  # noqa: E402
import distributed  # noqa: E402

PROBE = {}


def declare_fsdp_on_the_cpu() -> None:
    original = accelerate.state.AcceleratorState.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
            plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
            if self._mixed_precision != "no":
                plugin.set_mixed_precision(self._mixed_precision)
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, plugin

    accelerate.state.AcceleratorState.__init__ = init


def allow_fsdp1_full_state_dict_on_the_cpu() -> None:
    """accelerate gathers FSDP1 weights with offload_to_cpu=True, which segfaults when the shards already live on
    the CPU (torch 2.13, gloo); on a GPU it is the right setting."""
    import torch.distributed.fsdp as fsdp

    config = fsdp.FullStateDictConfig
    fsdp.FullStateDictConfig = lambda offload_to_cpu=False, rank0_only=False: config(False, rank0_only)


def full_embeddings(wrapped, raw_model) -> dict[str, torch.Tensor]:
    """The word embeddings and the decoder weight as whole tensors, gathered from the shards (every process)."""
    def whole(tensor):
        return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()

    if not hasattr(raw_model.roberta.embeddings.word_embeddings.weight, "full_tensor"):  # FSDP1: flat shards
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(wrapped):
            return {"embeddings": whole(raw_model.roberta.embeddings.word_embeddings.weight),
                    "decoder": whole(raw_model.lm_head.decoder.weight)}
    return {"embeddings": whole(raw_model.roberta.embeddings.word_embeddings.weight),
            "decoder": whole(raw_model.lm_head.decoder.weight)}


def record_embeddings() -> None:
    prepare, save_final_model = distributed.prepare_model_and_optimizer, checkpoints.save_final_model

    def prepare_and_record(accelerator, raw_model, *args, **kwargs):
        PROBE["initial"] = raw_model.roberta.embeddings.word_embeddings.weight.detach().clone()
        return prepare(accelerator, raw_model, *args, **kwargs)

    def record_and_save(accelerator, wrapped, raw_model, tokenizer, run_dir):
        PROBE.update(full_embeddings(wrapped, raw_model))
        if accelerator.is_main_process:
            torch.save(PROBE, Path(run_dir) / "fsdp_probe.pt")
        return save_final_model(accelerator, wrapped, raw_model, tokenizer, run_dir)

    distributed.prepare_model_and_optimizer, checkpoints.save_final_model = prepare_and_record, record_and_save


if __name__ == "__main__":
    if os.environ.get("TEST_COMPILE_BACKEND"):
        torch.compile = functools.partial(torch.compile, backend=os.environ["TEST_COMPILE_BACKEND"])
    distributed.check_launch = lambda: None  # FSDP on the CPU is what this worker is for
    declare_fsdp_on_the_cpu()
    allow_fsdp1_full_state_dict_on_the_cpu()
    record_embeddings()
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
