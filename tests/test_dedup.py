"""Near-duplicate removal (index/dedup.py): planted copies of real videos are found, nothing else
is joined, and the indexes keep one sample per group.

The videos are made here: each original is four one-second shots, each shot a seeded random
texture panning slowly with a disc crossing it, so different seeds are clearly different
content (the painted frames of tests/synth.py look alike to a perceptual hash). A planted copy
is the original decoded, trimmed by one second, scaled to half size and encoded again with
another codec (HEVC or VP9 where the original is H.264), as a re-upload would be.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import av
import cv2
import numpy as np
import pytest
import yaml

from tests.pack_helpers import write_manifest
from vdp.cli import dedup as dedup_main
from vdp.cli import index as index_main
from vdp.cli import pack as pack_main
from vdp.index.dedup import (
    FULL_CROSS,
    MatchRule,
    Signatures,
    candidate_pairs,
    components,
    group_videos,
    keep_ranks,
    read_dropped,
)
from vdp.index.scan import ScanOptions, scan_tar
from vdp.index.validate import CheckOptions

pytest.importorskip("faiss")

FPS = 25
ORIGINALS = 24  # the first COPIED of them get a planted copy
COPIED = 20
COPY_CODECS = ("libx265", "libvpx-vp9")


# --- test videos ------------------------------------------------------------------------------


def original_frames(seed: int, width: int = 192, height: int = 128, seconds: int = 4) -> list[np.ndarray]:
    """RGB frames: `seconds` shots of one second, each its own texture panning, a disc crossing it."""
    rng = np.random.default_rng(seed)
    textures = [cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width * 2, height * 2),
                           interpolation=cv2.INTER_CUBIC) for _ in range(seconds)]
    pan = rng.uniform(-12, 12, (seconds, 2))  # pixels per second
    disc, drift = rng.uniform(0.2, 0.8, (seconds, 2)), rng.uniform(-0.1, 0.1, (seconds, 2))
    frames = []
    for i in range(seconds * FPS):
        shot, t = i // FPS, i / FPS
        x0, y0 = int(width / 2 + pan[shot, 0] * t), int(height / 2 + pan[shot, 1] * t)
        img = textures[shot][y0 : y0 + height, x0 : x0 + width].copy()
        cx, cy = (disc[shot] + drift[shot] * t) * (width, height)
        cv2.circle(img, (int(cx), int(cy)), height // 6, (255, 255, 255), -1)
        frames.append(img)
    return frames


def encode(path: str, frames: list[np.ndarray], codec: str) -> str:
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def planted_copy(src: str, dst: str, codec: str, trim: float = 1.0) -> str:
    """The video decoded, its first `trim` seconds cut, scaled to half size, encoded with `codec`."""
    with av.open(src) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][int(trim * FPS) :]
    h, w = frames[0].shape[:2]
    half = [cv2.resize(f, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for f in frames]
    return encode(dst, half, codec)


def make_corpus(folder: str) -> list[dict]:
    """Manifest rows: the originals, then their copies (so copies land in other tars)."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for s in range(ORIGINALS):
        path = encode(os.path.join(folder, f"orig{s:02d}.mp4"), original_frames(1000 + s), "libx264")
        rows.append({"video_path": path, "caption": f"original {s}", "video_id": f"orig{s:02d}"})
    for s in range(COPIED):
        codec = COPY_CODECS[s % 2]
        ext = "mkv" if codec == "libx265" else "webm"
        path = planted_copy(rows[s]["video_path"], os.path.join(folder, f"copy{s:02d}.{ext}"), codec)
        rows.append({"video_path": path, "caption": f"copy of {s}", "video_id": f"copy{s:02d}"})
    return rows


