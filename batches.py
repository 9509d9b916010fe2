"""train.py's batches: the store's packed blocks in an order that resumes exactly, masked on the device.

Sections: RoBERTa's dynamic masking (`mask_tokens`, fairseq's fixed count per row, 80/10/10, and its bound
`max_predictions_per_seq`); the blocks of a store split (`PackedBlocks`); the training and evaluation batches.

Every random stream is derived from integers, never drawn from a global generator:
  * the shuffle of epoch e is a permutation seeded by (seed, SHUFFLE, e);
  * the masks of micro-step s on process p are seeded by (seed, MASK, p, s);
  * the evaluation masks are drawn once, seeded by (seed, EVAL), so every evaluation scores the same predictions.
So a resumed run needs only the data position (epoch, blocks consumed) to read the same batches with the same
masks as an uninterrupted one, and the global RNG is left to dropout alone (its state is in the checkpoint).
"""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import torch

from model import IGNORE_INDEX, MLM_PROBABILITY
from store import STORE_COLUMN

SHUFFLE, MASK, EVAL = 1, 2, 3  # tags that keep the derived random streams apart


# ----------------------------------------------------------------------------------------------------------------
# Dynamic masking
# ----------------------------------------------------------------------------------------------------------------

_MASKING_TABLES: dict = {}  # (special ids, vocabulary size, device) -> (special ids, ordinary ids) on that device


def _masking_tables(tokenizer, device):
    """The special ids and the ordinary (non-special) ids as tensors on `device`, built once per device.

    Cached because building them means a host-to-device copy, which would make every step wait for the GPU."""
    special = tuple(sorted(set(tokenizer.all_special_ids)))
    key = (special, len(tokenizer), str(device))
    if key not in _MASKING_TABLES:
        special_ids = torch.tensor(special, dtype=torch.long)
        ordinary = torch.ones(len(tokenizer), dtype=torch.bool)
        ordinary[special_ids[special_ids < len(tokenizer)]] = False
        _MASKING_TABLES[key] = (special_ids.to(device), ordinary.nonzero().squeeze(-1).to(device))
    return _MASKING_TABLES[key]


def max_predictions_per_seq(context_length: int, mlm_probability: float = MLM_PROBABILITY) -> int:
    """The most positions `mask_tokens` can choose in one row of `context_length` tokens: floor(p * n) + 1 for
    n = context_length, at most n.

    The `max_predictions_per_seq` to give `RobertaForMaskedLM.forward` (BERT's flag of that name) for blocks of
    this length masked with this probability: its MLM head then runs on a fixed `batch x k` rows, which
    torch.compile traces into one graph. Special tokens only lower a row's count, so the bound holds for every
    row; the model checks it on the device in eager mode (a row with more would lose the excess)."""
    if context_length < 1 or not 0 <= mlm_probability <= 1:
        raise ValueError(f"need context_length >= 1 and 0 <= mlm_probability <= 1, got {context_length} and "
                         f"{mlm_probability}")
    # The same float64 product as mask_tokens' count, so that the bound cannot round differently from it.
    return min(math.floor(mlm_probability * context_length) + 1, context_length)


def mask_tokens(input_ids, tokenizer, mlm_probability: float = MLM_PROBABILITY, generator=None):
    """RoBERTa's dynamic masking, drawn as fairseq draws it: returns `(inputs, labels)`, `input_ids` untouched.

    Each row (the last dimension is the sequence) with n maskable tokens (every token that is not special:
    padding, `<s>`, `</s>` and the others are never chosen) gets exactly int(mlm_probability * n + U), U ~ U[0, 1),
    predicted positions, drawn without replacement: floor(p * n) or one more, p * n on average. This is fairseq's
    `mask_tokens_dataset.py` (the paper's code); transformers' collator flips a coin per token instead, which gives
    the same mean but a count that varies from row to row. A chosen token becomes `<mask>` 80% of the time, a
    random non-special token 10%, and stays as it is 10% (a coin per chosen token). `labels` holds the original id
    at chosen positions and IGNORE_INDEX (-100) elsewhere.

    Runs on the tensor's device with no host synchronisation and no data-dependent shape (random scores, special
    tokens ranked last, the `count` first of each row chosen), so it can sit inside a compiled step. `generator`
    (on that same device) makes the draw reproducible; successive calls with one generator draw afresh.
    `max_predictions_per_seq(T, mlm_probability)` bounds the count of a row of T tokens.
    """
    special_ids, ordinary_ids = _masking_tables(tokenizer, input_ids.device)
    draw = dict(device=input_ids.device, generator=generator)
    ids = input_ids.reshape(-1, input_ids.size(-1))  # (B, T): any leading dimensions are rows
    B, T = ids.shape
    maskable = ~torch.isin(ids, special_ids)  # (B, T)
    n = maskable.sum(dim=1, keepdim=True)  # (B, 1)
    # int(p * n + U): probabilistic rounding, in float64 so that the count agrees with max_predictions_per_seq.
    count = (n.double() * mlm_probability + torch.rand((B, 1), dtype=torch.float64, **draw)).floor().long()
    count = torch.minimum(count, n)
    # Without replacement and without nonzero(): a random score per token (special tokens scored above every
    # ordinary one), and the positions of the `count` lowest scores chosen. Ranks are scattered back to positions.
    scores = torch.rand((B, T), **draw).masked_fill(~maskable, 2.0)  # ordinary tokens score in [0, 1)
    by_score = scores.argsort(dim=1)  # (B, T): positions, lowest score first
    first_ranks = torch.arange(T, device=ids.device) < count  # (B, T): rank r is chosen when r < count
    chosen = torch.zeros_like(maskable).scatter(1, by_score, first_ranks)  # (B, T)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))

    action = torch.rand((B, T), **draw)  # < 0.8: <mask>; 0.8..0.9: random token; >= 0.9: unchanged
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), (B, T), **draw)].to(ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs.reshape(input_ids.shape), labels.reshape(input_ids.shape)


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


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
    from accelerate.utils import gather_object  # here: the notebook reads batches.py without accelerate

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

    The evaluated blocks are padded to whole global batches with rows that predict nothing (labels all IGNORE_INDEX),
    so every process runs the same number of forward passes and no block counts twice."""
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
