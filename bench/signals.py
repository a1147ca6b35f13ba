#!/usr/bin/env python
"""Signals benchmark: what the json's `signals` add to `--type un` and `--type kf` (issue 13).

    .venv/bin/python bench/signals.py           # ~4 min on 2 cores, plus ~2 min the first time to make the videos
    .venv/bin/python bench/signals.py --quick   # smoke run on two small videos

Videos: --videos H.264 videos of --seconds at --size (default 8 x 10 s 1280x720, 25 fps, GOP
2 s, 2 B-frames) made with tests.synth, cached under OUT/clips/videos/ (shared with
bench/clips.py). Runs, each a whole `pack.py --workers 1` command (one core) on all of them,
interleaved (the order of `on` and `off` swapped every round), best of --repeat:

  un on / un off   --type un --num_frames N   with the signals (the default) / --no_signals
  kf on / kf off   --type kf                  with the signals / --no_signals

Time per video is the `seconds` pack.py reports itself (from its flags parsed to its summary:
interpreter start-up and imports left out) over the videos. Target: `on` at most --target (1.10)
times `off`, for un and kf. Beside it, less exposed to other load: the CPU-time ratio, and
`signals alone`, compute_signals timed in this process on the same frames (decoded once, best
of 3) as a share of `off`'s time per video. Afterwards each pair of outputs is compared: the same
members byte for byte except the json, whose only difference must be `signals` (`wrong` column).

Output: a table and ratios with PASS/FAIL on stdout; figures in OUT/signals.json
(OUT/signals-quick.json). Exit status: 0 every ratio within the target and no output wrong, 1
otherwise. The machine may be shared: `busy` (cpu / wall, ~1 undisturbed) and the load
average tell whether a run lost its core.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/tokenize.py

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

REPO = os.path.dirname(_HERE)
sys.path.insert(0, REPO)

import cv2  # noqa: E402

from bench.clips import ensure_videos, size, timed_pack, video_spec  # noqa: E402
from vdp.io.shards import iter_samples, list_tars  # noqa: E402
from vdp.media.signals import compute_signals  # noqa: E402
from vdp.media.video import decode_chosen  # noqa: E402
from vdp.pack.samplers import SAMPLERS, SamplerOptions  # noqa: E402

PACK = os.path.join(REPO, "pack.py")
TYPES = ("un", "kf")
SWITCHES = {"on": [], "off": ["--no_signals"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/signals.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: two small 4 s videos, one round")
    p.add_argument("--out", default=os.path.join(REPO, "bench_out"), help="videos, shards and signals.json go here")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of every video")
    p.add_argument("--size", type=size, default=(1280, 720), help="WxH (default 1280x720)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop_seconds", type=float, default=2.0)
    p.add_argument("--bframes", type=int, default=2)
    p.add_argument("--num_frames", type=int, default=16, help="un: frames per video")
    p.add_argument("--repeat", type=int, default=3, help="rounds of the four commands; the best of each counts")
    p.add_argument("--target", type=float, default=1.10, help="largest on/off ratio that passes")
    return p


def apply_quick(a: argparse.Namespace) -> None:
    a.videos, a.seconds, a.size, a.repeat = 2, 4.0, (320, 180), 1


# --- runs ---------------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float  # the whole command
    cpu: float  # user+sys of the command and its worker
    seconds: float  # what pack.py reports: from its flags parsed to its summary


def run_pack(manifest: str, save_path: str, args: list[str]) -> Run:
    timing, stdout = timed_pack(manifest, save_path, args, "bench/signals.py")
    found = re.search(r"seconds=([0-9.]+)", stdout)
    if not found:
        raise SystemExit(f"bench/signals.py: pack.py {' '.join(args)} printed no summary")
    return Run(timing.wall, timing.cpu, float(found.group(1)))


def type_args(kind: str, a: argparse.Namespace) -> list[str]:
    return ["--type", "un", "--num_frames", str(a.num_frames)] if kind == "un" else ["--type", "kf"]


def rounds(a: argparse.Namespace, manifest: str, work: str) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {f"{k} {s}": [] for k in TYPES for s in SWITCHES}
    for r in range(a.repeat):
        order = list(SWITCHES) if r % 2 == 0 else list(reversed(SWITCHES))  # neither side always goes first
        for kind in TYPES:
            for switch in order:
                name = f"{kind} {switch}"
                print(f"  round {r + 1}/{a.repeat}: {name} ...", flush=True)
                folder = os.path.join(work, name.replace(" ", "-"))
                runs[name].append(run_pack(manifest, folder, type_args(kind, a) + SWITCHES[switch]))
    return runs


def signals_alone_ms(videos: list[str], kind: str, a: argparse.Namespace) -> float:
    """compute_signals' own time per video (ms) on the frames pack.py keeps, best of 3 per video."""
    cv2.setNumThreads(1)  # as in a pack.py worker
    sampler, opts = SAMPLERS[kind], SamplerOptions(num_frames=a.num_frames)
    total = 0.0
    for path in videos:
        decoded = decode_chosen(path, lambda frames: sampler.choose(frames, opts), needs_types=sampler.needs_types)
        images = [decoded.images[i] for i in decoded.chosen]
        times = [decoded.frames[i].time for i in decoded.chosen]
        compute_signals(images, times)  # the first call pays OpenCV's one-off set-up
        took = []
        for _ in range(3):
            t0 = time.perf_counter()
            compute_signals(images, times)
            took.append(time.perf_counter() - t0)
        total += min(took)
    return 1000 * total / len(videos)


