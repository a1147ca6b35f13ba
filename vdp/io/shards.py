"""Read webdataset shards back as samples: consecutive members sharing a key form one sample."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from vdp.errors import RecordError
from vdp.io.tario import KeyGroups, TarReadError, iter_tar_members, split_member_name


@dataclass
class Sample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes ("json", "0.jpg")


@dataclass
class ShardProblem:
    """Where a shard stopped being readable; the samples before it were yielded."""

    tar: str
    reason: str
    member: int  # members read before the problem


def parse_sample_json(data: bytes, name: str) -> dict:
    """A sample's json member as a dict; RecordError naming `name` when it is not one.

    Hostile shards carry json that is not UTF-8, not JSON, nested deep enough to overflow the
    parser, or not an object: each is one error line, never a crash.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"bad json: {name}: {e}") from None
    except RecursionError:
        raise RecordError(f"bad json: {name}: nested too deeply") from None
    if not isinstance(doc, dict):
        raise RecordError(f"bad json: {name}: not an object")
    return doc


def iter_samples(path: str, problems: list[ShardProblem] | None = None) -> Iterator[Sample]:
    """Yield the samples of one tar in order.

    A truncated or corrupt tar yields what it could read (a sample cut by the damage is not
    yielded) and appends a ShardProblem to `problems`; without a list it raises TarReadError.
    """
    with open(path, "rb") as f:
        try:
            for key, members in KeyGroups(iter_tar_members(f), lambda m: m[0]):
                yield Sample(key, {split_member_name(name)[1]: data for name, data in members})
        except TarReadError as e:
            if problems is None:
                raise
            problems.append(ShardProblem(path, e.reason, e.members_read))
            # the sample being read when the tar broke may be incomplete: it is not yielded


def list_tars(folder: str) -> list[str]:
    """Every *.tar below `folder`, sorted by path (hidden temp files excluded)."""
    paths = glob.glob(os.path.join(folder, "**", "*.tar"), recursive=True)
    return sorted(p for p in paths if not os.path.basename(p).startswith("."))
