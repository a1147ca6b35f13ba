"""Accounting beside the outputs (issue 13): each tar's stats against what the tar and the errors and
filtered files hold, each run's summary file against its console summary, the per-record status
parquet, and the promises around them (kept on resume, no debris when killed)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import tarfile
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from tests.kill_helpers import command, run_killed, temp_files
from tests.pack_helpers import make_videos, write_manifest
from tests.synth_tokenizer import train_llama_like_tokenizer
from vdp.cli import check_pair, index, pack
from vdp.cli import tokenize as tokenize_command
from vdp.errors import reason_counts
from vdp.io.tario import iter_tar_members, split_member_name
from vdp.run.accounting import is_accounting, read_tar_stats, tar_size

STATS_KEYS = ["tar", "records", "packed", "errors", "errors_by_reason", "filtered", "filtered_by_rule", "bytes",
              "seconds", "signals"]  # fmt: skip
SHARD_KEYS = ["tar", "sequences", "samples", "errors", "errors_by_reason", "tokens", "images", "fill", "bytes", "seconds"]
SUMMARY = ["--samples_per_tar", "4", "--min_duration", "1.0", "--no_progress"]


def captured(main, args: list[str]) -> tuple[int, str]:
    """A command's exit status and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(args)
    return rc, out.getvalue()


