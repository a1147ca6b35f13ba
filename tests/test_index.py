"""Stage 3 (index/main.py, index/check_pair.py): what a user checks after a run.

Shards are written directly in the stage-1 and stage-2 formats (tests/index_fixtures.py), with
one known defect per broken sample, so every reason can be asserted exactly.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

from tests.index_fixtures import (
    END,
    PATCH,
    edit_json,
    frames_sample,
    jpeg,
    jpeg_without_scan,
    npy,
    replace_member,
    sequence_sample,
    tiny_video,
    train_sentencepiece,
    truncate,
    video_sample,
    write_tar,
)
from vdp.index import stage as stage3
from vdp.index.formats import energon_files, megatron_entries, wids_index
from vdp.index.scan import ScanOptions
from vdp.index.validate import CheckOptions, ImageTokenIds
from vdp.run import runner
from vdp.run.pool import WorkFailure
from vdp.run.runner import RunContext

IDS = ImageTokenIds.after_vocab(32000)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "index", "main.py")
CHECK = os.path.join(ROOT, "index", "check_pair.py")
PATCHES = 4  # small image blocks keep the fixtures tiny; the checks are the same at 256


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=300)


def index(dataset: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    return run(
        MAIN, "--dataset_path", dataset, "--dataset_name", "ds", "--output", out, "--patches", str(PATCHES), *extra
    )


def errors_of(path: str) -> dict[tuple[str, str], str]:
    """(tar file name, key) -> reason kind (the text before the first colon)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    assert all(set(r) == {"tar", "key", "reason"} for r in rows)
    return {(os.path.basename(r["tar"]), r["key"]): r["reason"].split(":", 1)[0] for r in rows}


def seq(key: str, images: int = 2, **kw) -> list:
    return sequence_sample(key, [(f"caption of {key}", images), ("second clip", 1)], patches=PATCHES, **kw)


def set_id(members, old: int, new: int):
    """Change the last occurrence of token `old` into `new` (json ids)."""

    def fn(doc):
        at = len(doc["input_ids"]) - 1 - doc["input_ids"][::-1].index(old)
        doc["input_ids"][at] = new

    return edit_json(members, fn)


# --- a dataset with one known defect per broken sample -------------------------------------------

BROKEN = {
    "b.tar": {
        "000001-000001": ("bad json", lambda m: replace_member(m, ".json", b"{not json")),
        "000001-000002": ("missing image", lambda m: replace_member(m, ".1.jpg", None)),
        "000001-000003": ("bad jpeg", lambda m: replace_member(m, ".0.jpg", b"not a jpeg at all")),
        "000001-000004": ("bad jpeg", lambda m: replace_member(m, ".2.jpg", jpeg(2)[:300])),
        "000001-000005": ("length mismatch", lambda m: edit_json(m, lambda d: d["loss_mask"].pop())),
        "000001-000006": ("image tokens", lambda m: set_id(m, END, 7)),
        "000001-000007": ("patch count", lambda m: set_id(m, PATCH, 7)),
        "000001-000008": (
            "sample lengths",
            lambda m: edit_json(m, lambda d: d["sample_lengths"].__setitem__(0, d["sample_lengths"][0] + 1)),
        ),
        "000001-000009": ("sources", lambda m: edit_json(m, lambda d: d["sources"].pop())),
        "000001-000010": ("unlisted member", lambda m: m + [(m[0][0].replace(".json", ".9.jpg"), jpeg(9))]),
        "000001-000011": (
            "bad ids",
            lambda m: replace_member(m, ".loss_mask.npy", npy(__import__("numpy").zeros(3, "float32"))),
        ),
        "000001-000012": ("too long", None),
    },
    "s1.tar": {
        "000000007": (
            "placeholder count",
            lambda m: edit_json(m, lambda d: d["conversations"][0].__setitem__("value", "<image>" * 3)),
        ),
        "000000008": (
            "frame type",
            lambda m: edit_json(
                m,
                lambda d: d["conversations"][0].__setitem__(
                    "value", d["conversations"][0]["value"].replace("<Iimage>", "<Pimage>", 1)
                ),
            ),
        ),
        "000000009": ("missing image", lambda m: replace_member(m, ".3.jpg", None)),
    },
}


