"""SQuAD helpers in utils.py: windows and labels, post-processing back to text, and the official scores."""

import numpy as np
import pytest

import utils
from utils import (
    compute_squad_metrics,
    postprocess_qa_predictions,
    prepare_qa_eval_features,
    prepare_qa_train_features,
)

MAX_LENGTH, STRIDE = 29, 7  # odd sizes; the contexts below span one to many windows


def _example(qid, question, context, answer, occurrence=0):
    """A SQuAD row whose answer is the `occurrence`-th appearance of `answer` in `context` ("" = unanswerable)."""
    if not answer:
        return {"id": qid, "question": question, "context": context, "answers": {"text": [], "answer_start": []}}
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return {"id": qid, "question": question, "context": context, "answers": {"text": [answer], "answer_start": [start]}}


def _columns(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


LONG = " ".join(f"the king of city {i} lived north of the river." for i in range(12))
EXAMPLES = _columns([
    _example("short", "  Who was born?", "The queen was born in the north.", "queen"),
    _example("first-word", "What?", "River city, a king built it.", "River"),
    _example("last-word", "Where did he die?", "He died south of the river.", "river."),
    _example("late", " Which city lived north?", LONG, "city 9 lived north", 0),
    _example("early", "Where?", LONG, "king of city 1", 0),
    _example("end", "Which river?", LONG, "the river.", 11),
    _example("none", "Who painted it?", "Nobody painted the city.", ""),
])


@pytest.fixture(scope="module")
def features(tiny_tokenizer):
    train = prepare_qa_train_features(EXAMPLES, tiny_tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE)
    evaluation = prepare_qa_eval_features(EXAMPLES, tiny_tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE)
    return train, evaluation


def _gold(qid):
    return EXAMPLES["answers"][EXAMPLES["id"].index(qid)]


def test_train_and_eval_features_are_the_same_windows(features):
    train, evaluation = features
    assert train["input_ids"] == evaluation["input_ids"]
    assert all(len(ids) == MAX_LENGTH for ids in train["input_ids"])
    windows = {qid: evaluation["example_id"].count(qid) for qid in EXAMPLES["id"]}
    assert windows["short"] == 1 and windows["late"] >= 5, windows  # the long context really is split
    assert set(evaluation) >= {"input_ids", "attention_mask", "example_id", "offset_mapping"}
    assert "offset_mapping" not in train and "overflow_to_sample_mapping" not in evaluation


def test_questions_are_stripped_and_come_first(features, tiny_tokenizer):
    _, evaluation = features
    first = evaluation["input_ids"][0]
    question_ids = tiny_tokenizer("Who was born?", add_special_tokens=False)["input_ids"]
    assert first[: len(question_ids) + 2] == [0, *question_ids, 2]


def test_eval_offsets_are_none_outside_the_context(features, tiny_tokenizer):
    _, evaluation = features
    for ids, offsets in zip(evaluation["input_ids"], evaluation["offset_mapping"], strict=True):
        assert offsets[0] is None and offsets[1] is None  # <s> and the question
        inside = [i for i, span in enumerate(offsets) if span is not None]
        assert inside == list(range(inside[0], inside[-1] + 1))  # one contiguous context slice
        assert ids[inside[0] - 1] == ids[inside[-1] + 1] == tiny_tokenizer.sep_token_id


def test_labels_cover_exactly_the_answer(features):
    train, evaluation = features
    labelled = {}
    for i, qid in enumerate(evaluation["example_id"]):
        start, end = train["start_positions"][i], train["end_positions"][i]
        if start == 0:
            assert end == 0
            continue
        gold = _gold(qid)
        begin = gold["answer_start"][0]
        offsets = evaluation["offset_mapping"][i]
        context = EXAMPLES["context"][EXAMPLES["id"].index(qid)]
        assert context[offsets[start][0] : offsets[end][1]] == gold["text"][0]  # the end is inclusive
        assert offsets[start][0] == begin
        labelled[qid] = labelled.get(qid, 0) + 1
    # every answerable example is labelled in at least one window; the unanswerable one never is
    assert set(labelled) == {qid for qid in EXAMPLES["id"] if qid != "none"}
    late_windows = [i for i, qid in enumerate(evaluation["example_id"]) if qid == "late"]
    assert late_windows.index(next(i for i in late_windows if train["start_positions"][i])) > 0


def test_windows_without_the_whole_answer_point_at_cls(features):
    train, evaluation = features
    for i, qid in enumerate(evaluation["example_id"]):
        gold = _gold(qid)
        if not gold["text"]:
            continue
        spans = [s for s in evaluation["offset_mapping"][i] if s is not None]
        begin, finish = gold["answer_start"][0], gold["answer_start"][0] + len(gold["text"][0])
        inside = spans[0][0] <= begin and spans[-1][1] >= finish
        assert (train["start_positions"][i] != 0) == inside


def _peaked_logits(train, peak=10.0, noise_seed=0):
    rng = np.random.default_rng(noise_seed)
    shape = (len(train["input_ids"]), MAX_LENGTH)
    start, end = rng.normal(0, 1, shape), rng.normal(0, 1, shape)
    rows = np.arange(shape[0])
    start[rows, train["start_positions"]] += peak
    end[rows, train["end_positions"]] += peak
    return start, end


def test_peaked_logits_give_back_the_gold_answers(features):
    train, evaluation = features
    answers = postprocess_qa_predictions(EXAMPLES, evaluation, _peaked_logits(train), n_best_size=5)
    for qid, gold in zip(EXAMPLES["id"], EXAMPLES["answers"], strict=True):
        if gold["text"]:
            assert answers[qid] == gold["text"][0], qid
    assert set(answers) == set(EXAMPLES["id"])


def test_version_2_null_answer(features):
    train, evaluation = features
    logits = _peaked_logits(train)
    answers = postprocess_qa_predictions(EXAMPLES, evaluation, logits, version_2_with_negative=True)
    assert answers["none"] == ""  # its only window peaks at <s>
    assert answers["short"] == "queen"
    # "late" has windows whose labels are <s> (the answer is elsewhere); the best span still wins over them,
    # because the null score is the lowest over the windows
    assert answers["late"] == "city 9 lived north"
    strict = postprocess_qa_predictions(EXAMPLES, evaluation, logits, version_2_with_negative=True,
                                        null_score_diff_threshold=-1e9)
    assert set(strict.values()) == {""}


def _one_window(tokenizer):
    examples = _columns([_example("q", "Who?", "The queen was born in the north of the city.", "north")])
    return examples, prepare_qa_eval_features(examples, tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE)


def test_postprocessing_skips_invalid_spans(tiny_tokenizer):
    examples, evaluation = _one_window(tiny_tokenizer)
    offsets, context = evaluation["offset_mapping"][0], examples["context"][0]
    context_tokens = [i for i, span in enumerate(offsets) if span is not None]
    first, last = context_tokens[0], context_tokens[-1]
    assert last > first + 4
    start, end = np.full((1, MAX_LENGTH), -10.0), np.full((1, MAX_LENGTH), -10.0)
    start[0, 1], end[0, 2] = 100, 100  # best pair lies in the question
    start[0, last], end[0, first] = 90, 90  # next best ends before it starts
    start[0, first + 1], end[0, first + 2] = 50, 45  # the best valid span
    text = postprocess_qa_predictions(examples, evaluation, (start, end))["q"]
    assert text == context[offsets[first + 1][0] : offsets[first + 2][1]]


def test_postprocessing_respects_max_answer_length(tiny_tokenizer):
    examples, evaluation = _one_window(tiny_tokenizer)
    offsets, context = evaluation["offset_mapping"][0], examples["context"][0]
    context_tokens = [i for i, span in enumerate(offsets) if span is not None]
    first, last = context_tokens[0], context_tokens[-1]
    start, end = np.full((1, MAX_LENGTH), -10.0), np.full((1, MAX_LENGTH), -10.0)
    start[0, first], end[0, last] = 60, 60  # the whole context: best, but long
    start[0, first + 2], end[0, first + 3] = 30, 25  # best span of at most two tokens
    short = postprocess_qa_predictions(examples, evaluation, (start, end), max_answer_length=2)["q"]
    assert short == context[offsets[first + 2][0] : offsets[first + 3][1]]
    longest = postprocess_qa_predictions(examples, evaluation, (start, end), max_answer_length=MAX_LENGTH)["q"]
    assert longest == context[offsets[first][0] : offsets[last][1]]


def test_very_long_question_is_cut_not_fatal(tiny_tokenizer):
    examples = _columns([_example("q", "Who was born in the city? " * 20, "The queen was born in the city.", "queen")])
    train = prepare_qa_train_features(examples, tiny_tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE)
    evaluation = prepare_qa_eval_features(examples, tiny_tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE)
    assert len(train["input_ids"]) == len(evaluation["input_ids"]) >= 1
    assert all(len(ids) == MAX_LENGTH for ids in train["input_ids"])


def test_features_work_through_datasets_map(tiny_tokenizer):
    from datasets import Dataset

    dataset = Dataset.from_dict(EXAMPLES)
    kwargs = {"tokenizer": tiny_tokenizer, "max_length": MAX_LENGTH, "doc_stride": STRIDE}
    evaluation = dataset.map(prepare_qa_eval_features, batched=True, batch_size=3, fn_kwargs=kwargs,
                             remove_columns=dataset.column_names)
    train = dataset.map(prepare_qa_train_features, batched=True, batch_size=3, fn_kwargs=kwargs,
                        remove_columns=dataset.column_names)
    assert evaluation["input_ids"][:] == train["input_ids"][:]
    logits = _peaked_logits(train[:])
    answers = postprocess_qa_predictions(dataset, evaluation, logits)
    assert answers["late"] == "city 9 lived north" and answers["end"] == "the river."
    # a selection of rows (an indices mapping over the Arrow table) is read in its own order
    order = np.random.default_rng(1).permutation(len(evaluation))
    shuffled = postprocess_qa_predictions(dataset, evaluation.select(order), (logits[0][order], logits[1][order]))
    assert shuffled == answers


# ---- official SQuAD scores --------------------------------------------------------------------------------------


def test_exact_match_ignores_case_articles_punctuation_and_spaces():
    references = {"1": ["The Eiffel Tower"], "2": ["Paris, France."], "3": ["an apple"], "4": ["1 000"]}
    predictions = {"1": "eiffel   tower", "2": "paris france", "3": "A  Apple!", "4": "1000"}
    scores = compute_squad_metrics(predictions, references)
    # "1 000" vs "1000": different tokens, so no exact match and F1 0; the other three match exactly
    assert scores == {"exact_match": 75.0, "f1": 75.0}


def test_f1_is_token_overlap_and_max_over_gold_answers():
    references = {"a": ["Denver Broncos", "the Broncos", "Broncos defense"], "b": ["in the 10th century"]}
    predictions = {"a": "Broncos team", "b": "10th and 11th century"}
    # a: best gold "the Broncos" -> tokens {broncos}; pred {broncos, team}: P 1/2, R 1, F1 2/3 (also vs the others:
    # "denver broncos" P 1/2 R 1/2 F1 1/2); b: gold {in, 10th, century}, pred {10th, and, 11th, century}:
    # P 2/4, R 2/3, F1 4/7
    scores = compute_squad_metrics(predictions, references)
    assert scores["exact_match"] == 0.0
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 4 / 7) / 2)


