"""LLaMA-2 token ids of a conversation, with image blocks, the way the seed computed them.

The seed's semantics, which these functions reproduce id for id:
- a sample starts with BOS (loss mask 0), then each turn in order;
- in a human turn, each placeholder (`<image>`; `<Iimage>`/`<Pimage>` for kf) stands for the
  image block `<im_start>` `<im_patch>`×patches `<im_end>`; a gpt turn gets `</s>` appended;
- the text between special tokens (the model's control and unknown pieces, i.e. `<s>`,
  `</s>`, `<unk>`, plus the three image tokens) is encoded piece by piece with SentencePiece
  (each piece gets its own leading ▁), and each special token becomes its id;
- human tokens have loss mask 0, every other turn's tokens (gpt, `</s>` included) mask 1.

The seed built the 258-token string of every image block and scanned it back with a
quadratic search; here the text is split once on placeholders and special tokens and the
block's ids are inserted directly. The split points are the same: every special token and
placeholder starts with the only `<` it contains, so none can straddle an image block.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from vdp.errors import UsageError
from vdp.io import storage
from vdp.io.localcopy import local_copy

IMAGE_PATCH, IMAGE_START, IMAGE_END = "<im_patch>", "<im_start>", "<im_end>"
IMAGE_TOKENS = (IMAGE_PATCH, IMAGE_START, IMAGE_END)  # ids vocab_size, +1, +2 unless the model has them
EOS_TEXT = "</s>"  # appended to gpt turns as text, as the seed did

PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "un": ("<image>",),
    "kf": ("<Iimage>", "<Pimage>"),
    "conv": ("<image>",),
    "fps": ("<image>",),
}


@dataclass
class TextTokenizer:
    """What tokenization needs from a model: plain-text encoding and the special tokens' ids."""

    encode: Callable[[str], list[int]]  # SentencePiece encode: no BOS/EOS, leading ▁ added
    specials: dict[str, int]  # surface -> id for <unk>, <s>, </s> and the three image tokens
    bos_id: int | None
    vocab_size: int
    source: str  # what was loaded, for messages
    unk_id: int | None = None
    top_id: int = -1  # the largest id any of the model's pieces has (vocab_size - 1 when ids have no gaps)
    piece_of: Callable[[int], str | None] = lambda i: None  # the piece with this id, None when there is none


class TokenizerLoadError(UsageError):
    """The --tokenizer path is not a usable model (exit status 2)."""


def load_tokenizer(path: str) -> TextTokenizer:
    """A SentencePiece `.model` file, or a Hugging Face tokenizer folder; local, s3:// or oss://.

    Loaded once per process and path (0.1 s for LLaMA-2, mostly finding its special pieces):
    workers forked after the parent loaded it inherit it instead of loading it again. A remote
    tokenizer is copied once per machine into the temp folder (vdp.io.localcopy): SentencePiece
    and transformers open only local paths.
    """
    if storage.is_remote(path):
        path = _fetched(path)
    if not os.path.exists(path):
        raise TokenizerLoadError(f"tokenizer not found: {path}")
    stat = os.stat(path)
    return _load_cached(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


def _fetched(url: str) -> str:
    try:
        return local_copy(url)
    except FileNotFoundError:
        raise TokenizerLoadError(f"tokenizer not found: {url}") from None
    except Exception as e:  # credentials, endpoint, a store that kept failing: the user's to fix
        raise TokenizerLoadError(f"tokenizer unreadable: {url}: {type(e).__name__}: {e}") from None


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> TextTokenizer:
    if os.path.isdir(path):
        return _from_folder(path)
    return _from_sentencepiece(path, path)


def _cached(encode: Callable[[str], list[int]], limit: int = 200_000) -> Callable[[str], list[int]]:
    """Memoise short pieces: kf prompts repeat the same `#33`-style pieces in every sample."""
    cache: dict[str, list[int]] = {}

    def run(text: str) -> list[int]:
        if len(text) > 24:
            return encode(text)
        ids = cache.get(text)
        if ids is None:
            if len(cache) >= limit:
                cache.clear()
            ids = cache[text] = encode(text)
        return ids

    return run


def _image_ids(known: dict[str, int], size: int) -> dict[str, int]:
    """The image tokens' ids: the model's own if it has them, else appended after its vocabulary."""
    return {tok: known.get(tok, size + i) for i, tok in enumerate(IMAGE_TOKENS)}


def _from_sentencepiece(model_file: str, source: str) -> TextTokenizer:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=model_file)
    except (OSError, RuntimeError) as e:
        raise TokenizerLoadError(f"not a SentencePiece model: {model_file}: {e}") from None
    size = sp.get_piece_size()
    # The seed treated every control and unknown piece as special (for LLaMA-2: <unk>, <s>, </s>).
    specials = {sp.id_to_piece(i): i for i in range(size) if sp.is_control(i) or sp.is_unknown(i)}
    own = {tok: sp.piece_to_id(tok) for tok in IMAGE_TOKENS if sp.id_to_piece(sp.piece_to_id(tok)) == tok}
    specials.update(_image_ids(own, size))
    encode = sp.encode  # ids, no BOS/EOS by default
    return TextTokenizer(
        _cached(lambda s: encode(s) if s else []),
        specials,
        sp.bos_id(),
        size,
        source,
        unk_id=sp.unk_id(),
        top_id=size - 1,  # SentencePiece ids are 0..size-1 by construction
        piece_of=lambda i: sp.id_to_piece(i) if 0 <= i < size else None,
    )


