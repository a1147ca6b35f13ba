"""Stage 1 with everything on S3 (moto's server on loopback): the same bytes as a local run,
also when a fifth of the requests fail on the way."""

from __future__ import annotations

import json
import os

import boto3
import pytest

from tests.pack_helpers import make_videos, tree_bytes, write_manifest
from tests.s3_fixtures import faulty_proxy, make_bucket
from vdp.cli import pack
from vdp.run.accounting import is_accounting


def upload_tree(endpoint: str, bucket: str, folder: str, prefix: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint)
    for name in os.listdir(folder):
        client.upload_file(os.path.join(folder, name), bucket, f"{prefix}/{name}")


def download_tree(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        rel = obj["Key"][len(prefix) + 1 :]
        if "/" not in rel and not is_accounting(rel):  # top level outputs only, like tree_bytes
            out[rel] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """Videos, a manifest with relative paths (one missing), and the local run's output."""
    root = tmp_path_factory.mktemp("s3src")
    videos = make_videos(str(root / "videos"))
    rows = [{"video_path": name, "value": f"caption {name}"} for name in sorted(videos)]
    rows.append({"video_path": "missing.mp4", "value": "gone"})
    manifest = write_manifest(str(root / "videos" / "clips.jsonl"), rows)
    outs = {}
    for kind in ("kf", "video-only"):
        out = str(root / f"local-{kind}")
        rc = pack.main(["--manifest", manifest, "--type", kind, "--save_path", out, "--samples_per_tar", "4",
                        "--workers", "2", "--no_progress"])
        assert rc == 1
        outs[kind] = tree_bytes(out)
    return str(root / "videos"), outs


@pytest.mark.parametrize("kind", ["kf", "video-only"])
def test_s3_in_s3_out_gives_the_local_bytes(s3_env, local_run, kind):
    folder, local = local_run
    bucket = f"pack-{kind}"
    make_bucket(s3_env, bucket)
    upload_tree(s3_env, bucket, folder, "raw")
    out = f"s3://{bucket}/shards"
    rc = pack.main(["--manifest", f"s3://{bucket}/raw/clips.jsonl", "--type", kind, "--save_path", out,
                    "--samples_per_tar", "4", "--workers", "2", "--no_progress", "--s3_endpoint", s3_env])
    assert rc == 1
    remote = download_tree(s3_env, bucket, "shards")
    assert sorted(remote) == sorted(local[kind])
    for name in local[kind]:
        if name.endswith(".tar"):
            assert remote[name] == local[kind][name], name
    errors = [json.loads(line) for line in remote["errors-0.jsonl"].splitlines()]
    assert [e["reason"] for e in errors] == [f"missing file: s3://{bucket}/raw/missing.mp4"]

    # rerun: everything is found done remotely
    rc = pack.main(["--manifest", f"s3://{bucket}/raw/clips.jsonl", "--type", kind, "--save_path", out,
                    "--samples_per_tar", "4", "--workers", "2", "--no_progress", "--s3_endpoint", s3_env])
    assert rc == 1
    assert download_tree(s3_env, bucket, "shards") == remote


def test_a_fifth_of_requests_failing_changes_nothing(s3_env, local_run):
    folder, local = local_run
    make_bucket(s3_env, "flaky-pack")
    upload_tree(s3_env, "flaky-pack", folder, "raw")
    with faulty_proxy(s3_env, failure_rate=0.2, seed=7) as (proxy, counts):
        rc = pack.main(["--manifest", "s3://flaky-pack/raw/clips.jsonl", "--type", "kf", "--save_path",
                        "s3://flaky-pack/shards", "--samples_per_tar", "4", "--workers", "2", "--no_progress",
                        "--s3_endpoint", proxy])
    assert rc == 1
    assert counts["503"] + counts["dropped"] > 5
    remote = download_tree(s3_env, "flaky-pack", "shards")
    assert {n: b for n, b in remote.items() if n.endswith(".tar")} == {
        n: b for n, b in local["kf"].items() if n.endswith(".tar")
    }