def test_repeated_tokens_count_once_per_occurrence():
    scores = compute_squad_metrics({"x": "the the cat cat cat"}, {"x": ["cat cat dog"]})
    assert scores["f1"] == pytest.approx(100 * 2 * (2 / 3) * (2 / 3) / (4 / 3))  # overlap 2: P 2/3, R 2/3


def test_version_2_unanswerable_questions():
    references = {"no": [], "yes": ["Normandy"], "no2": []}
    predictions = {"no": "", "yes": "", "no2": "the"}  # "the" normalises to nothing: counts as no answer
    assert compute_squad_metrics(predictions, references) == pytest.approx({"exact_match": 200 / 3, "f1": 200 / 3})
    assert compute_squad_metrics({"no": "France"}, {"no": []}) == {"exact_match": 0.0, "f1": 0.0}


def test_missing_prediction_counts_as_empty():
    assert compute_squad_metrics({}, {"q": ["x"]}) == {"exact_match": 0.0, "f1": 0.0}


def test_offline_never_tries_evaluate(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(utils, "_EVALUATE_SQUAD", [])
    assert utils._load_evaluate_squad() is None and utils._EVALUATE_SQUAD == []


def test_evaluate_metric_is_used_when_loadable_and_skipped_for_unanswerable(monkeypatch):
    import huggingface_hub.constants

    calls = []

    class FakeMetric:
        def compute(self, predictions, references):
            calls.append((predictions, references))
            return {"exact_match": 12.5, "f1": 25.0}

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(utils, "_EVALUATE_SQUAD", [FakeMetric()])
    assert compute_squad_metrics({"q": "a"}, {"q": ["b", "c"]}) == {"exact_match": 12.5, "f1": 25.0}
    assert calls[0][0] == [{"id": "q", "prediction_text": "a"}]
    assert calls[0][1][0]["answers"]["text"] == ["b", "c"]
    assert compute_squad_metrics({"q": ""}, {"q": []}) == {"exact_match": 100.0, "f1": 100.0}  # built-in
    assert len(calls) == 1


def test_builtin_scores_match_evaluate_squad_where_it_loads():
    """Parity with evaluate's "squad" (the official v1.1 script); runs only where the metric can be fetched."""
    import huggingface_hub.constants

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("evaluate's squad metric is fetched from the Hub; offline here")
    metric = utils._load_evaluate_squad()
    if metric is None:
        pytest.skip("evaluate's squad metric cannot be loaded here")
    predictions = {"1": "the Broncos", "2": "Paris, France!", "3": "ten", "4": "a b c d"}
    references = {"1": ["Denver Broncos"], "2": ["Paris"], "3": ["10", "ten"], "4": ["b c", "d a"]}
    assert compute_squad_metrics(predictions, references) == pytest.approx(
        utils._builtin_squad_metrics(predictions, references))
