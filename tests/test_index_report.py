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
