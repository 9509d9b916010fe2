"""qa.py: windows and labels, post-processing back to text, and the official scores."""

import numpy as np
import pytest

import qa as qa_module
from qa import (
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
    scores = compute_squad_metrics(predictions, references)
    assert scores["exact_match"] == scores["exact"] == pytest.approx(200 / 3)
    assert (scores["HasAns_total"], scores["NoAns_total"], scores["NoAns_exact"]) == (1, 2, 100.0)
    assert compute_squad_metrics({"no": "France"}, {"no": []})["f1"] == 0.0


def test_missing_prediction_counts_as_empty():
    assert compute_squad_metrics({}, {"q": ["x"]}) == {"exact_match": 0.0, "f1": 0.0}
    assert compute_squad_metrics({}, {"q": ["x"], "n": []})["exact"] == 50.0


# ---- the official SQuAD 2.0 script, written out as the reference ------------------------------------------------
# evaluate-v2.0.py (https://worksheets.codalab.org/rest/bundles/0x6b567e1cf2e041ec80d7098f031c5c9e/contents/blob/),
# function for function, on the dataset's JSON layout. The one liberty: main() runs find_all_best_thresh only with
# --na-prob-file; here it always runs, with the script's default of 0.0 for every question when no file is given.


def official_normalize_answer(s):
    import re
    import string

    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_get_tokens(s):
    if not s:
        return []
    return official_normalize_answer(s).split()


def official_compute_exact(a_gold, a_pred):
    return int(official_normalize_answer(a_gold) == official_normalize_answer(a_pred))


def official_compute_f1(a_gold, a_pred):
    import collections

    gold_toks = official_get_tokens(a_gold)
    pred_toks = official_get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_make_qid_to_has_ans(dataset):
    qid_to_has_ans = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid_to_has_ans[qa["id"]] = bool(qa["answers"])
    return qid_to_has_ans


def official_get_raw_scores(dataset, preds):
    exact_scores = {}
    f1_scores = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                gold_answers = [a["text"] for a in qa["answers"] if official_normalize_answer(a["text"])]
                if not gold_answers:
                    # For unanswerable questions, only correct answer is empty string
                    gold_answers = [""]
                if qid not in preds:
                    print("Missing prediction for %s" % qid)  # noqa: UP031
                    continue
                a_pred = preds[qid]
                # Take max over all gold answers
                exact_scores[qid] = max(official_compute_exact(a, a_pred) for a in gold_answers)
                f1_scores[qid] = max(official_compute_f1(a, a_pred) for a in gold_answers)
    return exact_scores, f1_scores


def official_apply_no_ans_threshold(scores, na_probs, qid_to_has_ans, na_prob_thresh):
    new_scores = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > na_prob_thresh
        if pred_na:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def official_make_eval_dict(exact_scores, f1_scores, qid_list=None):
    import collections

    if not qid_list:
        total = len(exact_scores)
        return collections.OrderedDict([
            ("exact", 100.0 * sum(exact_scores.values()) / total),
            ("f1", 100.0 * sum(f1_scores.values()) / total),
            ("total", total),
        ])
    else:
        total = len(qid_list)
        return collections.OrderedDict([
            ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
            ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
            ("total", total),
        ])


def official_merge_eval(main_eval, new_eval, prefix):
    for k in new_eval:
        main_eval["%s_%s" % (prefix, k)] = new_eval[k]  # noqa: UP031


def official_find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for _i, qid in enumerate(qid_list):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            if preds[qid]:
                diff = -1
            else:
                diff = 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def official_find_all_best_thresh(main_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans):
    best_exact, exact_thresh = official_find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
    best_f1, f1_thresh = official_find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
    main_eval["best_exact"] = best_exact
    main_eval["best_exact_thresh"] = exact_thresh
    main_eval["best_f1"] = best_f1
    main_eval["best_f1_thresh"] = f1_thresh


def official_main(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    if na_probs is None:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = official_make_qid_to_has_ans(dataset)  # maps qid to True/False
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = official_get_raw_scores(dataset, preds)
    exact_thresh = official_apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = official_apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out_eval = official_make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        has_ans_eval = official_make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids)
        official_merge_eval(out_eval, has_ans_eval, "HasAns")
    if no_ans_qids:
        no_ans_eval = official_make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids)
        official_merge_eval(out_eval, no_ans_eval, "NoAns")
    official_find_all_best_thresh(out_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans)
    return dict(out_eval)


