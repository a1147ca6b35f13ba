"""Run a stage's work units (tars) as Ray tasks: one machine or a cluster, one command.

Each unit runs start to end in one task and writes its own output atomically, so the driver
only collects small results; the outputs are the same bytes as the multiprocessing path's
because a unit's function is the same code. A unit whose task crashed or overran its
deadline comes back as a WorkFailure for the runner (vdp.run.runner) to run again locally,
behind the pool's crash isolation.

On a cluster: `ray start --head` on one node, `ray start --address HEAD:6379` on the others,
the repo and the data at the same paths everywhere (or data on s3://), then the stage command
with `--executor ray --ray_address auto` on the head.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from vdp.run.pool import WorkFailure


def start_ray(address: str | None, workers: int):
    """Connect to a cluster (`address`) or start a local Ray with `workers` CPUs."""
    import ray

    if ray.is_initialized():
        return ray
    # The workers run the installed package (the same Python environment on every node) and
    # reach the same object stores as the driver.
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "OSS_"))}
    env = {"env_vars": forwarded}
    kwargs = {"runtime_env": env, "log_to_driver": False, "include_dashboard": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=workers, **kwargs)
    return ray


def ray_map_units(
    fn: Callable, units: list, workers: int, address: str | None, deadline: Callable[[object], float]
) -> Iterator[tuple[int, object]]:
    """Yield (unit index, fn(unit) or WorkFailure) as units finish.

    At most `2 * workers` tasks are queued at once, so a large plan does not flood the
    scheduler; `deadline(unit)` bounds each task's seconds.
    """
    ray = start_ray(address, workers)
    remote = ray.remote(max_retries=1, num_cpus=1)(fn)
    window = max(2, 2 * workers) if not address else max(2, 2 * int(ray.cluster_resources().get("CPU", workers)))
    pending: dict = {}
    started: dict = {}
    next_unit = 0
    while next_unit < len(units) or pending:
        while next_unit < len(units) and len(pending) < window:
            ref = remote.remote(units[next_unit])
            pending[ref] = next_unit
            started[ref] = time.monotonic()
            next_unit += 1
        done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in done:
            index = pending.pop(ref)
            try:
                yield index, ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError) as e:
                yield index, WorkFailure(f"crash: ray task failed: {type(e).__name__}")
        now = time.monotonic()
        for ref in [r for r in pending if now - started[r] > deadline(units[pending[r]])]:
            ray.cancel(ref, force=True)
            yield pending.pop(ref), WorkFailure("timeout: ray task overran its deadline")
