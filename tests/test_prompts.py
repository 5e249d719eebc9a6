import pytest

from rlhf.errors import UserError
from rlhf.prompts import PromptStats, build_prompt, build_prompts, choose_examples, format_prompt


class WordTokenizer:
    """One token per whitespace word plus EOS; enough to test the over-length rule."""

    def __call__(self, text, add_special_tokens=True, **kwargs):  # kwargs: verbose etc., as a real tokenizer
        ids = list(range(len(text.split()))) + ([1] if add_special_tokens else [])
        return type("Enc", (), {"input_ids": ids})()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join("w" for _ in ids)


def test_zero_one_few_shot_prompts():
    pool = [{"dialogue": f"D{i}", "summary": f"S{i}"} for i in range(10)]
    zero, _ = build_prompts(["Q"], 0, pool, "summarize", WordTokenizer(), 512, seed=0)
    assert zero == [format_prompt("Q", "summarize")]
    assert zero[0] == "Summarize the following conversation.\n\nQ\n\nSummary:"
    few, stats = build_prompts(["Q"], 2, pool, "what_happened", WordTokenizer(), 512, seed=0)
    assert few[0].count("What was going on?") == 3 and few[0].endswith("Q\n\nWhat was going on?")
    assert stats.shots_used == [2] and stats.examples_dropped == 0


def test_example_choice_is_deterministic_and_varies():
    assert choose_examples(100, 3, 5, seed=1) == choose_examples(100, 3, 5, seed=1)
    assert choose_examples(100, 3, 5, seed=1) != choose_examples(100, 3, 6, seed=1)
    assert len(set(choose_examples(100, 3, 5, seed=1))) == 3


def test_over_length_drops_examples_then_truncates():
    tok = WordTokenizer()
    examples = [("a " * 30, "s"), ("b " * 30, "s")]
    stats = PromptStats()
    prompt = build_prompt("q " * 10, examples, "summarize", tok, max_tokens=60, stats=stats)
    assert stats.examples_dropped == 1 and stats.prompts_with_dropped_examples == 1
    assert stats.dialogues_truncated == 0 and prompt.count("Summary:") == 2
    stats = PromptStats()
    prompt = build_prompt("q " * 100, examples, "summarize", tok, max_tokens=40, stats=stats)
    assert stats.examples_dropped == 2 and stats.dialogues_truncated == 1
    assert len(tok(prompt).input_ids) <= 40


def test_shots_never_show_the_prompt_s_own_dialogue():
    pool = [{"dialogue": "QUERY", "summary": "S"}] * 8 + [{"dialogue": f"D{i}", "summary": f"S{i}"}
                                                          for i in range(4)]
    prompts, stats = build_prompts(["QUERY"] * 20, 2, pool, "summarize", WordTokenizer(), 512, seed=0)
    assert all(p.count("QUERY") == 1 for p in prompts) and stats.shots_used == [2] * 20
    others, _ = build_prompts(["OTHER"] * 20, 2, pool, "summarize", WordTokenizer(), 512, seed=0)
    for i, prompt in enumerate(others):  # a prompt whose dialogue is not in the pool: shots drawn as ever
        shots = [pool[j] for j in choose_examples(len(pool), 2, i, seed=0)]
        assert prompt.startswith(format_prompt(shots[0]["dialogue"], "summarize") + "\n" + shots[0]["summary"])
    few, stats = build_prompts(["QUERY"], 2, pool[6:9], "summarize", WordTokenizer(), 512, seed=0)
    assert stats.shots_used == [1] and few[0].count("QUERY") == 1


class SplittingTokenizer(WordTokenizer):
    """Decoding a cut adds a word, as a cut word re-tokenizes into more pieces in a real tokenizer."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join("w" for _ in ids) + " piece"


@pytest.mark.parametrize("limit", [8, 12, 40])
def test_truncated_dialogue_is_measured_again_inside_the_template(limit):
    tok = SplittingTokenizer()
    stats = PromptStats()
    prompt = build_prompt("q " * 100, [], "summarize", tok, max_tokens=limit, stats=stats)
    assert len(tok(prompt).input_ids) == limit and prompt.endswith("\n\nSummary:") and stats.dialogues_truncated == 1


def test_a_limit_that_cannot_hold_the_template_is_one_line():
    with pytest.raises(UserError, match=r"^model.max_input_length=6 cannot hold the 'summarize' prompt with any "
                                        r"of the dialogue: that takes at least 7 tokens$"):
        build_prompt("q " * 100, [], "summarize", WordTokenizer(), max_tokens=6, stats=PromptStats())
