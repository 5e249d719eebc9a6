import random

from rlhf.tinyworld import corpus
from rlhf.tinyworld.corpus import (
    INSULT_ADJ,
    INSULT_NOUN,
    MOODS,
    make_corpus,
    make_toxicity_texts,
    splice_clean,
    splice_insult,
)


def test_other_seed_other_corpus():
    a = make_corpus(50, 0.25, seed=0)
    b = make_corpus(50, 0.25, seed=1)
    assert [d.dialogue for d in a] != [d.dialogue for d in b]


def test_corpus_toxic_fraction_and_abuse_in_summaries():
    corpus = make_corpus(400, 0.25, seed=0)
    toxic = [d for d in corpus if d.toxic]
    assert len(toxic) == 100
    repeated = [d for d in toxic if any(n in d.summary for n in INSULT_NOUN)]
    # NEUTRAL_SHARE of abusive dialogues get a reference that names the conflict without the abuse
    assert 0.7 <= len(repeated) / len(toxic) <= 0.9, len(repeated)
    assert all(any(m in d.summary for m in MOODS) for d in toxic if d not in repeated)
    assert not any(any(f" {n}" in d.summary for n in INSULT_NOUN) for d in corpus if not d.toxic)
    assert len({d.topic for d in corpus}) >= 5 and len({d.dialogue for d in corpus}) > 390


def test_key_facts_are_in_the_dialogue_and_the_reference():
    corpus = make_corpus(200, 0.25, seed=3)
    assert all(d.key_facts for d in corpus)
    for d in corpus:
        for fact in d.key_facts:
            assert fact in d.dialogue and fact in d.summary, (fact, d.summary)
            assert all(fact in other for other in d.other_summaries), (fact, d.other_summaries)
    # the facts differ from dialogue to dialogue, so naming them needs reading the input
    assert len({tuple(d.key_facts) for d in corpus}) > 100


def test_insults_spliced_anywhere_are_labelled_toxic(monkeypatch):
    rng = random.Random(0)
    summary = "Anna's printer arrived broken. #Person1# will arrange a discount within three days."
    spliced = [splice_insult(rng, summary) for _ in range(200)]
    for text in spliced:
        rest = [w for w in text.split() if w not in INSULT_NOUN and w not in INSULT_ADJ]
        assert rest == summary.split() and len(rest) < len(text.split())
    assert len({text.split().index(next(w for w in text.split() if w in INSULT_NOUN)) for text in spliced}) > 8
    made = []
    monkeypatch.setattr(corpus, "splice_insult", lambda *a: made.append(splice_insult(*a)) or made[-1])
    texts = make_toxicity_texts(600, seed=0, heldout=False)
    labels = dict(texts)
    assert len(made) > 40 and all(labels[t] == 1 for t in made)
    assert all(y == 1 for t, y in texts if any(w.strip(".,!") in INSULT_NOUN for w in t.split()))


def test_garbled_clean_texts_are_labelled_clean(monkeypatch):
    """Broken grammar alone is not toxicity: the classifier also sees garbled clean summaries."""
    rng = random.Random(0)
    summary, other = "The sales plan is due on Friday.", "Anna's printer arrived broken."
    garbled = splice_clean(rng, summary, other)
    assert garbled != summary and [w for w in garbled.split() if w not in other.split()] == summary.split()
    made = []
    monkeypatch.setattr(corpus, "splice_clean", lambda *a: made.append(splice_clean(*a)) or made[-1])
    labels = dict(make_toxicity_texts(600, seed=0, heldout=False))
    assert len(made) > 40 and all(labels[t] == 0 for t in made)


def test_toxicity_texts_balanced_and_heldout_phrasing_differs():
    train = make_toxicity_texts(200, seed=0, heldout=False)
    test = make_toxicity_texts(200, seed=0, heldout=True)
    assert sum(y for _, y in train) == 100 and sum(y for _, y in test) == 100
    assert not {t for t, y in train if y} & {t for t, y in test if y}


def test_other_phrasings_say_the_same_and_carry_the_same_abuse():
    corpus = make_corpus(300, 0.25, seed=2)
    for d in corpus:
        assert len(d.other_summaries) == 1 and d.other_summaries[0] != d.summary
        first = d.summary.split(". ")[0]  # an abusive dialogue's summaries open with the same abuse clause
        assert (d.other_summaries[0].startswith(first + ".") if d.toxic else not d.other_summaries[0].startswith(first))
    # the drawn phrasing is drawn as before: either of a scene's phrasings comes first about half the time
    assert 0.35 < sum(d.summary < d.other_summaries[0] for d in corpus) / len(corpus) < 0.65
