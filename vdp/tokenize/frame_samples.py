"""Stage-1 frame samples as the tokenizer reads them: a conversation and its images, in order.

Two layouts are read:
- current (pack.py): `{key}.json` with `conversations` and `image` (frame names in order),
  frames `{key}.{name}.jpg`;
- legacy (the seed's stage 1): `{key}.json` with `image_name_list` (frame keys
  `{key}-{i}`, in order) and `prompt` + `txt` (or `conversations`), each frame a sample of its
  own, `{key}-{i}.jpg`, written after the json. `prompt`/`txt` may be lists (one per turn).

A reader is a chain of small generators: the tar's index (vdp.io.tarslices: names, offsets
and sizes; no data read) -> members grouped by key -> legacy frames folded into their sample
-> FrameSample. Only the json and each frame's first bytes (its size in pixels) and last
bytes (its end marker) are read: frames of a local tar stay references into it, copied to
the output by the kernel later. A tar in object storage has no file to copy from, so its
frames' bytes are read here and travel with the sample. Every sample that cannot be read
becomes a row of `errors` instead: among them, a sample with a member that must not be used
(a link, a device, a name reaching outside its folder, a name given twice: vdp.io.tarslices), one
with a json or frame over its size limit (refused before it is read or decoded), and a key met
a second time in the tar.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from vdp.errors import RecordError, error_entry
from vdp.io.shards import parse_sample_json
from vdp.io.tario import KeyGroups, TarReadError
from vdp.io.tarslices import MAX_FRAME_PIXELS, Entry, InputTar, iter_tar_index, too_large
from vdp.media.jpeg import check_jpeg_end, jpeg_header_size

VIDEO_EXTS = ("mp4", "mkv", "webm", "avi", "mov")


@dataclass(frozen=True)
class ImageRef:
    member: str  # member name in the tar
    offset: int  # where its bytes start in the tar file
    size: int
    width: int
    height: int
    data: bytes | None = None  # the frame itself when its tar is remote (no file to copy from later)


@dataclass
class FrameSample:
    key: str
    tar: str
    conversations: list[dict]
    images: list[ImageRef] = field(default_factory=list)


@dataclass
class _Grouped:
    """One stage-1 sample: every member that belongs to it, by full member name."""

    key: str
    files: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # members that must not be used: the sample is refused
    end: int = 0  # where its last member's data ends in the tar

    def add(self, entry: Entry) -> None:
        self.end = max(self.end, entry.offset + entry.size)
        if entry.problem:
            self.problems.append(entry.problem)
        elif entry.name in self.files:
            self.problems.append(f"duplicate member: {entry.name} appears twice in the sample")
        else:
            self.files[entry.name] = entry

    def take(self, other: _Grouped) -> None:
        """Fold another group (a legacy frame sample) into this one."""
        self.problems += other.problems
        self.end = max(self.end, other.end)
        for entry in other.files.values():
            self.add(entry)


class _CutShort(Exception):
    """The tar broke while the sample `key` was being read: that sample may be incomplete."""

    def __init__(self, error: TarReadError, key: str) -> None:
        super().__init__(error.reason)
        self.reason, self.members_read, self.key = error.reason, error.members_read, key


def _group_by_key(entries: Iterator[Entry]) -> Iterator[_Grouped]:
    """Members grouped into samples by key (vdp.io.tario.KeyGroups); a break names the sample it cut."""
    groups = KeyGroups(entries, lambda entry: entry.name)
    try:
        for key, members in groups:
            grouped = _Grouped(key)
            for entry in members:
                grouped.add(entry)
            yield grouped
    except TarReadError as e:
        raise _CutShort(e, groups.key) from None


def _legacy_frame_of(head: _Grouped, key: str, files: dict) -> bool:
    """A legacy frame sample `{key}-{i}` with no json of its own, following its sample `{key}`."""
    return key.startswith(head.key + "-") and f"{key}.json" not in files


def _fold_legacy(samples: Iterator[_Grouped]) -> Iterator[_Grouped]:
    """Attach legacy per-frame samples to the sample before them; others pass unchanged."""
    head: _Grouped | None = None
    try:
        for sample in samples:
            if head is not None and _legacy_frame_of(head, sample.key, sample.files):
                head.take(sample)
                continue
            if head is not None:
                yield head
            head = sample
    except _CutShort as e:
        if head is not None and e.key.startswith(head.key + "-"):
            e.key = head.key  # the break cut one of its frames: the whole sample is incomplete
        elif head is not None:
            yield head
        raise
    if head is not None:
        yield head


def _entry(grouped: _Grouped, member: str, missing: str) -> Entry:
    """The member's place in the tar; RecordError `missing` when absent, or when too large to read."""
    if member not in grouped.files:
        raise RecordError(missing)
    entry = grouped.files[member]
    refused = too_large(member, entry.size)
    if refused:
        raise RecordError(refused)
    return entry


def _parse_json(grouped: _Grouped, tar: InputTar) -> dict:
    name = f"{grouped.key}.json"
    entry = _entry(grouped, name, f"no json: members {', '.join(sorted(grouped.files))} without {name}")
    return parse_sample_json(tar.read(entry.offset, entry.size), name)