def _dataset(golds: dict[str, list[str]]) -> list[dict]:
    """SQuAD 2.0 JSON `data` for {id: gold texts} (the context is irrelevant to scoring)."""
    qas = [{"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in texts],
            **({"is_impossible": True} if not texts else {})} for qid, texts in golds.items()]
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


def _ours_vs_official(golds, preds, na_probs=None):
    ours = compute_squad_metrics(preds, golds, na_probs)
    official = official_main(_dataset(golds), preds, na_probs)
    assert ours.pop("exact_match") == ours["exact"]
    assert list(ours) == list(official)  # the same keys, in the script's order
    for key, value in official.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    return ours


GOLDS = {
    "right": ["Denver Broncos", "the Broncos"],
    "partly": ["in the 10th century"],
    "wrong": ["Paris"],
    "no-right": [],  # unanswerable, predicted ""
    "no-wrong": [],  # unanswerable, answered anyway
    "no-article": [],  # unanswerable, answered "the": normalises to "" (right), yet counts as an answer below
    "gold-article": ["The", "an"],  # every gold normalises to "": scored against [""], though "answerable"
    "missed": ["Normandy"],  # answerable, predicted ""
}
PREDS = {"right": "broncos", "partly": "10th and 11th century", "wrong": "Lyon", "no-right": "", "no-wrong": "Rome",
         "no-article": "the", "gold-article": "", "missed": ""}


def test_v2_metric_matches_the_official_script_on_right_wrong_and_empty_answers():
    ours = _ours_vs_official(GOLDS, PREDS)
    assert ours["total"] == 8 and ours["HasAns_total"] == 5 and ours["NoAns_total"] == 3
    # right, no-right, no-article, gold-article are exact: 4 / 8
    assert ours["exact"] == 50.0
    assert ours["best_exact_thresh"] == 0.0  # all probabilities 0.0: the script's default


def test_v2_best_threshold_search_matches_the_official_script():
    probabilities = {"right": 0.1, "partly": 0.3, "wrong": 0.8, "no-right": 0.9, "no-wrong": 0.7, "no-article": 0.6,
                     "gold-article": 0.2, "missed": 0.95}
    ours = _ours_vs_official(GOLDS, PREDS, probabilities)
    # Walking up from "everything answered nothing" (3 unanswerable right): right +1 at 0.1 (4), gold-article +1
    # at 0.2 (5), partly +F1 at 0.3, no-article -1 at 0.6 (a raw "the" is an answer to the script), ...
    assert ours["best_exact"] == pytest.approx(100 * 5 / 8) and ours["best_exact_thresh"] == 0.2
    # a probability above the script's default threshold 1.0 turns a prediction into "no answer"
    _ours_vs_official(GOLDS, PREDS, {**probabilities, "no-wrong": 1.5, "right": 2.0})


def test_v2_metric_ties_and_order_follow_the_official_script():
    """Equal probabilities are walked in the order of the probability dict, as the script's stable sort does: a
    threshold there cannot separate them, and the script reports the running best anyway."""
    golds = {"a": ["x"], "b": [], "c": ["y"], "d": []}
    preds = {"a": "x", "b": "oops", "c": "y", "d": ""}
    for order in (["a", "b", "c", "d"], ["b", "a", "d", "c"], ["c", "d", "a", "b"]):
        probabilities = {qid: 0.5 for qid in order}
        _ours_vs_official(golds, preds, probabilities)
    # without probabilities the order is that of the predictions
    _ours_vs_official(golds, {k: preds[k] for k in ["b", "a", "c", "d"]})


