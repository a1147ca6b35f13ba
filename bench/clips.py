#!/usr/bin/env python
"""Clip benchmark: clips/s per core of `video-only` stream copy, `video-only` exact re-encode
and `--type un`, on the same clip spans of the same videos, side by side in one run.

    .venv/bin/python bench/clips.py           # ~3 min on 2 cores, plus ~4 min the first time to make the videos
    .venv/bin/python bench/clips.py --quick   # smoke run on one small video

Videos: --videos H.264 videos of --seconds at --size (default 3 x 60 s 1280x720, 25 fps, GOP
2 s, 2 B-frames) made with tests.synth (each frame carries its number), cached under OUT/clips/.
Manifest: --clips_per_video spans of --clip_seconds each, spread over every video, none
starting on a key frame. Runs, each a whole `pack.py --workers 1` command (one core), the
three interleaved, best of --repeat:

  copy    --type video-only --clip_mode copy    remux from the key frame at or before the start
  exact   --type video-only --clip_mode exact   decode from that key frame, libx264 veryfast crf 18
  un      --type un --num_frames N              N JPEG frames of each span

plus `start-up`: the copy command on one clip, to tell the command's fixed cost (imports,
pool) from the cost per clip. Afterwards every output is decoded and the numbers painted in
its frames compared with the span (`wrong` column): copy must run without a gap from a frame
at or before the start through the span's last frame, exact must hold exactly the span's
frames, un's JPEGs must be the frames its json names.

Output: a table and ratios on stdout; figures in OUT/clips.json (OUT/clips-quick.json).
Exit status: 0, or 1 when an output was wrong.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/tokenize.py

import argparse  # noqa: E402
import datetime  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

REPO = os.path.dirname(_HERE)
sys.path.insert(0, REPO)

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tests.synth import BITS, VideoSpec, make_video, read_frame_number  # noqa: E402
from vdp.io.shards import iter_samples, list_tars  # noqa: E402
from vdp.media.video import upright_bgr  # noqa: E402

PACK = os.path.join(REPO, "pack.py")
MODES = ("copy", "exact", "un")


def size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/clips.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one small 12 s video, 3 clips")
    p.add_argument("--out", default=os.path.join(REPO, "bench_out"), help="videos, shards and clips.json go here")
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--seconds", type=float, default=60.0, help="length of every video")
    p.add_argument("--size", type=size, default=(1280, 720), help="WxH (default 1280x720)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop_seconds", type=float, default=2.0)
    p.add_argument("--bframes", type=int, default=2)
    p.add_argument("--clips_per_video", type=int, default=8)
    p.add_argument("--clip_seconds", type=float, default=4.0)
    p.add_argument("--num_frames", type=int, default=16, help="un: frames per clip")
    p.add_argument("--repeat", type=int, default=2, help="runs of each command, interleaved; the best counts")
    return p


def apply_quick(a: argparse.Namespace) -> None:
    a.videos, a.seconds, a.size, a.clips_per_video, a.repeat = 1, 12.0, (320, 180), 3, 1


# --- inputs ---------------------------------------------------------------------------------


def video_spec(a: argparse.Namespace) -> VideoSpec:
    w, h = a.size
    return VideoSpec(num_frames=round(a.seconds * a.fps), width=w, height=h, fps=a.fps,
                     gop=round(a.gop_seconds * a.fps), bframes=a.bframes)  # fmt: skip


def _make_one(path: str, spec: VideoSpec) -> None:
    tmp = path[: -len(".mp4")] + ".part.mp4"  # the container comes from the extension
    make_video(tmp, spec)
    os.replace(tmp, path)  # an interrupted run never leaves a short video under the real name


def ensure_videos(folder: str, count: int, spec: VideoSpec) -> list[str]:
    """The videos, generated when not cached (the spec is in the name), a process per core."""
    name = f"{spec.width}x{spec.height}-{spec.fps}fps-g{spec.gop}-b{spec.bframes}-{spec.num_frames}f"
    paths = [os.path.join(folder, f"{i:02d}-{name}.mp4") for i in range(count)]
    todo = [p for p in paths if not os.path.exists(p)]
    if todo:
        os.makedirs(folder, exist_ok=True)
        print(f"generating {len(todo)} of {count} videos in {folder} ...", flush=True)
        with ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
            list(pool.map(_make_one, todo, [spec] * len(todo)))
    return paths


def clip_starts(seconds: float, clip: float, count: int, fps: int) -> list[float]:
    """Starts spread evenly over the video, each a third of a frame off the frame grid's
    seconds (so none lands on a key frame, and none on a frame boundary)."""
    step = (seconds - clip) / count
    return [round((i + 0.5) * step + 0.3 + 1 / (3 * fps), 3) for i in range(count)]


def write_manifest(path: str, videos: list[str], a: argparse.Namespace) -> list[dict]:
    rows = [
        {"video_path": v, "value": f"clip {n} of {os.path.basename(v)}", "start": s, "end": round(s + a.clip_seconds, 3)}
        for v in videos
        for n, s in enumerate(clip_starts(a.seconds, a.clip_seconds, a.clips_per_video, a.fps))
    ]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


# --- runs -------------------------------------------------------------------------------------


@dataclass
class Timing:
    wall: float
    cpu: float  # user+sys of the pack.py command and its workers


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def mode_args(mode: str, a: argparse.Namespace) -> list[str]:
    if mode == "un":
        return ["--type", "un", "--num_frames", str(a.num_frames)]
    return ["--type", "video-only", "--clip_mode", mode]


def timed_pack(manifest: str, save_path: str, args: list[str], prog: str) -> tuple[Timing, str]:
    """One whole `pack.py --workers 1` command into a fresh folder: its timing and stdout."""
    # a fresh folder each time: pack.py would skip (resume) the tars a previous run finished
    shutil.rmtree(save_path, ignore_errors=True)
    cmd = [sys.executable, PACK, "--manifest", manifest, "--save_path", save_path, "--workers", "1",
           "--samples_per_tar", "1000", "--no_progress", *args]  # fmt: skip
    c0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    timing = Timing(time.perf_counter() - t0, children_cpu() - c0)
    if proc.returncode != 0:
        raise SystemExit(f"{prog}: pack.py {' '.join(args)} exited {proc.returncode}: {proc.stderr[-800:]}")
    return timing, proc.stdout


def run_pack(manifest: str, save_path: str, args: list[str]) -> Timing:
    return timed_pack(manifest, save_path, args, "bench/clips.py")[0]


def best(timings: list[Timing]) -> Timing:
    return min(timings, key=lambda t: t.wall)


# --- checking the outputs -------------------------------------------------------------------


def unwrapped(number: int | None, near: int) -> int | None:
    """A painted number (frame number modulo 2**BITS: a minute of video runs past it) as the
    frame number nearest `near`."""
    if number is None:
        return None
    return number + (1 << BITS) * round((near - number) / (1 << BITS))


def painted_numbers(data: bytes, near: int) -> list[int | None]:
    """The frame numbers painted in a video's frames, presentation order (read at a small size)."""
    with av.open(io.BytesIO(data)) as c:
        frames = sorted(c.decode(video=0), key=lambda f: f.pts)
        return [unwrapped(read_frame_number(upright_bgr(f, int(round(f.rotation or 0)), 320)), near) for f in frames]


