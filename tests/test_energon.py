"""What a trainer relies on, checked through Megatron-Energon's own get_train_dataset/get_loader
on shards made by pack.py and tokenize/main.py and indexed by index/main.py --energon: typed
samples with no user code, labels/position ids/cu_seqlens that respect packed boundaries, and
each image tensor being the frame its block stands for."""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
import pytest

energon = pytest.importorskip("megatron.energon", reason="megatron-energon is not installed")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from tests.pack_helpers import read_samples, write_manifest  # noqa: E402
from tests.stage1_fixtures import train_llama_like_tokenizer  # noqa: E402
from tests.synth import VideoSpec, make_video, read_frame_number  # noqa: E402
from vdp.cli import index as index_command  # noqa: E402
from vdp.cli import pack  # noqa: E402
from vdp.cli import tokenize as tokenize_command  # noqa: E402
from vdp.energon import (  # noqa: E402
    IGNORE_INDEX,
    PackedSequenceEncoder,
    PackedSequenceSample,
    VideoFramesEncoder,
    VideoFramesSample,
    resize_with_padding,
)

PATCHES = 8
VIDEOS = {  # landscape, square and portrait (longest side 160), so padding shows up on both axes
    "wide.mp4": VideoSpec(num_frames=40, width=160, height=96),
    "square.mp4": VideoSpec(num_frames=36, width=160, height=160, codec="libx265", gop=9),
    "tall.mp4": VideoSpec(num_frames=30, width=96, height=160, bframes=0),
    "wide2.mp4": VideoSpec(num_frames=44, width=160, height=96, gop=11),
    "tall2.mp4": VideoSpec(num_frames=32, width=112, height=160),
}


def run_pipeline(root: str) -> dict:
    """pack (un, kf) -> tokenize (un) -> index --energon of all three folders."""
    videos = {n: make_video(os.path.join(root, "videos", n), s) for n, s in VIDEOS.items()}
    rows = [{"video_path": p, "value": f"A clip called {n} with a longer caption {i}."}
            for i, (n, p) in enumerate(sorted(videos.items()) * 2)]  # fmt: skip
    manifest = write_manifest(os.path.join(root, "m.jsonl"), rows)
    tok = train_llama_like_tokenizer(os.path.join(root, "llama"))
    out = {"tokenizer": tok}
    for kind in ("un", "kf"):
        out[kind] = os.path.join(root, kind)
        assert pack.main(["--manifest", manifest, "--type", kind, "--save_path", out[kind], "--samples_per_tar", "4",
                          "--workers", "2", "--num_frames", "5", "--kf_iframes", "2", "--kf_total", "5",
                          "--no_progress"]) == 0  # fmt: skip
    out["tokens"] = os.path.join(root, "tokens")
    assert tokenize_command.main(["--dataset_path", out["un"], "--save_path", out["tokens"], "--tokenizer", tok,
                                  "--sample_type", "un", "--shard_size", "2", "--workers", "2", "--patches",
                                  str(PATCHES), "--max_len", "300", "--no_progress"]) == 0  # fmt: skip
    out["tokens_npy"] = os.path.join(root, "tokens_npy")  # ids as .npy members instead of inside the json
    assert tokenize_command.main(["--dataset_path", out["un"], "--save_path", out["tokens_npy"], "--tokenizer", tok,
                                  "--sample_type", "un", "--shard_size", "2", "--workers", "2", "--patches",
                                  str(PATCHES), "--max_len", "300", "--ids_format", "npy", "--no_progress"]) == 0  # fmt: skip
    for name in ("un", "kf", "tokens", "tokens_npy"):
        folder = out[name]
        flags = ["--dataset_path", folder, "--dataset_name", name, "--output", os.path.join(root, "index", name),
                 "--patches", str(PATCHES), "--max_len", "300", "--tokenizer", tok, "--workers", "2", "--energon",
                 "--no_progress"]  # fmt: skip
        assert index_command.main(flags) == 0
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return run_pipeline(str(tmp_path_factory.mktemp("energon")))


def worker_config(workers: int = 0):
    return energon.WorkerConfig(rank=0, world_size=1, num_workers=workers)


def one_epoch(path: str, task_encoder=None, batch_size=None, workers: int = 0) -> list:
    kwargs = {"task_encoder": task_encoder} if task_encoder is not None else {}
    ds = energon.get_train_dataset(path, batch_size=batch_size, shuffle_buffer_size=None,
                                   max_samples_per_sequence=None, worker_config=worker_config(workers),
                                   repeat=False, **kwargs)  # fmt: skip
    return list(energon.get_loader(ds))


