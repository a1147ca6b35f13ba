"""What the --executor ray tests share."""

from __future__ import annotations

from contextlib import contextmanager

import pytest


@contextmanager
def on_ray_only(stage_module):
    """Every unit must be run by a Ray task: the stage's local redo of a failed task is refused."""

    def refuse(units, *_):
        raise AssertionError(f"Ray tasks failed and were redone locally: {units}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage_module, "_in_pool", refuse)
        yield
