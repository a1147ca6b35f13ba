"""Clip spans that cannot be used are one error line each, never a broken run.

One manifest mixes every kind of bad span with good rows around them, and goes through every
`--type`: each bad record is exactly one line of the errors file, each good one is packed with
the right frames (read back from the numbers painted in them), and nothing crashes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import av
import pytest

import vdp.pack.stage
from tests.pack_helpers import frame_numbers, read_samples, video_frames, write_manifest
from tests.synth import VideoSpec, make_video
from vdp.cli import pack
from vdp.errors import RecordError
from vdp.media.spans import clamp_span, requested_span
from vdp.media.video import FrameInfo
from vdp.pack.samplers import SamplerOptions, choose_keyframes, choose_uniform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS, FRAMES = 25, 50  # a 2.00 s video
SPEC = VideoSpec(num_frames=FRAMES, fps=FPS, gop=10, bframes=2)

# (start, end) per row, None for a whole-video row; "bad" rows must end in the errors file
GOOD = "good"
ROWS = [
    (GOOD, None),
    ("past the end", (100, 105)),
    (GOOD, (0.5, 1.5)),
    ("at the end", (2.0, 3.0)),
    (GOOD, (1.0, 10.0)),  # partly past the end: cut to 1.0..2.0
    ("inverted", (1.5, 0.5)),
    ("empty", (1.0, 1.0)),
    ("negative", (-1, 1)),
    ("nan", ("NaN", 1)),
    ("infinite end", (0.5, "Infinity")),
    ("start only, past the end", (50, None)),
    ("shorter than a frame", (1.99, 2.5)),  # inside the video, but the last frame starts at 1.96
    (GOOD, (1.2, None)),
    (GOOD, (None, 0.8)),
    ("minus infinity", ("-Infinity", 1)),
    (GOOD, None),
]
PAST_END = (1, 3, 10)  # the rows whose span starts at or after the video's end


def _row(path: str, span) -> str:
    row = {"video_path": path, "value": "c"}
    if span is not None:
        start, end = span
        if start is not None:
            row["start"] = start
        if end is not None:
            row["end"] = end
    # json.dumps writes float("nan") as NaN, which json.loads (the loader) reads back
    text = json.dumps(row)
    for word in ("NaN", "Infinity", "-Infinity"):
        text = text.replace(f'"{word}"', word)
    return text


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spans")
    video = make_video(str(folder / "v.mp4"), SPEC)
    return write_manifest(str(folder / "m.jsonl"), [_row(video, span) for _, span in ROWS]), video


def _frames_of(span) -> list[int]:
    """The frame numbers a span holds on SPEC's video (start <= n/fps < end)."""
    if span is None:
        return list(range(FRAMES))
    start, end = span[0] or 0.0, math.inf if span[1] is None else span[1]
    return [n for n in range(FRAMES) if start - 1e-9 <= n / FPS < end]


def _pict_types(path: str) -> list[str]:
    with av.open(path) as c:
        frames = sorted((f.pts, int(f.pict_type)) for f in c.decode(video=0))
    return ["I" if t == 1 else "P" for _, t in frames]


def _key_frames(path: str) -> list[int]:
    with av.open(path) as c:
        packets = sorted((p for p in c.demux(video=0) if p.size), key=lambda p: p.pts)
        return [n for n, p in enumerate(packets) if p.is_keyframe]