def broken_samples(tar: str) -> list:
    samples = []
    for key, (_, breaker) in BROKEN[tar].items():
        if tar == "s1.tar":
            samples.append(breaker(frames_sample(key, 4, kind="kf")))
        elif key.endswith("11"):
            samples.append(breaker(seq(key, ids_format="npy")))
        elif breaker is None:  # too long for --max_len 120: 30 image blocks of 6 tokens
            samples.append(sequence_sample(key, [("long", 30)], patches=PATCHES))
        else:
            samples.append(breaker(seq(key)))
    return samples


def write_defect_dataset(root: str) -> str:
    """a.tar clean (json ids), c.tar clean (npy ids), b.tar and s1.tar with broken samples among sound ones,
    t.tar truncated, h.tar with a damaged header, v/s1v.tar clean stage-1 un + video-only."""
    write_tar(f"{root}/a.tar", [seq(f"000000-{j:06d}") for j in range(4)])
    b = broken_samples("b.tar")
    write_tar(f"{root}/b.tar", [seq("000001-000000")] + b + [seq("000001-000099")])
    write_tar(f"{root}/c.tar", [seq(f"000002-{j:06d}", ids_format="npy") for j in range(3)])
    s1 = broken_samples("s1.tar")
    write_tar(f"{root}/s1.tar", [frames_sample("000000006", 4, kind="kf")] + s1)
    write_tar(f"{root}/t.tar", [seq(f"000003-{j:06d}") for j in range(3)])
    truncate(f"{root}/t.tar", os.path.getsize(f"{root}/t.tar") // 2)
    write_tar(f"{root}/h.tar", [seq(f"000004-{j:06d}") for j in range(3)])
    _damage_last_header(f"{root}/h.tar")
    write_tar(f"{root}/v/s1v.tar", [frames_sample("000000000", 3), video_sample("000000001", tiny_video())])
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_defect_dataset(str(tmp_path_factory.mktemp("stage2")))


def _damage_last_header(path: str) -> None:
    """Scribble over the header of the last member: tarfile would stop there silently."""
    import tarfile

    with tarfile.open(path) as t:
        last = t.getmembers()[-1].offset
    with open(path, "r+b") as f:
        f.seek(last + 100)
        f.write(b"\x7fgarbage!")


EXPECTED_VALID = {"a.tar": 4, "b.tar": 2, "c.tar": 3, "s1.tar": 1, "v/s1v.tar": 2}


@pytest.fixture(scope="module")
def indexed(dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    res = index(dataset, out, "--workers", "2", "--max_len", "120", "--energon")
    return res, out


def test_every_defect_is_reported_with_tar_key_and_reason(indexed):
    res, out = indexed
    assert res.returncode == 1, res.stderr
    errors = errors_of(f"{out}/ds.errors.jsonl")
    expected = {(tar, key): reason for tar, cases in BROKEN.items() for key, (reason, _) in cases.items()}
    tar_rows = {k: v for k, v in errors.items() if k[0] in ("t.tar", "h.tar")}
    assert {k: v for k, v in errors.items() if k[0] not in ("t.tar", "h.tar")} == expected
    assert {t for t, _ in tar_rows} == {"t.tar", "h.tar"} and set(tar_rows.values()) == {"bad tar"}


def test_summary_counts_reasons_and_names_bad_tars(indexed, dataset):
    res, out = indexed
    assert "index: tars=7, bad_tars=4" in res.stdout
    assert f"indexed={sum(EXPECTED_VALID.values())}," in res.stdout
    for line in ("2  bad jpeg", "2  missing image", "2  bad tar", "1  too long"):
        assert line in res.stdout
    for bad in ("b.tar", "s1.tar", "t.tar", "h.tar"):
        assert os.path.join(dataset, bad) in res.stderr
    assert os.path.join(dataset, "a.tar") not in res.stderr


def test_megatron_pickle_counts_valid_samples_in_sorted_order(indexed, dataset):
    _, out = indexed
    with open(f"{out}/ds.pkl", "rb") as f:
        entries = pickle.load(f)
    assert entries == [{"url": os.path.join(dataset, t), "nsamples": n} for t, n in sorted(EXPECTED_VALID.items())]


def test_wids_opens_the_index_and_reads_every_sample(indexed, dataset, tmp_path):
    wids = pytest.importorskip("wids", reason="wids (PyPI) is not installed")
    _, out = indexed
    with open(f"{out}/ds.wids.json") as f:
        desc = json.load(f)
    assert desc["__kind__"] == "wids-shard-index-v1" and desc["wids_version"] == 1 and desc["name"] == "ds"
    # Only tars whose every sample is sound: wids addresses samples by position and cannot skip one.
    clean = ["a.tar", "c.tar", "v/s1v.tar"]
    assert [s["url"] for s in desc["shardlist"]] == [os.path.join(dataset, t) for t in clean]
    assert [s["filesize"] for s in desc["shardlist"]] == [os.path.getsize(os.path.join(dataset, t)) for t in clean]
    ds = wids.ShardListDataset(f"{out}/ds.wids.json", transformations=[], cache_dir=str(tmp_path))
    keys = [ds[i]["__key__"] for i in range(len(ds))]
    assert keys == [f"000000-{j:06d}" for j in range(4)] + [f"000002-{j:06d}" for j in range(3)] + [
        "000000000",
        "000000001",
    ]
    assert json.loads(ds[0][".json"].read())["image"] == ["0", "1", "2"]


def test_energon_tar_idx_matches_energon_prepare(indexed, dataset, tmp_path):
    """Our .tar.idx files are byte for byte what `energon prepare` writes for the same tars."""
    pytest.importorskip("megatron.energon", reason="megatron-energon is not installed")
    import shutil

    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    names = ["a.tar", "b.tar", "c.tar", "s1.tar", "v/s1v.tar"]
    copy = tmp_path / "copy"
    for n in names:
        (copy / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(dataset, n), copy / n)
    WebdatasetPreparator.prepare_dataset(copy, names, split_parts_ratio=[("train", 1.0)], shuffle_seed=None, workers=1)
    for n in names:
        assert (copy / f"{n}.idx").read_bytes() == open(os.path.join(dataset, f"{n}.idx"), "rb").read(), n
    theirs = json.loads((copy / ".nv-meta/.info.json").read_text())["shard_counts"]
    ours = json.loads(open(os.path.join(dataset, ".nv-meta/.info.json")).read())["shard_counts"]
    assert ours == theirs


def test_deep_decodes_what_the_header_check_lets_through(tmp_path):
    good = seq("000000-000000")
    no_scan = replace_member(seq("000000-000001"), ".1.jpg", jpeg_without_scan(jpeg(1)))
    bad_video = video_sample("000000002", b"\x00\x00\x00\x18ftypmp42 not really a video")
    write_tar(f"{tmp_path}/d/x.tar", [good, no_scan, bad_video])
    plain = index(f"{tmp_path}/d", f"{tmp_path}/o1")
    deep = index(f"{tmp_path}/d", f"{tmp_path}/o2", "--deep")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert deep.returncode == 1
    assert errors_of(f"{tmp_path}/o2/ds.errors.jsonl") == {
        ("x.tar", "000000-000001"): "bad jpeg",
        ("x.tar", "000000002"): "bad video",
    }


def test_workers_do_not_change_any_output(dataset, indexed, tmp_path):
    _, out2 = indexed
    res = index(dataset, str(tmp_path), "--workers", "1", "--max_len", "120")
    assert res.returncode == 1
    for name in ("ds.errors.jsonl", "ds.pkl", "ds.wids.json"):
        assert open(f"{tmp_path}/{name}", "rb").read() == open(f"{out2}/{name}", "rb").read(), name


def test_url_prefix_names_remote_tars(dataset, tmp_path):
    res = index(dataset, str(tmp_path), "--url_prefix", "s3://bucket/set/", "--max_len", "120")
    with open(f"{tmp_path}/ds.pkl", "rb") as f:
        urls = [e["url"] for e in pickle.load(f)]
    assert res.returncode == 1
    assert urls == [f"s3://bucket/set/{t}" for t in sorted(EXPECTED_VALID)]


def test_clean_dataset_exits_zero_with_token_and_image_totals(tmp_path):
    samples = [seq(f"000000-{j:06d}") for j in range(5)]
    write_tar(f"{tmp_path}/d/0.tar", samples)
    res = index(f"{tmp_path}/d", f"{tmp_path}/o")
    assert res.returncode == 0, res.stderr
    tokens = sum(len(json.loads(s[0][1])["input_ids"]) for s in samples)
    assert f"samples=5, valid=5, indexed=5, bad_samples=0, tokens={tokens}, images=15" in res.stdout
    assert open(f"{tmp_path}/o/ds.errors.jsonl").read() == ""


def test_bad_usage_exits_two(tmp_path):
    os.makedirs(f"{tmp_path}/empty")
    assert index(f"{tmp_path}/empty", f"{tmp_path}/o").returncode == 2
    assert index(f"{tmp_path}/missing", f"{tmp_path}/o").returncode == 2
    assert run(MAIN, "--dataset_name", "x").returncode == 2
    help_text = run(MAIN, "--help").stdout
    assert "python index/main.py --dataset_path" in help_text and "--energon" in help_text


def test_tokenizer_flag_sets_image_ids(tmp_path):
    """With --tokenizer the image ids are the model's vocab_size, +1, +2: default-id data then fails."""
    model = train_sentencepiece(str(tmp_path / "sp"))
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    v = sp.get_piece_size()
    write_tar(f"{tmp_path}/d/0.tar", [seq("000000-000000", encode=sp.encode, image_ids=(v, v + 1, v + 2))])
    assert index(f"{tmp_path}/d", f"{tmp_path}/o1", "--tokenizer", model).returncode == 0
    assert index(f"{tmp_path}/d", f"{tmp_path}/o2").returncode == 1  # ids 108.. are text ids to a 32000 vocabulary


# --- check_pair ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """Stage-2 tars whose text ids are real encodings with a tiny SentencePiece model."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("tok")
    model = train_sentencepiece(str(root / "sp"))
    sp = spm.SentencePieceProcessor(model_file=model)
    v = sp.get_piece_size()
    kw = dict(patches=PATCHES, encode=sp.encode, image_ids=(v, v + 1, v + 2))
    good = [
        sequence_sample(
            f"000000-{j:06d}", [("a cat runs on the grass", 2), ("a red car drives down the road", 1)], **kw
        )
        for j in range(6)
    ]
    no_eos = edit_json(
        sequence_sample("000001-000000", [("a dog", 1)], **kw),
        lambda d: d["input_ids"].__setitem__(-1, sp.encode("road")[-1]),
    )
    write_tar(f"{root}/d/0.tar", good)
    write_tar(
        f"{root}/d/1.tar", [no_eos, frames_sample("000000005", 3, kind="kf"), video_sample("000000006", b"not a video")]
    )
    return str(root), model


def check_pair(dataset: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    return run(
        CHECK, "--dataset_path", dataset, "--dataset_name", "ds", "--out", out, "--patches", str(PATCHES), *extra
    )


def test_check_pair_decodes_windows_and_pairs_media(tokenized, tmp_path):
    root, model = tokenized
    res = check_pair(f"{root}/d", str(tmp_path), "--tokenizer", model, "--dump", "20", "--workers", "2")
    assert res.returncode == 1, res.stderr
    assert errors_of(f"{tmp_path}/ds.errors.jsonl") == {
        ("1.tar", "000001-000000"): "text window",
        ("1.tar", "000000006"): "bad video",
    }
    text = open(
        f"{tmp_path}/samples/"
        + next(d for d in os.listdir(f"{tmp_path}/samples") if d.endswith("000000-000003"))
        + "/text.txt"
    ).read()
    assert "<s>describe<im_start><im_patch>×4<im_end><im_start><im_patch>×4<im_end>a cat runs on the grass</s>" in text
    assert (
        "[packed sample 1: 000000001]\ndescribe<im_start><im_patch>×4<im_end>a red car drives down the road</s>" in text
    )


def test_check_pair_dump_is_deterministic_whatever_the_workers(tokenized, tmp_path):
    root, model = tokenized
    a = check_pair(f"{root}/d", str(tmp_path / "a"), "--tokenizer", model, "--dump", "3", "--workers", "1")
    b = check_pair(f"{root}/d", str(tmp_path / "b"), "--tokenizer", model, "--dump", "3", "--workers", "2")
    assert a.returncode == b.returncode == 1
    dirs = sorted(os.listdir(tmp_path / "a" / "samples"))
    assert len(dirs) == 3 and dirs == sorted(os.listdir(tmp_path / "b" / "samples"))
    for d in dirs:
        for f in os.listdir(tmp_path / "a" / "samples" / d):
            assert (tmp_path / "a" / "samples" / d / f).read_bytes() == (
                tmp_path / "b" / "samples" / d / f
            ).read_bytes()


def test_check_pair_dumps_frames_with_their_metadata(tokenized, tmp_path):
    root, model = tokenized
    res = check_pair(f"{root}/d", str(tmp_path), "--tokenizer", model, "--dump", "20")
    assert res.returncode == 1
    kf = tmp_path / "samples" / next(d for d in os.listdir(tmp_path / "samples") if d.endswith("000000005"))
    assert sorted(os.listdir(kf)) == ["0.jpg", "1.jpg", "2.jpg", "sample.json", "text.txt"]
    assert (kf / "1.jpg").read_bytes() == jpeg(51)  # frame bytes untouched
    assert (kf / "text.txt").read_text().strip() == "a clip numbered 000000005"
    report = (tmp_path / "report.html").read_text()
    assert "#10 · 0.4s · P" in report and "#20 · 0.8s · I" in report


def test_energon_loader_reads_the_dataset_without_prepare(indexed, dataset):
    """energon's own loader opens the metadata main.py wrote; bad samples are excluded, broken tars absent."""
    energon = pytest.importorskip("megatron.energon", reason="megatron-energon is not installed")

    @energon.stateless
    def raw(sample):
        return sample

    class Raw(energon.DefaultTaskEncoder):
        cookers = [energon.Cooker(raw)]

        def encode_sample(self, sample):
            return sample

    worker_config = energon.WorkerConfig(rank=0, world_size=1, num_workers=0)
    ds = energon.get_val_dataset(
        dataset, split_part="train", batch_size=None, worker_config=worker_config, task_encoder=Raw()
    )
    seen = {(s["__shard__"], s["__key__"]) for s in energon.get_loader(ds)}
    bad = {(tar, key) for tar, cases in BROKEN.items() for key in cases}
    assert len(seen) == sum(EXPECTED_VALID.values())
    assert {shard for shard, _ in seen} == set(EXPECTED_VALID)
    assert not seen & bad
    assert ("b.tar", "000001-000099") in seen and ("v/s1v.tar", "000000001") in seen


@pytest.mark.parametrize("sample_type,ids_format", [("kf", "json"), ("un", "npy")])
def test_real_stage1_and_stage2_output_passes_every_check(tmp_path, sample_type, ids_format):
    """The contract from the other side: stage-1 tars (the stage-2 tests' writer) and what
    tokenize/main.py makes of them pass index/main.py and check_pair.py with no error."""
    from tests.stage1_fixtures import train_llama_like_tokenizer, write_stage1_corpus

    src, out = str(tmp_path / "s1"), str(tmp_path / "s2")
    write_stage1_corpus(src, tars=2, samples_per_tar=4, sample_type=sample_type, frames=(3, 6), words=(3, 20))
    model = train_llama_like_tokenizer(str(tmp_path / "sp"), lines=300)
    tok = run(os.path.join(ROOT, "tokenize", "main.py"), "--dataset_path", src, "--save_path", out, "--tokenizer", model,
              "--sample_type", sample_type, "--start", "0", "--end", "2", "--shard_size", "1", "--patches", str(PATCHES),
              "--max_len", "600", "--ids_format", ids_format, "--workers", "1")  # fmt: skip
    assert tok.returncode == 0, tok.stderr
    for folder in (src, out):
        res = index(folder, str(tmp_path / "idx"), "--tokenizer", model, "--max_len", "600", "--deep")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "bad_samples=0," in res.stdout and ("samples=8, valid=8," in res.stdout if folder == src else True)
        pair = check_pair(folder, str(tmp_path / "chk"), "--tokenizer", model, "--max_len", "600", "--dump", "2")
        assert pair.returncode == 0, pair.stdout + pair.stderr


def test_a_failed_ray_task_is_scanned_again_locally(dataset, monkeypatch):
    """ray_map_units is replaced by an in-process stand-in whose task for one tar crashes: that tar
    is scanned again in the local pool, and every output is the pool run's."""
    redone = []
    real_in_pool = runner._on_pool

    def ray_stand_in(fn, units, workers, address, deadline):
        for index, unit in reversed(list(enumerate(units))):  # out of order, as Ray finishes them
            yield index, WorkFailure("crash: ray task failed: WorkerCrashedError") if index == 1 else fn(unit)

    def in_pool(work, tars, context, feed=None):
        redone.extend(tars)
        return real_in_pool(work, tars, context, feed)

    monkeypatch.setattr(runner, "ray_map_units", ray_stand_in)
    monkeypatch.setattr(runner, "_on_pool", in_pool)
    tars = stage3.find_tars(dataset)
    options = ScanOptions(CheckOptions(patches=PATCHES, max_len=120), root=dataset)
    on_ray = stage3.run_scan(tars, options, RunContext("ray", 2), 60)
    assert redone == [tars[1]]
    pool = stage3.run_scan(tars, options, RunContext("pool", 2), 60)
    assert [s.path for s in on_ray.scans] == tars
    assert on_ray.errors == pool.errors
    assert megatron_entries(on_ray.scans) == megatron_entries(pool.scans)
    assert wids_index("ds", on_ray.scans) == wids_index("ds", pool.scans)
    assert energon_files(on_ray.scans, IDS) == energon_files(pool.scans, IDS)


def test_slurm_index_runs_one_job_with_its_cpus_as_workers(tmp_path):
    write_tar(f"{tmp_path}/d/0.tar", [seq("000000-000000")])
    script = os.path.join(ROOT, "scripts", "slurm_index.sbatch")
    flags = ["--dataset_path", f"{tmp_path}/d", "--dataset_name", "ds", "--output", f"{tmp_path}/o", "--patches", "4"]
    env = {**os.environ, "SLURM_SUBMIT_DIR": ROOT, "SLURM_CPUS_PER_TASK": "2"}
    res = subprocess.run(["bash", script, *flags], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert os.path.exists(f"{tmp_path}/o/ds.pkl") and "tars=1," in res.stdout
    array = subprocess.run(
        ["bash", script, *flags], capture_output=True, text=True, env={**env, "SLURM_ARRAY_TASK_ID": "3"}
    )
    assert array.returncode == 2 and "not an array" in array.stderr
