"""model.py against transformers' RoBERTa, at deliberately odd shapes (batch 3, sequence 13, hidden 48, vocab 99).

Odd shapes keep a transposed or mis-split dimension from passing by luck; padding in the batch exercises the
position offset and the attention mask; float32 comparisons are held to 1e-5."""

import math

import pytest
import torch
import torch.nn.functional as F
import transformers

from model import (
    IGNORE_INDEX,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaModel,
    flops_per_token,
)

TOL = 1e-5
B, T, V = 3, 13, 99


def tiny_config(**overrides) -> RobertaConfig:
    values = dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80,
                  max_position_embeddings=T + 2 + 3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RobertaConfig(**{**values, **overrides})


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0 full, row 1 right-padded, row 2 left-padded (positions must skip the padding either way)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, :4] = 0
    ids[mask == 0] = 1  # <pad>
    return ids, mask


def random_labels(ids: torch.Tensor, mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(ids.shape, generator=g) < 0.3) & mask.bool()
    chosen[0, 0] = True  # at least one predicted position
    return torch.where(chosen, torch.randint(0, V, ids.shape, generator=g), torch.full_like(ids, IGNORE_INDEX))


def hf_from(folder, cls=transformers.RobertaForMaskedLM):
    model, info = cls.from_pretrained(folder, output_loading_info=True, attn_implementation="sdpa")
    return model.eval(), info


@pytest.fixture
def mlm_pair(tmp_path):
    """Ours (randomly initialised) and transformers' loaded from what ours saved."""
    torch.manual_seed(0)
    ours = RobertaForMaskedLM(tiny_config()).eval()
    ours.save_pretrained(tmp_path)
    theirs, info = hf_from(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return ours, theirs


def test_mlm_logits_match_transformers_after_saving_ours(mlm_pair):
    ours, theirs = mlm_pair
    ids, mask = padded_batch()
    torch.testing.assert_close(ours(ids, mask).logits, theirs(input_ids=ids, attention_mask=mask).logits,
                               atol=TOL, rtol=0)


def test_mlm_logits_match_after_loading_transformers_weights(tmp_path):
    torch.manual_seed(1)
    theirs = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**tiny_config().to_dict())).eval()
    theirs.save_pretrained(tmp_path)
    ours = RobertaForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(seed=2)
    torch.testing.assert_close(ours(ids, mask).logits, theirs(input_ids=ids, attention_mask=mask).logits,
                               atol=TOL, rtol=0)
    # The decoder stays tied to the word embeddings after loading.
    assert ours.lm_head.decoder.weight is ours.roberta.embeddings.word_embeddings.weight


def test_sparse_mlm_loss_and_gradients_match_transformers_dense(mlm_pair):
    ours, theirs = mlm_pair
    ids, mask = padded_batch(seed=3)
    labels = random_labels(ids, mask)
    out = ours(ids, mask, labels=labels)
    ref = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=0)
    # With labels our logits are those of the predicted positions only, in row-major order.
    torch.testing.assert_close(out.logits, ref.logits[labels != IGNORE_INDEX], atol=TOL, rtol=0)
    out.loss.backward()
    ref.loss.backward()
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[name].grad, atol=TOL, rtol=0, msg=name)


def test_static_head_loss_and_gradients_match_transformers_loaded_from_theirs(tmp_path):
    """transformers -> ours, then the static head (and the fused QKV) against their dense head, gradient by name."""
    torch.manual_seed(15)
    theirs = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**tiny_config().to_dict())).eval()
    theirs.save_pretrained(tmp_path)
    ours = RobertaForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(seed=15)
    labels = random_labels(ids, mask, seed=16)
    out = ours(ids, mask, labels=labels, max_predictions_per_seq=T)
    ref = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=0)
    out.loss.backward()
    ref.loss.backward()
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[name].grad, atol=TOL, rtol=0, msg=name)


