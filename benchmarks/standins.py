"""Hub-shaped stand-ins built from ../shared/data, for runs that cannot reach the Hugging Face Hub.

Everything is written under ``--out`` (a temp or cache folder, never the repository):

    t5/            random-weight T5 with google/flan-t5-small's config (or flan-t5-base's: --t5 base), an
                   untied lm_head and config.json saying tie_word_embeddings: false as the Hub's does,
                   plus the real T5 tokenizer (../shared/data/t5-tokenizer) and the Hub's generation config
    dialogsum/     DialogSum in the Hub's knkarthick/dialogsum layout: train.csv / validation.csv /
                   test.csv with columns id, dialogue, summary, topic; the test split has one row per
                   reference summary (three rows per dialogue), as the Hub serves it
    roberta-hate/  random-weight classifier in roberta-base's shape with the labels of
                   facebook/roberta-hate-speech-dynabench-r4-target ({0: "nothate", 1: "hate"}) and a
                   byte-level BPE tokenizer trained on DialogSum (roberta's special tokens and ids)
    encoder/       a small BERT config plus the real T5 tokenizer: a from-scratch encoder for the
                   reward stage (reward.model=DIR reward.from_scratch=true), e.g. on Davidson's tweets

The T5's lm_head rows of the 100 sentinel tokens (``<extra_id_N>``) are scaled up, so that random
generations hold many of them: a check that no ``<extra_id_N>`` reaches any text then means something.
So are the rows of the 50 commonest tokens of DialogSum's summaries, so that ROUGE is not 0 everywhere
(a check that ROUGE uses every reference needs scores that differ between references).

    python benchmarks/standins.py --out DIR [--shared ../shared/data] [--t5 small|base] [--only t5,dialogsum,...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
NEEDED = ("t5-tokenizer/spiece.model", "dialogsum/dialogsum.train.first2000.jsonl", "dialogsum/dialogsum.dev.jsonl",
          "dialogsum/dialogsum.test.jsonl")
PARTS = ("t5", "dialogsum", "roberta-hate", "encoder")

# google/flan-t5-small and google/flan-t5-base, as their config.json on the Hub
T5_COMMON = dict(vocab_size=32128, feed_forward_proj="gated-gelu", dropout_rate=0.1, layer_norm_epsilon=1e-6,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128, pad_token_id=0,
                 eos_token_id=1, decoder_start_token_id=0, initializer_factor=1.0)
T5_SHAPES = {
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
}
# roberta-base, the backbone of facebook/roberta-hate-speech-dynabench-r4-target
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2)
HATE_LABELS = {0: "nothate", 1: "hate"}
BOOST = 1.5  # lm_head rows of <extra_id_N> and of common summary tokens x this: ~1/6 and ~1/4 of greedy tokens
SENTINELS = range(32000, 32100)  # the tokenizer's <extra_id_99>..<extra_id_0>


def missing_shared(shared: Path) -> str | None:
    """Why ``shared`` cannot feed the stand-ins (one line), or None when it can."""
    if not shared.is_dir():
        return f"{shared} not found (the project's shared data sits at ../shared/data beside the checkout)"
    absent = [p for p in NEEDED if not (shared / p).is_file()]
    return f"{shared} lacks {', '.join(absent)}" if absent else None


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# DialogSum in the Hub's layout
# --------------------------------------------------------------------------------------------


def hub_rows(rows: list[dict], split: str) -> list[dict]:
    """Original DialogSum rows (``fname, dialogue, summary, topic``; the test file keeps a dialogue's
    references as ``summary1..3`` / ``topic1..3``) -> the Hub's rows (``id, dialogue, summary, topic``).
    A test dialogue becomes one row per reference, next to each other, ids ``test_N_1..3``."""
    out = []
    for row in rows:
        if split != "test":
            out.append({"id": row["fname"], "dialogue": row["dialogue"], "summary": row["summary"],
                        "topic": row.get("topic", "")})
            continue
        numbers = sorted(int(k[len("summary"):]) for k in row if k.startswith("summary") and k[7:].isdigit())
        if not numbers:
            raise ValueError(f"test row {row.get('fname')} has no summary1..N columns")
        for n in numbers:
            out.append({"id": f"{row['fname']}_{n}", "dialogue": row["dialogue"], "summary": row[f"summary{n}"],
                        "topic": row.get(f"topic{n}", "")})
    return out


def build_dialogsum(shared: Path, out: Path) -> dict[str, int]:
    """train / validation / test CSV files (the Hub repository's format); returns rows per split."""
    files = {"train": "dialogsum.train.first2000.jsonl", "validation": "dialogsum.dev.jsonl",
             "test": "dialogsum.test.jsonl"}
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, name in files.items():
        rows = hub_rows(read_jsonl(shared / "dialogsum" / name), split)
        with (out / f"{split}.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "dialogue", "summary", "topic"])
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = len(rows)
    return counts


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def random_t5(shape: str, seed: int = 0, boosted: list[int] | None = None, boost: float = BOOST):
    """A random-weight ``T5ForConditionalGeneration`` in flan-t5's ``shape`` with its own lm_head; the
    lm_head rows of the sentinels and of ``boosted`` token ids are scaled by ``boost``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**T5_COMMON, **T5_SHAPES[shape], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    # transformers 5 ties T5's lm_head to the embedding when building from a config; flan-t5 has its own
    head = torch.randn_like(model.shared.weight) * config.d_model ** -0.5
    head[list(SENTINELS) + list(boosted or [])] *= boost
    model.lm_head.weight = torch.nn.Parameter(head)
    return model


def common_summary_tokens(tokenizer, shared: Path, n: int = 50) -> list[int]:
    """The ``n`` commonest whole-word tokens (``▁the``, ``▁to``, ...) of DialogSum's training summaries:
    pieces of words (``erson`` of ``#Person1#``) would glue into words no reference holds."""
    from collections import Counter

    rows = read_jsonl(shared / "dialogsum" / "dialogsum.train.first2000.jsonl")
    counts = Counter(i for r in rows for i in tokenizer(r["summary"], add_special_tokens=False).input_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(counts))
    words = {i for i, p in zip(counts, pieces) if p.startswith("\u2581") and p[1:].isalpha()}
    return [i for i, _ in counts.most_common() if i in words][:n]


def build_t5(shared: Path, out: Path, shape: str = "small", seed: int = 0) -> dict:
    """The random T5, the real tokenizer and the Hub's generation config in ``out``."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(shared / "t5-tokenizer"))
    common = common_summary_tokens(tokenizer, shared)
    model = random_t5(shape, seed, common)
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    model.save_pretrained(str(out))
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["tie_word_embeddings"] = False  # as flan-t5's config.json; transformers 5 writes True for every T5
    config_path.write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(out))
    shares = greedy_shares(model, tokenizer, shared, {"sentinel": list(SENTINELS), "common": common})
    if shares["sentinel"] == 0:
        raise RuntimeError("the stand-in T5 generated no <extra_id_N>: the special-token checks would test nothing")
    return {"shape": shape, "params": sum(p.numel() for p in model.parameters()), "greedy_token_shares": shares}


def greedy_shares(model, tokenizer, shared: Path, groups: dict[str, list[int]], n: int = 4,
                  new_tokens: int = 8) -> dict[str, float]:
    """Share of greedy tokens in each group of ids on ``n`` DialogSum prompts."""
    import torch

    dialogues = [r["dialogue"] for r in read_jsonl(shared / "dialogsum" / "dialogsum.dev.jsonl")[:n]]
    enc = tokenizer([f"Summarize the following conversation.\n\n{d}\n\nSummary:" for d in dialogues],
                    return_tensors="pt", padding=True, truncation=True, max_length=512)
    with torch.no_grad():
        out = model.eval().generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    tokens = out[:, 1:]
    return {name: round(float(torch.isin(tokens, torch.tensor(ids)).float().mean()), 3) for name, ids in groups.items()}


def roberta_tokenizer(texts: list[str], vocab_size: int = 8000):
    """A byte-level BPE tokenizer with roberta's special tokens and ids (``<s>``=0, ``<pad>``=1,
    ``</s>``=2, ``<unk>``=3, ``<mask>``=4), trained on ``texts``."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                model_max_length=512)


def build_roberta_hate(shared: Path, out: Path, seed: int = 0) -> dict:
    """A random classifier in roberta-base's shape with the lab reward model's label names."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    rows = read_jsonl(shared / "dialogsum" / "dialogsum.train.first2000.jsonl")
    tokenizer = roberta_tokenizer([r["dialogue"] for r in rows] + [r["summary"] for r in rows])
    config = RobertaConfig(**ROBERTA_BASE, num_labels=2, id2label=dict(HATE_LABELS),
                           label2id={v: k for k, v in HATE_LABELS.items()})
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(config)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"params": sum(p.numel() for p in model.parameters()), "labels": HATE_LABELS}


def build_encoder(shared: Path, out: Path, hidden: int = 256, layers: int = 2, heads: int = 4) -> dict:
    """A small BERT config with the real T5 tokenizer: ``reward.model=out reward.from_scratch=true``."""
    from transformers import AutoTokenizer, BertConfig

    tokenizer = AutoTokenizer.from_pretrained(str(shared / "t5-tokenizer"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=512,
                        type_vocab_size=1, pad_token_id=tokenizer.pad_token_id, num_labels=2)
    config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"hidden": hidden, "layers": layers, "vocab": len(tokenizer)}


def build(out: Path, shared: Path = SHARED_DATA, t5: str = "small", parts: tuple[str, ...] = PARTS,
          log=print) -> dict:
    """Build ``parts`` into ``out/<part>``; returns what was built (also written to ``out/standins.json``)."""
    if reason := missing_shared(shared):
        raise FileNotFoundError(reason)
    builders = {"t5": lambda d: build_t5(shared, d, t5), "dialogsum": lambda d: build_dialogsum(shared, d),
                "roberta-hate": lambda d: build_roberta_hate(shared, d), "encoder": lambda d: build_encoder(shared, d)}
    info = {}
    for part in parts:
        start = time.perf_counter()
        (out / part).mkdir(parents=True, exist_ok=True)
        info[part] = {**builders[part](out / part), "seconds": round(time.perf_counter() - start, 1)}
        log(f"standins: {part} -> {out / part} ({info[part]})")
    (out / "standins.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to build into (not inside the repository)")
    ap.add_argument("--shared", default=str(SHARED_DATA), help="the shared data folder (default ../shared/data)")
    ap.add_argument("--t5", choices=sorted(T5_SHAPES), default="small", help="flan-t5 shape of the random T5")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = ap.parse_args(argv)
    parts = tuple(p for p in args.only.split(",") if p)
    if unknown := [p for p in parts if p not in PARTS]:
        print(f"error: --only: unknown part(s) {unknown} (parts: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser().resolve()
    if out == ROOT or ROOT in out.parents:
        print(f"error: --out {out} is inside the repository; the stand-ins hold third-party data", file=sys.stderr)
        return 2
    if reason := missing_shared(Path(args.shared)):
        print(f"error: {reason}", file=sys.stderr)
        return 2
    build(out, Path(args.shared), args.t5, parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