KINDS = {
    "un": ["--type", "un", "--num_frames", "4"],
    "kf": ["--type", "kf", "--kf_iframes", "3", "--kf_total", "6"],
    "un-decord": ["--type", "un", "--num_frames", "4", "--backend", "decord"],
    "video-only": ["--type", "video-only"],
    "video-only-exact": ["--type", "video-only", "--clip_mode", "exact"],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_spans_are_one_error_each_and_neighbours_are_packed(manifest, kind, tmp_path):
    if kind == "un-decord":
        pytest.importorskip("decord")
    path, video = manifest
    out = str(tmp_path / "o")
    cmd = [sys.executable, os.path.join(ROOT, "pack.py"), "--manifest", path, "--save_path", out,
           "--workers", "2", "--samples_per_tar", "5", "--no_progress", *KINDS[kind]]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr

    errors = [json.loads(line) for line in open(os.path.join(out, "errors-0.jsonl"))]
    bad = {f"{i:09d}" for i, (what, _) in enumerate(ROWS) if what != GOOD}
    assert sorted(e["key"] for e in errors) == sorted(bad), "each bad span exactly one line, nothing else"
    reasons = {e["key"]: e["reason"] for e in errors}
    assert all("span" in r for r in reasons.values()), reasons
    for i in PAST_END:
        assert "starts at or after the video's end (2.00 s)" in reasons[f"{i:09d}"]
    assert "holds no frame" in reasons["000000011"]

    samples = read_samples(out)
    assert sorted(samples) == sorted(f"{i:09d}" for i, (what, _) in enumerate(ROWS) if what == GOOD)
    for key, sample in samples.items():
        _check_good_sample(kind, sample, ROWS[int(key)][1], video)


def _check_good_sample(kind: str, sample: dict, span, video: str) -> None:
    meta = json.loads(sample["json"])
    expected = _frames_of(span)
    if span is None:
        assert "span" not in meta
    else:
        end = min(span[1], FRAMES / FPS) if span[1] is not None else FRAMES / FPS
        assert meta["span"] == pytest.approx([span[0] or 0.0, end]), "the span used, cut to the video's end"
    if not kind.startswith("video-only"):
        assert meta["num_frames"] == len(expected)
        indices = [f["index"] for f in meta["frames"]]
        opts = SamplerOptions(num_frames=4, kf_iframes=3, kf_total=6)
        if kind.startswith("un"):
            assert indices == choose_uniform([None] * len(expected), opts)
        else:  # the kf rule applied to the span's own frames and their true types
            types = _pict_types(video)
            frames = [FrameInfo(i, n / FPS, types[n]) for i, n in enumerate(expected)]
            assert indices == choose_keyframes(frames, opts)
            assert [f["type"] for f in meta["frames"]] == [types[expected[i]] for i in indices]
        assert frame_numbers(sample) == [expected[0] + i for i in indices]
        return
    if span is None:
        with open(video, "rb") as f:
            assert sample["mp4"] == f.read(), "no span: the file's bytes unchanged"
        return
    shown = [n for _, n in video_frames(sample["mp4"])]
    if kind == "video-only-exact":
        assert shown == expected
        assert meta["span_written"] == meta["span"]
    else:
        key = max(k for k in _key_frames(video) if k <= expected[0])
        assert shown == list(range(key, shown[-1] + 1)) and shown[-1] >= expected[-1]
        assert meta["span_written"] == pytest.approx([key / FPS, (shown[-1] + 1) / FPS])
    assert meta["num_frames"] == len(shown)


@pytest.mark.parametrize(
    "start, end, reason",
    [
        (float("nan"), 1.0, "finite"),
        (0.0, float("inf"), "finite"),
        (float("-inf"), 1.0, "finite"),
        (-0.5, 1.0, "before 0"),
        (2.0, 1.0, "ends before it starts"),
        (1.0, 1.0, "is empty"),
    ],
)
def test_spans_bad_on_their_own_are_refused_before_any_read(start, end, reason):
    """The loaders refuse these already; records built elsewhere meet the same rules."""
    with pytest.raises(RecordError, match=reason):
        requested_span(start, end)


def test_span_is_cut_at_the_video_end():
    assert requested_span(None, None) is None
    assert requested_span(None, 3) == (0.0, 3.0)
    assert clamp_span((1.0, 10.0), 2.0) == (1.0, 2.0)
    assert clamp_span((1.0, None), 2.0) == (1.0, 2.0)
    with pytest.raises(RecordError, match=r"span: 100.0..105.0 starts at or after the video's end \(2.00 s\)"):
        clamp_span((100.0, 105.0), 2.0)
    with pytest.raises(RecordError, match="starts at or after"):
        clamp_span((2.0, None), 2.0)


# --- nothing one record raises reaches the pool ------------------------------------------------


def _three_records(tmp_path, poisoned: str) -> str:
    good = make_video(str(tmp_path / "good.mp4"), VideoSpec(num_frames=10))
    poison = make_video(str(tmp_path / poisoned), VideoSpec(num_frames=10))
    rows = [{"video_path": p, "value": "c"} for p in (good, poison, good)]
    return write_manifest(str(tmp_path / "m.jsonl"), rows)


def test_an_unexpected_exception_is_one_error_naming_it(tmp_path, monkeypatch):
    """A bug met by one record (here an IndexError from the decoder) is that record's error line,
    with the exception's type and place; its neighbours in the same tar are packed."""
    real = vdp.pack.stage.decode_chosen

    def buggy(source, *args, **kwargs):
        if str(source).endswith("boom.mp4"):
            return [][0]
        return real(source, *args, **kwargs)

    monkeypatch.setattr(vdp.pack.stage, "decode_chosen", buggy)  # forked workers inherit it
    m = _three_records(tmp_path, "boom.mp4")
    out = str(tmp_path / "o")
    assert pack.main(["--manifest", m, "--type", "un", "--num_frames", "2", "--save_path", out, "--workers", "2",
                      "--no_progress"]) == 1  # fmt: skip
    errors = [json.loads(line) for line in open(os.path.join(out, "errors-0.jsonl"))]
    assert [e["key"] for e in errors] == ["000000001"]
    assert errors[0]["reason"].startswith("unexpected error: IndexError: list index out of range (at tests/test_spans.py:")
    assert sorted(read_samples(out)) == ["000000000", "000000002"]


def test_the_catch_all_leaves_the_timeout_to_the_pool(tmp_path, monkeypatch):
    """The alarm that ends a record that takes too long is not an unexpected error."""
    real = vdp.pack.stage.decode_chosen

    def slow(source, *args, **kwargs):
        if str(source).endswith("slow.mp4"):
            time.sleep(30)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(vdp.pack.stage, "decode_chosen", slow)
    m = _three_records(tmp_path, "slow.mp4")
    out = str(tmp_path / "o")
    assert pack.main(["--manifest", m, "--type", "un", "--num_frames", "2", "--save_path", out, "--workers", "1",
                      "--timeout", "1", "--no_progress"]) == 1  # fmt: skip
    errors = [json.loads(line) for line in open(os.path.join(out, "errors-0.jsonl"))]
    assert [(e["key"], e["reason"].split(":")[0]) for e in errors] == [("000000001", "timeout")]
    assert sorted(read_samples(out)) == ["000000000", "000000002"]