def pack(manifest: str, out: str, *extra: str) -> str:
    code = pack_main.main(["--dataset", "jsonl", "--manifest", manifest, "--type", "un", "--num_frames", "8",
                           "--save_path", out, "--samples_per_tar", "8", "--workers", "2", "--no_progress", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    rows = make_corpus(str(root / "videos"))
    manifest = write_manifest(str(root / "clips.jsonl"), rows)
    return {"root": root, "manifest": manifest, "shards": pack(manifest, str(root / "shards"))}


def run_dedup(dataset: str, out: str, *extra: str, name: str = "ds") -> int:
    return dedup_main.main(["--dataset_path", dataset, "--dataset_name", name, "--output", out,
                            "--workers", "2", "--no_progress", *extra])


def read_groups(out: str, name: str = "ds") -> list[list[dict]]:
    with open(os.path.join(out, f"{name}.duplicates.jsonl")) as f:
        return [json.loads(line)["samples"] for line in f]


def video_ids(shards: str) -> dict[str, str]:
    """Sample key -> the manifest's video_id, from the jsons in the tars."""
    from tests.pack_helpers import read_samples

    return {key: json.loads(s["json"])["video_id"] for key, s in read_samples(shards).items()}


def content(video_id: str) -> int:
    return int(video_id[4:])


# --- end to end ---------------------------------------------------------------------------------


def test_planted_copies_are_grouped_with_their_original_and_nothing_else(corpus, tmp_path, capsys):
    assert run_dedup(corpus["shards"], str(tmp_path)) == 0
    summary = capsys.readouterr().out
    ids = video_ids(corpus["shards"])
    groups = [[ids[s["key"]] for s in g] for g in read_groups(str(tmp_path))]
    mixed = [g for g in groups if len({content(v) for v in g}) > 1]
    found = {g[0] for g in groups if sorted(g) == [f"copy{content(g[0]):02d}", g[0]]}
    recall = sum(f"orig{s:02d}" in found for s in range(COPIED)) / COPIED
    with capsys.disabled():
        print(f"\ndedup: recall {recall:.2f} of {COPIED} planted copies, {len(groups)} groups, {len(mixed)} mixed")
    assert not mixed, f"groups join different videos: {mixed}"
    assert recall >= 0.95
    assert all(g[0].startswith("orig") for g in groups), "the original (more pixels, longer) is kept"
    assert "hashed=44, from_jpeg=0" in summary and f"groups={len(groups)}, duplicates={len(groups)}" in summary
    assert "source_records=44, source_errors=0, source_filtered=0" in summary, "stage 1's counts, from its stats"


def test_each_duplicate_line_names_the_kept_sample_first_with_distances(corpus, tmp_path):
    assert run_dedup(corpus["shards"], str(tmp_path)) == 0
    for kept, *others in read_groups(str(tmp_path)):
        assert set(kept) == {"tar", "key", "frames", "pixels", "duration"}
        assert kept["pixels"] == 192 * 128 and kept["duration"] == 4.0
        for other in others:
            assert other["pixels"] == 96 * 64 and other["duration"] == 3.0
            assert 0 <= other["distance"] <= 8 and 0.5 <= other["matched"] <= 1.0
            assert other["tar"] != kept["tar"] and os.path.isfile(other["tar"])


def test_indexes_keep_one_sample_per_group(corpus, tmp_path, capsys):
    dataset = str(tmp_path / "set")
    shutil.copytree(corpus["shards"], dataset)
    out = str(tmp_path / "idx")
    assert run_dedup(dataset, out, "--energon") == 0
    dropped = read_dropped(os.path.join(out, "ds.duplicates.jsonl"))
    assert len(dropped) == len(read_groups(out))
    per_tar: dict[str, int] = {}
    for tar, _ in dropped:
        per_tar[tar] = per_tar.get(tar, 0) + 1
    with open(os.path.join(out, "ds.pkl"), "rb") as f:
        pkl = {e["url"]: e["nsamples"] for e in pickle.load(f)}
    tars = sorted(os.path.join(dataset, n) for n in os.listdir(dataset) if n.endswith(".tar"))
    sizes = {t: (8 if not t.endswith("-5.tar") else 4) for t in tars}  # 44 samples, 8 a tar
    assert pkl == {t: sizes[t] - per_tar.get(t, 0) for t in tars if sizes[t] > per_tar.get(t, 0)}
    with open(os.path.join(out, "ds.wids.json")) as f:
        wids = [e["url"] for e in json.load(f)["shardlist"]]
    assert wids == [t for t in tars if t not in per_tar]  # wids cannot skip a sample
    with open(os.path.join(dataset, ".nv-meta", "split.yaml")) as f:
        split = yaml.safe_load(f)
    assert sorted(split["exclude"]) == sorted(f"{os.path.basename(t)}/{k}" for t, k in dropped)
    assert "tars with bad or duplicate samples are left out" in capsys.readouterr().err

    # index/main.py --energon afterwards rewrites split.yaml without the duplicates: never silently
    assert index_main.main(["--dataset_path", dataset, "--dataset_name", "ds", "--output", str(tmp_path / "idx2"),
                            "--workers", "1", "--no_progress", "--energon"]) == 0  # fmt: skip
    assert f"note: {len(dropped)} samples the previous split.yaml excluded" in capsys.readouterr().err


def test_same_outputs_whatever_the_worker_count(corpus, tmp_path):
    outputs = []
    for workers in ("1", "2"):
        out = str(tmp_path / workers)
        assert dedup_main.main(["--dataset_path", corpus["shards"], "--dataset_name", "ds", "--output", out,
                                "--workers", workers, "--no_progress"]) == 0
        outputs.append({n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))
                        if not n.startswith("summary-")})  # the summary has the flags and seconds
    assert outputs[0] == outputs[1]


