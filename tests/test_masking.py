"""utils.mask_tokens: BERT/RoBERTa's dynamic masking (15% chosen; 80% <mask>, 10% random, 10% unchanged)."""

import pytest
import torch

from utils import mask_tokens


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
