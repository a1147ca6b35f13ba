"""vdp.io.storage on http(s) URLs, against a loopback HTTP server that misbehaves on demand."""

from __future__ import annotations

import os
import time

import pytest

from tests.http_fixtures import closed_port, serve_folder
from vdp.errors import UsageError
from vdp.io import storage

DATA = bytes(range(256)) * 400  # 100 KB, every offset distinguishable


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    (folder / "v.bin").write_bytes(DATA)
    (folder / "empty.bin").write_bytes(b"")
    with serve_folder(str(folder)) as s:
        yield s


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(storage._config, "backoff", 0.001)
    yield
    storage.configure(None)  # a test may have changed the timeouts the client was made with


def test_a_url_is_a_remote_read_only_input(tmp_path):
    url = "https://example.org/videos/a.mp4"
    assert storage.is_remote(url) and storage.is_url(url) and not storage.is_url("s3://b/a.mp4")
    assert storage.join("https://example.org/videos/", "a.mp4") == url
    assert storage.dirname(url) == "https://example.org/videos" and storage.absolute(url) == url
    with pytest.raises(UsageError, match="read-only"):
        storage.write_bytes_atomically(url, b"x")
    with pytest.raises(UsageError, match="read-only"):
        storage.check_output_folder("https://example.org/out")
    with pytest.raises(UsageError, match="not a folder"):
        storage.list_files("https://example.org/videos")


def test_stat_exists_read_and_open(server):
    url = f"{server.url}/v.bin"
    assert storage.stat(url) == ("file", len(DATA)) and storage.size(url) == len(DATA)
    assert storage.exists(url) and not storage.isdir(url)
    assert storage.read_bytes(url) == DATA
    assert storage.stat(f"{server.url}/empty.bin") == ("file", 0)
    with storage.open_read(url) as f:
        assert f.read() == DATA
    with storage.open_read(url, whole_below=0) as f:  # ranged reads, as for a large video
        f.seek(1000)
        assert f.read(10) == DATA[1000:1010]
        f.seek(-5, os.SEEK_END)
        assert f.read() == DATA[-5:]


def test_missing_and_forbidden_say_so_with_the_status(server):
    gone = f"{server.url}/gone.bin"
    assert storage.stat(gone) is None and not storage.exists(gone)
    with pytest.raises(FileNotFoundError, match=r"gone\.bin \(HTTP 404\)"):
        storage.stat(gone, missing_ok=False)
    with pytest.raises(FileNotFoundError, match=r"\(HTTP 404\)"):
        storage.read_bytes(gone)
    with server.behaving(statuses={"v.bin": 403, "old.bin": 410}) as counts:
        with pytest.raises(PermissionError, match=r"v\.bin \(HTTP 403\)"):
            storage.read_bytes(f"{server.url}/v.bin")
        with pytest.raises(FileNotFoundError, match=r"\(HTTP 410\)"):
            storage.read_bytes(f"{server.url}/old.bin")
    assert counts["GET"] == 2  # neither was retried


def test_a_server_without_head_or_lengths(server):
    url = f"{server.url}/v.bin"
    with server.behaving(head=False, content_length=False) as counts:
        assert storage.stat(url) == ("file", len(DATA))
        assert storage.read_bytes(url) == DATA
        with storage.open_read(url, whole_below=0) as f:
            f.seek(300)
            assert f.read(7) == DATA[300:307]
    assert counts["HEAD"] and counts["GET"]


def test_faults_are_retried_until_the_bytes_are_right(server):
    url = f"{server.url}/v.bin"
    with server.behaving(failure_rate=0.3, seed=5) as counts:
        for _ in range(10):
            assert storage.stat(url) == ("file", len(DATA))
            assert storage.read_bytes(url) == DATA
            with storage.open_read(url, whole_below=0) as f:
                f.seek(5000)
                assert f.read(100) == DATA[5000:5100]
    assert counts["503"] and counts["drop"] and counts["short"], counts


def test_a_body_cut_short_is_caught_and_retried(server):
    url = f"{server.url}/v.bin"
    with server.behaving(failure_rate=0.5, faults=("short",), seed=2) as counts:
        assert [storage.read_bytes(url) for _ in range(6)] == [DATA] * 6
    assert counts["short"] > 0
    with server.behaving(failure_rate=1.0, faults=("short",)) as counts, pytest.raises(storage.URLReadError):
        storage.read_bytes(url)
    assert counts["GET"] == storage._config.http_attempts


def test_a_status_that_stays_failing_ends_after_the_attempts(server):
    with server.behaving(statuses={"v.bin": 503}) as counts, pytest.raises(storage.HTTPStatusError, match=r"\(HTTP 503\)"):
        storage.read_bytes(f"{server.url}/v.bin")
    assert counts["GET"] == storage._config.http_attempts


def test_a_refused_connection_ends_with_the_url_named():
    url = f"http://127.0.0.1:{closed_port()}/v.bin"
    with pytest.raises(storage.URLReadError, match="Cannot connect") as raised:
        storage.read_bytes(url)
    assert url in str(raised.value)


def test_a_stalled_server_is_given_up_on_in_bounded_time(server, monkeypatch):
    monkeypatch.setattr(storage._config, "http_read_timeout", 0.3)
    monkeypatch.setattr(storage._config, "http_attempts", 2)
    storage.configure(None)  # a client with the short timeout
    started = time.monotonic()
    with server.behaving(stall=1.5), pytest.raises(storage.URLReadError, match="Timeout"):
        storage.read_bytes(f"{server.url}/v.bin")
    assert time.monotonic() - started < 1.5