def stage2_reference(tokens: str) -> dict:
    """key -> (ids, loss_mask, sample_lengths, JPEG bytes in order), read with stock webdataset."""
    ref = {}
    for folder in sorted(glob.glob(os.path.join(tokens, "*-*"))):
        for key, s in read_samples(folder).items():
            doc = json.loads(s["json"])
            ref[key] = (doc["input_ids"], doc["loss_mask"], doc["sample_lengths"], [s[f"{n}.jpg"] for n in doc["image"]])
    return ref


def image_ids(tokenizer: str) -> tuple[int, int, int]:
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=tokenizer).get_piece_size()
    return vocab + 1, vocab, vocab + 2  # <im_start>, <im_patch>, <im_end> after the vocabulary


def test_typed_samples_with_no_user_code(shards):
    """get_train_dataset on each stage's folder gives our typed samples; frames are the frames the json names."""
    seqs = one_epoch(shards["tokens"])
    ref = stage2_reference(shards["tokens"])
    assert all(isinstance(s, PackedSequenceSample) for s in seqs)
    assert sorted(s.__key__ for s in seqs) == sorted(ref)
    for s in seqs:
        ids, mask, lengths, jpegs = ref[s.__key__]
        assert s.input_ids.dtype == torch.int64 and s.input_ids.tolist() == ids
        assert s.loss_mask.tolist() == mask and s.sample_lengths == lengths and len(s.images) == len(jpegs)

    for kind in ("un", "kf"):
        stage1 = read_samples(shards[kind])
        samples = one_epoch(shards[kind])
        assert sorted(s.__key__ for s in samples) == sorted(stage1)
        for s in samples:
            assert isinstance(s, VideoFramesSample)
            doc = json.loads(stage1[s.__key__]["json"])
            frames = doc["frames"]
            assert s.frames.dtype == torch.uint8 and s.frames.shape[0] == len(frames) and s.frames.shape[3] == 3
            assert s.timestamps == [f["t"] for f in frames] and s.frame_types == [f["type"] for f in frames]
            assert s.caption == doc["caption"] and s.conversations == doc["conversations"]
            assert s.video_id == doc["video_id"]
            painted = [read_frame_number(np.ascontiguousarray(f.numpy()[:, :, ::-1])) for f in s.frames]
            assert painted == [f["index"] for f in frames], s.__key__
        if kind == "kf":
            assert any("I" in s.frame_types for s in samples)


def check_batch_row(batch, row: int, ids, mask, lengths, ids3: tuple[int, int, int]) -> None:
    start, patch, end = ids3
    n, length = len(ids), batch.input_ids.shape[1]
    got = batch.input_ids[row]
    assert got[:n].tolist() == ids and (got[n:] == 0).all(), "ids equal the shard's, then padding"
    # every image block is exactly <im_start> <im_patch>*PATCHES <im_end>
    starts = [i for i, t in enumerate(ids) if t == start]
    for s in starts:
        assert ids[s : s + PATCHES + 2] == [start] + [patch] * PATCHES + [end]
    assert ids.count(end) == len(starts) and ids.count(patch) == PATCHES * len(starts)

    labels = batch.labels[row].tolist()
    sample_starts = set(np.cumsum([0] + lengths[:-1]).tolist())
    targets = {i for i, v in enumerate(labels) if v != IGNORE_INDEX}
    for i in targets:
        assert i + 1 < n and labels[i] == ids[i + 1] and mask[i + 1] == 1, "a label is the next id, a response token"
        assert i + 1 not in sample_starts, "a label never crosses into the next packed sample"
    expected = {j - 1 for j in range(1, n) if mask[j] == 1 and j not in sample_starts}
    assert targets == expected, "every response token but a sequence's first is some position's label"
    assert all(labels[i] == IGNORE_INDEX for i in range(n, length)), "padding is never a target"
    assert batch.loss_mask[row].tolist() == [float(v != IGNORE_INDEX) for v in labels]

    positions = batch.position_ids[row].tolist()
    expected_positions = [p for k in lengths for p in range(k)] + list(range(length - n))
    assert positions == expected_positions, "position ids restart at every packed sample"
    rows_positions = [p for r, p in batch.image_positions.tolist() if r == row]
    assert rows_positions == starts


