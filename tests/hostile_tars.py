"""Stage-1 tars made hostile on purpose, one defect each, for tests/test_hostile_shards.py.

Every tar holds sound samples around the hostile part, so a test can check both that the
defect became one errors-file row (tar, key, reason) and that the sound samples were still
used. Tars are assembled here block by block (tarfile's header encoder writes whatever name,
type or size it is given): names with `../` or a leading `/`, links, devices, sizes that
promise far more bytes than follow, extended headers of gigabytes, a member of 3 GiB of holes.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from tests.index_fixtures import frames_sample

GB = 1 << 30
BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = bytes(2 * BLOCK)


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE, linkname: str = "", fmt=tarfile.USTAR_FORMAT) -> bytes:
    """One header block as a writer would make it, whatever the name, type or size claims."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    info.mtime, info.mode = 0, 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def regular(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + padded(data)


def members_bytes(members: list[tuple[str, bytes]]) -> bytes:
    return b"".join(regular(name, data) for name, data in members)


def good(key: str) -> list[tuple[str, bytes]]:
    """A sound stage-1 `un` sample: its json and two frames (both stages accept it)."""
    return frames_sample(key, 2)


def renamed(members: list[tuple[str, bytes]], old_key: str, new_key: str) -> list[tuple[str, bytes]]:
    return [(new_key + name[len(old_key) :], data) for name, data in members]


def with_json(key: str, doc_bytes: bytes) -> list[tuple[str, bytes]]:
    return [(f"{key}.json", doc_bytes)] + good(key)[1:]


def with_frame(key: str, frame: bytes) -> list[tuple[str, bytes]]:
    members = good(key)
    return members[:-1] + [(members[-1][0], frame)]


def sound_tar(*keys: str) -> bytes:
    return members_bytes([m for k in keys for m in good(k)])


