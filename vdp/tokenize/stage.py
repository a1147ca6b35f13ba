"""Stage 2 core: groups of stage-1 tars -> packed LLaMA-2 token sequences, one output tar per group.

A group (K consecutive input tars) is the unit of work, resume and determinism: one worker
reads its tars, tokenizes each sample, packs the samples into sequences and writes
`shard_{g}.tar` atomically, then its stats `shard_{g}.tar.stats.json` (vdp.run.accounting) and
`.tokenize/shard_{g}.json` (its counts and error rows). A group is done when the shard and the
state exist, so a finished shard always has its stats. Nothing crosses groups, so the bytes of a shard depend only
on its input tars and the options, whatever the number of workers.

Memory stays bounded: the packer decides each sequence within one window of samples and
the sequence is written at once. Frames of local tars are never held, only their place in the
input tar: when their sequence is written they are copied file to file (vdp.io.tarslices),
untouched. Frames of tars in object storage (s3://, oss://) have no such file: their bytes go
to a local spool (vdp.tokenize.spool) as their sample is tokenized and are copied from there the same
way; the spool gives a sequence's blocks back once it is written.

Every path may be local or remote (vdp.io.storage): input tars are streamed, shards go up as
multipart uploads that appear only when complete, and `is_done` asks the store. A group is
run by the worker pool or as a Ray task (vdp.run.runner), the same function either way.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import time
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from vdp.errors import RecordError, error_entry
from vdp.io import storage
from vdp.io.shards import list_tars
from vdp.io.tario import write_bytes_atomically
from vdp.io.tarslices import FileSlice, StoreFault, read_range, write_tar_slices_atomically
from vdp.media.jpeg import fit_jpeg, fit_size
from vdp.run.accounting import json_bytes, shard_stats, stats_path
from vdp.run.pool import WorkFailure
from vdp.text.tokens import ConversationTokenizer, load_tokenizer
from vdp.tokenize.frame_samples import FrameSample, ImageRef, read_frame_samples
from vdp.tokenize.packing import PACKERS, lower_bound, sequence_length
from vdp.tokenize.spool import FrameSpool

Data = bytes | FileSlice
Member = tuple[str, Data]

STATE_DIR = ".tokenize"  # per-group counts and errors, and the flags of the run, inside OUT/{S}-{E}


@dataclass(frozen=True)
class TokenizeOptions:
    tokenizer: str
    sample_type: str  # un, kf or conv: which placeholders stand for images
    patches: int = 256
    max_len: int = 8000
    packing: str = "bfd"
    pack_buffer: int = 1000
    max_side: int = 1280
    jpeg_quality: int = 95  # only for frames shrunk to max_side
    ids_format: str = "json"  # or "npy"


@dataclass(frozen=True)
class GroupJob:
    index: int  # g in shard_{g}.tar
    first_tar: int  # position of tars[0] in the sorted list of input tars
    tars: tuple[str, ...]  # paths
    names: tuple[str, ...]  # the same tars relative to --dataset_path, as written in source_tars
    out_dir: str  # OUT/{S}-{E}


@dataclass
class GroupResult:
    index: int
    samples: int = 0  # samples packed
    rejected: int = 0  # samples that went to the errors instead
    sequences: int = 0
    tokens: int = 0
    images: int = 0  # frames written into the sequences
    lower_bound: int = 0  # fewest sequences any packing of these samples could use
    resized: int = 0  # frames shrunk to max_side
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the group; seconds minus it is time spent waiting (disk, network)


@dataclass
class Tokenized:
    key: str
    tar_name: str
    tar_path: str
    ids: array
    mask: bytes
    images: list[ImageRef]
    frames_path: str  # the file its images' offsets point into: its tar, or the group's spool


# --- planning and state ----------------------------------------------------------------------


def list_input_tars(dataset_path: str) -> list[str]:
    """Every stage-1 tar under a folder or an s3:// / oss:// prefix, sorted (hidden names left out)."""
    if storage.is_remote(dataset_path):
        return storage.list_files(dataset_path.rstrip("/"), ".tar")
    return list_tars(dataset_path)


