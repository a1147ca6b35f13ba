"""`--type fps`: a frame per 1/F seconds by presentation time, checked against a slow reference
on painted frames (VFR with and without a gap, B-frames, rotation, a clip span)."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import pytest

from tests.pack_helpers import VIDEO_SPECS, frame_numbers, read_samples, write_manifest
from tests.stage1_fixtures import train_llama_like_tokenizer
from tests.synth import VideoSpec, make_video, paint_frame
from vdp.cli import pack
from vdp.cli import tokenize as tokenize_command
from vdp.index.validate import CheckOptions, check_sample
from vdp.io.shards import Sample
from vdp.media.video import FrameInfo, decode_chosen
from vdp.pack.samplers import SAMPLERS, SamplerOptions, choose_fps

# Frames at 0..1.0 s and 3.0..4.0 s every 40 ms: nothing between 1.0 and 3.0.
GAP_TIMES_MS = [*range(0, 1001, 40), *range(3000, 4001, 40)]
SPECS = {
    "bframes.mp4": VIDEO_SPECS["h264_bframes.mp4"],
    "hevc.mp4": VIDEO_SPECS["hevc.mp4"],
    "rot90.mp4": VIDEO_SPECS["rot90.mp4"],
    "rot270.mkv": VIDEO_SPECS["rot270.mkv"],
    "vfr_audio.mp4": VIDEO_SPECS["vfr_audio.mp4"],
    "short.mp4": VideoSpec(num_frames=50, gop=25),  # 2 s
    "long.mp4": VideoSpec(num_frames=250, gop=25),  # 10 s
}


def gap_video(path: str, times_ms: list[int]) -> str:
    """H.264 with B-frames whose frame n (painted n) is shown at times_ms[n]."""
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"g": "12", "bf": "2"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for n, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(paint_frame(n, 160, 96), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fps_videos")
    out = {name: make_video(str(folder / name), spec) for name, spec in SPECS.items()}
    out["gap.mp4"] = gap_video(str(folder / "gap.mp4"), GAP_TIMES_MS)
    return out


@pytest.fixture(scope="module")
def manifest(videos, tmp_path_factory):
    rows = [{"video_path": path, "value": f"caption of {name}", "video_id": name} for name, path in sorted(videos.items())]
    return write_manifest(str(tmp_path_factory.mktemp("fps_manifest") / "m.jsonl"), rows)


def run_pack(*args: str) -> int:
    return pack.main([*args, "--workers", "1", "--no_progress"])


@pytest.fixture(scope="module")
def packed(manifest, tmp_path_factory):
    """fps 2 with no limit, and with at most 5 frames: {max_frames: {video_id: sample}}."""
    out = {}
    for limit in ("0", "5"):
        folder = str(tmp_path_factory.mktemp(f"fps_max{limit}"))
        assert run_pack("--manifest", manifest, "--type", "fps", "--fps", "2", "--max_frames", limit, "--save_path", folder) == 0
        out[int(limit)] = {json.loads(s["json"])["video_id"]: s for s in read_samples(folder).values()}
    return out


def presentation_times(path: str) -> list[Fraction]:
    """Slow reference: decode everything; each frame's pts·time_base from the stream's start, in
    presentation order, to the microsecond (the resolution frame times are kept at)."""
    with av.open(path) as c:
        stream = c.streams.video[0]
        origin, time_base = stream.start_time or 0, stream.time_base  # not after close: freed memory
        pts = sorted(f.pts for f in c.decode(stream))
    return [round(Fraction(p - origin) * time_base, 6) for p in pts]


def reference_fps(times: list[Fraction], fps, max_frames: int = 0) -> list[int]:
    """The rule written out longhand, in exact arithmetic: target by target, the frame nearest it
    within half a sampling interval (the earlier on a tie), none when there is no such frame."""
    step = 1 / Fraction(fps)
    picked, k = [], 0
    while times[0] + k * step <= times[-1]:
        target = times[0] + k * step
        window = [i for i, t in enumerate(times) if target - step / 2 <= t < target + step / 2]
        if window:
            picked.append(min(window, key=lambda i: (abs(times[i] - target), i)))
        k += 1
    if 0 < max_frames < len(picked):
        last = len(picked) - 1
        picked = [picked[0]] if max_frames == 1 else [picked[round(i * last / (max_frames - 1))] for i in range(max_frames)]
    return picked


def check_sample_frames(sample: dict, times: list[Fraction], expected: list[int], first_number: int = 0) -> None:
    meta = json.loads(sample["json"])
    name = meta["video_id"]
    indices = [f["index"] for f in meta["frames"]]
    assert indices == expected, name
    assert len(set(indices)) == len(indices), f"{name}: a frame taken twice"
    assert [n - first_number for n in frame_numbers(sample)] == indices, f"{name}: JPEGs are not the frames the json names"
    # stage 1 writes every sampler's `t` to the millisecond: the reference time, so rounded
    assert [f["t"] for f in meta["frames"]] == [round(float(times[first_number + i]), 3) for i in indices], name
    assert meta["conversations"][0] == {"from": "human", "value": "<image>" * len(indices)}
    assert meta["image"] == [str(i) for i in range(len(indices))]


@pytest.mark.parametrize("limit", [0, 5])
def test_fps_takes_the_frames_the_reference_takes(packed, videos, limit):
    samples = packed[limit]
    assert sorted(samples) == sorted(videos)
    for name, path in videos.items():
        times = presentation_times(path)
        expected = reference_fps(times, 2, limit)
        assert json.loads(samples[name]["json"])["num_frames"] == len(times), name
        check_sample_frames(samples[name], times, expected)
        if limit:
            assert len(expected) == min(5, len(reference_fps(times, 2)))


def test_a_gap_in_the_timestamps_is_skipped_not_filled(packed):
    meta = json.loads(packed[0]["gap.mp4"]["json"])
    assert [f["t"] for f in meta["frames"]] == [0.0, 0.48, 1.0, 3.0, 3.48, 4.0]  # 0.48 and 0.52 tie for 0.5: the earlier
    assert [f["index"] for f in meta["frames"]] == [0, 12, 25, 26, 38, 51]


def test_count_follows_duration_where_un_does_not(packed, manifest, tmp_path):
    short, long = (len(json.loads(packed[0][n]["json"])["frames"]) for n in ("short.mp4", "long.mp4"))
    assert (short, long) == (4, 20)  # 2 s and 10 s at 2 frames/s
    assert len(json.loads(packed[5]["long.mp4"]["json"])["frames"]) == 5
    out = str(tmp_path / "un")
    assert run_pack("--manifest", manifest, "--type", "un", "--num_frames", "8", "--save_path", out) == 0
    counts = {json.loads(s["json"])["video_id"]: len(json.loads(s["json"])["frames"]) for s in read_samples(out).values()}
    assert counts["short.mp4"] == counts["long.mp4"] == 8


def test_fps_samples_inside_a_record_span(videos, tmp_path):
    rows = [{"video_path": videos["long.mp4"], "caption": "c", "start": 1.3, "end": 4.0}]
    m = write_manifest(str(tmp_path / "m.jsonl"), rows)
    assert run_pack("--manifest", m, "--type", "fps", "--fps", "2", "--save_path", str(tmp_path / "o")) == 0
    sample = next(iter(read_samples(str(tmp_path / "o")).values()))
    meta = json.loads(sample["json"])
    times = presentation_times(videos["long.mp4"])
    inside = [i for i, t in enumerate(times) if Fraction(13, 10) <= t < 4]
    assert meta["num_frames"] == len(inside) and inside[0] == 33  # 1.32 s
    check_sample_frames(sample, times, reference_fps([times[i] for i in inside], 2), first_number=inside[0])
    assert [f["t"] for f in meta["frames"]] == [1.32, 1.8, 2.32, 2.8, 3.32, 3.8]  # 1.82, 2.82, 3.82 fall between two frames: the earlier


@pytest.mark.parametrize("name", sorted([*SPECS, "gap.mp4"]))
def test_decoding_only_what_fps_needs_equals_the_full_decode(videos, name, monkeypatch):
    """fps needs no frame types: the decoder skips the intra-only pass, and the dependency-only
    decode gives what decoding every frame gives; frame times are the reference's exactly."""
    import vdp.media.video

    opts = SamplerOptions(fps=3.0, max_frames=0)
    full = decode_chosen(videos[name], lambda f: choose_fps(f, opts), threads=2)

    def no_intra_pass(*args):
        raise AssertionError("fps asked for frame types")

    monkeypatch.setattr(vdp.media.video, "_intra_pass", no_intra_pass)
    fast = decode_chosen(videos[name], lambda f: choose_fps(f, opts), needs_types=SAMPLERS["fps"].needs_types)
    assert fast.chosen == full.chosen and fast.meta == full.meta
    assert all((fast.images[i] == full.images[i]).all() for i in full.chosen)
    times = presentation_times(videos[name])
    assert [f.time for f in fast.frames] == [float(t) for t in times]
    assert fast.chosen == reference_fps(times, 3)


