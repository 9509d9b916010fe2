"""What changes with the parallelism `accelerate config` chose: how train.py prepares its model and optimizer for
it, and how its processes agree to stop on a signal.

    DDP (one or many GPUs, or CPU processes over gloo)  the model and its optimizer through accelerator.prepare
    FSDP1   the same, with use_orig_params forced on: without it FSDP1 replaces the parameters by flat shards
            when it wraps, so an optimizer built before never sees a gradient (the loss stays flat), and one built
            after sees only 1-D shards (weight decay by tensor rank would decay nothing). With it, the parameter
            objects the optimizer holds become views of their shards, and torch.compile can trace the model
    FSDP2   the model and its optimizer together (accelerate swaps the optimizer's parameters for the sharded ones)
    DeepSpeed  the model and its optimizer together; the config's "auto" micro-batch and gradient clipping come
            from train.py's flags (DeepSpeed clips inside its own step, so --max_grad_norm must reach its config)

Saving always reads the prepared, uncompiled model (see checkpoints.save_model_folder), so that a compiled
module's `_orig_mod.` keys never reach a checkpoint. What cannot work is refused at start-up with one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
from collections import Counter

import torch
from accelerate.utils import DistributedType, DynamoBackend

import fault_injection
from checkpoints import unwrapped_name
from utils import UsageError

STOP_CHECK_STEPS = 10  # several processes agree on a stop request every this many updates (one tiny all-reduce)


def prepare_model_and_optimizer(accelerator, raw_model, make_optimizer, max_grad_norm: float, per_process_batch: int,
                                compile: bool, fsdp_reduce_dtype: str = "fp32"):
    """(prepared model, its optimizer); `make_optimizer(model)` builds the optimizer on a model's parameters.
    Afterwards the decoder must still be the word-embedding matrix and every trainable parameter in exactly one
    optimizer group (`check_prepared`)."""
    backend = accelerator.state.dynamo_plugin.backend
    if compile and backend != DynamoBackend.NO:
        raise UsageError(f"--compile and accelerate's --dynamo_backend {backend.value.lower()} would compile the "
                         "model twice: use one (--compile compiles each layer and the loss; --dynamo_backend the "
                         "whole model)")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp:
        reduce_in_fp32(accelerator.state.fsdp_plugin, fsdp_reduce_dtype)
    fsdp1 = fsdp and not accelerator.is_fsdp2
    if fsdp1 and not accelerator.state.fsdp_plugin.use_orig_params:
        accelerator.print("FSDP1: use_orig_params set to true (the optimizer and torch.compile need the original "
                          "parameters)")
        accelerator.state.fsdp_plugin.use_orig_params = True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        configure_deepspeed(config, max_grad_norm, per_process_batch, compile)
        if config.get("zero_optimization", {}).get("stage") == 3:  # ZeRO-3 gathers the weights of a module only
            for module in raw_model.modules():  # when it is called: concatenating q, k, v by hand would skip that
                if hasattr(module, "fused_qkv"):
                    module.fused_qkv = False
    wrapped, optimizer = accelerator.prepare(raw_model, make_optimizer(raw_model))
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    check_prepared(raw_model, wrapped, optimizer, check_groups=not deepspeed)
    return wrapped, optimizer


def reduce_in_fp32(plugin, reduce_dtype: str) -> None:
    """FSDP's gradient reduction in float32 (as torchtitan does) unless --fsdp_reduce_dtype asks otherwise:
    accelerate's bf16 policy reduces in bf16, which sums the shards' gradients with 8 bits of mantissa."""
    policy = plugin.mixed_precision_policy
    wanted = {"fp32": torch.float32, "bf16": torch.bfloat16}[reduce_dtype]
    if policy is not None and getattr(policy, "reduce_dtype", None) not in (None, wanted):
        plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=wanted)


def check_prepared(raw_model, wrapped, optimizer, check_groups: bool = True) -> None:
    """Refuse (one line naming the parameter) a preparation that broke the tie or lost a parameter: the MLM decoder
    must be the word-embedding parameter itself, and every trainable parameter must be in exactly one optimizer
    group. FSDP2's meta-device loading (`cpu_ram_efficient_loading`) unties a model that cannot `tie_weights()`;
    the decoder then trains nowhere and is saved over the trained embeddings."""
    decoder, embeddings = raw_model.get_output_embeddings(), raw_model.get_input_embeddings()
    if decoder is not None and decoder.weight is not embeddings.weight:
        raise UsageError("after accelerate prepared the model, lm_head.decoder.weight is no longer "
                         "roberta.embeddings.word_embeddings.weight (the tie was lost): the decoder would never "
                         "train and would be saved over the trained embeddings")
    if not check_groups:  # DeepSpeed's optimizer holds its own flattened copies
        return
    in_groups = Counter(id(p) for group in optimizer.param_groups for p in group["params"])
    for name, parameter in wrapped.named_parameters():
        if parameter.requires_grad and in_groups[id(parameter)] != 1:
            where = "in no optimizer group" if not in_groups[id(parameter)] else "in several optimizer groups"
            raise UsageError(f"after accelerate prepared the model, the trainable parameter {unwrapped_name(name)} is "
                             f"{where}: it would not train as the flags say")


def configure_deepspeed(config: dict, max_grad_norm: float, per_process_batch: int, compile: bool) -> None:
    """Fill the DeepSpeed config's "auto" micro-batch and clipping from the flags; refuse what would not work."""
    for section in ("optimizer", "scheduler"):  # DeepSpeed would build its own and ignore train.py's
        if section in config:
            raise UsageError(f'the DeepSpeed config has its own "{section}" section: train.py builds the optimizer '
                             "(AdamW, --learning_rate, --adam_*, --weight_decay) and the learning-rate schedule "
                             f"itself; remove \"{section}\" from the config")
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":  # accelerate guesses it from a dataloader
        config["train_micro_batch_size_per_gpu"] = per_process_batch
    clipping = config.get("gradient_clipping", "auto")
    if clipping == "auto":  # accelerate would fill in 1.0, whatever --max_grad_norm says
        config["gradient_clipping"] = max_grad_norm
    elif float(clipping) != max_grad_norm:
        raise UsageError(f"the DeepSpeed config clips gradients at {clipping} but --max_grad_norm is {max_grad_norm}; "
                         "DeepSpeed clips inside its own step: make them agree")
    if compile:
        raise UsageError("--compile is not supported under DeepSpeed here: use accelerate's --dynamo_backend")
    zero = config.get("zero_optimization", {})
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise UsageError("DeepSpeed ZeRO-3 needs stage3_gather_16bit_weights_on_model_save: true (accelerate "
                         "config: zero3_save_16bit_model) to save transformers-format checkpoints")