def test_v2_metric_matches_the_official_script_on_random_cases():
    rng = np.random.default_rng(0)
    gold_pool = [[], ["the Eiffel Tower"], ["Paris", "Paris, France"], ["an"], ["1 000"], ["cat cat dog"]]
    pred_pool = ["", "eiffel tower", "paris", "France", "the", "a 1000", "cat", "Paris, France!", "dog cat cat"]
    for trial in range(20):
        n = int(rng.integers(1, 40))
        golds = {f"q{trial}-{i}": gold_pool[rng.integers(len(gold_pool))] for i in range(n)}
        preds = {qid: pred_pool[rng.integers(len(pred_pool))] for qid in golds}
        probabilities = {qid: float(rng.integers(0, 5)) / 4 for qid in rng.permutation(list(golds))}  # many ties
        _ours_vs_official(golds, preds, probabilities)
        if not all(golds.values()):
            _ours_vs_official(golds, preds)


def test_answering_nothing_scores_half_and_only_the_breakdown_shows_it():
    """A model that answers "no answer" to everything gets ~50 on SQuAD 2.0 data half of which is unanswerable
    (49.9 on the real dev subset); HasAns shows it knows nothing."""
    golds = {f"q{i}": ([] if i % 2 else [f"answer {i}"]) for i in range(101)}
    scores = compute_squad_metrics({qid: "" for qid in golds}, golds, {qid: 0.9 for qid in golds})
    assert scores["exact_match"] == scores["f1"] == pytest.approx(100 * 50 / 101)
    assert scores["HasAns_exact"] == scores["HasAns_f1"] == 0.0 and scores["NoAns_exact"] == 100.0
    assert scores["best_f1"] == pytest.approx(100 * 50 / 101)  # no threshold helps a model that knows nothing
    summary, warning = qa_module.squad_v2_summary(scores, no_answer_predictions=101)  # what the scripts print
    assert "HasAns exact 0.00 f1 0.00 (51); NoAns exact 100.00 f1 100.00 (50)" in summary
    assert warning.startswith("warning: the model answers 'no answer' to 101 of 101 questions: its exact match 49.5")
    answering = {qid: golds[0] if golds else "" for qid, golds in golds.items()}
    assert len(qa_module.squad_v2_summary(compute_squad_metrics(answering, golds), 50)) == 1  # no warning


def test_v1_data_keeps_the_v1_fields_and_probabilities_switch_to_v2():
    golds = {"a": ["x"], "b": ["y z"]}
    assert set(compute_squad_metrics({"a": "x"}, golds)) == {"exact_match", "f1"}
    scores = compute_squad_metrics({"a": "x", "b": ""}, golds, {"a": 0.1, "b": 0.9})
    assert scores["HasAns_total"] == 2 and "NoAns_total" not in scores  # as the script: no group without questions
    assert scores["best_exact"] == 50.0
    with pytest.raises(ValueError, match="lacks 1 of the questions, e.g. 'b'"):
        compute_squad_metrics({"a": "x"}, golds, {"a": 0.1})


# ---- answers from logits, shared by evaluation and answer_questions --------------------------------------------


def test_best_answers_give_offsets_scores_and_no_answer_probabilities(features):
    train, evaluation = features
    logits = _peaked_logits(train)
    answers = qa_module.best_answers(EXAMPLES, evaluation, logits, allow_no_answer=True)
    assert postprocess_qa_predictions(EXAMPLES, evaluation, logits, version_2_with_negative=True) == {
        qid: a["answer"] for qid, a in answers.items()}
    for qid, context in zip(EXAMPLES["id"], EXAMPLES["context"], strict=True):
        answer = answers[qid]
        assert answer["answer"] == context[answer["start"] : answer["end"]]
        assert (answer["no_answer_probability"] > 0.5) == (answer["answer"] == "")  # the probability decides
    assert answers["none"] == {**answers["none"], "answer": "", "start": 0, "end": 0}
    assert answers["late"]["start"] == EXAMPLES["context"][3].index("city 9 lived north")
    assert answers["late"]["score"] > 15  # two peaks of 10, plus noise


