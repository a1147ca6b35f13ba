"""Token ids back to text, for check_pair: each packed sample's first and last window, readable.

Image blocks are shown as `<im_start><im_patch>×256<im_end>` rather than 258 tokens, and the
model's special tokens by name, so a human sees at a glance where a sample starts and ends.
The same pass checks what decoding can tell: every id inside the model's vocabulary (image
ids included), the sequence opening with `<s>`, and every packed sample closing its answer
with `</s>`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from vdp.errors import RecordError
from vdp.index.validate import SampleFacts
from vdp.io.localcopy import local_copy
from vdp.text.tokens import IMAGE_PATCH, load_tokenizer


def _piece_decoder(path: str) -> Callable[[list[int]], str]:
    """Plain-text decoding: SentencePiece when there is a .model file, else transformers."""
    model = path if os.path.isfile(path) else os.path.join(path, "tokenizer.model")
    if os.path.isfile(model):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=model)
        return lambda ids: sp.decode(ids)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return lambda ids: tok.decode(ids, skip_special_tokens=False)


class TokenText:
    """Decodes id runs of one model; loaded once per worker."""

    def __init__(self, path: str):
        tok = load_tokenizer(path)
        self.names = {i: s for s, i in tok.specials.items()}  # id -> surface, specials and image tokens
        self.patch = tok.specials[IMAGE_PATCH]
        self.bos = tok.bos_id
        self.eos = tok.specials.get("</s>")
        self.max_id = max(tok.vocab_size - 1, *tok.specials.values())
        self._decode = _piece_decoder(path)

    def render(self, ids: list[int]) -> str:
        """Text runs decoded, specials named, runs of `<im_patch>` collapsed to `<im_patch>×n`."""
        out: list[str] = []
        run: list[int] = []
        i = 0
        while i < len(ids):
            tok = ids[i]
            if tok not in self.names:
                run.append(tok)
                i += 1
                continue
            if run:
                out.append(self._decode(run))
                run = []
            j = i
            while j < len(ids) and ids[j] == tok == self.patch:
                j += 1
            out.append(f"{IMAGE_PATCH}×{j - i}" if j > i + 1 else self.names[tok])
            i = max(j, i + 1)
        if run:
            out.append(self._decode(run))
        return "".join(out)


def _check_ends(facts: SampleFacts, text: TokenText, bounds: np.ndarray) -> None:
    ids, mask = facts.ids, facts.mask
    if ids.min() < 0 or ids.max() > text.max_id:
        bad = int(ids[(ids < 0) | (ids > text.max_id)][0])
        raise RecordError(f"token range: id {bad} is outside the tokenizer's 0..{text.max_id}")
    if int(ids[0]) != text.bos:
        raise RecordError(f"text window: the sequence starts with id {int(ids[0])}, not <s>")
    if text.eos is None:
        return
    for n, end in enumerate(bounds):
        if int(ids[end - 1]) != text.eos or int(mask[end - 1]) != 1:
            raise RecordError(f"text window: packed sample {n} does not end with </s> in its answer")


def text_windows(facts: SampleFacts, text: TokenText, window: int) -> list[dict]:
    """Per packed sample: its source key and the decoded first and last `window` tokens."""
    if facts.kind != "sequence":
        return []
    lengths = facts.doc["sample_lengths"]
    bounds = np.cumsum(lengths)
    _check_ends(facts, text, bounds)
    ids = facts.ids.tolist()
    out = []
    for n, end in enumerate(bounds.tolist()):
        start = end - lengths[n]
        first = text.render(ids[start : min(end, start + window)])
        last = text.render(ids[max(start, end - window) : end]) if end - start > window else ""
        out.append({"source": str(facts.doc["sources"][n]), "first": first, "last": last})
    return out


def make_window_check(tokenizer: str, window: int) -> Callable[[SampleFacts], list]:
    """check_pair's extra per-sample check, built in each worker (a tokenizer does not pickle).

    A remote tokenizer is copied once per machine (vdp.io.localcopy): a Ray task on another node
    fetches its own copy, a pool worker finds the parent's.
    """
    text = TokenText(local_copy(tokenizer))
    return lambda facts: text_windows(facts, text, window)
