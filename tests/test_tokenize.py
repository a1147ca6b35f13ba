"""Stage 2 as a user checks it: the seed's exact ids, full sequences, nothing lost, resumable, deterministic.

The tokenizer is a small SentencePiece BPE model trained here with LLaMA-2's settings
(unk=0, bos=1, eos=2, byte fallback, split digits, dummy prefix, no whitespace folding),
so every id path of the real model is exercised without downloading it.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest
import sentencepiece as spm

from tests.stage1_fixtures import (
    EXTRA,
    JpegPool,
    SampleSpec,
    caption,
    conv_turns,
    kf_prompt,
    make_jpeg,
    random_specs,
    train_llama_like_tokenizer,
    write_stage1_corpus,
    write_stage1_tar,
)
from vdp.cli import tokenize as tokenize_command
from vdp.io.tario import iter_tar_members, split_member_name
from vdp.run.accounting import is_accounting
from vdp.text.tokens import ConversationTokenizer, load_tokenizer
from vdp.tokenize.packing import PACKERS, fill, lower_bound, sequence_length

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


tokenize_main = tokenize_command

# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tok")
    path = train_llama_like_tokenizer(str(folder / "llama"))
    os.rename(path, folder / "tokenizer.model")
    return str(folder / "tokenizer.model")


@pytest.fixture(scope="session")
def hf_folder(sp_model, tmp_path_factory) -> str:
    """What a user gets from transformers: LlamaTokenizer built from the .model, save_pretrained."""
    from transformers import LlamaTokenizer

    src = tmp_path_factory.mktemp("hf_src")
    shutil.copy(sp_model, src / "tokenizer.model")
    out = tmp_path_factory.mktemp("hf_saved")
    LlamaTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("stage1_un"))
    write_stage1_corpus(folder, tars=6, samples_per_tar=8, sample_type="un", seed=1)
    return folder


def run(*args: str) -> int:
    return tokenize_main.main([*args, "--no_progress"])


def base_args(src: str, out: str, tok: str, sample_type: str = "un", *extra: str) -> list[str]:
    return ["--dataset_path", src, "--save_path", out, "--tokenizer", tok, "--sample_type", sample_type, *extra]


# --- the seed's semantics, longhand: the slow reference --------------------------------------


def seed_specials(sp: spm.SentencePieceProcessor) -> dict[str, int]:
    """The seed's Llama2mmTokenizer: every control/unknown piece, plus the image tokens."""
    specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}
    size = sp.get_piece_size()
    for k, tok in enumerate(["<im_patch>", "<im_start>", "<im_end>"]):
        specials.setdefault(tok, size + k)
    return specials


def seed_tokenize(sp, specials: dict[str, int], conversations: list[dict], sample_type: str, patches: int):
    """tokenize/main.py + tokenizer.py of the seed: build the block string, then scan it back."""
    block = "<im_start>" + "<im_patch>" * patches + "<im_end>"

    def add_image_token(text: str) -> str:
        for token in ["<Iimage>", "<Pimage>"] if sample_type == "kf" else ["<image>"]:
            text = text.replace(token, block)
        return text

    def scan(text: str) -> list[int]:
        ids, idx = [], 0
        while True:
            indices = {}
            for token in specials:
                try:
                    indices[token] = text[idx:].index(token)
                except ValueError:
                    continue
            if not indices:
                break
            nxt = min(indices, key=indices.get)
            at = idx + indices[nxt]
            ids.extend(sp.encode_as_ids(text[idx:at]))
            ids.append(specials[nxt])
            idx = at + len(nxt)
        ids.extend(sp.encode_as_ids(text[idx:]))
        return ids

    ids, mask = [1], [0]
    for conv in conversations:
        value = add_image_token(conv["value"]) if conv["from"] == "human" else conv["value"]
        part = scan(value + ("</s>" if conv["from"] == "gpt" else ""))
        ids += part
        mask += [0 if conv["from"] == "human" else 1] * len(part)
    return ids, mask


TRICKY = [
    "<image>",
    "<Iimage>",
    "<Pimage>",
    "<s>",
    "</s>",
    "<unk>",
    "<im_start>",
    "<im_patch>",
    "<im_end>",
    "<im",
    "<s",
    "image>",
    "#12",
    " ",
    "  ",
    "\n",
    "",
    "▁",
    "\u2047",
    *EXTRA,
]


