"""Stage 1: pack dataset annotations + videos into webdataset tar shards.

Each record (one annotation row / clip) becomes one sample keyed by its global index, or one
line of OUT/errors-{machine_id}.jsonl saying why not. Tars are named
shard-{machine_id}-{start}-{end}-{tar_id}.tar and appear only when complete; rerunning the
same command skips finished tars.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial

import vdp.pack.datasets  # noqa: F401 (registers the built-in datasets)
from vdp.cli.common import add_executor_flags, add_plugin_flag, add_run_flags, load_plugins, reports_command_errors
from vdp.errors import EXIT_OK, EXIT_SOME_ERRORS, UsageError, jsonl_bytes, reason_counts
from vdp.io import storage
from vdp.io.debris import remove_stale_partials
from vdp.io.tario import write_bytes_atomically
from vdp.pack.filters import RULES, SIGNAL_RULES, Filter, rule_counts
from vdp.pack.locate import resolve
from vdp.pack.manifest import LOADERS, LoaderOptions, Manifest, Record, fill_captions
from vdp.pack.plan import machine_range, plan_tars
from vdp.pack.samplers import SAMPLERS, SamplerOptions
from vdp.pack.stage import (
    STATE_DIR,
    PackOptions,
    TarResult,
    TarUnit,
    WorkItem,
    fetch_ahead,
    finished_errors,
    finished_filtered,
    init_worker,
    is_done,
    pack_record,
    sidecar_path,
    tar_items,
    write_unit,
)
from vdp.run.accounting import run_about, stats_path, status_path, summary_path
from vdp.run.prefetch import prefetched
from vdp.run.progress import Stopwatch, print_summary, progress_bar
from vdp.run.runner import RunContext, Work, run_units

EXAMPLES = """
examples:
  # 16 uniform frames per video, all records, 2 processes
  python pack.py --dataset jsonl --manifest clips.jsonl --type un --save_path out/ --workers 2

  # keyframes with timestamps, machine 3 of 8 (run the same command with 0..7 on 8 hosts)
  python pack.py --dataset webvid --manifest results_2M_train.csv --video_root /data/webvid \\
      --type kf --save_path out/ --machine_id 3 --total_machine 8

  # every tar a Ray task on a running cluster (ray start on each node first)
  python pack.py --dataset jsonl --manifest s3://bucket/clips.jsonl --type kf --save_path s3://bucket/shards \\
      --executor ray --ray_address auto

  # whole videos, records 1000..1999 only
  python pack.py --dataset jsonl --manifest clips.jsonl --type video-only --save_path out/ --start 1000 --end 2000

