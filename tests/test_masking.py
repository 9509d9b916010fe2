"""batches.mask_tokens: RoBERTa's dynamic masking as fairseq draws it (int(p * n + U) positions per row, without
replacement; 80% <mask>, 10% random, 10% unchanged), and the bound batches.max_predictions_per_seq."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from batches import mask_tokens, max_predictions_per_seq


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    """Blocks shaped like the store's (<s> ... </s>) with a run of padding, large enough for tight statistics."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tiny_tokenizer), (301, 257), generator=generator)
    ids[:, 0], ids[:, -1] = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    ids[:40, 100:] = tiny_tokenizer.pad_token_id
    ids[:, 50] = tiny_tokenizer.eos_token_id  # a document boundary inside a block
    return ids


def masked(batch, tokenizer, seed=1, probability=0.15):
    return mask_tokens(batch, tokenizer, probability, generator=torch.Generator().manual_seed(seed))


def test_fractions_follow_the_recipe(batch, tiny_tokenizer):
    inputs, labels = masked(batch, tiny_tokenizer)
    special = torch.isin(batch, torch.tensor(tiny_tokenizer.all_special_ids))
    chosen = labels != -100
    assert abs(chosen[~special].float().mean().item() - 0.15) < 0.005
    as_mask = inputs[chosen] == tiny_tokenizer.mask_token_id
    unchanged = inputs[chosen] == batch[chosen]
    replaced = ~as_mask & ~unchanged
    assert abs(as_mask.float().mean().item() - 0.8) < 0.012
    assert abs(replaced.float().mean().item() - 0.1) < 0.01
    assert abs(unchanged.float().mean().item() - 0.1) < 0.01  # 10% kept (+ random draws of the same id)


def test_labels_and_untouched_positions(batch, tiny_tokenizer):
    before = batch.clone()
    inputs, labels = masked(batch, tiny_tokenizer)
    assert torch.equal(batch, before), "the input tensor must not be modified"
    chosen = labels != -100
    assert torch.equal(labels[chosen], batch[chosen])
    assert torch.equal(inputs[~chosen], batch[~chosen])
    assert inputs.shape == labels.shape == batch.shape and inputs.dtype == labels.dtype == batch.dtype


def test_special_tokens_are_never_chosen_nor_drawn(batch, tiny_tokenizer):
    inputs, labels = masked(batch, tiny_tokenizer, probability=0.9)
    special_ids = torch.tensor(tiny_tokenizer.all_special_ids)
    special = torch.isin(batch, special_ids)
    assert (labels[special] == -100).all()  # padding, <s>, </s> never predicted
    assert (batch == tiny_tokenizer.pad_token_id).any() and (labels[batch == tiny_tokenizer.pad_token_id] == -100).all()
    chosen = labels != -100
    random_tokens = inputs[chosen & (inputs != tiny_tokenizer.mask_token_id)]
    assert not torch.isin(random_tokens, special_ids).any(), "a random replacement must be an ordinary token"
    assert abs(chosen[~special].float().mean().item() - 0.9) < 0.01


