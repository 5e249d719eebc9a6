"""Preference pairs for DPO / IPO (rl.algorithm dpo or ipo), classifier-ranked and on-policy:
k responses per training prompt sampled from the model the run starts from (the SFT policy),
scored by the reward model; the most toxic is rejected, a clean one chosen (``rl.pairs.choose``),
and the pair kept where the reward gap passes ``rl.pairs.margin``. This is how Lee et al. 2024
("A Mechanistic Understanding of Alignment Algorithms: A Case Study on DPO and Toxicity") built
their toxic vs non-toxic pairs, with a classifier in place of their PPLM generations.

Written to the RL stage's folder as ``pairs.jsonl``: one row per pair (prompt, chosen, rejected,
their rewards and toxicity probabilities, how it was made), so a run's data can be read and
reused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlhf.config import PairsSettings
from rlhf.errors import UserError
from rlhf.metrics import rouge_per_prediction
from rlhf.reward import scored_texts
from rlhf.seq2seq import encode_queries, encoder_states, sample_responses

MADE_BY = "on-policy: k samples from the starting policy, ranked by the reward model"
CORPUS = "corpus: the reference summary rejected, its rewording without the insult chosen"


@dataclass
class Pair:
    prompt: str
    reference: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    chosen_toxicity: float
    rejected_toxicity: float
    made_by: str = MADE_BY


def choose_pair(rewards: list[float], toxicity: list[float], closeness: list[float], cfg: PairsSettings
                ) -> tuple[int, int] | str:
    """The (chosen, rejected) positions among one prompt's k responses, or why there is no pair
    ('no clean response', 'no toxic response' or 'gap below margin').

    rejected = the most toxic response (highest toxicity probability; it must reach
    ``cfg.clean_below``); chosen = among the clean ones (toxicity below ``cfg.clean_below``), the
    one closest to the reference (``closeness``: ROUGE-L; ties: the higher reward) or the one with
    the highest reward (``cfg.choose``); kept when reward(chosen) - reward(rejected) >= ``cfg.margin``.
    """
    clean = [i for i, t in enumerate(toxicity) if t < cfg.clean_below]
    if not clean:
        return "no clean response"
    rejected = max(range(len(toxicity)), key=lambda i: (toxicity[i], -i))
    if toxicity[rejected] < cfg.clean_below:
        return "no toxic response"
    if cfg.choose == "closest_to_reference":
        chosen = max(clean, key=lambda i: (closeness[i], rewards[i], -i))
    else:
        chosen = max(clean, key=lambda i: (rewards[i], -i))
    if rewards[chosen] - rewards[rejected] < cfg.margin:
        return "gap below margin"
    return chosen, rejected


def draw_prompts(n: int, cfg: PairsSettings, seed: int) -> list[int]:
    """The training prompts' positions that pairs are made for: ``cfg.n_prompts`` of ``n``, a seeded
    draw without replacement (in the data's order), or all of them."""
    if cfg.n_prompts is None or cfg.n_prompts >= n:
        return list(range(n))
    picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + 7))[:cfg.n_prompts]
    return sorted(picked.tolist())


