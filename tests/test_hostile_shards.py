"""Hostile input tars through stage 2 (tokenize/main.py) and stage 3 (index/main.py).

Each case of tests/hostile_tars.py (a tar cut mid-member, names with `../` or a leading `/`,
links and devices, headers claiming gigabytes, duplicate keys and members, JSON nested 100000
deep or not an object, frames that are not JPEGs) must become exactly one errors-file row
naming the tar, the key and the reason, in both stages, while the tar's sound samples are
still used. Both commands run in a child process under a 2 GiB address-space limit and a
deadline: an allocation of what a header claims fails there, a hang fails the test, and a
traceback shows on stderr. The same tars are also read from a bucket (moto), where stage 2
streams them, and the header walk is held to tarfile's listing on USTAR, GNU and pax tars.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from tests.hostile_tars import CASES, GB, HostileCase, header, regular
from tests.stage1_fixtures import train_llama_like_tokenizer
from tests.test_tokenize import output_sequences
from vdp.io.tario import TarReadError
from vdp.io.tarslices import _tarfile_index, iter_tar_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDRESS_SPACE = 2 * GB  # both commands need under 0.7 GB of address space; a 3 GB read cannot fit

# Runs both stages' main() on one folder of tars, as a user would, within the address-space limit.
RUNNER = """
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, sys.argv[2])
from vdp.cli import tokenize as tokenize_command
from vdp.cli import index as index_main
src, out, model = sys.argv[3:6]
tokenize = tokenize_command.main(["--dataset_path", src, "--save_path", out + "/tokens", "--tokenizer", model,
    "--sample_type", "un", "--patches", "4", "--workers", "2", "--no_progress", "--timeout", "60"])
index = index_main.main(["--dataset_path", src, "--dataset_name", "ds", "--output", out + "/index",
    "--patches", "4", "--workers", "2", "--timeout", "60"])
print("EXIT " + json.dumps({"tokenize": tokenize, "index": index}))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return train_llama_like_tokenizer(str(tmp_path_factory.mktemp("tok") / "llama"))


def holes_supported(folder: str) -> bool:
    """Whether a file here can be mostly holes (a 3 GB case must not cost 3 GB of disk)."""
    probe = os.path.join(folder, ".sparse-probe")
    with open(probe, "wb") as f:
        f.seek(64 << 20)
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())
    allocated = os.stat(probe).st_blocks * 512
    os.unlink(probe)
    return allocated < 1 << 20


def run_both_stages(src: str, out: str, model: str) -> tuple[dict, subprocess.CompletedProcess]:
    # BLAS and OpenMP reserve address space per core at import: one thread keeps that small anywhere.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(ADDRESS_SPACE), ROOT, src, out, model],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert "Traceback" not in done.stderr, done.stderr
    exits = [line for line in done.stdout.splitlines() if line.startswith("EXIT ")]
    assert done.returncode == 0 and exits, done.stdout + done.stderr
    return json.loads(exits[0][5:]), done