def _sentencepiece_file(folder: str) -> str | None:
    """The SentencePiece model a Hugging Face folder carries, if any (LLaMA-2 folders do)."""
    names = ["tokenizer.model"]
    config = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(config):
        with open(config, encoding="utf-8") as f:
            vocab_file = json.load(f).get("vocab_file")
        if isinstance(vocab_file, str):
            names.insert(0, os.path.basename(vocab_file))
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _from_folder(folder: str) -> TextTokenizer:
    """A Hugging Face folder: its SentencePiece model when it has one, else transformers' tokenizer.

    With the `.model` file the ids are SentencePiece's by construction and encoding is ten
    times faster than through transformers; without it (transformers 5 saves only
    tokenizer.json) the BPE model of tokenizer.json is driven the way SentencePiece drives it.
    """
    sp_file = _sentencepiece_file(folder)
    if sp_file:
        return _from_sentencepiece(sp_file, folder)
    return _from_transformers(folder)


def _from_transformers(folder: str) -> TextTokenizer:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, ImportError) as e:
        raise TokenizerLoadError(f"not a tokenizer folder: {folder}: {' '.join(str(e).split())[:300]}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerLoadError(f"{folder}: no tokenizer.model and no fast tokenizer (tokenizer.json)")
    specials = {t: tok.convert_tokens_to_ids(t) for t in (tok.unk_token, tok.bos_token, tok.eos_token) if t}
    size = len(tok)  # added tokens included, so appended image ids never collide with them
    vocab = tok.get_vocab()
    specials.update(_image_ids({t: i for t, i in vocab.items() if t in IMAGE_TOKENS}, size))
    return TextTokenizer(
        _cached(_sentencepiece_like(backend)),
        specials,
        tok.bos_token_id,
        size,
        folder,
        unk_id=tok.unk_token_id,
        top_id=max(vocab.values(), default=-1),  # a tokenizer.json may number its pieces with gaps
        piece_of=backend.id_to_token,
    )


def _sentencepiece_like(backend) -> Callable[[str], list[int]]:
    """Encode text with a tokenizer.json BPE model as SentencePiece (LLaMA settings) would.

    SentencePiece always adds the dummy-prefix ▁ and turns every space into ▁, while
    tokenizers' Metaspace skips the prefix when the text starts with a space, and its added
    tokens would catch `<s>` inside text. So only the BPE model is kept and the text is
    normalized here.
    """
    from tokenizers import Tokenizer

    spec = json.loads(backend.to_str())
    spec.update(normalizer=None, pre_tokenizer=None, post_processor=None, added_tokens=[])
    plain = Tokenizer.from_str(json.dumps(spec))

    def encode(text: str) -> list[int]:
        if not text:
            return []
        return plain.encode("▁" + text.replace(" ", "▁"), add_special_tokens=False).ids

    return encode


# --- is it a tokenizer at all? -------------------------------------------------------------

# Words every LLaMA-like vocabulary knows (and the test tokenizers are trained on).
PROBE = "A person walks slowly into the bright kitchen and picks up a red cup."


def tokenizer_problem(tok: TextTokenizer) -> str:
    """What makes `tok` unable to give right ids, in a few words ("" when nothing does).

    Found by looking, not by running a job: a tokenizer folder that lost its vocabulary still
    loads, encodes every caption to nothing, and puts the image ids at 3, 4, 5.
    """
    return _bos_problem(tok) or _image_id_problem(tok) or _probe_problem(tok)


def _bos_problem(tok: TextTokenizer) -> str:
    return "" if isinstance(tok.bos_id, int) and tok.bos_id >= 0 else "it has no BOS token <s>"


def _image_id_problem(tok: TextTokenizer) -> str:
    ids = [tok.specials[t] for t in IMAGE_TOKENS]
    if len(set(ids)) < len(ids):
        return f"the image tokens {', '.join(IMAGE_TOKENS)} share ids ({ids})"
    for token, i in zip(IMAGE_TOKENS, ids):
        piece = tok.piece_of(i)
        if piece is not None and piece != token:
            return f"image token {token} would get id {i}, already the id of the piece {piece!r}"
    appended = [i for i in ids if i >= tok.vocab_size]
    if appended and tok.top_id >= min(appended):
        return (
            f"its pieces reach id {tok.top_id} but its vocabulary counts {tok.vocab_size}: the image ids"
            f" {', '.join(map(str, ids))} placed after it fall among text ids"
        )
    return ""


def _probe_problem(tok: TextTokenizer) -> str:
    ids = tok.encode(PROBE)
    vocabulary = f"(a vocabulary of {tok.vocab_size} pieces)"
    if not ids:
        return f"it encodes the probe sentence {PROBE!r} to nothing {vocabulary}"
    unknown = sum(1 for i in ids if i == tok.unk_id)
    if 2 * unknown > len(ids):
        return f"it encodes {unknown} of the {len(ids)} pieces of the probe sentence {PROBE!r} as <unk> {vocabulary}"
    return ""


# --- conversations -------------------------------------------------------------------------


def _alternation(tokens) -> re.Pattern:
    # Longest first, so a token that begins another could never win early (none does today).
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")


class ConversationTokenizer:
    """Token ids and loss mask of one sample's conversation (built once per worker)."""

    def __init__(self, tokenizer: TextTokenizer, sample_type: str, patches: int):
        self.encode = tokenizer.encode
        self.bos_id = tokenizer.bos_id
        self.placeholders = PLACEHOLDERS[sample_type]
        sp = tokenizer.specials
        self.block = [sp[IMAGE_START]] + [sp[IMAGE_PATCH]] * patches + [sp[IMAGE_END]]
        self.human_ids = {**sp, **{p: self.block for p in self.placeholders}}
        self.other_ids = dict(sp)
        self.human_split = _alternation(self.human_ids)
        self.other_split = _alternation(self.other_ids)
        self.placeholder_re = _alternation(self.placeholders)
        self.max_id = max(tokenizer.vocab_size - 1, *sp.values())

    def count_placeholders(self, conversations: list[dict]) -> int:
        return sum(len(self.placeholder_re.findall(t["value"])) for t in conversations if t["from"] == "human")

    def _turn_ids(self, text: str, human: bool) -> list[int]:
        table = self.human_ids if human else self.other_ids
        parts = (self.human_split if human else self.other_split).split(text)
        ids: list[int] = []
        # re.split with one group alternates text, token, text, ...: odd parts are tokens.
        for i, part in enumerate(parts):
            if i % 2:
                special = table[part]
                if isinstance(special, list):
                    ids.extend(special)
                else:
                    ids.append(special)
            elif part:
                ids.extend(self.encode(part))
        return ids

    def tokenize(self, conversations: list[dict]) -> tuple[list[int], list[int]]:
        """(input_ids, loss_mask) of a sample: BOS, then each turn."""
        ids, mask = [self.bos_id], [0]
        for turn in conversations:
            human = turn["from"] == "human"
            text = turn["value"] + (EOS_TEXT if turn["from"] == "gpt" else "")
            turn_ids = self._turn_ids(text, human)
            ids.extend(turn_ids)
            mask.extend([0 if human else 1] * len(turn_ids))
        return ids, mask