def span_frames(row: dict, fps: int) -> list[int]:
    first = int(np.ceil(row["start"] * fps - 1e-6))
    last = int(np.ceil(row["end"] * fps - 1e-6)) - 1
    return list(range(first, last + 1))


def clip_is_right(mode: str, numbers: list, wanted: list[int]) -> bool:
    if mode == "exact":
        return numbers == wanted
    # copy: from a frame at or before the start, no gap, through the span's last frame
    return bool(numbers) and numbers == list(range(numbers[0], numbers[0] + len(numbers))) and \
        numbers[0] <= wanted[0] and numbers[-1] >= wanted[-1]  # fmt: skip


def un_is_right(members: dict[str, bytes], wanted: list[int]) -> bool:
    doc = json.loads(members["json"])
    for f in doc["frames"]:
        image = cv2.imdecode(np.frombuffer(members[f"{f['name']}.jpg"], np.uint8), cv2.IMREAD_COLOR)
        if unwrapped(read_frame_number(image), wanted[0]) != wanted[0] + f["index"]:
            return False
    return True


@dataclass
class Output:
    samples: int
    wrong: int
    megabytes: float  # of the tars
    seconds_written: float  # video: length of the clips written (span_written), summed


def check_output(mode: str, folder: str, rows: list[dict], fps: int) -> Output:
    samples = wrong = 0
    written = 0.0
    for tar in list_tars(folder):
        for s in iter_samples(tar):
            samples += 1
            wanted = span_frames(rows[int(s.key)], fps)
            if mode == "un":
                wrong += not un_is_right(s.members, wanted)
                continue
            doc = json.loads(s.members["json"])
            written += doc["span_written"][1] - doc["span_written"][0]
            wrong += not clip_is_right(mode, painted_numbers(s.members["mp4"], wanted[0]), wanted)
    megabytes = sum(os.path.getsize(t) for t in list_tars(folder)) / 1e6
    return Output(samples, wrong, round(megabytes, 2), round(written, 2))


