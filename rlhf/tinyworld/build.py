"""Build the tiny world into a folder, or reuse a cached build keyed by its settings and seed.

Layout of a build::

    dialogsum/{train,validation,test}.jsonl   dialogue, summary, topic, toxic, key_facts; test has one
                                              row per reference (both phrasings), as DialogSum's
    toxicity/{train,test}.jsonl               text, label (1 = toxic); test insults phrased otherwise
    tokenizer/                                AutoTokenizer.from_pretrained loads it
    base_model/                               T5ForConditionalGeneration + tokenizer (safetensors)
    classifier/                               config + tokenizer for the reward classifier
    manifest.json                             written last: a folder without it is not a build
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, T5ForConditionalGeneration

from rlhf.artifacts import atomic_dir, atomic_write_json, atomic_write_text
from rlhf.config import TinyWorldConfig
from rlhf.errors import UserError
from rlhf.prompts import TEMPLATES
from rlhf.runtime import denormals_flushed
from rlhf.tinyworld.corpus import make_corpus, make_toxicity_texts
from rlhf.tinyworld.pretrain import pretrain, tiny_t5_config
from rlhf.tinyworld.tokenizer import save_tokenizer, sentinel_tokens, train_tokenizer

BUILD_VERSION = 13  # 9: infilling pre-training, no dropout, neutral abuse summaries, key facts, abuse flags;
# 10: reward texts with insults spliced into summaries; 11: and garbled clean summaries;
# 12: every neutral abuse summary names a mood; 13: a neutral_summary column (the same draws otherwise)
MAX_LENGTH = 512
N_SENTINELS = 20


DESIGN_FILES = tuple(Path(__file__).parent / name for name in ("build.py", "corpus.py", "pretrain.py", "tokenizer.py"))


def design_digest(files: tuple[Path, ...] = DESIGN_FILES) -> str:
    """What makes a world besides its settings: the source of the modules that build it, the prompt
    templates its tokenizer learns, and the versions of the libraries that train it. Any edit to
    them is a new world (a stale build is never reused; a rebuild takes a minute or two)."""
    from importlib import metadata

    h = hashlib.sha256()
    for path in files:
        h.update(path.read_bytes())
    h.update(json.dumps(TEMPLATES, sort_keys=True).encode())
    for pkg in ("torch", "transformers", "tokenizers"):
        h.update(f"{pkg}={metadata.version(pkg)}".encode())
    return h.hexdigest()


def cache_key(tw: TinyWorldConfig) -> str:
    """The build's identity: its design (:func:`design_digest`, and the version named below), its
    settings, and whether subnormals are flushed (which moves the pre-training's last bits). The
    thread count is left out on purpose, though it too moves those bits: stages run with another
    count must find the world their earlier stages used (`benchmarks/robustness.py` gives its
    one-thread run a cache of its own)."""
    settings = {k: v for k, v in dataclasses.asdict(tw).items() if k != "cache_dir"}
    blob = json.dumps({"version": BUILD_VERSION, "design": design_digest(), "flush_denormals": denormals_flushed(),
                       **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root(tw: TinyWorldConfig) -> Path:
    root = tw.cache_dir or os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf"
    return Path(root) / "tinyworld"


def ensure_tinyworld(tw: TinyWorldConfig, log=print) -> Path:
    """Return the cached build for these settings, building it first if needed."""
    folder = cache_root(tw) / cache_key(tw)
    if (folder / "manifest.json").is_file():
        return folder
    log(f"building the offline tiny world in {folder} (first use; cached afterwards)")
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.build")  # this process's own
    build_tinyworld(tw, staging, log=log)
    for _ in range(2):
        try:
            os.rename(staging, folder)  # atomic; refused when a folder is already there
            return folder
        except OSError:
            if (folder / "manifest.json").is_file():  # another process built the same world first: theirs stays
                shutil.rmtree(staging, ignore_errors=True)
                return folder
            # not a build (no manifest; builds arrive whole, by rename): moved aside, never deleted in place
            os.rename(folder, folder.with_name(f".{folder.name}.{os.getpid()}.stale"))
    raise UserError(f"could not put the tiny world built in {staging} at {folder}")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _dialogue_rows(split: str, dialogues: list) -> list[dict]:
    """One row per dialogue; the test split, as DialogSum's on the Hub, has one row per reference
    (the drawn summary, then the same facts in the scene's other phrasing), so ROUGE does not
    count choosing one valid phrasing over another as lost quality."""
    rows = []
    for i, d in enumerate(dialogues):
        row = {"id": f"{split}_{i}", **dataclasses.asdict(d)}
        others = row.pop("other_summaries")
        rows += [row] + ([{**row, "summary": s} for s in others] if split == "test" else [])
    return rows


def _write_corpus(tw: TinyWorldConfig, out: Path) -> list[str]:
    corpus = make_corpus(tw.n_dialogues, tw.toxic_fraction, tw.seed)
    n_val = n_test = max(1, tw.n_dialogues // 10)
    splits = {"test": corpus[:n_test], "validation": corpus[n_test:n_test + n_val],
              "train": corpus[n_test + n_val:]}
    seen = {d.dialogue for d in splits["train"] + splits["validation"]}
    splits["test"] = [d for d in splits["test"] if d.dialogue not in seen]  # a dialogue met in training is not held out
    for split, rows in splits.items():
        atomic_write_text(out / "dialogsum" / f"{split}.jsonl", _jsonl(_dialogue_rows(split, rows)))
    n_train = tw.n_toxicity_texts * 3 // 4
    tox = {"train": make_toxicity_texts(n_train, tw.seed, heldout=False),
           "test": make_toxicity_texts(tw.n_toxicity_texts - n_train, tw.seed, heldout=True)}
    seen = {t for t, _ in tox["train"]}
    held_out = [(t, y) for t, y in tox["test"] if t not in seen]  # a text met in training is not held out
    for split, rows in (("train", tox["train"]), ("test", held_out)):
        atomic_write_text(out / "toxicity" / f"{split}.jsonl",
                          _jsonl([{"text": t, "label": y} for t, y in rows]))
    texts = [d.dialogue for d in corpus] + [d.summary for d in corpus]  # the tokenizer learns every drawn text
    return texts + [t for rows in tox.values() for t, _ in rows] + [t.format(dialogue="") for t in TEMPLATES.values()]


def build_tinyworld(tw: TinyWorldConfig, out: str | Path, log=print) -> Path:
    out = Path(out)
    start = time.time()
    with atomic_dir(out) as tmp:
        texts = _write_corpus(tw, tmp)
        tok = train_tokenizer(texts, tw.vocab_size, N_SENTINELS)
        log(f"corpus of {tw.n_dialogues} dialogues and {tw.n_toxicity_texts} labelled texts drawn, "
            f"tokenizer of {tok.get_vocab_size()} tokens trained ({time.time() - start:.1f}s)")
        save_tokenizer(tok, tmp / "tokenizer", MAX_LENGTH)
        tokenizer = AutoTokenizer.from_pretrained(str(tmp / "tokenizer"))
        losses = _build_base_model(tw, tmp, tokenizer, log)
        _build_classifier(tmp, tok, len(tokenizer))
        atomic_write_json(tmp / "manifest.json", {
            "settings": dataclasses.asdict(tw), "version": BUILD_VERSION,
            "vocab_size": len(tokenizer), "pretrain_loss_first": losses[:1], "pretrain_loss_last": losses[-1:],
            "seconds": round(time.time() - start, 2),
        })
    log(f"tiny world built in {time.time() - start:.1f}s")
    return out


ENTRIES = frozenset({"dialogsum", "toxicity", "tokenizer", "base_model", "classifier", "manifest.json"})


def is_build(folder: Path) -> bool:
    """Whether ``folder`` holds a build of this module and nothing else, judged by its content: a
    manifest that records a tiny world's settings and build version, beside only the build's own
    entries (a run's stage folder also has a ``manifest.json``; a user's file makes it not ours)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    settings = manifest.get("settings") if isinstance(manifest, dict) else None
    return (isinstance(settings, dict) and set(settings) == {f.name for f in dataclasses.fields(TinyWorldConfig)}
            and isinstance(manifest.get("version"), int) and {p.name for p in folder.iterdir()} <= ENTRIES)


def replace_build(tw: TinyWorldConfig, out: Path, log=print) -> Path:
    """``rlhf tinyworld --out``: build into ``out``, which must be new, empty or an earlier build
    (:func:`is_build`); one build beside ``out`` at a time (a lock on its parent folder), and the
    temp folders a killed build left there removed first."""
    import fcntl

    if out.is_dir() and any(out.iterdir()) and not is_build(out):
        raise UserError(f"option --out: {out} is not empty and not a tiny world built here; the build replaces "
                        f"the folder as a whole, so name a new or empty folder")
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"option --out: another build is writing in {out.parent}; wait for it to finish") from None
        for left in [*out.parent.glob(f".{out.name}.*.tmp"), out.parent / f".{out.name}.old"]:  # atomic_dir's
            if left.is_dir():
                log(f"removing {left}, left by a build that did not finish")
                shutil.rmtree(left)
        return build_tinyworld(tw, out, log=log)
    finally:
        os.close(fd)


def _build_base_model(tw: TinyWorldConfig, out: Path, tokenizer, log) -> list[float]:
    torch.manual_seed(tw.seed)
    model = T5ForConditionalGeneration(tiny_t5_config(tw, len(tokenizer), MAX_LENGTH))
    dialogues = [json.loads(line)["dialogue"] for line in (out / "dialogsum" / "train.jsonl").open()]
    ids = [tokenizer(d, add_special_tokens=False).input_ids for d in dialogues]
    sentinels = tokenizer.convert_tokens_to_ids(sentinel_tokens(N_SENTINELS)[::-1])
    losses = pretrain(model, ids, sentinels, tokenizer.eos_token_id, tw, tw.seed, log=log)
    if losses:
        log(f"denoising pre-training: loss {losses[0]:.2f} -> {sum(losses[-20:]) / len(losses[-20:]):.2f}")
    model.generation_config.max_length = None
    model.save_pretrained(str(out / "base_model"))
    tokenizer.save_pretrained(str(out / "base_model"))
    return losses


def _build_classifier(out: Path, tok, vocab_size: int) -> None:
    """A small BERT-shaped classifier config whose tokenizer puts ``<cls>`` first for pooling."""
    from tokenizers import processors

    cls_tok = tok.__class__.from_str(tok.to_str())
    cls_id, eos = cls_tok.token_to_id("<cls>"), cls_tok.token_to_id("</s>")
    cls_tok.post_processor = processors.TemplateProcessing(
        single="<cls> $A </s>", pair="<cls> $A </s> $B </s>", special_tokens=[("<cls>", cls_id), ("</s>", eos)])
    save_tokenizer(cls_tok, out / "classifier", MAX_LENGTH)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=MAX_LENGTH, pad_token_id=0, type_vocab_size=1,
        num_labels=2, id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1},
    )
    config.save_pretrained(str(out / "classifier"))



TINYWORLD = "tinyworld"


def resolve_tinyworld(config, log=print):
    """Replace every ``tinyworld`` name in ``config`` by the path of the cached build.

    A config without such a name, or one already resolved, comes back unchanged.
    """
    names = {
        ("model", "name"): "base_model", ("model", "tokenizer"): "tokenizer", ("data", "source"): "dialogsum",
        ("reward", "model"): "classifier", ("reward", "pretrained"): "classifier",
        ("reward", "data", "source"): "toxicity",
    }
    used = {path: sub for path, sub in names.items() if _get(config, path) == TINYWORLD}
    if not used:
        return config
    if config.tinyworld is None:
        raise UserError("config names 'tinyworld' as a model or data source but has no 'tinyworld' section")
    folder = ensure_tinyworld(config.tinyworld, log=log)
    for path, sub in used.items():
        config = _replace(config, path, str(folder / sub))
    return config


def _get(obj, path: tuple[str, ...]):
    for part in path:
        obj = getattr(obj, part)
    return obj


def _replace(obj, path: tuple[str, ...], value):
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace(getattr(obj, path[0]), path[1:], value)})
