"""Stage 3 on object storage (moto's S3 server on loopback): index/main.py and check_pair.py over an
s3:// copy of a dataset give the local run's indexes, energon metadata, errors and dump, with the
tars' URLs in place of their paths; also when a fifth of the requests fail on the way, and over
oss:// through oss2 (moto speaking OSS's XML dialect)."""

from __future__ import annotations

import functools
import io
import json
import os
import pickle

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from tests.index_fixtures import energon_meta, train_sentencepiece, tree_files, write_tokenized_dataset
from tests.s3_fixtures import faulty_proxy, make_bucket
from tests.test_index import PATCHES, write_defect_dataset
from vdp.cli import check_pair
from vdp.cli import index as index_main
from vdp.index.scan import ScanOptions, scan_tar
from vdp.index.validate import CheckOptions
from vdp.io import storage
from vdp.io.localcopy import local_copy
from vdp.run.accounting import is_accounting

FLAGS = ["--dataset_name", "ds", "--patches", str(PATCHES), "--max_len", "120", "--workers", "2"]


def upload_tree(endpoint: str, folder: str, url: str) -> None:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=endpoint)
    for root, _, files in os.walk(folder):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), folder)
            client.upload_file(os.path.join(root, name), bucket, f"{prefix}/{rel}")


def download_tree(endpoint: str, url: str) -> dict[str, bytes]:
    """Relative name -> bytes of every object under an s3:// prefix, but the accounting files (they carry times)."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=endpoint)
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in found if not is_accounting(o["Key"])}  # fmt: skip


def comparable(files: dict[str, bytes], tar_root: str) -> dict:
    """Index outputs with the tars' location replaced by ROOT, so a local and a remote run compare."""

    def unroot(url: str) -> str:
        assert url.startswith(tar_root + "/"), url
        return "ROOT" + url[len(tar_root) :]

    errors = [json.loads(line) for line in files["ds.errors.jsonl"].splitlines()]
    pkl = pickle.loads(files["ds.pkl"])
    wids = json.loads(files["ds.wids.json"])
    for row in [*errors, *pkl, *wids["shardlist"]]:
        row["tar" if "tar" in row else "url"] = unroot(row.get("tar") or row["url"])
    return {"errors": errors, "pkl": pkl, "wids": wids}


@pytest.fixture(scope="module")
def local_index(tmp_path_factory):
    """The defect dataset, an untouched copy of it for uploading, and the local run's outputs."""
    root = tmp_path_factory.mktemp("s3idx")
    pristine = write_defect_dataset(str(root / "pristine"))
    dataset = write_defect_dataset(str(root / "local"))
    rc = index_main.main(["--dataset_path", dataset, "--output", str(root / "out"), "--energon", *FLAGS])
    assert rc == 1
    return pristine, comparable(tree_files(str(root / "out")), dataset), energon_meta(tree_files(dataset))


def run_remote_index(endpoint: str, pristine: str, bucket: str, s3_endpoint: str) -> tuple[dict, dict]:
    make_bucket(endpoint, bucket)
    upload_tree(endpoint, pristine, f"s3://{bucket}/set")
    rc = index_main.main(
        ["--dataset_path", f"s3://{bucket}/set", "--output", f"s3://{bucket}/idx", "--energon",
         "--s3_endpoint", s3_endpoint, *FLAGS]
    )  # fmt: skip
    assert rc == 1
    outputs = comparable(download_tree(endpoint, f"s3://{bucket}/idx"), f"s3://{bucket}/set")
    return outputs, energon_meta(download_tree(endpoint, f"s3://{bucket}/set"))


def test_s3_dataset_gives_the_local_index_and_errors(s3_env, local_index, capsys):
    pristine, local, local_energon = local_index
    remote, energon = run_remote_index(s3_env, pristine, "idx", s3_env)
    assert remote == local
    assert [e["url"] for e in remote["pkl"]][0] == "ROOT/a.tar"
    # energon's metadata lies next to the tars in the bucket, the same bytes as beside the local tars
    assert energon == local_energon and "v/s1v.tar.idx" in energon
    assert "s3://idx/set/b.tar" in capsys.readouterr().err


