"""check_pair's dump: chosen samples written as files for a human, and one self-contained report.html.

The report embeds a small thumbnail of every frame as a data URI, so it shows its pictures
wherever the file is opened or copied; each thumbnail links to the full-size frame written
beside it (`samples/...`). The whole scan's counts and per-reason error counts head the page,
then a histogram per metric of the sound samples (vdp.index.histograms, drawn as inline SVG by
vdp.index.plots) with the filter thresholds stage 1 used, then, given a NAME.duplicates.jsonl
(vdp-dedup), its first groups with each member's first frame side by side.
"""

from __future__ import annotations

import base64
import glob
import html
import io
import json
import os
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from vdp.errors import RecordError, UsageError
from vdp.index.histograms import Distributions
from vdp.index.plots import histogram_svg, summary_line
from vdp.index.scan import Pick, TarDamage, TarScan, iter_placed, merge_distributions
from vdp.index.validate import VIDEO_EXTS
from vdp.io import storage
from vdp.io.tario import write_bytes_atomically
from vdp.io.tarslices import InputTar, StoreFault, member_limit
from vdp.media.jpeg import decode_jpeg

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
    img = decode_jpeg(data)
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


# --- the filter thresholds stage 1 used ---------------------------------------------------------


def pack_thresholds(tars: list[str]) -> dict[str, list[float]]:
    """Rule -> the thresholds of the filters in the stage-1 flags beside the tars
    (`FOLDER/.pack/flags-{machine_id}.json`, vdp.cli.pack); a flags file that does not read
    only costs its lines on the plots."""
    found: dict[str, set[float]] = {}
    for path in _flags_files(sorted({storage.dirname(t) for t in tars})):
        try:
            filters = json.loads(storage.read_bytes(path))["options"]["filters"]
            for f in filters:
                found.setdefault(str(f["rule"]), set()).add(float(f["threshold"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {rule: sorted(values) for rule, values in sorted(found.items())}


def _flags_files(folders: list[str]) -> list[str]:
    out = []
    for folder in folders:
        state = storage.join(folder, ".pack")
        if not storage.is_remote(folder):
            out += sorted(glob.glob(os.path.join(glob.escape(state), "flags-*.json")))
            continue
        try:
            out += [p for p in storage.list_files(state, ".json") if storage.basename(p).startswith("flags-")]
        except Exception:  # a listing the store refuses: the plots go without threshold lines
            continue
    return out


# --- duplicate groups (vdp-dedup's NAME.duplicates.jsonl) ---------------------------------------


@dataclass
class Member:
    tar: str
    key: str
    distance: float | None = None  # None: the sample the group keeps
    matched: float | None = None
    thumb: str = ""  # the first frame, as a data URI
    note: str = ""  # why there is no thumbnail


@dataclass
class Duplicates:
    source: str  # the file read
    groups: list[list[Member]]  # the first groups of the file, each kept sample first
    total_groups: int = 0
    total_duplicates: int = 0


def read_duplicates(path: str, limit: int) -> Duplicates:
    """The first `limit` groups of a duplicates file (one `{"group", "samples": [kept, duplicates…]}`
    a line, vdp.index.dedup.group_rows) and its totals; UsageError when it cannot be read."""
    dups = Duplicates(path, [])
    try:
        lines = storage.open_text(path)
    except FileNotFoundError:
        raise UsageError(f"--duplicates: no such file: {path}") from None
    with lines:
        for number, line in enumerate(lines, 1):
            try:
                if line.strip():
                    _add_group(dups, json.loads(line), limit)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UsageError(f"--duplicates: {path} line {number} is not a duplicates row: {e}") from None
    return dups


def _add_group(dups: Duplicates, row: dict, limit: int) -> None:
    samples = row["samples"]
    if not isinstance(samples, list) or len(samples) < 2:
        raise ValueError("a group needs a kept sample and at least one duplicate")
    dups.total_groups += 1
    dups.total_duplicates += len(samples) - 1
    if len(dups.groups) < limit:
        members = [Member(str(s["tar"]), str(s["key"]), _number_or_none(s, "distance"), _number_or_none(s, "matched"))
                   for s in samples]  # fmt: skip
        members[0].distance = members[0].matched = None
        dups.groups.append(members)


def _number_or_none(sample: dict, name: str) -> float | None:
    return None if sample.get(name) is None else float(sample[name])


def add_thumbnails(dups: Duplicates, dataset_path: str) -> None:
    """Each shown member's first frame as a thumbnail: one pass over each tar holding one, read
    as the scan reads (a tar that does not read leaves a note instead)."""
    wanted: dict[str, dict[str, list[Member]]] = {}
    for group in dups.groups:
        for m in group:
            wanted.setdefault(_tar_path(m.tar, dataset_path), {}).setdefault(m.key, []).append(m)
    for path, by_key in sorted(wanted.items()):
        _thumbnails_of(path, by_key)


def _tar_path(tar: str, dataset_path: str) -> str:
    """The duplicates file names tars as dedup opened them; a relative one that is not there
    is taken as relative to --dataset_path."""
    if storage.is_remote(tar) or os.path.isabs(tar) or os.path.exists(tar):
        return tar
    return storage.join(dataset_path, tar)


def _thumbnails_of(path: str, by_key: dict[str, list[Member]]) -> None:
    left = set(by_key)
    damage: list[TarDamage] = []
    try:
        with InputTar(path, member_limit) as tar:
            for placed in iter_placed(tar.file, damage):
                if placed.sample.key in left:
                    left.discard(placed.sample.key)
                    thumb, note = _first_frame(placed.sample.members)
                    for m in by_key[placed.sample.key]:
                        m.thumb, m.note = thumb, note
                if not left:
                    break
    except (OSError, StoreFault) as e:
        damage.append(TarDamage(f"unreadable tar: {e}", ""))
    for key in left:
        for m in by_key[key]:
            m.note = "unreadable tar" if damage else "not in the tar"


def _first_frame(members: dict[str, bytes]) -> tuple[str, str]:
    """(thumbnail of the first image the json lists, else of the first JPEG member; note when none)."""
    try:
        names = json.loads(members.get("json", b"{}")).get("image") or []
    except (ValueError, AttributeError):
        names = []
    first = f"{names[0]}.jpg" if names and isinstance(names[0], str) else ""
    data = members.get(first) or next((v for k, v in members.items() if k.endswith(".jpg")), None)
    video = next((v for k, v in members.items() if k.lower() in VIDEO_EXTS), None)
    if data is None and video is not None:
        data = _video_still(video)  # video-only: its first frame, decoded here
    if data is None:
        return "", "no frame"
    thumb = thumbnail(data)
    return thumb, "" if thumb else "undecodable"


def _video_still(data: bytes) -> bytes | None:
    """A video's first frame, upright, as JPEG bytes; None when it does not decode."""
    import av

    from vdp.media.video import open_video, upright_bgr

    try:
        container, stream = open_video(io.BytesIO(data))
        with container:
            for frame in container.decode(stream):
                ok, buf = cv2.imencode(".jpg", upright_bgr(frame, round(frame.rotation or 0), 0))
                return buf.tobytes() if ok else None
    except (RecordError, av.error.FFmpegError, ValueError):
        return None
    return None


# --- what the report shows besides the dumped samples -------------------------------------------


@dataclass
class Figures:
    dists: Distributions | None = None
    thresholds: dict[str, list[float]] = field(default_factory=dict)
    duplicates: Duplicates | None = None


def figures_of(
    scans: list[TarScan], tars: list[str], max_len: int, dataset_path: str, duplicates: Duplicates | None = None
) -> Figures:
    """The scan's histograms, stage 1's thresholds (looked for only when a plot can show them)
    and the duplicate groups with their thumbnails."""
    dists = merge_distributions(scans, max_len)
    with_rules = any(m.rules for m, _ in dists.shown())
    if duplicates is not None:
        add_thumbnails(duplicates, dataset_path)
    return Figures(dists, pack_thresholds(tars) if with_rules else {}, duplicates)


# --- the page ---------------------------------------------------------------------------------

_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
td.count{text-align:right}.sample{border:1px solid #ccc;margin:1em 0;padding:.5em}
.bad{border-color:#c00}.reason{color:#c00;font-weight:bold}.frames{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;font-size:11px;text-align:center}pre{white-space:pre-wrap;background:#f6f6f6;padding:.4em}
.nothumb{display:inline-block;width:96px;height:96px;background:#eee;line-height:96px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{border:1px solid #ddd;padding:4px}
.plot text{font-family:sans-serif;fill:#222}.group{border:1px solid #ccc;margin:1em 0;padding:.5em}
.group figure{max-width:180px;word-break:break-all}.kept{outline:3px solid #2a7}
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


def _plots_html(figures: Figures) -> str:
    shown = figures.dists.shown() if figures.dists else []
    if not shown:
        return '<p id="no-plots">No sound samples to plot.</p>'
    plots = []
    for metric, hist in shown:
        lines = [(rule, t) for rule in metric.rules for t in figures.thresholds.get(rule, ())]
        plots.append(
            f"<figure>{histogram_svg(metric, hist, lines)}<figcaption>{_esc(summary_line(hist))}</figcaption></figure>"
        )
    return f'<div class="plots">{"".join(plots)}</div>'


def _member_html(m: Member) -> str:
    img = f'<img src="{m.thumb}" alt="{_esc(m.key)}">' if m.thumb else f'<span class="nothumb">{_esc(m.note)}</span>'
    what = (
        "kept"
        if m.distance is None
        else f"distance {m.distance:g}" + (f" · matched {m.matched:g}" if m.matched is not None else "")
    )
    return (
        f'<figure class="member{" kept" if m.distance is None else ""}" data-key="{_esc(m.key)}">{img}'
        f"<figcaption>{_esc(what)}<br>{_esc(storage.basename(m.tar))} / {_esc(m.key)}</figcaption></figure>"
    )


def _duplicates_html(dups: Duplicates) -> str:
    head = (
        f'<p id="duplicates-total">{dups.total_groups} groups, {dups.total_duplicates} duplicates in '
        f"{_esc(dups.source)}; the first {len(dups.groups)} shown, the sample each group keeps first.</p>"
    )
    groups = "".join(
        f'<div class="group" data-group="{n}" data-members="{len(g)}"><div class="frames">'
        f"{''.join(_member_html(m) for m in g)}</div></div>"
        for n, g in enumerate(dups.groups)
    )
    return f'<h2>Duplicate groups</h2><div id="duplicates">{head}{groups}</div>'


def render_report(title: str, totals: dict, reasons: dict, dumped: list[Dumped], figures: Figures | None = None) -> str:
    figures = figures or Figures()
    samples = "".join(_sample_html(d) for d in dumped) or "<p>No samples dumped.</p>"
    duplicates = _duplicates_html(figures.duplicates) if figures.duplicates else ""
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{_STYLE}</style></head>'
        f"<body><h1>{_esc(title)}</h1><h2>Scan</h2>{_totals_html(totals)}<h2>Errors by reason</h2>{_reasons_html(reasons)}"
        f"<h2>Distributions</h2>{_plots_html(figures)}{duplicates}"
        f"<h2>Samples ({len(dumped)})</h2>{samples}</body></html>\n"
    )


def write_report(
    out_dir: str, title: str, totals: dict, reasons: dict, picks: list[Pick], figures: Figures | None = None
) -> str:
    """Dump the picks and write out_dir/report.html (a folder or an s3:// / oss:// prefix); returns its path."""
    dumped = [dump_pick(p, n, out_dir) for n, p in enumerate(picks)]
    path = storage.join(out_dir, "report.html")
    write_bytes_atomically(path, render_report(title, totals, reasons, dumped, figures).encode())
    return path