def test_sparse_loss_equals_dense_loss_of_our_own_logits():
    torch.manual_seed(4)
    model = RobertaForMaskedLM(tiny_config()).eval()
    ids, mask = padded_batch(seed=4)
    labels = random_labels(ids, mask, seed=5)
    dense = F.cross_entropy(model(ids, mask).logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(model(ids, mask, labels=labels).loss, dense, atol=TOL, rtol=0)


def test_qa_matches_transformers_in_both_directions(tmp_path):
    torch.manual_seed(6)
    ours = RobertaForQuestionAnswering(tiny_config()).eval()
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = hf_from(tmp_path / "ours", transformers.RobertaForQuestionAnswering)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask = padded_batch(seed=6)
    starts, ends = torch.tensor([2, 0, 20]), torch.tensor([5, 7, 20])  # 20 > T: clamped and ignored, as theirs
    out = ours(ids, mask, start_positions=starts, end_positions=ends)
    ref = theirs(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    for key in ("start_logits", "end_logits", "loss"):
        torch.testing.assert_close(out[key], ref[key], atol=TOL, rtol=0, msg=key)

    theirs.save_pretrained(tmp_path / "theirs")
    reloaded = RobertaForQuestionAnswering.from_pretrained(tmp_path / "theirs").eval()
    torch.testing.assert_close(reloaded(ids, mask).start_logits, ref.start_logits, atol=TOL, rtol=0)


def test_qa_loads_from_a_masked_lm_checkpoint_with_a_fresh_head(tmp_path):
    torch.manual_seed(7)
    mlm = RobertaForMaskedLM(tiny_config()).eval()
    mlm.save_pretrained(tmp_path)
    qa = RobertaForQuestionAnswering.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch()
    torch.testing.assert_close(qa.roberta(ids, mask), mlm.roberta(ids, mask), atol=0, rtol=0)
    assert qa.qa_outputs.bias.abs().max() == 0  # initialised as RoBERTa's heads are, not left uninitialised
    assert 0.01 < qa.qa_outputs.weight.std() < 0.03


def test_bare_encoder_loads_from_a_task_checkpoint(tmp_path):
    torch.manual_seed(13)
    mlm = RobertaForMaskedLM(tiny_config()).eval()
    mlm.save_pretrained(tmp_path)
    encoder = RobertaModel.from_pretrained(tmp_path).eval()  # keys lose their `roberta.` prefix
    ids, mask = padded_batch()
    torch.testing.assert_close(encoder(ids, mask), mlm.roberta(ids, mask), atol=0, rtol=0)


def test_fused_attention_equals_softmax_attention_written_out():
    torch.manual_seed(8)
    config = tiny_config()
    model = RobertaModel(config).eval()
    ids, mask = padded_batch(seed=8)
    x = model.embeddings(ids)
    attention = model.encoder.layer[0].attention.self
    nh, hs = config.num_attention_heads, config.head_size

    def heads(t):  # (B, T, C) -> (B, nh, T, hs)
        return t.view(B, T, nh, hs).transpose(1, 2)

    q, k, v = heads(attention.query(x)), heads(attention.key(x)), heads(attention.value(x))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    expected = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, config.hidden_size)
    key_mask = mask.bool()[:, None, None, :]
    torch.testing.assert_close(attention(x, key_mask), expected, atol=TOL, rtol=0)
    # Without padding, passing no mask is the same computation as an all-ones mask.
    torch.testing.assert_close(attention(x, None), attention(x, torch.ones_like(key_mask)), atol=TOL, rtol=0)


def test_a_fully_padded_row_stays_finite():
    model = RobertaForMaskedLM(tiny_config()).eval()
    ids, mask = padded_batch()
    ids[1], mask[1] = 1, 0
    logits = model(ids, mask).logits
    assert torch.isfinite(logits).all()
    # ...and the other rows are unaffected by it.
    torch.testing.assert_close(logits[0], model(ids[:1], mask[:1]).logits[0], atol=TOL, rtol=0)


def test_positions_start_after_the_padding_index():
    model = RobertaModel(tiny_config()).eval()
    ids, mask = padded_batch()
    # The left-padded row's tokens get the same positions as the same tokens without the padding.
    unpadded = model(ids[2:, 4:])
    torch.testing.assert_close(model(ids, mask)[2, 4:], unpadded[0], atol=TOL, rtol=0)
    # A full row of T tokens uses positions 2 .. T+1; one more token than the table holds is refused.
    assert model.config.max_sequence_length == T + 3
    with pytest.raises(ValueError, match="longer than the position table"):
        model(torch.full((1, T + 4), 5))


def test_initialisation_follows_roberta():
    torch.manual_seed(9)
    config = tiny_config(vocab_size=2000, hidden_size=96, num_attention_heads=4)
    model = RobertaForMaskedLM(config)
    emb = model.roberta.embeddings
    assert emb.word_embeddings.weight[config.pad_token_id].abs().max() == 0
    assert emb.position_embeddings.weight[config.pad_token_id].abs().max() == 0
    assert abs(emb.word_embeddings.weight.std().item() - 0.02) < 0.002
    layer = model.roberta.encoder.layer[0]
    assert abs(layer.intermediate.dense.weight.std().item() - 0.02) < 0.002
    assert layer.intermediate.dense.bias.abs().max() == 0 and model.lm_head.bias.abs().max() == 0
    assert (layer.output.LayerNorm.weight == 1).all() and (layer.output.LayerNorm.bias == 0).all()


def test_parameter_counts_agree_with_transformers(mlm_pair):
    ours, theirs = mlm_pair
    assert ours.num_parameters() == theirs.num_parameters()
    c = ours.config
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * c.hidden_size
    assert ours.num_parameters() - ours.num_parameters(exclude_embeddings=True) == embeddings


def test_config_round_trips_through_transformers_config_json(tmp_path):
    config = tiny_config(layer_norm_eps=1e-6, initializer_range=0.01)
    transformers.RobertaConfig(**config.to_dict()).save_pretrained(tmp_path)
    assert RobertaConfig.from_pretrained(tmp_path) == config
    assert RobertaConfig.from_dict(config.to_dict(), hidden_dropout_prob=0.3).hidden_dropout_prob == 0.3


def test_bad_configs_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="hidden_size 50 does not divide by num_attention_heads 3"):
        tiny_config(hidden_size=50)
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        tiny_config(attention_probs_dropout_prob=1.5)
    with pytest.raises(ValueError, match="model_type"):
        RobertaConfig.from_dict({"model_type": "gpt2"})


