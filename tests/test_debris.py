"""vdp.io.debris: a rerun removes what killed writes of its own outputs left, and nothing of anyone else's.

Local temp files are judged by their writer's lock, held by real processes here (one alive, one
SIGKILLed); unfinished uploads are real multipart uploads on moto's S3 server, and on OSS through
oss2 against the same server speaking OSS's dialect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import boto3
import pytest

from tests.s3_fixtures import faulty_proxy, make_bucket
from vdp.io import storage
from vdp.io.debris import remove_stale_partials

# A writer as vdp.io.storage is one: it creates its temp file and holds an exclusive flock while it writes.
HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "wb")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
f.write(b"half a shard")
f.flush()
print("locked", flush=True)
time.sleep(120)
"""


def start_writer(path: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def touch(path) -> str:
    with open(path, "wb") as f:
        f.write(b"left by a killed run")
    return str(path)


def test_a_dead_writers_temp_files_go_a_live_writers_stay(tmp_path):
    final = str(tmp_path / "shard-0-0-4-0.tar")
    dead = touch(tmp_path / ".shard-0-0-4-0.tar.tmp-4242")  # nobody holds its lock
    writer = start_writer(str(tmp_path / ".shard-0-0-4-0.tar.tmp-77"))
    try:
        assert remove_stale_partials([final]) == 1
        assert not os.path.exists(dead)
        assert os.path.exists(tmp_path / ".shard-0-0-4-0.tar.tmp-77"), "a live writer's temp file was removed"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    # killed, its lock is gone with it: now it is debris
    assert remove_stale_partials([final]) == 1
    assert sorted(os.listdir(tmp_path)) == []


def test_other_names_in_a_shared_folder_are_left_alone(tmp_path):
    mine = [str(tmp_path / "shard-0-0-4-0.tar"), str(tmp_path / ".pack" / "shard-0-0-4-0.tar.errors.jsonl")]
    os.makedirs(tmp_path / ".pack")
    theirs = [
        touch(tmp_path / ".shard-1-4-8-0.tar.tmp-4242"),  # another machine's tar
        touch(tmp_path / ".shard-0-0-4-0.tar.part"),  # not our naming pattern
        touch(tmp_path / "shard-0-0-4-0.tar.tmp-4242"),  # not hidden: not ours either
        touch(tmp_path / ".pack" / ".shard-1-4-8-0.tar.errors.jsonl.tmp-4242"),
    ]
    debris = [touch(tmp_path / ".shard-0-0-4-0.tar.tmp-4242"),
              touch(tmp_path / ".pack" / ".shard-0-0-4-0.tar.errors.jsonl.tmp-31337")]  # fmt: skip
    assert remove_stale_partials(mine) == 2
    assert not any(os.path.exists(p) for p in debris)
    assert all(os.path.exists(p) for p in theirs)


def test_a_missing_output_folder_is_nothing_to_clean(tmp_path):
    assert remove_stale_partials([str(tmp_path / "not-yet" / "shard-0-0-4-0.tar")]) == 0


def start_upload(client, bucket: str, key: str) -> str:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    return upload


def pending(client, bucket: str) -> list[str]:
    return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@pytest.fixture()
def s3(s3_env):
    storage.configure(s3_env)
    yield s3_env
    storage.configure(None)


def test_unfinished_uploads_of_owned_keys_are_aborted_on_s3(s3):
    make_bucket(s3, "debris")
    client = boto3.client("s3", endpoint_url=s3)
    for key in ("out/shard-0-0-4-0.tar", "out/.pack/shard-0-0-4-0.tar.errors.jsonl", "out/shard-1-4-8-0.tar",
                "out/errors.jsonl", "other/shard-0-0-4-0.tar"):
        start_upload(client, "debris", key)
    start_upload(client, "debris", "out/shard-0-0-4-0.tar")  # two killed runs: two uploads of one key
    owned = ["s3://debris/out/shard-0-0-4-0.tar", "s3://debris/out/.pack/shard-0-0-4-0.tar.errors.jsonl"]
    assert remove_stale_partials(owned, shared=["s3://debris/out/errors.jsonl"]) == 3
    # another machine's tar, a key another machine may be uploading right now, another folder: untouched
    assert pending(client, "debris") == ["other/shard-0-0-4-0.tar", "out/errors.jsonl", "out/shard-1-4-8-0.tar"]


def test_unfinished_uploads_of_owned_keys_are_aborted_on_oss(s3, monkeypatch):
    make_bucket(s3, "ossdebris")
    client = boto3.client("s3", endpoint_url=s3)
    start_upload(client, "ossdebris", "out/shard-0-0-4-0.tar")
    start_upload(client, "ossdebris", "out/shard-1-4-8-0.tar")
    with faulty_proxy(s3, failure_rate=0.0, strip_namespace=True) as (proxy, _):
        for k, v in {"OSS_ENDPOINT": proxy, "OSS_ACCESS_KEY_ID": "testing", "OSS_ACCESS_KEY_SECRET": "testing"}.items():
            monkeypatch.setenv(k, v)
        storage.configure(None)
        assert remove_stale_partials(["oss://ossdebris/out/shard-0-0-4-0.tar"]) == 1
    assert pending(client, "ossdebris") == ["out/shard-1-4-8-0.tar"]