# --- report ---------------------------------------------------------------------------------


@dataclass
class Row:
    run: str
    clips: int
    wall: float
    cpu: float
    clips_per_s_core: float
    clips_per_s_core_net: float | None  # the start-up run's wall taken out
    megabytes: float
    seconds_written: float
    wrong: int


def make_row(mode: str, clips: int, t: Timing, start_up: float, out: Output) -> Row:
    net = t.wall - start_up
    return Row(mode, clips, round(t.wall, 2), round(t.cpu, 2), round(clips / t.wall, 2),
               round(clips / net, 2) if net > 0 else None, out.megabytes, out.seconds_written, out.wrong)  # fmt: skip


def print_table(rows: list[Row], start_up: Timing) -> None:
    head = (f"{'run':<8} {'clips':>5} {'wall s':>7} {'cpu s':>7} {'busy':>5} {'clips/s/core':>12}"
            f" {'w/o start-up':>12} {'MB out':>7} {'s written':>9} {'wrong':>5}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        net = "-" if r.clips_per_s_core_net is None else f"{r.clips_per_s_core_net:.2f}"
        print(f"{r.run:<8} {r.clips:>5} {r.wall:>7.2f} {r.cpu:>7.2f} {r.cpu / r.wall:>5.2f} {r.clips_per_s_core:>12.2f}"
              f" {net:>12} {r.megabytes:>7.2f} {r.seconds_written:>9.1f} {r.wrong:>5}")  # fmt: skip
    print(f"{'start-up':<8} {1:>5} {start_up.wall:>7.2f} {start_up.cpu:>7.2f}   (copy of one clip: the command's fixed cost)")


def ratios(rows: list[Row]) -> dict[str, float]:
    by = {r.run: r for r in rows}
    pairs = [("copy", "un"), ("exact", "un"), ("copy", "exact")]
    return {f"{x} / {y}": round(by[x].clips_per_s_core / by[y].clips_per_s_core, 2) for x, y in pairs}


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.quick:
        apply_quick(a)
    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    work = os.path.join(a.out, "clips")
    videos = ensure_videos(os.path.join(work, "videos"), a.videos, video_spec(a))
    manifest = os.path.join(work, "clips.jsonl")
    rows = write_manifest(manifest, videos, a)
    one = os.path.join(work, "one.jsonl")
    with open(manifest) as f, open(one, "w") as g:
        g.write(f.readline())
    print(f"{len(rows)} clips of {a.clip_seconds:g} s from {a.videos} x {a.seconds:g} s {a.size[0]}x{a.size[1]} "
          f"H.264 ({a.fps} fps, GOP {a.gop_seconds:g} s, {a.bframes} B-frames); pack.py --workers 1", flush=True)  # fmt: skip
    timings: dict[str, list[Timing]] = {m: [] for m in (*MODES, "start-up")}
    for r in range(a.repeat):
        for mode in MODES:
            print(f"  run {r + 1}/{a.repeat}: {mode} ...", flush=True)
            timings[mode].append(run_pack(manifest, os.path.join(work, mode), mode_args(mode, a)))
        timings["start-up"].append(run_pack(one, os.path.join(work, "one"), mode_args("copy", a)))
    start_up = best(timings["start-up"])
    print("checking the outputs ...", flush=True)
    table = [make_row(m, len(rows), best(timings[m]), start_up.wall, check_output(m, os.path.join(work, m), rows, a.fps))
             for m in MODES]  # fmt: skip
    load_end = round(os.getloadavg()[0], 2)
    print()
    print_table(table, start_up)
    found = ratios(table)
    print("ratios (clips/s, whole commands): " + ", ".join(f"{k} = {v:.2f}x" for k, v in found.items()))
    print(f"note: load avg 1 min {load_start} at start, {load_end} at end; busy = cpu / wall (one core: ~1 when"
          " undisturbed)")
    if a.quick:
        print("note: --quick uses one tiny video; its figures are a smoke test")
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "runs": [asdict(r) for r in table],
        "start_up": asdict(start_up),
        "all_timings": {k: [asdict(t) for t in v] for k, v in timings.items()},
        "ratios": found,
        "load_avg": [load_start, load_end],
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    path = os.path.join(a.out, "clips-quick.json" if a.quick else "clips.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results: {path} (bench took {result['bench_seconds']} s)")
    return 1 if any(r.wrong for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
