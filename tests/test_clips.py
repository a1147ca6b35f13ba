"""`--type video-only` writes the clip of a record's span, not its whole source.

Every check decodes the clip written into the tar and reads back the frame numbers painted in
its pictures: `--clip_mode copy` starts at the key frame at or before the span's start and
runs without a gap to at least the span's last frame; `exact` holds exactly the frames with
start <= t < end. Both follow the source's container where it can hold the codec, keep audio
and rotation, describe the clip written in the json, and give the same bytes on every run.
"""

from __future__ import annotations

import io
import json
import os

import av
import pytest

from tests.pack_helpers import VIDEO_SPECS, make_videos, read_samples, tree_bytes, video_frames, write_manifest
from vdp.cli import pack
from vdp.media.video import scan_video

NAMES = ["h264_bframes.mp4", "hevc.mp4", "vp9.webm", "rot90.mp4", "rot270.mkv", "vfr_audio.mp4", "mpeg4.avi"]
CONTAINERS = {  # source extension -> (copy, exact) extension of the clip
    "mp4": ("mp4", "mp4"), "webm": ("webm", "mkv"), "mkv": ("mkv", "mkv"), "avi": ("avi", "mkv"),
}  # fmt: skip


# x264 videos with B-frame pyramids: spans that end inside a B-frame group (x265 decodes its B-frames
# latest first, so a cut there adds frames past the end but never leaves a gap)
BFRAME_NAMES = ["h264_bframes.mp4", "rot90.mp4", "rot270.mkv", "vfr_audio.mp4"]
CASES = [(n, k) for n in NAMES for k in ("middle", "past the end")] + [(n, "inside a B-frame group") for n in BFRAME_NAMES]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (path, [(time, painted number)] of every frame, key frame times, spans by kind)."""
    paths = make_videos(str(tmp_path_factory.mktemp("clip-videos")))
    out = {}
    for name in NAMES:
        with open(paths[name], "rb") as f:
            frames = video_frames(f.read())
        last = frames[-1][0]
        spans = {"middle": (round(0.35 * last, 2), round(0.75 * last, 2)), "past the end": (round(0.6 * last, 2), last + 5)}
        if name in BFRAME_NAMES:
            spans["inside a B-frame group"] = (round(0.2 * last, 2), _gap_end(paths[name]))
        out[name] = (paths[name], frames, _key_times(paths[name]), spans)
    return out


def _packet_times(path: str) -> list[float]:
    """Presentation times of the video packets, in decode order."""
    with av.open(path) as c:
        s = c.streams.video[0]
        return [float((p.pts - (s.start_time or 0)) * s.time_base) for p in c.demux(s) if p.size]


def _gap_end(path: str) -> float:
    """An end time where copying the packets up to the last one shown before it would leave a
    gap: a later reference frame comes along, but not the B-frames between."""
    times = _packet_times(path)
    shown = sorted(times)
    for end in shown[len(shown) // 3 : 2 * len(shown) // 3]:
        last = max(i for i, t in enumerate(times) if t < end)
        naive = sorted(times[: last + 1])
        if naive != shown[: len(naive)]:
            return end
    raise AssertionError(f"{path}: no span end inside a B-frame group")


def _key_times(path: str) -> list[float]:
    with av.open(path) as c:
        s = c.streams.video[0]
        origin = s.start_time or 0
        return sorted(float((p.pts - origin) * s.time_base) for p in c.demux(s) if p.size and p.is_keyframe)


@pytest.fixture(scope="module")
def manifest(sources, tmp_path_factory):
    """One row per (video, span kind), in a fixed order, plus a whole-video row."""
    rows, where = [], {}
    for name in NAMES:
        path, _, _, spans = sources[name]
        for kind, (start, end) in spans.items():
            where[f"{len(rows):09d}"] = (name, kind)
            rows.append({"video_path": path, "value": f"{name} {kind}", "start": start, "end": end})
    rows.append({"video_path": sources["h264_bframes.mp4"][0], "value": "whole"})
    return write_manifest(str(tmp_path_factory.mktemp("clip-manifest") / "m.jsonl"), rows), where


def _pack(manifest_path: str, out: str, mode: str, workers: str) -> str:
    args = ["--manifest", manifest_path, "--type", "video-only", "--clip_mode", mode, "--save_path", out,
            "--workers", workers, "--samples_per_tar", "6", "--no_progress"]  # fmt: skip
    assert pack.main(args) == 0
    return out


@pytest.fixture(scope="module")
def packed(manifest, tmp_path_factory):
    """mode -> {(video name, span kind): (clip bytes, clip extension, json)}, packed with 2 workers."""
    path, where = manifest
    out = {}
    for mode in ("copy", "exact"):
        folder = _pack(path, str(tmp_path_factory.mktemp(f"clips-{mode}")), mode, "2")
        samples = read_samples(folder)
        clips = {}
        for key, (name, kind) in where.items():
            ext = next(k for k in samples[key] if k not in ("__key__", "__url__", "__local_path__", "json"))
            clips[(name, kind)] = (samples[key][ext], ext, json.loads(samples[key]["json"]))
        out[mode] = (folder, clips)
    return out


def _fitted(frames, span) -> tuple[float, float]:
    """The span cut to the video's end: the span itself, or the end of the last frame (taken as
    the last frame's time plus a generous frame duration: how long the last frame lasts is up
    to the container)."""
    last = frames[-1][0]
    return (span[0], span[1]) if span[1] <= last else (span[0], last + 0.1)


def _check_span(meta: dict, frames, span) -> tuple[float, float]:
    """The json's span is the span asked for, cut to the video's end; returns it."""
    start, end = _fitted(frames, span)
    assert meta["span"][0] == pytest.approx(start)
    if end == span[1]:
        assert meta["span"][1] == pytest.approx(end)
    else:
        assert frames[-1][0] < meta["span"][1] <= end
    return tuple(meta["span"])


@pytest.mark.parametrize("name, kind", CASES)
def test_copy_starts_at_the_key_frame_and_covers_the_span(packed, sources, name, kind):
    _, frames, keys, spans = sources[name]
    data, _, meta = packed["copy"][1][(name, kind)]
    start, end = _check_span(meta, frames, spans[kind])
    key = max(k for k in keys if k <= start + 1e-6)
    wanted = [n for t, n in frames if start - 1e-6 <= t < end]
    shown = video_frames(data)
    numbers = [n for _, n in shown]
    first = next(n for t, n in frames if abs(t - key) < 1e-6)
    assert numbers == list(range(first, numbers[-1] + 1)), "from the key frame, no gap"
    assert numbers[-1] >= wanted[-1], "to the span's last frame at least"
    # frame times keep the source's spacing (variable frame rate too), from the key frame
    source_times = {n: t for t, n in frames}
    assert [t for t, _ in shown] == pytest.approx([source_times[n] - key for n in numbers], abs=2e-3)
    after = numbers[-1] + 1
    written_end = source_times[after] if after in source_times else end
    assert meta["span_written"] == pytest.approx([key, written_end], abs=2e-3)


@pytest.mark.parametrize("name, kind", CASES)
def test_exact_holds_exactly_the_frames_of_the_span(packed, sources, name, kind):
    _, frames, _, spans = sources[name]
    data, _, meta = packed["exact"][1][(name, kind)]
    start, end = _check_span(meta, frames, spans[kind])
    wanted = [(t, n) for t, n in frames if start - 1e-6 <= t < end]
    shown = video_frames(data)
    assert [n for _, n in shown] == [n for _, n in wanted]
    assert [t for t, _ in shown] == pytest.approx([t - wanted[0][0] for t, _ in wanted], abs=2e-3)
    assert meta["span_written"] == meta["span"]


@pytest.mark.parametrize("mode", ["copy", "exact"])
@pytest.mark.parametrize("name", NAMES)
def test_json_describes_the_clip_written(packed, name, mode):
    data, ext, meta = packed[mode][1][(name, "middle")]
    scanned = scan_video(data)  # the existing checks pass on the clip
    spec = VIDEO_SPECS[name]
    assert (meta["width"], meta["height"]) == (spec.width, spec.height), "upright size"
    assert (meta["fps"], meta["duration"], meta["num_frames"]) == (scanned.fps, scanned.duration, scanned.num_frames)
    assert meta["num_frames"] == len(video_frames(data))
    # the written span may start or end between frames (up to 100 ms apart with a variable rate)
    tol = 0.2 if spec.vfr else 0.05
    assert meta["duration"] == pytest.approx(meta["span_written"][1] - meta["span_written"][0], abs=tol)
    assert ext == CONTAINERS[name.rsplit(".", 1)[1]][mode == "exact"]
    if mode == "exact":
        assert scanned.codec == "h264"


@pytest.mark.parametrize("mode", ["copy", "exact"])
def test_rotation_is_kept(packed, mode):
    for name in ("rot90.mp4", "rot270.mkv"):
        data, _, _ = packed[mode][1][(name, "middle")]
        assert scan_video(data).rotation == VIDEO_SPECS[name].rotation % 360
        assert None not in [n for _, n in video_frames(data)], "frames come out upright once rotated"


@pytest.mark.parametrize("mode", ["copy", "exact"])
def test_audio_of_the_clip_is_copied(packed, mode):
    data, _, meta = packed[mode][1][("vfr_audio.mp4", "middle")]
    length = meta["span_written"][1] - meta["span_written"][0]
    with av.open(io.BytesIO(data)) as c:
        audio = c.streams.audio[0]
        assert audio.codec_context.name == "aac"
        times = [float(p.pts * audio.time_base) for p in c.demux(audio) if p.size]
    packet = 1024 / 16000
    assert times and -1e-3 <= times[0] < packet and times[-1] < length + 1e-3


def test_a_record_without_a_span_is_the_source_unchanged(packed, manifest, sources):
    folder, _ = packed["copy"]
    _, where = manifest
    whole = read_samples(folder)[f"{len(where):09d}"]
    with open(sources["h264_bframes.mp4"][0], "rb") as f:
        assert whole["mp4"] == f.read()
    assert "span" not in json.loads(whole["json"])


@pytest.mark.parametrize("mode", ["copy", "exact"])
def test_clips_are_the_same_bytes_on_every_run(packed, manifest, mode, tmp_path):
    """No muxer timestamp, library version or random id in the output, and x264 deterministic:
    a second run, with one worker or two, writes byte-identical tars."""
    first, _ = packed[mode]
    again = [_pack(manifest[0], str(tmp_path / w), mode, w) for w in ("1", "2")]
    expected = tree_bytes(first)
    assert len([n for n in expected if n.endswith(".tar")]) == -(-(len(manifest[1]) + 1) // 6)
    for folder in again:
        assert tree_bytes(folder) == expected


def test_the_clip_mode_is_a_flag_of_the_run(manifest, tmp_path, capsys):
    """Tars of one clip mode are not resumed by a run of the other."""
    out = str(tmp_path / "o")
    path, where = manifest
    args = ["--manifest", path, "--type", "video-only", "--save_path", out, "--no_progress", "--end", "1"]
    assert pack.main([*args, "--clip_mode", "copy"]) == 0
    assert pack.main([*args, "--clip_mode", "exact"]) == 2
    assert "other flags" in capsys.readouterr().err
    assert os.path.exists(out)
