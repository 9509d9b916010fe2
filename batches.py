"""train.py's batches: the store's packed blocks in an order that resumes exactly, masked on the device.

Every random stream is derived from integers, never drawn from a global generator:
  * the shuffle of epoch e is a permutation seeded by (seed, SHUFFLE, e);
  * the masks of micro-step s on process p are seeded by (seed, MASK, p, s);
  * the evaluation masks are drawn once, seeded by (seed, EVAL), so every evaluation scores the same predictions.
So a resumed run needs only the data position (epoch, blocks consumed) to read the same batches with the same
masks as an uninterrupted one, and the global RNG is left to dropout alone (its state is in the checkpoint).
"""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
from accelerate.utils import gather_object

from utils import STORE_COLUMN, mask_tokens

SHUFFLE, MASK, EVAL = 1, 2, 3  # tags that keep the derived random streams apart


def derived_seed(*parts: int) -> int:
    """A seed mixed from integers, so that streams of nearby (seed, process, step) are unrelated."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class PackedBlocks(torch.utils.data.Dataset):
    """A split of packed blocks; a list of indices gives one (B, T) int32 tensor in a single read."""

    def __init__(self, split):
        self.split = split.with_format("numpy", columns=[STORE_COLUMN])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack(list(self.split[indices][STORE_COLUMN])).astype(np.int32))


class EpochBatches(torch.utils.data.Sampler):
    """This process's part of every global batch of one epoch, shuffled by (seed, epoch) alone.

    Global batch g is blocks [g*B*P, (g+1)*B*P) of the epoch's permutation, process p taking its p-th slice of B
    (the split accelerate's BatchSamplerShard makes). The last incomplete global batch is dropped, so every batch
    has one shape; `start` skips the global batches already consumed."""

    def __init__(self, num_rows: int, batch_size: int, num_processes: int, process_index: int, seed: int,
                 epoch: int, start: int = 0):
        self.num_rows, self.batch_size, self.seed, self.epoch, self.start = num_rows, batch_size, seed, epoch, start
        self.num_processes, self.process_index = num_processes, process_index
        self.num_batches = num_rows // (batch_size * num_processes)

    def __len__(self) -> int:
        return max(self.num_batches - self.start, 0)

    def __iter__(self):
        order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(
            derived_seed(self.seed, SHUFFLE, self.epoch)))
        global_batch = self.batch_size * self.num_processes
        for g in range(self.start, self.num_batches):
            first = g * global_batch + self.process_index * self.batch_size
            yield order[first:first + self.batch_size].tolist()


def processes_on_this_node(accelerator) -> int:
    """LOCAL_WORLD_SIZE where the launcher sets it (torchrun, accelerate launch); else counted by host name across
    the processes, since srun and mpirun do not set it (and the global count would starve each node's loaders)."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    if accelerator.num_processes == 1:
        return 1
    here = socket.gethostname()
    return gather_object([here]).count(here)


def loader_workers(requested: int, processes_on_this_node: int) -> int:
    """At most one worker per spare core of this process: reading packed rows is light, and workers that outnumber
    the cores take CPU time from the training process they feed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(requested, cores // max(1, processes_on_this_node) - 1))


def _batch_as_is(batch: torch.Tensor) -> torch.Tensor:
    return batch  # PackedBlocks already returns the whole batch as one tensor


def train_batches(split, batch_size: int, seed: int, accelerator, epoch: int, samples_in_epoch: int,
                  num_workers: int):
    """Endless (epoch, blocks of the epoch consumed after this batch, input_ids on the device), from a position."""
    dataset = PackedBlocks(split)
    global_batch = batch_size * accelerator.num_processes
    start = samples_in_epoch // global_batch
    workers = loader_workers(num_workers, processes_on_this_node(accelerator))
    while True:
        sampler = EpochBatches(len(dataset), batch_size, accelerator.num_processes, accelerator.process_index, seed,
                               epoch, start)
        # A private generator: DataLoader draws a worker seed from it every epoch; drawing from the global RNG
        # instead would shift dropout's random stream between a resumed run and an uninterrupted one.
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=_batch_as_is,
                                             num_workers=workers, pin_memory=accelerator.device.type == "cuda",
                                             generator=torch.Generator())
        for g, batch in enumerate(loader, start=start):
            yield epoch, (g + 1) * global_batch, batch.to(accelerator.device, non_blocking=True).long()
        epoch, start = epoch + 1, 0


def eval_batches(split, tokenizer, batch_size: int, mlm_probability: float, seed: int, num_processes: int,
                 process_index: int, max_batches: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's evaluation batches (inputs, labels) as int32, masked once with a fixed seed.

    The evaluated blocks are padded to whole global batches with rows that predict nothing (labels all -100),
    so every process runs the same number of forward passes and no block counts twice."""
    from model import IGNORE_INDEX

    global_batch = batch_size * num_processes
    n = len(split) if max_batches is None else min(len(split), max_batches * global_batch)
    ids = PackedBlocks(split).__getitems__(list(range(n))).long()
    inputs, labels = mask_tokens(ids, tokenizer, mlm_probability,
                                 torch.Generator().manual_seed(derived_seed(seed, EVAL)))
    padding = -n % global_batch
    inputs = torch.cat([inputs, torch.full((padding, ids.size(1)), tokenizer.pad_token_id)])
    labels = torch.cat([labels, torch.full((padding, ids.size(1)), IGNORE_INDEX)])
    firsts = range(process_index * batch_size, n + padding, global_batch)
    return [(inputs[i:i + batch_size].int(), labels[i:i + batch_size].int()) for i in firsts]
