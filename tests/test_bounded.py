"""Memory and disk bounded by design (bench/bounded.py measures the same at 100x, 400x and 1600x).

- The stage-2 spool holds only the frames still waiting: frames given back leave no block
  behind, however many went through it.
- A stage-3 scan keeps nothing per tar member: its memory does not grow with the member count
  (tarfile kept a TarInfo for every member it read, about 0.5 KB each).
- Stage 2 streaming a remote tar past a member too big to use keeps none of its bytes.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from collections import deque
from types import SimpleNamespace

from tests.hostile_tars import END_OF_ARCHIVE, good, header, members_bytes, sound_tar
from tests.index_fixtures import frames_sample, write_tar
from vdp.index.scan import ScanOptions, scan_tar
from vdp.index.validate import CheckOptions
from vdp.io import tarslices
from vdp.tokenize.frame_samples import read_frame_samples
from vdp.tokenize.spool import FrameSpool


def allocated(spool: FrameSpool) -> int:
    """Bytes of disk the spool's file holds."""
    return os.fstat(spool.fd).st_blocks * 512


def test_spool_disk_stays_within_the_window(tmp_path):
    """4000 frames of odd sizes through a window of 50: what the disk holds is the window's frames."""
    rng = random.Random(0)
    window: deque = deque()
    with FrameSpool(str(tmp_path)) as spool:
        for _ in range(4000):
            data = rng.randbytes(rng.randint(3000, 9000))
            window.append(spool.put(data))
            if len(window) > 50:
                spool.give_back(window.popleft())
        os.fsync(spool.fd)
        # 50 frames of at most 9000 bytes, each on blocks of its own: at most 50 * 12 KB
        assert allocated(spool) <= 50 * 12 * 1024, allocated(spool)
        while window:
            spool.give_back(window.popleft())
        assert allocated(spool) == 0 and os.fstat(spool.fd).st_size == 0
        piece = spool.put(b"again")  # emptied, it fills from the front
        assert piece.offset == 0


def scan_peak(path: str) -> int:
    """Peak bytes Python allocated while one tar was scanned."""
    options = ScanOptions(CheckOptions(patches=4), root=os.path.dirname(path))
    tracemalloc.start()
    try:
        scan = scan_tar(path, options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.errors == [] and scan.valid == scan.samples
    return peak


def test_scan_memory_does_not_grow_with_the_member_count(tmp_path):
    """1x and 4x the members (samples of 16 frames): the peak stays put (tarfile's list grew 3 MB here)."""
    sample = frames_sample("000000000", 16, num_frames=200)

    def tar_of(samples: int) -> str:
        rows = [[(f"{k:09d}" + name[9:], data) for name, data in sample] for k in range(samples)]
        return write_tar(str(tmp_path / f"{samples}.tar"), rows)

    small, large = scan_peak(tar_of(60)), scan_peak(tar_of(240))  # 1020 and 4080 members
    assert large - small < 256 * 1024, (small, large)


def test_a_remote_tar_streams_past_a_refused_member_without_keeping_it(tmp_path, monkeypatch):
    """A json member of 200 MB (holes on disk) between sound samples, read as stage 2 reads a tar
    in object storage: the member is reported, its neighbours are read, and memory stays far
    below its size (the stream window used to keep every byte since the sample began)."""
    path = str(tmp_path / "x.tar")
    with open(path, "wb") as f:
        f.write(sound_tar("000000000") + header("000000001.json", 200 << 20))
        f.seek(200 << 20, os.SEEK_CUR)
        f.write(members_bytes(good("000000001")[1:]) + sound_tar("000000002") + END_OF_ARCHIVE)
    # The tar as vdp.io.storage would serve an object of that size: a stream read front to back.
    store = SimpleNamespace(
        is_remote=lambda p: True,
        size=os.path.getsize,
        open_read=lambda p, known_size=None: open(p, "rb"),
        is_transient=lambda e: False,
    )
    monkeypatch.setattr(tarslices, "storage", store)
    errors: list[dict] = []
    tracemalloc.start()
    try:
        keys = [(s.key, all(ref.data for ref in s.images)) for s in read_frame_samples(path, errors)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert keys == [("000000000", True), ("000000002", True)]
    assert [(e["key"], e["reason"].split(":")[0]) for e in errors] == [("000000001", "too large")]
    assert peak < 24 << 20, peak


def test_stream_window_reads_what_it_kept_and_drops_what_it_skips(monkeypatch):
    """Reads front to back with skipped ranges between them, chunks smaller than the reads: the bytes
    read are the object's, the skipped ones are never kept, forgetting keeps only what follows."""
    import io

    monkeypatch.setattr(tarslices._StreamWindow, "CHUNK", 1000)
    rng = random.Random(3)
    data = rng.randbytes(200_000)
    window = tarslices._StreamWindow(io.BytesIO(data), len(data), "mem")
    pos = 0
    while pos < len(data) - 10_000:
        n = rng.randint(1, 5000)
        window.seek(pos)
        assert window.read(n) == data[pos : pos + n]
        gap = rng.randint(0, 20_000)
        window.skip(pos + n, pos + n + gap)
        pos += n + gap
        window.forget_before(pos - rng.randint(0, n))
        assert sum(len(run) for _, run in window.runs) < 2000 + 5000
    window.seek(pos)
    assert window.read(-1) == data[pos:]