def relative(path: str, root: str) -> str:
    """`path` below `root`, as written in source_tars: the same for a local folder and its bucket copy."""
    if storage.is_remote(root):
        return path[len(root.rstrip("/")) + 1 :]
    return os.path.relpath(path, root)


def tar_range(
    count: int, start: int, end: int | None, shard_size: int, machine_id: int = 0, total_machine: int = 1
) -> tuple[int, int]:
    """The tars [lo, hi) of the sorted list of `count` that this run takes.

    One machine takes [start, end) (end: all). With several, the groups of [start, end) are
    dealt out in contiguous runs, one per machine, cut at group boundaries: each machine's
    shards hold the same tars, the same keys and so the same bytes as the shards one machine
    would write for the whole range; only their folder, OUT/{lo}-{hi}, tells the machine.
    """
    hi = count if end is None else end
    if total_machine == 1:
        return start, hi
    hi = min(hi, count)
    groups = -(-max(0, hi - start) // shard_size)
    first, last = machine_id * groups // total_machine, (machine_id + 1) * groups // total_machine
    return min(hi, start + first * shard_size), min(hi, start + last * shard_size)


def plan_groups(tars: list[str], root: str, start: int, end: int, shard_size: int, out_dir: str) -> list[GroupJob]:
    """Cut tars[start:end] into groups of shard_size consecutive tars."""
    chosen = tars[start:end]
    jobs = []
    for g, at in enumerate(range(0, len(chosen), shard_size)):
        part = tuple(chosen[at : at + shard_size])
        names = tuple(relative(p, root) for p in part)
        jobs.append(GroupJob(g, start + at, part, names, out_dir))
    return jobs


def shard_path(job: GroupJob) -> str:
    return storage.join(job.out_dir, f"shard_{job.index}.tar")


def state_path(job: GroupJob) -> str:
    return storage.join(job.out_dir, STATE_DIR, f"shard_{job.index}.json")


def is_done(job: GroupJob) -> bool:
    """Done when the shard and its state both exist (the state is written after the shard)."""
    return storage.exists(shard_path(job)) and storage.exists(state_path(job))


def read_state(path: str) -> GroupResult:
    return GroupResult(**json.loads(storage.read_bytes(path)))


def _state_files(save_path: str) -> list[str]:
    """The state file of every finished group under OUT, in any order."""
    if not storage.is_remote(save_path):
        return glob.glob(os.path.join(save_path, "*", STATE_DIR, "shard_*.json"))
    # Listings leave hidden folders out: find the range folders by their shards, then list each one's state.
    top = save_path.rstrip("/")
    ranges = {storage.dirname(p) for p in storage.list_files(top, ".tar")}
    ranges = {r for r in ranges if storage.dirname(r) == top}  # OUT/{S}-{E}, as the local glob
    found = [p for r in ranges for p in storage.list_files(storage.join(r, STATE_DIR), ".json")]
    return [p for p in found if storage.basename(p).startswith("shard_")]


def collect_errors(save_path: str) -> list[dict]:
    """The error rows of every finished group under OUT, all ranges, in range and group order."""

    def order(path: str) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", relative(path, save_path)))

    return [row for p in sorted(_state_files(save_path), key=order) for row in read_state(p).errors]


# --- the worker side -------------------------------------------------------------------------

_OPTIONS: TokenizeOptions | None = None
_CONV: ConversationTokenizer | None = None


def init_worker(options: TokenizeOptions) -> None:
    """Pool initializer: load the tokenizer once per worker.

    OpenCV's thread count is deliberately not touched: the pool sets one thread in the parent
    before forking (vdp.run.pool), and a child forked after the parent ran OpenCV on several
    threads hangs or crashes in cv2.setNumThreads, waiting on the parent's thread pool.
    """
    global _OPTIONS, _CONV
    _OPTIONS = options
    _CONV = ConversationTokenizer(load_tokenizer(options.tokenizer), options.sample_type, options.patches)


def tokenize_sample(sample: FrameSample, conv: ConversationTokenizer, max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of one sample; RecordError when it cannot join a sequence."""
    placeholders = conv.count_placeholders(sample.conversations)
    if placeholders != len(sample.images):
        raise RecordError(f"placeholder count: {placeholders} placeholders for {len(sample.images)} images")
    ids, mask = conv.tokenize(sample.conversations)
    if len(ids) > max_len:
        raise RecordError(f"too long: {len(ids)} tokens > max_len {max_len}")
    return ids, mask


def _tokenized(
    job: GroupJob, conv: ConversationTokenizer, options: TokenizeOptions, errors: list[dict], spool: FrameSpool
):
    """Tokenized samples of the group's tars, in order; failures go to `errors`.

    A remote tar's frames come with their bytes: those go to the spool, so a sample waiting
    in the packing window holds only their place there.
    """
    typecode = "H" if conv.max_id < 1 << 16 else "i"  # LLaMA-2 ids fit 16 bits: half the memory
    for path, name in zip(job.tars, job.names):
        for sample in read_frame_samples(path, errors):
            try:
                ids, mask = tokenize_sample(sample, conv, options.max_len)
            except RecordError as e:
                errors.append(error_entry(sample.key, path, str(e)))
                continue
            images, frames_path = sample.images, path
            if any(ref.data is not None for ref in images):
                images = [_spooled(ref, spool) for ref in images]
                frames_path = spool.path
            yield Tokenized(sample.key, name, path, array(typecode, ids), bytes(mask), images, frames_path)


def _spooled(ref: ImageRef, spool: FrameSpool) -> ImageRef:
    assert ref.data is not None
    piece = spool.put(ref.data)
    return ImageRef(ref.member, piece.offset, piece.size, ref.width, ref.height)


def tokenize_group(job: GroupJob) -> GroupResult:
    """Worker entry point: read, tokenize, pack and write one group; returns its counts."""
    options, conv = _OPTIONS, _CONV
    assert options is not None and conv is not None, "init_worker was not called"
    clock, cpu = time.perf_counter(), time.process_time()
    result = GroupResult(job.index)
    shrink_errors: list[dict] = []  # frames kept unshrunk: their samples are still packed
    lengths: list[int] = []
    waiting: dict[int, Tokenized] = {}
    spool = FrameSpool()

    def length_stream() -> Iterator[int]:
        for t in _tokenized(job, conv, options, result.errors, spool):
            waiting[len(lengths)] = t
            lengths.append(len(t.ids))
            yield lengths[-1]

    def members() -> Iterator[Member]:
        for j, b in enumerate(PACKERS[options.packing](length_stream(), options.max_len, options.pack_buffer)):
            parts = [waiting.pop(i) for i in b]
            key = f"{job.first_tar:06d}-{j:06d}"
            yield from sequence_members(key, parts, options, result, shrink_errors)
            for p in parts:  # written (the writer copies each member as it comes): its spooled frames can go
                if p.frames_path == spool.path:
                    for ref in p.images:
                        spool.give_back(FileSlice(spool.path, ref.offset, ref.size))
            result.sequences += 1
            result.samples += len(parts)

    with spool:
        size = write_tar_slices_atomically(shard_path(job), members())
    result.rejected = sum(1 for e in result.errors if e["key"])  # tar-level rows have no sample key
    result.errors += shrink_errors
    result.tokens = sum(lengths) - result.samples + result.sequences
    result.lower_bound = lower_bound(lengths, options.max_len)
    result.seconds = round(time.perf_counter() - clock, 3)
    result.cpu_seconds = round(time.process_time() - cpu, 3)
    stats = shard_stats(storage.basename(shard_path(job)), result, options.max_len, size)
    write_bytes_atomically(stats_path(shard_path(job)), json_bytes(stats))  # before the state: the shard is done with both
    write_bytes_atomically(state_path(job), json.dumps(asdict(result), ensure_ascii=False).encode())
    return result


def run_group(job: GroupJob) -> GroupResult | WorkFailure:
    """tokenize_group; a store that kept failing after every retry makes the group a WorkFailure.

    The shard is then not written (a local temp file is removed, an upload aborted), so a rerun
    does the group again. Anything else raised is a bug and propagates.
    """
    try:
        return tokenize_group(job)
    except StoreFault as e:
        return WorkFailure(f"object storage: {e}")
    except Exception as e:
        if not (storage.is_remote(job.out_dir) and (isinstance(e, OSError) or storage.is_transient(e))):
            raise
        return WorkFailure(f"object storage: {type(e).__name__}: {e}")


def _frame(part: Tokenized, ref: ImageRef, options: TokenizeOptions, result: GroupResult, errors: list) -> Data:
    """The frame passed through (a slice of its local tar or of the spool), or shrunk bytes when too big."""
    if fit_size(ref.width, ref.height, options.max_side) == (ref.width, ref.height):
        return FileSlice(part.frames_path, ref.offset, ref.size)
    data = _read_local(part.frames_path, ref)
    try:
        small = fit_jpeg(data, ref.width, ref.height, options.max_side, options.jpeg_quality)
    except RecordError as e:
        # The header was sound but the picture is not: keep the frame as it is and say so.
        errors.append(error_entry(part.key, part.tar_path, f"{e}: {ref.member} written unshrunk"))
        return data
    result.resized += 1
    return small


def _read_local(path: str, ref: ImageRef) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_range(fd, ref.offset, ref.size)
    finally:
        os.close(fd)


def _npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


def json_int_list(values: np.ndarray) -> str:
    """`json.dumps(list(values), separators=(",", ":"))`, six times faster on token ids.

    Ids come in long runs (256 <im_patch> per image, masks of 0s then 1s), so each run is
    written as one repeated string instead of one number at a time.
    """
    if len(values) == 0:
        return "[]"
    starts = np.concatenate(([0], np.flatnonzero(np.diff(values)) + 1))
    counts = np.diff(np.append(starts, len(values)))
    body = "".join(f"{v}," * n for v, n in zip(values[starts].tolist(), counts.tolist()))
    return "[" + body[:-1] + "]"


def _sequence_json(ids: np.ndarray, mask: np.ndarray, rest: dict, with_ids: bool) -> bytes:
    """The sequence's json; the same text json.dumps(separators=(",", ":")) would give."""
    tail = json.dumps(rest, separators=(",", ":"), ensure_ascii=True)
    if not with_ids:
        return tail.encode()
    return ('{"input_ids":' + json_int_list(ids) + ',"loss_mask":' + json_int_list(mask) + "," + tail[1:]).encode()


def sequence_members(
    key: str, parts: list[Tokenized], options: TokenizeOptions, result: GroupResult, errors: list[dict]
) -> list[Member]:
    """The tar members of one packed sequence: json (+ npy ids), then its images in order."""
    ids = array(parts[0].ids.typecode, parts[0].ids)
    mask = bytearray(parts[0].mask)
    for p in parts[1:]:  # later samples drop their leading BOS, as the seed did
        ids.extend(p.ids[1:])
        mask.extend(p.mask[1:])
    lengths = [len(p.ids) - (1 if n else 0) for n, p in enumerate(parts)]
    assert sum(lengths) == len(ids) == sequence_length([len(p.ids) for p in parts])
    refs = [(p, ref) for p in parts for ref in p.images]
    id_values = np.frombuffer(ids, dtype=np.uint16 if ids.typecode == "H" else np.int32)
    mask_values = np.frombuffer(bytes(mask), dtype=np.uint8)
    rest = {
        "sample_lengths": lengths,
        "sources": [p.key for p in parts],
        "source_tars": [p.tar_name for p in parts],
        "image": [str(i) for i in range(len(refs))],
    }
    members: list[Member] = [
        (f"{key}.json", _sequence_json(id_values, mask_values, rest, options.ids_format == "json"))
    ]
    if options.ids_format == "npy":
        members.append((f"{key}.input_ids.npy", _npy(id_values.astype(np.int32))))
        members.append((f"{key}.loss_mask.npy", _npy(mask_values)))
    for i, (p, ref) in enumerate(refs):
        members.append((f"{key}.{i}.jpg", _frame(p, ref, options, result, errors)))
    result.images += len(refs)
    return members
