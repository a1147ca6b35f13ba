"""Stage 2 on object storage (moto's S3 server on loopback): tokenize/main.py reading stage-1 tars,
the tokenizer and writing its shards in a bucket gives the local run's shards byte for byte and
its errors (with the tars' URLs in place of their paths); also when a fifth of the requests fail,
when tars are streamed with ranged read-ahead, over oss:// through oss2, and on a rerun."""

from __future__ import annotations

import functools
import io
import json
import os

import pytest

from tests.s3_fixtures import faulty_proxy, make_bucket
from tests.stage1_fixtures import write_stage1_corpus
from tests.test_index_s3 import download_tree, upload_tree
from tests.test_tokenize import base_args, corrupt_copies, run, tree_bytes
from vdp.io import storage

FLAGS = ["--sample_type", "un", "--patches", "8", "--shard_size", "3", "--workers", "2"]


def tokenize_args(src: str, out: str, tok: str, *extra: str) -> list[str]:
    return [*base_args(src, out, tok, *FLAGS[1:2]), *FLAGS[2:], *extra]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """Seven tars (two of them damaged) and the tokenizer, and what a local run makes of them."""
    from tests.test_tokenize import train_llama_like_tokenizer

    root = tmp_path_factory.mktemp("tok_s3")
    src = root / "src"
    good = write_stage1_corpus(str(src), tars=5, samples_per_tar=6, frames=(2, 4), words=(3, 40), seed=5)
    corrupt_copies(good[1], src)  # b-truncated.tar, c-header.tar sort before the shard-* tars
    (root / "tok").mkdir()
    model = train_llama_like_tokenizer(str(root / "tok" / "llama"))
    os.rename(model, root / "tok" / "tokenizer.model")
    model = str(root / "tok" / "tokenizer.model")
    out = str(root / "out")
    assert run(*tokenize_args(str(src), out, model)) == 1  # the damaged tars' errors
    return str(src), model, comparable(tree_bytes(out), str(src))


def comparable(files: dict[str, bytes], src_root: str) -> dict:
    """The shards' bytes and the error rows with the input folder replaced by ROOT."""
    shards = {n: b for n, b in files.items() if n.endswith(".tar")}
    rows = [json.loads(line) for line in files["errors.jsonl"].splitlines()]
    for row in rows:
        assert row["source"].startswith(src_root.rstrip("/") + "/"), row
        row["source"] = "ROOT" + row["source"][len(src_root.rstrip("/")) :]
    return {"shards": shards, "errors": rows}


def upload_inputs(endpoint: str, bucket: str, src: str, model: str) -> tuple[str, str]:
    make_bucket(endpoint, bucket)
    upload_tree(endpoint, src, f"s3://{bucket}/src")
    upload_tree(endpoint, os.path.dirname(model), f"s3://{bucket}/tok")
    return f"s3://{bucket}/src", f"s3://{bucket}/tok/tokenizer.model"


def test_s3_run_gives_the_local_shards_and_errors(s3_env, local_run, capsys):
    src, model, local = local_run
    assert len(local["shards"]) == 3 and {os.path.basename(r["source"]) for r in local["errors"]} == {
        "b-truncated.tar",
        "c-header.tar",
    }
    remote_src, remote_model = upload_inputs(s3_env, "tok", src, model)
    args = tokenize_args(remote_src, "s3://tok/out", remote_model, "--s3_endpoint", s3_env)
    assert run(*args) == 1
    assert comparable(download_tree(s3_env, "s3://tok/out"), remote_src) == local
    capsys.readouterr()
    # a rerun finds every shard done in the bucket and writes nothing
    assert run(*args) == 1
    summary = capsys.readouterr().out
    assert "shards_written=0" in summary and "shards_resumed=3" in summary
    assert comparable(download_tree(s3_env, "s3://tok/out"), remote_src) == local


def test_a_fifth_of_requests_failing_changes_nothing(s3_env, local_run):
    src, model, local = local_run
    remote_src, remote_model = upload_inputs(s3_env, "flaky-tok", src, model)
    with faulty_proxy(s3_env, failure_rate=0.2, seed=4) as (proxy, counts):
        assert run(*tokenize_args(remote_src, "s3://flaky-tok/out", remote_model, "--s3_endpoint", proxy)) == 1
    assert counts["503"] + counts["dropped"] > 5
    assert comparable(download_tree(s3_env, "s3://flaky-tok/out"), remote_src) == local


