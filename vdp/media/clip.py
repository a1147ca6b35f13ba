"""Cut a record's span out of its video, for `--type video-only` records with a span.

Two modes (`--clip_mode`):
- copy (default): a remux, no re-encode. A stream copy can only start at a key frame, so the
  clip starts at the key frame at or before the span's start. It ends with the last frame
  shown before the span's end, plus any frames past it that come earlier in decode order (the
  reference frames B-frames need), with the frames between them too, so the clip shows no gap.
- exact: decode from that key frame and encode, with libx264, exactly the frames with
  start <= t < end.
Audio packets of the written time range are copied as they are in both modes (cut at packet
granularity, ~20-60 ms for AAC/Opus); subtitle and data streams are dropped.

The bytes are deterministic: the muxers run bitexact (no library version, no random Matroska
segment id, no creation time) and x264 on one thread (its output depends on the thread
count) without macroblock-tree rate control (see X264_OPTIONS), so a rerun or another
`--workers` writes the same tar.
"""

from __future__ import annotations

import heapq
import io
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain

import av

from vdp.errors import RecordError
from vdp.media.spans import Span, clamp_span, no_frame_in
from vdp.media.video import open_video

CLIP_MODES = ("copy", "exact")

# Source extension -> (muxer, extension) for each mode; anything else goes to Matroska, which
# holds every codec. WebM holds no H.264 and AVI no B-frame timestamps, so re-encoded clips of
# those become Matroska.
COPY_FORMATS = {"mp4": ("mp4", "mp4"), "m4v": ("mp4", "mp4"), "mov": ("mov", "mov"), "mkv": ("matroska", "mkv"),
                "webm": ("webm", "webm"), "avi": ("avi", "avi")}
EXACT_FORMATS = {"mp4": ("mp4", "mp4"), "m4v": ("mp4", "mp4"), "mov": ("mov", "mov"), "mkv": ("matroska", "mkv")}
FALLBACK_FORMAT = ("matroska", "mkv")

# mbtree=0: with x264's macroblock-tree rate control the same frames, encoded twice in one
# process, came out as different bytes (it depended on what the heap held before: measured
# with this PyAV build); without it the output is the same every time.
X264_OPTIONS = {"preset": "veryfast", "crf": "18", "threads": "1", "x264-params": "mbtree=0"}

# H.264 and HEVC reorder at most 16 frames: after that many packets past the cut in a row, no
# later one can fall inside it (the rule for packets without a decode timestamp).
MAX_REORDER = 16


@dataclass(frozen=True)
class Clip:
    data: bytes
    ext: str  # the extension of the container written
    span: tuple[float, float]  # the span asked for, cut to the video's end (seconds)
    written: tuple[float, float]  # first frame's time .. end of the last frame written (seconds)


@dataclass
class _VideoCut:
    packets: list  # video packets, decode order, from the key frame to the last one needed
    written_end: float  # seconds: where the frame after the last one kept starts (or the video ends)
    reached_end: bool  # the demuxer ran to the video's end
    video_end: float  # seconds to the end of the last packet seen


def cut_clip(source, span: Span, ext: str, mode: str = "copy") -> Clip:
    """The span of the video at `source` (path or file object) as a clip file of its own."""
    container, video = open_video(source)
    try:
        cut = _cut_from_key(container, video, span)
        fitted = clamp_span(span, cut.video_end) if cut.reached_end else span
        if not any(fitted[0] - 1e-6 <= _seconds(p.pts, video) < fitted[1] for p in cut.packets):
            raise no_frame_in(fitted)
        audio = container.streams.audio[0] if container.streams.audio else None
        if mode == "exact":
            return _encode_exact(container, video, audio, cut.packets, fitted, ext)
        return _copy(container, video, audio, cut.packets, cut.written_end, fitted, ext)
    finally:
        container.close()