def test_a_fifth_of_requests_failing_changes_nothing(s3_env, local_index):
    pristine, local, local_energon = local_index
    with faulty_proxy(s3_env, failure_rate=0.2, seed=3) as (proxy, counts):
        remote, energon = run_remote_index(s3_env, pristine, "flaky-idx", proxy)
    assert counts["503"] + counts["dropped"] > 5
    assert remote == local and energon == local_energon


def test_oss_dataset_gives_the_local_index(s3_env, local_index, monkeypatch):
    """oss:// goes through oss2; moto, answering in OSS's XML dialect, stands in for OSS (as in test_storage)."""
    pristine, local, local_energon = local_index
    make_bucket(s3_env, "ossidx")
    upload_tree(s3_env, pristine, "s3://ossidx/set")
    with faulty_proxy(s3_env, failure_rate=0.0, strip_namespace=True) as (proxy, _):
        for k, v in {"OSS_ENDPOINT": proxy, "OSS_ACCESS_KEY_ID": "testing", "OSS_ACCESS_KEY_SECRET": "testing"}.items():
            monkeypatch.setenv(k, v)
        storage.configure(None)  # no filesystem cached from before the variables were set
        rc = index_main.main(
            ["--dataset_path", "oss://ossidx/set", "--output", "oss://ossidx/idx", "--energon", *FLAGS]
        )
    assert rc == 1
    assert comparable(download_tree(s3_env, "s3://ossidx/idx"), "oss://ossidx/set") == local
    assert energon_meta(download_tree(s3_env, "s3://ossidx/set")) == local_energon


SCANNED = ("name", "size", "samples", "valid", "errors", "bad_keys", "broken", "dropped", "offsets")


def scan_fields(path: str, root: str, local_root: str) -> dict:
    scan = scan_tar(path, ScanOptions(CheckOptions(patches=PATCHES, max_len=120), root))
    for row in scan.errors:
        row["tar"] = row["tar"].replace(root.rstrip("/"), local_root)
    return {f: getattr(scan, f) for f in SCANNED}


@pytest.mark.parametrize("failure_rate", [0.0, 0.2])
def test_large_tars_are_streamed_once(s3_env, local_index, monkeypatch, failure_rate):
    """Above open_read's in-memory limit a tar is read with ranged read-ahead: every tar (sound,
    truncated, damaged) gets the local scan's counts, offsets and errors, through 20% faults too,
    and without faults a tiny tar costs its size, its opening and one ranged GET."""
    pristine, _, _ = local_index
    bucket = f"stream{int(failure_rate * 100)}"
    make_bucket(s3_env, bucket)
    upload_tree(s3_env, pristine, f"s3://{bucket}/set")
    monkeypatch.setattr(storage, "open_read", functools.partial(storage.open_read, whole_below=0))
    tars = ("a.tar", "b.tar", "t.tar", "h.tar", "v/s1v.tar")
    with faulty_proxy(s3_env, failure_rate=failure_rate, seed=11) as (proxy, counts):
        storage.configure(proxy)
        for rel in tars:
            local = scan_fields(os.path.join(pristine, rel), pristine, pristine)
            assert scan_fields(f"s3://{bucket}/set/{rel}", f"s3://{bucket}/set/", pristine) == local, rel
    if failure_rate:
        assert counts["503"] + counts["dropped"] > 0
    else:
        assert counts["requests"] <= 3 * len(tars)


class _CutStream(io.BytesIO):
    """A remote stream whose connection dies after `limit` bytes, with the given exception."""

    def __init__(self, data: bytes, limit: int, error: Exception):
        super().__init__(data)
        self.limit, self.error = limit, error

    def read(self, n: int = -1) -> bytes:
        if self.tell() >= self.limit:
            raise self.error
        return super().read(n)


