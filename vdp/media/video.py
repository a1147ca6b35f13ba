"""Decode a video once with PyAV and hand back the frames a sampler chooses.

The flow for frame samplers:
1. demux the video packets (no decode): this finds truncation early and predicts the frame
   list (packet count, presentation order by pts, key packets as "I");
2. ask the sampler which frames it would take from that prediction, and decode the whole
   stream once, keeping only those frames (no colour conversion of the others);
3. ask the sampler again with the true frame list (true count, decoded pict_type); a chosen
   frame the prediction missed (rare: open GOP, dropped frames) is found by one more decode.

Frames are numbered in presentation order (the decoder's output order), timed from the
first frame, and returned upright (display-matrix rotation applied) with the longest side
at most `max_side`.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np

from vdp.errors import RecordError
from vdp.media.spans import Span, clamp_span, no_frame_in

# AVPictureType as PyAV reports it (an int in PyAV 18).
_PICT_TYPE = {1: "I", 2: "P", 3: "B", 4: "S", 5: "SI", 6: "SP", 7: "BI"}


@dataclass(frozen=True)
class FrameInfo:
    index: int  # presentation order within the span, from 0
    time: float  # seconds from the first frame of the video
    type: str  # "I", "P", "B", ... as decoded ("I"/"P" guesses in a prediction)


@dataclass
class VideoMeta:
    width: int  # upright (after rotation)
    height: int
    fps: float
    duration: float
    num_frames: int
    codec: str
    rotation: int  # degrees counter-clockwise applied to make frames upright


@dataclass
class DecodedFrames:
    meta: VideoMeta
    frames: list[FrameInfo]
    chosen: list[int]
    images: dict[int, np.ndarray] = field(default_factory=dict)  # index -> upright BGR
    redecoded: bool = False  # the prediction missed and a second decode was needed
    span: tuple[float, float] | None = None  # the clip span used, cut to the video's end


Chooser = Callable[[list[FrameInfo]], list[int]]


def open_video(source) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a path or file-like object and return (container, first video stream)."""
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise RecordError(f"not a video: {_short(e)}") from None
    if not container.streams.video:
        container.close()
        raise RecordError("no video stream")
    return container, container.streams.video[0]


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def _span_bounds(stream, span: tuple[float, float] | None) -> tuple[float, float]:
    if span is None:
        return 0.0, float("inf")
    start, end = span
    return float(start or 0.0), float("inf") if end is None else float(end)


def _origin(stream) -> int:
    return stream.start_time if stream.start_time is not None else 0


# Packets of one video held in memory at most; a longer video is demuxed a second time for
# decoding rather than held (an hour of 1080p is gigabytes).
PACKET_MEMORY_BUDGET = 256 * 1024 * 1024


@dataclass(frozen=True)
class PacketInfo:
    pts: int | None
    dts: int | None
    duration: int
    is_keyframe: bool


@dataclass
class PacketScan:
    infos: list[PacketInfo]  # every packet of the span, decode order
    packets: list | None  # the packets themselves, or None when over the memory budget
    reached_end: bool = True  # False when the span ended before the video did


def _span_packets(container, stream, span, cut: list | None = None):
    """Yield the video packets that can contribute frames to the span, in decode order.

    When the span ends before the video, True is appended to `cut` (when given).
    """
    tb = stream.time_base
    origin = _origin(stream)
    t0, t1 = _span_bounds(stream, span)
    if t0 > 0:
        container.seek(origin + int(t0 / tb), stream=stream, backward=True, any_frame=False)
    try:
        for p in container.demux(stream):
            if p.size == 0:
                continue
            # dts only grows and never exceeds pts, so past `t1` no later packet can show in the span.
            if p.dts is not None and float((p.dts - origin) * tb) >= t1:
                if cut is not None:
                    cut.append(True)
                break
            yield p
    except av.error.FFmpegError as e:
        raise RecordError(f"truncated or corrupt: {_short(e)}") from None