def is_sharded(accelerator) -> bool:
    """FSDP or DeepSpeed: the weights and optimizer state live in shards that accelerate saves and loads."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def check_launch() -> None:
    """Refuse, before anything is written, FSDP asked for where there is no GPU: accelerate then fails on every
    process (`sync_module_states ... not supported on cpu`), or with ACCELERATE_USE_CPU runs plain DDP instead."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("true", "1"):
        return
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("true", "1")
    if on_cpu or not torch.accelerator.is_available():
        raise UsageError("FSDP was asked for (accelerate launch --use_fsdp) but this run has no GPU: FSDP shards "
                         "across GPUs only; on a CPU launch with --multi_gpu (data-parallel over gloo) instead")


def describe(accelerator) -> str:
    """The parallelism in effect, in words; said loudly when FSDP or DeepSpeed was asked for and is not."""
    kind = accelerator.distributed_type.value
    names = {"NO": "single process", "MULTI_GPU": "DDP", "MULTI_CPU": "DDP on CPU (gloo)", "DEEPSPEED": "DeepSpeed",
             "FSDP": f"FSDP{2 if accelerator.is_fsdp2 else 1}"}
    for variable, wanted in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if os.environ.get(variable, "false").lower() == "true" and kind != wanted:
            accelerator.print(f"WARNING: {wanted} was asked for but is NOT in effect (accelerate chose {kind}); on a "
                              "CPU accelerate runs FSDP as plain DDP")
    return names.get(kind, kind)


class StopSignal:
    """SIGTERM, SIGINT (Ctrl-C) and SIGHUP ask for a checkpoint and a clean exit after the current update.

    One process reads its own flag every update; several agree every STOP_CHECK_STEPS updates through accelerate's
    trigger (one tiny all-reduce), so that all stop at the same update. A second Ctrl-C stops at once. Started by a
    launcher (accelerate launch, torchrun), the launcher's death is a SIGTERM too (Linux), so that a killed launcher
    never leaves behind an orphaned run that will stop without a checkpoint."""

    def __init__(self, accelerator):
        self.accelerator, self.name = accelerator, None
        handled = [signal.SIGTERM, signal.SIGINT]
        if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # under nohup SIGHUP stays ignored
            handled.append(signal.SIGHUP)
        for signum in handled:
            signal.signal(signum, self._on_signal)
        self.requested = fault_injection.with_signal_at_step(self.requested)
        if any(name in os.environ for name in ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")):
            with contextlib.suppress(OSError, AttributeError):  # PR_SET_PDEATHSIG (1) is Linux's
                ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGTERM))

    def _on_signal(self, signum, frame) -> None:
        if self.name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        self.name = self.name or signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        if self.accelerator.num_processes == 1:
            return self.name is not None
        if step % STOP_CHECK_STEPS:
            return False
        if self.name is not None:
            self.accelerator.set_trigger()
        stopping = self.accelerator.check_trigger()
        self.name = self.name or ("a signal to another process" if stopping else None)
        return stopping