def random_text(rng: random.Random, max_bits: int = 12) -> str:
    bits = []
    for _ in range(rng.randint(0, max_bits)):
        bits.append(rng.choice(TRICKY) if rng.random() < 0.5 else caption(rng, 0, 4))
    return rng.choice(["", " ", "\n"]).join(bits)


def random_conversation(rng: random.Random) -> list[dict]:
    turns = []
    for _ in range(rng.randint(1, 4)):
        turns.append({"from": "human", "value": random_text(rng)})
        turns.append({"from": "gpt", "value": random_text(rng)})
    if rng.random() < 0.1:
        turns.insert(0, {"from": "system", "value": random_text(rng)})
    return turns


# --- token semantics -------------------------------------------------------------------------


@pytest.mark.parametrize("sample_type", ["un", "kf", "conv"])
def test_ids_equal_the_seed_string_scan(sp_model, sample_type):
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    specials = seed_specials(sp)
    rng = random.Random(sample_type)
    for patches in (1, 4, 32):
        conv = ConversationTokenizer(load_tokenizer(sp_model), sample_type, patches)
        for _ in range(150):
            turns = random_conversation(rng)
            assert conv.tokenize(turns) == seed_tokenize(sp, specials, turns, sample_type, patches), turns


def test_stage1_prompts_equal_the_seed(sp_model):
    """The prompts stage 1 writes (un, kf with timestamps, multi-turn conv), captions with unicode."""
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    specials = seed_specials(sp)
    tok = load_tokenizer(sp_model)
    rng = random.Random(5)
    for trial in range(30):
        patches = 256 if trial < 2 else 32  # the reference is quadratic: slow at 256
        n = rng.randint(16, 24)
        cases = {
            "un": [{"from": "human", "value": "<image>" * n}, {"from": "gpt", "value": caption(rng)}],
            "kf": [
                {"from": "human", "value": kf_prompt(rng.choices("IP", k=n), list(range(0, 3 * n, 3)), 3 * n)},
                {"from": "gpt", "value": caption(rng)},
            ],
            "conv": conv_turns(rng, n),
        }
        for sample_type, turns in cases.items():
            conv = ConversationTokenizer(tok, sample_type, patches)
            ids, mask = conv.tokenize(turns)
            assert (ids, mask) == seed_tokenize(sp, specials, turns, sample_type, patches)
            assert conv.count_placeholders(turns) == n


def test_image_tokens_follow_the_vocabulary(sp_model):
    tok = load_tokenizer(sp_model)
    size = spm.SentencePieceProcessor(model_file=sp_model).get_piece_size()
    assert [tok.specials[t] for t in ("<im_patch>", "<im_start>", "<im_end>")] == [size, size + 1, size + 2]
    assert (tok.specials["<unk>"], tok.specials["<s>"], tok.specials["</s>"], tok.bos_id) == (0, 1, 2, 1)
    ids, mask = ConversationTokenizer(tok, "un", 3).tokenize([{"from": "human", "value": "<image>"}])
    assert ids == [1, size + 1, size, size, size, size + 2] and mask == [0] * 6


def test_model_with_its_own_image_tokens(tmp_path):
    """The seed's multimodal_tokenizer.model carried the image tokens as control pieces: use their ids."""
    path = train_llama_like_tokenizer(str(tmp_path / "mm"), ("<im_patch>", "<im_start>", "<im_end>"))
    sp = spm.SentencePieceProcessor(model_file=path)
    tok = load_tokenizer(path)
    assert tok.specials["<im_patch>"] == sp.piece_to_id("<im_patch>") < sp.get_piece_size()
    specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}
    rng = random.Random(3)
    conv = ConversationTokenizer(tok, "un", 8)
    for _ in range(50):
        turns = random_conversation(rng)
        assert conv.tokenize(turns) == seed_tokenize(sp, specials, turns, "un", 8)


