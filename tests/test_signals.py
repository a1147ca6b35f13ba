"""Quality signals and filters (issue 13): each signal on videos made to have a known value, each
filter's file, and the promises of stage 1 (every record once, resume, same bytes) with them on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import av
import cv2
import numpy as np
import pytest

from tests.pack_helpers import decode_jpeg, read_samples, tree_bytes, write_manifest
from vdp.cli import pack
from vdp.media.phash import hamming, phash
from vdp.media.signals import SIGNALS, STATIC_STEP, compute_signals, register_signal, working_grey

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 40  # 1.6 s at 25 fps
W, H = 160, 96


def run_pack(*args: str) -> int:
    return pack.main([*args, "--no_progress"])


# --- videos with known content ------------------------------------------------------------------


def landscape(seed: int, width: int, height: int, low: int, high: int) -> np.ndarray:
    """A smooth colour picture (blurred noise) with grey levels in about low..high."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.normal(size=(height // 8, width // 8, 3)).astype(np.float32), (width, height),
                     interpolation=cv2.INTER_CUBIC)
    img = cv2.GaussianBlur(img, (0, 0), 4)
    img = (img - img.min()) / (img.max() - img.min())
    return (low + img * (high - low)).astype(np.uint8)


def with_square(img: np.ndarray, n: int, value: int) -> np.ndarray:
    """The picture with a square (a quarter of its height) moving 5 px right and 3 down a frame."""
    out = img.copy()
    h, w = img.shape[:2]
    side = h // 4
    x, y = (5 * n) % (w - side), (3 * n) % (h - side)
    out[y : y + side, x : x + side] = value
    return out


def encode(path: str, frames: list[np.ndarray], fps: int = 25) -> str:
    """Frames (RGB) to an H.264 file (2 B-frames, GOP 12)."""
    h, w = frames[0].shape[:2]
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": "12", "bf": "2", "crf": "18"}
        for img in frames:
            for p in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return path


