"""Each loader reads its public annotation format; malformed rows are reported, never fatal."""

from __future__ import annotations

import json

from loaders import LOADERS, BadRow, Record, parse_time


def load(name, path):
    return list(LOADERS[name](str(path)))


def test_jsonl_accepts_value_or_caption_and_reports_bad_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"video_path": "a.mp4", "value": "A"}\n'
        "\n"
        '{"video_path": "b.mp4", "caption": "B", "video_id": "vb", "start": 1, "end": "00:00:02.5"}\n'
        "not json\n"
        '["a list"]\n'
        '{"video_path": "c.mp4"}\n'
    )
    out = load("jsonl", p)
    assert out[0] == Record("a.mp4", "A")
    assert out[1] == Record("b.mp4", "B", "vb", 1.0, 2.5)
    assert out[2] == BadRow(f"{p}:4", out[2].reason) and out[2].reason.startswith("bad JSON")
    assert out[3].reason == "not a JSON object" and out[3].where == f"{p}:5"
    assert out[4] == BadRow(f"{p}:6", "missing caption")


def test_webvid_csv(tmp_path):
    p = tmp_path / "results.csv"
    p.write_text('videoid,contentUrl,duration,page_dir,name\n1066,u,PT10S,006001_006050,"Cat, on a mat"\n,u,PT1S,x,y\n')
    out = load("webvid", p)
    assert out[0] == Record("006001_006050/1066.mp4", "Cat, on a mat", "1066")
    assert out[1] == BadRow(f"{p}:3", "missing videoid or page_dir")


def test_internvid_spans_and_clip_files(tmp_path):
    p = tmp_path / "internvid.jsonl"
    rows = [
        {"YoutubeID": "abc", "Start_timestamp": "00:01:02.500", "End_timestamp": "00:01:05.000", "Caption": "x"},
        {"YoutubeID": "abc", "clip_path": "clips/abc_1.mp4", "Caption": "y"},
        {"YoutubeID": "abc", "Start_timestamp": "00:00:05", "End_timestamp": "00:00:01", "Caption": "z"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = load("internvid", p)
    assert out[0] == Record("abc.mp4", "x", "abc", 62.5, 65.0)
    assert out[1] == Record("clips/abc_1.mp4", "y", "abc")
    assert isinstance(out[2], BadRow) and "empty clip span" in out[2].reason


def test_hdvila_and_how2link(tmp_path):
    p = tmp_path / "hdvila.jsonl"
    p.write_text(json.dumps({"video_id": "v1", "clip_id": "v1_3.mp4", "span": ["00:00:10.0", "00:00:14.0"], "text": "t"}) + "\n")
    assert load("hd-vila", p) == [Record("v1.mp4", "t", "v1_3.mp4", 10.0, 14.0)]
    q = tmp_path / "how2link.jsonl"
    q.write_text(json.dumps({"video_id": "h", "clips": [{"clip_path": "h/0.mp4", "caption": "c0"}, {"caption": "no path"}]}) + "\n")
    out = load("how2link", q)
    assert out[0] == Record("h/0.mp4", "c0", "h")
    assert out[1] == BadRow(f"{q}:1#clip1", "missing video path")


def test_ego4d_narrations(tmp_path):
    p = tmp_path / "narration.json"
    p.write_text(json.dumps({
        "uid1": {"narration_pass_1": {"narrations": [
            {"timestamp_sec": 10.0, "narration_text": "#C C opens the door"},
            {"narration_text": "no time"},
        ]}},
        "uid2": {"status": "redacted"},
    }))
    out = load("ego4d", p)
    assert out[0] == Record("uid1.mp4", "C opens the door", "uid1", 8.0, 12.0)
    assert out[1] == BadRow(f"{p}:uid1#1", "narration without timestamp_sec")
    assert out[2] == BadRow(f"{p}:uid2", "no narrations")


def test_parse_time():
    assert parse_time("01:02:03.5") == 3723.5
    assert parse_time(4) == 4.0