exit status: 0 all records packed, 1 some records went to errors-{machine_id}.jsonl, 2 bad usage,
3 an output could not be written (disk full, read-only folder): fix that and rerun.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Pack videos and captions into webdataset tar shards (whole video, uniform frames or keyframes).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default="jsonl", choices=sorted(LOADERS), help="annotation format (default: jsonl)")
    p.add_argument("--manifest", required=True, help="annotation file (jsonl, csv or json, per --dataset)")
    p.add_argument("--type", required=True, choices=["video-only", *sorted(SAMPLERS)], help="what a sample holds")
    p.add_argument("--save_path", required=True, help="output folder for the tars")
    p.add_argument("--video_root", default=None, help="folder relative video paths are under (default: the manifest's folder)")
    p.add_argument("--source", default="path", choices=["path", "url"],
                   help="url: take the dataset's video URL column (webvid's contentUrl) instead of the local layout")
    p.add_argument("--captions", default=None,
                   help="jsonl/csv/tsv of clip_id (or video_id, id) -> caption (or text), for records without one (hd-vila)")
    p.add_argument("--ego4d_pass", default="1", choices=["1", "2", "both"], help="ego4d: narration pass(es) to read")
    p.add_argument("--ego4d_window", type=float, default=4.0, help="ego4d: seconds of video around each narration")
    for col, what in (("video_col", "video path or URL"), ("caption_col", "caption"), ("id_col", "video id"),
                      ("start_col", "clip start (seconds or HH:MM:SS.mmm)"), ("end_col", "clip end")):
        p.add_argument(f"--{col}", default="", help=f"table: the column holding the {what}")
    p.add_argument("--machine_id", type=int, default=0)
    p.add_argument("--total_machine", type=int, default=1)
    p.add_argument("--start", type=int, default=None, help="first record index (overrides the machine split)")
    p.add_argument("--end", type=int, default=None, help="record index to stop before")
    p.add_argument("--samples_per_tar", type=int, default=500)
    p.add_argument("--num_frames", type=int, default=16, help="un: frames per video")
    p.add_argument("--kf_iframes", type=int, default=8, help="kf: I frames at most (the last frame counts)")
    p.add_argument("--kf_total", type=int, default=24, help="kf: frames in all")
    p.add_argument("--time_scale", type=int, default=100, help="kf: timestamps in the prompt run 0..time_scale")
    p.add_argument("--fps", type=float, default=1.0, help="fps: frames per second of video, by presentation time")
    p.add_argument("--max_frames", type=int, default=64,
                   help="fps: frames at most, spread evenly over a longer video (0: no limit)")
    p.add_argument("--max_side", type=int, default=1280, help="longest side of a frame JPEG, aspect kept")
    p.add_argument("--jpeg_quality", type=int, default=95)
    p.add_argument("--backend", default="av", choices=["av", "decord"], help="decoder: PyAV (default) or decord (un only)")
    p.add_argument("--clip_mode", default="copy", choices=["copy", "exact"],
                   help="video-only records with a span: copy (remux from the key frame at or before the start, "
                        "no re-encode) or exact (re-encode exactly the span's frames with libx264)")
    p.add_argument("--decode_threads", type=int, default=1, help="decoder threads per worker (0: FFmpeg's choice)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one video may take before it goes to errors")
    add_executor_flags(p, "tar")
    p.add_argument("--status", default=None, choices=["parquet"],
                   help="parquet: beside each tar, {tar}.status.parquet with one row per record "
                        "(key, source, status packed/error/filtered, reason)")
    add_quality_flags(p)
    add_run_flags(p, "video")
    add_plugin_flag(p, "datasets and samplers")
    return p


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.total_machine < 1 or not 0 <= a.machine_id < a.total_machine:
        p.error(f"--machine_id must be in 0..{a.total_machine - 1} (got {a.machine_id})")
    for flag in ("workers", "samples_per_tar", "num_frames", "kf_iframes", "kf_total", "max_side"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    if a.kf_total < a.kf_iframes:
        p.error("--kf_total must be at least --kf_iframes")
    if not 0 < a.fps < float("inf"):
        p.error("--fps must be a positive number")
    if a.max_frames < 0:
        p.error("--max_frames must be at least 0 (0: no limit)")
    if a.backend == "decord" and a.type != "un":
        p.error("--backend decord works with --type un only (kf needs every frame's picture type, fps exact presentation times)")
    if not 1 <= a.jpeg_quality <= 100:
        p.error("--jpeg_quality must be in 1..100")
    if a.dataset == "table" and not (a.video_col and a.caption_col):
        p.error("--dataset table needs --video_col and --caption_col")
    if a.source == "url" and not LOADERS[a.dataset].urls:
        p.error(f"--source url: the {a.dataset} manifest has no video URL column to read"
                " (YouTube-hosted datasets: download with yt-dlp first, see README)")
    if not a.ego4d_window > 0:
        p.error("--ego4d_window must be positive")
    storage.configure(a.s3_endpoint)
    try:
        if not storage.exists(a.manifest) or storage.isdir(a.manifest):
            p.error(f"manifest not found: {a.manifest}")
        if a.video_root is not None and not storage.is_remote(a.video_root) and not os.path.isdir(a.video_root):
            p.error(f"--video_root is not a folder: {a.video_root}")
        if a.captions is not None and not storage.exists(a.captions):
            p.error(f"--captions file not found: {a.captions}")
    except (PermissionError, OSError) as e:
        p.error(f"cannot reach {a.manifest}: {e}")
    try:
        storage.check_output_folder(a.save_path)
    except UsageError as e:
        p.error(str(e))


# --- quality signals and filters (vdp/media/signals.py, vdp/pack/filters.py) -------------------


def add_quality_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "quality signals and filters",
        "un/kf jsons get `signals` (motion, static_share, sharpness, black_share, shot_changes, phash per frame); "
        "a record a filter rejects is a line of filtered-{machine_id}.jsonl, not a sample",
    )
    on_off = g.add_mutually_exclusive_group()
    on_off.add_argument("--no_signals", action="store_true", help="un/kf: no signals in the json")
    on_off.add_argument("--signals", action="store_true",
                        help="video-only: signals in the json, from --signal_frames frames decoded for them")
    g.add_argument("--signal_frames", type=int, default=4,
                   help="video-only --signals: frames decoded, evenly spaced (default 4)")
    for name, rule in RULES.items():
        g.add_argument(f"--{name}", type=int if name == "min_side" else float, default=None, help=rule.help)


