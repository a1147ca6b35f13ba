"""--executor ray: the same tars, byte for byte, as the worker pool (local Ray)."""

from __future__ import annotations

import pytest

from tests.pack_helpers import tree_bytes, write_manifest
from tests.synth import VideoSpec, make_video
from vdp.cli import pack

ray = pytest.importorskip("ray")


def test_ray_writes_the_pools_bytes(tmp_path, ray_local):
    rows = []
    for i in range(5):
        path = make_video(str(tmp_path / "v" / f"{i}.mp4"), VideoSpec(num_frames=30 + 5 * i))
        rows.append({"video_path": path, "value": f"clip {i}"})
    rows.append({"video_path": str(tmp_path / "nope.mp4"), "value": "missing"})
    manifest = write_manifest(str(tmp_path / "m.jsonl"), rows)
    common = ["--manifest", manifest, "--type", "kf", "--samples_per_tar", "2", "--workers", "2", "--no_progress"]
    assert pack.main([*common, "--save_path", str(tmp_path / "pool")]) == 1
    assert pack.main([*common, "--save_path", str(tmp_path / "ray"), "--executor", "ray"]) == 1
    pool, on_ray = tree_bytes(str(tmp_path / "pool")), tree_bytes(str(tmp_path / "ray"))
    assert sorted(pool) == ["errors-0.jsonl", "shard-0-0-2-0.tar", "shard-0-2-4-1.tar", "shard-0-4-6-2.tar"]
    assert on_ray == pool
