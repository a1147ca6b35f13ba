"""check_pair's dump: chosen samples written as files for a human, and one self-contained report.html.

The report embeds a small thumbnail of every frame as a data URI, so it shows its pictures
wherever the file is opened or copied; each thumbnail links to the full-size frame written
beside it (`samples/...`). The whole scan's counts and per-reason error counts head the page.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from vdp.index.scan import Pick
from vdp.index.validate import VIDEO_EXTS
from vdp.io import storage
from vdp.io.tario import write_bytes_atomically

THUMB_HEIGHT = 96


@dataclass
class Frame:
    file: str  # relative to the report
    thumb: str  # data URI, "" when the bytes do not decode
    label: str


@dataclass
class Dumped:
    number: int
    tar: str
    key: str
    kind: str
    reason: str
    text: str  # caption (stage 1) or decoded windows (stage 2)
    frames: list[Frame] = field(default_factory=list)
    video: str = ""  # relative path of a video-only sample's file


def thumbnail(data: bytes) -> str:
    """A JPEG data URI of the image scaled to THUMB_HEIGHT, or "" when it does not decode."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return ""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, round(w * THUMB_HEIGHT / h)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def _doc(pick: Pick) -> dict:
    if pick.facts is not None:
        return pick.facts.doc
    try:
        doc = json.loads(pick.members.get("json", b""))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _image_sources(pick: Pick) -> list[str]:
    """Stage 2: the source key of the packed sample each image block sits in, in image order."""
    facts = pick.facts
    if facts is None or facts.kind != "sequence":
        return []
    bounds = np.cumsum(facts.doc["sample_lengths"])
    return [str(facts.doc["sources"][i]) for i in np.searchsorted(bounds, facts.blocks, "right")]


def _frame_labels(pick: Pick, doc: dict, names: list[str]) -> list[str]:
    """Stage 1: frame index, time and I/P type; stage 2: which packed sample each image belongs to."""
    frames = {f.get("name"): f for f in doc.get("frames", []) if isinstance(f, dict)}
    if frames:
        return [
            f"#{frames[n].get('index')} · {frames[n].get('t')}s · {frames[n].get('type')}" if n in frames else n
            for n in names
        ]
    sources = _image_sources(pick)
    return [f"image {n}" + (f" · {sources[i]}" if i < len(sources) else "") for i, n in enumerate(names)]


def _text_of(pick: Pick, doc: dict) -> str:
    if pick.text:
        parts = []
        for n, w in enumerate(pick.text):
            parts.append(
                f"[packed sample {n}: {w['source']}]\n{w['first']}" + (f"\n  …\n{w['last']}" if w["last"] else "")
            )
        return "\n\n".join(parts)
    turns = doc.get("conversations")
    if isinstance(turns, list) and any(_asks_something(t) for t in turns):
        # instruction data: every turn in order, as stage 2 will tokenize them
        return "\n\n".join(f"{t.get('from')}: {t.get('value')}" for t in turns if isinstance(t, dict))
    if isinstance(doc.get("caption"), str):
        return doc["caption"]
    return ""


_FRAME_PLACEHOLDERS = re.compile(r"<image>|<[IP]image>#?\d*")


def _asks_something(turn) -> bool:
    """A human turn with words besides frame placeholders (a caption sample's prompt has none)."""
    if not isinstance(turn, dict) or turn.get("from") != "human":
        return False
    return bool(_FRAME_PLACEHOLDERS.sub("", str(turn.get("value", ""))).strip())