def test_missing_and_mis_shaped_weights_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    RobertaForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["roberta.encoder.layer.1.output.dense.weight"]
    weights["roberta.embeddings.position_embeddings.weight"] = torch.zeros(7, 48)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as error:
        RobertaForMaskedLM.from_pretrained(tmp_path)
    assert "missing weights roberta.encoder.layer.1.output.dense.weight" in str(error.value)
    assert "roberta.embeddings.position_embeddings.weight: checkpoint (7, 48), model (18, 48)" in str(error.value)


def test_folders_without_a_model_and_unreachable_hub_ids_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="holds no config.json"):
        RobertaForMaskedLM.from_pretrained(tmp_path)
    transformers.RobertaConfig(**tiny_config().to_dict()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no weights"):
        RobertaForMaskedLM.from_pretrained(tmp_path)
    # The tests run with HF_HUB_OFFLINE=1: said plainly, not in the library's words cut off mid-sentence.
    with pytest.raises(ValueError, match="could not get 'no-such-user/no-such-model' from the Hugging Face Hub: "
                                         "HF_HUB_OFFLINE=1 is set and the Hub cache holds no copy of it"):
        RobertaForMaskedLM.from_pretrained("no-such-user/no-such-model")


def test_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(10)
    model = RobertaForMaskedLM(tiny_config()).eval()
    ids, mask = padded_batch()
    labels = random_labels(ids, mask)
    full = model(ids, mask, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(ids, mask, labels=labels)
    assert half.loss.dtype == torch.float32  # the loss is computed in float32 under autocast
    assert abs(half.loss.item() - full.item()) < 0.05


def test_compiled_model_matches_eager_and_does_not_recompile_every_step():
    torch._dynamo.reset()
    torch.manual_seed(11)
    model = RobertaForMaskedLM(tiny_config())
    compiled = torch.compile(model, backend="aot_eager")
    ids = torch.randint(3, V, (B, T))

    def step(seed):  # a different number of predicted tokens at every step
        labels = random_labels(ids, torch.ones_like(ids), seed=seed)
        loss = compiled(ids, labels=labels).loss
        torch.testing.assert_close(loss, model(ids, labels=labels).loss, atol=TOL, rtol=0)
        loss.backward()

    step(20)
    step(21)  # the varying count of predicted tokens may cost one recompile, after which it is dynamic...
    # torch's own patch: pytest 9.2's monkeypatch deletes a torch config attribute when it undoes the change.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(22, 26):  # ...and never another
            step(seed)


def test_flops_per_token_matches_the_guide_for_roberta_base():
    # GUIDE.md: ~0.60 GFLOP per token at roberta-base shape and sequence 512 with the head on 15% of tokens.
    assert abs(flops_per_token(RobertaConfig(), 512) / 1e9 - 0.60) < 0.01


def test_hub_ids_download_config_and_one_weight_file(tmp_path, monkeypatch):
    """The Hub path, with snapshot_download replaced by a local stand-in that serves a .bin-only repository."""
    import huggingface_hub

    repo = tmp_path / "repo"
    torch.manual_seed(12)
    original = RobertaForMaskedLM(tiny_config()).eval()
    original.save_pretrained(repo)
    state = {k: v for k, v in original.state_dict().items() if k != "lm_head.decoder.weight"}
    torch.save(state, repo / "pytorch_model.bin")
    (repo / "model.safetensors").unlink()
    requests = []

    def fake_snapshot_download(repo_id, allow_patterns):
        requests.append(allow_patterns)
        cache = tmp_path / "cache"
        cache.mkdir(exist_ok=True)
        for name in allow_patterns:
            if (repo / name).is_file():
                (cache / name).write_bytes((repo / name).read_bytes())
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = RobertaForMaskedLM.from_pretrained("some-user/some-model").eval()
    assert requests == [["config.json", "model.safetensors"], ["pytorch_model.bin"]]  # never both weight files
    ids, mask = padded_batch()
    torch.testing.assert_close(loaded(ids, mask).logits, original(ids, mask).logits, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# The static MLM head (max_predictions_per_seq): fixed shapes, one compiled graph, the dynamic path's numbers
# ----------------------------------------------------------------------------------------------------------------

K = 6  # max_predictions_per_seq for the tests: at least the most positions random_labels predicts in a row


def test_static_head_gives_the_dynamic_loss_logits_and_gradients():
    torch.manual_seed(14)
    model = RobertaForMaskedLM(tiny_config())
    ids, mask = padded_batch(seed=14)
    labels = random_labels(ids, mask, seed=15)
    counts = (labels != IGNORE_INDEX).sum(dim=1)
    assert counts.max() <= K and counts.min() < K  # some rows have filler
    dynamic, static = model(ids, mask, labels=labels), model(ids, mask, labels=labels, max_predictions_per_seq=K)
    torch.testing.assert_close(static.loss, dynamic.loss, atol=TOL, rtol=0)
    assert static.logits.shape == (B * K, V) and static.logits_labels.shape == (B * K,)
    # Per sequence: its predicted positions in order, then filler rows labelled IGNORE_INDEX.
    rows = static.logits_labels.view(B, K)
    for b in range(B):
        assert torch.equal(rows[b, : counts[b]], labels[b][labels[b] != IGNORE_INDEX])
        assert (rows[b, counts[b]:] == IGNORE_INDEX).all()
    real = static.logits_labels != IGNORE_INDEX
    torch.testing.assert_close(static.logits[real], dynamic.logits, atol=TOL, rtol=0)
    assert torch.equal(dynamic.logits_labels, labels[labels != IGNORE_INDEX])  # the same field on both paths
    grads = {}
    for name, out in (("dynamic", dynamic), ("static", static)):
        model.zero_grad()
        out.loss.backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n in grads["dynamic"]:
        torch.testing.assert_close(grads["static"][n], grads["dynamic"][n], atol=TOL, rtol=0, msg=n)


def test_static_head_evaluation_sums_match_the_dense_computation():
    """What train.py's evaluation reads from the outputs: loss sum, correct predictions and their count."""
    torch.manual_seed(16)
    model = RobertaForMaskedLM(tiny_config()).eval()
    ids, mask = padded_batch(seed=16)
    labels = random_labels(ids, mask, seed=17)
    out = model(ids, mask, labels=labels, max_predictions_per_seq=K)
    loss_sum = F.cross_entropy(out.logits.float(), out.logits_labels, reduction="sum")
    correct = (out.logits.argmax(-1) == out.logits_labels).sum()
    count = (out.logits_labels != IGNORE_INDEX).sum()
    dense = model(ids, mask).logits  # (B, T, V)
    chosen = labels != IGNORE_INDEX
    torch.testing.assert_close(loss_sum, F.cross_entropy(dense[chosen], labels[chosen], reduction="sum"),
                               atol=1e-4, rtol=0)
    assert correct == (dense[chosen].argmax(-1) == labels[chosen]).sum() and count == chosen.sum()


def test_static_head_with_nothing_predicted_gives_zero_not_nan():
    model = RobertaForMaskedLM(tiny_config())
    ids, mask = padded_batch()
    out = model(ids, mask, labels=torch.full_like(ids, IGNORE_INDEX), max_predictions_per_seq=K)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_static_head_refuses_to_drop_predictions():
    """A row with more predicted positions than max_predictions_per_seq is an error, not a silent loss."""
    model = RobertaForMaskedLM(tiny_config())
    ids, mask = padded_batch()
    labels = torch.where(mask.bool(), ids, IGNORE_INDEX)  # row 0 predicts all 13 positions
    with pytest.raises(RuntimeError, match="more predicted positions than max_predictions_per_seq=6"):
        model(ids, mask, labels=labels, max_predictions_per_seq=K)
    # k at least T is always enough (and counts as T).
    assert model(ids, mask, labels=labels, max_predictions_per_seq=T + 5).logits.shape == (B * T, V)


def test_static_head_compiles_to_one_graph_that_masks_never_recompile(tiny_tokenizer):
    """The masks of batches.mask_tokens, a fresh draw at every step: one graph, no break, no recompile, and the
    compiled loss and gradients are the eager dynamic path's."""
    from batches import mask_tokens, max_predictions_per_seq

    torch._dynamo.reset()
    torch.manual_seed(18)
    config = tiny_config(vocab_size=len(tiny_tokenizer))
    model = RobertaForMaskedLM(config)
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(model, backend=counting_backend, fullgraph=True)
    generator = torch.Generator().manual_seed(19)
    blocks = torch.randint(5, len(tiny_tokenizer), (B, T), generator=generator)
    blocks[:, 0], blocks[:, -1], blocks[1, 6] = 0, 2, 2  # <s> ... </s>, a document boundary inside row 1
    k = max_predictions_per_seq(T, 0.15)

    def loss_and_grads(module, inputs, labels, **kwargs):
        model.zero_grad()
        loss = module(inputs, labels=labels, **kwargs).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    def step():
        inputs, labels = mask_tokens(blocks, tiny_tokenizer, 0.15, generator)
        loss, grads = loss_and_grads(compiled, inputs, labels, max_predictions_per_seq=k)
        expected_loss, expected_grads = loss_and_grads(model, inputs, labels)
        torch.testing.assert_close(loss, expected_loss, atol=TOL, rtol=0)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, atol=TOL, rtol=0)

    step()  # compiles
    with torch._dynamo.config.patch(error_on_recompile=True):  # then never again, whatever the masks
        for _ in range(4):
            step()
    assert len(graphs) == 1  # one forward graph for every step (fullgraph: no break)


def test_regional_compilation_compiles_one_layer_for_all_and_keeps_the_numbers_and_names(tiny_tokenizer):
    """train.py --compile: model.compile_regions compiles every layer (one shared graph) and the MLM loss, in place:
    the same loss and gradients as eager, no recompile as masks change, state-dict names without `_orig_mod.`."""
    import copy

    from batches import mask_tokens, max_predictions_per_seq
    from model import compile_regions

    torch._dynamo.reset()
    torch.manual_seed(22)
    eager = RobertaForMaskedLM(tiny_config(vocab_size=len(tiny_tokenizer), num_hidden_layers=3))
    model = copy.deepcopy(eager)
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compile_regions(model, backend=counting_backend)
    assert list(model.state_dict()) == list(eager.state_dict())
    generator = torch.Generator().manual_seed(23)
    blocks = torch.randint(5, len(tiny_tokenizer), (B, T), generator=generator)
    blocks[:, 0], blocks[:, -1] = 0, 2
    k = max_predictions_per_seq(T, 0.15)

    def loss_and_grads(module, inputs, labels):
        module.zero_grad()
        loss = module(inputs, labels=labels, max_predictions_per_seq=k).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.parameters()]

    def step():
        inputs, labels = mask_tokens(blocks, tiny_tokenizer, 0.15, generator)
        loss, grads = loss_and_grads(model, inputs, labels)
        expected_loss, expected_grads = loss_and_grads(eager, inputs, labels)
        torch.testing.assert_close(loss, expected_loss, atol=TOL, rtol=0)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, atol=TOL, rtol=0)

    step()  # compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            step()
    assert len(graphs) == 2  # one graph for the three layers, one for the head and loss