# botocore's own: not an OSError, a transient fault by its type (vdp.io.faults), not by its name
@pytest.mark.parametrize("error", [ConnectionResetError(104, "reset by peer"), EndpointConnectionError(endpoint_url="gone")])
def test_a_read_fault_mid_tar_is_unreadable_not_corrupt(local_index, monkeypatch, error):
    """The tar's bytes are fine, the network is not: the user is told to rerun, not to rebuild."""
    pristine, _, _ = local_index
    data = open(os.path.join(pristine, "a.tar"), "rb").read()
    monkeypatch.setattr(storage, "size", lambda path: len(data))
    monkeypatch.setattr(storage, "open_read", lambda path, known_size=None: _CutStream(data, len(data) // 2, error))
    scan = scan_tar("s3://any/set/a.tar", ScanOptions(CheckOptions(patches=PATCHES), "s3://any/set"))
    assert scan.broken and 0 < scan.valid < 4
    assert [r["reason"].split(":")[0] for r in scan.errors] == ["unreadable tar"]
    assert type(error).__name__ in scan.errors[0]["reason"]


def test_a_missing_tar_is_an_error_row_not_a_crash(s3_env):
    storage.configure(s3_env)
    make_bucket(s3_env, "gone")
    scan = scan_tar("s3://gone/set/x.tar", ScanOptions(CheckOptions(), "s3://gone/set"))
    assert scan.broken and scan.name == "x.tar"
    assert [r["reason"].split(":")[0] for r in scan.errors] == ["unreadable tar"]


def test_check_pair_with_remote_dataset_tokenizer_and_out(s3_env, tmp_path):
    model = train_sentencepiece(str(tmp_path / "sp"))
    write_tokenized_dataset(f"{tmp_path}/d", model, PATCHES)
    make_bucket(s3_env, "pair")
    upload_tree(s3_env, f"{tmp_path}/d", "s3://pair/d")
    upload_tree(s3_env, str(tmp_path), "s3://pair/tok")  # sp.model among a few other files
    flags = ["--dataset_name", "ds", "--patches", str(PATCHES), "--dump", "3", "--workers", "2"]
    local = check_pair.main(["--dataset_path", f"{tmp_path}/d", "--tokenizer", model, "--out", f"{tmp_path}/c", *flags])
    remote = check_pair.main(
        ["--dataset_path", "s3://pair/d", "--tokenizer", "s3://pair/tok/sp.model", "--out", "s3://pair/c",
         "--s3_endpoint", s3_env, *flags]
    )  # fmt: skip
    assert local == remote == 1  # 1.tar's ids are not this tokenizer's
    ours, theirs = download_tree(s3_env, "s3://pair/c"), tree_files(f"{tmp_path}/c")
    assert sorted(ours) == sorted(theirs) and "report.html" in ours
    assert {n: b for n, b in ours.items() if n.startswith("samples/")} == {
        n: b for n, b in theirs.items() if n.startswith("samples/")
    }
    assert ours["ds.errors.jsonl"] == theirs["ds.errors.jsonl"].replace(f"{tmp_path}/d".encode(), b"s3://pair/d")


def test_a_remote_tokenizer_folder_is_copied_once(s3_env, tmp_path):
    storage.configure(s3_env)
    make_bucket(s3_env, "tok")
    (tmp_path / "hf" / "sub").mkdir(parents=True)
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    (tmp_path / "hf" / "sub" / "x.txt").write_text("x")
    upload_tree(s3_env, str(tmp_path / "hf"), "s3://tok/models/hf")
    local_copy.cache_clear()
    copy = local_copy("s3://tok/models/hf/")
    assert tree_files(copy) == tree_files(str(tmp_path / "hf")) and os.path.basename(copy) == "hf"
    local_copy.cache_clear()
    assert local_copy("s3://tok/models/hf") == copy  # found on disk, not fetched again
    with pytest.raises(FileNotFoundError):
        local_copy("s3://tok/models/nothing")


def test_an_unreachable_or_empty_prefix_or_tokenizer_is_bad_usage(s3_env, local_index, capsys):
    pristine, _, _ = local_index
    make_bucket(s3_env, "empty")
    upload_tree(s3_env, os.path.join(pristine, "v"), "s3://empty/one")
    runs = {
        "s3://empty/set": [],
        "s3://no-such-bucket/set": [],
        "s3://empty/one": ["--tokenizer", "s3://empty/sp.model"],
    }
    for url, extra in runs.items():
        rc = index_main.main(
            ["--dataset_path", url, "--output", "s3://empty/idx", "--s3_endpoint", s3_env, *extra, *FLAGS]
        )
        assert rc == 2, url
    err = capsys.readouterr().err
    assert "no .tar files under s3://empty/set" in err
    assert "s3://no-such-bucket/set" in err
    assert "tokenizer not found: s3://empty/sp.model" in err
