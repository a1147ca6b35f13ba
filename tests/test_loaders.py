"""Each loader reads its dataset's file exactly as published (tests/data/), and packs the right frames.

The files under tests/data/ keep a few rows each in the publisher's own format (see
tests/data/README.md); the end-to-end tests lay out painted-frame videos the way each
dataset's downloader or cutting script does and check the frames of every clip's span.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

import vdp.pack.datasets  # noqa: F401 (registers the datasets)
from tests.pack_helpers import frame_numbers, read_samples
from tests.synth import VideoSpec, make_video
from vdp.cli import pack
from vdp.pack.manifest import LOADERS, BadRow, LoaderOptions, Manifest, Record, parse_time

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FPS = 25


def load(name: str, path: str, **options) -> list:
    m = Manifest(str(path), LOADERS[name], LoaderOptions(**options))
    index = m.index()
    return [e for _, e in m.entries(index, 0, index.total)]


def data(name: str) -> str:
    return os.path.join(DATA, name)


# --- rows as published ---------------------------------------------------------------------


def test_webvid_2m_and_10m_column_orders():
    two = load("webvid", data("results_2M_val.csv"))
    assert [r.video_path for r in two] == [
        "1066692551_1066692600/1066692580.mp4", "031353401_031353450/31353427.mp4", "1015979001_1015979050/1015979020.mp4"]
    assert two[1].caption == 'Merida, mexico - may 23, 2017: tourists are walking on the "paseo" street'
    assert two[1].video_id == "31353427"
    ten = load("webvid", data("results_10M_val.csv"))
    assert ten[0] == Record("1066692551_1066692600/1066692580.mp4", "City traffic at night, timelapse", "1066692580")
    urls = load("webvid", data("results_10M_val.csv"), source="url")
    assert urls[1].video_path.startswith("https://ak.picdn.net/shutterstock/videos/21179416/")


def test_internvid_clip_first_then_whole_video_and_scores_in_meta():
    rows = load("internvid", data("InternVid-10M-FLT.jsonl"))
    r = rows[0]
    assert (r.video_path, r.clip_path, r.start, r.end) == (
        "gi8Qm8ZHRAY.*", "gi8Qm8ZHRAY_00:00:00.500_00:00:01.500.*", 0.5, 1.5)
    assert r.caption == "a man is cooking food in a kitchen"
    assert r.meta == {"Aesthetic_Score": 4.43, "UMT_Score": 0.42}


def test_hdvila_nested_release_one_record_per_clip():
    rows = load("hd-vila", data("hdvila_part0.jsonl"))
    assert [(r.video_id, r.start, r.end) for r in rows] == [
        ("QMi8x8o55Ns.1.mp4", 0.48, 1.48), ("QMi8x8o55Ns.2.mp4", 2.0, 3.2), ("Zfw7Wb3Y2vA.1.mp4", 1.0, 2.0)]
    assert rows[0].clip_path == "QMi8x8o55Ns/QMi8x8o55Ns.1.mp4" and rows[0].video_path == "QMi8x8o55Ns.*"
    assert rows[0].caption is None, "the release ships no captions"


def test_how2link_tsv_and_the_earlier_jsonl(tmp_path):
    rows = load("how2link", data("Howto-Interlink7M_subset_w_all_clips_val.tsv"))
    assert [(r.video_path, r.start, r.end, r.caption) for r in rows] == [
        ("vid_howto_a.*", 0.0, 1.0, "Take the pan off the heat."),
        ("vid_howto_a.*", 2.0, 3.0, 'Add the "secret" sauce, then stir.'),
        ("vid_howto_b.*", 1.0, 2.0, "Cut the wood along the line."),
    ]
    q = tmp_path / "how2link.jsonl"
    q.write_text(json.dumps({"video_id": "h", "clips": [{"clip_path": "h/0.mp4", "caption": "c0"}, {"caption": "x"}]}) + "\n")
    out = load("how2link", q)
    assert out[0] == Record("h/0.mp4", "c0", "h")
    assert out[1] == BadRow(f"{q}:1#clip1", "missing video path")


def test_ego4d_tags_removed_passes_and_window():
    one = load("ego4d", data("narration.json"))
    uid = "0a02a1ed-a327-4753-b270-e95298984b96"
    assert [(r.caption, r.start, r.end) for r in one[:2]] == [
        ("C picks a cup", 0.0, 4.0), ("man X hands C a cup", 0.5, 4.5)]
    assert one[0].video_path == f"{uid}.mp4"
    assert isinstance(one[2], BadRow) and one[2].where.endswith(":1b2f3c4d-0000-4753-b270-e95298984b97")
    assert "status redacted" in one[2].reason
    both = load("ego4d", data("narration.json"), ego4d_pass="both", ego4d_window=2.0)
    assert [(r.caption, r.start, r.end) for r in both[:3]] == [
        ("C picks a cup", 0.0, 2.0), ("man X hands C a cup", 1.5, 3.5), ("C lifts the cup.", 0.10000000000000009, 2.1)]
    assert [(r.start, r.end) for r in load("ego4d", data("narration.json"))[:1]] == [(0.0, 4.0)], "window kept at 0"
    two = load("ego4d", data("narration.json"), ego4d_pass="2")
    assert [r.caption for r in two[:1]] == ["C lifts the cup."]


def test_table_reads_csv_tsv_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"file": "a.mp4", "text": "A", "s": "1.5", "e": "3"}, {"file": "b.mp4", "text": "B", "s": "", "e": ""}]
    opts = dict(video_col="file", caption_col="text", start_col="s", end_col="e")
    (tmp_path / "t.csv").write_text("file,text,s,e\na.mp4,A,1.5,3\nb.mp4,B,,\n")
    (tmp_path / "t.tsv").write_text("file\ttext\ts\te\na.mp4\tA\t1.5\t3\nb.mp4\tB\t\t\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet", row_group_size=1)
    want = [Record("a.mp4", "A", "", 1.5, 3.0), Record("b.mp4", "B")]
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        assert load("table", tmp_path / f"t.{ext}", **opts) == want, ext


# --- every malformed row is one bad row, numbered ------------------------------------------


def test_bad_rows_keep_their_number_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(
        b'{"video_path": "a.mp4", "value": "A"}\n'
        b"\n"
        b'{"video_path": "b.mp4", "caption": "B", "video_id": "vb", "start": 1, "end": "00:00:02.5"}\n'
        b"not json\n"
        b'["a list"]\n'
        b'{"video_path": "c.mp4"}\n'
        b'{"video_path": "d.mp4", "value": "caf\xe9"}\n'
        + b"[" * 100000 + b"\n"
        + b'{"video_path": "e.mp4", "value": "E", "start": "NaN", "end": 3}\n'
    )
    out = load("jsonl", p)
    assert out[0] == Record("a.mp4", "A")
    assert out[1] == Record("b.mp4", "B", "vb", 1.0, 2.5)
    assert out[2].where == f"{p}:4" and out[2].reason.startswith("bad JSON")
    assert out[3] == BadRow(f"{p}:5", "not a JSON object")
    assert out[4] == BadRow(f"{p}:6", "missing caption")
    assert out[5].where == f"{p}:7" and out[5].reason.startswith("not valid UTF-8"), "never U+FFFD in a caption"
    assert out[6].where == f"{p}:8" and out[6].reason.startswith("bad JSON")
    assert out[7].where == f"{p}:9" and out[7].reason.startswith("bad clip span")
    assert len(out) == 8


def test_csv_quoted_newlines_wrong_field_counts_and_stray_quotes(tmp_path):
    p = tmp_path / "results.csv"
    p.write_bytes(
        b"videoid,contentUrl,duration,page_dir,name\n"
        b'1,u,PT1S,p1,"two\nlines, quoted"\n'
        b"2,u,PT1S,p2\n"
        b'3,u,PT1S,p3,"stray quote never closed\n'
        b"4,u,PT1S,p4,fine\n"
        b"5,u,PT1S,p5,caf\xe9\n"
    )
    out = load("webvid", p)
    assert out[0] == Record("p1/1.mp4", "two\nlines, quoted", "1")
    assert out[1] == BadRow(f"{p}:4", "4 fields where the header has 5")
    assert out[2].where == f"{p}:5" and isinstance(out[2], BadRow)
    assert out[3] == Record("p4/4.mp4", "fine", "4"), "a stray quote costs its own line only"
    assert out[4].where == f"{p}:7" and out[4].reason.startswith("not valid UTF-8")


def test_any_range_equals_the_same_slice_of_a_full_read(tmp_path, monkeypatch):
    """Seeking to a checkpoint and parsing from there gives exactly the records of a full read."""
    import vdp.pack.manifest as manifest

    monkeypatch.setattr(manifest, "ROWS_PER_CHECKPOINT", 7)
    p = tmp_path / "hdvila.jsonl"
    lines = []
    for v in range(40):
        clips = [{"clip_id": f"v{v}.{c}.mp4", "span": [c, c + 1]} for c in range(v % 4)]
        lines.append(json.dumps({"video_id": f"v{v}", "clip": clips}) if v % 9 else "oops")
    p.write_text("\n".join(lines) + "\n")
    m = Manifest(str(p), LOADERS["hd-vila"])
    index = m.index()
    full = list(m.entries(index, 0, index.total))
    assert [n for n, _ in full] == list(range(index.total)) and len(index.checkpoints) > 3
    for lo, hi in [(0, 5), (3, 17), (16, 41), (40, index.total), (index.total - 1, index.total + 5)]:
        assert list(m.entries(index, lo, hi)) == full[lo:hi]


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "csv"])
def test_counting_by_blocks_agrees_with_parsing_line_by_line(tmp_path, monkeypatch, fmt):
    """Blank and whitespace-only lines, CRLF, a last line without newline, rows across blocks."""
    import vdp.pack.manifest as manifest

    monkeypatch.setattr(manifest, "ROWS_PER_CHECKPOINT", 5)
    monkeypatch.setattr(manifest, "COUNT_BLOCK", 64)
    rows = []
    for i in range(60):
        if fmt == "jsonl":
            rows.append(json.dumps({"video_path": f"v{i}.mp4", "value": f"c {i}" * (i % 7)}))
        else:
            sep = "," if fmt == "csv" else "\t"
            caption = (f'"c,\r\n {i}"' if i == 40 else f'"c, {i}"') if fmt == "csv" else f"c {i}"
            rows.append(sep.join([f"v{i}.mp4", caption]))  # row 40: a quoted field across lines
        rows += ["", "  \t ", "\r"][: i % 4]
    header = "" if fmt == "jsonl" else ("file,text\n" if fmt == "csv" else "file\ttext\n")
    p = tmp_path / f"m.{fmt}"
    p.write_text(header + "\r\n".join(rows))  # no newline after the last row
    loader = LOADERS["jsonl" if fmt == "jsonl" else "table"]
    m = Manifest(str(p), loader, LoaderOptions(video_col="file", caption_col="text"))
    index = m.index()
    assert index.total == 60 and len(index.checkpoints) > 5
    full = list(m.entries(index, 0, 60))
    assert [e.video_path for _, e in full] == [f"v{i}.mp4" for i in range(60)]
    for lo in range(0, 60, 7):
        assert list(m.entries(index, lo, lo + 9)) == full[lo:lo + 9]


def test_parse_time():
    assert parse_time("01:02:03.5") == 3723.5
    assert parse_time("0:00:05") == 5.0
    assert parse_time(4) == 4.0
    with pytest.raises(ValueError):
        parse_time("inf")


# --- end to end: the published file, the dataset's video layout, painted frames ------------


def span_frames(sample: dict) -> tuple[list[int | None], dict]:
    return frame_numbers(sample), json.loads(sample["json"])


def assert_frames_within(sample: dict, start: float, end: float, caption: str) -> None:
    numbers, meta = span_frames(sample)
    assert meta["caption"] == caption
    assert None not in numbers
    assert all(start * FPS - 1e-6 <= n < end * FPS for n in numbers), (numbers, start, end)


def pack_un(manifest: str, out, *extra: str) -> int:
    return pack.main(["--manifest", manifest, "--type", "un", "--num_frames", "4", "--save_path", str(out),
                      "--workers", "1", "--no_progress", *extra])


def video(path: str, seconds: float = 4.0) -> str:
    codec = "libvpx-vp9" if path.endswith(".webm") else "libx264"
    return make_video(path, VideoSpec(num_frames=int(seconds * FPS), fps=FPS, gop=10, codec=codec))


def test_pack_internvid_prefers_the_cut_clip_and_finds_any_extension(tmp_path):
    root = tmp_path / "videos"
    video(str(root / "gi8Qm8ZHRAY.mkv"))  # yt-dlp chose mkv
    clip = video(str(root / "xKc2NwB9hPo_00:00:01.000_00:00:02.000.webm"), seconds=1.0)  # cut beforehand
    out = tmp_path / "out"
    rc = pack_un(data("InternVid-10M-FLT.jsonl"), out, "--dataset", "internvid", "--video_root", str(root))
    assert rc == 0
    s = read_samples(str(out))
    assert_frames_within(s["000000000"], 0.5, 1.5, "a man is cooking food in a kitchen")
    assert_frames_within(s["000000001"], 2.0, 3.0, "the man stirs the pot")
    numbers, meta = span_frames(s["000000002"])
    assert meta["source"] == os.path.basename(clip) and "span" not in meta, "the pre-cut clip is packed whole"
    assert meta["meta"] == {"Aesthetic_Score": 5.02, "UMT_Score": 0.47, "span_in_source": [1.0, 2.0]}
    assert max(numbers) < FPS


def test_pack_hdvila_with_captions_file_and_cut_clip(tmp_path):
    root = tmp_path / "videos"
    video(str(root / "QMi8x8o55Ns.mp4"))
    cut = video(str(root / "Zfw7Wb3Y2vA" / "Zfw7Wb3Y2vA.1.mp4"), seconds=1.0)
    caps = tmp_path / "captions.jsonl"
    caps.write_text("".join(json.dumps({"clip_id": c, "caption": f"about {c}"}) + "\n"
                            for c in ("QMi8x8o55Ns.1.mp4", "Zfw7Wb3Y2vA.1.mp4")))
    out = tmp_path / "out"
    rc = pack_un(data("hdvila_part0.jsonl"), out, "--dataset", "hd-vila", "--video_root", str(root),
                 "--captions", str(caps))
    assert rc == 1
    s = read_samples(str(out))
    assert_frames_within(s["000000000"], 0.48, 1.48, "about QMi8x8o55Ns.1.mp4")
    assert json.loads(s["000000002"]["json"])["source"] == "Zfw7Wb3Y2vA/Zfw7Wb3Y2vA.1.mp4" and os.path.exists(cut)
    errors = [json.loads(line) for line in open(out / "errors-0.jsonl")]
    assert [(e["key"], e["reason"]) for e in errors] == [
        ("000000001", "bad row: no caption for QMi8x8o55Ns.2.mp4 in --captions")]
    assert errors[0]["source"].endswith("hdvila_part0.jsonl:1#clip1")


def test_pack_how2link_tsv(tmp_path):
    root = tmp_path / "videos"
    video(str(root / "vid_howto_a.mp4"))
    out = tmp_path / "out"
    rc = pack_un(data("Howto-Interlink7M_subset_w_all_clips_val.tsv"), out, "--dataset", "how2link",
                 "--video_root", str(root))
    assert rc == 1
    s = read_samples(str(out))
    assert_frames_within(s["000000000"], 0.0, 1.0, "Take the pan off the heat.")
    assert_frames_within(s["000000001"], 2.0, 3.0, 'Add the "secret" sauce, then stir.')
    errors = [json.loads(line) for line in open(out / "errors-0.jsonl")]
    assert [e["key"] for e in errors] == ["000000002"] and errors[0]["reason"].startswith("missing file")


def test_pack_ego4d_and_webvid(tmp_path):
    root = tmp_path / "videos"
    video(str(root / "0a02a1ed-a327-4753-b270-e95298984b96.mp4"), seconds=3.0)
    out = tmp_path / "ego"
    assert pack_un(data("narration.json"), out, "--dataset", "ego4d", "--video_root", str(root),
                   "--ego4d_window", "2") == 1
    s = read_samples(str(out))
    assert_frames_within(s["000000000"], 0.0, 2.0, "C picks a cup")
    assert_frames_within(s["000000001"], 1.5, 3.0, "man X hands C a cup")

    webvid = tmp_path / "webvid"
    for page, vid in [("1066692551_1066692600", "1066692580"), ("031353401_031353450", "31353427"),
                      ("1015979001_1015979050", "1015979020")]:
        video(str(webvid / page / f"{vid}.mp4"), seconds=1.0)
    shutil.copy(data("results_2M_val.csv"), tmp_path / "results_2M_val.csv")
    out = tmp_path / "wv"
    assert pack_un(str(tmp_path / "results_2M_val.csv"), out, "--dataset", "webvid", "--video_root", str(webvid)) == 0
    s = read_samples(str(out))
    assert json.loads(s["000000002"]["json"])["caption"] == "Green leaves in the wind close up"


def test_machines_split_a_manifest_they_never_hold_whole(tmp_path):
    """Each machine's share, read by seeking, packs exactly the records one machine would."""
    clip = video(str(tmp_path / "v.mp4"), seconds=1.0)
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({"video_path": clip, "value": f"c{i}"}) + "\n" for i in range(23)))
    keys = {}
    for machine in range(3):
        out = tmp_path / f"m{machine}"
        assert pack.main(["--manifest", str(m), "--type", "video-only", "--save_path", str(out), "--workers", "1",
                          "--no_progress", "--machine_id", str(machine), "--total_machine", "3"]) == 0
        keys.update({k: json.loads(v["json"])["caption"] for k, v in read_samples(str(out)).items()})
    assert keys == {f"{i:09d}": f"c{i}" for i in range(23)}