def error_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def files_under(folder: str) -> set[str]:
    return {os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**"), recursive=True)}


def packed_sources(tokens: str) -> list[str]:
    return sorted(k for _, m in output_sequences(tokens) for k in json.loads(m["json"])["sources"])


def valid_count(stdout: str) -> int:
    return int(re.search(r"\bvalid=(\d+)", stdout).group(1))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_tar_is_one_error_row_in_both_stages(case: HostileCase, model, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    if case.sparse and not holes_supported(str(tmp_path)):
        pytest.skip("this filesystem cannot hold a sparse file")
    tar = str(src / "x.tar")
    case.write(tar)
    before = files_under(str(tmp_path))
    exits, done = run_both_stages(str(src), str(out), model)
    assert exits == {"tokenize": 1, "index": 1}, done.stdout + done.stderr

    rows = error_rows(str(out / "tokens" / "errors.jsonl"))
    assert [(r["source"], r["key"]) for r in rows] == [(tar, case.key)], rows
    assert case.reason["tokenize"] in rows[0]["reason"], rows
    assert packed_sources(str(out / "tokens")) == sorted(case.survivors)

    rows = error_rows(str(out / "index" / "ds.errors.jsonl"))
    assert [(r["tar"], r["key"]) for r in rows] == [(tar, case.key)], rows
    assert case.reason["index"] in rows[0]["reason"], rows
    assert valid_count(done.stdout) == len(case.survivors)

    # Nothing written anywhere but the two output folders; no member name reached a path.
    written = files_under(str(tmp_path)) - before
    assert all(p.split(os.sep)[0] == "out" for p in written), sorted(written)
    assert not os.path.exists("/tmp/vdp-escaped")
    names = [n for p in glob.glob(str(out / "tokens" / "*" / "*.tar")) for n in tarfile.open(p).getnames()]
    assert all(re.fullmatch(r"\d{6}-\d{6}\.(json|\d+\.jpg)", n) for n in names), names


def test_hostile_tars_in_a_bucket_give_the_same_rows(s3_env, model, tmp_path, capsys):
    """Every case (but the sparse one) as objects in a bucket: stage 2 streams them (vdp.io.tarslices'
    window) and stage 3 reads them ranged; the rows and the survivors are the local run's."""
    from tests.s3_fixtures import make_bucket
    from tests.test_index_s3 import upload_tree
    from tests.test_tokenize import tokenize_main
    from vdp.cli import index as index_main

    cases = [c for c in CASES if not c.sparse]
    src = tmp_path / "src"
    src.mkdir()
    for case in cases:
        case.write(str(src / f"{case.name}.tar"))
    make_bucket(s3_env, "hostile")
    upload_tree(s3_env, str(src), "s3://hostile/src")
    out = tmp_path / "out"
    common = ["--dataset_path", "s3://hostile/src", "--s3_endpoint", s3_env, "--patches", "4", "--workers", "2"]
    tokenize = [*common, "--save_path", str(out / "tokens"), "--tokenizer", model, "--sample_type", "un"]
    assert tokenize_main.main([*tokenize, "--no_progress"]) == 1
    assert index_main.main([*common, "--dataset_name", "ds", "--output", str(out / "index")]) == 1
    assert "Traceback" not in capsys.readouterr().err

    def by_tar(rows: list[dict], field: str) -> dict[str, list]:
        found: dict[str, list] = {}
        for r in rows:
            found.setdefault(r[field].rsplit("/", 1)[-1][: -len(".tar")], []).append((r["key"], r["reason"]))
        return found

    stage2 = by_tar(error_rows(str(out / "tokens" / "errors.jsonl")), "source")
    stage3 = by_tar(error_rows(str(out / "index" / "ds.errors.jsonl")), "tar")
    packed: dict[str, list] = {}
    for _, m in output_sequences(str(out / "tokens")):
        doc = json.loads(m["json"])
        for tar, key in zip(doc["source_tars"], doc["sources"]):
            packed.setdefault(tar[: -len(".tar")], []).append(key)
    for case in cases:
        for stage, rows in (("tokenize", stage2), ("index", stage3)):
            assert [k for k, _ in rows[case.name]] == [case.key], (case.name, rows[case.name])
            assert case.reason[stage] in rows[case.name][0][1], (case.name, rows[case.name])
        assert sorted(packed.get(case.name, [])) == sorted(case.survivors), case.name


# --- the header walk against tarfile -----------------------------------------------------------


def tar_of(fmt: int, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info in members:
            t.addfile(info, io.BytesIO(data.get(info.name, b"")) if info.isfile() else None)
    return buf.getvalue()


def info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.size, i.type, i.linkname = size, kind, linkname
    return i


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_header_walk_lists_what_tarfile_lists(fmt):
    """Long names (prefix, GNU long name, pax path), folders, links, non-ASCII names, empty members:
    the regular files and their places are tarfile's, links come with a reason, folders are passed over."""
    names = ["a.json", "d" * 90 + "/" + "e" * 90 + ".0.jpg", "f" * 150 + ".json", "ü.json", "empty.txt"]
    if fmt == tarfile.USTAR_FORMAT:
        names = [n for n in names if len(n.rsplit("/", 1)[-1]) <= 100 and n.isascii()]  # USTAR holds only these
    data = {n: os.urandom(100 + 700 * i) for i, n in enumerate(names)}
    data["empty.txt"] = b""
    members = [info("dir/", kind=tarfile.DIRTYPE)] + [info(n, len(data[n])) for n in names]
    members.insert(3, info("link.jpg", kind=tarfile.SYMTYPE, linkname="/etc/passwd"))
    raw = tar_of(fmt, members, data)
    ours = list(iter_tar_index(io.BytesIO(raw)))
    assert [e for e in ours if not e.problem] == list(_tarfile_index(io.BytesIO(raw)))
    assert [e.name for e in ours if e.problem] == ["link.jpg"]
    for e in ours:
        if not e.problem:
            assert raw[e.offset : e.offset + e.size] == data[e.name]


def test_extended_headers_are_read_within_their_limit():
    """A pax header within the limit is applied; garbage in one stops the walk with a reason."""
    body = regular("a.json", b"{}")
    record = b"path=" + b"p" * 300 + b".json\n"
    record = str(len(record) + 4).encode() + b" " + record
    pax = header("pax", len(record), tarfile.XHDTYPE) + record + bytes(-len(record) % 512)
    raw = body + pax + regular("short.json", b"[1]") + bytes(1024)
    assert [e.name for e in iter_tar_index(io.BytesIO(raw))] == ["a.json", "p" * 300 + ".json"]
    bad = body + header("pax", 9, tarfile.XHDTYPE) + b"9 garbage" + bytes(503) + regular("b.json", b"{}")
    with pytest.raises(TarReadError, match="extended header"):
        list(iter_tar_index(io.BytesIO(bad + bytes(1024))))
