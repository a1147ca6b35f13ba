"""check_pair's report.html opened in a real headless Chromium: pictures load, counts match the scan.

Needs Debian's chromium and chromium-driver (.ci/run installs them); skipped only when they are
absent. Selenium drives the browser through /usr/bin/chromedriver; no network is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from tests.index_fixtures import (
    edit_json,
    frames_sample,
    jpeg,
    replace_member,
    sequence_sample,
    train_sentencepiece,
    video_sample,
    write_tar,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# In CI (scripts/test.sh installs the browser) a missing browser is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"),
    reason="Debian chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"):  # fmt: skip
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """Stage-1 un/kf/video-only and stage-2 samples, some broken; check_pair dumps them all."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("report")
    model = train_sentencepiece(str(root / "sp"))
    sp = spm.SentencePieceProcessor(model_file=model)
    v = sp.get_piece_size()
    kw = dict(patches=4, encode=sp.encode, image_ids=(v, v + 1, v + 2))
    write_tar(f"{root}/d/s1.tar", [
        frames_sample("000000000", 4, kind="un"),
        frames_sample("000000001", 5, kind="kf", caption="a <b>bold</b> & 'quoted' caption"),
        replace_member(frames_sample("000000002", 3), ".1.jpg", b"broken jpeg"),
        edit_json(frames_sample("000000003", 3), lambda d: d["conversations"][0].__setitem__("value", "<image>")),
    ])  # fmt: skip
    write_tar(f"{root}/d/s2.tar", [
        sequence_sample("000000-000000", [("a cat runs on the grass", 2), ("a red car", 1)], **kw),
        sequence_sample("000000-000001", [("a dog", 3)], **kw),
        replace_member(sequence_sample("000000-000002", [("a dog", 2)], **kw), ".1.jpg", None),
    ])  # fmt: skip
    write_tar(f"{root}/d/v.tar", [video_sample("000000005", b"not a video")])
    out = root / "out"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "index", "check_pair.py"), "--dataset_path", f"{root}/d", "--dataset_name", "r",
         "--patches", "4", "--tokenizer", model, "--dump", "50", "--out", str(out), "--workers", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    return out, res.stdout


def open_report(browser, path) -> None:
    browser.get("file://" + str(path))
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))"
        ".then(() => done(true));"
    )


def image_widths(browser) -> list[int]:
    return browser.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0);")


def expected_thumbnails(out) -> int:
    """Every dumped frame that decodes gets a thumbnail; the broken JPEG shows as 'undecodable'."""
    import cv2
    import numpy as np

    files = [os.path.join(d, f) for d, _, fs in os.walk(out / "samples") for f in fs if f.endswith(".jpg")]
    return sum(cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_COLOR) is not None for f in files)


def test_report_images_load_in_chromium(browser, checked):
    out, _ = checked
    open_report(browser, out / "report.html")
    widths = image_widths(browser)
    assert len(widths) == expected_thumbnails(out) == 4 + 5 + 2 + 3 + 3 + 3 + 1
    assert all(w > 0 for w in widths), widths
    assert browser.execute_script("return document.querySelectorAll('.nothumb').length") == 1


def test_report_counts_match_the_scan(browser, checked):
    out, stdout = checked
    open_report(browser, out / "report.html")
    shown = browser.execute_script(
        "const r = {}; document.querySelectorAll('#reasons tr[data-reason]').forEach("
        "  tr => r[tr.dataset.reason] = tr.querySelector('td.count').textContent); return r;"
    )
    with open(out / "r.errors.jsonl") as f:
        scan = Counter(json.loads(line)["reason"].split(":", 1)[0] for line in f)
    assert (
        {k: int(v) for k, v in shown.items()}
        == dict(scan)
        == {"bad jpeg": 1, "placeholder count": 1, "missing image": 1, "bad video": 1}
    )
    totals = browser.execute_script(
        "const t = {}; document.querySelectorAll('#totals tr[data-field]').forEach("
        "  tr => t[tr.dataset.field] = tr.querySelector('td').textContent); return t;"
    )
    for field in ("tars", "samples", "valid", "bad_samples", "tokens", "images"):
        assert f"{field}={totals[field]}," in stdout, field
    assert totals["samples"] == "8" and totals["bad_samples"] == "4"
    assert len(browser.find_elements("css selector", ".sample")) == 8
    assert len(browser.find_elements("css selector", ".sample.bad")) == 4


def test_report_shows_frame_metadata_and_escaped_text(browser, checked):
    out, _ = checked
    open_report(browser, out / "report.html")
    kf = browser.find_element("css selector", '.sample[data-key="000000001"]')
    labels = [c.text for c in kf.find_elements("css selector", "figcaption")]
    assert labels == ["#0 · 0.0s · I", "#10 · 0.4s · P", "#20 · 0.8s · I", "#30 · 1.2s · P", "#40 · 1.6s · I"]
    assert "a <b>bold</b> & 'quoted' caption" in kf.text  # shown as text, not markup
    seq = browser.find_element("css selector", '.sample[data-key="000000-000000"]')
    assert "<s>describe<im_start><im_patch>×4<im_end>" in seq.text and "a cat runs on the grass</s>" in seq.text
    assert re.findall(r"image \d · \d+", seq.text) == [
        "image 0 · 000000000",
        "image 1 · 000000000",
        "image 2 · 000000001",
    ]


