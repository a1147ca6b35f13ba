#!/usr/bin/env python
"""Issue-5 benchmark: object storage and Ray, side by side in one run.

    .venv/bin/python bench/scale.py            # ~3 min on 2 cores (videos cached in bench_out/scale/)
    .venv/bin/python bench/scale.py --quick    # smoke run

Runs, on the same generated videos (H.264 640x360, 10 s, GOP 50, 2 B-frames):
  local kf     pack.py --type kf --workers 1, videos and shards on local disk
  s3 kf        the same with manifest, videos and shards on S3 (moto's server on loopback)
  pool w1      pack.py --type kf --workers 1    } on a manifest listing the videos --ray_repeat
  ray w2       pack.py --type kf --workers 2 --executor ray (a local Ray started by the command)
  pool w2      pack.py --type kf --workers 2    } times (Ray's ~8 s start-up must be amortized)
Targets: s3 kf costs <= 15% over local kf; ray w2 >= 1.7x pool w1.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/tokenize.py

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

REPO = os.path.dirname(_HERE)
sys.path.insert(0, REPO)

import boto3  # noqa: E402

from tests.s3_fixtures import S3_ENV, make_bucket, moto_server  # noqa: E402
from vdp.synth import VideoSpec, make_video  # noqa: E402

PACK = os.path.join(REPO, "pack.py")


def make_corpus(folder: str, count: int, seconds: float) -> str:
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(count):
        fps = 25 + 5 * (i % 2)
        spec = VideoSpec(num_frames=int(seconds * fps), width=640, height=360, fps=fps, gop=50, bframes=2)
        path = os.path.join(folder, f"{i:03d}-{spec.num_frames}f.mp4")
        if not os.path.exists(path):
            make_video(path + ".part.mp4", spec)
            os.replace(path + ".part.mp4", path)
        rows.append({"video_path": os.path.basename(path), "value": f"clip {i}"})
    manifest = os.path.join(folder, "clips.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest


def run_pack(args: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, PACK, *args, "--no_progress"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pack.py {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return seconds


def fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--ray_repeat", type=int, default=12, help="each video this many times in the Ray/pool manifest")
    p.add_argument("--out", default=os.path.join(REPO, "bench_out", "scale"))
    a = p.parse_args()
    if a.quick:
        a.videos, a.seconds, a.ray_repeat = 4, 3.0, 1
    folder = os.path.join(a.out, f"videos-{a.videos}x{a.seconds:g}s")
    manifest = make_corpus(folder, a.videos, a.seconds)
    per_tar = max(1, a.videos // 4)  # 4 tars: Ray's unit is a tar
    common = ["--manifest", manifest, "--type", "kf", "--samples_per_tar", str(per_tar)]
    fig: dict = {"videos": a.videos, "seconds_each": a.seconds, "load_avg_start": os.getloadavg()[0]}

    print("local kf, workers 1 ...", flush=True)
    fig["local_kf_s"] = run_pack([*common, "--save_path", fresh(os.path.join(a.out, "local")), "--workers", "1"])

    print("s3 kf (moto on loopback), workers 1 ...", flush=True)
    with moto_server() as endpoint:
        env = {**os.environ, **S3_ENV}
        os.environ.update(S3_ENV)
        make_bucket(endpoint, "bench")
        client = boto3.client("s3", endpoint_url=endpoint)
        for name in os.listdir(folder):
            client.upload_file(os.path.join(folder, name), "bench", f"raw/{name}")
        s3_common = ["--manifest", "s3://bench/raw/clips.jsonl", "--type", "kf", "--samples_per_tar", str(per_tar),
                     "--s3_endpoint", endpoint]
        fig["s3_kf_s"] = run_pack([*s3_common, "--save_path", "s3://bench/shards", "--workers", "1"], env)
        local_tars = sorted(n for n in os.listdir(os.path.join(a.out, "local")) if n.endswith(".tar"))
        same = all(
            client.get_object(Bucket="bench", Key=f"shards/{n}")["Body"].read()
            == open(os.path.join(a.out, "local", n), "rb").read()
            for n in local_tars
        )
        fig["s3_same_bytes"] = same

    with open(manifest) as f:
        rows = [line for line in f if line.strip()]
    many = os.path.join(folder, f"clips-x{a.ray_repeat}.jsonl")
    with open(many, "w") as f:
        f.writelines(rows * a.ray_repeat)
    records = len(rows) * a.ray_repeat
    big = ["--manifest", many, "--type", "kf", "--samples_per_tar", str(max(1, records // 8))]
    fig["ray_records"] = records
    print(f"pool kf, workers 1, {records} records ...", flush=True)
    fig["pool_w1_s"] = run_pack([*big, "--save_path", fresh(os.path.join(a.out, "pool1")), "--workers", "1"])
    print(f"ray kf, workers 2, {records} records ...", flush=True)
    fig["ray_w2_s"] = run_pack([*big, "--save_path", fresh(os.path.join(a.out, "ray")), "--workers", "2",
                                "--executor", "ray"])
    print(f"pool kf, workers 2, {records} records ...", flush=True)
    fig["pool_w2_s"] = run_pack([*big, "--save_path", fresh(os.path.join(a.out, "pool2")), "--workers", "2"])
    fig["load_avg_end"] = os.getloadavg()[0]

    s3_overhead = fig["s3_kf_s"] / fig["local_kf_s"] - 1
    ray_speedup = fig["pool_w1_s"] / fig["ray_w2_s"]
    fig["s3_overhead_pct"] = round(100 * s3_overhead, 1)
    fig["ray_w2_vs_pool_w1"] = round(ray_speedup, 2)
    fig["pool_w2_vs_pool_w1"] = round(fig["pool_w1_s"] / fig["pool_w2_s"], 2)
    print(json.dumps(fig, indent=2))
    print(f"s3 kf over local kf: {100 * s3_overhead:+.1f}%  target <= +15%  {'PASS' if s3_overhead <= 0.15 else 'FAIL'}"
          f"  (same bytes: {fig['s3_same_bytes']})")
    print(f"ray w2 vs pool w1:   {ray_speedup:.2f}x  target >= 1.7x  {'PASS' if ray_speedup >= 1.7 else 'FAIL'}")
    print(f"pool w2 vs pool w1:  {fig['pool_w2_vs_pool_w1']:.2f}x  (for reference)")
    with open(os.path.join(a.out, "scale-quick.json" if a.quick else "scale.json"), "w") as f:
        json.dump(fig, f, indent=2)
    return 0 if (s3_overhead <= 0.15 and ray_speedup >= 1.7 and fig["s3_same_bytes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