def test_streamed_tars_give_the_same_shards(s3_env, local_run, monkeypatch):
    """Above open_read's in-memory limit a tar is read front to back with ranged read-ahead."""
    src, model, local = local_run
    remote_src, remote_model = upload_inputs(s3_env, "stream-tok", src, model)
    monkeypatch.setattr(storage, "open_read", functools.partial(storage.open_read, whole_below=0))
    assert run(*tokenize_args(remote_src, "s3://stream-tok/out", remote_model, "--s3_endpoint", s3_env)) == 1
    assert comparable(download_tree(s3_env, "s3://stream-tok/out"), remote_src) == local


def test_oss_run_gives_the_local_shards(s3_env, local_run, monkeypatch):
    """oss:// goes through oss2; moto, answering in OSS's XML dialect, stands in for OSS."""
    src, model, local = local_run
    upload_inputs(s3_env, "osstok", src, model)
    with faulty_proxy(s3_env, failure_rate=0.0, strip_namespace=True) as (proxy, _):
        for k, v in {"OSS_ENDPOINT": proxy, "OSS_ACCESS_KEY_ID": "testing", "OSS_ACCESS_KEY_SECRET": "testing"}.items():
            monkeypatch.setenv(k, v)
        storage.configure(None)
        assert run(*tokenize_args("oss://osstok/src", "oss://osstok/out", "oss://osstok/tok/tokenizer.model")) == 1
    assert comparable(download_tree(s3_env, "s3://osstok/out"), "oss://osstok/src") == local


class _DyingStream(io.BytesIO):
    """A remote tar whose connection keeps dropping after half its bytes, past every retry."""

    def read(self, n: int = -1) -> bytes:
        half = len(self.getvalue()) // 2
        if self.tell() >= half:
            raise ConnectionResetError(104, "reset by peer")
        return super().read(half - self.tell() if n is None or n < 0 else min(n, half - self.tell()))


def test_a_store_that_keeps_failing_leaves_the_group_for_a_rerun(s3_env, local_run, monkeypatch, capsys):
    """The tar is sound, the network is not: no shard, no 'bad tar' error, a rerun finishes the job."""
    src, model, local = local_run
    remote_src, remote_model = upload_inputs(s3_env, "dying-tok", src, model)
    args = tokenize_args(remote_src, "s3://dying-tok/out", remote_model, "--s3_endpoint", s3_env)
    real_open = storage.open_read
    victim = f"{remote_src}/shard-0-6-12-1.tar"  # sorts last: alone in the last group

    def open_read(path, **kw):
        if path == victim:
            return _DyingStream(real_open(path, **kw).read())
        return real_open(path, **kw)

    monkeypatch.setattr(storage, "open_read", open_read)
    assert run(*args) == 1
    err = capsys.readouterr()
    assert "Traceback" not in err.err
    rows = [json.loads(line) for line in download_tree(s3_env, "s3://dying-tok/out")["errors.jsonl"].splitlines()]
    failed = [r for r in rows if r["reason"].startswith("worker failed: object storage")]
    assert len(failed) == 1 and failed[0]["key"] == "shard_2" and "shard-0-6-12-1.tar" in failed[0]["source"]
    assert not any(r["reason"].startswith("bad tar") and "shard-0-6-" in r["source"] for r in rows)
    assert "shard_2.tar" not in "\n".join(download_tree(s3_env, "s3://dying-tok/out")), err.out
    monkeypatch.setattr(storage, "open_read", real_open)
    assert run(*args) == 1  # the damaged local tars' errors only, now
    assert comparable(download_tree(s3_env, "s3://dying-tok/out"), remote_src) == local


def test_missing_remote_inputs_are_usage_errors(s3_env, local_run, tmp_path, capsys):
    src, model, _ = local_run
    make_bucket(s3_env, "empty-tok")
    assert run(*tokenize_args("s3://empty-tok/none", str(tmp_path / "o"), model, "--s3_endpoint", s3_env)) == 2
    assert "no .tar files under s3://empty-tok/none" in capsys.readouterr().err
    assert run(*tokenize_args(src, str(tmp_path / "o"), "s3://empty-tok/tokenizer.model", "--s3_endpoint", s3_env)) == 2
    assert "tokenizer not found: s3://empty-tok/tokenizer.model" in capsys.readouterr().err


def test_local_inputs_to_a_bucket_equal_the_local_run(s3_env, local_run):
    """Frames of local tars are copied into the upload stream (no kernel copy into a socket)."""
    src, model, local = local_run
    make_bucket(s3_env, "up-tok")
    assert run(*tokenize_args(src, "s3://up-tok/out", model, "--s3_endpoint", s3_env)) == 1
    assert comparable(download_tree(s3_env, "s3://up-tok/out"), src) == local