def console(stdout: str, title: str) -> tuple[dict, dict]:
    """The summary block as printed: {field: text} and {reason: count}."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"{title}: "))
    fields = dict(kv.split("=", 1) for kv in lines[first][len(title) + 2 :].split(", "))
    reasons = {}
    for line in lines[first + 1 :]:
        m = re.fullmatch(r"\s+(\d+)  (.+)", line)
        if not m:
            break
        reasons[m.group(2)] = int(m.group(1))
    return fields, reasons


def assert_summary_is_console(path: str, stdout: str, title: str) -> dict:
    doc = json.load(open(path))
    assert list(doc) == ["stage", "argv", "flags", "totals", "reasons"] and doc["stage"] == title
    fields, reasons = console(stdout, title)
    shown = {k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in doc["totals"].items()}
    assert shown == fields and list(shown) == list(fields)
    assert doc["reasons"] == reasons and list(doc["reasons"]) == list(reasons)
    return doc


def jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def tars_in(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tar"))


# --- stage 1 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every test video (tiny.mp4 is shorter than --min_duration), a broken one, a missing one, a bad row."""
    root = tmp_path_factory.mktemp("accounting")
    videos = make_videos(str(root / "v"))
    with open(root / "v" / "broken.mp4", "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    rows = [{"video_path": p, "value": f"caption {n}"} for n, p in sorted(videos.items())]
    rows.insert(3, {"video_path": str(root / "v" / "broken.mp4"), "value": "broken"})
    rows.insert(6, {"video_path": str(root / "v" / "missing.mp4"), "value": "gone"})
    rows.insert(9, '{"video_path": "x.mp4", "value": ')  # a bad row
    return root, write_manifest(str(root / "clips.jsonl"), rows), len(rows)


@pytest.fixture(scope="module")
def packed(inputs):
    """One un run with --status parquet: its folder and stdout."""
    root, manifest, _ = inputs
    out = str(root / "out")
    rc, stdout = captured(pack.main, ["--manifest", manifest, "--type", "un", "--num_frames", "4", "--save_path", out,
                                      "--workers", "2", "--status", "parquet", *SUMMARY])  # fmt: skip
    assert rc == 1  # the broken, missing and bad rows
    return out, stdout


def test_each_tar_has_stats_that_match_what_it_holds(packed, inputs):
    out, _ = packed
    errors, filtered = jsonl(os.path.join(out, "errors-0.jsonl")), jsonl(os.path.join(out, "filtered-0.jsonl"))
    assert errors and filtered, "the run should have both errors and filtered records"
    seen = 0
    for name in tars_in(out):
        _, _, start, end, _ = name[: -len(".tar")].split("-")
        start, end = int(start), int(end)
        stats = json.load(open(os.path.join(out, name + ".stats.json")))
        assert list(stats) == STATS_KEYS and stats["tar"] == name
        samples = list(wds.WebDataset(os.path.join(out, name), shardshuffle=False, empty_check=False))
        mine = lambda rows, s=start, e=end: [r for r in rows if s <= int(r["key"]) < e]  # noqa: E731
        assert stats["records"] == end - start
        assert stats["packed"] == len(samples)
        assert stats["errors"] == len(mine(errors)) and stats["filtered"] == len(mine(filtered))
        assert stats["errors_by_reason"] == dict(reason_counts(mine(errors)))
        assert stats["filtered_by_rule"] == dict(Counter(r["rule"] for r in mine(filtered)))
        assert stats["packed"] + stats["errors"] + stats["filtered"] == stats["records"]
        assert stats["bytes"] == os.path.getsize(os.path.join(out, name))
        assert isinstance(stats["seconds"], float) and stats["seconds"] >= 0
        values: dict[str, list] = {}
        for s in samples:
            for k, v in json.loads(s["json"])["signals"].items():
                if not isinstance(v, list):
                    values.setdefault(k, []).append(v)
        assert sorted(stats["signals"]) == sorted(values) and "phash" not in stats["signals"]
        for k, vs in values.items():
            want = {"count": len(vs), "min": min(vs), "max": max(vs), "mean": np.mean(vs),
                    **dict(zip(("p10", "p50", "p90"), np.percentile(vs, [10, 50, 90])))}  # fmt: skip
            assert list(stats["signals"][k]) == list(want)
            assert stats["signals"][k] == pytest.approx(want, abs=1e-6)
        seen += end - start
    assert seen == inputs[2]


def test_summary_file_is_the_console_summary(packed, inputs):
    out, stdout = packed
    doc = assert_summary_is_console(os.path.join(out, "summary-0.json"), stdout, "pack")
    assert doc["totals"]["records"] == inputs[2] and doc["totals"]["filtered"] == 1
    assert doc["flags"]["save_path"] == out and doc["flags"]["status"] == "parquet"
    assert doc["argv"][:2] == ["--manifest", inputs[1]]
    assert doc["reasons"]["filtered by min_duration"] == 1


def test_status_parquet_has_every_record_once(packed, inputs):
    out, _ = packed
    errors = {r["key"]: r for r in jsonl(os.path.join(out, "errors-0.jsonl"))}
    filtered = {r["key"]: r for r in jsonl(os.path.join(out, "filtered-0.jsonl"))}
    rows = []
    for name in tars_in(out):
        table = pq.read_table(os.path.join(out, name + ".status.parquet"))
        assert table.column_names == ["key", "source", "status", "reason"]
        part = table.to_pylist()
        keys = {s["__key__"] for s in wds.WebDataset(os.path.join(out, name), shardshuffle=False, empty_check=False)}
        assert {r["key"] for r in part if r["status"] == "packed"} == keys
        rows += part
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(inputs[2])]
    for r in rows:
        if r["status"] == "packed":
            assert r["reason"] is None and r["key"] not in errors and r["key"] not in filtered
        elif r["status"] == "error":
            assert (r["reason"], r["source"]) == (errors[r["key"]]["reason"], errors[r["key"]]["source"])
        else:
            f = filtered[r["key"]]
            assert r["status"] == "filtered" and r["reason"] == f"{f['rule']}={f['value']}"
    assert Counter(r["status"] for r in rows) == {"packed": inputs[2] - len(errors) - len(filtered),
                                                   "error": len(errors), "filtered": len(filtered)}  # fmt: skip


def without_seconds(path: str) -> dict:
    doc = json.load(open(path))
    doc.pop("seconds")
    return doc


def test_resume_keeps_the_stats_and_rewrites_the_summary(inputs, tmp_path):
    _, manifest, _ = inputs
    out = str(tmp_path / "out")
    args = ["--manifest", manifest, "--type", "kf", "--kf_iframes", "2", "--kf_total", "3", "--save_path", out,
            "--workers", "2", *SUMMARY]  # fmt: skip
    assert captured(pack.main, args)[0] == 1
    names = tars_in(out)
    stats = {n: open(os.path.join(out, n + ".stats.json"), "rb").read() for n in names}
    stamps = {n: os.stat(os.path.join(out, n + ".stats.json")).st_mtime_ns for n in names}
    before = without_seconds(os.path.join(out, names[1] + ".stats.json"))
    os.unlink(os.path.join(out, names[1]))
    rc, stdout = captured(pack.main, args)
    assert rc == 1 and "tars_written=1, tars_resumed=2" in stdout
    for n in (names[0], names[2]):  # resumed: untouched
        assert open(os.path.join(out, n + ".stats.json"), "rb").read() == stats[n]
        assert os.stat(os.path.join(out, n + ".stats.json")).st_mtime_ns == stamps[n]
    assert without_seconds(os.path.join(out, names[1] + ".stats.json")) == before
    doc = assert_summary_is_console(os.path.join(out, "summary-0.json"), stdout, "pack")
    assert doc["totals"]["tars_resumed"] == 2
    assert not os.path.exists(os.path.join(out, names[0] + ".status.parquet"))  # no --status: none
    # Resumed tars would lack their status files: a rerun asking for them is refused.
    assert captured(pack.main, [*args, "--status", "parquet"])[0] == 2


