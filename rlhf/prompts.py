"""Instruction prompts from dialogues: the templates, k-shot prompts for the prompt stage, and the one
over-length rule every stage uses (the dialogue is cut inside the template, so a prompt keeps its
ending, "Summary:")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rlhf.data import row_groups
from rlhf.errors import UserError

# The reference lab's instruction, and its "What was going on?" one-shot form.
TEMPLATES = {
    "summarize": "Summarize the following conversation.\n\n{dialogue}\n\nSummary:",
    "what_happened": "Dialogue:\n\n{dialogue}\n\nWhat was going on?",
}
SHOT_SEPARATOR = "\n\n\n"



def format_prompt(dialogue: str, template: str) -> str:
    return TEMPLATES[template].format(dialogue=dialogue)


def format_shot(dialogue: str, summary: str, template: str) -> str:
    return f"{format_prompt(dialogue, template)}\n{summary}"


@dataclass
class PromptStats:
    """How the over-length rule changed the prompts; reported in the metrics, never silent."""

    n_prompts: int = 0
    examples_dropped: int = 0
    prompts_with_dropped_examples: int = 0
    dialogues_truncated: int = 0
    shots_used: list[int] = field(default_factory=list)


def choose_examples(pool_size: int, shots: int, query_index: int, seed: int,
                    exclude: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Deterministic choice of ``shots`` distinct example indices for the ``query_index``-th prompt,
    none of them in ``exclude`` (fewer when too few are left). A draw that hits no excluded index
    is the draw without ``exclude``; an excluded pick is replaced by a further draw of the same rng."""
    if shots == 0:
        return []
    rng = random.Random(seed * 1_000_003 + query_index)
    picks = rng.sample(range(pool_size), min(shots, pool_size))
    if not exclude.intersection(picks):
        return picks
    kept = [j for j in picks if j not in exclude]
    spare = [j for j in range(pool_size) if j not in exclude and j not in kept]
    extra = rng.sample(spare, min(len(picks) - len(kept), len(spare)))
    chosen = []
    for j in picks:
        if j not in exclude:
            chosen.append(j)
        elif extra:
            chosen.append(extra.pop(0))
    return chosen


def build_prompt(dialogue: str, examples: list[tuple[str, str]], template: str, tokenizer,
                 max_tokens: int, stats: PromptStats) -> str:
    """One k-shot prompt within ``max_tokens``.

    Over-length rule: drop in-context examples one at a time (earliest first); if the zero-shot
    prompt is still too long, truncate the dialogue from the end (:func:`shortened_prompt`). Both are
    counted in ``stats``.
    """

    def n_tokens(text: str) -> int:
        return count_tokens(tokenizer, text)

    shots = [format_shot(d, s, template) for d, s in examples]
    dropped = 0
    while True:
        prompt = SHOT_SEPARATOR.join(shots[dropped:] + [format_prompt(dialogue, template)])
        if n_tokens(prompt) <= max_tokens or dropped == len(shots):
            break
        dropped += 1
    stats.n_prompts += 1
    stats.examples_dropped += dropped
    stats.prompts_with_dropped_examples += int(dropped > 0)
    stats.shots_used.append(len(shots) - dropped)
    if n_tokens(prompt) <= max_tokens:
        return prompt
    stats.dialogues_truncated += 1
    return shortened_prompt(dialogue, template, tokenizer, max_tokens)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` with the special ones (counting only: over-length texts are the point, no warning)."""
    return len(tokenizer(text, verbose=False).input_ids)


def shortened_prompt(dialogue: str, template: str, tokenizer, max_tokens: int) -> str:
    """The zero-shot prompt of ``dialogue`` cut from its end to fit ``max_tokens``, the template kept.

    The cut is measured again inside the template (a cut word can re-tokenize into more pieces there)
    and made shorter until the prompt fits; a limit that cannot hold the template and one dialogue
    token is a :class:`UserError`."""
    ids = tokenizer(dialogue, add_special_tokens=False).input_ids
    keep = max(1, max_tokens - count_tokens(tokenizer, format_prompt("", template)))
    while True:
        prompt = format_prompt(tokenizer.decode(ids[:keep], skip_special_tokens=True), template)
        excess = count_tokens(tokenizer, prompt) - max_tokens
        if excess <= 0:
            return prompt
        if keep == 1:
            raise UserError(f"model.max_input_length={max_tokens} cannot hold the '{template}' prompt with any of "
                            f"the dialogue: that takes at least {max_tokens + excess} tokens")
        keep = max(1, keep - excess)


def fit_prompts(dialogues: list[str], template: str, tokenizer, max_input: int) -> tuple[list[str], list[bool]]:
    """Zero-shot prompts of ``dialogues`` within ``max_input`` tokens, and which were shortened.

    The prompt stage's rule (:func:`shortened_prompt`), also for SFT, PPO and evaluation: an over-long dialogue is cut inside
    the template, so the prompt keeps its ending ("Summary:"); prompts that fit are untouched."""
    prompts = [format_prompt(d, template) for d in dialogues]
    lengths = [len(ids) for ids in tokenizer(prompts, verbose=False).input_ids] if prompts else []
    shortened = [n > max_input for n in lengths]
    for i, over in enumerate(shortened):
        if over:
            prompts[i] = shortened_prompt(dialogues[i], template, tokenizer, max_input)
    return prompts, shortened


def build_prompts(dialogues: list[str], shots: int, pool, template: str, tokenizer, max_tokens: int,
                  seed: int) -> tuple[list[str], PromptStats]:
    """k-shot prompts for ``dialogues`` with examples drawn from ``pool`` (a dataset split); an
    example never has the dialogue of the prompt it is shown in."""
    stats = PromptStats()
    prompts = []
    rows_of = {}
    if shots:
        texts = pool["dialogue"] if hasattr(pool, "column_names") else [row["dialogue"] for row in pool]
        rows_of = {texts[rows[0]]: frozenset(rows) for rows in row_groups(texts)}
    for i, dialogue in enumerate(dialogues):
        picks = choose_examples(len(pool), shots, i, seed, rows_of.get(dialogue, frozenset()))
        examples = [(pool[j]["dialogue"], pool[j]["summary"]) for j in picks]
        prompts.append(build_prompt(dialogue, examples, template, tokenizer, max_tokens, stats))
    return prompts, stats
