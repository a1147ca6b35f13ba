"""An output that fills up or turns read-only mid-run: one line naming the output, exit 3, nothing
incomplete under a final name, and the same command completes the run once that is fixed.

The small disk is a real one the test mounts: a 2 MB tmpfs (grown with `remount,size=` to free
space). A folder turned read-only under a running command is a read-only bind mount stacked on
it (`mount --bind DIR DIR; mount -o remount,bind,ro DIR`): the command's open files stay
writable, new files and renames fail with EROFS, as when a filesystem goes read-only. chmod
would not do: the tests run as root, which permissions do not stop. Mounting needs root (or
CAP_SYS_ADMIN); elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import io
import os
import subprocess
import time

import pytest

from tests.kill_helpers import command, files_under, run, temp_files
from tests.pack_helpers import noise_video, write_manifest
from tests.stage1_fixtures import train_llama_like_tokenizer, write_stage1_corpus
from tests.synth import VideoSpec, make_video
from vdp.io.tario import iter_tar_members


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def unmount_all(folder: str) -> None:
    """Every mount stacked on `folder`, topmost first."""
    while subprocess.run(["umount", folder], capture_output=True).returncode == 0:
        pass
    if os.path.ismount(folder):
        subprocess.run(["umount", "-l", folder], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MB filesystem of its own."""
    folder = tmp_path / "small"
    folder.mkdir()
    done = mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield str(folder)
    unmount_all(str(folder))


def grow(folder: str) -> None:
    """Free space: the filesystem grows to 64 MB."""
    done = mount("-o", "remount,size=64m", folder)
    assert done.returncode == 0, done.stderr


def make_read_only(folder: str) -> None:
    for args in (("--bind", folder, folder), ("-o", "remount,bind,ro", folder)):
        done = mount(*args)
        assert done.returncode == 0, done.stderr


def one_line_naming(err: str, prog: str, folder: str, reason: str) -> str:
    """The command's only words on stderr: `prog: error: cannot write PATH: reason`, PATH in `folder`."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = f"{prog}: error: cannot write {folder}{os.sep}"
    assert lines[0].startswith(prefix) and lines[0].endswith(f": {reason}"), lines[0]
    return lines[0][len(prefix) : -len(reason) - 2]


def assert_only_complete_outputs(folder: str, reference: dict[str, bytes]) -> None:
    """Every file under a final name (temp files aside: the rerun removes them) is the
    uninterrupted run's file, whole."""
    for name, data in files_under(folder).items():
        assert name in reference and data == reference[name], f"{name} is incomplete or wrong"
        if name.endswith(".tar"):
            list(iter_tar_members(io.BytesIO(data)))  # reads to its end


def assert_same_outputs(folder: str, reference: dict[str, bytes]) -> None:
    assert files_under(folder) == reference
    assert temp_files(folder) == []


# --- stage 1 ---------------------------------------------------------------------------------------


def pack_cmd(manifest: str, out: str, *extra: str) -> list[str]:
    return command("pack.py", "--manifest", manifest, "--save_path", out, "--no_progress", *extra)


def test_pack_on_a_full_disk_stops_with_one_line_and_resumes(small_disk, tmp_path):
    video = noise_video(str(tmp_path / "noise.mp4"), frames=5)  # ~450 KB: four tars fill 2 MB
    manifest = write_manifest(str(tmp_path / "m.jsonl"), [{"video_path": video, "value": f"c{i}"} for i in range(8)])
    flags = ("--type", "video-only", "--samples_per_tar", "1", "--workers", "2")
    ref = str(tmp_path / "ref")
    assert run(pack_cmd(manifest, ref, *flags)).returncode == 0
    reference = files_under(ref)

    full = run(pack_cmd(manifest, small_disk, *flags))
    assert full.returncode == 3, full.stderr
    one_line_naming(full.stderr, "pack.py", small_disk, "No space left on device")
    written = [n for n in os.listdir(small_disk) if n.endswith(".tar")]
    assert 0 < len(written) < 8, "the disk should fill up mid-run"
    assert_only_complete_outputs(small_disk, reference)

    grow(small_disk)
    again = run(pack_cmd(manifest, small_disk, *flags))
    assert again.returncode == 0, again.stderr
    assert_same_outputs(small_disk, reference)


def test_pack_into_a_folder_made_read_only_mid_run(small_disk, tmp_path):
    grow(small_disk)
    videos = [make_video(str(tmp_path / f"v{i}.mp4"), VideoSpec(num_frames=60 + 5 * i)) for i in range(3)]
    rows = [{"video_path": videos[i % 3], "value": f"c{i}"} for i in range(24)]
    manifest = write_manifest(str(tmp_path / "m.jsonl"), rows)
    flags = ("--type", "kf", "--samples_per_tar", "2", "--workers", "1")
    ref = str(tmp_path / "ref")
    assert run(pack_cmd(manifest, ref, *flags)).returncode == 0
    reference = files_under(ref)

    proc = subprocess.Popen(pack_cmd(manifest, small_disk, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    while proc.poll() is None and not any(n.endswith(".tar") for n in os.listdir(small_disk)):
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before its folder could be made read-only"
    make_read_only(small_disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    one_line_naming(err, "pack.py", small_disk, "Read-only file system")
    assert 0 < sum(n.endswith(".tar") for n in os.listdir(small_disk)) < 12
    assert_only_complete_outputs(small_disk, reference)

    assert subprocess.run(["umount", small_disk]).returncode == 0  # writable again: the read-only layer goes
    again = run(pack_cmd(manifest, small_disk, *flags))
    assert again.returncode == 0, again.stderr
    assert_same_outputs(small_disk, reference)


# --- stage 2 ---------------------------------------------------------------------------------------


def test_tokenize_on_a_full_disk_stops_with_one_line_and_resumes(small_disk, tmp_path):
    src = str(tmp_path / "src")
    write_stage1_corpus(src, tars=6, samples_per_tar=20, frames=(16, 24), words=(3, 30), seed=9)  # ~0.6 MB shards
    model = train_llama_like_tokenizer(str(tmp_path / "llama"))
    flags = ("--tokenizer", model, "--sample_type", "un", "--patches", "8", "--shard_size", "1", "--workers", "1",
             "--no_progress")  # fmt: skip

    def tokenize(out: str) -> subprocess.CompletedProcess:
        return run(command("tokenize/main.py", "--dataset_path", src, "--save_path", out, *flags))

    ref = str(tmp_path / "ref")
    assert tokenize(ref).returncode == 0
    shards = {n: b for n, b in files_under(ref).items() if n.endswith(".tar")}

    full = tokenize(small_disk)
    assert full.returncode == 3, full.stderr
    one_line_naming(full.stderr, "tokenize/main.py", small_disk, "No space left on device")
    written = {n: b for n, b in files_under(small_disk).items() if n.endswith(".tar")}
    assert 0 < len(written) < 6, "the disk should fill up mid-run"
    assert all(shards[n] == b for n, b in written.items()), "a shard under its final name is incomplete"

    grow(small_disk)
    assert tokenize(small_disk).returncode == 0
    assert {n: b for n, b in files_under(small_disk).items() if n.endswith(".tar")} == shards
    assert files_under(small_disk)["errors.jsonl"] == files_under(ref)["errors.jsonl"]
    assert temp_files(small_disk) == []
