"""The report's histograms and what feeds them, without a browser: bins, merging, SVG, the stage-1
thresholds and the duplicates file (tests/test_index_report.py renders them in Chromium)."""

from __future__ import annotations

import json
import math
import random
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest

from vdp.errors import UsageError
from vdp.index.histograms import INF, Distributions, Histogram, bin_of, merge_all, metrics, token_edges
from vdp.index.plots import histogram_svg, nice_top, threshold_x
from vdp.index.report import pack_thresholds, read_duplicates
from vdp.index.validate import SampleFacts

SVG = "{http://www.w3.org/2000/svg}"


def frames_facts(i: int, rng: random.Random) -> SampleFacts:
    doc = {
        "duration": rng.choice([0.4, 1.6, 7.25, 61.0, 5000.0]) + rng.random(),
        "width": rng.choice([64, 640, 1920]),
        "height": rng.choice([48, 360, 1080]),
        "fps": rng.choice([23.976, 25.0, 29.97, 60.0, 8.0]),
        "signals": {"motion": rng.random() / 10, "static_share": rng.choice([0.0, 0.25, 1.0]),
                    "sharpness": rng.random() * 3000, "black_share": rng.choice([0.0, 0.5]),
                    "shot_changes": rng.randrange(0, 25)},
    }  # fmt: skip
    return SampleFacts(f"{i:09d}", "frames", images=rng.randrange(1, 300), doc=doc)


def sequence_facts(i: int, rng: random.Random) -> SampleFacts:
    doc = {"sample_lengths": [1] * rng.randrange(1, 9)}
    return SampleFacts(f"s{i}", "sequence", tokens=rng.randrange(1, 8001), doc=doc)


def test_merge_gives_the_same_histograms_however_the_samples_are_split():
    rng = random.Random(7)
    facts = [frames_facts(i, rng) if i % 3 else sequence_facts(i, rng) for i in range(600)]

    def split(cuts: list[int], order: list[int]) -> dict:
        parts = []
        for lo, hi in zip([0, *cuts], [*cuts, len(facts)]):  # one "tar" each, filled in a "worker"
            d = Distributions(8000)
            for f in facts[lo:hi]:
                d.add(f)
            parts.append(d)
        merged = merge_all([parts[i] for i in order], 8000)  # and merged in any order
        return {name: (h.counts, h.count, h.low, h.high, h.sum, h.mean) for name, h in merged.hists.items()}

    one = split([], [0])
    many = sorted(rng.sample(range(1, 600), 40))
    assert split(many, list(range(41))) == one
    assert split(many, rng.sample(range(41), 41)) == one
    assert split(list(range(1, 600)), list(reversed(range(600)))) == one
    assert one["tokens"][1] == 200 and one["duration"][1] == 400 and sum(one["fps"][0]) == 400
    assert one["motion"][4] == sum(Fraction(f.doc["signals"]["motion"]) for f in facts if f.kind == "frames")


def test_a_value_falls_in_the_bin_its_edges_say():
    by_name = {m.name: m for m in metrics(8000)}

    def labels(name, values):
        m = by_name[name]
        return [m.bin_labels()[bin_of(m.edges, v)] for v in values]

    assert labels("fps", (23.976, 24, 25, 29.97, 30, 59.94, 8, 240)) == [
        "≈24", "≈24", "≈25", "≈30", "≈30", "≈60", "<10", "≥120"]  # fmt: skip
    assert labels("short_side", (96, 240, 359, 1080, 4320)) == ["0–143", "240–359", "240–359", "1080–1439", "≥2160"]
    assert labels("frames", (4, 16, 20, 32, 300)) == ["4", "16", "17–23", "32", "≥257"]
    assert token_edges(8000)[-3:] == (7600, 8000, INF)
    assert labels("tokens", (0, 7999, 8000)) == ["0–399", "7600–7999", "≥8000"]
    assert labels("static_share", (0.0, 0.3, 0.99, 1.0)) == ["0–0.1", "0.3–0.4", "0.9–1", "≥1"]
    assert bin_of((0, 1, INF), -5) == 0  # below the first edge: the first bin