def test_shards_without_signals_are_hashed_from_their_jpegs(corpus, tmp_path, capsys):
    """Shards packed before signals existed (here --no_signals) give the same groups."""
    bare = pack(corpus["manifest"], str(tmp_path / "bare"), "--no_signals")
    assert run_dedup(bare, str(tmp_path / "bare_idx")) == 0
    assert "hashed=44, from_jpeg=44" in capsys.readouterr().out
    assert run_dedup(corpus["shards"], str(tmp_path / "idx")) == 0
    keys = lambda out: [[s["key"] for s in g] for g in read_groups(out)]  # noqa: E731
    assert keys(str(tmp_path / "bare_idx")) == keys(str(tmp_path / "idx"))


def test_the_jpeg_hash_is_close_to_stage_1s(corpus):
    """The fallback hashes the decoded JPEG, stage 1 the frame before encoding: a few bits at most."""
    from tests.pack_helpers import read_samples
    from vdp.index.dedup import jpeg_hash

    far = []
    for key, sample in read_samples(corpus["shards"]).items():
        doc = json.loads(sample["json"])
        for name, stored in zip(doc["image"], doc["signals"]["phash"]):
            far.append((jpeg_hash(sample[f"{name}.jpg"], key) ^ int(stored, 16)).bit_count())
    assert max(far) <= 4 and np.mean(far) < 1


def rewrite_sample(tar: str, key: str, edit) -> None:
    """Rewrite one sample's json in a tar (the other members and samples unchanged)."""
    import tarfile

    from vdp.io.tario import write_tar_atomically

    with tarfile.open(tar) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    out = []
    for name, data in members:
        if name == f"{key}.json":
            doc = json.loads(data)
            edit(doc)
            data = json.dumps(doc).encode()
        out.append((name, data))
    write_tar_atomically(tar, out)


def test_bad_signals_are_an_error_line_and_the_sample_is_left_out(corpus, tmp_path):
    dataset = str(tmp_path / "set")
    shutil.copytree(corpus["shards"], dataset)
    rewrite_sample(os.path.join(dataset, "shard-0-0-8-0.tar"), "000000000",
                   lambda doc: doc["signals"].update(phash=["not a hash"] * 8))
    out = str(tmp_path / "idx")
    assert run_dedup(dataset, out) == 1
    with open(os.path.join(out, "ds.errors.jsonl")) as f:
        errors = [json.loads(line) for line in f]
    assert [(e["key"], e["reason"].split(":")[0]) for e in errors] == [("000000000", "bad signals")]
    groups = read_groups(out)
    assert len(groups) == COPIED - 1 and all(s["key"] != "000000000" for g in groups for s in g)


def test_a_broken_tar_gives_no_sample_to_any_group(corpus, tmp_path):
    """A tar that does not read to its end is in no index, so none of its samples may stand for a group."""
    dataset = str(tmp_path / "set")
    shutil.copytree(corpus["shards"], dataset)
    broken = os.path.join(dataset, "shard-0-24-32-3.tar")  # copies of originals 0..7
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) // 2 + 700)  # inside a member
    out = str(tmp_path / "idx")
    assert run_dedup(dataset, out) == 1
    ids = video_ids(corpus["shards"])
    groups = read_groups(out)
    assert sorted(ids[g[1]["key"]] for g in groups) == [f"copy{s:02d}" for s in range(8, COPIED)]
    assert all(s["tar"] != broken for g in groups for s in g)


def test_bad_usage_is_refused_before_any_work(corpus, tmp_path, capsys):
    assert run_dedup(corpus["shards"], str(tmp_path), "--radius", "40") == 2
    assert run_dedup(corpus["shards"], str(tmp_path), "--min_fraction", "0") == 2
    assert "--radius must be within" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_dataset_and_output_on_object_storage(corpus, s3_env, tmp_path):
    from tests.s3_fixtures import make_bucket
    from tests.test_index_s3 import download_tree, upload_tree

    make_bucket(s3_env, "dedup")
    upload_tree(s3_env, corpus["shards"], "s3://dedup/set")
    assert run_dedup("s3://dedup/set", "s3://dedup/idx", "--s3_endpoint", s3_env) == 0
    remote = [json.loads(line)["samples"] for line in download_tree(s3_env, "s3://dedup/idx")["ds.duplicates.jsonl"]
              .decode().splitlines()]
    assert run_dedup(corpus["shards"], str(tmp_path)) == 0
    local = read_groups(str(tmp_path))
    for g in local:
        for s in g:
            s["tar"] = "s3://dedup/set/" + os.path.basename(s["tar"])
    assert remote == local