def test_fused_qkv_equals_the_three_projections():
    torch.manual_seed(20)
    model = RobertaForMaskedLM(tiny_config())
    ids, mask = padded_batch(seed=20)
    labels = random_labels(ids, mask, seed=21)
    results = []
    for fused in (True, False):
        for module in model.modules():
            if hasattr(module, "fused_qkv"):
                module.fused_qkv = fused
        model.zero_grad()
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=TOL, rtol=0)
    for fused, separate in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(fused, separate, atol=TOL, rtol=0)
    # The parameters are still the three Linears, with transformers' names.
    names = {name for name, _ in model.named_parameters()}
    assert {f"roberta.encoder.layer.0.attention.self.{p}.{w}" for p in ("query", "key", "value")
            for w in ("weight", "bias")} <= names


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


def test_outputs_read_declared_fields_and_reject_others():
    model = RobertaForMaskedLM(tiny_config()).eval()
    ids, mask = padded_batch()
    out = model(ids, mask)
    assert out.loss is None and "loss" not in out and list(out) == ["logits"]  # the Trainer sees only tensors
    with pytest.raises(AttributeError, match="'lose'"):
        out.lose  # noqa: B018
    with_labels = model(ids, mask, labels=random_labels(ids, mask))
    assert with_labels["loss"] is with_labels.loss and set(with_labels) == {"loss", "logits", "logits_labels"}
    # accelerate rebuilds outputs as type(out)(mapping) (e.g. casting them to float32 under mixed precision).
    rebuilt = type(with_labels)({k: v for k, v in with_labels.items()})
    assert type(rebuilt) is type(with_labels) and rebuilt.loss is with_labels.loss
    with pytest.raises(TypeError, match="no field lose"):
        type(out)(lose=1.0)
    qa = RobertaForQuestionAnswering(tiny_config()).eval()(ids, mask)
    assert qa.loss is None and qa.start_logits.shape == (B, T)
    with pytest.raises(AttributeError):
        qa.logits  # noqa: B018
    assert not hasattr(qa, "end_logit")