def _origin(stream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def _seconds(pts: int, stream) -> float:
    """A timestamp as seconds from the stream's first frame (the frame times of vdp.media.video)."""
    return float((pts - _origin(stream)) * stream.time_base)


def _frame_seconds(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return 1.0 / float(rate) if rate else 0.04


def _cut_from_key(container, video, span: Span) -> _VideoCut:
    """The packets a clip of the span needs, from the last key frame at or before its start.

    A demuxer that seeks to a later key frame than asked (a sparse index) is corrected by
    reading from the beginning instead.
    """
    start = span[0]
    if start > 0:
        container.seek(_origin(video) + int(start / video.time_base), stream=video, backward=True, any_frame=False)
        cut = _read_cut(container, video, span)
        if not cut.packets or _seconds(cut.packets[0].pts, video) <= start + 1e-6:
            return cut
        container.seek(_origin(video), stream=video, backward=True, any_frame=False)
    return _read_cut(container, video, span)


def _read_cut(container, video, span: Span) -> _VideoCut:
    """Demux from the current position: keep from the last key frame at or before the start to
    the last packet that shows a frame before the end (or fills a gap before one kept).

    Packets come in decode order, and a packet's decode time never exceeds its presentation
    time: once one decodes past the span's end, every frame kept and the first frame after
    them, no later packet can change the clip.
    """
    start, end = span[0], math.inf if span[1] is None else span[1]
    kept: list = []
    need = 0  # kept[:need] is the clip
    top = -math.inf  # latest presentation time in kept[:need]
    seen_top = -math.inf  # latest presentation time in kept
    seen: list[float] = []  # presentation time of every packet read
    last_end = 0.0
    beyond = 0  # packets in a row past the cut (the rule for packets without a decode time)
    try:
        for p in container.demux(video):
            if not p.size:
                continue
            if p.pts is None:
                raise RecordError("cannot cut a clip: video packets without timestamps")
            t = _seconds(p.pts, video)
            seen.append(t)
            last_end = max(last_end, t + _duration(p, video))
            bound = max(end, top)
            if beyond > MAX_REORDER or (p.dts is not None and _seconds(p.dts, video) >= max(bound, _after(seen, top))):
                return _VideoCut(_leading_dropped(kept[:need]), _after(seen, top), False, last_end)
            beyond = beyond + 1 if t >= bound else 0
            if p.is_keyframe and t <= start + 1e-6:
                kept, need, top, seen_top = [], 0, -math.inf, -math.inf  # a later key frame still at or before the start
            if not kept and not p.is_keyframe:
                continue
            kept.append(p)
            seen_top = max(seen_top, t)
            if t < end or t < top:
                need, top = len(kept), seen_top
    except av.error.FFmpegError as e:
        raise RecordError(f"truncated or corrupt: {' '.join(str(e).split())[:200]}") from None
    after = _after(seen, top)
    return _VideoCut(_leading_dropped(kept[:need]), after if after < math.inf else last_end, True, last_end)


def _after(seen: list[float], top: float) -> float:
    """The earliest presentation time after `top` among those seen (inf when none)."""
    return min((t for t in seen if t > top), default=math.inf)


def _duration(packet, video) -> float:
    return float(packet.duration * video.time_base) if packet.duration else _frame_seconds(video)


def _leading_dropped(packets: list) -> list:
    """Without the leading pictures of an open GOP: they refer to the GOP before the key frame,
    which is not in the clip."""
    if not packets:
        return packets
    key = packets[0].pts
    return [p for p in packets if p.pts >= key]


# --- copy -------------------------------------------------------------------------------------


def _copy(container, video, audio, packets: list, written_end: float, span: tuple[float, float], ext: str) -> Clip:
    first = min(p.pts for p in packets)
    written = (_seconds(first, video), written_end)
    shift = first * video.time_base  # container time of the clip's first frame, which becomes 0
    sound = _audio_packets(container, audio, shift, shift + Fraction(written[1] - written[0]))
    out, buf, ext_out = _open_output(COPY_FORMATS.get(ext, FALLBACK_FORMAT), video, audio if sound else None)
    with out:
        video_packets = _shifted(packets, shift, out.streams.video[0])
        _mux_interleaved(out, video_packets, _shifted(sound, shift, out.streams.audio[0]) if sound else [])
    return Clip(buf.getvalue(), ext_out, _rounded(span), _rounded(written))


def _open_output(preferred: tuple[str, str], video, audio, encode_like=None):
    """An in-memory output container with the streams set up and its header written.

    When the preferred muxer refuses a codec (it fails on writing the header, before any
    packet), Matroska is used instead. `encode_like` is a function that adds an encoded video
    stream in place of a copy of `video`.
    """
    for fmt, ext in dict.fromkeys([preferred, FALLBACK_FORMAT]):
        buf = io.BytesIO()
        out = av.open(buf, "w", format=fmt, options={"fflags": "+bitexact"})
        try:
            if encode_like is not None:
                encode_like(out)
            else:
                out.add_stream_from_template(video)
            if audio is not None:
                out.add_stream_from_template(audio)
            out.start_encoding()
            return out, buf, ext
        except (av.error.FFmpegError, ValueError):
            _close_quietly(out)
            if (fmt, ext) == FALLBACK_FORMAT:
                raise
    raise AssertionError("unreachable")


def _close_quietly(out) -> None:
    try:
        out.close()
    except (av.error.FFmpegError, ValueError):
        pass


def _shifted(packets: list, shift: Fraction, ostream) -> list:
    """The packets moved `shift` seconds earlier (in their own time base; the muxer converts
    them to the output's) and bound for `ostream`."""
    for p in packets:
        offset = round(shift / p.time_base)
        p.pts -= offset
        if p.dts is not None:
            p.dts -= offset
        p.stream = ostream
    return packets


def _mux_interleaved(out, video_packets: Iterable, audio_packets: list) -> None:
    """Mux both streams in time order: the muxer interleaves only within a window, and fed one
    stream after the other would hold packets back or write the streams apart."""
    audio = deque(audio_packets)
    for vp in video_packets:
        t = (vp.dts if vp.dts is not None else vp.pts) * vp.time_base
        while audio and audio[0].pts * audio[0].time_base <= t:
            out.mux(audio.popleft())
        out.mux(vp)
    for ap in audio:
        out.mux(ap)


def _audio_packets(container, audio, start: Fraction, end: Fraction) -> list:
    """The audio packets whose start lies in [start, end) of container time (seconds)."""
    if audio is None:
        return []
    tb = audio.time_base
    container.seek(math.floor(start / tb), stream=audio, backward=True, any_frame=False)
    kept = []
    try:
        for p in container.demux(audio):
            if not p.size or p.pts is None:
                continue
            t = p.pts * tb
            if t >= end:
                break
            if t >= start:
                kept.append(p)
    except av.error.FFmpegError:
        return kept  # a damaged tail of the audio: the clip keeps what came before it
    return kept


def _rounded(span: tuple[float, float]) -> tuple[float, float]:
    return round(span[0], 6), round(span[1], 6)


# --- exact ------------------------------------------------------------------------------------


def _encode_exact(container, video, audio, packets: list, span: tuple[float, float], ext: str) -> Clip:
    first_pts = min(p.pts for p in packets if span[0] - 1e-6 <= _seconds(p.pts, video) < span[1])
    shift = first_pts * video.time_base
    # the audio first: a seek (to find it) flushes the video decoder, frames and all
    sound = _audio_packets(container, audio, shift, shift + Fraction(span[1] - _seconds(first_pts, video)))
    # decoded one by one, through a small reorder window: a long span never sits in memory
    frames = _in_pts_order(_frames_in(video, packets, span))
    first = next(frames, None)
    if first is None:
        raise RecordError("undecodable: no frame decoded in span")
    rotation = int(round(first.rotation or 0))
    width, height = first.width & ~1, first.height & ~1  # 4:2:0 needs even sizes

    def add_encoder(out) -> None:
        _add_x264(out, video, width, height, rotation)

    preferred = EXACT_FORMATS.get(ext, FALLBACK_FORMAT)
    out, buf, ext_out = _open_output(preferred, video, audio if sound else None, encode_like=add_encoder)
    with out:
        encoded = _encoded(out.streams.video[0], chain([first], frames), first_pts, width, height)
        _mux_interleaved(out, encoded, _shifted(sound, shift, out.streams.audio[0]) if sound else [])
    return Clip(buf.getvalue(), ext_out, _rounded(span), _rounded(span))


def _frames_in(video, packets: list, span: tuple[float, float]) -> Iterator:
    """Decode the packets; yield the frames with start <= t < end, in the decoder's
    (presentation) order."""
    cc = video.codec_context
    cc.thread_count, cc.thread_type = 1, "SLICE"  # one core per worker, as for frame types

    def inside(decoded) -> list:
        return [f for f in decoded if f.pts is not None and span[0] - 1e-6 <= _seconds(f.pts, video) < span[1]]

    for p in [*packets, None]:  # None drains the decoder
        try:
            yield from inside(video.decode(p))
        except av.error.FFmpegError:
            pass  # a damaged packet: the decoder conceals and goes on, so do we


def _in_pts_order(frames: Iterable, window: int = MAX_REORDER) -> Iterator:
    """The frames sorted by pts, holding at most `window` + 1 of them.

    A decoder gives frames in presentation order when the stream declares how far it reorders;
    for one that does not, FFmpeg's H.264 decoder learns the depth as it goes ("Increasing
    reorder buffer") and may hand out early frames too soon. Never by more than the codec's
    reorder depth, which the window covers.
    """
    heap: list = []
    for n, frame in enumerate(frames):
        heapq.heappush(heap, (frame.pts, n, frame))
        if len(heap) > window:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def _encoded(ostream, frames: Iterable, first_pts: int, width: int, height: int) -> Iterator:
    """The encoder's packets for the frames, then its last ones."""
    last = None
    for frame in frames:
        if last is not None and frame.pts <= last:
            continue  # out of order (a damaged stream): the encoder needs rising times
        last = frame.pts
        yield from ostream.encode(_for_encoder(frame, first_pts, width, height))
    yield from ostream.encode(None)


def _add_x264(out, video, width: int, height: int, rotation: int) -> None:
    rate = video.average_rate or video.guessed_rate or Fraction(25)
    stream = out.add_stream("libx264", rate=rate, options=dict(X264_OPTIONS))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    # the source's time base keeps every frame's own timestamp (variable frame rate survives)
    stream.codec_context.time_base = video.time_base
    if video.codec_context.sample_aspect_ratio:
        stream.codec_context.sample_aspect_ratio = video.codec_context.sample_aspect_ratio
    if rotation % 360:
        stream.set_display_rotation(rotation)  # the pictures stay stored as they were, and so does their rotation


def _for_encoder(frame, first_pts: int, width: int, height: int):
    """The decoded frame as the encoder takes it: 8-bit 4:2:0 at even size, timed from the
    clip's first frame, with no picture type (libx264 would force the source's types)."""
    pts = frame.pts - first_pts
    if frame.format.name != "yuv420p" or (frame.width, frame.height) != (width, height):
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    frame.pts = pts
    frame.pict_type = 0
    return frame
