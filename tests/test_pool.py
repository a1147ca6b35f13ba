"""The worker pool: results in input order, a hang or a crash costs one item, not the run."""

from __future__ import annotations

import os
import signal
import time

from vdp.run.pool import WorkFailure, map_ordered


def square_slowly(x: int) -> int:
    time.sleep(0.01 * (x % 3))
    return x * x


def hang_on_three(x: int) -> int:
    if x == 3:
        time.sleep(60)
    return x


def crash_on_two(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a native crash would
    return x


def test_results_come_in_input_order():
    assert list(map_ordered(square_slowly, range(20), workers=2)) == [x * x for x in range(20)]


def test_a_hung_item_times_out_and_the_rest_go_through():
    start = time.time()
    out = list(map_ordered(hang_on_three, range(6), workers=2, timeout=1))
    assert time.time() - start < 20
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
    assert isinstance(out[3], WorkFailure) and out[3].reason.startswith("timeout")


def test_a_crashing_item_fails_alone():
    out = list(map_ordered(crash_on_two, range(8), workers=2, timeout=5))
    assert [x for i, x in enumerate(out) if i != 2] == [0, 1, 3, 4, 5, 6, 7]
    assert isinstance(out[2], WorkFailure) and out[2].reason.startswith("crash")


def blur(x: int):
    import cv2
    import numpy as np

    return cv2.GaussianBlur(np.full((600, 600, 3), x, np.uint8), (9, 9), 0).shape


def one_opencv_thread() -> None:
    import cv2

    cv2.setNumThreads(1)  # what a stage's worker initializer may well do


def test_workers_use_opencv_after_the_parent_did():
    """A fork after the parent ran OpenCV's thread pool must not hang the workers."""
    import cv2
    import numpy as np

    cv2.setNumThreads(2)
    img = np.random.randint(0, 255, (1500, 1500, 3), np.uint8)
    for _ in range(3):
        cv2.GaussianBlur(cv2.resize(img, (1000, 1000)), (9, 9), 0)
    start = time.time()
    out = list(map_ordered(blur, range(4), workers=2, timeout=3, initializer=one_opencv_thread))
    assert out == [(600, 600, 3)] * 4
    assert time.time() - start < 3


def parent_pid(_: int) -> int:
    return os.getppid()


def test_a_process_running_ray_gets_its_workers_from_a_fork_server(ray_local):
    """Forking a process with Ray's threads can hang a worker on a lock one of them held: the
    pool then starts its workers from a fork server, and forks directly again once Ray is gone."""
    import ray

    assert list(map_ordered(parent_pid, range(2), workers=1)) == [os.getpid()] * 2
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        parents = list(map_ordered(parent_pid, range(2), workers=1))
    finally:
        ray.shutdown()
    assert len(set(parents)) == 1 and parents[0] != os.getpid()
    assert list(map_ordered(parent_pid, range(2), workers=1)) == [os.getpid()] * 2