def _turns_from_lists(prompt, txt) -> list[dict]:
    prompts = prompt if isinstance(prompt, list) else [prompt]
    answers = txt if isinstance(txt, list) else [txt]
    if len(prompts) != len(answers):
        raise RecordError(f"bad json: {len(prompts)} prompts but {len(answers)} answers")
    turns = []
    for p, a in zip(prompts, answers):
        turns += [{"from": "human", "value": p}, {"from": "gpt", "value": a}]
    return turns


def _conversations(doc: dict, key: str) -> list[dict]:
    if "conversations" in doc:
        turns = doc["conversations"]
    elif "prompt" in doc and "txt" in doc:
        turns = _turns_from_lists(doc["prompt"], doc["txt"])
    else:
        raise RecordError(f"bad json: {key}.json has no conversations (nor prompt and txt)")
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"bad json: {key}.json: conversations is not a non-empty list")
    for t in turns:
        if not (isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)):
            raise RecordError(f"bad json: {key}.json: a turn is not {{from: str, value: str}}")
    return turns


def _image_members(doc: dict, grouped: _Grouped) -> list[str]:
    """The member name of each image, in order, for either layout."""
    key = grouped.key
    if isinstance(doc.get("image"), list):
        return [f"{key}.{name}.jpg" for name in doc["image"]]
    if isinstance(doc.get("image_name_list"), list):
        # The seed's frames were `{key}-{i}.jpg`; its reader looked them up as `{key}.{i}.jpg`.
        names = []
        for name in doc["image_name_list"]:
            own = f"{name}.jpg"
            names.append(own if own in grouped.files else f"{key}.{str(name).split('-')[-1]}.jpg")
        return names
    video = [n for n in grouped.files if n.rsplit(".", 1)[-1].lower() in VIDEO_EXTS]
    if video:
        raise RecordError(f"not tokenizable: video-only sample ({video[0]}), no frames")
    raise RecordError(f"bad json: {key}.json lists no images (neither image nor image_name_list)")


def _image_ref(grouped: _Grouped, member: str, tar: InputTar) -> ImageRef:
    entry = _entry(grouped, member, f"missing image: {member}")
    try:
        width, height = _jpeg_size_at(tar, entry)
    except RecordError as e:
        raise RecordError(f"{e}: {member}") from None
    if width * height > MAX_FRAME_PIXELS:
        # Shrinking it would decode it: a decoder allocates what the header claims.
        raise RecordError(
            f"too large: {member} claims {width}x{height} pixels, over the {MAX_FRAME_PIXELS} a frame may have"
        )
    data = None if tar.local else tar.read(entry.offset, entry.size)
    return ImageRef(member, entry.offset, entry.size, width, height, data)


def _jpeg_size_at(tar: InputTar, entry: Entry) -> tuple[int, int]:
    """A frame's size from its first bytes (more only when its header is unusually far in)."""
    if entry.size < 4:
        raise RecordError("not a jpeg: too short")
    size = None
    for n in (4096, 65536, entry.size):
        head = tar.read(entry.offset, min(n, entry.size))
        size = jpeg_header_size(head, complete=len(head) == entry.size)
        if size is not None:
            break
    check_jpeg_end(tar.read(entry.offset + entry.size - min(32, entry.size), min(32, entry.size)))
    assert size is not None  # the whole file was parsed at the latest
    return size


def to_frame_sample(grouped: _Grouped, tar: InputTar) -> FrameSample:
    """Parse one grouped sample; RecordError with the reason when it cannot be tokenized."""
    if grouped.problems:
        raise RecordError(grouped.problems[0])
    doc = _parse_json(grouped, tar)
    members = _image_members(doc, grouped)
    turns = _conversations(doc, grouped.key)
    return FrameSample(grouped.key, tar.path, turns, [_image_ref(grouped, m, tar) for m in members])


def read_frame_samples(tar: str, errors: list[dict]) -> Iterator[FrameSample]:
    """Every tokenizable sample of one stage-1 tar, in order; the rest go to `errors`.

    A broken tar yields the samples before the damage; the sample the damage cut short (its
    members may be incomplete) is reported, not yielded. `tar` may be a local path or an
    s3:// or oss:// URL; a remote read that fails after every retry raises StoreFault.
    """
    try:
        opened = InputTar(tar)
    except OSError as e:
        errors.append(error_entry("", tar, f"unreadable tar: {e.strerror or e}"))
        return
    seen: set[str] = set()  # keys so far: a key met again is reported, as stage 3 does
    with opened:
        try:
            for grouped in _fold_legacy(_group_by_key(iter_tar_index(opened.file))):
                if grouped.key in seen:
                    errors.append(
                        error_entry(grouped.key, tar, f"duplicate key: {grouped.key} appears twice in the tar")
                    )
                else:
                    seen.add(grouped.key)
                    yield from _parsed(grouped, opened, errors)
                # A remote tar keeps only what is still to be read (tarfile looks one byte before a header).
                opened.done_before(grouped.end - tarfile.BLOCKSIZE)
        except _CutShort as e:
            cut = f"sample {e.key} cut short, " if e.key else ""
            reason = f"bad tar: {e.reason} ({cut}after {e.members_read} readable members)"
            errors.append(error_entry(e.key, tar, reason))


def _parsed(grouped: _Grouped, tar: InputTar, errors: list[dict]) -> Iterator[FrameSample]:
    try:
        yield to_frame_sample(grouped, tar)
    except RecordError as e:
        errors.append(error_entry(grouped.key, tar.path, str(e)))
    except TarReadError as e:
        errors.append(error_entry(grouped.key, tar.path, f"bad tar: {e.reason}"))