def read_packets(container, stream, span: tuple[float, float] | None) -> PacketScan:
    """Demux the span once: packet facts always, packet data while within the memory budget."""
    infos, packets, held, cut = [], [], 0, []
    for p in _span_packets(container, stream, span, cut):
        infos.append(PacketInfo(p.pts, p.dts, p.duration or 0, p.is_keyframe))
        if packets is not None:
            held += p.size
            packets.append(p)
            if held > PACKET_MEMORY_BUDGET:
                packets = None
    if span is None:
        _check_complete(container, stream, infos)
    return PacketScan(infos, packets, not cut)


def video_end(container, stream, infos: list[PacketInfo]) -> float:
    """Seconds from the first frame to the end of the last, from packets that reach the end.

    The header's duration is the fallback when no packet has a timestamp.
    """
    tb, origin, frame = stream.time_base, _origin(stream), 1.0 / _fps(stream)
    ends = [float((i.pts - origin) * tb) + (float(i.duration * tb) if i.duration else frame) for i in infos if i.pts is not None]
    if ends:
        return max(ends)
    if stream.duration:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / 1e6


def fit_span(container, stream, scan: PacketScan, span: Span) -> tuple[float, float]:
    """The span cut to the video's end (RecordError when it misses the video or holds no frame).

    Only a scan that reached the video's end knows where it is; one that stopped early did so
    at a packet past the span's end, so the span is inside the video.
    """
    fitted = clamp_span(span, video_end(container, stream, scan.infos)) if scan.reached_end else span
    if not predict_frames(scan.infos, stream, fitted):
        raise no_frame_in(fitted)
    return fitted


def _packets_again(container, stream, span, scan: PacketScan):
    """The span's packets for decoding: from memory, or demuxed once more."""
    if scan.packets is not None:
        return scan.packets
    container.seek(0, stream=stream, backward=True)
    return _span_packets(container, stream, span)


def _check_complete(container, stream, packets: list[PacketInfo]) -> None:
    """Raise when the packets stop short of what the header promises (a cut-off download).

    The demuxer reads a truncated file to its end without complaint, so compare with the
    header: in MP4/MOV the sample table counts every packet exactly; elsewhere only the
    declared duration is there, and a shortfall must be large to count (audio may outlast
    video).
    """
    fmt = container.format.name
    if ("mp4" in fmt or "mov" in fmt) and stream.frames and len(packets) < stream.frames:
        raise RecordError(f"truncated: {len(packets)} of {stream.frames} video packets present")
    if not packets or packets[-1].pts is None:
        return
    # Matroska muxers tag each track with its own DURATION: then a short video track is sure.
    own = _tag_seconds(stream.metadata.get("DURATION") or stream.metadata.get("duration"))
    if own is None and stream.duration:
        own = float(stream.duration * stream.time_base)
    declared = own if own is not None else (container.duration or 0) / 1e6
    slack = 2.5 / _fps(stream) + 0.05 if own is not None else max(1.0, 0.1 * declared)
    last = packets[-16:]
    end = max(float((p.pts - _origin(stream) + (p.duration or 0)) * stream.time_base) for p in last)
    if declared and declared - end > slack:
        raise RecordError(f"truncated: video ends at {end:.2f}s of {declared:.2f}s declared")


def _tag_seconds(value) -> float | None:
    try:
        return parse_clock(value) if value else None
    except ValueError:
        return None


def parse_clock(value: str) -> float:
    """Seconds from "HH:MM:SS.fff" (or fewer fields)."""
    seconds = 0.0
    for part in str(value).strip().split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def predict_frames(packets: list[PacketInfo], stream, span) -> list[FrameInfo]:
    """The frame list the packets suggest, before decoding anything."""
    tb = stream.time_base
    origin = _origin(stream)
    t0, t1 = _span_bounds(stream, span)
    if any(p.pts is None for p in packets):
        return [FrameInfo(i, 0.0, "I" if p.is_keyframe else "P") for i, p in enumerate(packets)]
    shown = sorted(packets, key=lambda p: p.pts)
    out = []
    for p in shown:
        t = float((p.pts - origin) * tb)
        if t0 - 1e-6 <= t < t1:
            out.append(FrameInfo(len(out), round(t, 6), "I" if p.is_keyframe else "P"))
    return out