# --- checking the outputs -------------------------------------------------------------------


def members_of(folder: str) -> dict[str, dict[str, bytes]]:
    return {s.key: s.members for tar in list_tars(folder) for s in iter_samples(tar)}


def wrong_samples(on: str, off: str) -> int:
    """Samples whose `on` output is not the `off` output plus a `signals` entry."""
    with_signals, without = members_of(on), members_of(off)
    wrong = len(set(with_signals) ^ set(without))
    for key in set(with_signals) & set(without):
        a, b = dict(with_signals[key]), dict(without[key])
        doc_a, doc_b = json.loads(a.pop("json")), json.loads(b.pop("json"))
        signals = doc_a.pop("signals", None)
        ok = a == b and doc_a == doc_b and "signals" not in doc_b and isinstance(signals, dict)
        ok = ok and len(signals.get("phash", [])) == len(doc_b["image"])
        wrong += not ok
    return wrong


# --- report ---------------------------------------------------------------------------------


@dataclass
class Row:
    run: str
    videos: int
    wall: float
    cpu: float
    seconds: float
    ms_per_video: float
    wrong: int


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


def print_table(rows: list[Row]) -> None:
    head = f"{'run':<7} {'videos':>6} {'wall s':>7} {'cpu s':>7} {'busy':>5} {'pack s':>7} {'ms/video':>9} {'wrong':>5}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.run:<7} {r.videos:>6} {r.wall:>7.2f} {r.cpu:>7.2f} {r.cpu / r.wall:>5.2f} {r.seconds:>7.2f}"
              f" {r.ms_per_video:>9.1f} {r.wrong:>5}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.quick:
        apply_quick(a)
    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    work = os.path.join(a.out, "signals")
    videos = ensure_videos(os.path.join(a.out, "clips", "videos"), a.videos, video_spec(a))
    manifest = os.path.join(work, "videos.jsonl")
    os.makedirs(work, exist_ok=True)
    with open(manifest, "w") as f:
        f.writelines(json.dumps({"video_path": v, "value": f"video {i}"}) + "\n" for i, v in enumerate(videos))
    print(f"{a.videos} x {a.seconds:g} s {a.size[0]}x{a.size[1]} H.264 ({a.fps} fps, GOP {a.gop_seconds:g} s, "
          f"{a.bframes} B-frames); pack.py --workers 1, best of {a.repeat}", flush=True)  # fmt: skip
    runs = rounds(a, manifest, work)
    print("checking the outputs ...", flush=True)
    wrong = {k: wrong_samples(os.path.join(work, f"{k}-on"), os.path.join(work, f"{k}-off")) for k in TYPES}
    table = []
    for name, timings in runs.items():
        b = best(timings)
        table.append(Row(name, a.videos, round(b.wall, 2), round(b.cpu, 2), b.seconds,
                         round(1000 * b.seconds / a.videos, 1), wrong[name.split()[0]]))  # fmt: skip
    load_end = round(os.getloadavg()[0], 2)
    by = {r.run: r for r in table}
    ratios = {k: round(by[f"{k} on"].seconds / by[f"{k} off"].seconds, 3) for k in TYPES}
    cpu_ratios = {k: round(by[f"{k} on"].cpu / by[f"{k} off"].cpu, 3) for k in TYPES}
    alone = {k: round(signals_alone_ms(videos, k, a), 2) for k in TYPES}
    passed = all(v <= a.target for v in ratios.values()) and not any(wrong.values())
    print()
    print_table(table)
    print("ratios (time per video, signals on / off): "
          + ", ".join(f"{k} = {v:.3f}x {'PASS' if v <= a.target else 'FAIL'} (<= {a.target:.2f})" for k, v in ratios.items()))
    print("cpu ratios (whole command, on / off): " + ", ".join(f"{k} = {v:.3f}x" for k, v in cpu_ratios.items()))
    print("signals alone (in process, same frames): " + ", ".join(
        f"{k} = {v:.1f} ms/video = {100 * v / by[f'{k} off'].ms_per_video:.1f}% of off" for k, v in alone.items()))
    print(f"note: load avg 1 min {load_start} at start, {load_end} at end; busy = cpu / wall (one core: ~1 when undisturbed)")
    if a.quick:
        print("note: --quick uses two tiny videos; its figures are a smoke test")
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "runs": [asdict(r) for r in table],
        "all_runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "signals_alone_ms_per_video": alone,
        "passed": passed,
        "load_avg": [load_start, load_end],
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    path = os.path.join(a.out, "signals-quick.json" if a.quick else "signals.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results: {path} (bench took {result['bench_seconds']} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