@pytest.mark.parametrize("pad_to", [None, 320])
def test_packed_batches_are_what_a_trainer_needs(shards, pad_to):
    ref = stage2_reference(shards["tokens"])
    ids3 = image_ids(shards["tokenizer"])
    size = 160  # the longest side of every video: frames are only padded, never scaled
    batches = one_epoch(shards["tokens"], PackedSequenceEncoder(image_size=size, pad_to=pad_to), batch_size=2)
    seen = []
    for batch in batches:
        rows, length = batch.input_ids.shape
        assert length == (pad_to or max(len(ref[k][0]) for k in batch.__key__))
        assert batch.labels.shape == batch.position_ids.shape == batch.loss_mask.shape == (rows, length)
        bounds = [0]
        jpegs = []
        for row, key in enumerate(batch.__key__):
            ids, mask, lengths, row_jpegs = ref[key]
            check_batch_row(batch, row, ids, mask, lengths, ids3)
            assert batch.sample_lengths[row] == lengths
            segments = lengths + ([length - len(ids)] if length > len(ids) else [])
            bounds += (row * length + np.cumsum(segments)).tolist()
            jpegs += row_jpegs
            seen.append(key)
        assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens.tolist() == bounds
        assert batch.max_seqlen == int(np.diff(bounds).max())
        assert batch.images.shape == (len(jpegs), 3, size, size) and batch.images.dtype == torch.uint8
        assert len(batch.image_positions) == len(jpegs)
        for image, jpeg in zip(batch.images, jpegs):
            # the i-th tensor is the i-th JPEG: the same frame number, and the same pixels
            reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            h, w = reference.shape[:2]
            top, left = (size - h) // 2, (size - w) // 2
            crop = image.numpy().transpose(1, 2, 0)[top : top + h, left : left + w]
            assert read_frame_number(crop[:, :, ::-1].copy()) == read_frame_number(reference[:, :, ::-1].copy())
            assert read_frame_number(crop[:, :, ::-1].copy()) is not None
            assert np.abs(crop.astype(int) - reference).mean() < 2.0
            assert (image.numpy()[:, :top] == 0).all() and (image.numpy()[:, top + h :] == 0).all()
    assert sorted(seen) == sorted(ref)


def test_images_are_scaled_to_fit_with_aspect_kept(shards):
    """With a smaller image_size each image is the JPEG scaled the same way (PIL decode as the reference)."""
    ref = stage2_reference(shards["tokens"])
    batches = one_epoch(shards["tokens"], PackedSequenceEncoder(image_size=64), batch_size=1)
    for batch in batches:
        jpegs = ref[batch.__key__[0]][3]
        assert batch.images.shape == (len(jpegs), 3, 64, 64)
        for image, jpeg in zip(batch.images, jpegs):
            expected = resize_with_padding(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")), 64)
            assert np.abs(image.numpy().astype(int) - expected).mean() < 2.0


def test_frame_batches(shards):
    stage1 = read_samples(shards["kf"])
    batches = one_epoch(shards["kf"], VideoFramesEncoder(image_size=96), batch_size=3)
    keys = []
    for batch in batches:
        rows, most = batch.frame_mask.shape
        assert batch.frames.shape == (rows, most, 3, 96, 96)
        for row, key in enumerate(batch.__key__):
            frames = json.loads(stage1[key]["json"])["frames"]
            n = len(frames)
            assert batch.frame_mask[row].tolist() == [True] * n + [False] * (most - n)
            assert batch.timestamps[row, :n].tolist() == [f["t"] for f in frames]
            assert batch.frame_types[row] == [f["type"] for f in frames]
            assert (batch.frames[row, n:] == 0).all()
            keys.append(key)
    assert sorted(keys) == sorted(stage1)


def encoded_by_key(batches) -> dict:
    return {b.__key__[0]: (b.input_ids, b.labels, b.position_ids, b.cu_seqlens, b.images) for b in batches}


def test_worker_counts_give_the_same_batches(shards):
    """energon hands each worker its own shard slices, so the order differs; every batch's content does not."""
    enc = PackedSequenceEncoder(image_size=96)
    alone = encoded_by_key(one_epoch(shards["tokens"], enc, batch_size=1, workers=0))
    two = encoded_by_key(one_epoch(shards["tokens"], enc, batch_size=1, workers=2))
    assert sorted(alone) == sorted(two)
    for key, tensors in alone.items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, two[key])), key


