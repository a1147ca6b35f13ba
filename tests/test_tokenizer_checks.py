"""A tokenizer that cannot give right ids is a usage error of tokenize/main.py, before any work.

The broken tokenizers are made here with the `tokenizers` package (what transformers reads a
tokenizer.json with): a folder whose tokenizer.json holds only <unk>, <s>, </s> (what one
transformers version saved for a slow LLaMA tokenizer built from a bare .model: it loads,
every caption encodes to nothing and the image ids land at 3, 4, 5), the same encoding text
as <unk>, pieces numbered with a gap so the appended image ids fall on a piece or among the
text ids, and a tokenizer with no BOS. Each must give one line on stderr naming the tokenizer
and what is wrong, exit status 2, and nothing written.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.stage1_fixtures import write_stage1_corpus
from tests.test_tokenize import base_args, tokenize_main
from vdp.text.tokens import PROBE, load_tokenizer, tokenizer_problem

SPECIALS = ["<unk>", "<s>", "</s>"]


def char_vocab() -> dict[str, int]:
    """The specials, then one piece per character a caption uses: BPE with no merges encodes letter by letter."""
    chars = sorted(
        set("▁" + PROBE.replace(" ", "▁") + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,")
    )
    return {piece: i for i, piece in enumerate(SPECIALS + chars)}


def write_folder(
    folder, vocab: dict[str, int], byte_fallback: bool = False, bos: bool = True, cls: str = "LlamaTokenizer"
) -> str:
    """A Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json), LLaMA's settings, no .model.

    transformers' LlamaTokenizer class reads the vocabulary with byte fallback and a default
    BOS whatever the file says; PreTrainedTokenizerFast takes tokenizer.json as it is.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True, byte_fallback=byte_fallback)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {"tokenizer_class": cls, "eos_token": "</s>", "unk_token": "<unk>"}
    if bos:
        config["bos_token"] = "<s>"
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


def moved_last_piece(to: int) -> dict[str, int]:
    """The char vocabulary with its last piece renumbered `to`: a gap, so the count is below the top id."""
    vocab = char_vocab()
    last = max(vocab, key=vocab.get)
    vocab[last] = to
    return vocab


N = len(char_vocab())  # pieces counted: the image ids are appended at N, N+1, N+2

BROKEN = {
    "only_specials_encode_to_nothing": (
        lambda d: write_folder(d, dict(zip(SPECIALS, range(3))), byte_fallback=True),
        "to nothing (a vocabulary of 3 pieces)",
    ),
    "only_specials_encode_to_unk": (
        lambda d: write_folder(d, dict(zip(SPECIALS, range(3))), cls="PreTrainedTokenizerFast"),
        "as <unk>",
    ),
    "image_id_on_an_existing_piece": (
        lambda d: write_folder(d, moved_last_piece(N)),
        f"image token <im_patch> would get id {N}, already the id of the piece",
    ),
    "text_ids_past_the_image_ids": (
        lambda d: write_folder(d, moved_last_piece(N + 10)),
        f"its pieces reach id {N + 10} but its vocabulary counts {N}",
    ),
    "no_bos": (lambda d: write_folder(d, char_vocab(), bos=False, cls="PreTrainedTokenizerFast"), "no BOS token"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("corpus"))
    write_stage1_corpus(folder, tars=1, samples_per_tar=2, frames=(1, 2))
    return folder


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_tokenizer_that_cannot_be_right_is_a_usage_error(name, corpus, tmp_path, capsys):
    make, wrong = BROKEN[name]
    folder = make(str(tmp_path / name))
    out = tmp_path / "out"
    assert tokenize_main.main([*base_args(corpus, str(out), folder, "un"), "--patches", "4", "--no_progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"tokenize/main.py: error: tokenizer {folder} cannot be right: ")
    assert wrong in lines[0]
    assert not out.exists()  # refused before any work


def test_a_sound_tokenizer_of_the_same_making_passes(corpus, tmp_path):
    """The character-level folder the broken ones derive from is accepted, and tokenizes."""
    folder = write_folder(str(tmp_path / "chars"), char_vocab())
    tok = load_tokenizer(folder)
    assert tokenizer_problem(tok) == "" and tok.specials["<im_patch>"] == N
    out = str(tmp_path / "out")
    assert tokenize_main.main([*base_args(corpus, out, folder, "un"), "--patches", "4", "--no_progress"]) == 0