def test_a_killed_run_leaves_no_accounting_debris(inputs, tmp_path):
    _, manifest, _ = inputs
    args = ["--manifest", manifest, "--type", "un", "--num_frames", "4", "--workers", "1", "--status", "parquet",
            "--samples_per_tar", "2", "--min_duration", "1.0", "--no_progress"]  # fmt: skip
    clean = str(tmp_path / "clean")
    assert captured(pack.main, [*args, "--save_path", clean])[0] == 1
    crashed = str(tmp_path / "crashed")
    landed = 0
    for _ in range(6):  # killed as a new temp file appears (mid-write), each run resuming the last
        before = set(temp_files(crashed))
        landed += run_killed(command("pack.py", *args, "--save_path", crashed), dict(os.environ),
                             lambda before=before: bool(set(temp_files(crashed)) - before))  # fmt: skip
        for name in tars_in(crashed):  # a tar under its final name has its accounting beside it
            assert os.path.exists(os.path.join(crashed, name + ".stats.json")), name
            assert os.path.exists(os.path.join(crashed, name + ".status.parquet")), name
        if landed == 2:
            break
    assert landed == 2, "the runs ended before their kills"
    assert temp_files(crashed), "the kills left no temp file to clean"
    # what a writer killed mid-write leaves (no process holds their locks)
    first = tars_in(clean)[0]
    for final in (first + ".stats.json", first + ".status.parquet", "summary-0.json"):
        open(os.path.join(crashed, f".{final}.tmp-999999"), "wb").close()
    assert captured(pack.main, [*args, "--save_path", crashed])[0] == 1
    assert temp_files(crashed) == []
    assert tars_in(crashed) == tars_in(clean)
    for name in tars_in(clean):
        assert without_seconds(os.path.join(crashed, name + ".stats.json")) == without_seconds(
            os.path.join(clean, name + ".stats.json"))
        assert (pq.read_table(os.path.join(crashed, name + ".status.parquet")).to_pylist()
                == pq.read_table(os.path.join(clean, name + ".status.parquet")).to_pylist())  # fmt: skip


# --- stage 2 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    return train_llama_like_tokenizer(str(tmp_path_factory.mktemp("acc_tok") / "llama"))