def link_sample(key: str, kind: bytes, linkname: str) -> bytes:
    """A sample whose second frame is a link or a device instead of a file."""
    members = good(key)
    return members_bytes(members[:-1]) + header(members[-1][0], 0, kind, linkname)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG header announcing a huge picture, with no picture data: a decoder would allocate it all."""
    sof = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    sof += b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def extended_header_claiming(kind: bytes, size: int) -> bytes:
    """A pax or GNU long-name header announcing `size` bytes of header data; a few follow."""
    name = "././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "pax_header"
    fmt = tarfile.GNU_FORMAT if kind == tarfile.GNUTYPE_LONGNAME else tarfile.USTAR_FORMAT
    return header(name, size, kind, fmt=fmt) + padded(b"23 path=000000002.json\n")


# --- the cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileCase:
    """One hostile tar: how to write it, the errors row it must give, the keys that must survive.

    `reason` maps a stage ("tokenize", "index") to a piece of text its reason must contain.
    """

    name: str
    write: Callable[[str], None]
    key: str
    reason: dict[str, str]
    survivors: tuple[str, ...]
    sparse: bool = False  # the file is gigabytes of holes: only where the filesystem keeps them


def _write(data: bytes) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(data)

    return write


def _cut_mid_member(path: str) -> None:
    data = sound_tar("000000000", "000000001", "000000002")
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        cut = t.getmember("000000002.1.jpg").offset_data + 100
    _write(data[:cut])(path)


def _sparse_member(path: str) -> None:
    """A json member of 3 GiB that really is there (zeros, as holes), sound samples around it."""
    with open(path, "wb") as f:
        f.write(sound_tar("000000000") + header("000000001.json", 3 * GB))
        f.seek(3 * GB, os.SEEK_CUR)
        f.write(members_bytes(good("000000001")[1:]) + sound_tar("000000002") + END_OF_ARCHIVE)


def _same(text: str) -> dict[str, str]:
    return {"tokenize": text, "index": text}


def _json_case(name: str, doc: bytes, text: str) -> HostileCase:
    body = sound_tar("000000000") + members_bytes(with_json("000000001", doc)) + sound_tar("000000002")
    return HostileCase(name, _write(body + END_OF_ARCHIVE), "000000001", _same(text), ("000000000", "000000002"))


def _link_case(name: str, kind: bytes, linkname: str, text: str) -> HostileCase:
    body = sound_tar("000000000") + link_sample("000000001", kind, linkname) + sound_tar("000000002")
    return HostileCase(name, _write(body + END_OF_ARCHIVE), "000000001", _same(text), ("000000000", "000000002"))


def _named_case(name: str, key: str) -> HostileCase:
    body = sound_tar("000000000") + members_bytes(renamed(good("000000001"), "000000001", key))
    body += sound_tar("000000002")
    return HostileCase(name, _write(body + END_OF_ARCHIVE), key, _same("unsafe member"), ("000000000", "000000002"))


def _cut_case(name: str, tail: bytes, key: str) -> HostileCase:
    """Two sound samples, then `tail`: every sample before the one the damage cut short survives."""
    written = ("000000000", "000000001")
    body = sound_tar(*written) + tail
    return HostileCase(
        name, _write(body), key, _same("bad tar"), written[: written.index(key)] if key in written else written
    )


WRONG_TYPES = {
    "caption": 7, "video_id": [], "source": {}, "width": "w", "height": None, "fps": "x", "duration": [1],
    "num_frames": "9", "frames": [1, "a", None], "image": {"0": 1}, "conversations": "not a list",
}  # fmt: skip

CASES = [
    HostileCase("cut_mid_member", _cut_mid_member, "000000002", _same("bad tar"), ("000000000", "000000001")),
    _named_case("dotdot_name", "../escaped/000000001"),
    _named_case("absolute_name", "/tmp/vdp-escaped/000000001"),
    _link_case("symlink", tarfile.SYMTYPE, "/etc/passwd", "unsafe member"),
    _link_case("hardlink", tarfile.LNKTYPE, "000000000.0.jpg", "unsafe member"),
    _link_case("char_device", tarfile.CHRTYPE, "", "unsafe member"),
    _link_case("fifo", tarfile.FIFOTYPE, "", "unsafe member"),
    _cut_case(
        "header_claims_5GB",
        header("000000002.json", 5 * GB) + b"only a few bytes",
        "000000002",
    ),
    _cut_case(
        "base256_size_claims_1TB",
        header("000000002.json", 1 << 40, fmt=tarfile.GNU_FORMAT) + b"only a few bytes",
        "000000002",
    ),
    _cut_case(
        "pax_header_claims_4GB",
        extended_header_claiming(tarfile.XHDTYPE, 4 * GB),
        "000000001",  # the sample before the damage may have lost members: reported, as any cut
    ),
    _cut_case(
        "gnu_long_name_claims_2GB",
        extended_header_claiming(tarfile.GNUTYPE_LONGNAME, 2 * GB),
        "000000001",
    ),
    HostileCase(
        "member_of_3GB",
        _sparse_member,
        "000000001",
        _same("too large"),
        ("000000000", "000000002"),
        sparse=True,
    ),
    HostileCase(
        "duplicate_key",
        _write(sound_tar("000000000", "000000001", "000000002", "000000001") + END_OF_ARCHIVE),
        "000000001",
        _same("duplicate key"),
        ("000000000", "000000001", "000000002"),
    ),
    HostileCase(
        "duplicate_member",
        _write(
            sound_tar("000000000")
            + members_bytes(good("000000001") + [("000000001.json", b"{}")])
            + sound_tar("000000002")
            + END_OF_ARCHIVE
        ),
        "000000001",
        _same("duplicate member"),
        ("000000000", "000000002"),
    ),
    _json_case("json_nested_100000_deep", b"[" * 100_000, "bad json"),
    _json_case("json_an_array", b"[1, 2, 3]", "bad json"),
    _json_case("json_a_string", b'"just text"', "bad json"),
    _json_case("json_not_utf8", b'{"caption": "\xff\xfe"}', "bad json"),
    _json_case("json_fields_of_wrong_types", json.dumps(WRONG_TYPES).encode(), "bad json"),
    HostileCase(
        "frame_not_a_jpeg",
        _write(
            sound_tar("000000000")
            + members_bytes(with_frame("000000001", b"GIF89a" + bytes(200)))
            + sound_tar("000000002")
            + END_OF_ARCHIVE
        ),
        "000000001",
        {"tokenize": "not a jpeg", "index": "bad jpeg"},
        ("000000000", "000000002"),
    ),
    HostileCase(
        "frame_claims_30000x30000_pixels",
        _write(
            sound_tar("000000000")
            + members_bytes(with_frame("000000001", jpeg_claiming(30000, 30000)))
            + sound_tar("000000002")
            + END_OF_ARCHIVE
        ),
        "000000001",
        _same("too large"),
        ("000000000", "000000002"),
    ),
]

BY_NAME = {case.name: case for case in CASES}