def frames_at(*times: float) -> list[FrameInfo]:
    return [FrameInfo(i, t, "P") for i, t in enumerate(times)]


def test_rule_edges():
    one = SamplerOptions(fps=1.0, max_frames=0)
    assert choose_fps(frames_at(7.0), one) == [0]
    assert choose_fps(frames_at(0, 0.25, 0.5, 0.75, 1.0), one) == [0, 4]  # a target at the last frame's time counts
    assert choose_fps(frames_at(0, 0.25, 0.5, 0.75, 0.99), one) == [0]  # none past it
    assert choose_fps(frames_at(10.0, 10.9, 11.1), one) == [0, 1]  # from the first frame's time; a tie takes the earlier
    assert choose_fps(frames_at(*[i / 10 for i in range(10)]), SamplerOptions(fps=30.0)) == list(range(10))  # above the rate: each once
    assert choose_fps(frames_at(*range(100)), SamplerOptions(fps=1.0, max_frames=1)) == [0]
    assert choose_fps(frames_at(*range(100)), SamplerOptions(fps=1.0, max_frames=3)) == [0, 50, 99]
    assert choose_fps(frames_at(*range(100)), SamplerOptions()) == reference_fps([Fraction(i) for i in range(100)], 1, 64)


@pytest.mark.parametrize(
    "flags, message",
    [(["--fps", "0"], "--fps must be"), (["--fps", "-1"], "--fps must be"), (["--fps", "nan"], "--fps must be"),
     (["--fps", "inf"], "--fps must be"), (["--max_frames", "-1"], "--max_frames must be")],
)
def test_bad_fps_flags_are_usage_errors(manifest, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        pack.main(["--manifest", manifest, "--type", "fps", "--save_path", str(tmp_path / "o"), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_stages_2_and_3_take_fps_shards(packed, tmp_path, manifest):
    for name, s in packed[5].items():
        sample = Sample(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
        facts = check_sample(sample, CheckOptions(deep=True))
        assert (facts.kind, facts.images) == ("frames", len(json.loads(s["json"])["frames"])), name
    shards = str(tmp_path / "shards")
    assert run_pack("--manifest", manifest, "--type", "fps", "--fps", "2", "--max_frames", "3", "--save_path", shards) == 0
    model = train_llama_like_tokenizer(str(tmp_path / "llama"))
    tokens = str(tmp_path / "tokens")
    rc = tokenize_command.main(["--dataset_path", shards, "--save_path", tokens, "--tokenizer", model, "--sample_type", "fps",
                                "--shard_size", "1", "--workers", "1", "--patches", "4", "--max_len", "400", "--no_progress"])
    assert rc == 0 and not os.path.getsize(os.path.join(tokens, "errors.jsonl"))
