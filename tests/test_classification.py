"""classification.py and model.RobertaForSequenceClassification: the metrics against scikit-learn and scipy, the
labels, and the model against transformers' at odd tiny shapes (batch 3, sequence 13, hidden 48, vocab 99)."""

import json

import numpy as np
import pytest
import torch
import transformers

import classification as cls
from model import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification
from utils import UsageError

TOL = 1e-5
B, T, V = 3, 13, 99


# ---- metrics against the reference implementations ---------------------------------------------------------------


def _classes(seed: int, n: int = 157, k: int = 2, agree: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions that agree on about `agree` of the rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    predictions = np.where(rng.random(n) < agree, labels, rng.integers(0, k, n))
    return predictions, labels


@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_equal_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    for k in (2, 3, 5):
        predictions, labels = _classes(seed, k=k, agree=0.3 + 0.15 * seed)
        assert cls.accuracy(predictions, labels) == pytest.approx(metrics.accuracy_score(labels, predictions),
                                                                  abs=1e-12)
        assert cls.matthews_correlation(predictions, labels) == pytest.approx(
            metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
        assert cls.macro_f1(predictions, labels, k) == pytest.approx(
            metrics.f1_score(labels, predictions, average="macro", zero_division=0), abs=1e-12)
        if k == 2:
            assert cls.f1(predictions, labels) == pytest.approx(metrics.f1_score(labels, predictions), abs=1e-12)


def test_degenerate_classification_metrics_equal_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    ones, zeros, mixed = np.ones(9, int), np.zeros(9, int), np.array([0, 1] * 4 + [1])
    for predictions, labels in ((zeros, mixed), (ones, mixed), (mixed, zeros), (zeros, zeros), (mixed, 1 - mixed)):
        assert cls.matthews_correlation(predictions, labels) == metrics.matthews_corrcoef(labels, predictions)
        assert cls.f1(predictions, labels) == metrics.f1_score(labels, predictions, zero_division=0)


@pytest.mark.parametrize("seed", range(4))
def test_correlations_equal_scipy_with_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 26, 211) / 5  # STS-B's 0-5 scale in steps of 0.2: many ties
    predicted = gold + rng.normal(0, 0.5 + seed, gold.shape)
    predicted[:20] = np.round(predicted[:20])  # ties on the predicted side too
    assert cls.pearson(predicted, gold) == pytest.approx(stats.pearsonr(predicted, gold)[0], abs=1e-12)
    assert cls.spearman(predicted, gold) == pytest.approx(stats.spearmanr(predicted, gold)[0], abs=1e-12)
    assert np.array_equal(cls._ranks(gold), stats.rankdata(gold))
    assert np.isnan(cls.pearson(np.ones(5), gold[:5]))  # constant predictions: undefined, as scipy says


def test_compute_metrics_names_and_combines_as_run_glue():
    predictions, labels = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    scores = cls.compute_metrics(cls.GLUE_TASKS["mrpc"].metrics, predictions, labels, 2)
    assert scores == {"accuracy": 0.75, "f1": 0.8, "combined_score": pytest.approx(0.775)}
    assert list(cls.compute_metrics(("accuracy", "macro_f1"), predictions, labels, 2)) == ["accuracy", "macro_f1"]


# ---- labels ---------------------------------------------------------------------------------------------------------


def test_label_spaces_from_strings_integers_and_floats():
    assert cls.infer_label_space(["pos", "neg", "pos"], None, "w").names == ("neg", "pos")
    assert cls.infer_label_space([10, 2, 2, 1], None, "w").names == ("1", "2", "10")  # numeric order, not text
    assert cls.infer_label_space([1.0, 0.0], None, "w").names == ("0", "1")  # integral floats are classes
    assert cls.infer_label_space([0.5, 3.0], None, "w").regression
    assert cls.infer_label_space([1, 2, 3], "regression", "w").regression  # the flag insists
    space = cls.infer_label_space(["b", "a"], None, "w")
    assert space.encode(["a", "b", "b"], "v") == [0, 1, 1] and space.decode(1) == "b"


@pytest.mark.parametrize(("values", "problem_type", "expected"), [
    ([0.5, 1.0], "classification", "label 0.5 is a number with a fraction, a regression target"),
    (["good", "bad"], "regression", "label 'good' is not a number, but the task is a regression"),
    (["a", "a"], None, "every row has the label 'a'"),
    (["a", None, "b"], None, "1 rows have no label (the first is row 2)"),
])
def test_labels_that_contradict_the_task_are_named(values, problem_type, expected):
    with pytest.raises(UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        cls.infer_label_space(values, problem_type, "--train_file t.csv")


def test_validation_labels_training_never_saw_are_refused():
    space = cls.infer_label_space(["neg", "pos"], None, "w")
    with pytest.raises(UsageError, match=r"2 rows have labels the training data never has \('neutral'\)"):
        space.encode(["pos", "neutral", "neutral"], "--validation_file v.csv")
    with pytest.raises(UsageError, match="--validation_file v.csv: label 'high' is not a number"):
        cls.LabelSpace(None).encode([0.5, "high"], "--validation_file v.csv")


def test_glue_task_names_and_labels():
    assert cls.glue_task("MNLI") is cls.glue_task("mnli") is cls.glue_task("mnli")
    assert cls.glue_task("SST-2").title == "SST-2"
    with pytest.raises(UsageError, match="--task_name squad is not a GLUE task; choose from cola, sst2"):
        cls.glue_task("squad")
    rte = cls.GLUE_TASKS["rte"]
    assert cls.task_label_names(rte, [1, 0]) == ["not_entailment", "entailment"]
    with pytest.raises(UsageError, match="regression target, but the task is a classification"):
        cls.task_label_space(rte, [0.4, 1.0], "w")
    with pytest.raises(UsageError, match="is not a number, but the task is a regression"):
        cls.task_label_space(cls.GLUE_TASKS["stsb"], ["similar"], "w")


# ---- the model against transformers' ---------------------------------------------------------------------------------


def tiny_config(**overrides) -> RobertaConfig:
    values = dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80,
                  max_position_embeddings=T + 2 + 3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  id2label={0: "no", 1: "maybe", 2: "yes"})
    return RobertaConfig(**{**values, **overrides})


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, :4] = 0
    ids[mask == 0] = 1
    return ids, mask


