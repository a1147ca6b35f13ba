"""vdp.io.storage against a real S3 server (moto, its own process) on loopback."""

from __future__ import annotations

import pytest

from tests.s3_fixtures import faulty_proxy, make_bucket
from vdp.io import storage


@pytest.fixture()
def s3(s3_env):
    storage.configure(s3_env)
    yield s3_env
    storage.configure(None)


def test_write_list_read_roundtrip(s3):
    make_bucket(s3, "rtrip")
    storage.write_bytes_atomically("s3://rtrip/a/x.tar", b"x" * 10)
    storage.write_bytes_atomically("s3://rtrip/a/b/y.tar", b"y")
    storage.write_bytes_atomically("s3://rtrip/a/.hidden/z.tar", b"z")
    assert storage.list_files("s3://rtrip/a", ".tar") == ["s3://rtrip/a/b/y.tar", "s3://rtrip/a/x.tar"]
    assert storage.read_bytes("s3://rtrip/a/x.tar") == b"x" * 10
    assert storage.size("s3://rtrip/a/x.tar") == 10
    assert storage.exists("s3://rtrip/a/x.tar") and not storage.exists("s3://rtrip/a/nope.tar")
    with storage.open_read("s3://rtrip/a/x.tar", whole_below=0) as f:
        f.seek(5)
        assert f.read() == b"x" * 5


def test_a_failed_multipart_upload_leaves_nothing(s3):
    make_bucket(s3, "mpart")
    chunk = b"a" * (6 * 1024 * 1024)

    def fill(f):
        for _ in range(5):  # past the first part: a real multipart upload is under way
            f.write(chunk)
        raise RuntimeError("the producer died")

    with pytest.raises(RuntimeError):
        storage.write_stream_atomically("s3://mpart/big.tar", fill)
    assert not storage.exists("s3://mpart/big.tar")
    import boto3

    client = boto3.client("s3", endpoint_url=s3)
    assert client.list_multipart_uploads(Bucket="mpart").get("Uploads", []) == []

    storage.write_stream_atomically("s3://mpart/big.tar", lambda f: [f.write(chunk) for _ in range(5)])
    assert storage.size("s3://mpart/big.tar") == 5 * len(chunk)


def test_transient_faults_are_retried(s3, monkeypatch):
    make_bucket(s3, "flaky")
    with faulty_proxy(s3, failure_rate=0.2, seed=1) as (proxy, counts):
        storage.configure(proxy)
        for i in range(20):
            storage.write_bytes_atomically(f"s3://flaky/o{i}", bytes([i]) * 1000)
        assert [storage.read_bytes(f"s3://flaky/o{i}") for i in range(20)] == [bytes([i]) * 1000 for i in range(20)]
        assert len(storage.list_files("s3://flaky")) == 20
    assert counts["503"] + counts["dropped"] > 0, "the proxy should have failed some requests"


def test_local_paths_behave_the_same(tmp_path):
    p = str(tmp_path / "d" / "f.bin")
    storage.write_bytes_atomically(p, b"abc")
    assert storage.read_bytes(p) == b"abc" and storage.exists(p) and storage.size(p) == 3
    assert storage.list_files(str(tmp_path), ".bin") == [p]


def test_oss_adapter_through_oss2(s3, monkeypatch):
    """oss2 cannot reach a real OSS here: moto, answering in OSS's XML dialect, stands in."""
    make_bucket(s3, "ossbucket")
    with faulty_proxy(s3, failure_rate=0.0, strip_namespace=True) as (proxy, _):
        monkeypatch.setenv("OSS_ENDPOINT", proxy)
        monkeypatch.setenv("OSS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "testing")
        storage.configure(s3)  # drops cached clients
        storage.write_bytes_atomically("oss://ossbucket/d/a.tar", b"A" * 100)
        storage.write_bytes_atomically("oss://ossbucket/d/empty.jsonl", b"")  # an errors file with no errors
        storage.write_stream_atomically("oss://ossbucket/d/e/b.tar", lambda f: f.write(b"B" * (17 * 1024 * 1024)))

        def dies_midway(f):
            f.write(b"C" * (17 * 1024 * 1024))  # one part uploaded already
            raise RuntimeError("the producer died")

        with pytest.raises(RuntimeError):
            storage.write_stream_atomically("oss://ossbucket/d/c.tar", dies_midway)
        assert storage.list_files("oss://ossbucket/d", ".tar") == ["oss://ossbucket/d/a.tar", "oss://ossbucket/d/e/b.tar"]
        assert storage.size("oss://ossbucket/d/e/b.tar") == 17 * 1024 * 1024
        assert storage.read_bytes("oss://ossbucket/d/a.tar") == b"A" * 100
        assert storage.exists("oss://ossbucket/d/empty.jsonl") and storage.read_bytes("oss://ossbucket/d/empty.jsonl") == b""
        assert not storage.exists("oss://ossbucket/d/c.tar")
        with storage.open_read("oss://ossbucket/d/e/b.tar", whole_below=0) as f:
            f.seek(-3, 2)
            assert f.read() == b"BBB"


def test_oss_without_credentials_is_a_clear_error(monkeypatch):
    for v in ("OSS_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(v, raising=False)
    storage.configure(None)
    with pytest.raises(PermissionError, match="OSS_ENDPOINT"):
        storage.read_bytes("oss://b/k")