def test_usage_errors_for_loader_flags(tmp_path, capsys):
    m = data("InternVid-10M-FLT.jsonl")
    for argv, said in [
        (["--dataset", "internvid", "--source", "url"], "no video URL column"),
        (["--dataset", "table"], "needs --video_col and --caption_col"),
        (["--dataset", "hd-vila", "--captions", str(tmp_path / "nope.jsonl")], "--captions file not found"),
    ]:
        with pytest.raises(SystemExit) as e:
            pack.main(["--manifest", m, "--type", "un", "--save_path", str(tmp_path / "o"), *argv])
        assert e.value.code == 2
        assert said in capsys.readouterr().err


# --- the same layouts on object storage and behind URLs ------------------------------------


def test_internvid_on_s3_finds_clips_and_extensions_as_locally(s3_env, tmp_path):
    """`.*` and pre-cut clips are looked up on S3 too, and give the local run's bytes."""
    import boto3

    from tests.s3_fixtures import make_bucket

    root = tmp_path / "videos"
    video(str(root / "gi8Qm8ZHRAY.mkv"))
    video(str(root / "xKc2NwB9hPo_00:00:01.000_00:00:02.000.webm"), seconds=1.0)
    shutil.copy(data("InternVid-10M-FLT.jsonl"), root / "InternVid-10M-FLT.jsonl")
    local = tmp_path / "local"
    assert pack_un(str(root / "InternVid-10M-FLT.jsonl"), local, "--dataset", "internvid") == 0
    make_bucket(s3_env, "internvid")
    client = boto3.client("s3", endpoint_url=s3_env)
    for name in os.listdir(root):
        client.upload_file(str(root / name), "internvid", f"raw/{name}")
    remote = tmp_path / "from-s3"
    assert pack_un("s3://internvid/raw/InternVid-10M-FLT.jsonl", remote, "--dataset", "internvid",
                   "--s3_endpoint", s3_env) == 0
    tars = sorted(n for n in os.listdir(local) if n.endswith(".tar"))
    assert tars and all((local / n).read_bytes() == (remote / n).read_bytes() for n in tars)


def test_webvid_source_url_reads_content_urls(tmp_path):
    """--source url: the CSV's contentUrl is the video, fetched over HTTP (here from loopback)."""
    from tests.http_fixtures import serve_folder

    served = tmp_path / "served"
    video(str(served / "a.mp4"), seconds=1.0)
    with serve_folder(str(served)) as server:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        m = tmp_path / "results_10M_val.csv"
        m.write_text("videoid,name,page_idx,page_dir,duration,contentUrl\n"
                     f'1,"A clip, served",0,000001_000050,PT00H00M01S,{base}/a.mp4\n'
                     f"2,Gone,0,000001_000050,PT00H00M01S,{base}/gone.mp4\n")
        out = tmp_path / "out"
        assert pack_un(str(m), out, "--dataset", "webvid", "--source", "url") == 1
    s = read_samples(str(out))
    assert json.loads(s["000000000"]["json"])["source"] == f"{base}/a.mp4"
    assert_frames_within(s["000000000"], 0, 1, "A clip, served")
    errors = [json.loads(line) for line in open(out / "errors-0.jsonl")]
    assert [(e["key"], e["reason"]) for e in errors] == [("000000001", f"missing file: {base}/gone.mp4 (HTTP 404)")]
