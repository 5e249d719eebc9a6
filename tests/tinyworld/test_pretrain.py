import random


def test_span_corruption_numbers_spans_in_order_and_reconstructs_the_text():
    from rlhf.tinyworld.pretrain import span_corrupt

    rng, sentinels, eos = random.Random(0), [1000 - i for i in range(20)], 1
    for _ in range(500):
        ids = [rng.randrange(2, 900) for _ in range(rng.randrange(1, 120))]
        inputs, targets = span_corrupt(ids, sentinels, eos, rng)
        used = [t for t in inputs if t in sentinels]
        assert used == sentinels[: len(used)] and [t for t in targets if t in sentinels] == used
        assert not any(a in sentinels and b in sentinels for a, b in zip(inputs, inputs[1:]))  # spans never touch
        spans, current = {}, None
        for t in targets[:-1]:
            if t in sentinels:
                current = spans[t] = []
            else:
                current.append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == ids and inputs[-1] == targets[-1] == eos
