"""Stage 1 with videos read by URL from a loopback HTTP server: the same samples as from the
local files, also when a fifth of the requests fail on the way; a URL that stays broken is one
line of the errors file, quickly.

A sample's json names its source (the URL, or the local path), so shards are compared member
by member with `source` cut to its file name: every other byte (whole videos, frame JPEGs, the
other json fields in their order, member names and order, tar names) must be equal.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
import time

import pytest

from tests.http_fixtures import closed_port, serve_folder
from tests.pack_helpers import VIDEO_SPECS, make_videos, write_manifest
from vdp.cli import pack
from vdp.io import storage

KINDS = ["video-only", "un", "kf"]
# one record not there; one a web page, not a video (not a .txt: FFmpeg's tty demuxer plays those)
NAMES = [*sorted(VIDEO_SPECS), "missing.mp4", "page.html"]
FLAGS = ["--samples_per_tar", "4", "--workers", "2", "--no_progress"]


def rows(prefix: str, names: list[str] = NAMES) -> list[dict]:
    return [{"video_path": prefix + name, "value": f"caption {name}"} for name in names]


def run(manifest: str, kind: str, out: str, *extra: str) -> int:
    return pack.main(["--manifest", manifest, "--type", kind, "--save_path", out, *FLAGS, *extra])


def _normalised(name: str, data: bytes) -> bytes:
    if not name.endswith(".json"):
        return data
    doc = json.loads(data)
    doc["source"] = os.path.basename(doc["source"])
    return json.dumps(doc, ensure_ascii=False).encode()


def shard_members(folder: str) -> dict[str, list[tuple[str, bytes]]]:
    """tar name -> its members in order, as (name, bytes) with json `source` cut to the file name."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.tar"))):
        with tarfile.open(path) as tar:
            out[os.path.basename(path)] = [(m.name, _normalised(m.name, tar.extractfile(m).read())) for m in tar]
    return out


def errors(folder: str) -> dict[str, str]:
    """source -> reason, from OUT/errors-0.jsonl (each source at most once)."""
    with open(os.path.join(folder, "errors-0.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert len({e["source"] for e in lines}) == len(lines), lines
    return {e["source"]: e["reason"] for e in lines}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The test videos and a web page served over HTTP from one server thread for the module."""
    root = str(tmp_path_factory.mktemp("httpsrc"))
    folder = os.path.join(root, "videos")
    make_videos(folder)
    with open(os.path.join(folder, "page.html"), "w") as f:
        f.write("<!doctype html><html><body>This video is unavailable.</body></html>\n" * 50)
    with serve_folder(folder) as server:
        yield root, server


@pytest.fixture(scope="module")
def local(site):
    """kind -> shard members of the run on the local files (relative paths, the same rows)."""
    root, _ = site
    manifest = write_manifest(os.path.join(root, "videos", "local.jsonl"), rows(""))
    out = {}
    for kind in KINDS:
        assert run(manifest, kind, os.path.join(root, f"local-{kind}")) == 1
        out[kind] = shard_members(os.path.join(root, f"local-{kind}"))
        assert len(out[kind]) == 3 and errors(os.path.join(root, f"local-{kind}"))
    return out


def check_url_run(root: str, server, local_members: dict, kind: str, out_name: str, *extra: str) -> None:
    out = os.path.join(root, out_name)
    manifest = write_manifest(os.path.join(root, f"{out_name}.jsonl"), rows(server.url + "/"))
    assert run(manifest, kind, out, *extra) == 1
    assert shard_members(out) == local_members
    found = errors(out)
    assert sorted(found) == [f"{server.url}/missing.mp4", f"{server.url}/page.html"]
    assert found[f"{server.url}/missing.mp4"] == f"missing file: {server.url}/missing.mp4 (HTTP 404)"
    assert found[f"{server.url}/page.html"].startswith("not a video: ")


@pytest.mark.parametrize("kind", KINDS)
def test_urls_give_the_local_samples(site, local, kind):
    root, server = site
    with server.behaving() as counts:
        check_url_run(root, server, local[kind], kind, f"url-{kind}")
    assert counts["GET"] >= len(VIDEO_SPECS)


def test_a_fifth_of_requests_failing_changes_nothing(site, local):
    """503s, dropped connections and bodies cut short, drawn with a fixed seed, are all retried."""
    root, server = site
    with server.behaving(failure_rate=0.2, seed=11) as counts:
        for kind in KINDS:
            check_url_run(root, server, local[kind], kind, f"flaky-{kind}")
    assert counts["503"] and counts["drop"] and counts["short"], counts


def test_no_head_and_no_content_length(site, local):
    """A server that refuses HEAD and tells no length: sizes come from a GET."""
    root, server = site
    with server.behaving(head=False, content_length=False) as counts:
        check_url_run(root, server, local["kf"], "kf", "nohead-kf")
    assert counts["HEAD"] > 0


def test_relative_paths_under_a_url_video_root(site, local):
    root, server = site
    out = os.path.join(root, "root-kf")
    manifest = write_manifest(os.path.join(root, "relative.jsonl"), rows(""))
    assert run(manifest, "kf", out, "--video_root", server.url + "/") == 1
    assert shard_members(out) == local["kf"]
    assert sorted(errors(out).values())[0] == f"missing file: {server.url}/missing.mp4 (HTTP 404)"


def test_urls_that_stay_broken_are_one_error_line_each(site, monkeypatch):
    """Forbidden, failing with 500 on every try, or on a host that refuses connections: one
    line each naming URL and status or fault, after the retries, in bounded time."""
    root, server = site
    monkeypatch.setattr(storage._config, "backoff", 0.001)  # the retries, without their waits
    refused = f"http://127.0.0.1:{closed_port()}/gone.mp4"
    manifest = write_manifest(
        os.path.join(root, "broken.jsonl"),
        rows(server.url + "/", ["tiny.mp4", "private.mp4", "failing.mp4"]) + rows("", [refused]),
    )
    out = os.path.join(root, "broken")
    started = time.monotonic()
    with server.behaving(statuses={"private.mp4": 403, "failing.mp4": 500}) as counts:
        assert run(manifest, "kf", out) == 1
    assert time.monotonic() - started < 30
    found = errors(out)
    assert found.pop(f"{server.url}/private.mp4") == f"unreadable: permission denied: {server.url}/private.mp4 (HTTP 403)"
    assert found.pop(f"{server.url}/failing.mp4") == f"unreadable: {server.url}/failing.mp4 (HTTP 500)"
    reason = found.pop(refused)
    assert reason.startswith(f"unreadable: {refused} (") and "Cannot connect" in reason, reason
    assert found == {}
    assert counts["GET"] >= storage._config.http_attempts  # the 500s were retried
