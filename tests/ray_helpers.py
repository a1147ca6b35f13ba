"""What the --executor ray tests share."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from vdp.run import runner


@contextmanager
def on_ray_only():
    """Every unit must be run by a Ray task: the runner's local redo of a failed task is refused."""

    def refuse(work, units, *_):
        raise AssertionError(f"Ray tasks failed and were redone locally: {units}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_on_pool", refuse)
        yield
