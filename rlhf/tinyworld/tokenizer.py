"""A T5-style tokenizer trained locally with ``tokenizers`` (BPE over Metaspace pieces).

BPE rather than T5's Unigram because the Unigram trainer's float scores differ in the last digits
from run to run, and the tiny world must be byte-for-byte reproducible from its seed.

Ids as T5 has them: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2; ``</s>`` is appended to every
encoded text; sentinel tokens ``<extra_id_N>`` sit at the end of the vocabulary with
``<extra_id_0>`` last, for span-corruption pre-training. The speaker tags ``#Person1#`` and
``#Person2#`` are single tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "</s>", "<unk>", "<cls>"]
SPEAKERS = ("#Person1#", "#Person2#")


def sentinel_tokens(n: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in reversed(range(n))]


def train_tokenizer(texts: Iterable[str], vocab_size: int, n_sentinels: int = 20) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\n", " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_sentinels, special_tokens=SPECIALS, min_frequency=2, show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(list(SPEAKERS))  # one token per DialogSum speaker tag, as words, not special
    tok.add_special_tokens(sentinel_tokens(n_sentinels))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return tok


def save_tokenizer(tok: Tokenizer, folder: str | Path, model_max_length: int) -> None:
    """Save as a folder ``AutoTokenizer.from_pretrained`` loads."""
    sentinels = [t for t in tok.get_vocab() if t.startswith("<extra_id_")]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length,
        extra_special_tokens=sorted(sentinels, key=lambda t: -int(t[10:-1])),
    )
    fast.save_pretrained(str(folder))
