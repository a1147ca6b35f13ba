"""Kill anywhere, rerun, same result, nothing left behind: every stage, on local disk and on S3.

Each stage's command runs as a process of its own and is SIGKILLed (its main process, as the OOM
killer would; its workers must die with it) at seeded random moments: the instant its first temp
file or multipart upload appears (mid-write), or after a random share of an uninterrupted run's
time. Each run starts on what the runs killed before it left. One uninterrupted rerun must then
leave exactly the bytes of an uninterrupted run (so every record or sample exactly once), no temp
file anywhere, and no unfinished upload in the bucket. Ten kills per stage in all.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import boto3
import pytest

from tests.kill_helpers import after, command, files_under, run, run_killed, temp_files
from tests.pack_helpers import noise_video, write_manifest
from tests.s3_fixtures import S3_ENV, make_bucket
from tests.stage1_fixtures import BENCH_SIZES, train_llama_like_tokenizer, write_stage1_corpus
from tests.synth import VideoSpec, make_video
from tests.test_index_s3 import download_tree, upload_tree
from vdp.io.tario import iter_tar_members, split_member_name
from vdp.run.accounting import is_accounting  # stats and summaries carry times: checked in test_accounting
from vdp.tokenize.stage import STATE_DIR

SEED = 1010
LOCAL_KILLS, S3_KILLS = 6, 4
PART = 16 * 1024 * 1024  # vdp.io.storage's upload part: bigger outputs go up as multipart uploads


@dataclass
class Scenario:
    cmd: list[str]
    env: dict
    status: int  # the exit status of a complete run
    snapshot: Callable[[], dict[str, bytes]]  # the outputs, by relative name
    reset: Callable[[], None]  # remove every output
    debris: Callable[[], set[str]]  # temp files and unfinished uploads now
    mid_write: bool = True  # kill when new debris appears (not for outputs too small to leave any remotely)
    poll: float = 0.0  # seconds between looks for new debris (a bucket is asked less often than a folder)


def appears(debris: Callable[[], set[str]], every: float) -> Callable[[], bool]:
    """A kill trigger: true once a temp file or upload appears that was not there before."""
    before, last = debris(), {"at": 0.0, "now": set()}

    def new() -> bool:
        if time.time() - last["at"] >= every:
            last["at"], last["now"] = time.time(), debris()
        return bool(last["now"] - before)

    return new


def crash_and_rerun(sc: Scenario, kills: int, rng: random.Random) -> tuple[dict[str, bytes], int]:
    """The reference outputs, and how many kills left debris of their own for the next run."""
    clock = time.time()
    first = run(sc.cmd, sc.env)
    took = time.time() - clock
    assert first.returncode == sc.status, first.stderr
    reference = sc.snapshot()
    sc.reset()
    landed = left = 0
    for _ in range(3 * kills):  # a run may end before its kill moment: then another one is killed
        # mid-write until a kill has left debris, then a coin decides between that and a random moment
        writing = sc.mid_write and (left == 0 or rng.random() < 0.5)
        before = sc.debris()
        if run_killed(sc.cmd, sc.env, appears(sc.debris, sc.poll) if writing else after(rng.uniform(0.1, took))):
            landed += 1
            left += bool(sc.debris() - before)
        if landed == kills:
            break
    assert landed == kills, f"only {landed} of {kills} kills landed before the run ended"
    final = run(sc.cmd, sc.env)
    assert final.returncode == sc.status, final.stderr
    assert "Traceback" not in final.stderr and "Exception ignored" not in final.stderr, final.stderr
    assert sc.snapshot() == reference, "the rerun after the kills did not give the uninterrupted run's bytes"
    assert not sc.debris(), "the rerun left temp files or unfinished uploads behind"
    return reference, left


# --- local and S3 trees ---------------------------------------------------------------------------


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def without_timings(rel: str, data: bytes) -> bytes:
    """A stage-2 group state without its timings (seconds differ between runs, counts must not)."""
    if not (f"/{STATE_DIR}/" in f"/{rel}" and os.path.basename(rel).startswith("shard_")):
        return data
    doc = json.loads(data)
    doc.pop("seconds"), doc.pop("cpu_seconds")
    return json.dumps(doc, sort_keys=True).encode()


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint)


def s3_tree(endpoint: str, bucket: str, prefix: str, comparable: Callable[[str, bytes], bytes] | None = None) -> dict:
    files = {rel: data for rel, data in download_tree(endpoint, f"s3://{bucket}/{prefix}").items() if not is_accounting(rel)}
    return {rel: comparable(rel, data) for rel, data in files.items()} if comparable else files


def s3_delete(endpoint: str, bucket: str, prefix: str, keep: Callable[[str], bool] = lambda key: False) -> None:
    client = s3_client(endpoint)
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
        if not keep(obj["Key"]):
            client.delete_object(Bucket=bucket, Key=obj["Key"])


def uploads(endpoint: str, bucket: str) -> set[str]:
    return {u["UploadId"] for u in s3_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def child_env() -> dict:
    """The environment of a command run against moto: its credentials included."""
    return {**os.environ, **S3_ENV}


def tar_keys(files: dict[str, bytes]) -> list[str]:
    keys = set()
    for name, data in files.items():
        if name.endswith(".tar"):
            keys |= {split_member_name(m)[0] for m, _ in iter_tar_members(io.BytesIO(data))}
    return sorted(keys)


# --- stage 1 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pack_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_pack")
    videos = [make_video(str(root / f"v{i}.mp4"), VideoSpec(num_frames=30 + 10 * i)) for i in range(3)]
    rows = [{"video_path": videos[i % 3], "value": f"clip {i}"} for i in range(10)]
    rows[4] = {"video_path": str(root / "missing.mp4"), "value": "gone"}
    rows[7] = '{"video_path": "x.mp4", "value": '  # a bad row
    manifest = write_manifest(str(root / "clips.jsonl"), rows)
    noise_video(str(root / "big.mp4"), frames=80)  # ~7 MB: three of them make a tar uploaded in parts
    big_rows = [{"video_path": "big.mp4", "value": f"big {i}"} for i in range(4)] + [{"video_path": "gone.mp4", "value": "x"}]
    write_manifest(str(root / "big.jsonl"), big_rows)
    return root, manifest


def pack_flags(manifest: str, out: str, *extra: str) -> list[str]:
    return command("pack.py", "--manifest", manifest, "--save_path", out, "--workers", "2", "--samples_per_tar", "3",
                   "--no_progress", *extra)  # fmt: skip


def test_pack_local(pack_inputs, tmp_path):
    root, manifest = pack_inputs
    out = str(tmp_path / "out")
    sc = Scenario(
        pack_flags(manifest, out, "--type", "kf", "--kf_iframes", "3", "--kf_total", "6"),
        dict(os.environ),
        1,  # a missing video and a bad row are in the errors file
        lambda: files_under(out),
        lambda: shutil.rmtree(out, ignore_errors=True),
        lambda: set(temp_files(out)),
    )
    reference, left = crash_and_rerun(sc, LOCAL_KILLS, random.Random(SEED))
    errors = [json.loads(line)["key"] for line in reference["errors-0.jsonl"].splitlines()]
    assert sorted(tar_keys(reference) + errors) == [f"{i:09d}" for i in range(10)], "each record exactly once"
    assert left >= 1, "no kill left a temp file: the clean-up was never needed"


def test_pack_s3(pack_inputs, s3_env):
    root, _ = pack_inputs
    bucket = "crash-pack"
    make_bucket(s3_env, bucket)
    upload_tree(s3_env, str(root), f"s3://{bucket}/raw")
    out = f"s3://{bucket}/out"
    sc = Scenario(
        pack_flags(f"s3://{bucket}/raw/big.jsonl", out, "--type", "video-only", "--s3_endpoint", s3_env),
        child_env(),
        1,
        lambda: s3_tree(s3_env, bucket, "out"),
        lambda: s3_delete(s3_env, bucket, "out"),
        lambda: uploads(s3_env, bucket),
        poll=0.005,
    )
    reference, left = crash_and_rerun(sc, S3_KILLS, random.Random(SEED + 1))
    assert max(len(b) for n, b in reference.items() if n.endswith(".tar")) > PART, "no tar big enough for parts"
    errors = [json.loads(line)["key"] for line in reference["errors-0.jsonl"].splitlines()]
    assert sorted(tar_keys(reference) + errors) == [f"{i:09d}" for i in range(5)]
    assert left >= 1, "no kill left an unfinished upload: the abort was never needed"


# --- stage 2 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("crash_tok")
    path = train_llama_like_tokenizer(str(folder / "llama"))
    os.rename(path, folder / "tokenizer.model")
    return str(folder / "tokenizer.model")


def tokenize_cmd(src: str, out: str, tok: str, *extra: str) -> list[str]:
    return command("tokenize/main.py", "--dataset_path", src, "--save_path", out, "--tokenizer", tok, "--sample_type",
                   "un", "--patches", "8", "--shard_size", "2", "--workers", "2", "--no_progress", *extra)  # fmt: skip


def sample_keys(files: dict[str, bytes]) -> list[str]:
    """The stage-1 keys the packed sequences hold, once per appearance."""
    keys = []
    for name, data in files.items():
        if name.endswith(".tar"):
            for member, body in iter_tar_members(io.BytesIO(data)):
                if member.endswith(".json"):
                    keys += json.loads(body)["sources"]
    return sorted(keys)


def test_tokenize_local(tokenizer, tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_stage1_corpus(src, tars=6, samples_per_tar=6, frames=(2, 4), words=(3, 40), seed=3)
    sc = Scenario(
        tokenize_cmd(src, out, tokenizer),
        dict(os.environ),
        0,
        lambda: files_under(out, without_timings),
        lambda: shutil.rmtree(out, ignore_errors=True),
        lambda: set(temp_files(out)),
    )
    reference, left = crash_and_rerun(sc, LOCAL_KILLS, random.Random(SEED + 2))
    assert sample_keys(reference) == [f"{i:09d}" for i in range(36)], "each sample exactly once"
    assert left >= 1, "no kill left a temp file: the clean-up was never needed"


def test_tokenize_s3(tokenizer, s3_env, tmp_path):
    src = str(tmp_path / "src")
    write_stage1_corpus(src, tars=4, samples_per_tar=8, sizes=BENCH_SIZES, frames=(16, 24), words=(3, 40), seed=4)
    bucket = "crash-tokenize"
    make_bucket(s3_env, bucket)
    upload_tree(s3_env, src, f"s3://{bucket}/src")
    sc = Scenario(
        tokenize_cmd(f"s3://{bucket}/src", f"s3://{bucket}/out", tokenizer, "--s3_endpoint", s3_env),
        child_env(),
        0,
        lambda: s3_tree(s3_env, bucket, "out", without_timings),
        lambda: s3_delete(s3_env, bucket, "out"),
        lambda: uploads(s3_env, bucket),
        poll=0.005,
    )
    reference, left = crash_and_rerun(sc, S3_KILLS, random.Random(SEED + 3))
    assert max(len(b) for n, b in reference.items() if n.endswith(".tar")) > PART, "no shard big enough for parts"
    assert sample_keys(reference) == [f"{i:09d}" for i in range(32)]
    assert left >= 1, "no kill left an unfinished upload: the abort was never needed"


# --- stage 3 --------------------------------------------------------------------------------------


def index_cmd(ds: str, out: str, *extra: str) -> list[str]:
    return command("index/main.py", "--dataset_path", ds, "--dataset_name", "crash", "--output", out, "--workers", "2",
                   "--energon", "--no_progress", *extra)  # fmt: skip


def energon_outputs(ds: str) -> list[str]:
    return glob.glob(os.path.join(ds, "*.tar.idx")) + glob.glob(os.path.join(ds, ".nv-meta", "*"))


def remove_index_outputs(ds: str, out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for path in energon_outputs(ds):
        os.unlink(path)


def test_index_local(tmp_path):
    ds, out = str(tmp_path / "ds"), str(tmp_path / "idx")
    write_stage1_corpus(ds, tars=12, samples_per_tar=3, frames=(1, 2), words=(3, 20), seed=5)
    sc = Scenario(
        index_cmd(ds, out),
        dict(os.environ),
        0,
        lambda: {**files_under(out), **{os.path.relpath(p, ds): read(p) for p in energon_outputs(ds)}},
        lambda: remove_index_outputs(ds, out),
        lambda: set(temp_files(out, ds)),
    )
    reference, _ = crash_and_rerun(sc, LOCAL_KILLS, random.Random(SEED + 4))
    assert sum(n.endswith(".tar.idx") for n in reference) == 12 and "crash.pkl" in reference


def test_index_s3(s3_env, tmp_path):
    ds = str(tmp_path / "ds")
    write_stage1_corpus(ds, tars=12, samples_per_tar=3, frames=(1, 2), words=(3, 20), seed=6)
    bucket = "crash-index"
    make_bucket(s3_env, bucket)
    upload_tree(s3_env, ds, f"s3://{bucket}/ds")

    def outputs() -> dict[str, bytes]:
        index = s3_tree(s3_env, bucket, "idx")
        energon = {k: v for k, v in s3_tree(s3_env, bucket, "ds").items() if not k.endswith(".tar")}
        return {**index, **energon}

    def reset() -> None:
        s3_delete(s3_env, bucket, "idx")
        s3_delete(s3_env, bucket, "ds", keep=lambda key: key.endswith(".tar"))

    sc = Scenario(
        index_cmd(f"s3://{bucket}/ds", f"s3://{bucket}/idx", "--s3_endpoint", s3_env),
        child_env(),
        0,
        outputs,
        reset,
        lambda: uploads(s3_env, bucket),
        mid_write=False,  # its files are small: each goes up in one request, which leaves nothing when killed
    )
    reference, _ = crash_and_rerun(sc, S3_KILLS, random.Random(SEED + 5))
    assert sum(n.endswith(".tar.idx") for n in reference) == 12 and "crash.pkl" in reference
