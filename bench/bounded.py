#!/usr/bin/env python
"""Memory and disk bounded by design (issue 10, part 8): flat across 100x, 400x and 1600x inputs.

    .venv/bin/python bench/bounded.py                      # ~1-2 min on 2 cores; figures in bench_out/bounded.json
    .venv/bin/python bench/bounded.py --repo /path/to/old  # the same measures on another checkout, to compare

Two measures, each size in a fresh child process (so its peak RSS, VmHWM, is its own):

  spool   SCALE samples of 16 frames (8-24 KB each, odd sizes) go through vdp.tokenize.spool.FrameSpool
          the way stage 2 uses it for remote tars: put as each sample is read, given back
          (whole sample) once it leaves a window of --window samples (the packing window).
          Reported: the spool's disk at its fullest and at the end of the stream (before the
          last window drains), and the child's peak RSS.
  scan    vdp.index.scan.scan_tar of one stage-1 tar of SCALE x 128 members (samples of a json and
          16 tiny frames; 205k members at 1600x, the issue's 206k-member tar) without --deep.
          Reported: the child's peak RSS and the scan's time.

Flat means: the 1600x figure is within 10% (and 4 MB) of the 100x one. Exit status 0 when
both measures are flat, 1 when one grows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from collections import deque

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = REPO  # not bench/: its tokenize.py would shadow the standard module
SCALES = (100, 400, 1600)
FRAMES_PER_SAMPLE = 16
MEMBERS_PER_UNIT = 128


def peak_rss() -> int:
    """This process's peak resident set, bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- children: one measure at one size, in a process of its own --------------------------------


def spool_child(scale: int, window: int, folder: str) -> dict:
    from vdp.tokenize.spool import FrameSpool

    rng = random.Random(scale)
    frames = [rng.randbytes(rng.randint(8_000, 24_000)) for _ in range(64)]  # reused: the bytes do not matter
    waiting: deque = deque()
    fullest = 0
    with FrameSpool(folder) as spool:
        for _ in range(scale):
            waiting.append([spool.put(rng.choice(frames)) for _ in range(FRAMES_PER_SAMPLE)])
            if len(waiting) > window:
                for piece in waiting.popleft():
                    spool.give_back(piece)
            fullest = max(fullest, os.fstat(spool.fd).st_blocks * 512)
        os.fsync(spool.fd)
        at_end = os.fstat(spool.fd).st_blocks * 512
        apparent = os.fstat(spool.fd).st_size
    return {"frames": scale * FRAMES_PER_SAMPLE, "fullest": fullest, "at_end": at_end, "apparent": apparent}


def scan_child(path: str) -> dict:
    from vdp.index.scan import ScanOptions, scan_tar
    from vdp.index.validate import CheckOptions

    clock = time.perf_counter()
    scan = scan_tar(path, ScanOptions(CheckOptions(patches=4), root=os.path.dirname(path)))
    assert not scan.errors, scan.errors[:3]
    return {"samples": scan.valid, "seconds": round(time.perf_counter() - clock, 2)}


def child_main(argv: list[str]) -> None:
    sys.path[0] = argv[0]  # the checkout to measure
    kind = argv[1]
    result = spool_child(int(argv[2]), int(argv[3]), argv[4]) if kind == "spool" else scan_child(argv[2])
    result["peak_rss"] = peak_rss()
    print(json.dumps(result))


def run_child(repo: str, *args) -> dict:
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", repo, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"child {args} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the stage-1 tar for the scan ---------------------------------------------------------------


def tiny_jpeg() -> bytes:
    import cv2
    import numpy as np

    img = np.full((8, 8, 3), 128, np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes()


def member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def sample_members(key: str, frame: bytes) -> bytes:
    names = [str(i) for i in range(FRAMES_PER_SAMPLE)]
    doc = {
        "caption": "a bench clip", "video_id": key, "source": f"{key}.mp4", "width": 8, "height": 8, "fps": 25.0,
        "duration": 4.0, "num_frames": 100,
        "frames": [{"name": n, "index": i, "t": i / 25, "type": "I"} for i, n in enumerate(names)],
        "image": names,
        "conversations": [{"from": "human", "value": "<image>" * len(names)}, {"from": "gpt", "value": "a clip"}],
    }  # fmt: skip
    out = member(f"{key}.json", json.dumps(doc).encode())
    return out + b"".join(member(f"{key}.{n}.jpg", frame) for n in names)


def scan_tar_of(scale: int, folder: str) -> str:
    """A tar of about scale x 128 members (kept between runs)."""
    path = os.path.join(folder, f"scan-{scale}.tar")
    if os.path.exists(path):
        return path
    frame = tiny_jpeg()
    samples = scale * MEMBERS_PER_UNIT // (FRAMES_PER_SAMPLE + 1)
    with open(path + ".tmp", "wb") as f:
        for k in range(samples):
            f.write(sample_members(f"{k:09d}", frame))
        f.write(bytes(2 * tarfile.BLOCKSIZE))
    os.replace(path + ".tmp", path)
    return path


# --- the parent ---------------------------------------------------------------------------------


def flat(values: list[int]) -> bool:
    return values[-1] <= max(values[0] * 1.10, values[0] + (4 << 20))


def mb(n: int) -> str:
    return f"{n / (1 << 20):8.1f}"


def measure(repo: str, out: str, window: int) -> dict:
    spool = {s: run_child(repo, "spool", s, window, out) for s in SCALES}
    scan = {s: run_child(repo, "scan", scan_tar_of(s, out)) for s in SCALES}
    print(
        f"{'spool':6} {'scale':>6} {'frames':>8} {'fullest MB':>10} {'at end MB':>10} {'apparent MB':>11} {'peak RSS MB':>11}"
    )
    for s, r in spool.items():
        print(f"{'':6} {s:>5}x {r['frames']:>8} {mb(r['fullest']):>10} {mb(r['at_end']):>10} {mb(r['apparent']):>11}"
              f" {mb(r['peak_rss']):>11}")  # fmt: skip
    print(f"{'scan':6} {'scale':>6} {'members':>8} {'samples':>10} {'seconds':>10} {'':>11} {'peak RSS MB':>11}")
    for s, r in scan.items():
        members = r["samples"] * (FRAMES_PER_SAMPLE + 1)
        print(f"{'':6} {s:>5}x {members:>8} {r['samples']:>10} {r['seconds']:>10} {'':>11} {mb(r['peak_rss']):>11}")
    return {"spool": spool, "scan": scan}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=REPO, help="checkout whose vdp is measured (default: this one)")
    p.add_argument("--out", default=os.path.join(REPO, "bench_out", "bounded"), help="tars and figures go here")
    p.add_argument("--window", type=int, default=50, help="samples waiting in the spool at most (default 50)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    figures = measure(os.path.abspath(a.repo), a.out, a.window)
    checks = {
        "spool disk flat": flat([r["at_end"] for r in figures["spool"].values()]),
        "spool RSS flat": flat([r["peak_rss"] for r in figures["spool"].values()]),
        "scan RSS flat": flat([r["peak_rss"] for r in figures["scan"].values()]),
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name} (1600x within 10% and 4 MB of 100x)")
    with open(os.path.join(a.out, "bounded.json"), "w") as f:
        json.dump({"repo": a.repo, "window": a.window, **figures, "checks": checks}, f, indent=2)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
