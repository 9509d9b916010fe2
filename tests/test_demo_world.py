"""The demo world: deterministic, consistent, varied in wording, and its QA answers are true spans of their contexts."""

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import demo_world
from demo_world import build_world, generate_documents, generate_squad

ROOT = Path(__file__).resolve().parent.parent


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def test_documents_are_deterministic_prefixes_and_leave_the_global_rng_alone():
    state = random.getstate()
    first = generate_documents(seed=0, num_documents=40)
    assert random.getstate() == state, "the generator must not touch the global RNG"
    assert generate_documents(seed=0, num_documents=40) == first
    assert generate_documents(seed=0, num_documents=15) == first[:15]  # a small corpus is a prefix of a larger one
    other = generate_documents(seed=1, num_documents=40)
    assert other != first and len(set(other) & set(first)) == 0
    assert all(text.strip() and "\n\n" not in text for text in first)  # paragraphs joined by single newlines


def test_documents_do_not_depend_on_the_hash_seed():
    # set iteration order of strings changes with PYTHONHASHSEED; the corpus must not
    code = ("import hashlib, json; from demo_world import generate_documents, generate_squad; "
            "print(hashlib.sha256(json.dumps([generate_documents(0, 30), generate_squad(0, 5)]).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest([generate_documents(0, 30), generate_squad(0, 5)])


def test_full_corpus_is_a_few_million_tokens_of_articles():
    documents = generate_documents()
    words = sum(len(text.split()) for text in documents)
    assert len(documents) == len(build_world(0).entities()) > 15_000
    assert 1_400_000 < words < 3_000_000  # ~1.35 byte-level BPE tokens a word: 2-4 million tokens


def test_world_facts_are_consistent_and_written_into_the_articles():
    world = build_world(0)
    people = world.people[:400]
    for person in people:
        assert person.birth_year + 28 <= person.death_year
        if person.mentor:
            assert 15 <= person.birth_year - person.mentor.birth_year and person.mentor.death_year >= person.birth_year
            assert person in person.mentor.students
        if person.spouse:
            assert person.spouse.spouse is person and person.spouse.gender != person.gender
            assert person.marriage_year < min(person.death_year, person.spouse.death_year)
        assert all(s.family == person.family and s.birthplace is person.birthplace for s in person.siblings)
        assert person in person.birthplace.natives
        text = "\n".join(p.text for p in demo_world.render_article(person, random.Random(0)))
        for fact in [person.name, str(person.birth_year), str(person.death_year), person.birthplace.name,
                     person.occupation, person.works[0][0]]:
            assert fact in text, (fact, text)
        if person.mentor:
            assert person.mentor.name in text
    for institution in world.institutions:
        assert institution.founded > institution.place.founded
        if institution.founder:
            assert institution.founder.birth_year < institution.founded < institution.founder.death_year


def test_facts_are_written_with_varied_paraphrases():
    # a person's first sentence, with the person's own values masked, takes several shapes
    world = build_world(0)
    shapes = Counter()
    for i, person in enumerate(world.people[:300]):
        first = demo_world.render_article(person, random.Random(i))[0].text.split(". ")[0]
        for value in [person.name, str(person.birth_year), str(person.death_year), person.occupation,
                      person.birthplace.region.name]:
            first = first.replace(value, "#")
        shapes[re.sub(r"\b(an?|she|he|She|He)\b", "_", first)] += 1
    assert len(shapes) >= 4 and max(shapes.values()) < 0.5 * sum(shapes.values())


@pytest.fixture(scope="module")
def squad_sets():
    return (generate_squad(seed=0, num_articles=80, questions_per_article=4, split="train"),
            generate_squad(seed=0, num_articles=40, questions_per_article=3, split="validation"))


def _questions(squad):
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield article, paragraph, qa


def test_squad_layout_and_every_answer_is_a_span(squad_sets):
    for squad, per_article in zip(squad_sets, [4, 3], strict=True):
        assert squad["version"] == "demo" and len(squad["data"]) in (80, 40)
        ids = []
        for article in squad["data"]:
            assert isinstance(article["title"], str) and article["paragraphs"]
            n = sum(len(p["qas"]) for p in article["paragraphs"])
            assert 1 <= n <= per_article
        for _, paragraph, qa in _questions(squad):
            assert qa["question"].endswith("?") and "{" not in qa["question"]
            (answer,) = qa["answers"]
            start, text = answer["answer_start"], answer["text"]
            assert text and paragraph["context"][start:start + len(text)] == text
            ids.append(qa["id"])
        assert len(ids) == len(set(ids)) and len(ids) > 0.9 * per_article * len(squad["data"])


def test_squad_answers_are_the_true_facts(squad_sets):
    by_name = {e.name: e for e in build_world(0).entities()}
    truths = {
        ("Person", "birth_year"): lambda e: str(e.birth_year), ("Person", "birthplace"): lambda e: e.birthplace.name,
        ("Person", "mentor"): lambda e: e.mentor.name, ("Person", "occupation"): lambda e: e.occupation,
        ("Person", "spouse"): lambda e: e.spouse.name, ("Place", "river"): lambda e: e.river.name,
        ("Place", "founded"): lambda e: str(e.founded), ("Institution", "city"): lambda e: e.place.name,
    }
    checked = Counter()
    for article, _, qa in _questions(squad_sets[0]):
        entity, fact = by_name[article["title"]], qa["id"].rsplit("-", 1)[1]  # ids end with the fact asked about
        truth = truths.get((type(entity).__name__, fact))
        if truth:
            assert qa["answers"][0]["text"] == truth(entity), qa
            checked[fact] += 1
    assert len(checked) >= 4 and sum(checked.values()) >= 30


def test_squad_is_deterministic_and_train_and_validation_are_disjoint(squad_sets):
    assert generate_squad(seed=0, num_articles=80, questions_per_article=4, split="train") == squad_sets[0]
    train = {article["title"] for article in generate_squad(seed=0, split="train")["data"]}
    validation = {article["title"] for article in generate_squad(seed=0, split="validation")["data"]}
    assert len(train) == 1000 and len(validation) == 250 and not train & validation
    pools = [{e.name for e in demo_world._qa_entities(0, split)} for split in ["train", "validation"]]
    assert not pools[0] & pools[1] and len(pools[1]) > 0.1 * len(pools[0])
    assert generate_squad(seed=1, num_articles=5)["data"] != generate_squad(seed=0, num_articles=5)["data"]
    with pytest.raises(ValueError, match="split"):
        generate_squad(split="dev")
    with pytest.raises(ValueError, match="num_articles"):
        generate_squad(num_articles=10**6)


def test_acceptability_sentences_are_balanced_and_the_unacceptable_ones_are_the_world_s_with_two_words_swapped():
    rows = {split: demo_world.generate_acceptability(seed=0, split=split) for split in ("train", "validation")}
    assert [len(rows["train"]), len(rows["validation"])] == [3000, 1000]
    assert rows["validation"] == demo_world.generate_acceptability(seed=0, split="validation")  # deterministic
    for split, sentences in rows.items():
        labels = Counter(r["label"] for r in sentences)
        assert labels == {"acceptable": len(sentences) // 2, "unacceptable": len(sentences) // 2}
        entities = demo_world._qa_entities(0, split)  # the QA split's entities: validation ones are held out
        for row in sentences:
            words = row["sentence"].split()
            assert len(words) >= demo_world.MIN_SENTENCE_WORDS and row["sentence"].endswith(".")
            article = " ".join(p.text for p in demo_world.render_article(
                entities[int(row["id"].split("-")[1])], random.Random(f"demo-acceptability:0:{split}:"
                                                                     f"{row['id'].split('-')[1]}")))
            if row["label"] == "acceptable":
                assert row["sentence"] in article  # as the article writes it
            else:  # a sentence of the article with two of its words in each other's place, the full stop kept
                swapped = row["sentence"][:-1].split()
                originals = [s[:-1].split() for s in demo_world._SENTENCE_END.split(article)
                             if sorted(s[:-1].split()) == sorted(swapped)]
                assert row["sentence"] not in article and any(
                    sum(a != b for a, b in zip(original, swapped, strict=True)) == 2 for original in originals), row


def test_acceptability_sentences_come_from_a_stream_of_their_own():
    """Generating them changes nothing the demo already printed: the corpus, the QA set, the global RNG."""
    state = random.getstate()
    documents, squad = generate_documents(seed=0, num_documents=50), generate_squad(seed=0, num_articles=20)
    demo_world.generate_acceptability(seed=0, split="train", num_sentences=500)
    assert generate_documents(seed=0, num_documents=50) == documents
    assert generate_squad(seed=0, num_articles=20) == squad
    assert random.getstate() == state
    with pytest.raises(ValueError, match="split"):
        demo_world.generate_acceptability(split="test")
    with pytest.raises(ValueError, match="num_sentences"):
        demo_world.generate_acceptability(num_sentences=0)
