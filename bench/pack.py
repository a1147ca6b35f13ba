#!/usr/bin/env python
"""Stage-1 benchmark: pack.py side by side with the seed's ffmpeg method and with decord.

    .venv/bin/python bench/pack.py            # full run (~5 min on 2 cores, videos cached after)
    .venv/bin/python bench/pack.py --quick    # smoke run on a few small videos

The seed comparison needs the ffmpeg and ffprobe command-line tools; without them it is
skipped with a message. Install them with:

    apt-get update && apt-get install -y ffmpeg

Every run below works on the same generated videos (painted frame numbers, see tests.synth),
once, after a warm-up on one video:

  seed       `bench/pack.py seed ...` (a whole command): per video `ffprobe -show_frames`, then
             two `ffmpeg -vf select` passes writing every I and every non-I frame as JPEG to a
             temp folder, the kf choice (choose_keyframes) read back and written to a tar
  kf w1      `pack.py --type kf --workers 1` (a whole command, tars written)
  kf wN      `pack.py --type kf --workers N` (N = --workers, default 2)
  un ours    vdp.pack.stage.pack_record per video in this process: decode + cv2 JPEG encode
  un decord  decord.VideoReader, `vr[i]` per choose_uniform index + cv2 JPEG encode, this process

Targets (wall-time ratios): kf w1 >= 12x seed; un ours >= 1.5x decord; kf wN >= 1.8x kf w1.
The baselines run one decoder thread (--baseline_threads 1) because pack.py runs one per
worker: each comparison is then one core against one core (0 = the tool's own default).
Afterwards every JPEG's painted number is read back and compared with the index its sample
claims (and the seed's kf picks with ours), so a fast but wrong run shows up.

Output: a table and a block of ratios with PASS/FAIL on stdout, all figures in OUT/pack.json
(OUT/pack-quick.json for --quick).
Exit status: 0 every target measured passed, 1 a target failed or our output was wrong,
2 a run could not be done.
"""

from __future__ import annotations

import os
import sys

# bench/tokenize.py sits beside this file: take this folder off the import path so that the
# standard library's tokenize (imported by logging, linecache, ...) is the one found.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import datetime
import functools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tests.synth import VideoSpec, make_video, read_frame_number  # noqa: E402
from vdp.io.shards import iter_samples, list_tars  # noqa: E402
from vdp.io.tario import Member, write_tar_atomically  # noqa: E402
from vdp.media.video import FrameInfo  # noqa: E402
from vdp.pack.manifest import Record  # noqa: E402
from vdp.pack.plan import sample_key  # noqa: E402
from vdp.pack.samplers import SamplerOptions, choose_keyframes, choose_uniform  # noqa: E402
from vdp.pack.stage import PackOptions, WorkItem, init_worker, pack_record  # noqa: E402

PACK = os.path.join(REPO, "pack.py")
SEED_JPEG_Q = "2"  # ffmpeg's mjpeg -q:v scale (2 = best usual): the nearest to --jpeg_quality 95
TARGETS = {"kf_vs_seed": 12.0, "un_vs_decord": 1.5, "workers": 1.8}


class BenchError(Exception):
    """A run could not be done (a tool failed): the bench stops with exit status 2."""


# --- settings -------------------------------------------------------------------------------


def size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/pack.py",
        description="Stage-1 benchmark: pack.py kf/un against the seed's ffmpeg method and decord.",
        epilog="`bench/pack.py seed --help` shows the seed's method as a command of its own.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 3 small short videos (ratios not meaningful)")
    p.add_argument("--out", default=os.path.join(REPO, "bench_out"), help="videos, shards and pack.json go here")
    p.add_argument("--n_sd", type=int, default=24, help="H.264 videos at --sd_size")
    p.add_argument("--n_hd", type=int, default=4, help="H.264 videos at --hd_size")
    p.add_argument("--n_hevc", type=int, default=4, help="HEVC videos at --sd_size")
    p.add_argument("--sd_size", type=size, default=(640, 360), help="WxH (default 640x360)")
    p.add_argument("--hd_size", type=size, default=(1280, 720), help="WxH (default 1280x720)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of every video")
    p.add_argument("--gop", type=int, default=50)
    p.add_argument("--bframes", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="the many-worker run compared with --workers 1")
    p.add_argument("--baseline_threads", type=int, default=1, help="decoder threads for ffmpeg and decord (0: their default)")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--kf_iframes", type=int, default=8)
    p.add_argument("--kf_total", type=int, default=24)
    p.add_argument("--max_side", type=int, default=1280)
    p.add_argument("--jpeg_quality", type=int, default=95)
    p.add_argument("--skip_seed", action="store_true", help="skip the ffmpeg seed comparison")
    p.add_argument("--skip_decord", action="store_true", help="skip the decord comparison")
    return p


