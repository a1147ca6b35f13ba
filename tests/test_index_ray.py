"""--executor ray for stage 3: the same indexes, energon metadata, errors and dump as the worker
pool, byte for byte (local Ray)."""

from __future__ import annotations

import os

import pytest

from tests.index_fixtures import energon_meta, train_sentencepiece, tree_files, write_tokenized_dataset
from tests.ray_helpers import on_ray_only
from tests.s3_fixtures import make_bucket, moto_server
from tests.test_index import PATCHES, write_defect_dataset
from tests.test_index_s3 import comparable, download_tree, upload_tree
from vdp.cli import check_pair
from vdp.cli import index as index_main
from vdp.io import storage

ray = pytest.importorskip("ray")


def energon_files(folder: str) -> dict[str, bytes]:
    """Take energon's metadata out of the dataset folder, so the next run writes it afresh."""
    found = energon_meta(tree_files(folder))
    for name in found:
        os.unlink(os.path.join(folder, name))
    return found


def test_ray_index_is_the_pools(tmp_path, ray_local):
    dataset = write_defect_dataset(str(tmp_path / "d"))
    flags = ["--dataset_path", dataset, "--dataset_name", "ds", "--patches", str(PATCHES), "--max_len", "120",
             "--workers", "2", "--energon"]  # fmt: skip
    assert index_main.main([*flags, "--output", str(tmp_path / "pool")]) == 1
    pool_energon = energon_files(dataset)
    with on_ray_only():
        assert index_main.main([*flags, "--output", str(tmp_path / "ray"), "--executor", "ray"]) == 1
    assert tree_files(str(tmp_path / "ray")) == tree_files(str(tmp_path / "pool"))
    assert energon_files(dataset) == pool_energon and ".nv-meta/.info.json" in pool_energon


def test_ray_check_pair_decodes_and_dumps_as_the_pool(tmp_path, ray_local):
    """check_pair's decoder is built inside each Ray worker from the tokenizer's path."""
    model = train_sentencepiece(str(tmp_path / "sp"))
    write_tokenized_dataset(str(tmp_path / "d"), model, PATCHES)
    flags = ["--dataset_path", str(tmp_path / "d"), "--dataset_name", "ds", "--patches", str(PATCHES),
             "--tokenizer", model, "--dump", "3", "--workers", "2"]  # fmt: skip
    assert check_pair.main([*flags, "--out", str(tmp_path / "pool")]) == 1
    with on_ray_only():
        assert check_pair.main([*flags, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 1
    pool, on_ray = tree_files(str(tmp_path / "pool")), tree_files(str(tmp_path / "ray"))
    assert sorted(on_ray) == sorted(pool) and len([n for n in pool if n.endswith("text.txt")]) == 3
    # report.html differs only in the timings it shows
    assert {n: b for n, b in on_ray.items() if n != "report.html"} == {
        n: b for n, b in pool.items() if n != "report.html"
    }


def test_ray_tasks_read_an_s3_dataset(tmp_path, ray_local):
    """Each task configures its own storage from --s3_endpoint: the indexes are the pool's, with URLs."""
    dataset = write_defect_dataset(str(tmp_path / "d"))
    flags = ["--dataset_name", "ds", "--patches", str(PATCHES), "--max_len", "120", "--workers", "2"]
    assert index_main.main(["--dataset_path", dataset, "--output", str(tmp_path / "pool"), *flags]) == 1
    with moto_server() as endpoint, on_ray_only():
        make_bucket(endpoint, "rayidx")
        upload_tree(endpoint, dataset, "s3://rayidx/set")
        rc = index_main.main(["--dataset_path", "s3://rayidx/set", "--output", "s3://rayidx/idx",
                              "--s3_endpoint", endpoint, "--executor", "ray", *flags])  # fmt: skip
        remote = download_tree(endpoint, "s3://rayidx/idx")
    storage.configure(None)
    assert rc == 1
    assert comparable(remote, "s3://rayidx/set") == comparable(tree_files(str(tmp_path / "pool")), dataset)


def test_ray_dedup_is_the_pools(tmp_path, ray_local):
    """vdp-dedup's scan runs as Ray tasks too: the same groups and indexes as the worker pool."""
    from tests.pack_helpers import make_videos, write_manifest
    from vdp.cli import dedup, pack

    videos = make_videos(str(tmp_path / "videos"))
    rows = [{"video_path": p, "value": n} for n, p in sorted(videos.items())]
    manifest = write_manifest(str(tmp_path / "m.jsonl"), rows + rows[:3])  # three exact copies
    shards = str(tmp_path / "shards")
    assert pack.main(["--manifest", manifest, "--type", "un", "--num_frames", "4", "--samples_per_tar", "4",
                      "--save_path", shards, "--workers", "2", "--no_progress"]) == 0  # fmt: skip
    flags = ["--dataset_path", shards, "--dataset_name", "ds", "--workers", "2", "--no_progress"]
    assert dedup.main([*flags, "--output", str(tmp_path / "pool")]) == 0
    with on_ray_only():
        assert dedup.main([*flags, "--output", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    pool = tree_files(str(tmp_path / "pool"))
    assert tree_files(str(tmp_path / "ray")) == pool
    assert pool["ds.duplicates.jsonl"].count(b"\n") >= 3, "each copy grouped with its original"