def test_report_is_self_contained(browser, checked, tmp_path):
    """Copied alone, the page still shows every thumbnail (data URIs, no files needed)."""
    out, _ = checked
    shutil.copy(out / "report.html", tmp_path / "alone.html")
    open_report(browser, tmp_path / "alone.html")
    widths = image_widths(browser)
    assert widths and all(w > 0 for w in widths)
    full = browser.find_element("css selector", ".sample a").get_attribute("href")
    assert (out / "samples").exists() and "samples/" in full  # full-size frames are beside the original report
    assert jpeg(0)[:2] == b"\xff\xd8"


# --- distributions and duplicate groups --------------------------------------------------------

STAGE1_PLOTS = ("duration", "short_side", "fps", "frames", "motion", "static_share", "sharpness", "black_share",
                "shot_changes")  # fmt: skip


def plots_on_page(browser) -> dict[str, dict]:
    """Each plot as the browser lays it out: its numbers, its bars, its threshold lines and sizes."""
    return browser.execute_script(
        "const out = {}; document.querySelectorAll('svg.plot').forEach(svg => {"
        "  const box = svg.getBoundingClientRect();"
        "  const bars = [...svg.querySelectorAll('rect.bar')];"
        "  out[svg.dataset.metric] = {count: +svg.dataset.count, width: box.width, height: box.height,"
        "    bars: Object.fromEntries(bars.filter(b => +b.dataset.count).map(b => [b.dataset.bin, +b.dataset.count])),"
        "    drawn: bars.filter(b => +b.dataset.count).every(b => b.getBBox().height > 0 && b.getBBox().width > 0),"
        "    lines: [...svg.querySelectorAll('line.threshold')].map(l => [l.dataset.rule, +l.dataset.threshold,"
        "      l.getBBox().height])};"
        "}); return out;"
    )


def page_totals(browser) -> dict[str, str]:
    return browser.execute_script(
        "const t = {}; document.querySelectorAll('#totals tr[data-field]').forEach("
        "  tr => t[tr.dataset.field] = tr.querySelector('td').textContent); return t;"
    )


def test_report_plots_count_what_the_scan_counted(browser, checked):
    """Mixed folder: stage-2 plots count the 2 sound sequences, stage-1 ones the 2 sound frames samples."""
    out, stdout = checked
    open_report(browser, out / "report.html")
    plots = plots_on_page(browser)
    assert set(plots) == {"duration", "short_side", "fps", "frames", "tokens", "fill", "packed"}  # no signals here
    for name, plot in plots.items():
        assert plot["width"] > 0 and plot["height"] > 0 and plot["drawn"], name
        assert sum(plot["bars"].values()) == plot["count"] == 2, name
        assert plot["lines"] == [], name  # no stage-1 flags beside these tars
    assert plots["frames"]["bars"] == {"4": 1, "5": 1} and plots["short_side"]["bars"] == {"0–143": 2}
    assert plots["packed"]["bars"] == {"1": 1, "2": 1}