def _configure_decoder(stream, threads: int) -> None:
    """threads=1 (the default) decodes on one core: the pool's processes give the parallelism,
    which scales better than frame threads on short clips; 0 lets FFmpeg use every core."""
    cc = stream.codec_context
    cc.thread_count = threads
    cc.thread_type = "AUTO" if threads != 1 else "SLICE"


def _decode_span(stream, packets, span, keep: set[int], threads: int):
    """Decode every packet once; return (frames, kept av.VideoFrame by index, rotation)."""
    tb = stream.time_base
    origin = _origin(stream)
    t0, t1 = _span_bounds(stream, span)
    frames: list[FrameInfo] = []
    kept: dict[int, av.VideoFrame] = {}
    rotation = 0
    errors = 0

    def take(frame):
        nonlocal rotation
        pts = frame.pts
        t = float((pts - origin) * tb) if pts is not None else len(frames) / _fps(stream)
        if not (t0 - 1e-6 <= t < t1):
            return
        idx = len(frames)
        frames.append(FrameInfo(idx, round(t, 6), _PICT_TYPE.get(int(frame.pict_type), "?")))
        if idx == 0:
            rotation = int(round(frame.rotation or 0))
        if idx in keep:
            kept[idx] = frame

    for p in packets:
        try:
            for frame in stream.decode(p):
                take(frame)
        except av.error.FFmpegError:
            errors += 1  # a damaged packet: the decoder conceals and goes on, so do we
    try:
        for frame in stream.decode(None):
            take(frame)
    except av.error.FFmpegError:
        errors += 1
    return frames, kept, rotation


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 25.0  # no rate in the header: the common default


def _redecode(container, stream, span, want: set[int], threads: int) -> dict[int, av.VideoFrame]:
    """Second decode from the start, keeping the frames the first pass did not keep."""
    container.seek(0, stream=stream, backward=True)
    stream.codec_context.flush_buffers()
    _, kept, _ = _decode_span(stream, _span_packets(container, stream, span), span, want, threads)
    return kept