def test_only_finite_numbers_are_counted():
    d = Distributions(100)
    for value in (None, True, "3", math.nan, math.inf, [1], 2.5, 10**400):
        d.add(SampleFacts("k", "frames", images=1, doc={"duration": value, "signals": "not a dict"}))
    assert d.hists["duration"].count == 1 and d.hists["frames"].count == 8
    assert d.hists["duration"].sum == Fraction(5, 2)
    assert "motion" not in d.hists and "fps" not in d.hists
    d.add(SampleFacts("v", "video", doc={"duration": 3.0}))  # video-only: no frames per sample
    assert d.hists["duration"].count == 2 and d.hists["frames"].count == 8
    with pytest.raises(ValueError):
        Histogram.empty((0, 1, INF)).merge(Histogram.empty((0, 2, INF)))


def test_thresholds_sit_where_their_value_is():
    edges = (0, 1, 2, 5, INF)
    assert threshold_x(edges, 0.5, 10, 20) == 20  # half way through the first bar
    assert threshold_x(edges, 3.5, 10, 20) == 10 + 2.5 * 20
    assert threshold_x(edges, 99, 10, 20) == 10 + 3 * 20  # an open bin: its left side
    assert nice_top(0) == (1, 1) and nice_top(7) == (8, 2) and nice_top(1234) == (1500, 500)


def test_the_svg_is_well_formed_and_carries_its_numbers():
    metric = next(m for m in metrics(8000) if m.name == "duration")
    hist = Histogram.empty(metric.edges)
    for v in (0.5, 1.5, 1.7, 4000.0):
        hist.add(v)
    svg = ET.fromstring(histogram_svg(metric, hist, [("min_duration", 0.5), ("max_duration", 3600.0)]))
    assert svg.get("data-metric") == "duration" and svg.get("data-count") == "4"
    bars = svg.findall(f"{SVG}rect")
    assert len(bars) == len(metric.edges) - 1 and sum(int(b.get("data-count")) for b in bars) == 4
    assert [b.get("data-bin") for b in bars if b.get("data-count") != "0"] == ["0–1", "1–2", "≥3600"]
    lines = [(x.get("data-rule"), x.get("data-threshold")) for x in svg.findall(f"{SVG}line[@class='threshold']")]
    assert lines == [("min_duration", "0.5"), ("max_duration", "3600.0")]


def test_thresholds_come_from_the_stage1_flags_beside_the_tars(tmp_path):
    def flags(folder, machine, filters):
        (folder / ".pack").mkdir(parents=True, exist_ok=True)
        doc = {"options": {"filters": [{"rule": r, "threshold": t} for r, t in filters]}}
        (folder / ".pack" / f"flags-{machine}.json").write_text(json.dumps(doc))

    flags(tmp_path / "a", 0, [("min_motion", 0.01), ("max_black_share", 0.5)])
    flags(tmp_path / "a", 1, [("min_motion", 0.02)])
    flags(tmp_path / "b", 0, [("min_motion", 0.01)])
    (tmp_path / "b" / ".pack" / "flags-9.json").write_text("{not json")  # costs only its own lines
    (tmp_path / "c").mkdir()
    tars = [str(tmp_path / d / "x.tar") for d in ("a", "b", "c")]
    assert pack_thresholds(tars) == {"max_black_share": [0.5], "min_motion": [0.01, 0.02]}
    assert pack_thresholds([str(tmp_path / "c" / "x.tar")]) == {}


def test_the_duplicates_file_is_read_with_its_totals(tmp_path):
    def row(g, n):
        samples = [{"tar": "/d/t.tar", "key": f"{g}-{i}", "frames": 4} for i in range(n)]
        for s in samples[1:]:
            s.update(distance=1.0, matched=1.0)
        return json.dumps({"group": g, "samples": samples})

    path = tmp_path / "n.duplicates.jsonl"
    path.write_text("\n".join(row(g, 2 + g) for g in range(5)) + "\n\n")
    dups = read_duplicates(str(path), 2)
    assert (dups.total_groups, dups.total_duplicates) == (5, 1 + 2 + 3 + 4 + 5)
    assert [[m.key for m in g] for g in dups.groups] == [["0-0", "0-1"], ["1-0", "1-1", "1-2"]]
    assert dups.groups[1][0].distance is None and dups.groups[1][2].distance == 1.0
    path.write_text(row(0, 2) + "\n" + json.dumps({"group": 1, "samples": [{"tar": "t", "key": "k"}]}) + "\n")
    with pytest.raises(UsageError, match="line 2"):
        read_duplicates(str(path), 2)
    with pytest.raises(UsageError, match="no such file"):
        read_duplicates(str(tmp_path / "missing.jsonl"), 2)


