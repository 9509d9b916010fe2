"""The byte-level BPE that prepare_data.py trains (tokenization.train_bpe_tokenizer), as transformers reloads it."""

from transformers import AutoTokenizer

from tokenization import SPECIAL_TOKENS


def test_special_tokens_have_robertas_ids(tiny_tokenizer):
    assert tiny_tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    assert (tiny_tokenizer.bos_token_id, tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id) == (0, 1, 2)


def test_mask_token_swallows_the_space_before_it(tiny_tokenizer_dir):
    # In pretraining a masked token is "Ġword" (space included), so "the <mask> of" must not encode a lone "Ġ"
    # before the mask, or the fill-mask pipeline predicts after a token the model never saw there.
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    with_mask = tokenizer("the king <mask> of", add_special_tokens=False)["input_ids"]
    with_word = tokenizer("the king river of", add_special_tokens=False)["input_ids"]
    plain = tokenizer("the king", add_special_tokens=False)["input_ids"]
    assert with_mask[: len(plain)] == plain
    assert with_mask[len(plain)] == tokenizer.mask_token_id
    assert with_mask[len(plain) + 1:] == with_word[-len(with_mask[len(plain) + 1:]):]


def test_round_trip_of_text(tiny_tokenizer):
    text = "the queen wrote 12 rivers, and the city north of it lived on."
    assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"], skip_special_tokens=True) == text