def upright_bgr(frame: av.VideoFrame, rotation: int, max_side: int) -> np.ndarray:
    """Convert one frame to an upright BGR array with its longest side at most max_side.

    Scaling happens in the same swscale pass as the colour conversion.
    """
    w, h = frame.width, frame.height
    scale = min(1.0, max_side / max(w, h)) if max_side else 1.0
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    # threads=1: swscale defaults to a thread per CPU, which in every pool worker at once costs
    # five times the single-threaded conversion (measured with two workers on two cores)
    img = frame.reformat(width=tw, height=th, format="bgr24", interpolation="AREA", threads=1).to_ndarray()
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def _meta(container, stream, frames: list[FrameInfo], rotation: int) -> VideoMeta:
    cc = stream.codec_context
    w, h = cc.width, cc.height
    if (rotation // 90) % 2:
        w, h = h, w
    fps = _fps(stream)
    if len(frames) >= 2:
        duration = frames[-1].time - frames[0].time + 1.0 / fps
    else:
        duration = len(frames) / fps
    return VideoMeta(w, h, round(fps, 6), round(duration, 6), len(frames), cc.name, (rotation // 90 % 4) * 90)


# Decoded I frames kept from the intra pass at most (bytes of YUV 4:2:0); past it they are
# decoded again when chosen.
INTRA_MEMORY_BUDGET = 256 * 1024 * 1024


def _shown_pts(infos: list[PacketInfo], stream, span) -> list[int]:
    tb, origin = stream.time_base, _origin(stream)
    t0, t1 = _span_bounds(stream, span)
    return [pts for pts in sorted(i.pts for i in infos) if t0 - 1e-6 <= float((pts - origin) * tb) < t1]


def _intra_pass(stream, packets, index_of: dict[int, int]) -> tuple[set[int], dict[int, av.VideoFrame]]:
    """Decode only the intra frames (`skip_frame=NONINTRA`): the exact set of I frames, cheaply.

    An I frame needs no other frame, so skipping every P and B frame changes no picture; the
    I frames themselves are kept (within INTRA_MEMORY_BUDGET) in case they are chosen.
    """
    cc = stream.codec_context
    cc.skip_frame = "NONINTRA"
    intra: set[int] = set()
    kept: dict[int, av.VideoFrame] = {}
    held = 0

    def collect(frames) -> None:
        nonlocal held, kept
        for frame in frames:
            n = index_of.get(frame.pts)
            if n is None or int(frame.pict_type) != 1:
                continue  # outside the span, or a decoder that ignored the skip request
            intra.add(n)
            if kept is not None:
                kept[n] = frame
                held += frame.width * frame.height * 3 // 2
                if held > INTRA_MEMORY_BUDGET:
                    kept = None

    for p in packets:
        try:
            collect(stream.decode(p))
        except av.error.FFmpegError:
            pass
    collect(_drain(stream))
    cc.skip_frame = "DEFAULT"
    cc.flush_buffers()
    return intra, kept or {}


def _decode_needed(stream, infos: list[PacketInfo], packets, want: dict[int, int]) -> dict[int, av.VideoFrame]:
    """Decode only what the wanted frames (pts -> index) depend on, keeping those frames.

    For each wanted frame, its GOP from the key packet up to the frame is fed to the decoder;
    frames not wanted are decoded only if other frames may refer to them (`skip_frame=NONREF`
    drops the rest). Segments that do not touch are decoded separately, the decoder drained
    and reset in between.
    """
    keys = [j for j, i in enumerate(infos) if i.is_keyframe] or [0]
    needed = [False] * len(infos)
    for q, info in enumerate(infos):
        if info.pts in want:
            k = max(0, bisect.bisect_right(keys, q) - 1)
            if info.pts < infos[keys[k]].pts and k > 0:
                k -= 1  # a leading picture of an open GOP refers back into the previous GOP
            for j in range(keys[k], q + 1):
                needed[j] = True
    cc = stream.codec_context
    kept: dict[int, av.VideoFrame] = {}

    def collect(frames) -> None:
        for frame in frames:
            if frame.pts in want:
                kept[want[frame.pts]] = frame

    in_segment = False
    for j, p in enumerate(packets):
        if not needed[j]:
            if in_segment:  # drain the segment's reordered frames, then start clean at the next key
                collect(_drain(stream))
                cc.flush_buffers()
                in_segment = False
            if j > len(needed) or not any(needed[j:]):
                break
            continue
        in_segment = True
        cc.skip_frame = "DEFAULT" if infos[j].pts in want else "NONREF"
        try:
            collect(stream.decode(p))
        except av.error.FFmpegError:
            pass
    cc.skip_frame = "DEFAULT"
    collect(_drain(stream))
    return kept


def _decode_selective(container, stream, scan: PacketScan, span, choose: Chooser, needs_types: bool):
    """Choose from the packet scan and decode only what the chosen frames need.

    The packets give the frame count and presentation order. A sampler that needs frame types
    gets them from an intra-only pass (the I frames are exactly the frames it outputs; every
    other frame is reported as "P"). Then only the chosen frames' dependencies are decoded.
    Returns None when this does not apply (no or repeated timestamps) or a chosen frame did
    not come out; the caller then decodes everything.
    """
    infos = scan.infos
    if any(i.pts is None for i in infos) or len({i.pts for i in infos}) != len(infos):
        return None
    shown = _shown_pts(infos, stream, span)
    frames = predict_frames(infos, stream, span)
    kept: dict[int, av.VideoFrame] = {}
    if needs_types:
        intra, kept = _intra_pass(stream, _packets_again(container, stream, span, scan), {p: n for n, p in enumerate(shown)})
        frames = [FrameInfo(f.index, f.time, "I" if f.index in intra else "P") for f in frames]
    chosen = list(choose(frames))
    kept = {i: kept[i] for i in set(chosen) if i in kept}
    want = {shown[i]: i for i in set(chosen) if i not in kept}
    if want:
        kept.update(_decode_needed(stream, infos, _packets_again(container, stream, span, scan), want))
    if set(chosen) - kept.keys():
        return None
    if not needs_types:  # report the true type of the frames that were decoded
        frames = [FrameInfo(f.index, f.time, _PICT_TYPE.get(int(kept[f.index].pict_type), "?")) if f.index in kept else f
                  for f in frames]
    rotation = int(round(kept[chosen[0]].rotation or 0)) if chosen else 0
    return frames, chosen, kept, rotation


def _drain(stream) -> list:
    try:
        return list(stream.decode(None))
    except av.error.FFmpegError:
        return []


def decode_chosen(
    source,
    choose: Chooser,
    span: Span | None = None,
    max_side: int = 1280,
    threads: int = 1,
    needs_types: bool = True,
) -> DecodedFrames:
    """Return the frames `choose` picks from the video's frame list, decoding as little as can be.

    With one decoder thread (the default) the frame list comes from the packet scan, frame
    types (when `needs_types`) from an intra-only pass, and only the chosen frames'
    dependencies are decoded. Otherwise, or when that shortcut cannot find a chosen frame,
    every frame is decoded once (and a missed frame found by a second decode).
    A span is cut to the video's end; one that misses the video raises RecordError.
    """
    container, stream = open_video(source)
    try:
        _configure_decoder(stream, threads)
        scan = read_packets(container, stream, span)
        if not scan.infos:
            raise RecordError("empty: no video packets" + (" in span" if span else ""))
        if span is not None:
            span = fit_span(container, stream, scan, span)
        if threads == 1:
            selective = _decode_selective(container, stream, scan, span, choose, needs_types)
            if selective is not None:
                frames, chosen, kept, rotation = selective
                images = {i: upright_bgr(kept[i], rotation, max_side) for i in sorted(set(chosen))}
                return DecodedFrames(_meta(container, stream, frames, rotation), frames, chosen, images, span=span)
            container.seek(0, stream=stream, backward=True)
            stream.codec_context.flush_buffers()
            scan = read_packets(container, stream, span)
        predicted = set(choose(predict_frames(scan.infos, stream, span)))
        packets = _packets_again(container, stream, span, scan)
        frames, kept, rotation = _decode_span(stream, packets, span, predicted, threads)
        if not frames:
            raise RecordError("undecodable: no frame decoded" + (" in span" if span else ""))
        chosen = list(choose(frames))
        missing = set(chosen) - kept.keys()
        if missing:
            kept.update(_redecode(container, stream, span, missing, threads))
            if set(chosen) - kept.keys():
                raise RecordError("undecodable: frames differ between two decodes")
        images = {i: upright_bgr(kept[i], rotation, max_side) for i in sorted(set(chosen))}
        return DecodedFrames(_meta(container, stream, frames, rotation), frames, chosen, images, bool(missing), span)
    finally:
        container.close()


def scan_video(data: bytes) -> VideoMeta:
    """Check that bytes hold a video whose packets read to the end, without decoding."""
    container, stream = open_video(io.BytesIO(data))
    try:
        scan = read_packets(container, stream, None)
        if not scan.infos:
            raise RecordError("empty: no video packets")
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1e6
        else:
            duration = len(scan.infos) / _fps(stream)
        rotation = first_frame_rotation(stream, _packets_again(container, stream, None, scan))
        cc = stream.codec_context
        w, h = (cc.height, cc.width) if (rotation // 90) % 2 else (cc.width, cc.height)
        return VideoMeta(w, h, round(_fps(stream), 6), round(duration, 6), len(scan.infos), cc.name, rotation)
    finally:
        container.close()


def first_frame_rotation(stream, packets) -> int:
    """Rotation of the first decodable frame: decodes only up to that frame."""
    try:
        for p in packets:
            for frame in stream.decode(p):
                return (int(round(frame.rotation or 0)) // 90 % 4) * 90
    except av.error.FFmpegError:
        pass
    return 0