def test_each_member_gets_its_first_frame_or_a_note(tmp_path):
    """A frames sample's first listed image, a video-only sample's first decoded frame (upright),
    and notes for a key the tar lacks, a tar that is not there and bytes that do not decode."""
    import base64

    import cv2
    import numpy as np

    from tests.index_fixtures import frames_sample, video_sample, write_tar
    from tests.synth import VideoSpec, make_video
    from vdp.index.report import Duplicates, Member, add_thumbnails

    video = make_video(str(tmp_path / "r.mp4"), VideoSpec(num_frames=6, width=160, height=96, rotation=90))
    with open(video, "rb") as f:
        write_tar(str(tmp_path / "d" / "a.tar"), [frames_sample("000000001", 3), video_sample("000000002", f.read()),
                                                   video_sample("000000003", b"not a video")])  # fmt: skip
    tar = str(tmp_path / "d" / "a.tar")
    members = [Member("a.tar", "000000001"), Member(tar, "000000002", 1.0), Member(tar, "000000003", 2.0),
               Member(tar, "000000009", 3.0), Member("gone.tar", "000000001", 4.0)]  # fmt: skip
    dups = Duplicates("x", [members[:3], members[3:]])
    add_thumbnails(dups, str(tmp_path / "d"))  # "a.tar" is relative to the dataset folder

    def shape(m):
        data = base64.b64decode(m.thumb.split(",", 1)[1])
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]

    assert [shape(m) for m in members[:2]] == [(96, 128), (96, 160)]  # 64×48 JPEG; the video stood upright
    assert [m.note for m in members[2:]] == ["no frame", "not in the tar", "unreadable tar"]
    assert not any(m.thumb for m in members[2:])


def test_a_remote_dataset_gives_the_same_plots_thresholds_and_groups(s3_env, tmp_path):
    """Stage-1 shards and their .pack/flags on s3://, the duplicates file too: the report's plots
    and groups are the local run's."""
    import re

    from tests.pack_helpers import write_manifest
    from tests.s3_fixtures import make_bucket
    from tests.synth import VideoSpec, make_video
    from tests.test_index_s3 import download_tree, upload_tree
    from vdp.cli import check_pair, pack

    video = make_video(str(tmp_path / "a.mp4"), VideoSpec(num_frames=30))
    rows = [{"video_path": video, "value": f"copy {i}", "video_id": str(i)} for i in range(2)]
    save = tmp_path / "shards"
    assert pack.main(["--manifest", write_manifest(str(tmp_path / "m.jsonl"), rows), "--type", "un", "--num_frames",
                      "3", "--samples_per_tar", "1", "--min_motion", "0.001", "--save_path", str(save), "--workers",
                      "1", "--no_progress"]) == 0  # fmt: skip
    make_bucket(s3_env, "rep")
    upload_tree(s3_env, str(save), "s3://rep/shards")  # .pack/flags-0.json included
    tars = sorted(p.name for p in save.glob("*.tar"))
    for where, root in (("local", str(save)), ("remote", "s3://rep/shards")):
        samples = [{"tar": f"{root}/{t}", "key": f"{i:09d}"} for i, t in enumerate(tars)]
        samples[1].update(distance=0.0, matched=1.0)
        (tmp_path / where).mkdir()
        (tmp_path / where / "n.duplicates.jsonl").write_text(json.dumps({"group": 0, "samples": samples}) + "\n")
    upload_tree(s3_env, str(tmp_path / "remote"), "s3://rep/dups")
    flags = ["--dataset_name", "n", "--dump", "2", "--workers", "2", "--no_progress"]
    assert check_pair.main(["--dataset_path", str(save), "--out", str(tmp_path / "out"), "--duplicates",
                            str(tmp_path / "local" / "n.duplicates.jsonl"), *flags]) == 0  # fmt: skip
    assert check_pair.main(["--dataset_path", "s3://rep/shards", "--out", "s3://rep/out", "--duplicates",
                            "s3://rep/dups/n.duplicates.jsonl", "--s3_endpoint", s3_env, *flags]) == 0  # fmt: skip
    remote = download_tree(s3_env, "s3://rep/out")["report.html"].decode()
    pages = [(tmp_path / "out" / "report.html").read_text(), remote]
    plots = [re.search(r'<div class="plots">.*?</div>', p).group(0) for p in pages]
    groups = [re.findall(r'<div class="group".*?</div></div>', p) for p in pages]
    assert plots[0] == plots[1] and 'data-rule="min_motion" data-threshold="0.001"' in plots[0]
    assert groups[0] == groups[1] and len(groups[0]) == 1 and groups[0][0].count('src="data:image/jpeg') == 2