def test_a_checkpointed_loader_resumes_on_the_next_sample(shards):
    enc = PackedSequenceEncoder(image_size=64)

    def loader():
        ds = energon.get_train_dataset(shards["tokens"], batch_size=1, shuffle_buffer_size=4,
                                       max_samples_per_sequence=2, worker_config=worker_config(0),
                                       task_encoder=enc)  # fmt: skip
        return energon.get_savable_loader(ds)

    first = loader()
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.save_state_rank()
    expected = [next(it) for _ in range(4)]

    resumed = loader()
    resumed.restore_state_rank(state)
    again = iter(resumed)
    got = [next(again) for _ in range(4)]
    assert [b.__key__ for b in got] == [b.__key__ for b in expected]
    for a, b in zip(got, expected):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.images, b.images)


def test_dataset_yaml_names_the_sample_types(shards):
    import yaml

    for kind, sample_type in (("tokens", "PackedSequenceSample"), ("un", "VideoFramesSample"), ("kf", "VideoFramesSample")):
        with open(os.path.join(shards[kind], ".nv-meta", "dataset.yaml")) as f:
            doc = yaml.safe_load(f)
        assert doc["sample_type"] == {"__module__": "vdp.energon", "__class__": sample_type}
        start, patch, end = image_ids(shards["tokenizer"])
        assert doc["subflavors"]["vdp_image_tokens"] == {"start": start, "patch": patch, "end": end}


def test_labels_stop_at_every_packed_boundary_even_before_a_response_token():
    """Stage 2 never starts a packed sample with a response token, so the shards above cannot show
    this rule; a hand-made sequence can: position 2 ends the first sample and must not predict 4."""
    from vdp.energon import labels_for, position_ids_for

    ids = torch.tensor([11, 12, 13, 14, 15, 16])
    mask = torch.tensor([0, 1, 1, 1, 0, 1], dtype=torch.uint8)
    assert labels_for(ids, mask, [3, 3]).tolist() == [12, 13, IGNORE_INDEX, IGNORE_INDEX, 16, IGNORE_INDEX]
    assert position_ids_for([3, 3]).tolist() == [0, 1, 2, 0, 1, 2]


def test_ids_stored_as_npy_load_the_same(shards):
    as_json = {s.__key__: s for s in one_epoch(shards["tokens"])}
    as_npy = {s.__key__: s for s in one_epoch(shards["tokens_npy"])}
    assert sorted(as_json) == sorted(as_npy)
    for key, s in as_npy.items():
        assert torch.equal(s.input_ids, as_json[key].input_ids) and torch.equal(s.loss_mask, as_json[key].loss_mask)
        assert s.input_ids.dtype == torch.int64


def test_plain_webdataset_and_wids_give_the_same_batches(shards):
    """The README's recipes for teams without Energon: the same tensors as the Energon encoder."""
    import webdataset as wds
    import wids

    from vdp.train.batches import collate_sequences, encode_sequence
    from vdp.train.members import packed_sequence_fields

    ids3 = image_ids(shards["tokenizer"])
    by_energon = {b.__key__[0]: b for b in one_epoch(shards["tokens"], PackedSequenceEncoder(image_size=96), batch_size=1)}
    urls = sorted(glob.glob(os.path.join(shards["tokens"], "*", "*.tar")))
    pipeline = (
        wds.WebDataset(urls, shardshuffle=False)
        .map(lambda raw: (raw["__key__"], encode_sequence(packed_sequence_fields(raw), 96, ids3)))
        .batched(1, collation_fn=lambda rows: (rows[0][0], collate_sequences([r[1] for r in rows])))
    )
    plain = dict(pipeline)
    index = wids.ShardListDataset(os.path.join(os.path.dirname(shards["tokens"]), "index", "tokens", "tokens.wids.json"),
                                  transformations=[])  # fmt: skip
    from_wids = {index[i]["__key__"]: collate_sequences([encode_sequence(packed_sequence_fields(index[i]), 96, ids3)])
                 for i in range(len(index))}  # fmt: skip
    assert sorted(plain) == sorted(by_energon) == sorted(from_wids)
    for key, batch in by_energon.items():
        for other in (plain[key], from_wids[key]):
            for name in ("input_ids", "labels", "loss_mask", "position_ids", "cu_seqlens", "images", "image_positions"):
                assert torch.equal(other[name], getattr(batch, name)), (key, name)
