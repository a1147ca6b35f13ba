#!/usr/bin/env python
"""End-to-end demo on data it makes itself: encode a few small videos with PyAV, pack them all
three ways (stage 1), tokenize the keyframe shards with a small LLaMA-2-like tokenizer trained
on the spot (stage 2), validate and index them, read one training batch back through
Megatron-Energon, dump a few samples to an HTML report (stage 3), and print where everything is. Run from anywhere: python scripts/demo.py [OUT]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.synth import VideoSpec, make_video  # noqa: E402
from tests.synth_tokenizer import train_llama_like_tokenizer  # noqa: E402

DEMO_VIDEOS = {
    "street.mp4": VideoSpec(num_frames=120, width=320, height=180, bframes=2, gop=30),
    "phone_portrait.mp4": VideoSpec(num_frames=90, width=180, height=320, rotation=90),
    "screen.webm": VideoSpec(num_frames=75, width=320, height=180, codec="libvpx-vp9", gop=25),
    "drone.mkv": VideoSpec(num_frames=100, width=320, height=180, codec="libx265", gop=25),
    "interview.mp4": VideoSpec(num_frames=80, width=320, height=180, vfr=True, audio=True),
}


def run(cmd: list[str]) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def show_a_training_batch(tokens: str) -> None:
    """What a trainer gets from the stage-2 shards: one batch through Megatron-Energon with no
    code but our task encoder (index/main.py --energon named the sample type)."""
    try:
        from megatron.energon import WorkerConfig, get_loader, get_train_dataset

        from vdp.energon import PackedSequenceEncoder
    except ImportError:
        print("(no training batch shown: pip install '.[energon]')")
        return
    ds = get_train_dataset(tokens, batch_size=2, shuffle_buffer_size=None, max_samples_per_sequence=None,
                           worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0),
                           task_encoder=PackedSequenceEncoder(image_size=224))  # fmt: skip
    batch = next(iter(get_loader(ds)))
    names = ("input_ids", "labels", "loss_mask", "position_ids", "cu_seqlens", "images", "image_positions")
    print("a training batch (README: Training on the shards): "
          + ", ".join(f"{n} {tuple(getattr(batch, n).shape)}" for n in names))  # fmt: skip


def main() -> int:
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "demo_out"))
    videos = os.path.join(out, "videos")
    rows = []
    for i, (name, spec) in enumerate(DEMO_VIDEOS.items()):
        make_video(os.path.join(videos, name), spec)
        rows.append({"video_path": name, "value": f"A demo clip number {i}: {name.split('.')[0].replace('_', ' ')}."})
    rows.append({"video_path": "lost_in_transfer.mp4", "value": "this file does not exist"})
    manifest = os.path.join(out, "clips.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"made {len(DEMO_VIDEOS)} videos in {videos} and a manifest with one missing file: {manifest}")

    results = {}
    for kind in ("video-only", "un", "kf"):
        save = os.path.join(out, "shards", kind)
        rc = run([sys.executable, "pack.py", "--dataset", "jsonl", "--manifest", manifest, "--video_root", videos,
                  "--type", kind, "--save_path", save, "--samples_per_tar", "4", "--workers", "2", "--no_progress"])
        results[kind] = (rc, save)
    tokenizer = train_llama_like_tokenizer(os.path.join(out, "demo_tokenizer"))
    tokens = os.path.join(out, "tokens")
    results["tokenize"] = (run([sys.executable, "tokenize/main.py", "--dataset_path", results["kf"][1],
                                "--save_path", tokens, "--tokenizer", tokenizer, "--sample_type", "kf",
                                "--shard_size", "2", "--patches", "32", "--max_len", "2048", "--workers", "2",
                                "--no_progress"]), tokens)
    index = os.path.join(out, "index")
    results["index"] = (run([sys.executable, "index/main.py", "--dataset_path", tokens, "--dataset_name", "demo_kf",
                             "--output", index, "--patches", "32", "--max_len", "2048", "--tokenizer", tokenizer,
                             "--workers", "2", "--energon"]), index)
    if results["index"][0] == 0:
        show_a_training_batch(tokens)
    check = os.path.join(out, "check")
    results["check_pair"] = (run([sys.executable, "index/check_pair.py", "--dataset_path", results["kf"][1],
                                  "--dataset_name", "demo_kf_frames", "--workers", "2", "--dump", "3",
                                  "--out", check]), check)

    print("\nwhere things are:")
    for kind, (rc, save) in results.items():
        tars = sorted(n for n in os.listdir(save) if n.endswith((".tar", ".pkl", ".json", ".html")))
        print(f"  {kind:<10} exit={rc}  {save}: {', '.join(tars) or '(see subfolders)'}")
    print(f"  report for a human: {os.path.join(check, 'report.html')}")
    print("exit 1 is expected for the three pack runs: the missing file is listed in each errors-0.jsonl")
    expected = {"video-only": (1,), "un": (1,), "kf": (1,), "tokenize": (0,), "index": (0,), "check_pair": (0,)}
    return 0 if all(results[k][0] in ok for k, ok in expected.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