# --- the grouping itself, on made-up signatures --------------------------------------------------


def random_hashes(rng, n: int) -> np.ndarray:
    return rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * 2 + rng.integers(0, 2, n).astype(np.uint64)


def flip(h: np.ndarray, bits: list[int]) -> np.ndarray:
    mask = np.uint64(sum(1 << b for b in bits))
    return h ^ mask


def signatures(videos: list[np.ndarray]) -> Signatures:
    frames = np.array([len(v) for v in videos])
    return Signatures.build(np.concatenate(videos).astype(np.uint64), frames,
                            keep_ranks(np.zeros(len(videos), np.int64), np.zeros(len(videos)), frames))


def groups_of(sig: Signatures, rule: MatchRule | None = None) -> list[list[int]]:
    g = group_videos(sig, rule or MatchRule())
    return [g.members[g.starts[i] : g.starts[i + 1]].tolist() for i in range(g.groups)]


def test_a_trimmed_copy_matches_its_frames_as_a_set():
    rng = np.random.default_rng(0)
    a = random_hashes(rng, 10)
    trimmed = flip(a[[9, 3, 4, 4, 5, 6, 8, 7]], [5, 40])  # frames taken at other times, in another order
    few = np.concatenate([a[:2], random_hashes(rng, 8)])  # shares 2 of 10 frames: under min_fraction
    assert groups_of(signatures([a, random_hashes(rng, 10), trimmed, few])) == [[0, 2]]
    assert groups_of(signatures([a, few]), MatchRule(min_fraction=0.2)) == [[0, 1]]


def test_flat_frames_join_nothing():
    rng = np.random.default_rng(1)
    flat = np.zeros(6, np.uint64)  # black or single-colour frames hash to 0
    videos = [np.concatenate([flat, random_hashes(rng, 2)]) for _ in range(3)]
    assert groups_of(signatures(videos)) == []


def test_a_hash_in_many_videos_links_them_as_a_star_not_all_pairs():
    rng = np.random.default_rng(2)
    logo = random_hashes(rng, 1)
    videos = [np.concatenate([logo, random_hashes(rng, 4)]) for _ in range(60)]
    videos[40] = np.concatenate([logo, flip(videos[10][1:], [3])])  # 40 is a copy of 10
    sig = signatures(videos)
    assert 60 * 60 > FULL_CROSS and len(candidate_pairs(sig, MatchRule())) == 59 + 1
    assert groups_of(sig) == [[10, 40]]


def test_exact_finds_the_pairs_multi_index_hashing_may_miss():
    rng = np.random.default_rng(3)
    a = random_hashes(rng, 4)
    spread = flip(a, [0, 8, 16, 24, 32, 40, 48, 56])  # 8 bits apart, a flip in every 21-bit substring
    sig = signatures([a, spread])
    assert groups_of(sig, MatchRule(radius=8)) == []
    assert groups_of(sig, MatchRule(radius=8, exact=True)) == [[0, 1]]
    assert groups_of(sig, MatchRule(radius=6, exact=True)) == []


def test_the_kept_video_has_most_pixels_then_duration_then_frames_then_comes_first():
    pixels, duration, frames = np.array([10, 20, 20, 20, 20]), np.array([1.0, 1.0, 2.0, 2.0, 2.0]), np.array([4, 4, 4, 5, 5])
    assert np.argsort(keep_ranks(pixels, duration, frames)).tolist() == [3, 4, 2, 1, 0]


def test_components_follow_chains():
    pairs = np.array([[3, 4], [0, 4], [5, 6], [1, 3]])
    assert components(7, pairs).tolist() == [0, 0, 2, 0, 0, 5, 5]


def test_scan_with_collector_keeps_index_mains_counts(corpus):
    """The collector changes nothing index/main.py counts."""
    from vdp.index.dedup import FrameHashes

    tar = sorted(os.path.join(corpus["shards"], n) for n in os.listdir(corpus["shards"]) if n.endswith(".tar"))[0]
    plain = scan_tar(tar, ScanOptions(CheckOptions(), corpus["shards"]))
    collected = scan_tar(tar, ScanOptions(CheckOptions(), corpus["shards"], collector=FrameHashes))
    assert (plain.samples, plain.valid, plain.offsets) == (collected.samples, collected.valid, collected.offsets)
    assert plain.collected is None and collected.collected.keys == [f"{i:09d}" for i in range(8)]
    assert collected.collected.hashes.dtype == np.uint64 and len(collected.collected.hashes) == 64