def _theirs(folder):
    model, info = transformers.RobertaForSequenceClassification.from_pretrained(
        folder, output_loading_info=True, attn_implementation="sdpa")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_ours_saved_loads_into_transformers_with_equal_logits_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    ours = RobertaForSequenceClassification(tiny_config()).eval()
    ours.save_pretrained(tmp_path)
    theirs = _theirs(tmp_path)
    assert theirs.config.id2label == {0: "no", 1: "maybe", 2: "yes"} and theirs.config.label2id["yes"] == 2
    ids, mask = padded_batch()
    labels = torch.tensor([2, 0, 1])
    out, ref = ours(ids, mask, labels=labels), theirs(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=TOL, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=0)
    assert ours.config.problem_type == theirs.config.problem_type == "single_label_classification"
    out.loss.backward()
    ref.loss.backward()
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[name].grad, atol=TOL, rtol=0, msg=name)


def test_dropout_draws_the_same_masks_as_transformers_in_training_mode(tmp_path):
    """Same seed, same dropout masks (embeddings, attention, residual branches, both head dropouts): fine-tuning
    through either implementation takes the same steps."""
    torch.manual_seed(1)
    ours = RobertaForSequenceClassification(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    ours.save_pretrained(tmp_path)
    theirs = _theirs(tmp_path).train()
    ours.train()
    ids, mask = padded_batch(seed=1)
    for attention_mask in (None, mask):
        torch.manual_seed(5)
        a = ours(ids, attention_mask).logits
        torch.manual_seed(5)
        b = theirs(input_ids=ids, attention_mask=attention_mask).logits
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize(("num_labels", "labels", "problem_type"), [
    (1, torch.tensor([0.5, 3.25, 4.0]), "regression"),
    (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), "multi_label_classification"),
    (4, torch.tensor([3, 0, 1]), "single_label_classification"),
])
def test_transformers_checkpoints_load_into_ours_and_the_loss_follows_the_same_problem_type(
        tmp_path, num_labels, labels, problem_type):
    torch.manual_seed(2)
    config = transformers.RobertaConfig(**tiny_config().to_dict() | {"id2label": None, "label2id": None},
                                        num_labels=num_labels)
    theirs = transformers.RobertaForSequenceClassification(config).eval()
    theirs.save_pretrained(tmp_path)
    ours = RobertaForSequenceClassification.from_pretrained(tmp_path).eval()
    assert ours.config.num_labels == num_labels and ours.config.problem_type is None
    ids, mask = padded_batch(seed=2)
    out, ref = ours(ids, mask, labels=labels), theirs(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=TOL, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=0)
    assert ours.config.problem_type == theirs.config.problem_type == problem_type  # decided alike, and kept
    ours.save_pretrained(tmp_path / "again")  # the decision is saved, as transformers saves it
    assert json.loads((tmp_path / "again" / "config.json").read_text())["problem_type"] == problem_type


def test_a_masked_lm_checkpoint_gives_a_fresh_head_and_new_head_replaces_another_tasks(tmp_path):
    torch.manual_seed(3)
    mlm = RobertaForMaskedLM(tiny_config(id2label=None))
    mlm.save_pretrained(tmp_path / "mlm")
    assert "id2label" not in json.loads((tmp_path / "mlm" / "config.json").read_text())  # MLM configs unchanged
    model = RobertaForSequenceClassification.from_pretrained(tmp_path / "mlm", num_labels=5).eval()
    ids, mask = padded_batch()
    torch.testing.assert_close(model.roberta(ids, mask), mlm.eval().roberta(ids, mask), atol=0, rtol=0)
    head = model.classifier
    assert head.out_proj.weight.shape == (5, 48) and head.dense.bias.abs().max() == 0
    assert 0.01 < head.dense.weight.std() < 0.03 and model.config.id2label[4] == "LABEL_4"
    model.save_pretrained(tmp_path / "five")
    with pytest.raises(ValueError, match=r"mis-shaped weights classifier.out_proj.weight: checkpoint \(5, 48\)"):
        RobertaForSequenceClassification.from_pretrained(tmp_path / "five", num_labels=2)
    two = RobertaForSequenceClassification.from_pretrained(tmp_path / "five", new_head=True, num_labels=2)
    assert two.classifier.out_proj.weight.shape == (2, 48) and two.classifier.out_proj.bias.abs().max() == 0


def test_label_config_round_trips_and_bad_values_are_named(tmp_path):
    config = tiny_config(problem_type="single_label_classification", classifier_dropout=0.2)
    transformers.RobertaConfig(**config.to_dict()).save_pretrained(tmp_path)
    assert RobertaConfig.from_pretrained(tmp_path) == config
    with pytest.raises(ValueError, match="problem_type 'ranking' is not one of regression"):
        tiny_config(problem_type="ranking")
    with pytest.raises(ValueError, match=r"id2label must number its classes 0..1, got \[0, 2\]"):
        tiny_config(id2label={0: "a", 2: "b"})