def texture(width: int, height: int) -> np.ndarray:
    """Crisp detail: 4-px checks over a smooth picture."""
    yy, xx = np.mgrid[0:height, 0:width]
    checks = (((xx // 4) + (yy // 4)) % 2 * 120).astype(np.uint8)[..., None]
    return cv2.add(landscape(9, width, height, 0, 120), np.repeat(checks, 3, axis=2))


def video_frames(kind: str) -> list[np.ndarray]:
    dark, bright = landscape(1, W, H, 30, 110), landscape(2, W, H, 140, 230)
    black = np.zeros((H, W, 3), np.uint8)
    if kind == "static":
        return [dark] * FRAMES
    if kind == "moving":
        return [with_square(dark, n, 255) for n in range(FRAMES)]
    if kind == "black":
        return [black] * FRAMES
    if kind == "cut":  # one hard cut, at frame 20
        return [with_square(dark, n, 255) if n < 20 else with_square(bright, n, 0) for n in range(FRAMES)]
    if kind == "fade":  # dark shot, 12 black frames, bright shot: one change of shot
        return [with_square(dark, n, 255) if n < 14 else black if n < 26 else with_square(bright, n, 0)
                for n in range(FRAMES)]
    if kind == "half_static":  # still for 20 frames, then the square moves
        return [dark if n < 20 else with_square(dark, n, 255) for n in range(FRAMES)]
    if kind == "short":
        return [with_square(dark, n, 255) for n in range(12)]
    if kind == "small":
        return [with_square(landscape(3, 64, 48, 30, 200), n, 255) for n in range(FRAMES)]
    if kind == "sharp":
        return [np.roll(texture(480, 270), 2 * n, axis=1) for n in range(FRAMES)]
    if kind == "blurred":
        return [cv2.GaussianBlur(f, (0, 0), 2.5) for f in video_frames("sharp")]
    raise ValueError(kind)


KINDS = ("static", "moving", "black", "cut", "fade", "half_static", "short", "small", "sharp", "blurred")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signal_videos")
    return {kind: encode(str(folder / f"{kind}.mp4"), video_frames(kind)) for kind in KINDS}


def manifest_of(videos: dict, kinds, folder) -> str:
    rows = [{"video_path": videos[k], "value": f"a {k} video", "video_id": k} for k in kinds]
    return write_manifest(str(folder / "m.jsonl"), rows)


def signals_by_video(out: str) -> dict[str, dict]:
    return {json.loads(s["json"])["video_id"]: json.loads(s["json"])["signals"] for s in read_samples(out).values()}


# --- the definitions, on arrays -------------------------------------------------------------------


def grey_frame(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


def test_motion_and_static_share_are_the_mean_step_and_the_share_below_2_of_255():
    base = landscape(5, W, H, 40, 200)
    frames = [base, base, cv2.add(base, 1), cv2.add(base, 10)]  # steps of 0, 1/255, 9/255
    s = compute_signals(frames, [0.0, 0.1, 0.2, 0.3])
    assert 1 / 255 < STATIC_STEP < 9 / 255
    assert s["static_share"] == round(2 / 3, 4)
    assert s["motion"] == pytest.approx(10 / 765, abs=2e-4)
    one = compute_signals([base], [0.0])
    assert (one["motion"], one["static_share"], one["shot_changes"]) == (0.0, 1.0, 0)


def test_black_share_counts_dark_flat_frames_only():
    night = landscape(6, W, H, 0, 40)  # dark, but with detail
    frames = [grey_frame(0), grey_frame(12), grey_frame(128), night]
    assert compute_signals(frames, [0, 1, 2, 3])["black_share"] == 0.5


def test_shot_changes_skip_black_frames_and_ignore_a_change_of_light():
    dark, bright = landscape(1, W, H, 30, 110), landscape(2, W, H, 140, 230)
    assert compute_signals([dark, bright], [0, 1])["shot_changes"] == 1
    assert compute_signals([dark, grey_frame(0), bright], [0, 1, 2])["shot_changes"] == 1
    assert compute_signals([dark, grey_frame(0), dark], [0, 1, 2])["shot_changes"] == 0
    # the same picture lit differently: the histogram moves, the structure (hash) does not
    assert compute_signals([dark, cv2.add(dark, 90)], [0, 1])["shot_changes"] == 0


def test_sharpness_is_the_variance_of_the_laplacian_at_the_working_size():
    sharp = texture(480, 270)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.5)
    grey = working_grey(sharp)
    assert grey.shape == (135, 240)  # 2×2 blocks
    expected = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    assert compute_signals([sharp], [0])["sharpness"] == pytest.approx(expected, rel=1e-4)
    assert compute_signals([blurred], [0])["sharpness"] < expected / 4


def test_phash_is_vdp_phash_of_each_frame_in_order():
    frames = [landscape(s, W, H, 0, 255) for s in (1, 2, 1)]
    hashes = compute_signals(frames, [0, 1, 2])["phash"]
    assert hashes == [phash(working_grey(f)) for f in frames] and hashes[0] == hashes[2]
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in hashes)


def test_a_registered_signal_lands_in_the_json(videos, tmp_path, monkeypatch):
    monkeypatch.setitem(SIGNALS, "frames_seen", lambda frames: len(frames.grey))
    m = manifest_of(videos, ["moving"], tmp_path)
    assert run_pack("--manifest", m, "--type", "un", "--num_frames", "5", "--save_path", str(tmp_path / "o"),
                    "--workers", "1") == 0
    assert signals_by_video(str(tmp_path / "o"))["moving"]["frames_seen"] == 5
    assert register_signal  # the name a plugin file imports


# --- in the json, for un, kf and video-only ---------------------------------------------------------


@pytest.fixture(scope="module")
def packed(videos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("signal_runs")
    m = manifest_of(videos, KINDS, folder)
    runs = {"un": ["--type", "un", "--num_frames", "8"],
            "kf": ["--type", "kf", "--kf_iframes", "4", "--kf_total", "10"],
            "video-only": ["--type", "video-only", "--signals"]}
    outs = {}
    for kind, args in runs.items():
        outs[kind] = str(folder / kind)
        assert run_pack("--manifest", m, *args, "--save_path", outs[kind], "--workers", "2") == 0
    return outs


@pytest.mark.parametrize("kind", ["un", "kf", "video-only"])
def test_each_signal_has_its_known_value(packed, kind):
    s = signals_by_video(packed[kind])
    assert s["static"]["motion"] < 0.002 and s["static"]["static_share"] == 1.0
    assert s["moving"]["motion"] > 10 * max(s["static"]["motion"], 0.0005) and s["moving"]["static_share"] == 0.0
    assert s["black"]["black_share"] == 1.0 and s["black"]["motion"] == 0.0 and s["black"]["shot_changes"] == 0
    assert s["cut"]["shot_changes"] == 1 and s["cut"]["black_share"] == 0.0
    assert s["fade"]["shot_changes"] == 1 and 0 < s["fade"]["black_share"] < 1
    for name in ("static", "moving", "short", "small", "sharp", "blurred", "half_static"):
        assert s[name]["shot_changes"] == 0 and s[name]["black_share"] == 0.0, name
    assert s["blurred"]["sharpness"] < s["sharp"]["sharpness"] / 4
    assert 0 < s["half_static"]["static_share"] < 1


def test_un_values_are_exact_where_the_frames_are_known(packed):
    s = signals_by_video(packed["un"])
    # un takes frames 2, 7, 12, 17, 22, 27, 32, 37: the first 3 of 7 steps are within the still part
    assert s["half_static"]["static_share"] == round(3 / 7, 4)
    assert s["fade"]["black_share"] == 0.25  # frames 17 and 22 are black


@pytest.mark.parametrize("kind", ["un", "kf"])
def test_phash_has_one_hash_per_image_in_json_order(packed, kind):
    for sample in read_samples(packed[kind]).values():
        doc = json.loads(sample["json"])
        hashes = doc["signals"]["phash"]
        assert len(hashes) == len(doc["image"]) == len(doc["frames"])
        for name, h in zip(doc["image"], hashes):  # the JPEG is the frame hashed, give or take compression
            assert hamming(h, phash(working_grey(decode_jpeg(sample[f"{name}.jpg"])))) <= 6


def test_video_only_signals_come_from_signal_frames_frames(packed, videos, tmp_path):
    for sample in read_samples(packed["video-only"]).values():
        signals = json.loads(sample["json"])["signals"]
        assert len(signals["phash"]) == len(signals["t"]) == 4
    m = manifest_of(videos, ["moving"], tmp_path)
    assert run_pack("--manifest", m, "--type", "video-only", "--signals", "--signal_frames", "6",
                    "--save_path", str(tmp_path / "six")) == 0
    six = signals_by_video(str(tmp_path / "six"))["moving"]
    assert len(six["phash"]) == 6 and six["t"] == sorted(six["t"])
    assert run_pack("--manifest", m, "--type", "video-only", "--save_path", str(tmp_path / "off")) == 0
    assert "signals" not in json.loads(next(iter(read_samples(str(tmp_path / "off")).values()))["json"])


def test_no_signals_leaves_them_out(videos, tmp_path):
    m = manifest_of(videos, ["moving"], tmp_path)
    assert run_pack("--manifest", m, "--type", "un", "--no_signals", "--save_path", str(tmp_path / "o")) == 0
    assert "signals" not in json.loads(next(iter(read_samples(str(tmp_path / "o")).values()))["json"])


# --- filters ----------------------------------------------------------------------------------------

# rule, threshold, the videos it filters
FILTER_CASES = [
    ("min_duration", "1.0", {"short"}),
    ("max_duration", "1.0", {"static", "moving", "black", "small"}),
    ("min_side", "80", {"small"}),
    ("min_motion", "0.01", {"static", "black"}),
    ("max_static_share", "0.5", {"static", "black"}),
    ("max_black_share", "0.5", {"black"}),
]
FILTER_KINDS = ("static", "moving", "black", "short", "small")


@pytest.mark.parametrize("kind", ["un", "video-only"])
@pytest.mark.parametrize("rule, threshold, expected", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_each_filter_writes_its_file_and_resumes(videos, tmp_path, capsys, rule, threshold, expected, kind):
    m = manifest_of(videos, FILTER_KINDS, tmp_path)
    out = str(tmp_path / "o")
    args = ["--manifest", m, "--type", kind, "--num_frames", "8", "--save_path", out, "--samples_per_tar", "2",
            f"--{rule}", threshold]
    capsys.readouterr()
    assert run_pack(*args) == 0, "a filtered record is not an error"
    summary = capsys.readouterr().out
    key_of = {k: f"{i:09d}" for i, k in enumerate(FILTER_KINDS)}
    rows = [json.loads(line) for line in open(os.path.join(out, "filtered-0.jsonl"))]
    assert [r["key"] for r in rows] == sorted(key_of[k] for k in expected)
    for r in rows:
        assert set(r) == {"key", "source", "rule", "value", "threshold"}
        assert r["rule"] == rule and r["threshold"] == float(threshold)
        assert r["source"] == videos[FILTER_KINDS[int(r["key"])]]
        assert (r["value"] > r["threshold"]) if rule.startswith("max") else (r["value"] < r["threshold"])
    samples = read_samples(out)
    assert sorted(samples) == sorted(key_of[k] for k in FILTER_KINDS if k not in expected)
    assert open(os.path.join(out, "errors-0.jsonl")).read() == ""
    assert f"packed={len(FILTER_KINDS) - len(expected)}, errors=0, filtered={len(expected)}," in summary
    assert f"{len(expected):>8}  filtered by {rule}" in summary
    if rule in ("min_motion", "max_static_share", "max_black_share"):  # video-only: the filter turned the signals on
        assert all("signals" in json.loads(s["json"]) for s in samples.values())

    before = tree_bytes(out)
    os.unlink(os.path.join(out, "shard-0-0-2-0.tar"))  # a rerun writes it again, keeps the others' lines
    assert run_pack(*args) == 0
    assert "tars_written=1, tars_resumed=2" in capsys.readouterr().out
    assert tree_bytes(out) == before


def test_errors_and_filtered_records_are_counted_apart(videos, tmp_path, capsys):
    rows = [{"video_path": videos[k], "value": k} for k in ("moving", "black")]
    rows.insert(1, {"video_path": str(tmp_path / "missing.mp4"), "value": "gone"})
    m = write_manifest(str(tmp_path / "m.jsonl"), rows)
    out = str(tmp_path / "o")
    assert run_pack("--manifest", m, "--type", "kf", "--max_black_share", "0.5", "--save_path", out) == 1
    assert "records=3, packed=1, errors=1, filtered=1," in capsys.readouterr().out
    errors = [json.loads(line)["key"] for line in open(os.path.join(out, "errors-0.jsonl"))]
    filtered = [json.loads(line)["key"] for line in open(os.path.join(out, "filtered-0.jsonl"))]
    assert (errors, filtered, sorted(read_samples(out))) == (["000000001"], ["000000002"], ["000000000"])


def test_no_filtered_file_without_filters(videos, tmp_path):
    m = manifest_of(videos, ["static"], tmp_path)
    assert run_pack("--manifest", m, "--type", "un", "--save_path", str(tmp_path / "o")) == 0
    assert sorted(os.listdir(tmp_path / "o")) == [
        ".pack", "errors-0.jsonl", "shard-0-0-1-0.tar", "shard-0-0-1-0.tar.stats.json", "summary-0.json"
    ]


def test_worker_count_does_not_change_a_byte_with_signals_and_filters(videos, tmp_path):
    m = manifest_of(videos, KINDS, tmp_path)
    outs = []
    for workers in ("1", "2"):
        out = str(tmp_path / workers)
        assert run_pack("--manifest", m, "--type", "kf", "--min_motion", "0.01", "--save_path", out,
                        "--workers", workers, "--samples_per_tar", "3") == 0
        outs.append(tree_bytes(out))
    assert outs[0] == outs[1] and outs[0]["filtered-0.jsonl"]


def test_a_killed_run_rerun_gives_the_same_files(videos, tmp_path):
    m = manifest_of(videos, KINDS, tmp_path)
    args = ["--manifest", m, "--type", "un", "--num_frames", "4", "--samples_per_tar", "2", "--workers", "1",
            "--max_static_share", "0.5"]
    clean = str(tmp_path / "clean")
    assert run_pack(*args, "--save_path", clean) == 0
    crashed = str(tmp_path / "crashed")
    cmd = [sys.executable, os.path.join(ROOT, "pack.py"), *args, "--save_path", crashed, "--no_progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(crashed, "shard-0-0-2-0.tar")
    deadline = time.time() + 60
    while proc.poll() is None and not os.path.exists(first) and time.time() < deadline:
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert run_pack(*args, "--save_path", crashed) == 0
    assert tree_bytes(crashed) == tree_bytes(clean)
    assert not [n for n in os.listdir(crashed) if n.startswith(".") and n != ".pack"]


@pytest.mark.parametrize("args, message", [
    (["--type", "un", "--no_signals", "--min_motion", "0.1"], "--min_motion reads the signals"),
    (["--type", "un", "--signals", "--no_signals"], "not allowed with argument"),
    (["--type", "un", "--min_duration", "2", "--max_duration", "1"], "--min_duration must be at most"),
    (["--type", "kf", "--max_black_share", "-1"], "--max_black_share must be a number at least 0"),
    (["--type", "video-only", "--signals", "--signal_frames", "0"], "--signal_frames must be at least 1"),
])
def test_bad_filter_flags_exit_2(videos, tmp_path, args, message):
    m = manifest_of(videos, ["static"], tmp_path)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pack.py"), "--manifest", m, "--save_path",
                           str(tmp_path / "o"), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_rerun_with_another_threshold_is_refused(videos, tmp_path, capsys):
    m = manifest_of(videos, ["static"], tmp_path)
    out = str(tmp_path / "o")
    assert run_pack("--manifest", m, "--type", "un", "--min_motion", "0.01", "--save_path", out) == 0
    assert run_pack("--manifest", m, "--type", "un", "--min_motion", "0.02", "--save_path", out) == 2
    assert "other flags (options)" in capsys.readouterr().err