def test_hugging_face_folder_gives_the_same_ids(sp_model, hf_folder, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    from_file, from_folder = load_tokenizer(sp_model), load_tokenizer(hf_folder)
    assert from_folder.specials == from_file.specials and from_folder.bos_id == 1
    rng = random.Random(11)
    texts = [random_text(rng) for _ in range(400)] + ["", " ", "  x", " lead", "trail ", "a\n\n b", "▁x"]
    for text in texts:
        assert from_folder.encode(text) == sp.encode(text), repr(text)
    # A folder that still has its tokenizer.model (as LLaMA-2 downloads do) uses it directly.
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    assert load_tokenizer(str(tmp_path)).encode("hello world 42") == sp.encode("hello world 42")


# --- packing ---------------------------------------------------------------------------------


def stage1_lengths(patches: int, count: int, seed: int) -> list[int]:
    """Token counts of stage-1-like samples: 16-24 frames, captions of 5-300 tokens."""
    rng = random.Random(seed)
    return [1 + rng.randint(16, 24) * (patches + 2) + rng.randint(5, 300) for _ in range(count)]


def seed_greedy(lengths: list[int], max_len: int) -> list[list[int]]:
    """The seed's loop (tokenize/main.py), keeping its last partial sequence."""
    out, cached, total = [], [], 0
    for i, n in enumerate(lengths):
        if total + n > max_len and cached:
            out.append(cached)
            cached, total = [], 0
        cached.append(i)
        total += n
    return out + ([cached] if cached else [])


@pytest.mark.parametrize("method", sorted(PACKERS))
def test_packing_keeps_every_sample_within_max_len(method):
    lengths = stage1_lengths(32, 1500, seed=2) + [8000, 2, 7999]
    bins = list(PACKERS[method](lengths, 8000, 300))
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(b == sorted(b) for b in bins)
    assert max(sequence_length([lengths[i] for i in b]) for b in bins) <= 8000
    assert bins == list(PACKERS[method](lengths, 8000, 300))  # deterministic


def test_bfd_fill_at_32_patches_and_lower_bound_at_256():
    lengths = stage1_lengths(32, 3000, seed=4)
    bfd = list(PACKERS["bfd"](lengths, 8000, 1000))
    greedy = list(PACKERS["greedy"](lengths, 8000, 1000))
    assert fill(lengths, bfd, 8000) >= 0.97
    assert fill(lengths, bfd, 8000) > fill(lengths, greedy, 8000)
    assert len(bfd) <= lower_bound(lengths, 8000) + 3
    big = stage1_lengths(256, 600, seed=5)
    assert min(big) > 4000
    assert len(list(PACKERS["bfd"](big, 8000, 1000))) == lower_bound(big, 8000) == len(big)


def test_greedy_reproduces_the_seed_filling():
    lengths = stage1_lengths(32, 800, seed=6)
    assert list(PACKERS["greedy"](lengths, 8000, 0)) == seed_greedy(lengths, 8000)


def test_bfd_window_bounds_what_waits():
    """A bin is emitted before its window's successors are read: memory stays one window."""
    seen = []

    def stream():
        for i, n in enumerate(stage1_lengths(32, 500, seed=7)):
            seen.append(i)
            yield n

    first = next(iter(PACKERS["bfd"](stream(), 8000, 100)))
    assert len(seen) == 100 and max(first) < 100


# --- end to end ------------------------------------------------------------------------------


def read_tar(path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with open(path, "rb") as f:
        for name, data in iter_tar_members(f):
            key, ext = split_member_name(name)
            samples.setdefault(key, {})[ext] = data
    return samples


def stage1_index(folder: str) -> dict[tuple[str, str], dict[str, bytes]]:
    """(tar name, key) -> members of every stage-1 sample."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.tar"))):
        for key, members in read_tar(path).items():
            out[(os.path.basename(path), key)] = members
    return out


def output_sequences(out: str) -> list[tuple[str, dict[str, bytes]]]:
    seqs = []
    for path in sorted(glob.glob(os.path.join(out, "*", "shard_*.tar"))):
        seqs += list(read_tar(path).items())
    return seqs


def tree_bytes(folder: str) -> dict[str, bytes]:
    files = {}
    for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
        if os.path.isfile(path) and ".tokenize" not in path and not is_accounting(path):
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def check_sequences(
    out: str, src: str, sp_model: str, sample_type: str, patches: int, max_len: int, limit: int = 10**9
) -> int:
    """The output sequences against the seed reference, sample by sample; returns samples seen."""
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    specials = seed_specials(sp)
    inputs = stage1_index(src)
    seen = set()
    for _, members in output_sequences(out)[:limit]:
        doc = json.loads(members["json"])
        ids, mask = doc["input_ids"], doc["loss_mask"]
        assert len(ids) == len(mask) == sum(doc["sample_lengths"]) <= max_len
        assert len(doc["sources"]) == len(doc["source_tars"]) == len(doc["sample_lengths"])
        want_ids, want_mask, want_images = [], [], []
        for n, (tar, skey) in enumerate(zip(doc["source_tars"], doc["sources"])):
            sample = inputs[(tar, skey)]
            turns = json.loads(sample["json"])["conversations"]
            s_ids, s_mask = seed_tokenize(sp, specials, turns, sample_type, patches)
            cut = 1 if n else 0  # later samples drop their BOS
            want_ids += s_ids[cut:]
            want_mask += s_mask[cut:]
            assert doc["sample_lengths"][n] == len(s_ids) - cut
            want_images += [sample[f"{name}.jpg"] for name in json.loads(sample["json"])["image"]]
            assert (tar, skey) not in seen
            seen.add((tar, skey))
        assert ids == want_ids and mask == want_mask
        assert doc["image"] == [str(i) for i in range(len(want_images))]
        assert [members[f"{i}.jpg"] for i in range(len(want_images))] == want_images  # bytes untouched
    return len(seen)


def test_end_to_end_ids_images_and_fill(corpus, sp_model, tmp_path, capsys):
    out = str(tmp_path / "out")
    rc = run(*base_args(corpus, out, sp_model, "un", "--patches", "32", "--shard_size", "3", "--workers", "2"))
    assert rc == 0
    assert sorted(os.listdir(os.path.join(out, "0-6"))) == [
        ".tokenize", "shard_0.tar", "shard_0.tar.stats.json", "shard_1.tar", "shard_1.tar.stats.json", "summary-0.json"
    ]
    assert check_sequences(out, corpus, sp_model, "un", 32, 8000) == 48  # every sample, once
    keys = [k for k, _ in output_sequences(out)]
    assert len(keys) == len(set(keys))
    summary = capsys.readouterr().out
    assert "samples_in=48" in summary and "errors=0" in summary and "fill_pct=" in summary
    assert open(os.path.join(out, "errors.jsonl")).read() == ""
    assert not [p for p in glob.glob(os.path.join(out, "**", ".*tmp*"), recursive=True)]


def test_default_patches_reach_the_lower_bound(corpus, sp_model, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert run(*base_args(corpus, out, sp_model, "un", "--shard_size", "6", "--workers", "1")) == 0
    line = capsys.readouterr().out
    fields = dict(kv.split("=") for kv in line.splitlines()[0].split(": ", 1)[1].split(", "))
    assert int(fields["sequences_out"]) == int(fields["lower_bound"]) == 48
    assert check_sequences(out, corpus, sp_model, "un", 256, 8000, limit=3) == 3  # the reference is slow at 256


def test_output_identical_for_any_workers_and_greedy_differs(corpus, sp_model, tmp_path):
    trees = []
    for workers in ("1", "2"):
        out = str(tmp_path / f"w{workers}")
        assert (
            run(*base_args(corpus, out, sp_model, "un", "--patches", "32", "--shard_size", "2", "--workers", workers))
            == 0
        )
        trees.append(tree_bytes(out))
    assert trees[0] == trees[1] and len(trees[0]) == 4
    out = str(tmp_path / "greedy")
    args = base_args(corpus, out, sp_model, "un", "--patches", "32", "--shard_size", "2", "--packing", "greedy")
    assert run(*args) == 0
    assert tree_bytes(out) != trees[0]
    assert check_sequences(out, corpus, sp_model, "un", 32, 8000) == 48


def test_resume_rewrites_only_missing_shards(corpus, sp_model, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = base_args(corpus, out, sp_model, "un", "--patches", "32", "--shard_size", "2", "--workers", "1")
    assert run(*args) == 0
    before = tree_bytes(out)
    os.remove(os.path.join(out, "0-6", "shard_1.tar"))
    stamp = os.stat(os.path.join(out, "0-6", "shard_0.tar")).st_mtime_ns
    capsys.readouterr()
    assert run(*args) == 0
    assert "shards_written=1, shards_resumed=2" in capsys.readouterr().out
    assert tree_bytes(out) == before
    assert os.stat(os.path.join(out, "0-6", "shard_0.tar")).st_mtime_ns == stamp
    # Other flags into the same range folder would mix outputs: refused.
    assert run(*base_args(corpus, out, sp_model, "un", "--patches", "64", "--shard_size", "2")) == 2


def test_start_end_and_shard_size_pick_sorted_tars(corpus, sp_model, tmp_path):
    out = str(tmp_path / "out")
    assert (
        run(
            *base_args(
                corpus, out, sp_model, "un", "--patches", "32", "--start", "1", "--end", "5", "--shard_size", "3"
            )
        )
        == 0
    )
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(corpus, "*.tar")))
    per_shard = []
    for shard in ("shard_0.tar", "shard_1.tar"):
        tars = set()
        for _, members in read_tar(os.path.join(out, "1-5", shard)).items():
            tars.update(json.loads(members["json"])["source_tars"])
        per_shard.append(tars)
    assert per_shard == [set(names[1:4]), set(names[4:5])]


def test_npy_ids_match_json_and_are_smaller(corpus, sp_model, tmp_path):
    outs = {}
    for fmt in ("json", "npy"):
        outs[fmt] = str(tmp_path / fmt)
        args = base_args(corpus, outs[fmt], sp_model, "un", "--patches", "32", "--shard_size", "6", "--ids_format", fmt)
        assert run(*args) == 0
    as_json, as_npy = output_sequences(outs["json"]), output_sequences(outs["npy"])
    assert [k for k, _ in as_json] == [k for k, _ in as_npy]
    for (_, j), (_, n) in zip(as_json, as_npy):
        doc = json.loads(j["json"])
        ids = np.load(io.BytesIO(n["input_ids.npy"]))
        mask = np.load(io.BytesIO(n["loss_mask.npy"]))
        assert ids.dtype == np.int32 and mask.dtype == np.uint8
        assert ids.tolist() == doc["input_ids"] and mask.tolist() == doc["loss_mask"]
        assert "input_ids" not in json.loads(n["json"])
        assert len(n["input_ids.npy"]) + len(n["loss_mask.npy"]) < len(j["json"])


def test_kf_and_conv_corpora(sp_model, tmp_path):
    for sample_type in ("kf", "conv"):
        src = str(tmp_path / f"src_{sample_type}")
        write_stage1_corpus(src, tars=2, samples_per_tar=5, sample_type=sample_type, seed=3)
        out = str(tmp_path / f"out_{sample_type}")
        assert run(*base_args(src, out, sp_model, sample_type, "--patches", "16", "--shard_size", "2")) == 0
        assert check_sequences(out, src, sp_model, sample_type, 16, 8000) == 10


def test_legacy_layout_gives_the_same_sequences(sp_model, tmp_path):
    rng = random.Random(9)
    pool = JpegPool([(64, 48), (40, 60)])
    specs = random_specs(rng, 6, 0, "un", pool, frames=(3, 5), words=(3, 20))
    specs[2].conversations = [
        {"from": "human", "value": "what happens <image>"},
        {"from": "gpt", "value": "a dog runs"},
        {"from": "human", "value": "and then" + "<image>" * (len(specs[2].frames) - 1)},
        {"from": "gpt", "value": "it sits"},
    ]
    new_src, old_src = tmp_path / "new", tmp_path / "old"
    write_stage1_tar(str(new_src / "shard-0-0-6-0.tar"), specs)
    write_stage1_tar(str(old_src / "shard-0-0-6-0.tar"), specs, legacy=True)
    with tarfile.open(old_src / "shard-0-0-6-0.tar") as t:
        assert "000000000-0.jpg" in t.getnames() and "000000000.0.jpg" not in t.getnames()
    docs = {}
    for name, src in (("new", new_src), ("old", old_src)):
        out = str(tmp_path / f"out_{name}")
        assert run(*base_args(str(src), out, sp_model, "un", "--patches", "8", "--shard_size", "1")) == 0
        docs[name] = output_sequences(out)
    assert len(docs["new"]) == 1 and docs["new"] == docs["old"]
    assert json.loads(docs["old"][0][1]["json"])["sources"] == [s.key for s in specs]


def test_problem_samples_go_to_the_errors_file(sp_model, tmp_path, capsys):
    rng = random.Random(4)
    pool = JpegPool([(64, 48)])
    specs = random_specs(rng, 6, 0, "un", pool, frames=(2, 3), words=(3, 10))
    specs[1].conversations = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "one placeholder"}]
    specs[3].caption = " ".join(["word"] * 3000)  # longer than --max_len
    src = tmp_path / "src"
    write_stage1_tar(str(src / "shard-0-0-6-0.tar"), specs)
    # a video-only sample and a sample whose json is not JSON, in a second tar
    from vdp.io.tario import write_tar_atomically

    write_tar_atomically(
        str(src / "shard-0-6-8-1.tar"),
        [
            ("000000006.json", json.dumps({"caption": "x", "video_id": "v"}).encode()),
            ("000000006.mp4", b"\x00\x00\x00\x18ftypmp42"),
            ("000000007.json", b"{not json"),
            ("000000007.0.jpg", make_jpeg(32, 32, 1)),
        ],
    )
    out = str(tmp_path / "out")
    assert (
        run(*base_args(str(src), out, sp_model, "un", "--patches", "8", "--max_len", "600", "--shard_size", "2")) == 1
    )
    rows = {r["key"]: r for r in map(json.loads, open(os.path.join(out, "errors.jsonl")))}
    assert rows["000000001"]["reason"].startswith("placeholder count: 1 placeholders for")
    assert rows["000000003"]["reason"].startswith("too long:")
    assert rows["000000006"]["reason"].startswith("not tokenizable: video-only")
    assert rows["000000007"]["reason"].startswith("bad json: 000000007.json")
    assert rows["000000007"]["source"].endswith("shard-0-6-8-1.tar")
    assert len(rows) == 4
    packed = [s for _, m in output_sequences(out) for s in json.loads(m["json"])["sources"]]
    assert sorted(packed) == ["000000000", "000000002", "000000004", "000000005"]
    assert "errors=4" in capsys.readouterr().out


def corrupt_copies(good: str, folder) -> dict[str, str]:
    """Three broken versions of a tar: cut short, a damaged header, a member with bad bytes."""
    data = open(good, "rb").read()
    with tarfile.open(good) as t:
        members = t.getmembers()
    paths = {}
    paths["truncated"] = str(folder / "b-truncated.tar")
    open(paths["truncated"], "wb").write(data[: members[len(members) // 2].offset_data + 100])
    broken = bytearray(data)
    broken[members[len(members) // 2].offset + 20] ^= 0xFF  # header checksum no longer matches
    paths["header"] = str(folder / "c-header.tar")
    open(paths["header"], "wb").write(bytes(broken))
    return paths


def test_bad_tars_are_reported_and_the_rest_is_written(sp_model, tmp_path):
    rng = random.Random(8)
    pool = JpegPool([(64, 48)])
    src = tmp_path / "src"
    good = write_stage1_tar(str(src / "a-good.tar"), random_specs(rng, 4, 0, "un", pool, frames=(2, 3), words=(3, 8)))
    corrupt_copies(good, src)
    # a member that is not a JPEG inside an otherwise sound tar
    bad_specs = random_specs(rng, 2, 100, "un", pool, frames=(2, 2), words=(3, 8))
    bad_specs[0].frames[1] = (64, 48, b"definitely not a jpeg")
    write_stage1_tar(str(src / "d-badjpeg.tar"), bad_specs)
    out = str(tmp_path / "out")
    assert run(*base_args(str(src), out, sp_model, "un", "--patches", "8", "--shard_size", "4")) == 1
    rows = list(map(json.loads, open(os.path.join(out, "errors.jsonl"))))
    by_tar = {os.path.basename(r["source"]): r for r in rows}
    assert by_tar["b-truncated.tar"]["reason"].startswith("bad tar:") and by_tar["b-truncated.tar"]["key"]
    assert "unexpected end of data" in by_tar["b-truncated.tar"]["reason"]
    assert by_tar["c-header.tar"]["reason"].startswith("bad tar: corrupt tar")
    assert by_tar["d-badjpeg.tar"] == {
        "key": "000000100",
        "source": str(src / "d-badjpeg.tar"),
        "reason": "not a jpeg: no start-of-image marker: 000000100.1.jpg",
    }
    packed = [
        (t, s)
        for _, m in output_sequences(out)
        for t, s in zip(*(json.loads(m["json"])[k] for k in ("source_tars", "sources")))
    ]
    assert sum(1 for t, _ in packed if t == "a-good.tar") == 4
    assert ("d-badjpeg.tar", "000000101") in packed
    # what the broken tars held before the damage was packed, all of it
    for name in ("b-truncated.tar", "c-header.tar"):
        cut = by_tar[name]["key"]
        assert sorted(k for t, k in packed if t == name) == [f"{i:09d}" for i in range(int(cut))]


def test_big_frames_shrink_keeping_aspect_others_untouched(sp_model, tmp_path):
    big, small = make_jpeg(300, 120, 1), make_jpeg(100, 60, 2)
    spec = SampleSpec("000000000", [(300, 120, big), (100, 60, small)], "two frames")
    src = tmp_path / "src"
    write_stage1_tar(str(src / "shard-0-0-1-0.tar"), [spec])
    out = str(tmp_path / "out")
    assert run(*base_args(str(src), out, sp_model, "un", "--patches", "4", "--max_side", "150")) == 0
    ((_, members),) = output_sequences(out)
    shrunk = cv2.imdecode(np.frombuffer(members["0.jpg"], np.uint8), cv2.IMREAD_COLOR)
    assert shrunk.shape[:2] == (60, 150)
    assert members["1.jpg"] == small


def test_usage_errors_exit_2(corpus, sp_model, tmp_path):
    out = str(tmp_path / "out")
    assert run(*base_args(corpus, out, str(tmp_path / "missing.model"), "un")) == 2
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"not a model")
    assert run(*base_args(corpus, out, str(bogus), "un")) == 2
    with pytest.raises(SystemExit) as e:
        run(*base_args(str(tmp_path / "nowhere"), out, sp_model, "un"))
    assert e.value.code == 2


def test_runs_as_a_script_without_shadowing_stdlib_tokenize(corpus, sp_model, tmp_path):
    script = os.path.join(ROOT, "tokenize", "main.py")
    help_run = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert help_run.returncode == 0 and "examples:" in help_run.stdout and "--sample_type" in help_run.stdout
    out = str(tmp_path / "out")
    args = base_args(corpus, out, sp_model, "un", "--patches", "8", "--end", "2", "--workers", "2", "--no_progress")
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "sequences_out=" in done.stdout
    # The script's folder is sys.path[0] and holds no tokenize.py (nor __init__.py), so the
    # stdlib `tokenize` (used by linecache and inspect for every traceback) is the one imported.
    probe = (
        "import sys, os, runpy, sysconfig; sys.path[0] = sys.argv[1]; runpy.run_path(sys.argv[2], run_name='probe');"
        "import tokenize, inspect, linecache; assert hasattr(tokenize, 'open'), tokenize;"
        "assert tokenize.__file__.startswith(sysconfig.get_paths()['stdlib']), tokenize.__file__;"
        "assert inspect.getsource(linecache.getline)"
    )
    checked = subprocess.run(
        [sys.executable, "-c", probe, os.path.dirname(script), script], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


# --- tar plumbing ----------------------------------------------------------------------------


def test_slice_writer_gives_tarios_bytes(tmp_path, monkeypatch):
    """Frames copied by the kernel land as if written from memory: same bytes as vdp.io.tario."""
    from vdp.io.tario import tar_bytes
    from vdp.io.tarslices import FileSlice, _SliceWriter, write_tar_slices_atomically

    source = tmp_path / "source.bin"
    payload = bytes(range(256)) * 40
    source.write_bytes(b"xx" + payload + b"yy")
    names = ["a.json", "000001-000002.0.jpg", "b" * 100, "é.txt"]
    contents = [b"{}", payload[:777], payload, b""]
    want = tar_bytes(list(zip(names, contents)))
    members = [
        (names[0], b"{}"),
        (names[1], FileSlice(str(source), 2, 777)),
        (names[2], FileSlice(str(source), 2, len(payload))),
        (names[3], b""),
    ]
    size = write_tar_slices_atomically(str(tmp_path / "out.tar"), members)
    assert (tmp_path / "out.tar").read_bytes() == want and size == len(want)
    if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        # another filesystem: copy_file_range refuses, sendfile copies, the bytes are the same
        import vdp.io.tarslices as tarslices

        used = []
        spied = [lambda *a, c=c: used.append(c.__name__) or c(*a) for c in tarslices.KERNEL_COPIES]
        monkeypatch.setattr(tarslices, "KERNEL_COPIES", tuple(spied))
        elsewhere = os.path.join("/dev/shm", f"slices-{os.getpid()}.tar")
        try:
            write_tar_slices_atomically(elsewhere, members)
            assert open(elsewhere, "rb").read() == want
        finally:
            os.unlink(elsewhere)
        assert used == ["_copy_file_range", "_sendfile", "_sendfile"]
    stream = io.BytesIO()  # no file descriptor (an upload): plain writes, same bytes
    writer = _SliceWriter(stream)
    for name, data in members:
        writer.add(name, data)
    writer.finish()
    writer.release()
    assert stream.getvalue() == want


def test_fast_tar_index_agrees_with_tarfile_on_damaged_tars():
    from vdp.io.tario import TarReadError, tar_bytes
    from vdp.io.tarslices import _tarfile_index, iter_tar_index

    def outcome(index, data: bytes):
        got = []
        try:
            for entry in index(io.BytesIO(data)):
                got.append(entry)
        except TarReadError as e:
            return got, e.members_read
        return got, None

    rng = random.Random(12)
    base = tar_bytes([(f"{i:09d}.{j}.jpg", rng.randbytes(rng.randint(0, 1500))) for i in range(4) for j in range(3)])
    assert outcome(iter_tar_index, base) == outcome(_tarfile_index, base) and outcome(iter_tar_index, base)[1] is None
    for trial in range(1500):
        data = bytearray(base)
        if trial % 2:
            data = data[: rng.randrange(len(data))]
        else:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        assert outcome(iter_tar_index, bytes(data)) == outcome(_tarfile_index, bytes(data)), trial
    # a pax tar (what webdataset's TarWriter makes) goes through tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("ü" * 120 + ".json")
        info.size = 2
        t.addfile(info, io.BytesIO(b"{}"))
    assert [e.name for e in iter_tar_index(io.BytesIO(buf.getvalue()))] == ["ü" * 120 + ".json"]
    # plain headers, then a long name (pax) midway: tarfile takes over there, with the same result
    mixed = io.BytesIO()
    with tarfile.open(fileobj=mixed, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in ("a.json", "a.0.jpg", "b" * 150 + ".json", "c.json"):
            info = tarfile.TarInfo(name)
            info.size = 700
            t.addfile(info, io.BytesIO(bytes(700)))
    data = mixed.getvalue()
    assert outcome(iter_tar_index, data) == outcome(_tarfile_index, data)
    assert [e.name for e in outcome(iter_tar_index, data)[0]] == ["a.json", "a.0.jpg", "b" * 150 + ".json", "c.json"]
    cut = data[: outcome(iter_tar_index, data)[0][-1].offset + 100]  # inside c.json's data
    assert outcome(iter_tar_index, cut) == outcome(_tarfile_index, cut) and outcome(iter_tar_index, cut)[1] == 4


def test_fast_json_of_ids_is_json_dumps():
    from vdp.tokenize.stage import _sequence_json, json_int_list

    rng = random.Random(13)
    for _ in range(200):
        ids = [rng.choice([1, 2, 819, 820, 821, 65535, rng.randrange(70000)]) for _ in range(rng.randint(0, 300))]
        values = np.array(ids, dtype=np.int32)
        assert json_int_list(values) == json.dumps(ids, separators=(",", ":"))
    rest = {"sample_lengths": [3], "sources": ["000000001"], "source_tars": ["ü.tar"], "image": ["0"]}
    ids, mask = np.array([1, 5, 5], dtype=np.uint16), np.array([0, 1, 1], dtype=np.uint8)
    want = json.dumps({"input_ids": [1, 5, 5], "loss_mask": [0, 1, 1], **rest}, separators=(",", ":"))
    assert _sequence_json(ids, mask, rest, True).decode() == want


def test_legacy_tar_cut_inside_frames_reports_the_sample(sp_model, tmp_path):
    rng = random.Random(14)
    specs = random_specs(rng, 4, 0, "un", JpegPool([(64, 48)]), frames=(3, 3), words=(3, 8))
    src = tmp_path / "src"
    path = write_stage1_tar(str(src / "legacy.tar"), specs, legacy=True)
    with tarfile.open(path) as t:
        cut_at = t.getmember("000000002-1.jpg").offset_data + 10  # inside sample 2's second frame
    data = open(path, "rb").read()
    open(path, "wb").write(data[:cut_at])
    out = str(tmp_path / "out")
    assert run(*base_args(str(src), out, sp_model, "un", "--patches", "4")) == 1
    (row,) = map(json.loads, open(os.path.join(out, "errors.jsonl")))
    assert row["key"] == "000000002" and "sample 000000002 cut short" in row["reason"]
    packed = [k for _, m in output_sequences(out) for k in json.loads(m["json"])["sources"]]
    assert packed == ["000000000", "000000001"]