@pytest.fixture(scope="module")
def packed_checked(tmp_path_factory):
    """Real pack.py output (un, 4 frames, filters on) of painted videos, a duplicates file in
    vdp-dedup's format naming its samples, and check_pair's report on it with 1 and 3 workers."""
    from tests.pack_helpers import read_samples, write_manifest
    from tests.synth import VideoSpec, make_video
    from vdp.cli import pack

    root = tmp_path_factory.mktemp("packed_report")
    specs = {"a": VideoSpec(num_frames=40), "c": VideoSpec(num_frames=60, fps=30, width=320, height=240),
             "d": VideoSpec(num_frames=5), "e": VideoSpec(num_frames=48, fps=24, scene_cuts=(24,))}  # fmt: skip
    videos = {name: make_video(str(root / f"{name}.mp4"), spec) for name, spec in specs.items()}
    videos["b"] = shutil.copy(videos["a"], root / "b.mp4")  # the same video twice
    rows = [{"video_path": str(videos[v]), "value": f"video {v}", "video_id": v} for v in "abcde"]
    save = root / "shards"
    filters = ["--min_duration", "0.5", "--min_motion", "0.001", "--max_black_share", "0.5"]
    assert pack.main(["--manifest", write_manifest(str(root / "m.jsonl"), rows), "--type", "un", "--num_frames", "4",
                      "--samples_per_tar", "2", "--save_path", str(save), "--workers", "1", "--no_progress",
                      *filters]) == 0  # fmt: skip
    tar_of = {m.split(".")[0]: str(t) for t in sorted(save.glob("*.tar")) for m in tarfile_names(t)}
    key_of = {json.loads(s["json"])["video_id"]: k for k, s in read_samples(str(save)).items()}
    assert sorted(key_of) == ["a", "b", "c", "e"]  # d is shorter than --min_duration

    def member(v, **more):
        return {"tar": tar_of[key_of[v]], "key": key_of[v], "frames": 4, **more}

    ghost = {"tar": tar_of[key_of["e"]], "key": "no-such-key", "frames": 4, "distance": 3.0, "matched": 1.0}
    groups = [[member("a"), member("b", distance=0.0, matched=1.0)],
              [member("c"), member("e", distance=11.5, matched=0.5), ghost]]  # fmt: skip
    dups = root / "n.duplicates.jsonl"
    dups.write_text("".join(json.dumps({"group": g, "samples": s}) + "\n" for g, s in enumerate(groups)))
    outs = {}
    for workers in ("1", "3"):
        outs[workers] = root / f"out{workers}"
        res = subprocess.run(
            [sys.executable, os.path.join(ROOT, "index", "check_pair.py"), "--dataset_path", str(save),
             "--dataset_name", "n", "--dump", "10", "--duplicates", str(dups), "--out", str(outs[workers]),
             "--workers", workers, "--no_progress"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    return outs, res.stdout, key_of


def tarfile_names(path) -> list[str]:
    import tarfile

    with tarfile.open(path) as t:
        return t.getnames()


def test_stage1_plots_match_the_scan_and_draw_the_pack_thresholds(browser, packed_checked):
    outs, stdout, _ = packed_checked
    open_report(browser, outs["3"] / "report.html")
    totals = page_totals(browser)
    assert f"valid={totals['valid']}," in stdout and totals["valid"] == "4"
    plots = plots_on_page(browser)
    assert set(plots) == set(STAGE1_PLOTS)
    for name, plot in plots.items():
        assert plot["width"] > 0 and plot["height"] > 0 and plot["drawn"], name
        assert sum(plot["bars"].values()) == plot["count"] == int(totals["valid"]), name
    assert plots["fps"]["bars"] == {"≈24": 1, "≈25": 2, "≈30": 1}
    assert plots["short_side"]["bars"] == {"0–143": 3, "240–359": 1}
    assert plots["frames"]["bars"] == {"4": 4}
    lines = {name: [(rule, value) for rule, value, _ in p["lines"]] for name, p in plots.items() if p["lines"]}
    assert lines == {"duration": [("min_duration", 0.5)], "motion": [("min_motion", 0.001)],
                     "black_share": [("max_black_share", 0.5)]}  # fmt: skip
    assert all(h > 0 for p in plots.values() for _, _, h in p["lines"])


def test_plots_are_the_same_for_any_number_of_workers(packed_checked):
    outs, _, _ = packed_checked
    pages = [(outs[w] / "report.html").read_text() for w in ("1", "3")]
    plots = [re.search(r'<div class="plots">.*?</div>', p).group(0) for p in pages]
    assert plots[0] == plots[1] and plots[0].count("<svg") == len(STAGE1_PLOTS)


def test_duplicate_groups_show_thumbnails_side_by_side(browser, packed_checked, tmp_path):
    outs, _, key_of = packed_checked
    shutil.copy(outs["1"] / "report.html", tmp_path / "alone.html")  # one self-contained file
    open_report(browser, tmp_path / "alone.html")
    assert browser.execute_script("return document.querySelectorAll('script, link, iframe, object').length") == 0
    assert browser.execute_script("return [...document.images].every(i => i.src.startsWith('data:image/jpeg'))")
    assert "2 groups, 3 duplicates" in browser.find_element("css selector", "#duplicates-total").text
    groups = browser.execute_script(
        "return [...document.querySelectorAll('#duplicates .group')].map(g => [...g.querySelectorAll('figure')].map("
        "  f => { const i = f.querySelector('img'); const b = f.getBoundingClientRect();"
        "    return [f.dataset.key, f.classList.contains('kept'), i ? i.naturalWidth : 0, b.top, b.left,"
        "            f.querySelector('figcaption').textContent]; }));"
    )
    assert [[(k, kept) for k, kept, *_ in g] for g in groups] == [
        [(key_of["a"], True), (key_of["b"], False)],
        [(key_of["c"], True), (key_of["e"], False), ("no-such-key", False)],
    ]
    thumbs = [w for g in groups for _, _, w, *_ in g]
    assert thumbs == [160, 160, 128, 160, 0]  # 96 px high thumbnails: 160×96 and 320×240 frames; one not found
    for g in groups:  # side by side: one row, left to right
        assert len({round(top) for _, _, _, top, _, _ in g}) == 1
        assert [left for *_, left, _ in g] == sorted(left for *_, left, _ in g)
    assert groups[1][1][5].startswith("distance 11.5 · matched 0.5")
    assert "not in the tar" in browser.find_element("css selector", '#duplicates figure[data-key="no-such-key"]').text