@torch.no_grad()
def make_pairs(lm, tokenizer, scorer, prompts: list[str], references: list[str], cfg: PairsSettings, *,
               max_new_tokens: int, max_input_length: int, seed: int, score_with_prompt: bool = False,
               log=print, compile_decoding: bool = False) -> tuple[list[Pair], dict]:
    """Pairs for ``prompts`` (with their reference summaries), and counts: prompts tried, pairs kept,
    and each reason a prompt gave none. Sampling is seeded (the same pairs on every run of a config);
    the process's RNG streams are left as they were."""
    device = next(lm.parameters()).device
    start = lm.config.decoder_start_token_id
    pairs, why_not = [], {"no clean response": 0, "no toxic response": 0, "gap below margin": 0}
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):  # torch.manual_seed seeds every GPU
        torch.manual_seed(seed)
        for i in range(0, len(prompts), cfg.batch_size):
            batch, refs = prompts[i:i + cfg.batch_size], references[i:i + cfg.batch_size]
            queries = encode_queries(tokenizer, batch, max_input_length, device)
            states = encoder_states(lm, queries, len(batch))
            responses, _ = sample_responses(lm, queries, max_new_tokens, tokenizer.eos_token_id,
                                            tokenizer.pad_token_id, start, states=states, n=cfg.k,
                                            compile=compile_decoding)
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            asked = [p for p in batch for _ in range(cfg.k)]
            scores = scorer.score(scored_texts(asked, texts, score_with_prompt))
            closeness = [r["rougeL"] for r in rouge_per_prediction(texts, [r for r in refs for _ in range(cfg.k)])]
            for j, (prompt, ref) in enumerate(zip(batch, refs)):
                rows = slice(j * cfg.k, (j + 1) * cfg.k)
                rewards, toxicity = scores.rewards[rows].tolist(), scores.toxic_probs[rows].tolist()
                picked = choose_pair(rewards, toxicity, closeness[rows], cfg)
                if isinstance(picked, str):
                    why_not[picked] += 1
                    continue
                c, r = picked
                group = texts[rows]
                pairs.append(Pair(prompt, ref, group[c], group[r], rewards[c], rewards[r], toxicity[c], toxicity[r]))
            done = min(i + cfg.batch_size, len(prompts))
            if done == len(prompts) or done * 4 // len(prompts) > i * 4 // len(prompts):  # at every quarter
                log(f"rl: pairs: {done}/{len(prompts)} prompts, {len(pairs)} pairs")
    counts = {"prompts": len(prompts), "pairs": len(pairs), "k": cfg.k, **{f"none_{k.replace(' ', '_')}": v
                                                                       for k, v in why_not.items()},
              "mean_reward_gap": (sum(p.chosen_reward - p.rejected_reward for p in pairs) / len(pairs)
                                  if pairs else 0.0)}
    return pairs, counts


@torch.no_grad()
def corpus_pairs(scorer, prompts: list[str], references: list[str], preferred: list[str],
                 score_with_prompt: bool = False) -> tuple[list[Pair], dict]:
    """The data's own pairs (``rl.pairs.source: corpus``): wherever a prompt's ``preferred`` text (the
    reference reworded, e.g. the tiny world's abuse told without the insult) differs from its
    reference, the rewording is chosen and the reference rejected; both scored by the reward model
    for the record. Counts: prompts, pairs, and prompts whose two texts are the same."""
    keep = [i for i, (r, p) in enumerate(zip(references, preferred)) if p and p != r]
    asked = [prompts[i] for i in keep for _ in range(2)]
    texts = [t for i in keep for t in (preferred[i], references[i])]
    scores = scorer.score(scored_texts(asked, texts, score_with_prompt))
    rewards, toxicity = scores.rewards.view(-1, 2).tolist(), scores.toxic_probs.view(-1, 2).tolist()
    pairs = [Pair(prompts[i], references[i], preferred[i], references[i], rw[0], rw[1], tx[0], tx[1], CORPUS)
             for i, rw, tx in zip(keep, rewards, toxicity)]
    gap = sum(p.chosen_reward - p.rejected_reward for p in pairs) / len(pairs) if pairs else 0.0
    return pairs, {"prompts": len(prompts), "pairs": len(pairs), "none_same_text": len(prompts) - len(pairs),
                   "mean_reward_gap": gap}


def pairs_jsonl(pairs: list[Pair]) -> str:
    """The pairs as JSON lines (the caller writes the text atomically; :func:`read_pairs` reads it)."""
    return "".join(json.dumps(asdict(p)) + "\n" for p in pairs)


def read_pairs(path: Path) -> list[Pair]:
    """Pairs written by :func:`pairs_jsonl`; a bad line is refused in one line naming it."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            out.append(Pair(**json.loads(line)))
        except (ValueError, TypeError) as err:
            raise UserError(f"{path}: line {n} is not a preference pair ({type(err).__name__})") from None
    return out
