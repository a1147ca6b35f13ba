"""The spool that holds remote tars' frames while they wait to be packed: bytes come back as put,
a written frame's disk blocks are given back, nothing is left on disk, and a remote group's
frames go through it (not through the worker's memory) to the same shard bytes."""

from __future__ import annotations

import io
import os
import tarfile

from vdp.io import storage
from vdp.io.tarslices import write_tar_slices_atomically
from vdp.tokenize import stage as stage2
from vdp.tokenize.spool import FrameSpool


def test_frames_come_back_as_put_and_leave_no_file(tmp_path):
    frames = [os.urandom(300_000), os.urandom(5), os.urandom(1_000_000)]
    with FrameSpool(str(tmp_path)) as spool:
        pieces = [spool.put(f) for f in frames]
        assert os.listdir(tmp_path) == []  # unlinked at once: a killed worker leaves nothing
        write_tar_slices_atomically(str(tmp_path / "out.tar"), [(f"{i}.jpg", p) for i, p in enumerate(pieces)])
        with open(spool.path, "rb") as f:
            for piece, data in zip(pieces, frames):
                f.seek(piece.offset)
                assert f.read(piece.size) == data
    assert os.listdir(tmp_path) == ["out.tar"]


def test_given_back_frames_free_their_blocks_and_spare_their_neighbours(tmp_path):
    with FrameSpool(str(tmp_path)) as spool:
        first = spool.put(b"a" * 4_000_000)
        middle = spool.put(b"b" * 1_001)  # shares blocks with both neighbours
        last = spool.put(b"c" * 4_000_000)
        os.fsync(spool.fd)
        before = os.fstat(spool.fd).st_blocks
        spool.give_back(first)
        spool.give_back(last)
        assert os.fstat(spool.fd).st_blocks * 512 < before * 512 - 7_000_000
        with open(spool.path, "rb") as f:
            f.seek(middle.offset)
            assert f.read(middle.size) == b"b" * 1_001


def test_a_remote_groups_frames_go_through_the_spool(s3_env, tmp_path, monkeypatch):
    """tokenize_group in this process on a tar in the bucket: every frame written was spooled,
    and the shard has the bytes the same group gives from the local tar."""
    from tests.s3_fixtures import make_bucket
    from tests.stage1_fixtures import train_llama_like_tokenizer, write_stage1_corpus
    from tests.test_index_s3 import upload_tree

    corpus = str(tmp_path / "corpus")
    names = [os.path.basename(p) for p in write_stage1_corpus(corpus, tars=2, samples_per_tar=3, frames=(2, 4))]
    make_bucket(s3_env, "spool")
    upload_tree(s3_env, corpus, "s3://spool/c")
    storage.configure(s3_env)
    options = stage2.TokenizeOptions(train_llama_like_tokenizer(str(tmp_path / "llama")), "un", patches=4)
    stage2.init_worker(options)
    put = FrameSpool.put
    spooled = []
    monkeypatch.setattr(FrameSpool, "put", lambda self, data: spooled.append(len(data)) or put(self, data))
    shards = {}
    for where, root in (("local", corpus), ("remote", "s3://spool/c")):
        tars = tuple(storage.join(root, n) for n in names)
        job = stage2.GroupJob(0, 0, tars, tuple(names), str(tmp_path / where))
        result = stage2.tokenize_group(job)
        shards[where] = open(stage2.shard_path(job), "rb").read()
        if where == "local":
            assert spooled == []
    assert shards["remote"] == shards["local"] and result.samples == 6
    with tarfile.open(fileobj=io.BytesIO(shards["remote"])) as t:
        frames = [m.size for m in t.getmembers() if m.name.endswith(".jpg")]
    assert sorted(spooled) == sorted(frames) and len(frames) >= 12