def quality_options(p: argparse.ArgumentParser, a: argparse.Namespace) -> tuple[bool, tuple[Filter, ...]]:
    """Whether to compute the signals, and the filters; a filter on a signal turns video-only's on."""
    filters = tuple(Filter(name, getattr(a, name)) for name in RULES if getattr(a, name) is not None)
    for f in filters:
        if not 0 <= f.threshold < float("inf"):
            p.error(f"--{f.rule} must be a number at least 0")
    if a.min_duration is not None and a.max_duration is not None and a.min_duration > a.max_duration:
        p.error("--min_duration must be at most --max_duration")
    if a.signal_frames < 1:
        p.error("--signal_frames must be at least 1")
    reads_signals = [f"--{f.rule}" for f in filters if f.rule in SIGNAL_RULES]
    if a.type == "video-only":
        return a.signals or bool(reads_signals), filters
    if a.no_signals and reads_signals:
        p.error(f"{reads_signals[0]} reads the signals: drop --no_signals")
    return not a.no_signals, filters


def video_root(args) -> str:
    """The folder relative video paths resolve against."""
    return args.video_root if args.video_root else storage.dirname(args.manifest)


def loader_options(a: argparse.Namespace) -> LoaderOptions:
    return LoaderOptions(a.source, a.ego4d_pass, a.ego4d_window, a.video_col, a.caption_col, a.id_col,
                         a.start_col, a.end_col)


def read_manifest(args, manifest: Manifest) -> tuple[int, int, dict]:
    """This machine's range and its entries: one streaming pass counts, then only the range is parsed."""
    try:
        index = manifest.index()
    except (ValueError, OSError) as e:
        raise UsageError(f"cannot read manifest {args.manifest}: {e}") from None
    lo, hi = machine_range(index.total, args.machine_id, args.total_machine, args.start, args.end)
    entries = fill_captions(list(manifest.entries(index, lo, hi)), args.captions)
    return lo, hi, dict(entries)


def flags_path(save_path: str, machine_id: int) -> str:
    return storage.join(save_path, STATE_DIR, f"flags-{machine_id}.json")


def errors_path(save_path: str, machine_id: int) -> str:
    return storage.join(save_path, f"errors-{machine_id}.jsonl")


def filtered_path(save_path: str, machine_id: int) -> str:
    return storage.join(save_path, f"filtered-{machine_id}.jsonl")


def final_paths(save_path: str, machine_id: int, plans: list) -> list[str]:
    """Every file this machine writes: its tars, their sidecars, stats and status files, its flags,
    errors, filtered and summary files."""
    tars = [storage.join(save_path, p.name) for p in plans]
    sidecars = [sidecar_path(save_path, p) for p in plans]
    accounting = [f(t) for t in tars for f in (stats_path, status_path)]
    return [*tars, *sidecars, *accounting, flags_path(save_path, machine_id), errors_path(save_path, machine_id),
            filtered_path(save_path, machine_id), summary_path(save_path, machine_id)]


def check_same_flags(save_path: str, machine_id: int, flags: dict) -> str:
    """A rerun into the same folder must use the same flags, or resumed tars would mix outputs."""
    path = flags_path(save_path, machine_id)
    if storage.exists(path):
        before = json.loads(storage.read_bytes(path))
        if before != flags:
            diff = sorted(k for k in set(before) | set(flags) if before.get(k) != flags.get(k))
            return f"{save_path} holds machine {machine_id}'s output of a run with other flags ({', '.join(diff)}): use a new --save_path or delete it"
    else:
        write_bytes_atomically(path, json.dumps(flags, sort_keys=True).encode())
    return ""


