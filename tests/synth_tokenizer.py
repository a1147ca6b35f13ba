"""A small LLaMA-2-like SentencePiece model, trained on the spot, for the demo and the tests.

LLaMA-2's tokenizer cannot be downloaded here (and must not be at run time), so the demo and
the tests train a BPE model with the same settings (unk=0, bos=1, eos=2, byte fallback, split
digits, dummy prefix, identity normalization) on generated captions. Real runs pass the real
`tokenizer.model` to `--tokenizer`.
"""

from __future__ import annotations

import random

WORDS = (
    "a person walks slowly into the bright kitchen and picks up a red cup while the camera pans left "
    "two dogs run across a green field at sunset children play football near the river a chef cuts "
    "fresh vegetables on a wooden board cars drive along the highway at night in heavy rain"
).split()
EXTRA = ["über", "café", "naïve", "视频", "中的人", "😀", "12345", "3.14", "\n", "  ", "#7", "<", ">", "</", "<im", "image"]


def caption(rng: random.Random, min_words: int = 3, max_words: int = 120) -> str:
    """A made-up caption with a few awkward pieces (unicode, digits, bits of markup)."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
    for _ in range(rng.randint(0, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(EXTRA))
    return " ".join(words).capitalize() + "."


def train_llama_like_tokenizer(
    prefix: str, control_symbols: tuple[str, ...] = (), vocab_size: int = 0, lines: int = 2500
) -> str:
    """Train a small SentencePiece BPE model with LLaMA-2's settings; returns the .model path.

    unk=0, bos=1, eos=2, no pad, byte fallback, split digits, dummy prefix, identity
    normalization, whitespace kept (and whitespace-only pieces allowed): the real model's
    behaviour on every path the tokenizer stage takes, at a vocabulary of about 800 pieces.
    With `vocab_size` (e.g. 32000) unused pieces placed before the learned ones pad the
    vocabulary, so ids have LLaMA-2's magnitude (text ids in the 30000s, images at 32000+),
    which matters for the size of ids written as JSON.
    """
    import sentencepiece as spm

    rng = random.Random(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([caption(rng, 3, 30) for _ in range(lines)]),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=vocab_size or 1000,
        hard_vocab_limit=False,
        user_defined_symbols=[f"<unused{i}>" for i in range(max(0, vocab_size - 800))],
        character_coverage=0.99995,
        split_digits=True,
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=list(control_symbols),
        num_threads=1,
        minloglevel=2,
    )
    return prefix + ".model"
