"""Clip spans: when a record's [start, end) in seconds can be used on its video, and how.

A span is checked twice. On its own, before the video is opened: both ends finite, start not
negative, end after start. Then against the video's end (the end of its last frame, found by
the demuxer): a span that starts at or after it is an error, one that runs past it is cut
there. Every failure is a `RecordError` whose reason starts with "bad span", so the errors
file groups them together. Times count from the video's first frame, as frame times do.
"""

from __future__ import annotations

import math

from vdp.errors import RecordError

# A requested span before it meets the video: (start, end or None for "to the end").
Span = tuple[float, float | None]


def span_text(start: float, end: float | None) -> str:
    return f"{start}..{'end' if end is None else end}"


def requested_span(start, end) -> Span | None:
    """The record's span as floats, None for a whole-video record; RecordError when unusable.

    The loaders already refuse most bad spans, but a record may come from anywhere (and JSON
    lets NaN and Infinity through), so the rules are enforced here too.
    """
    if start is None and end is None:
        return None
    s = 0.0 if start is None else float(start)
    e = None if end is None else float(end)
    text = span_text(s, e)
    if not math.isfinite(s) or (e is not None and not math.isfinite(e)):
        raise RecordError(f"bad span: {text} is not a pair of finite numbers")
    if s < 0:
        raise RecordError(f"bad span: {text} starts before 0")
    if e is not None and e < s:
        raise RecordError(f"bad span: {text} ends before it starts")
    if e is not None and e == s:
        raise RecordError(f"bad span: {text} is empty")
    return s, e


def clamp_span(span: Span, video_end: float) -> tuple[float, float]:
    """The span cut to the video's end; RecordError when it starts at or after that end."""
    start, end = span
    if start >= video_end:
        raise RecordError(f"bad span: {span_text(start, end)} starts at or after the video's end ({video_end:.2f} s)")
    return start, video_end if end is None else min(end, video_end)


def no_frame_in(span: Span) -> RecordError:
    """The error for a span inside the video that still holds no frame (shorter than a frame)."""
    return RecordError(f"bad span: {span_text(*span)} holds no frame")