def dump_pick(pick: Pick, number: int, out_dir: str) -> Dumped:
    """Write one sample's members under out_dir/samples/NNN_key/ and describe it for the report."""
    folder = os.path.join("samples", f"{number:03d}_{pick.key}".replace(os.sep, "_"))
    storage.makedirs(storage.join(out_dir, folder))
    doc = _doc(pick)
    kind = pick.facts.kind if pick.facts else "bad"
    text = _text_of(pick, doc)
    dumped = Dumped(number, pick.tar, pick.key, kind, pick.reason, text)
    names = [e[: -len(".jpg")] for e in pick.members if e.endswith(".jpg")]
    for name, label in zip(names, _frame_labels(pick, doc, names)):
        rel = os.path.join(folder, f"{name}.jpg")
        data = pick.members[f"{name}.jpg"]
        write_bytes_atomically(storage.join(out_dir, rel), data)
        dumped.frames.append(Frame(rel, thumbnail(data), label))
    for ext, data in pick.members.items():
        if ext.lower() in VIDEO_EXTS:
            dumped.video = os.path.join(folder, f"video.{ext}")
            write_bytes_atomically(storage.join(out_dir, dumped.video), data)
    if "json" in pick.members:
        write_bytes_atomically(storage.join(out_dir, folder, "sample.json"), pick.members["json"])
    write_bytes_atomically(storage.join(out_dir, folder, "text.txt"), text.encode() + b"\n")
    return dumped


# --- the page ---------------------------------------------------------------------------------

_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
td.count{text-align:right}.sample{border:1px solid #ccc;margin:1em 0;padding:.5em}
.bad{border-color:#c00}.reason{color:#c00;font-weight:bold}.frames{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;font-size:11px;text-align:center}pre{white-space:pre-wrap;background:#f6f6f6;padding:.4em}
.nothumb{display:inline-block;width:96px;height:96px;background:#eee;line-height:96px}
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _totals_html(totals: dict) -> str:
    rows = "".join(
        f'<tr data-field="{_esc(k)}"><th>{_esc(k)}</th><td class="count">{_esc(f"{v:.2f}" if isinstance(v, float) else v)}</td></tr>'
        for k, v in totals.items()
    )
    return f'<table id="totals">{rows}</table>'


def _reasons_html(reasons: dict) -> str:
    if not reasons:
        return '<p id="no-errors">No errors: every tar and sample passed.</p>'
    ordered = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = "".join(f'<tr data-reason="{_esc(r)}"><td>{_esc(r)}</td><td class="count">{n}</td></tr>' for r, n in ordered)
    return f'<table id="reasons"><tr><th>reason</th><th>count</th></tr>{rows}</table>'


def _frame_html(f: Frame) -> str:
    img = f'<img src="{f.thumb}" alt="{_esc(f.label)}">' if f.thumb else '<span class="nothumb">undecodable</span>'
    return f'<figure><a href="{_esc(f.file)}">{img}</a><figcaption>{_esc(f.label)}</figcaption></figure>'


def _sample_html(d: Dumped) -> str:
    reason = f'<div class="reason">{_esc(d.reason)}</div>' if d.reason else ""
    video = f'<p>video: <a href="{_esc(d.video)}">{_esc(d.video)}</a></p>' if d.video else ""
    frames = "".join(_frame_html(f) for f in d.frames)
    return (
        f'<div class="sample{" bad" if d.reason else ""}" data-key="{_esc(d.key)}">'
        f"<h3>{d.number}. {_esc(d.tar)} / {_esc(d.key)} <small>({_esc(d.kind)})</small></h3>{reason}"
        f'<div class="frames">{frames}</div>{video}<pre>{_esc(d.text)}</pre></div>'
    )


def render_report(title: str, totals: dict, reasons: dict, dumped: list[Dumped]) -> str:
    samples = "".join(_sample_html(d) for d in dumped) or "<p>No samples dumped.</p>"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{_STYLE}</style></head>'
        f"<body><h1>{_esc(title)}</h1><h2>Scan</h2>{_totals_html(totals)}<h2>Errors by reason</h2>{_reasons_html(reasons)}"
        f"<h2>Samples ({len(dumped)})</h2>{samples}</body></html>\n"
    )


def write_report(out_dir: str, title: str, totals: dict, reasons: dict, picks: list[Pick]) -> str:
    """Dump the picks and write out_dir/report.html (a folder or an s3:// / oss:// prefix); returns its path."""
    dumped = [dump_pick(p, n, out_dir) for n, p in enumerate(picks)]
    path = storage.join(out_dir, "report.html")
    write_bytes_atomically(path, render_report(title, totals, reasons, dumped).encode())
    return path
