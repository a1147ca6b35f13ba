"""The stages together, as a Megatron team runs them: pack.py's real output feeds the tokenizer,
and every frame pack.py wrote reaches a packed sequence untouched."""

from __future__ import annotations

import glob
import json
import os

import pytest
import sentencepiece as spm
import webdataset as wds

from tests.pack_helpers import make_videos, read_samples, write_manifest
from tests.stage1_fixtures import train_llama_like_tokenizer
from vdp.cli import pack
from vdp.cli import tokenize as tokenize_command


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory):
    return train_llama_like_tokenizer(str(tmp_path_factory.mktemp("tok") / "llama"))


@pytest.mark.parametrize("kind", ["un", "kf"])
def test_pack_then_tokenize(tmp_path, tokenizer_model, kind):
    videos = make_videos(str(tmp_path / "videos"))
    rows = [{"video_path": p, "value": f"A clip called {n}."} for n, p in sorted(videos.items())]
    manifest = write_manifest(str(tmp_path / "m.jsonl"), rows)
    shards = str(tmp_path / "shards")
    args = ["--manifest", manifest, "--type", kind, "--save_path", shards, "--samples_per_tar", "3", "--workers", "2",
            "--num_frames", "6", "--kf_iframes", "3", "--kf_total", "8", "--no_progress"]
    assert pack.main(args) == 0
    stage1 = read_samples(shards)
    vocab = spm.SentencePieceProcessor(model_file=tokenizer_model).get_piece_size()

    tokenize_main = tokenize_command
    tokens = str(tmp_path / "tokens")
    patches = 8
    rc = tokenize_main.main(["--dataset_path", shards, "--save_path", tokens, "--tokenizer", tokenizer_model,
                             "--sample_type", kind, "--shard_size", "2", "--workers", "2", "--patches", str(patches),
                             "--max_len", "400", "--no_progress"])
    assert rc == 0
    seen = []
    for url in sorted(glob.glob(os.path.join(tokens, "**", "*.tar"), recursive=True)):
        for seq in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            meta = json.loads(seq["json"])
            ids = meta["input_ids"]
            assert len(ids) == len(meta["loss_mask"]) == sum(meta["sample_lengths"]) <= 400
            images = [seq[f"{name}.jpg"] for name in meta["image"]]
            # one <im_start> (vocab+1) and `patches` <im_patch> (vocab) per image
            assert ids.count(vocab + 1) == ids.count(vocab + 2) == len(images)
            assert ids.count(vocab) == patches * len(images)
            frames = []
            for key in meta["sources"]:
                s1 = json.loads(stage1[key]["json"])
                frames += [stage1[key][f"{n}.jpg"] for n in s1["image"]]
                seen.append(key)
            assert images == frames, "the frames must pass through byte for byte, in order"
    assert sorted(seen) == sorted(stage1), "every stage-1 sample in exactly one sequence"