def test_no_valid_span_gives_the_empty_answer_with_probability_one(tiny_tokenizer):
    examples, evaluation = _one_window(tiny_tokenizer)
    start, end = np.zeros((1, MAX_LENGTH)), np.zeros((1, MAX_LENGTH))
    answers = qa_module.best_answers(examples, evaluation, (start, end), max_answer_length=0)
    assert answers["q"]["answer"] == "" and answers["q"]["no_answer_probability"] == 1.0


# ---- answer_questions ---------------------------------------------------------------------------------------------


class PhraseFinder:
    """A stand-in QA model that knows the answers: it reads the question at the start of each window and puts the
    start and end logits on the tokens of that question's answer phrase (its token ids as the context tokenizes
    them), or on <s> where the window does not hold it."""

    def __init__(self, phrases: dict[tuple[int, ...], list[int]]):
        import torch

        self.phrases, self.training, self.calls = phrases, True, []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.weight])

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def __call__(self, input_ids, attention_mask):
        import torch

        assert not self.training and not torch.is_grad_enabled()
        self.calls.append(tuple(input_ids.shape))
        start, end = torch.zeros(input_ids.shape), torch.zeros(input_ids.shape)
        for row, ids in enumerate(input_ids.tolist()):
            phrase = self.phrases.get(tuple(ids[1 : ids.index(2)]), [])  # <s> question </s>
            hits = [i for i in range(len(ids)) if phrase and ids[i : i + len(phrase)] == phrase]
            first, length = (hits[0], len(phrase)) if hits else (0, 1)
            start[row, first], end[row, first + length - 1] = 8.0, 8.0
        return {"start_logits": start, "end_logits": end}


def _phrase_ids(tokenizer, context, phrase):
    encoded = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    begin = context.index(phrase)
    return [i for i, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
            if a < begin + len(phrase) and b > begin]


def test_answer_questions_finds_exact_spans_across_windows(tiny_tokenizer):
    context = LONG + " The queen was born in the south."
    phrases = ["city 9 lived north", "king of city 1", "queen"]
    questions = ["Which city?", "Who?", "Who was born?", "What is unknown?"]
    model = PhraseFinder({tuple(tiny_tokenizer(q, add_special_tokens=False)["input_ids"]):
                          _phrase_ids(tiny_tokenizer, context, p) for q, p in zip(questions[:3], phrases, strict=True)})
    answers = qa_module.answer_questions(model, tiny_tokenizer, questions[:3], [context] * 3, max_seq_length=MAX_LENGTH,
                                     doc_stride=STRIDE, batch_size=4)
    windows = prepare_qa_eval_features({"id": ["x"], "question": ["Which city?"], "context": [context]},
                                       tiny_tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE)["input_ids"]
    assert len(windows) > 8  # several windows per question; the answers lie in different ones
    for phrase, answer in zip(phrases, answers, strict=True):
        assert answer["answer"] == phrase == context[answer["start"] : answer["end"]]
        assert answer["start"] == context.index(phrase) and answer["score"] == 16.0
    assert model.training  # left in the mode it was in
    assert all(batch <= 4 for batch, _ in model.calls)
    # with the null answer allowed, a question whose phrase is nowhere gets "" (every window votes for <s>)
    model = PhraseFinder({})
    short = "The king."
    nothing, short_nothing = qa_module.answer_questions(model, tiny_tokenizer, questions[3:] * 2, [context, short],
                                                    max_seq_length=MAX_LENGTH, doc_stride=STRIDE, allow_no_answer=True,
                                                    batch_size=2)
    assert nothing["answer"] == "" and nothing["start"] == nothing["end"] == 0 and nothing["score"] == 16.0
    assert nothing["no_answer_probability"] > 0.99 and short_nothing["answer"] == ""
    widths = [width for _, width in model.calls]  # windows of similar length share a batch, cut to their longest
    assert widths == sorted(widths, reverse=True) and widths[0] == MAX_LENGTH
    assert model.calls[-1] == (1, len(tiny_tokenizer("What is unknown?", short)["input_ids"]))  # the short one alone
    assert qa_module.answer_questions(model, tiny_tokenizer, [], []) == []
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        qa_module.answer_questions(model, tiny_tokenizer, ["a", "b"], ["c"])


