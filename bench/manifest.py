#!/usr/bin/env python
"""Manifest size vs a machine's start-up: pack 20 records out of a small and a huge manifest.

Target (issue 9): packing 20 records from a 2M-row manifest uses at most 50 MB more peak
memory than from a 2,000-row one, and its start-up is bounded by one sequential read of the
manifest file. Side by side, in one run:

- `ours`: `pack.py --type video-only --start S --end S+20` (whole command, its own process);
- `read`: one sequential read of the same file in Python (`for line in f`, timed inside its
  process), the bound; `ours` start-up is the big manifest's time minus the small one's;
- `whole`: the previous method, every row parsed into a record before the range is taken.

Start-up passes at up to 2x the bare read: finding row boundaries must copy and scan every
byte once (jsonl and TSV count newlines by blocks in C; CSV goes line by line to follow quoted
fields), where the bare read only copies. Each run is its own process; peak RSS is that process's (wait4's ru_maxrss), so the numbers
do not mix. The 20 records sit in the middle of the manifest.

    .venv/bin/python bench/manifest.py              # 2,000 vs 2,000,000 rows (jsonl and webvid CSV)
    .venv/bin/python bench/manifest.py --quick      # 2,000 vs 200,000 rows
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT  # the repo root, not bench/ (bench/tokenize.py would shadow the stdlib's)

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

OUT = os.path.join(ROOT, "bench_out", "manifest")

WHOLE = """
import json, sys
sys.path.insert(0, {root!r})
from vdp.pack.manifest import make_record
rows = []
with open({path!r}, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
        o = json.loads(line)
        rows.append(make_record(f"m:{{n}}", o.get("video_path"), o.get("value")))
print(len(rows))
"""

READ = """
import time
t0 = time.perf_counter()
n = 0
with open({path!r}, "rb") as f:
    for line in f:
        n += 1
print(time.perf_counter() - t0)
"""


def write_jsonl(path: str, rows: int, video: str) -> None:
    with open(path, "w") as f:
        for i in range(rows):
            caption = f"clip {i}: a person walks along a street at dusk while cars pass by, close-up, handheld"
            f.write(json.dumps({"video_path": video, "value": caption, "video_id": f"v{i:09d}"}) + "\n")


def write_webvid(path: str, rows: int) -> None:
    with open(path, "w") as f:
        f.write("videoid,contentUrl,duration,page_dir,name\n")
        for i in range(rows):
            page = f"{i // 50 * 50:09d}_{i // 50 * 50 + 49:09d}"
            f.write(f'{i},https://example.invalid/{i}.mp4,PT00H00M10S,{page},"Clip {i}, a street at dusk, cars pass"\n')


def run(cmd: list[str], own_time: bool = False) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one process; with own_time, the seconds it prints itself."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    if own_time:
        seconds = float(out.strip().splitlines()[-1])
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"run failed ({code}): {' '.join(cmd)}\n{err}")
    return seconds, usage.ru_maxrss / 1024


def pack_cmd(manifest: str, dataset: str, out: str, start: int, video_root: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "pack.py"), "--dataset", dataset, "--manifest", manifest,
            "--type", "video-only", "--save_path", out, "--start", str(start), "--end", str(start + 20),
            "--workers", "1", "--no_progress", "--video_root", video_root]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="200,000 rows instead of 2,000,000")
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--big", type=int, default=None)
    a = p.parse_args()
    big = a.big or (200_000 if a.quick else 2_000_000)
    os.makedirs(OUT, exist_ok=True)
    from tests.synth import VideoSpec, make_video

    video = make_video(os.path.join(OUT, "v.mp4"), VideoSpec(num_frames=25))
    results, failed = {}, False
    print(f"{'manifest':<22}{'rows':>11}{'MB':>8}  {'ours s':>8}{'ours MB':>9}  {'read s':>8}  {'whole s':>8}{'whole MB':>9}")
    for fmt in ("jsonl", "webvid"):
        figures = {}
        for rows in (a.small, big):
            path = os.path.join(OUT, f"m{rows}.{'jsonl' if fmt == 'jsonl' else 'csv'}")
            if not os.path.exists(path):
                write_jsonl(path, rows, video) if fmt == "jsonl" else write_webvid(path, rows)
            out = os.path.join(OUT, f"out-{fmt}-{rows}")
            subprocess.run(["rm", "-rf", out], check=True)
            run([sys.executable, "-c", READ.format(path=path)])  # warm the page cache alike for all
            ours = run(pack_cmd(path, fmt, out, rows // 2, OUT))
            read = run([sys.executable, "-c", READ.format(path=path)], own_time=True)
            whole = run([sys.executable, "-c", WHOLE.format(root=ROOT, path=path)]) if fmt == "jsonl" else (0.0, 0.0)
            size = os.path.getsize(path) / 1e6
            figures[rows] = {"ours_s": ours[0], "ours_mb": ours[1], "read_s": read[0], "whole_s": whole[0],
                             "whole_mb": whole[1], "file_mb": size}
            print(f"{fmt:<22}{rows:>11,}{size:>8.0f}  {ours[0]:>8.2f}{ours[1]:>9.1f}  {read[0]:>8.2f}  "
                  f"{whole[0]:>8.2f}{whole[1]:>9.1f}")
        growth = figures[big]["ours_mb"] - figures[a.small]["ours_mb"]
        # Start-up is the extra time the big manifest costs over the small one.
        startup = figures[big]["ours_s"] - figures[a.small]["ours_s"]
        bound = figures[big]["read_s"]
        ok_mem, ok_time = growth <= 50, startup <= 2 * bound
        failed |= not (ok_mem and ok_time)
        results[fmt] = {"rows": [a.small, big], "figures": figures, "rss_growth_mb": growth,
                        "startup_s": startup, "read_s": bound}
        print(f"  {fmt}: peak RSS +{growth:.1f} MB ({'PASS' if ok_mem else 'FAIL'} <= 50 MB); "
              f"start-up +{startup:.2f} s vs one sequential read {bound:.2f} s "
              f"({startup / bound if bound else 0:.2f}x, {'PASS' if ok_time else 'FAIL'} <= 2x)")
        if fmt == "jsonl":
            print(f"  previous method (parse every row): {figures[big]['whole_s']:.2f} s, "
                  f"{figures[big]['whole_mb']:.0f} MB peak")
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