def test_deterministic_given_the_generator(batch, tiny_tokenizer):
    first, second = masked(batch, tiny_tokenizer, seed=3), masked(batch, tiny_tokenizer, seed=3)
    other = masked(batch, tiny_tokenizer, seed=4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_draws_differ_between_calls_of_one_generator(batch, tiny_tokenizer):
    """Dynamic masking: the same block gets a new mask at every visit."""
    generator = torch.Generator().manual_seed(5)
    _, labels_a = mask_tokens(batch, tiny_tokenizer, 0.15, generator)
    _, labels_b = mask_tokens(batch, tiny_tokenizer, 0.15, generator)
    assert not torch.equal(labels_a, labels_b)


def special_mask(batch, tokenizer):
    return torch.isin(batch, torch.tensor(tokenizer.all_special_ids))


def test_each_row_gets_floor_or_ceil_of_p_times_its_maskable_tokens(batch, tiny_tokenizer):
    """Rows of 254 maskable tokens (p*n = 38.1) and, padded, of 98 (p*n = 14.7): the count is floor(p*n) or one
    more, p*n on average (a coin per token would spread it over +-10; plain rounding would give 38 and 15)."""
    n = (~special_mask(batch, tiny_tokenizer)).sum(dim=1)
    assert set(n.tolist()) == {254, 98}
    counts = torch.stack([(masked(batch, tiny_tokenizer, seed=seed)[1] != -100).sum(dim=1) for seed in range(20)])
    for maskable in (254, 98):
        rows = counts[:, n == maskable].flatten().double()  # (draws x rows,)
        expected = 0.15 * maskable
        assert set(rows.long().tolist()) <= {math.floor(expected), math.floor(expected) + 1}
        assert abs(rows.mean().item() - expected) < 0.03, (maskable, rows.mean().item())


def test_a_probability_of_one_chooses_every_ordinary_token_and_no_special_one(batch, tiny_tokenizer):
    _, labels = masked(batch, tiny_tokenizer, probability=1.0)
    assert torch.equal(labels != -100, ~special_mask(batch, tiny_tokenizer))


def test_the_count_never_exceeds_max_predictions_per_seq_and_reaches_it(tiny_tokenizer):
    generator = torch.Generator().manual_seed(9)
    for length, probability in [(13, 0.15), (37, 0.3), (64, 0.15), (50, 0.5)]:
        ids = torch.randint(5, len(tiny_tokenizer), (500, length), generator=generator)
        k = max_predictions_per_seq(length, probability)
        counts = (mask_tokens(ids, tiny_tokenizer, probability, generator)[1] != -100).sum(dim=1)
        assert counts.max().item() <= k, (length, probability)
        if (probability * length) % 1:  # with no special token the bound is reached (p*n not an integer)
            assert counts.max().item() == k, (length, probability)
    assert max_predictions_per_seq(512, 0.15) == 77  # floor(76.8) + 1
    assert max_predictions_per_seq(4, 1.0) == 4  # never more than the row holds
    with pytest.raises(ValueError, match="mlm_probability"):
        max_predictions_per_seq(512, 1.5)


def test_shapes_and_leading_dimensions(batch, tiny_tokenizer):
    """A single sequence, and (2, B, T): the last dimension is the sequence, the draw is per row."""
    generator = torch.Generator().manual_seed(2)
    inputs, labels = mask_tokens(batch[-1], tiny_tokenizer, 0.5, generator)
    assert inputs.shape == labels.shape == batch[-1].shape
    assert (labels != -100).sum().item() == 127  # 0.5 * 254 maskable tokens: an integer, so exactly that
    stacked = torch.stack([batch[-10:-5], batch[-5:]])  # unpadded rows: 254 maskable tokens, p * n = 38.1
    _, labels = mask_tokens(stacked, tiny_tokenizer, 0.15, generator)
    assert labels.shape == stacked.shape
    assert set((labels != -100).sum(dim=-1).flatten().tolist()) <= {38, 39}


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


def test_no_host_synchronisation_and_no_data_dependent_shape(batch, tiny_tokenizer):
    """No op whose output shape depends on the data (nonzero, boolean indexing, masked_select) and no read of a
    value back to the host (item): on a GPU each would make the step wait for the device."""
    masked(batch, tiny_tokenizer)  # builds the per-device tables once (a one-off host-to-device copy)
    with _RecordOps() as recorder:
        masked(batch, tiny_tokenizer)
    forbidden = {"nonzero", "_local_scalar_dense", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                 "repeat_interleave", "argwhere"}
    names = [func.overloadpacket.__name__ for func, _ in recorder.calls]
    assert "argsort" in names or "sort" in names  # the recorder saw the draw
    assert not forbidden & set(names), names
    for func, args in recorder.calls:
        if func is torch.ops.aten.index.Tensor:  # indexing with a boolean mask is nonzero() in disguise
            assert all(i is None or i.dtype != torch.bool for i in args[1]), "boolean indexing"