def pack_units(args, options: PackOptions, units: list[TarUnit], bar) -> list[TarResult]:
    """Write every unfinished tar: its records on the pool, or the whole tar as one Ray task."""
    work = Work(pack_record, args.timeout, init_worker, (options,), items=tar_items,
                combine=partial(write_unit, args.save_path, status=args.status == "parquet"))
    context = RunContext(args.executor, args.workers, args.ray_address, args.s3_endpoint,
                         tuple(os.path.abspath(f) for f in args.plugin))

    def tick(unit: TarUnit, result: TarResult) -> None:
        bar.update(len(unit.items))

    def fetched(items):  # remote videos read ahead by threads of the parent
        return prefetched(items, fetch_ahead, lookahead=4 * args.workers, threads=8)

    return list(run_units(work, units, context, tick if bar else None, fetched))


@reports_command_errors("pack.py")
def main(argv: list[str] | None = None) -> int:
    load_plugins(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    signals, filters = quality_options(parser, args)
    clock = Stopwatch()

    manifest = Manifest(args.manifest, LOADERS[args.dataset], loader_options(args))
    lo, hi, entries = read_manifest(args, manifest)
    plans = plan_tars(lo, hi, args.samples_per_tar, args.machine_id)
    options = PackOptions(
        type=args.type,
        sampler=SamplerOptions(args.num_frames, args.kf_iframes, args.kf_total, args.time_scale, args.fps, args.max_frames),
        max_side=args.max_side,
        jpeg_quality=args.jpeg_quality,
        decode_threads=args.decode_threads,
        backend=args.backend,
        clip_mode=args.clip_mode,
        signals=signals,
        signal_frames=args.signal_frames,
        filters=filters,
    )
    flags = {
        "dataset": args.dataset,
        "manifest": storage.absolute(args.manifest),
        "video_root": args.video_root and storage.absolute(args.video_root),
        "loader": json.loads(json.dumps(manifest.options.__dict__)),
        "captions": args.captions and storage.absolute(args.captions),
        "range": [lo, hi],
        "samples_per_tar": args.samples_per_tar,
        "options": json.loads(json.dumps(options, default=lambda o: o.__dict__)),
    }
    if args.status:  # resumed tars would lack the status files a rerun asks for
        flags["status"] = args.status
    remove_stale_partials(final_paths(args.save_path, args.machine_id, plans))  # what killed runs left
    problem = check_same_flags(args.save_path, args.machine_id, flags)
    if problem:
        raise UsageError(problem)

    todo = [p for p in plans if not is_done(args.save_path, p)]
    root = video_root(args)
    units = [
        TarUnit(p, [WorkItem(i, entries[i], resolve(entries[i].video_path, root) if isinstance(entries[i], Record) else "", root)
                    for i in range(p.start, p.end)])
        for p in todo
    ]
    done_now = sum(len(u.items) for u in units)
    bar = progress_bar(done_now, "video", f"pack {args.type}") if not args.no_progress else None
    written = pack_units(args, options, units, bar)
    if bar:
        bar.close()

    errors = [e for p in plans for e in finished_errors(args.save_path, p)]
    errors_file = errors_path(args.save_path, args.machine_id)
    write_bytes_atomically(errors_file, jsonl_bytes(errors))
    filtered = [f for p in plans for f in finished_filtered(args.save_path, p)]
    if filters:  # there whenever filters ran: empty when they rejected nothing
        write_bytes_atomically(filtered_path(args.save_path, args.machine_id), jsonl_bytes(filtered))
    seconds = clock.seconds
    print_summary(
        "pack",
        {
            "records": hi - lo,
            "packed": (hi - lo) - len(errors) - len(filtered),
            "errors": len(errors),
            "filtered": len(filtered),
            "tars_written": len(written),
            "tars_resumed": len(plans) - len(todo),
            "seconds": seconds,
            "videos_per_s": done_now / seconds if seconds > 0 else 0.0,
        },
        reason_counts(errors) + rule_counts(filtered),
        save_to=summary_path(args.save_path, args.machine_id),
        about=run_about(args, argv),
    )
    also = f"  filtered: {filtered_path(args.save_path, args.machine_id)}" if filters else ""
    print(f"shards: {storage.absolute(args.save_path)}  errors: {errors_file}{also}", flush=True)
    return EXIT_SOME_ERRORS if errors else EXIT_OK

