"""--executor ray for stage 2: the same shards and errors, byte for byte, as the worker pool (local
Ray), each group one task, also from and to S3 with the tokenizer there; a group whose task failed
is run again on the driver."""

from __future__ import annotations

import os
import random

import pytest

from tests.ray_helpers import on_ray_only
from tests.s3_fixtures import make_bucket, moto_server
from tests.stage1_fixtures import train_llama_like_tokenizer, write_stage1_corpus
from tests.test_index_s3 import download_tree, upload_tree
from tests.test_tokenize import tokenize_main, tree_bytes
from vdp.io import storage
from vdp.run import runner
from vdp.run.pool import WorkFailure

ray = pytest.importorskip("ray")

FLAGS = ["--sample_type", "un", "--patches", "16", "--shard_size", "2", "--workers", "2", "--no_progress"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("raytok")
    corpus = str(root / "corpus")
    write_stage1_corpus(corpus, tars=5, samples_per_tar=4, sample_type="un", seed=4)
    with open(os.path.join(corpus, "zz-broken.tar"), "wb") as f:
        f.write(random.Random(1).randbytes(3000))  # a bad tar in the last group: an error row
    return corpus, train_llama_like_tokenizer(str(root / "llama"))


def run(corpus: str, model: str, out: str, *extra: str) -> int:
    return tokenize_main.main(["--dataset_path", corpus, "--save_path", out, "--tokenizer", model, *FLAGS, *extra])


def test_ray_writes_the_pools_bytes(inputs, tmp_path, ray_local):
    corpus, model = inputs
    assert run(corpus, model, str(tmp_path / "pool")) == 1
    with on_ray_only():
        assert run(corpus, model, str(tmp_path / "ray"), "--executor", "ray") == 1
    pool, on_ray = tree_bytes(str(tmp_path / "pool")), tree_bytes(str(tmp_path / "ray"))
    assert sorted(pool) == ["0-6/shard_0.tar", "0-6/shard_1.tar", "0-6/shard_2.tar", "errors.jsonl"]
    assert on_ray == pool


def test_ray_tasks_read_and_write_s3(inputs, tmp_path, ray_local):
    """Each task configures its storage from --s3_endpoint and fetches the tokenizer itself."""
    corpus, model = inputs
    assert run(corpus, model, str(tmp_path / "pool")) == 1
    pool = tree_bytes(str(tmp_path / "pool"))
    with moto_server() as endpoint, on_ray_only():
        make_bucket(endpoint, "raytok")
        upload_tree(endpoint, corpus, "s3://raytok/stage1")
        upload_tree(endpoint, os.path.dirname(model), "s3://raytok/tok")
        tok = f"s3://raytok/tok/{os.path.basename(model)}"
        rc = run("s3://raytok/stage1", tok, "s3://raytok/tokens", "--executor", "ray", "--s3_endpoint", endpoint)
        remote = download_tree(endpoint, "s3://raytok/tokens")
    storage.configure(None)
    assert rc == 1
    assert {n: b for n, b in remote.items() if n.endswith(".tar")} == {
        n: b for n, b in pool.items() if n.endswith(".tar")
    }
    assert remote["errors.jsonl"] == pool["errors.jsonl"].replace(corpus.encode(), b"s3://raytok/stage1")


def test_a_failed_task_is_redone_on_the_driver(inputs, tmp_path, monkeypatch):
    """Ray stood in for: the task of group 1 comes back failed, the driver runs that group in its pool."""
    corpus, model = inputs
    assert run(corpus, model, str(tmp_path / "pool")) == 1

    def fake_ray(fn, units, workers, address, deadline):
        for index, unit in enumerate(units):
            yield index, WorkFailure("crash: ray task failed: WorkerCrashedError") if index == 1 else fn(unit)

    redone = []
    in_pool = runner._on_pool

    def spy(work, jobs, context, feed=None):
        redone.extend(j.index for j in jobs)
        return in_pool(work, jobs, context, feed)

    monkeypatch.setattr(runner, "ray_map_units", fake_ray)
    monkeypatch.setattr(runner, "_on_pool", spy)
    assert run(corpus, model, str(tmp_path / "ray"), "--executor", "ray") == 1
    assert redone == [1]
    assert tree_bytes(str(tmp_path / "ray")) == tree_bytes(str(tmp_path / "pool"))