def test_answer_questions_is_evaluations_path_for_ours_and_transformers_models(tiny_tokenizer, tmp_path):
    """With a real (random) model: the answers are those of evaluation's post-processing on full windows, and
    transformers' RobertaForQuestionAnswering loaded from our folder gives the same ones."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from model import RobertaConfig, RobertaForQuestionAnswering

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=72, max_position_embeddings=66)
    ours = RobertaForQuestionAnswering(config)
    ours.save_pretrained(tmp_path)
    examples = _columns([_example("a", "Who was born?", "The queen was born in the north.", "queen"),
                         _example("b", "Which city lived north?", LONG, "city 9 lived north")])
    kwargs = {"max_seq_length": MAX_LENGTH, "doc_stride": STRIDE, "n_best_size": 5, "allow_no_answer": True}
    answers = qa_module.answer_questions(ours, tiny_tokenizer, examples["question"], examples["context"], batch_size=3,
                                     **kwargs)
    evaluation = prepare_qa_eval_features(examples, tiny_tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE)
    with torch.no_grad():
        output = ours.eval()(torch.tensor(evaluation["input_ids"]), torch.tensor(evaluation["attention_mask"]))
    expected = qa_module.best_answers(examples, evaluation, (output.start_logits.numpy(), output.end_logits.numpy()),
                                  n_best_size=5, allow_no_answer=True)
    for got, qid in zip(answers, examples["id"], strict=True):
        span = ("answer", "start", "end")
        assert {k: got[k] for k in span} == {k: expected[qid][k] for k in span}
        assert got["score"] == pytest.approx(expected[qid]["score"], abs=1e-4)
    theirs = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    for got, want in zip(qa_module.answer_questions(theirs, tiny_tokenizer, examples["question"], examples["context"],
                                                **kwargs), answers, strict=True):
        assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)


# ---- checking SQuAD rows -----------------------------------------------------------------------------------------


def test_audit_counts_bad_answers_and_refuses_duplicate_ids():
    contexts = ["The queen was born.", "The king died.", "Nobody.", "Rivers."]
    answers = [{"text": ["queen"], "answer_start": [4]}, {"text": ["king"], "answer_start": [5]},
               {"text": [], "answer_start": []}, {"text": ["x", "Rivers"], "answer_start": [99, 0]}]
    audit = qa_module.audit_squad(["a", "b", "c", "d"], contexts, answers, where="--train_file t.json")
    assert (audit.questions, audit.unanswerable, audit.text_mismatch, audit.start_outside) == (4, 1, ["b"], ["d"])
    assert audit.bad_label_rows == [1, 3]
    line = audit.describe("warning: --train_file t.json", training=True)
    assert "1 whose text is not the context's at answer_start (e.g. question b)" in line
    assert "1 whose answer_start lies outside the context (e.g. question d)" in line
    assert "the 2 training questions they label are skipped" in line
    assert "kept" in audit.describe("v", training=False)
    with pytest.raises(qa_module.UsageError, match="--train_file t.json: question id 'a' appears more than once"):
        qa_module.audit_squad(["a", "b", "a"], contexts[:3], answers[:3], where="--train_file t.json")