def apply_quick(a: argparse.Namespace) -> None:
    a.n_sd, a.n_hd, a.n_hevc = 2, 0, 1
    a.sd_size, a.seconds = (320, 180), 4.0


# --- machine --------------------------------------------------------------------------------


def tool_version(cmd: str) -> str | None:
    """First line of `cmd -version`, or None when the tool is not installed."""
    if shutil.which(cmd) is None:
        return None
    out = subprocess.run([cmd, "-version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def decord_version() -> str | None:
    try:
        import decord
    except ImportError:
        return None
    return decord.__version__


def code_state() -> dict:
    """The commit measured, and which files differed from it: figures belong to that tree."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)
        return proc.stdout if proc.returncode == 0 else ""

    # porcelain lines are "XY path": the status columns may start with a space, so no strip()
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "unknown", "changed_files": changed}


def machine_info() -> dict:
    libav = av.library_versions.get("libavcodec", ())
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyav": av.__version__,
        "pyav_libavcodec": ".".join(map(str, libav)),
        "ffmpeg_cli": tool_version("ffmpeg"),
        "ffprobe_cli": tool_version("ffprobe"),
        "decord": decord_version(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "code": code_state(),
    }


# --- videos ---------------------------------------------------------------------------------


@dataclass
class BenchVideo:
    path: str
    spec: VideoSpec

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def label(self) -> str:
        codec = {"libx264": "h264", "libx265": "hevc"}.get(self.spec.codec, self.spec.codec)
        return f"{codec} {self.spec.width}x{self.spec.height}"


def video_specs(a: argparse.Namespace) -> list[VideoSpec]:
    """The set to pack: SD and HD H.264 alternating 25/30 fps, and HEVC, all with B-frames."""

    def spec(codec: str, wh: tuple[int, int], fps: int) -> VideoSpec:
        n = max(2, round(a.seconds * fps))
        return VideoSpec(num_frames=n, width=wh[0], height=wh[1], codec=codec, fps=fps, bframes=a.bframes, gop=a.gop)

    specs = [spec("libx264", a.sd_size, 25 + 5 * (i % 2)) for i in range(a.n_sd)]
    specs += [spec("libx264", a.hd_size, 25 + 5 * (i % 2)) for i in range(a.n_hd)]
    specs += [spec("libx265", a.sd_size, 25) for _ in range(a.n_hevc)]
    return specs


def video_path(folder: str, n: int, s: VideoSpec) -> str:
    # The spec is in the name, so a cached file is reused only for the same settings.
    return os.path.join(folder, f"{n:03d}-{s.codec}-{s.width}x{s.height}-{s.fps}fps-g{s.gop}-b{s.bframes}-{s.num_frames}f.mp4")


def _make_one(path: str, spec: VideoSpec) -> None:
    tmp = path[: -len(".mp4")] + ".part.mp4"  # the container comes from the extension
    make_video(tmp, spec)
    os.replace(tmp, path)  # an interrupted run never leaves a short video under the real name


def ensure_videos(folder: str, specs: list[VideoSpec]) -> list[BenchVideo]:
    """Generate the videos not already cached, a process per core (encoding is the slow part)."""
    videos = [BenchVideo(video_path(folder, n, s), s) for n, s in enumerate(specs)]
    todo = [v for v in videos if not os.path.exists(v.path)]
    if todo:
        os.makedirs(folder, exist_ok=True)
        print(f"generating {len(todo)} of {len(videos)} videos in {folder} ...", flush=True)
        with ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
            list(pool.map(_make_one, [v.path for v in todo], [v.spec for v in todo]))
    return videos


def write_manifest(path: str, videos: list[BenchVideo]) -> str:
    with open(path, "w") as f:
        for v in videos:
            f.write(json.dumps({"video_path": v.path, "value": f"bench video {v.name}", "video_id": v.name}) + "\n")
    return path


def describe_videos(videos: list[BenchVideo]) -> list[dict]:
    rows = []
    for v in videos:
        seconds = v.spec.num_frames / v.spec.fps
        nbytes = os.path.getsize(v.path)
        kbps = round(nbytes * 8 / 1000 / seconds)
        rows.append({"name": v.name, "label": v.label, "fps": v.spec.fps, "frames": v.spec.num_frames, "kbps": kbps})
    return rows


# --- timing ---------------------------------------------------------------------------------


@dataclass
class Timing:
    wall: float
    cpu: float  # user+sys of this process and its waited-for children (tools, pack.py)


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> tuple[Timing, object]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    result = fn()
    return Timing(time.perf_counter() - t0, cpu_seconds() - c0), result


# --- the seed's method (also a command of its own: `bench/pack.py seed`) ---------------------


def thread_args(flag: str, threads: int) -> list[str]:
    return [] if threads == 0 else [flag, str(threads)]


def run_tool(cmd: list[str]) -> bytes:
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise BenchError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-400:]}")
    return proc.stdout


def probe_pict_types(path: str, threads: int) -> list[str]:
    """Frame-level ffprobe: decodes every frame to report its pict_type, in presentation order."""
    threads_opt = thread_args("-threads", threads)
    out = run_tool(["ffprobe", "-v", "error", *threads_opt, "-select_streams", "v:0", "-show_frames", "-of", "json", path])
    return [f.get("pict_type", "?") for f in json.loads(out)["frames"]]


@functools.cache
def passthrough_args() -> list[str]:
    """One output file per selected frame, none duplicated or dropped: `-fps_mode` from FFmpeg 5.1,
    `-vsync 0` before (Ubuntu 22.04 ships 4.4)."""
    line = tool_version("ffmpeg") or ""
    m = re.match(r"ffmpeg version n?(\d+)\.(\d+)", line)
    if m and (int(m[1]), int(m[2])) < (5, 1):
        return ["-vsync", "0"]
    return ["-fps_mode", "passthrough"]


def select_to_jpegs(path: str, expr: str, pattern: str, threads: int) -> None:
    """One ffmpeg pass: decode the whole video and write each frame `expr` selects as a full-size JPEG."""
    run_tool([
        "ffmpeg", "-v", "error", "-nostdin", *thread_args("-filter_threads", threads),
        *thread_args("-threads", threads), "-i", path, "-map", "0:v:0",
        "-vf", f"select='{expr}'", *passthrough_args(),
        *thread_args("-threads", threads), "-q:v", SEED_JPEG_Q, "-start_number", "0", pattern,
    ])


def seed_chosen_files(types: list[str], chosen: list[int], folder: str) -> list[str]:
    """The JPEG of each chosen frame: the n-th I frame is i_n.jpg, the n-th other frame p_n.jpg."""
    rank, counts = [], {"i": 0, "p": 0}
    for t in types:
        kind = "i" if t == "I" else "p"
        rank.append(f"{kind}_{counts[kind]:06d}.jpg")
        counts[kind] += 1
    # The mapping holds only if ffmpeg's select saw the same frame types as ffprobe.
    for kind, expected in counts.items():
        written = sum(name.startswith(kind + "_") for name in os.listdir(folder))
        if written != expected:
            raise BenchError(f"seed: ffprobe saw {expected} {kind.upper()} frames, ffmpeg wrote {written} JPEGs")
    return [os.path.join(folder, rank[i]) for i in chosen]


def seed_sample(index: int, path: str, opts: SamplerOptions, threads: int) -> list[Member]:
    types = probe_pict_types(path, threads)
    frames = [FrameInfo(i, 0.0, t) for i, t in enumerate(types)]
    chosen = choose_keyframes(frames, opts)
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        select_to_jpegs(path, r"eq(pict_type\,I)", os.path.join(tmp, "i_%06d.jpg"), threads)
        select_to_jpegs(path, r"not(eq(pict_type\,I))", os.path.join(tmp, "p_%06d.jpg"), threads)
        jpegs = []
        for file in seed_chosen_files(types, chosen, tmp):
            with open(file, "rb") as f:
                jpegs.append(f.read())
    key = sample_key(index)
    doc = {
        "source": path,
        "num_frames": len(types),
        "frames": [{"name": str(n), "index": i, "type": "I" if types[i] == "I" else "P"} for n, i in enumerate(chosen)],
        "image": [str(n) for n in range(len(chosen))],
    }
    return [(f"{key}.json", json.dumps(doc).encode())] + [(f"{key}.{n}.jpg", b) for n, b in enumerate(jpegs)]


def seed_members(manifest: str, opts: SamplerOptions, threads: int) -> Iterator[Member]:
    with open(manifest) as f:
        paths = [json.loads(line)["video_path"] for line in f if line.strip()]
    for index, path in enumerate(paths):
        yield from seed_sample(index, path, opts, threads)


def seed_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bench/pack.py seed",
        description="The seed's kf method over a jsonl manifest (absolute video_path), into SAVE_PATH/seed.tar.",
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--save_path", required=True)
    p.add_argument("--threads", type=int, default=1, help="ffmpeg/ffprobe threads (0: their default)")
    p.add_argument("--kf_iframes", type=int, default=8)
    p.add_argument("--kf_total", type=int, default=24)
    a = p.parse_args(argv)
    opts = SamplerOptions(kf_iframes=a.kf_iframes, kf_total=a.kf_total)
    try:
        write_tar_atomically(os.path.join(a.save_path, "seed.tar"), seed_members(a.manifest, opts, a.threads))
    except BenchError as e:
        print(f"seed: {e}", file=sys.stderr)
        return 2
    return 0


# --- whole-command runs ---------------------------------------------------------------------


def run_command(cmd: list[str], save_path: str) -> Timing:
    # A fresh folder each time: pack.py would skip (resume) tars a previous run finished.
    shutil.rmtree(save_path, ignore_errors=True)
    os.makedirs(save_path)
    timing, proc = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
    if proc.returncode != 0:
        what = f"{os.path.relpath(cmd[1], REPO)} {cmd[2]}"
        raise BenchError(f"{what} ... exited {proc.returncode}: {(proc.stderr or proc.stdout)[-600:]}")
    return timing


def pack_cmd(a: argparse.Namespace, manifest: str, save_path: str, workers: int, kind: str = "kf") -> list[str]:
    return [
        sys.executable, PACK, "--dataset", "jsonl", "--manifest", manifest, "--type", kind,
        "--save_path", save_path, "--workers", str(workers), "--no_progress",
        "--num_frames", str(a.num_frames), "--kf_iframes", str(a.kf_iframes), "--kf_total", str(a.kf_total),
        "--max_side", str(a.max_side), "--jpeg_quality", str(a.jpeg_quality),
    ]


def seed_cmd(a: argparse.Namespace, manifest: str, save_path: str) -> list[str]:
    return [
        sys.executable, os.path.abspath(__file__), "seed", "--manifest", manifest, "--save_path", save_path,
        "--threads", str(a.baseline_threads), "--kf_iframes", str(a.kf_iframes), "--kf_total", str(a.kf_total),
    ]


# --- in-process un runs ---------------------------------------------------------------------


@dataclass
class Picked:
    """What one run took from one video: the claimed frame indices and their JPEGs."""

    indices: list[int]
    jpegs: list[bytes]
    num_frames: int
    types: list[str] = field(default_factory=list)


def un_ours(videos: list[BenchVideo], opts: PackOptions) -> list[Picked]:
    init_worker(opts)  # what a pack.py worker does first: options, one cv2 thread
    picked = []
    for i, v in enumerate(videos):
        out = pack_record(WorkItem(i, Record(v.path, "bench", v.name), v.path))
        if out.members is None:
            raise BenchError(f"un ours: {v.name}: {out.reason}")
        picked.append(picked_from_members(dict(out.members), sample_key(i)))
    return picked


def fit_bgr(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """RGB -> BGR with the longest side at most max_side, as pack.py's frames are."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    if max(h, w) <= max_side:
        return bgr
    scale = max_side / max(h, w)
    return cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def un_decord(videos: list[BenchVideo], sopts: SamplerOptions, max_side: int, quality: int, threads: int) -> list[Picked]:
    import decord

    cv2.setNumThreads(1)  # like a pack.py worker, so only the decoder differs
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    picked = []
    for v in videos:
        vr = decord.VideoReader(v.path, ctx=decord.cpu(0), num_threads=threads)
        count = len(vr)
        indices = choose_uniform([FrameInfo(i, 0.0, "?") for i in range(count)], sopts)
        jpegs = [cv2.imencode(".jpg", fit_bgr(vr[i].asnumpy(), max_side), params)[1].tobytes() for i in indices]
        picked.append(Picked(indices, jpegs, count))
        del vr  # decord holds the decoder and its buffers until the reader goes
    return picked


# --- reading results back and checking them -------------------------------------------------


def picked_from_members(members: dict[str, bytes], key: str) -> Picked:
    doc = json.loads(members[f"{key}.json"])
    frames = doc["frames"]
    jpegs = [members[f"{key}.{f['name']}.jpg"] for f in frames]
    return Picked([f["index"] for f in frames], jpegs, doc["num_frames"], [f["type"] for f in frames])


def read_shards(folder: str) -> list[Picked]:
    picked = []
    for tar in list_tars(folder):
        for s in iter_samples(tar):
            members = {f"{s.key}.{ext}": data for ext, data in s.members.items()}
            picked.append(picked_from_members(members, s.key))
    return picked


def wrong_frames(picked: Iterable[Picked]) -> int:
    """JPEGs whose painted frame number is not the index their sample claims."""
    wrong = 0
    for p in picked:
        for index, jpg in zip(p.indices, p.jpegs, strict=True):
            image = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
            wrong += read_frame_number(image) != index
    return wrong


# --- results --------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    command: str
    videos: int
    frames: int  # video frames in all (true decoded counts, summed)
    decoded: int | None  # frames decoded to do the work (None: not known)
    jpegs: int
    cores: int  # cores the run may use, for the per-core rate
    wall: float
    cpu: float
    wrong_frames: int
    notes: list[str] = field(default_factory=list)

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.wall

    @property
    def busy(self) -> float:
        return self.cpu / (self.wall * self.cores)

    @property
    def decoded_per_s_core(self) -> float | None:
        return None if self.decoded is None else self.decoded / self.wall / self.cores


def make_run(name: str, command: str, timing: Timing, picked: list[Picked], cores: int, passes: int | None) -> Run:
    """passes: full decodes per video (seed 3: ffprobe + two selects; ours 1); None unknown."""
    frames = sum(p.num_frames for p in picked)
    decoded = None if passes is None else passes * frames
    jpegs = sum(len(p.jpegs) for p in picked)
    return Run(name, command, len(picked), frames, decoded, jpegs, cores, timing.wall, timing.cpu, wrong_frames(picked))


@dataclass
class Ratio:
    name: str
    ours: str
    baseline: str
    target: float
    ratio: float | None  # baseline wall / ours wall
    cpu_ratio: float | None
    verdict: str  # PASS, FAIL or SKIP (why)


def ratio(name: str, runs: dict[str, Run], ours: str, baseline: str, skip_reason: str = "") -> Ratio:
    target = TARGETS[name]
    if ours not in runs or baseline not in runs:
        return Ratio(name, ours, baseline, target, None, None, f"SKIP ({skip_reason or 'not run'})")
    o, b = runs[ours], runs[baseline]
    r = b.wall / o.wall
    return Ratio(name, ours, baseline, target, r, b.cpu / o.cpu if o.cpu > 0 else None, "PASS" if r >= target else "FAIL")


# --- the bench ------------------------------------------------------------------------------


def baseline_cores(a: argparse.Namespace) -> int:
    """Cores a baseline may use: one on one thread, else the tool may spread over all."""
    return 1 if a.baseline_threads == 1 else len(os.sched_getaffinity(0))


def step(title: str) -> None:
    print(f"  {title} ...", flush=True)


def bench_commands(
    a: argparse.Namespace, videos: list[BenchVideo], work: str, runs: dict[str, Run], have_ffmpeg: bool
) -> dict[str, list[Picked]]:
    """seed vs kf --workers 1 vs kf --workers N: whole commands over the same manifest.

    Returns what the seed and kf w1 picked, for comparing the two choices."""
    full = write_manifest(os.path.join(work, "videos.jsonl"), videos)
    warm = write_manifest(os.path.join(work, "warmup.jsonl"), videos[:1])

    def out(name: str) -> str:
        return os.path.join(work, name)

    picked: dict[str, list[Picked]] = {}
    if have_ffmpeg and not a.skip_seed:
        step("seed: warm-up, then ffprobe -show_frames + 2 ffmpeg select passes per video")
        run_command(seed_cmd(a, warm, out("warmup")), out("warmup"))
        timing = run_command(seed_cmd(a, full, out("seed")), out("seed"))
        cores = baseline_cores(a)
        picked["seed"] = read_shards(out("seed"))
        runs["seed"] = make_run("seed", "bench/pack.py seed", timing, picked["seed"], cores, 3)
    step("pack.py --type kf --workers 1: warm-up, then the run")
    run_command(pack_cmd(a, warm, out("warmup"), 1), out("warmup"))
    timing = run_command(pack_cmd(a, full, out("kf-w1"), 1), out("kf-w1"))
    picked["kf w1"] = read_shards(out("kf-w1"))
    runs["kf w1"] = make_run("kf w1", "pack.py --type kf --workers 1", timing, picked["kf w1"], 1, 1)
    step(f"pack.py --type kf --workers {a.workers}")
    timing = run_command(pack_cmd(a, full, out("kf-wn"), a.workers), out("kf-wn"))
    name = f"kf w{a.workers}"
    runs[name] = make_run(name, f"pack.py --type kf --workers {a.workers}", timing, read_shards(out("kf-wn")), a.workers, 1)
    return picked


def bench_uniform(a: argparse.Namespace, videos: list[BenchVideo], runs: dict[str, Run]) -> None:
    """un, one process: our decode+encode path against decord vr[i] + cv2 encode."""
    sopts = SamplerOptions(num_frames=a.num_frames, kf_iframes=a.kf_iframes, kf_total=a.kf_total)
    popts = PackOptions("un", sopts, max_side=a.max_side, jpeg_quality=a.jpeg_quality)
    step("un ours (in-process pack_record): warm-up, then the run")
    un_ours(videos[:1], popts)
    timing, picked = timed(lambda: un_ours(videos, popts))
    runs["un ours"] = make_run("un ours", "vdp.pack.stage.pack_record, type un", timing, picked, 1, 1)
    if a.skip_decord or decord_version() is None:
        return
    step("un decord (VideoReader, vr[i] per index): warm-up, then the run")
    args = (sopts, a.max_side, a.jpeg_quality, a.baseline_threads)
    un_decord(videos[:1], *args)
    timing, picked = timed(lambda: un_decord(videos, *args))
    cores = baseline_cores(a)
    run = make_run("un decord", "decord.VideoReader vr[i]", timing, picked, cores, None)
    off = sum(p.num_frames != v.spec.num_frames for p, v in zip(picked, videos, strict=True))
    run.notes.append(f"len(vr) differs from the true frame count on {off} of {len(videos)} videos")
    runs["un decord"] = run


def kf_agreement(runs_picked: dict[str, list[Picked]]) -> str:
    """Do the seed (ffprobe pict_type) and pack.py (decoded pict_type) pick the same frames?"""
    seed, ours = runs_picked.get("seed"), runs_picked.get("kf w1")
    if seed is None or ours is None:
        return "not compared"
    same = sum((s.indices, s.types) == (o.indices, o.types) for s, o in zip(seed, ours, strict=True))
    return f"{same}/{len(ours)} videos: same frames and types"


# --- printing -------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_machine(m: dict) -> None:
    print("machine:")
    for k, v in m.items():
        print(f"  {k:<16} {v}")


def print_videos(rows: list[dict]) -> None:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    print("videos:")
    for label, rs in groups.items():
        fps = "/".join(map(str, sorted({r["fps"] for r in rs})))
        frames = sum(r["frames"] for r in rs)
        kbps = sum(r["kbps"] for r in rs) / len(rs)
        print(f"  {len(rs):>3} x {label:<16} {fps} fps, {frames:>6} frames, ~{kbps:,.0f} kb/s")


def print_table(runs: dict[str, Run]) -> None:
    """busy = cpu / (wall x cores): near 1 when the run had its cores to itself and never waited."""
    head = (
        f"{'run':<11} {'videos':>6} {'frames':>7} {'jpegs':>6} {'wall s':>7} {'cpu s':>7} {'busy':>5}"
        f" {'videos/s':>8} {'decoded fr/s/core':>17} {'wrong':>5}  command"
    )
    print(head)
    print("-" * len(head))
    for r in runs.values():
        print(
            f"{r.name:<11} {r.videos:>6} {r.frames:>7} {r.jpegs:>6} {r.wall:>7.2f} {r.cpu:>7.2f} {r.busy:>5.2f}"
            f" {r.videos_per_s:>8.2f} {fmt(r.decoded_per_s_core, 0):>17} {r.wrong_frames:>5}  {r.command}"
        )
        for note in r.notes:
            print(f"{'':<11} note: {note}")


def print_ratios(ratios: list[Ratio]) -> None:
    print("ratios (baseline wall / ours wall; cpu-time ratio alongside):")
    for r in ratios:
        figures = f"{fmt(r.ratio):>7}x (cpu {fmt(r.cpu_ratio)}x)"
        print(f"  {r.name:<13} {r.ours:>9} vs {r.baseline:<9} {figures}  target >= {r.target:g}x  {r.verdict}")


def contention_note(machine: dict, runs: dict[str, Run]) -> str:
    """Flag other load: a busy machine before we start, or our runs not getting their cores.

    The bench itself keeps up to `--workers` cores busy, so the end load average is shown but
    only the start one is judged; the in-process runs never wait on disk, so their busy
    figure is the cleanest sign of a core taken by someone else."""
    start, end = machine["load_avg_start"][0], machine["load_avg_end"][0]
    inproc = [r.busy for name, r in runs.items() if name.startswith("un ")]
    worst = min(inproc) if inproc else 1.0
    facts = f"load avg 1 min {start} at start, {end} at end; lowest busy of an in-process run {worst:.2f}"
    if start > 0.5 or worst < 0.9:
        return f"other load likely ({facts}): figures may be disturbed"
    return f"machine looked quiet ({facts})"


# --- main -----------------------------------------------------------------------------------


def exit_status(ratios: list[Ratio], runs: dict[str, Run]) -> int:
    ours_wrong = any(r.wrong_frames for name, r in runs.items() if name.startswith("kf w") or name == "un ours")
    return 1 if ours_wrong or any(r.verdict == "FAIL" for r in ratios) else 0


def run_bench(a: argparse.Namespace) -> int:
    started = time.perf_counter()
    machine = machine_info()
    print_machine(machine)
    videos = ensure_videos(os.path.join(a.out, "videos"), video_specs(a))
    video_rows = describe_videos(videos)
    print_videos(video_rows)
    have_ffmpeg = bool(machine["ffmpeg_cli"] and machine["ffprobe_cli"])
    if not have_ffmpeg and not a.skip_seed:
        print("ffmpeg/ffprobe not found: the seed comparison is skipped (apt-get update && apt-get install -y ffmpeg)")
    work = os.path.join(a.out, "pack")
    os.makedirs(work, exist_ok=True)
    runs: dict[str, Run] = {}
    print("runs:", flush=True)
    agreement = kf_agreement(bench_commands(a, videos, work, runs, have_ffmpeg))
    bench_uniform(a, videos, runs)
    seed_skip = "--skip_seed" if a.skip_seed else "ffmpeg not installed"
    decord_skip = "--skip_decord" if a.skip_decord else "decord not installed"
    ratios = [
        ratio("kf_vs_seed", runs, "kf w1", "seed", seed_skip),
        ratio("un_vs_decord", runs, "un ours", "un decord", decord_skip),
        ratio("workers", runs, f"kf w{a.workers}", "kf w1"),
    ]
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print_table(runs)
    print(f"kf picks, seed vs pack.py: {agreement}")
    print()
    print_ratios(ratios)
    note = contention_note(machine, runs)
    print(f"note: {note}")
    if a.quick:
        print("note: --quick uses a few tiny videos; its ratios are a smoke test, not the figures")
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": a.quick,
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "machine": machine,
        "videos": video_rows,
        "runs": [asdict(r) | {"videos_per_s": r.videos_per_s, "decoded_per_s_core": r.decoded_per_s_core} for r in runs.values()],
        "kf_agreement": agreement,
        "ratios": [asdict(r) for r in ratios],
        "note": note,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    # A smoke run must not overwrite the figures of the last full run.
    path = os.path.join(a.out, "pack-quick.json" if a.quick else "pack.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results: {path} (bench took {result['bench_seconds']} s)")
    return exit_status(ratios, runs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["seed"]:
        return seed_main(argv[1:])
    a = build_parser().parse_args(argv)
    if a.quick:
        apply_quick(a)
    try:
        return run_bench(a)
    except BenchError as e:
        print(f"bench/pack.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