def test_tokenize_stats_and_summary(packed, tokenizer, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in tars_in(packed[0]):
        shutil.copy(os.path.join(packed[0], name), src / name)
    first = tars_in(str(src))[0]
    data = open(src / first, "rb").read()
    with tarfile.open(src / first) as t:
        cut = t.getmembers()[-2].offset_data + 10
    open(src / ("z-" + first), "wb").write(data[:cut])  # a tar cut short: errors in the last shard
    out = str(tmp_path / "tok")
    rc, stdout = captured(tokenize_command.main, ["--dataset_path", str(src), "--save_path", out, "--tokenizer",
                                                  tokenizer, "--sample_type", "un", "--patches", "8", "--shard_size",
                                                  "2", "--max_len", "400", "--workers", "2", "--no_progress"])  # fmt: skip
    assert rc == 1
    folder = os.path.join(out, "0-4")
    errors_seen = 0
    for name in tars_in(folder):
        stats = json.load(open(os.path.join(folder, name + ".stats.json")))
        assert list(stats) == SHARD_KEYS and stats["tar"] == name
        docs, images = [], 0
        for member, body in iter_tar_members(open(os.path.join(folder, name), "rb")):
            ext = split_member_name(member)[1]
            docs += [json.loads(body)] if ext == "json" else []
            images += ext.endswith("jpg")
        tokens = sum(len(d["input_ids"]) for d in docs)
        assert stats["sequences"] == len(docs) and stats["samples"] == sum(len(d["sources"]) for d in docs)
        assert stats["tokens"] == tokens and stats["images"] == images
        assert stats["fill"] == pytest.approx(tokens / (len(docs) * 400), abs=1e-6)
        assert stats["bytes"] == os.path.getsize(os.path.join(folder, name))
        state = json.load(open(os.path.join(folder, ".tokenize", name[: -len(".tar")] + ".json")))
        assert stats["errors"] == len(state["errors"]) and stats["errors_by_reason"] == dict(reason_counts(state["errors"]))
        assert stats["seconds"] == state["seconds"]
        errors_seen += stats["errors"]
    assert errors_seen >= 1
    doc = assert_summary_is_console(os.path.join(folder, "summary-0.json"), stdout, "tokenize")
    assert doc["totals"]["errors"] == errors_seen and doc["flags"]["max_len"] == 400


# --- stage 3 -------------------------------------------------------------------------------------


def test_index_and_check_pair_summaries_add_the_source_counts(packed, inputs, tmp_path):
    out, _ = packed
    errors, filtered = jsonl(os.path.join(out, "errors-0.jsonl")), jsonl(os.path.join(out, "filtered-0.jsonl"))
    source = {"source_records": inputs[2], "source_errors": len(errors), "source_filtered": len(filtered)}
    common = ["--dataset_path", out, "--dataset_name", "acc", "--workers", "1", "--no_progress"]
    idx = str(tmp_path / "idx")
    rc, stdout = captured(index.main, [*common, "--output", idx])
    assert rc == 0
    doc = assert_summary_is_console(os.path.join(idx, "summary-index-acc.json"), stdout, "index")
    assert {k: doc["totals"][k] for k in source} == source
    chk = str(tmp_path / "chk")
    rc, stdout = captured(check_pair.main, [*common, "--out", chk, "--dump", "2"])
    assert rc == 0
    doc = assert_summary_is_console(os.path.join(chk, "summary-check_pair-acc.json"), stdout, "check_pair")
    assert {k: doc["totals"][k] for k in source} == source and doc["flags"]["out"] == chk
    with open(os.path.join(chk, "report.html")) as f:
        report = f.read()
    for key, value in source.items():  # the report's totals are the summary's, stage-1 counts included
        assert f'<tr data-field="{key}"><th>{key}</th><td class="count">{value}</td></tr>' in report

    tars = [os.path.join(out, n) for n in tars_in(out)]
    found = read_tar_stats(tars)
    assert found["tars_with_stats"] == len(tars) and sorted(found["by_tar"]) == tars
    assert (found["records"], found["errors"], found["filtered"]) == tuple(source.values())
    assert found["errors_by_reason"] == dict(reason_counts(errors))


def test_stage3_without_stats_has_no_source_counts(tmp_path):
    from tests.stage1_fixtures import write_stage1_corpus

    ds = str(tmp_path / "ds")
    write_stage1_corpus(ds, tars=2, samples_per_tar=2, frames=(1, 2), words=(3, 8), seed=1)
    rc, stdout = captured(index.main, ["--dataset_path", ds, "--dataset_name", "x", "--output", str(tmp_path / "i"),
                                       "--workers", "1", "--no_progress"])  # fmt: skip
    assert rc == 0 and "source_records" not in stdout
    assert read_tar_stats([os.path.join(ds, n) for n in tars_in(ds)]) == {"tars_with_stats": 0, "by_tar": {}}


# --- the pieces ----------------------------------------------------------------------------------


def test_tar_size_is_what_tarfile_writes():
    rng = random.Random(3)
    for n in (0, 1, 3, 40):
        sizes = [rng.choice([0, 1, 511, 512, 513, rng.randrange(50_000)]) for _ in range(n)]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for i, size in enumerate(sizes):
                info = tarfile.TarInfo(f"{i:09d}.{i}.jpg")
                info.size = size
                t.addfile(info, io.BytesIO(bytes(size)))
        assert tar_size(sizes) == len(buf.getvalue())


def test_accounting_names():
    for name in ("shard-0-0-4-0.tar.stats.json", "shard_3.tar.stats.json", "x/shard-1-2-3-4.tar.status.parquet",
                 "summary-0.json", "summary-index-acc.json", "s3://b/p/summary-check_pair-x.json"):  # fmt: skip
        assert is_accounting(name), name
    for name in ("shard-0-0-4-0.tar", "errors-0.jsonl", "acc.wids.json", "summary.json", "flags-0.json"):
        assert not is_accounting(name), name
