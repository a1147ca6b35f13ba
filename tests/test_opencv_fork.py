"""OpenCV's thread count is set once, in the parent, before any fork; a forked tokenize worker never sets it.

In a child forked after the parent ran OpenCV on several threads, cv2.setNumThreads waits
forever on the parent's thread pool (or crashes): those threads did not come along. So the
parent here runs OpenCV on four threads first, then a child is forked as the pool forks its
workers and runs the worker's initializer and a group whose frames are shrunk (OpenCV in the
child). All of it runs in a subprocess with a deadline, so a hang fails the test instead of
stalling it.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.stage1_fixtures import SampleSpec, make_jpeg, train_llama_like_tokenizer, write_stage1_tar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import multiprocessing as mp, sys
sys.path.insert(0, sys.argv[1])
import cv2
import numpy as np

cv2.setNumThreads(4)  # a host program's choice, or the default on a machine with more cores
picture = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
for _ in range(3):
    cv2.resize(picture, (700, 700), interpolation=cv2.INTER_AREA)  # OpenCV's thread pool is running

from vdp.tokenize import stage as stage2

model, src, out = sys.argv[2:5]
options = stage2.TokenizeOptions(model, "un", patches=4, max_side=64)  # the frames are shrunk: OpenCV in the child


def worker():  # what a pool worker does once forked: its initializer, then a group
    stage2.init_worker(options)
    job = stage2.GroupJob(0, 0, (src + "/x.tar",), ("x.tar",), out + "/direct")
    result = stage2.tokenize_group(job)
    assert result.samples == 2 and result.resized == 4, result


child = mp.get_context("fork").Process(target=worker)
child.start()
child.join(30)
if child.is_alive():
    child.kill()
    print("child: hung")
else:
    print(f"child: exit {child.exitcode}")

from vdp.cli import tokenize as tokenize_command

rc = tokenize_command.main(["--dataset_path", src, "--save_path", out + "/main", "--tokenizer", model,
    "--sample_type", "un", "--patches", "4", "--max_side", "64", "--workers", "2", "--no_progress", "--timeout", "60"])
print(f"main: exit {rc}")
"""


def test_a_worker_forked_after_the_parent_ran_opencv_on_threads_does_not_hang(tmp_path):
    model = train_llama_like_tokenizer(str(tmp_path / "llama"))
    frames = [(200, 120, make_jpeg(200, 120, i)) for i in range(2)]
    specs = [SampleSpec(f"{k:09d}", frames, "a red cup") for k in range(2)]
    write_stage1_tar(str(tmp_path / "src" / "x.tar"), specs)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, ROOT, model, str(tmp_path / "src"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert "child: exit 0" in done.stdout, done.stdout + done.stderr
    assert "main: exit 0" in done.stdout, done.stdout + done.stderr
